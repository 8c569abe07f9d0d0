//! WakerActor: runs one wake attempt when the QueueActor asks ([`WakeTask`]), and says how it
//! ended ([`WakeExited`]). It decides nothing: retries, confirmation and giving up are the
//! task machine's rules; every attempt is on disk before it is asked for, with an id of its
//! own, so an outcome can never be taken for another attempt's.
//!
//! The command is the task's `wake_commands[target_type]`, else for `ollama`, `claude` and
//! `sidecar` the bundled agent (this program's `agent` subcommand, [`crate::config::Route`]),
//! else `wake_command`: a string runs
//! under `sh -c` (on Windows under `cmd.exe`, within the rules of [`crate::wincmd`]); a list
//! runs as program and arguments with no shell at all. Either way the
//! task reaches it only in environment variables (`TASK_ID`, `TASK_JSON`,
//! `TASK_DESCRIPTION`, `TASK_FILE`, `RESULTS_DIR`, `TASK_TARGET_TYPE`, `TASK_MODEL`,
//! `WAKE_ATTEMPT`): task data never becomes shell text, so a description holding
//! `$(rm -rf ~)` stays text, while a Node-era command such as `agent --message "${TASK_JSON}"`
//! keeps working because the shell expands the variable itself. The command runs apart from
//! the sidecar ([`crate::proctree`]: a process group of its own; on Windows its own hidden
//! console and a Job Object), so the agent it starts outlives the sidecar and does not get its
//! signals; its output goes to a per-task file (mode 0600), whose first bytes are logged.
//!
//! An attempt still running after `wake_timeout` has its whole process tree killed — unless
//! the agent confirmed ([`WakeConfirmed`]): an agent that runs inside its wake command is
//! never killed for taking long. [`CancelWake`] kills a running attempt's tree. On [`Stop`]
//! nothing is killed. [`GetRunningWakes`] tells a restarted QueueActor which attempts still
//! run here.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;

use actix::prelude::*;

use super::supervisor::ShutdownFlag;
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::config::{Route, WakeCommand};
use crate::log_event;
use crate::proctree::{self, Tree};
use crate::tasks::WakeOutcome;

/// Run one wake attempt.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeTask {
    pub wake_id: u64,
    pub attempt: u32,
    pub task_id: String,
    pub raw: String,
    pub description: String,
    pub task_file: PathBuf,
    pub output_file: PathBuf,
    pub target_type: Option<String>,
    pub model: Option<String>,
}

/// Kill attempt `wake_id`'s process tree if its command still runs.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CancelWake {
    pub wake_id: u64,
}

/// The agent of attempt `wake_id` confirmed its start: never kill it for its timeout.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeConfirmed {
    pub wake_id: u64,
}

/// Which attempts run here now (for a QueueActor that restarted).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<u64>")]
pub struct GetRunningWakes;

/// Published when a WakerActor starts: after a restart of the waker alone, the attempts
/// the previous one ran are out of sight.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct WakerStarted;

/// Published: an attempt ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct WakeExited {
    pub task_id: String,
    pub wake_id: u64,
    pub attempt: u32,
    pub outcome: WakeOutcome,
}

/// How much of the command's output goes into the log line.
pub(super) const OUTPUT_LOGGED: u64 = 2048;
/// Largest output one attempt keeps in its wake log: past it, the log is cut back to the
/// attempt's first [`WAKE_LOG_HEAD`] bytes and a line that says so, and goes on from there
/// (an agent that lives inside its wake command can write for days).
const WAKE_LOG_MAX: u64 = 1024 * 1024;
const WAKE_LOG_HEAD: u64 = 64 * 1024;
/// How often the wake logs of running attempts are measured (only while one runs).
const WAKE_LOG_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub struct WakerActor {
    env: Env,
    running: BTreeMap<u64, Running>,
}

struct Running {
    /// What the command started, to kill.
    tree: Rc<Tree>,
    confirmed: Rc<Cell<bool>>,
    task_id: String,
    /// The wake log, and where this attempt's output in it begins.
    output: PathBuf,
    offset: u64,
}

enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Failed(String),
}

impl WakerActor {
    pub fn new(env: &Env) -> Self {
        WakerActor {
            env: env.clone(),
            running: BTreeMap::new(),
        }
    }

