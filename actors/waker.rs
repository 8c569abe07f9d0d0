//! WakerActor: runs the wake command that starts the agent for a task.
//!
//! `sh -c wake_command`, with the task only in environment variables (`TASK_ID`,
//! `TASK_JSON`, `TASK_DESCRIPTION`, `TASK_FILE`, `RESULTS_DIR`): task data never becomes
//! shell text, so a description holding `$(rm -rf ~)` stays text, while a Node-era command
//! such as `agent --message "Task: ${TASK_JSON}"` keeps working because the shell expands
//! the variable itself. The command runs in a process group of its own, so the agent it
//! starts does not receive the signals meant for the sidecar and outlives a sidecar restart;
//! its stdout and stderr go to a per-task file (a pipe would break the agent once the
//! sidecar is gone), whose first bytes are logged with the outcome.
//!
//! An attempt that exits non-zero, cannot start, or runs past `wake_timeout` (its whole
//! process group is killed) is retried after each of `wake_retry_delays`; then
//! [`WakeFailed`]. Exit 0 is [`WakeSucceeded`]. [`CancelWake`] kills a running attempt's
//! process group and drops the retries; [`WakeConfirmed`] (the agent wrote `.started`) drops
//! them without killing anything. On [`Stop`] nothing is killed: a wake in progress is re-run
//! after restart if the agent never confirmed. A restart of this actor loses the retry
//! schedule only: it publishes [`WakerStarted`] and the QueueActor asks again.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use actix::prelude::*;

use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;

/// Run the wake command for this task (ignored if it is already being woken).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeTask {
    pub task_id: String,
    pub raw: String,
    pub description: String,
    pub task_file: PathBuf,
    pub output_file: PathBuf,
}

/// Stop waking this task: kill a running attempt's process group, drop the retries.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CancelWake {
    pub task_id: String,
}

/// The agent confirmed its start: no more attempts for this task. Nothing is killed (a
/// wake command still running may be the agent itself); its outcome no longer matters.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeConfirmed {
    pub task_id: String,
}

/// Published when a WakerActor starts: after a restart of the waker alone, a task that was
/// being woken has to be asked for again.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct WakerStarted;

/// Published: the wake command exited 0.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeSucceeded {
    pub task_id: String,
}

/// Published: every attempt failed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeFailed {
    pub task_id: String,
    pub error: String,
}

/// How much of the command's output goes into the log line.
const OUTPUT_LOGGED: u64 = 2048;

pub struct WakerActor {
    env: Env,
    current: Option<Waking>,
}

struct Waking {
    task: WakeTask,
    attempt: u32,
    /// Process group of the running attempt.
    running: Option<i32>,
    /// The agent confirmed its start: the running attempt is the last, whatever it returns.
    confirmed: bool,
}

enum Outcome {
    Exited(std::process::ExitStatus),
    TimedOut,
    Failed(String),
}

impl WakerActor {
    pub fn new(env: &Env) -> Self {
        WakerActor {
            env: env.clone(),
            current: None,
        }
    }

    fn attempts(&self) -> u32 {
        self.env.config.wake_retry_delays.len() as u32 + 1
    }

    fn run_attempt(&mut self, ctx: &mut Context<Self>) {
        let attempts = self.attempts();
        let config = self.env.config.clone();
        let Some(command) = config.wake_command.clone() else {
            return;
        };
        let Some(waking) = &mut self.current else {
            return;
        };
        waking.attempt += 1;
        let attempt = waking.attempt;
        let task = waking.task.clone();
        log_event!(
            self.env.log,
            Info,
            "wake_attempt",
            task_id = task.task_id,
            attempt = attempt,
            of = attempts
        );

        let offset = std::fs::metadata(&task.output_file)
            .map(|m| m.len())
            .unwrap_or(0);
        let large = [
            ("TASK_JSON", &task.raw),
            ("TASK_DESCRIPTION", &task.description),
        ];
        if attempt == 1 {
            for (name, value) in large.iter().filter(|(_, v)| !fits_env(v)) {
                log_event!(
                    self.env.log,
                    Warn,
                    "wake_env_omitted",
                    task_id = task.task_id,
                    variable = name,
                    bytes = value.len(),
                    note = "too large for one environment variable, or holds a NUL: read TASK_FILE"
                );
            }
        }
        let spawned = output_stdio(&task.output_file).and_then(|(out, err)| {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c").arg(&command).env("TASK_ID", &task.task_id);
            for (name, value) in large {
                if fits_env(value) {
                    cmd.env(name, value);
                } else {
                    cmd.env(format!("{name}_OMITTED"), "1");
                }
            }
            cmd.env("TASK_FILE", &task.task_file)
                .env("RESULTS_DIR", &config.results_dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(false);
            #[cfg(unix)]
            cmd.process_group(0);
            cmd.spawn()
        });
        let timeout = config.wake_timeout;
        let wait = match spawned {
            Ok(mut child) => {
                let group = child.id().map(|id| id as i32);
                waking.running = group;
                futures_util::future::Either::Left(async move {
                    match tokio::time::timeout(timeout, child.wait()).await {
                        Ok(Ok(status)) => Outcome::Exited(status),
                        Ok(Err(e)) => Outcome::Failed(format!("waiting for the wake command: {e}")),
                        Err(_) => {
                            kill_group(group);
                            let _ = child.wait().await;
                            Outcome::TimedOut
                        }
                    }
                })
            }
            Err(e) => futures_util::future::Either::Right(std::future::ready(Outcome::Failed(
                format!("cannot start sh: {e}"),
            ))),
        };
        let task_id = task.task_id.clone();
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(wait).map(move |outcome, act, ctx| {
                act.attempt_done(&task_id, attempt, offset, outcome, ctx)
            }),
        );
    }

