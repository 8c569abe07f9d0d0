//! Runs the sidecar: one actix System on the current thread, the Supervisor as its root,
//! until the Supervisor stops it with an exit code.
//!
//! Shutdown is a value passed in by whoever runs it: the binary lets the ShutdownActor turn
//! signals into it, and tests can pass their own child list to [`run_with`].

use std::path::Path;
use std::rc::Rc;

use actix::Actor;

use crate::actors::supervisor::Supervisor;
use crate::actors::{children, ChildSpec, Env};
use crate::bus::Bus;
use crate::config::Config;
use crate::log::Log;

/// Runs the sidecar with the standard child list; returns the process exit code.
pub fn run(config: Config) -> i32 {
    run_with(config, children)
}

/// Runs the sidecar with the children `make_children` returns (called inside the System).
pub fn run_with(mut config: Config, make_children: impl FnOnce() -> Vec<ChildSpec>) -> i32 {
    crate::process::prepare();
    // State directories others can write to are said loudly (with the config's warnings).
    let mut unsafe_dirs: Vec<String> = Vec::new();
    for (key, dir) in crate::check::state_dirs(&config) {
        if let Some(w) = crate::fsx::writable_by_others(dir) {
            let w = format!("{key}: {w}");
            if !unsafe_dirs.contains(&w) {
                unsafe_dirs.push(w);
            }
        }
    }
    config.warnings.extend(unsafe_dirs);
    // Held until the process ends (the kernel releases it even on SIGKILL).
    let _lock = match lock_queue(&config.queue_file) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("{}: error: {e}", env!("CARGO_PKG_NAME"));
            return 1;
        }
    };
    // One crypto provider for every rustls user in the process (awc builds a default
    // client configuration of its own, which needs it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // actix's own runtime, but blocking-pool threads (file work, reads of result files) end
    // a second after their last job instead of ten: an idle sidecar keeps no thread it does
    // not need.
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(std::time::Duration::from_secs(1))
            .build()
            .expect("a current-thread runtime can be built")
    });
    system.block_on(async move {
        let config = Rc::new(config);
        let bus = Bus::new();
        let log = Log::new(bus.clone(), config.log_level, &config.agent_id);
        let env = Env::new(config, bus, log);
        let children = make_children();
        Supervisor::new(env, children).start();
        // Start-up is done within a second or two: from then on only the code the sidecar
        // runs stays mapped (see `process::release_unused_code`).
        actix_rt::spawn(async {
            actix_rt::time::sleep(std::time::Duration::from_secs(2)).await;
            crate::process::release_unused_code();
        });
    });
    match system.run_with_code() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}: event loop failed: {e}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}

/// One sidecar per queue: an exclusive lock on `<queue_file>.lock` (`flock` on Unix,
/// `LockFileEx` on Windows, through std), which also holds the owner's pid for the message a
/// second sidecar prints (Windows' lock keeps others from reading it: the pid is then unknown).
fn lock_queue(queue_file: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    let mut name = queue_file.as_os_str().to_os_string();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let shown = path.display();
    // Private, in a private directory if it makes one; a link planted at the name is refused
    // (its target would get the pid).
    let mut file = crate::fsx::open_private(&path, crate::fsx::Access::ReadWrite)
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    if let Err(e) = file.try_lock() {
        if let std::fs::TryLockError::Error(e) = e {
            return Err(format!("cannot lock {shown}: {e}"));
        }
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let owner = match owner.trim() {
            "" => String::new(),
            pid => format!(" (pid {pid})"),
        };
        return Err(format!(
            "another sidecar{owner} is already using queue_file {}: each sidecar needs its own queue_file",
            queue_file.display()
        ));
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    written.map_err(|e| format!("cannot write {shown}: {e}"))?;
    Ok(file)
}
