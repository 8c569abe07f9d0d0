//! What the sidecar's process sets up about itself before its actors start, and what every
//! agent process it starts inherits from it (part of the kit):
//!
//! - **File descriptors.** The soft limit is raised to the hard one (a flood of connections
//!   to the metrics endpoint, or many tasks, must not run the process out of descriptors at
//!   systemd's default soft limit of 1 024); descriptors the launcher passed down (anything
//!   ≥ 3 open at start) are marked close-on-exec, and every wake command's child marks them
//!   all once more before it runs, so no descriptor of the sidecar's reaches an agent.
//! - **The agent's environment** is the sidecar's minus what belongs to the service manager
//!   or holds credentials ([`PRIVATE_ENV`]).
//! - **As PID 1** (a container without an init), orphans that end up as the sidecar's
//!   children (an agent that detached from its wake command) are reaped, so they do not
//!   pile up as zombies; the wake commands' own exit statuses stay with the waker.
//! - **Code it does not run is not kept mapped** ([`release_unused_code`]): once started,
//!   the program's and the C library's executable pages are unmapped, and what the sidecar
//!   runs from then on (its working set) is mapped again as it runs.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

/// Environment variables an agent never inherits: systemd's credentials directory and its
/// notification, watchdog and socket-activation variables, and pm2's IPC channel. The
/// agent must not read the hub token through them, nor speak to the service manager in the
/// sidecar's name.
pub const PRIVATE_ENV: &[&str] = &[
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "MAINPID",
    "MANAGERPID",
    "SYSTEMD_EXEC_PID",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
];

/// What [`prepare`] raised the descriptor limit from and to, if it did.
static FD_LIMIT: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();

/// Sets the process up, once, before the actor system starts.
pub fn prepare() {
    mark_inherited_cloexec();
    let _ = FD_LIMIT.set(raise_fd_limit());
    start_reaper_if_init();
}

/// The descriptor limit as [`prepare`] left it: `(before, now)` if it raised it.
pub fn fd_limit_raised() -> Option<(u64, u64)> {
    FD_LIMIT.get().copied().flatten()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 65 536: nothing here needs
/// more, and some allocators size tables by it).
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix
fn raise_fd_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        let want = lim.rlim_max.min(65_536);
        if want <= lim.rlim_cur {
            return None;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = want;
        (libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0).then_some((before as u64, want as u64))
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() -> Option<(u64, u64)> {
    None
}

/// Marks every descriptor ≥ 3 close-on-exec (Rust opens its own that way; these are the
/// launcher's).
#[cfg(unix)]
fn mark_inherited_cloexec() {
    if close_range_cloexec() {
        return;
    }
    let fds: Vec<i32> =
        match std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd")) {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd >= 3)
                .collect(),
            Err(_) => return,
        };
    for fd in fds {
        // SAFETY: fcntl(2) on a descriptor number; an already closed one fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

#[cfg(not(unix))]
fn mark_inherited_cloexec() {}

/// `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11): one system call, safe to make
/// between fork and exec. False where the kernel does not have it.
#[cfg(unix)]
pub fn close_range_cloexec() -> bool {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: a raw system call with integer arguments; async-signal-safe.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Applies what every agent process inherits to a command about to be spawned: the
/// environment without [`PRIVATE_ENV`], and (Unix) no descriptor ≥ 3.
pub fn confine(cmd: &mut tokio::process::Command) {
    for name in PRIVATE_ENV {
        cmd.env_remove(name);
    }
    #[cfg(unix)]
    {
        // SAFETY: the closure makes one async-signal-safe system call and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                close_range_cloexec();
                Ok(())
            });
        }
    }
}

/// Starts a command the way every agent process is started (wake commands, room wake
/// commands): stdin from /dev/null, stdout and stderr to `out` and `err`, a process group of
/// its own ([`crate::proctree::detach`]), [`confine`]d, not killed when its handle is
/// dropped, and recorded for the PID-1 reaper while it is spawned.
pub fn spawn_agent(
    cmd: &mut tokio::process::Command,
    out: std::process::Stdio,
    err: std::process::Stdio,
) -> std::io::Result<tokio::process::Child> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false);
    crate::proctree::detach(cmd);
    confine(cmd);
    let mut guard = spawn_guard();
    let child = cmd.spawn()?;
    own_child(&mut guard, child.id());
    Ok(child)
}