    /// The command for a task of this routing target, and whether it is a bundled agent
    /// (run as this very program, found through `current_exe`, never on `PATH`).
    fn command_for(&self, target_type: Option<&str>) -> Result<(WakeCommand, bool), String> {
        let route = self.env.config.route(target_type);
        let bundled = matches!(route, Route::Bundled { .. });
        let own = if bundled {
            std::env::current_exe().map(upgraded).map_err(|e| {
                format!("cannot find the sidecar's own program for the bundled agent: {e}")
            })?
        } else {
            std::path::PathBuf::new()
        };
        route
            .command(&own)
            .map(|c| (c, bundled))
            .ok_or_else(|| "no wake command applies".to_string())
    }

    fn run_attempt(&mut self, task: WakeTask, ctx: &mut Context<Self>) {
        let config = self.env.config.clone();
        let (command, bundled) = match self.command_for(task.target_type.as_deref()) {
            Ok(found) => found,
            Err(why) => return self.publish(&task, WakeOutcome::Failed(why)),
        };
        log_event!(
            self.env.log,
            Info,
            "wake_attempt",
            task_id = task.task_id,
            attempt = task.attempt,
            of = config.wake_retry_delays.len() + 1,
            target_type = task.target_type,
            command = command.to_json(),
            bundled = bundled
        );
        let large = [
            ("TASK_JSON", &task.raw),
            ("TASK_DESCRIPTION", &task.description),
        ];
        if task.attempt == 1 {
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
        // Opening the output file stays beside the spawn, on the event loop (one local open,
        // like the fork itself): the attempt is in `running` as soon as it exists, so a cancel
        // can never miss it. Where this attempt's output begins comes from the open file.
        let mut offset = 0;
        let spawned = output_stdio(&task.output_file).and_then(|(out, err, at)| {
            offset = at;
            let mut cmd = match &command {
                WakeCommand::Shell(text) => proctree::shell(text),
                WakeCommand::Argv(argv) => {
                    let mut c = tokio::process::Command::new(&argv[0]);
                    c.args(&argv[1..]);
                    c
                }
            };
            cmd.env("TASK_ID", &task.task_id);
            for (name, value) in large {
                if fits_env(value) {
                    cmd.env(name, value);
                } else {
                    cmd.env(format!("{name}_OMITTED"), "1");
                }
            }
            for (name, value) in [
                ("TASK_TARGET_TYPE", &task.target_type),
                ("TASK_MODEL", &task.model),
            ] {
                match value.as_deref().filter(|v| fits_env(v)) {
                    Some(v) => cmd.env(name, v),
                    None => cmd.env_remove(name),
                };
            }
            // The bundled agents' settings, given to every wake command alike.
            match &config.ollama_url {
                Some(url) => cmd.env("AGENTCOM_OLLAMA_URL", url),
                None => cmd.env_remove("AGENTCOM_OLLAMA_URL"),
            };
            if config.allow_hub_commands {
                cmd.env("AGENTCOM_ALLOW_HUB_COMMANDS", "1");
            } else {
                cmd.env_remove("AGENTCOM_ALLOW_HUB_COMMANDS");
            }
            cmd.env("AGENTCOM_CLAUDE_COMMAND", &config.claude_command);
            cmd.env("TASK_FILE", &task.task_file)
                .env("RESULTS_DIR", &config.results_dir)
                .env("WAKE_ATTEMPT", task.attempt.to_string());
            // No service-manager or credential variable, no inherited descriptor.
            crate::process::spawn_agent(&mut cmd, out, err)
        });
        let timeout = config.wake_timeout;
        let confirmed = Rc::new(Cell::new(false));
        let wait = match spawned {
            Ok(mut child) => {
                let pid = child.id();
                let (tree, unkillable) = Tree::adopt(&child);
                if let Some(error) = unkillable {
                    log_event!(
                        self.env.log,
                        Warn,
                        "wake_tree_unkillable",
                        task_id = task.task_id,
                        attempt = task.attempt,
                        error = error,
                        note =
                            "a timeout or cancel can kill the wake command but not what it started"
                    );
                }
                let tree = Rc::new(tree);
                if self.running.is_empty() {
                    ctx.run_later(WAKE_LOG_CHECK, |act, ctx| act.cap_wake_logs(ctx));
                }
                self.running.insert(
                    task.wake_id,
                    Running {
                        tree: tree.clone(),
                        confirmed: confirmed.clone(),
                        task_id: task.task_id.clone(),
                        output: task.output_file.clone(),
                        offset,
                    },
                );
                let own = crate::process::OwnChild(pid);
                futures_util::future::Either::Left(async move {
                    let _own = own;
                    match tokio::time::timeout(timeout, child.wait()).await {
                        Ok(Ok(status)) => Ended::Exited(status),
                        Ok(Err(e)) => Ended::Failed(format!("waiting for the wake command: {e}")),
                        // A confirmed agent runs inside its wake command: let it.
                        Err(_) if confirmed.get() => match child.wait().await {
                            Ok(status) => Ended::Exited(status),
                            Err(e) => Ended::Failed(format!("waiting for the wake command: {e}")),
                        },
                        Err(_) => {
                            tree.kill();
                            let _ = child.wait().await;
                            Ended::TimedOut
                        }
                    }
                })
            }
            Err(e) => {
                let program = command.program().unwrap_or_default().to_string();
                let what = match command {
                    WakeCommand::Shell(_) => proctree::SHELL_NAME.to_string(),
                    WakeCommand::Argv(_) => program,
                };
                futures_util::future::Either::Right(std::future::ready(Ended::Failed(format!(
                    "cannot start {what}: {e}"
                ))))
            }
        };
        // What the attempt wrote is read off the event loop once it has ended.
        let output_file = task.output_file.clone();
        let ended = async move {
            let ended = wait.await;
            let output = actix_rt::task::spawn_blocking(move || read_output(&output_file, offset))
                .await
                .unwrap_or_default();
            (ended, output)
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(ended)
                .map(move |(ended, output), act, _| act.attempt_done(task, output, ended)),
        );
    }

    /// Cuts the wake logs of running attempts back to size (off the event loop), and looks
    /// again a second later while any attempt runs.
    fn cap_wake_logs(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_empty() {
            return;
        }
        let logs: Vec<(String, PathBuf, u64)> = self
            .running
            .values()
            .map(|r| (r.task_id.clone(), r.output.clone(), r.offset))
            .collect();
        let cut = actix_rt::task::spawn_blocking(move || {
            logs.into_iter()
                .filter_map(|(task_id, path, offset)| {
                    cap_output(&path, offset)
                        .ok()
                        .flatten()
                        .map(|n| (task_id, n))
                })
                .collect::<Vec<_>>()
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(cut).map(|cut, act, ctx| {
                for (task_id, bytes) in cut.unwrap_or_default() {
                    log_event!(
                        act.env.log,
                        Info,
                        "wake_log_cut",
                        task_id = task_id,
                        bytes = bytes,
                        kept_head = WAKE_LOG_HEAD
                    );
                }
                ctx.run_later(WAKE_LOG_CHECK, |act, ctx| act.cap_wake_logs(ctx));
            }),
        );
    }

    fn attempt_done(&mut self, task: WakeTask, output: String, ended: Ended) {
        let was = self.running.remove(&task.wake_id);
        let confirmed = was.as_ref().is_some_and(|r| r.confirmed.get());
        let outcome = match ended {
            Ended::Exited(status) if status.success() => WakeOutcome::Success,
            Ended::Exited(status) => WakeOutcome::Failed(describe_exit(status)),
            Ended::TimedOut => WakeOutcome::TimedOut(format!(
                "still running after wake_timeout_ms ({} ms): {} killed",
                self.env.config.wake_timeout.as_millis(),
                proctree::TREE_NAME
            )),
            Ended::Failed(e) => WakeOutcome::Failed(e),
        };
        match &outcome {
            WakeOutcome::Success => log_event!(
                self.env.log,
                Info,
                "wake_success",
                task_id = task.task_id,
                attempt = task.attempt,
                output = output
            ),
            WakeOutcome::Failed(error) | WakeOutcome::TimedOut(error) => log_event!(
                self.env.log,
                Warn,
                "wake_error",
                task_id = task.task_id,
                attempt = task.attempt,
                error = error,
                output = output,
                agent_confirmed = confirmed
            ),
        }
        self.publish(&task, outcome);
    }

    fn publish(&self, task: &WakeTask, outcome: WakeOutcome) {
        let _ = self.env.bus.send(WakeExited {
            task_id: task.task_id.clone(),
            wake_id: task.wake_id,
            attempt: task.attempt,
            outcome,
        });
    }
}

/// The program to start as a bundled agent, given what `current_exe` says: on Linux a
/// binary replaced while the sidecar runs (a package upgrade) reads as `<path> (deleted)`;
/// the file now at `<path>` is the upgraded sidecar, and its agents are the ones to run.
fn upgraded(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) if !exe.exists() => PathBuf::from(path),
        _ => exe,
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

/// The same private file for stdout and stderr, appended to, and its length before this
/// attempt.
pub(super) fn output_stdio(path: &std::path::Path) -> std::io::Result<(Stdio, Stdio, u64)> {
    let file = crate::fsx::open_private_append(path)?;
    let len = file.metadata()?.len();
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file), len))
}

