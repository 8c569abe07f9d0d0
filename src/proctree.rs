//! A wake command's process tree (part of the kit): how the command is started apart from the
//! sidecar, and how everything it started is killed when its attempt times out or is
//! cancelled. It does not decide when to kill (that is the WakerActor's job) and never waits.
//!
//! - **Unix**: the command leads a process group of its own, so the signals of the sidecar's
//!   terminal or service group do not reach it or the agent it starts; killing sends SIGKILL to
//!   the whole group. A string command runs under `sh -c`.
//! - **Windows**: the command gets a console of its own without a window
//!   (`CREATE_NO_WINDOW`), so Ctrl-C, Ctrl-Break or closing the sidecar's console never reach
//!   it or the agent it starts, and it is put in a Job Object of its own as soon as it is
//!   created; killing terminates the job (every process in it). The job is not
//!   kill-on-close: when the attempt ends its handle is closed and the agent runs on. A string
//!   command runs under `%SystemRoot%\System32\cmd.exe` with the arguments of
//!   [`crate::wincmd::cmd_arguments`].

use tokio::process::{Child, Command};

/// The command that runs a string wake command.
pub fn shell(text: &str) -> Command {
    #[cfg(windows)]
    {
        let system_root = std::env::var_os("SystemRoot").unwrap_or_else(|| "C:\\Windows".into());
        let cmd_exe = std::path::Path::new(&system_root)
            .join("System32")
            .join("cmd.exe");
        let mut c = Command::new(cmd_exe);
        c.raw_arg(crate::wincmd::cmd_arguments(text));
        c
    }
    #[cfg(not(windows))]
    {
        let mut c = Command::new("sh");
        c.arg("-c").arg(text);
        c
    }
}

/// The program `shell` runs (for error messages).
pub const SHELL_NAME: &str = if cfg!(windows) { "cmd.exe" } else { "sh" };

/// What a kill ends, as the log says it.
pub const TREE_NAME: &str = if cfg!(windows) {
    "job (process tree)"
} else {
    "process group"
};

/// Starts the command apart from the sidecar (see the module doc).
pub fn detach(cmd: &mut Command) {
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    cmd.creation_flags(windows_sys::Win32::System::Threading::CREATE_NO_WINDOW);
}

/// Everything one wake command started, as far as it can be killed.
#[derive(Debug)]
pub struct Tree {
    #[cfg(unix)]
    group: Option<i32>,
    #[cfg(windows)]
    job: Option<std::os::windows::io::OwnedHandle>,
    #[cfg(windows)]
    pid: Option<u32>,
}

impl Tree {
    /// The tree of a command just spawned after [`detach`]. On Windows, the reason it could
    /// not be put in a job of its own comes back too (then only the command itself can be
    /// killed, not what it started).
    pub fn adopt(child: &Child) -> (Tree, Option<String>) {
        #[cfg(unix)]
        {
            let group = child.id().and_then(|id| i32::try_from(id).ok());
            (Tree { group }, None)
        }
        #[cfg(windows)]
        {
            let pid = child.id();
            match child.raw_handle().map(windows::job_for) {
                Some(Ok(job)) => (
                    Tree {
                        job: Some(job),
                        pid,
                    },
                    None,
                ),
                Some(Err(e)) => (Tree { job: None, pid }, Some(e.to_string())),
                None => (Tree { job: None, pid }, None),
            }
        }
        #[cfg(not(any(unix, windows)))]
        {
            let _ = child;
            (Tree {}, None)
        }
    }

    /// Kills the whole tree, at once and without waiting. Only called while the command
    /// itself is not yet reaped, so its id cannot belong to another process.
    pub fn kill(&self) {
        #[cfg(unix)]
        if let Some(pgid) = self.group.filter(|g| *g > 0) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        #[cfg(windows)]
        windows::kill(self.job.as_ref(), self.pid);
    }
}

#[cfg(windows)]
mod windows {
    use std::os::windows::io::{FromRawHandle, OwnedHandle, RawHandle};

    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, TerminateJobObject,
    };
    use windows_sys::Win32::System::Threading::{OpenProcess, TerminateProcess, PROCESS_TERMINATE};

    /// Exit code of the processes a kill ends.
    const KILLED: u32 = 1;

    /// A new unnamed job (not kill-on-close) holding `process`.
    pub fn job_for(process: RawHandle) -> std::io::Result<OwnedHandle> {
        // SAFETY: no security attributes and no name: both pointers may be null.
        let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if job.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `job` is a handle we just created and own from here on.
        let job = unsafe { OwnedHandle::from_raw_handle(job as RawHandle) };
        // SAFETY: both handles are open: the job is owned above, the process handle belongs
        // to a child that is not reaped yet.
        let ok = unsafe { AssignProcessToJobObject(raw(&job), process as HANDLE) };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(job)
    }

    /// Terminates the job, or the process alone if it has no job.
    pub fn kill(job: Option<&OwnedHandle>, pid: Option<u32>) {
        if let Some(job) = job {
            // SAFETY: the job handle is open for as long as `job` lives.
            unsafe { TerminateJobObject(raw(job), KILLED) };
            return;
        }
        let Some(pid) = pid else { return };
        // SAFETY: OpenProcess returns a new handle or null; the child is not reaped, so the
        // id is still its own; the handle is closed right after use.
        unsafe {
            let process = OpenProcess(PROCESS_TERMINATE, 0, pid);
            if !process.is_null() {
                TerminateProcess(process, KILLED);
                CloseHandle(process);
            }
        }
    }

    fn raw(handle: &OwnedHandle) -> HANDLE {
        use std::os::windows::io::AsRawHandle;
        handle.as_raw_handle() as HANDLE
    }
}
