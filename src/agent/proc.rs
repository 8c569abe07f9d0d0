//! Running one program for a bundled agent (the `claude` tool, a shell task, a verification
//! command): an argument list, never shell text built here; a process group of its own
//! (Unix), killed whole at its deadline and once it exits (nothing it left running in the
//! background survives it); stdout and stderr handed over chunk by chunk as they come.
//! Blocking: a thread per pipe, the caller's thread waits.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit status; `None` when the deadline killed it.
    pub status: Option<ExitStatus>,
}

impl Outcome {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// `exit code N`, `killed by signal N`, or `timed out`.
    pub fn describe(&self) -> String {
        match &self.status {
            None => "timed out".into(),
            Some(s) => match s.code() {
                Some(c) => format!("exit code {c}"),
                None => {
                    #[cfg(unix)]
                    {
                        use std::os::unix::process::ExitStatusExt;
                        format!("killed by signal {}", s.signal().unwrap_or(0))
                    }
                    #[cfg(not(unix))]
                    {
                        "ended without an exit code".into()
                    }
                }
            },
        }
    }
}

enum Msg {
    Data(Stream, Vec<u8>),
    Eof,
}

/// How long the pipes may stay open after the program ended (something outside its group
/// holding them): then they are given up.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs `cmd` until it exits or `deadline` passes, feeding `stdin` (if any) and handing each
/// chunk of output to `on_output`. An error only when it could not be started.
pub fn run(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    deadline: Instant,
    mut on_output: impl FnMut(Stream, &[u8]),
) -> io::Result<Outcome> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel();
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let mut open = 0;
    if let Some(out) = child.stdout.take() {
        pump(out, Stream::Stdout, tx.clone());
        open += 1;
    }
    if let Some(err) = child.stderr.take() {
        pump(err, Stream::Stderr, tx.clone());
        open += 1;
    }
    drop(tx);
    let mut status = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(20))) {
            Ok(Msg::Data(stream, bytes)) => on_output(stream, &bytes),
            Ok(Msg::Eof) => open -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open = 0,
        }
        if exited(&mut child) {
            kill_group(&mut child);
            status = child.wait().ok();
            break;
        }
    }
    if status.is_none() {
        // The deadline: the whole group goes.
        kill_group(&mut child);
        let _ = child.wait();
    }
    // What is still in the pipes.
    let grace = Instant::now() + DRAIN_GRACE;
    while open > 0 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Data(stream, bytes)) => on_output(stream, &bytes),
            Ok(Msg::Eof) => open -= 1,
            Err(_) => break,
        }
    }
    Ok(Outcome { status })
}

fn pump(mut from: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Msg::Data(stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(Msg::Eof);
    });
}

/// Whether the program has exited, without reaping it (Unix: its group stays addressable
/// until [`kill_group`] has run).
fn exited(child: &mut Child) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            return true;
        };
        // SAFETY: waitid(2) into a zeroed local siginfo_t, on our own child; WNOWAIT leaves
        // it to be reaped by `Child::wait`.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        }
    }
    #[cfg(not(unix))]
    {
        !matches!(child.try_wait(), Ok(None))
    }
}

/// SIGKILL to the program's whole process group (it leads it). Called before the program is
/// reaped, so its id cannot have been reused.
fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = child.kill();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn output_exit_and_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut out = Vec::new();
        let outcome = run(
            cmd,
            None,
            Instant::now() + Duration::from_secs(10),
            |s, b| out.push((s, String::from_utf8_lossy(b).into_owned())),
        )
        .unwrap();
        assert_eq!(outcome.status.and_then(|s| s.code()), Some(3));
        assert!(out.contains(&(Stream::Stdout, "out\n".into())));
        assert!(out.contains(&(Stream::Stderr, "err\n".into())));

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let start = Instant::now();
        let outcome = run(cmd, None, start + Duration::from_millis(200), |_, _| {}).unwrap();
        assert!(outcome.timed_out());
        // The background sleep was killed with the group: its pipe closed at once.
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
