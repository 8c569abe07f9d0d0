//! Runs the sidecar: one actix System on the current thread, the Supervisor as its root,
//! until the Supervisor stops it with an exit code.
//!
//! Shutdown is a value passed in by whoever runs it: the binary lets the ShutdownActor turn
//! signals into it, and tests can pass their own child list to [`run_with`].

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
pub fn run_with(config: Config, make_children: impl FnOnce() -> Vec<ChildSpec>) -> i32 {
    // One crypto provider for every rustls user in the process (awc builds a default
    // client configuration of its own, which needs it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let config = Rc::new(config);
        let bus = Bus::new();
        let log = Log::new(bus.clone(), config.log_level, &config.agent_id);
        let env = Env::new(config, bus, log);
        let children = make_children();
        Supervisor::new(env, children).start();
    });
    match system.run_with_code() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}: event loop failed: {e}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}