/// The children the waker spawned and still waits for (kept only when the sidecar is PID 1,
/// so the reaper leaves them to the waker).
static OWN_CHILDREN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Held while a wake command is spawned and its pid recorded, so the reaper never takes a
/// child of the waker's for an orphan. `None` unless the sidecar is PID 1.
pub fn spawn_guard() -> Option<MutexGuard<'static, Option<HashSet<u32>>>> {
    let guard = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    guard.is_some().then_some(guard)
}

/// Records a child the waker will wait for itself (under [`spawn_guard`]).
pub fn own_child(guard: &mut Option<MutexGuard<'static, Option<HashSet<u32>>>>, pid: Option<u32>) {
    if let (Some(guard), Some(pid)) = (guard.as_mut(), pid) {
        if let Some(set) = guard.as_mut() {
            set.insert(pid);
        }
    }
}

/// Held by whoever waits for a child it recorded with [`own_child`]: when it goes (the wait
/// ended, or was dropped with its actor), the child is no longer kept from the PID-1 reaper,
/// so a stale pid can never shield an orphan that reuses it.
pub struct OwnChild(pub Option<u32>);

impl Drop for OwnChild {
    fn drop(&mut self) {
        child_done(self.0);
    }
}

/// The waiter has the exit status of `pid`: it is no longer its to reap.
pub fn child_done(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let mut guard = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = guard.as_mut() {
        set.remove(&pid);
    }
}

/// As PID 1, a thread that reaps every exited child the waker does not wait for, twice a
/// second.
fn start_reaper_if_init() {
    #[cfg(target_os = "linux")]
    if std::process::id() == 1 {
        *OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
        let _ = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| loop {
                reap_orphans();
                std::thread::sleep(std::time::Duration::from_millis(500));
            });
    }
}

/// Reaps exited children that are not the waker's: it looks at one exited child at a time
/// without reaping it (`WNOWAIT`); one of the waker's is left for the waker, which reaps it
/// promptly, and the rest are looked at on the next round.
#[cfg(target_os = "linux")]
fn reap_orphans() {
    let guard = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let own = guard.as_ref().cloned().unwrap_or_default();
    loop {
        // SAFETY: waitid(2) into a zeroed local siginfo_t; waitpid(2) on a pid it reported.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
                return;
            }
            let pid = info.si_pid();
            if pid == 0 || own.contains(&(pid as u32)) {
                return;
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, libc::WNOHANG);
        }
    }
}

/// Unmaps the executable pages of the program and of the shared libraries it loaded
/// (`r-xp` file mappings: code never written, so nothing is lost), so that the process maps
/// only the code it runs from now on. The kernel maps code in 64 KiB windows around each
/// page it runs (fault-around), and start-up runs through most of the binary (parsing the
/// config, building TLS, starting every actor), so an idle sidecar kept about 4.5 MiB of code
/// mapped that it no longer runs. The pages stay in the page cache: one that is needed again
/// is mapped back at the cost of a minor fault. Linux only; a no-op elsewhere, and for
/// anything that is not a plain executable file mapping (the vDSO, anonymous or writable
/// memory, read-only data, which relocations may have written).
pub fn release_unused_code() {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let path = fields.nth(3).unwrap_or("");
            if perms != "r-xp" || !path.starts_with('/') {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            // SAFETY: madvise(2) on a whole executable, never-written, file-backed private
            // mapping of this process: MADV_DONTNEED only drops its page-table entries, and
            // the next access maps the same file pages back.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    fn rss_file_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn unused_code_is_unmapped_and_what_runs_comes_back() {
        let before = rss_file_kib();
        super::release_unused_code();
        let after = rss_file_kib();
        assert!(
            after < before,
            "file-backed RSS {before} KiB -> {after} KiB"
        );
        // The code still runs (it is mapped back as it runs).
        let text = format!("{:?}", serde_json::json!({"still": ["runs", 1]}));
        assert!(text.contains("runs"));
    }
}