/// Cuts an attempt's output in its wake log back to its first [`WAKE_LOG_HEAD`] bytes once
/// it is over [`WAKE_LOG_MAX`], with a line that says how much went; the command's later
/// output is appended after it (its descriptor appends). The bytes cut, if any. A log that
/// is gone (the task ended) is not made again.
fn cap_output(path: &std::path::Path, offset: u64) -> std::io::Result<Option<u64>> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut file = options.open(path)?;
    let len = file.metadata()?.len();
    if !file.metadata()?.is_file() || len <= offset.saturating_add(WAKE_LOG_MAX) {
        return Ok(None);
    }
    let keep = offset + WAKE_LOG_HEAD;
    file.set_len(keep)?;
    writeln!(
        file,
        "\n[agentcom-sidecar: {} bytes of this attempt's output cut here; its wake log keeps the first {} KiB and what follows]",
        len - keep,
        WAKE_LOG_HEAD / 1024
    )?;
    Ok(Some(len - keep))
}

/// What this attempt wrote, from `offset`, at most [`OUTPUT_LOGGED`] bytes.
pub(super) fn read_output(path: &std::path::Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.take(OUTPUT_LOGGED).read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

pub(super) fn describe_exit(status: std::process::ExitStatus) -> String {
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
        bus.register(addr.clone().recipient::<GetRunningWakes>());
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
        if self.running.contains_key(&msg.wake_id) {
            return;
        }
        // Ordered before the shutdown began, arrived after: not started. The attempt counts
        // as failed; the task is recovered at the next start.
        if self.env.kept.get::<ShutdownFlag>().began() {
            log_event!(
                self.env.log,
                Info,
                "wake_not_started",
                task_id = msg.task_id,
                attempt = msg.attempt,
                reason = "shutting_down"
            );
            return self.publish(
                &msg,
                WakeOutcome::Failed("not started: the shutdown began first".into()),
            );
        }
        self.run_attempt(msg, ctx);
    }
}