    fn attempt_done(
        &mut self,
        task_id: &str,
        attempt: u32,
        offset: u64,
        outcome: Outcome,
        ctx: &mut Context<Self>,
    ) {
        let Some(waking) = &mut self.current else {
            return;
        };
        if waking.task.task_id != task_id || waking.attempt != attempt {
            return;
        }
        waking.running = None;
        let output = read_output(&waking.task.output_file, offset);
        let error = match outcome {
            Outcome::Exited(status) if status.success() => {
                log_event!(
                    self.env.log,
                    Info,
                    "wake_success",
                    task_id = task_id,
                    attempt = attempt,
                    output = output
                );
                self.current = None;
                let _ = self.env.bus.send(WakeSucceeded {
                    task_id: task_id.to_string(),
                });
                return;
            }
            Outcome::Exited(status) => describe_exit(status),
            Outcome::TimedOut => format!(
                "still running after wake_timeout_ms ({} ms): process group killed",
                self.env.config.wake_timeout.as_millis()
            ),
            Outcome::Failed(e) => e,
        };
        log_event!(
            self.env.log,
            Warn,
            "wake_error",
            task_id = task_id,
            attempt = attempt,
            error = error,
            output = output
        );
        if self.current.as_ref().is_some_and(|w| w.confirmed) {
            // The agent runs (it confirmed): no retry, and nothing to report as failed.
            self.current = None;
            return;
        }
        let delays = &self.env.config.wake_retry_delays;
        match delays.get(attempt as usize - 1) {
            Some(delay) => {
                let delay: Duration = *delay;
                let id = task_id.to_string();
                ctx.run_later(delay, move |act, ctx| {
                    if act
                        .current
                        .as_ref()
                        .is_some_and(|w| w.task.task_id == id && w.attempt == attempt)
                    {
                        act.run_attempt(ctx);
                    }
                });
            }
            None => {
                log_event!(
                    self.env.log,
                    Error,
                    "wake_failed",
                    task_id = task_id,
                    attempts = attempt,
                    error = error
                );
                self.current = None;
                let _ = self.env.bus.send(WakeFailed {
                    task_id: task_id.to_string(),
                    error,
                });
            }
        }
    }
}

/// Largest task value passed in one environment variable. Linux refuses a single string
/// over 128 KiB (`Argument list too long`); the whole task is always in `TASK_FILE`.
const ENV_VALUE_MAX: usize = 64 * 1024;

/// Whether a value can go into the environment: small enough, and no NUL (which no
/// environment string can hold).
fn fits_env(value: &str) -> bool {
    value.len() <= ENV_VALUE_MAX && !value.contains('\0')
}

/// The same file for stdout and stderr, appended to.
fn output_stdio(path: &std::path::Path) -> std::io::Result<(Stdio, Stdio)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// What this attempt wrote, from `offset`, at most [`OUTPUT_LOGGED`] bytes.
fn read_output(path: &std::path::Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.take(OUTPUT_LOGGED).read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "ended without an exit code".to_string(),
    }
}

/// SIGKILL to the whole process group (the wake command and everything it started).
fn kill_group(group: Option<i32>) {
    #[cfg(unix)]
    if let Some(pgid) = group.filter(|g| *g > 0) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = group;
}

impl Actor for WakerActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let _ = self.env.bus.send(WakerStarted);
    }
}

crate::answers_probe!(WakerActor);

impl Child for WakerActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<WakeTask>());
        bus.register(addr.clone().recipient::<CancelWake>());
        bus.register(addr.clone().recipient::<WakeConfirmed>());
    }
}

impl Handler<Stop> for WakerActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // A running wake command is left alone: the agent it starts must outlive the sidecar.
        ctx.stop();
    }
}

impl Handler<WakeTask> for WakerActor {
    type Result = ();
    fn handle(&mut self, msg: WakeTask, ctx: &mut Context<Self>) {
        if self.env.config.wake_command.is_none() {
            return;
        }
        match &self.current {
            Some(w) if w.task.task_id == msg.task_id => return,
            Some(w) => kill_group(w.running),
            None => {}
        }
        self.current = Some(Waking {
            task: msg,
            attempt: 0,
            running: None,
            confirmed: false,
        });
        self.run_attempt(ctx);
    }
}

impl Handler<WakeConfirmed> for WakerActor {
    type Result = ();
    fn handle(&mut self, msg: WakeConfirmed, _: &mut Context<Self>) {
        let Some(waking) = self
            .current
            .as_mut()
            .filter(|w| w.task.task_id == msg.task_id)
        else {
            return;
        };
        if waking.running.is_some() {
            // Its outcome is still logged when it ends; then no retry follows.
            waking.confirmed = true;
        } else {
            // Between attempts: the pending retry finds nothing to do.
            self.current = None;
        }
    }
}

impl Handler<CancelWake> for WakerActor {
    type Result = ();
    fn handle(&mut self, msg: CancelWake, _: &mut Context<Self>) {
        let Some(waking) = &self.current else { return };
        if waking.task.task_id != msg.task_id {
            return;
        }
        kill_group(waking.running);
        log_event!(
            self.env.log,
            Info,
            "wake_cancelled",
            task_id = msg.task_id,
            was_running = waking.running.is_some()
        );
        self.current = None;
    }
}