impl Handler<WakeConfirmed> for WakerActor {
    type Result = ();
    fn handle(&mut self, msg: WakeConfirmed, _: &mut Context<Self>) {
        if let Some(r) = self.running.get(&msg.wake_id) {
            r.confirmed.set(true);
        }
    }
}

impl Handler<CancelWake> for WakerActor {
    type Result = ();
    fn handle(&mut self, msg: CancelWake, _: &mut Context<Self>) {
        let Some(r) = self.running.get(&msg.wake_id) else {
            return;
        };
        r.tree.kill();
        log_event!(
            self.env.log,
            Info,
            "wake_cancelled",
            wake_id = msg.wake_id,
            was_running = true
        );
    }
}

impl Handler<GetRunningWakes> for WakerActor {
    type Result = Vec<u64>;
    fn handle(&mut self, _: GetRunningWakes, _: &mut Context<Self>) -> Vec<u64> {
        self.running.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_binary_starts_the_file_now_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentcom-sidecar");
        let deleted = PathBuf::from(format!("{} (deleted)", path.display()));
        assert_eq!(upgraded(deleted), path);
        assert_eq!(upgraded(path.clone()), path);
        // A file whose name really ends so is left alone.
        let odd = dir.path().join("x (deleted)");
        std::fs::write(&odd, "").unwrap();
        assert_eq!(upgraded(odd.clone()), odd);
    }
}
