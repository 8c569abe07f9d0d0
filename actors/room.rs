//! RoomActor: room chat (`room_message`) may wake the agent, safely. Opt-in: without
//! `room_wake_command` every message is only logged (`room_message_received`) and nothing
//! runs.
//!
//! It accepts [`RoomMessageFromHub`] (published by the HubActor) and nothing else. For each
//! message it applies the rules of [`crate::room`] in this order — not its own message, not a
//! replay (each `seq` at most once), of a wanted type, mentioning the agent if
//! `room_mention_only`, not while another room wake runs (`busy`), within the token bucket
//! (`rate_limited`) — and then runs the room wake command once, with the message only in its
//! environment (`ROOM_FROM`, `ROOM_TEXT`, `ROOM_SEQ`, `ROOM_MESSAGE_TYPE`, `ROOM_TIMESTAMP`)
//! and in the file `ROOM_MESSAGE_FILE` names: chat text is never command text. A message
//! that is skipped is logged with its reason and dropped; nothing is queued.
//!
//! Its slot is its own: at most one room wake command runs at a time, apart from the
//! WakerActor's task wakes, so a room message never starts or delays a task's agent. The
//! command is confined like a wake command (no service-manager or credential variable, no
//! inherited descriptor, no task variable), runs in a process group of its own with its
//! output appended to `room/room.wake.log`, and has its whole tree killed at
//! `room_wake_timeout_ms` — and on [`Stop`]: chat never leaves a command running past the
//! sidecar.
//!
//! State: the newest `seq` handled is written to `room/state.json` (beside the queue file)
//! before the command starts, so no restart wakes the agent for it again; the newest seen
//! (handled or skipped) is kept in memory across reconnects. The file is read off the event
//! loop when the actor starts; messages arriving meanwhile wait (at most [`PENDING_MAX`]).
//! It fails only if a blocking job panicked.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;

use super::hub::RoomMessageFromHub;
use super::supervisor::ShutdownFlag;
use super::waker::{describe_exit, output_stdio, read_output};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::config::WakeCommand;
use crate::log_event;
use crate::proctree::{self, Tree};
use crate::room::{self, Bucket, EnvValue, Mark, RoomMessage};

/// Messages held while the state file is read.
const PENDING_MAX: usize = 64;
/// Characters of a room text in the debug line, and of `from` in any line.
const SHOWN_CHARS: usize = 200;
/// Message files kept in `room/messages/` (older ones are removed at the next wake).
const MESSAGE_FILES_KEPT: usize = 8;
/// The room wake log is moved to `room.wake.log.1` at a wake once it is past this size.
const WAKE_LOG_MAX: u64 = 1024 * 1024;

pub struct RoomActor {
    env: Env,
    /// The state file has been read (or there is nothing to read: no room wake command).
    loaded: bool,
    pending: VecDeque<RoomMessageFromHub>,
    /// The newest message seen (handled or skipped).
    seen: Option<Mark>,
    bucket: Bucket,
    /// The room wake under way: its seq, and its process tree once it runs.
    running: Option<(u64, Option<Rc<Tree>>)>,
}

/// How a room wake command ended.
enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Failed(String),
}

impl RoomActor {
    pub fn new(env: &Env) -> Self {
        let config = &env.config;
        RoomActor {
            env: env.clone(),
            loaded: config.room_wake_command.is_none(),
            pending: VecDeque::new(),
            seen: None,
            bucket: Bucket::new(
                config.room_wake_burst,
                config.room_wake_min_interval,
                Instant::now(),
            ),
            running: None,
        }
    }

    fn state_file(&self) -> PathBuf {
        self.env.config.room_dir().join("state.json")
    }

    fn skipped(&self, seq: impl serde::Serialize, reason: &str) {
        log_event!(
            self.env.log,
            Info,
            "room_wake_skipped",
            seq = seq,
            reason = reason
        );
    }

    fn on_message(&mut self, msg: RoomMessageFromHub, ctx: &mut Context<Self>) {
        let configured = self.env.config.room_wake_command.is_some();
        let message = match msg.message {
            Ok(m) => m,
            Err(rejected) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "room_message_rejected",
                    seq = rejected.seq,
                    reason = rejected.reason
                );
                if configured {
                    self.skipped(rejected.seq, "invalid_message");
                }
                return;
            }
        };
        let shown_type = message
            .message_type
            .as_deref()
            .map(|t| room::shown(t, SHOWN_CHARS));
        let from = room::shown(&message.from, SHOWN_CHARS);
        // Info when a room wake command is set; without one, chat is not the sidecar's
        // business and stays at debug.
        let level = if configured {
            crate::config::LogLevel::Info
        } else {
            crate::config::LogLevel::Debug
        };
        log_event!(
            self.env.log,
            [level],
            "room_message_received",
            from = from,
            seq = message.seq,
            message_type = shown_type,
            bytes = message.text.len(),
            timestamp = message.timestamp
        );
        log_event!(
            self.env.log,
            Debug,
            "room_message_text",
            seq = message.seq,
            text = room::shown(&message.text, SHOWN_CHARS)
        );
        if !configured {
            return;
        }
        if let Err(reason) = self.decide(&message) {
            return self.skipped(message.seq, reason);
        }
        self.wake(message, ctx);
    }

    /// Whether `message` may wake the agent now; the reason it may not. Takes a token from
    /// the bucket when it may.
    fn decide(&mut self, message: &RoomMessage) -> Result<(), &'static str> {
        let config = &self.env.config;
        if room::is_own(&message.from, &config.agent_id, &config.name) {
            return Err("own_message");
        }
        if !room::is_new(self.seen, message.seq, message.timestamp) {
            return Err("replayed");
        }
        self.seen = Some(Mark {
            seq: message.seq,
            timestamp: message.timestamp,
        });
        if let Some(types) = &config.room_message_types {
            let wanted = message
                .message_type
                .as_deref()
                .is_some_and(|t| types.iter().any(|w| w.as_bytes() == t));
            if !wanted {
                return Err("type_filtered");
            }
        }
        if config.room_mention_only
            && !room::mentions(&message.text, &config.agent_id)
            && !room::mentions(&message.text, &config.name)
        {
            return Err("not_mentioned");
        }
        if self.env.kept.get::<ShutdownFlag>().began() {
            return Err("shutting_down");
        }
        if self.running.is_some() {
            return Err("busy");
        }
        if !self.bucket.take(Instant::now()) {
            return Err("rate_limited");
        }
        Ok(())
    }

    /// Records the seq as handled and writes the message file (off the event loop), then
    /// starts the command.
    fn wake(&mut self, message: RoomMessage, ctx: &mut Context<Self>) {
        self.running = Some((message.seq, None));
        let dir = self.env.config.room_dir();
        let state = self.state_file();
        let mark = Mark {
            seq: message.seq,
            timestamp: message.timestamp,
        };
        let text = message.text.clone();
        let seq = message.seq;
        let prepared =
            actix_rt::task::spawn_blocking(move || prepare(&dir, &state, mark, seq, &text));
        ctx.spawn(
            prepared
                .into_actor(self)
                .map(move |prepared, act, ctx| match prepared {
                    Ok(Ok(file)) => act.start(message, file, ctx),
                    Ok(Err(e)) => {
                        act.running = None;
                        log_event!(
                            act.env.log,
                            Warn,
                            "room_wake_skipped",
                            seq = seq,
                            reason = "state_unwritable",
                            error = e.to_string()
                        );
                    }
                    Err(e) => {
                        act.running = None;
                        act.env
                            .fail(ctx, format!("writing the room wake state panicked: {e}"));
                    }
                }),
        );
    }

    fn start(&mut self, message: RoomMessage, file: PathBuf, ctx: &mut Context<Self>) {
        let seq = message.seq;
        if self.env.kept.get::<ShutdownFlag>().began() {
            self.running = None;
            return self.skipped(seq, "shutting_down");
        }
        let Some(command) = self.env.config.room_wake_command.clone() else {
            self.running = None;
            return;
        };
        let output_file = self.env.config.room_dir().join("room.wake.log");
        let mut offset = 0;
        let spawned = output_stdio(&output_file).and_then(|(out, err, at)| {
            offset = at;
            let mut cmd = match &command {
                WakeCommand::Shell(text) => proctree::shell(text),
                WakeCommand::Argv(argv) => {
                    let mut c = tokio::process::Command::new(&argv[0]);
                    c.args(&argv[1..]);
                    c
                }
            };
            for name in room::FOREIGN_ENV {
                cmd.env_remove(name);
            }
            for (name, value) in room::environment(&message) {
                match value {
                    EnvValue::Set(bytes) => cmd.env(name, os_string(bytes)),
                    EnvValue::Omitted => cmd.env(format!("{name}_OMITTED"), "1"),
                };
            }
            cmd.env("ROOM_MESSAGE_FILE", &file);
            // No service-manager or credential variable, no inherited descriptor.
            crate::process::spawn_agent(&mut cmd, out, err)
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.running = None;
                let what = match &command {
                    WakeCommand::Shell(_) => proctree::SHELL_NAME.to_string(),
                    WakeCommand::Argv(argv) => argv[0].clone(),
                };
                log_event!(
                    self.env.log,
                    Warn,
                    "room_wake_done",
                    seq = seq,
                    outcome = "failed",
                    error = format!("cannot start {what}: {e}")
                );
                return;
            }
        };
        let pid = child.id();
        let (tree, unkillable) = Tree::adopt(&child);
        if let Some(error) = unkillable {
            log_event!(
                self.env.log,
                Warn,
                "room_wake_tree_unkillable",
                seq = seq,
                error = error
            );
        }
        let tree = Rc::new(tree);
        self.running = Some((seq, Some(tree.clone())));
        log_event!(self.env.log, Info, "room_wake", seq = seq, pid = pid);
        let timeout = self.env.config.room_wake_timeout;
        let own = crate::process::OwnChild(pid);
        let ended = async move {
            let _own = own;
            let ended = match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) => Ended::Exited(status),
                Ok(Err(e)) => Ended::Failed(format!("waiting for the room wake command: {e}")),
                Err(_) => {
                    tree.kill();
                    let _ = child.wait().await;
                    Ended::TimedOut
                }
            };
            let output = actix_rt::task::spawn_blocking(move || read_output(&output_file, offset))
                .await
                .unwrap_or_default();
            (ended, output)
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(ended)
                .map(move |(ended, output), act, _| act.done(seq, ended, output)),
        );
    }

    fn done(&mut self, seq: u64, ended: Ended, output: String) {
        if self.running.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.running = None;
        }
        let (outcome, error) = match ended {
            Ended::Exited(status) if status.success() => ("success", None),
            Ended::Exited(status) => ("failed", Some(describe_exit(status))),
            Ended::TimedOut => (
                "timed_out",
                Some(format!(
                    "still running after room_wake_timeout_ms ({} ms): {} killed",
                    self.env.config.room_wake_timeout.as_millis(),
                    proctree::TREE_NAME
                )),
            ),
            Ended::Failed(e) => ("failed", Some(e)),
        };
        match error {
            None => log_event!(
                self.env.log,
                Info,
                "room_wake_done",
                seq = seq,
                outcome = outcome,
                output = output
            ),
            Some(error) => log_event!(
                self.env.log,
                Warn,
                "room_wake_done",
                seq = seq,
                outcome = outcome,
                error = error,
                output = output
            ),
        }
    }

    fn loaded(&mut self, mark: Option<Mark>, ctx: &mut Context<Self>) {
        self.loaded = true;
        // A message seen while loading may be newer than the file's.
        if self.seen.is_none() {
            self.seen = mark;
        }
        while let Some(msg) = self.pending.pop_front() {
            self.on_message(msg, ctx);
        }
    }
}

/// The value of an environment variable from bytes ([`room::fits_env`] already held: on
/// Windows they are UTF-8).
fn os_string(bytes: Vec<u8>) -> OsString {
    #[cfg(unix)]
    {
        std::os::unix::ffi::OsStringExt::from_vec(bytes)
    }
    #[cfg(not(unix))]
    {
        OsString::from(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Before a room wake: the seq recorded as handled, the text written to its message file
/// (whose path is returned), old message files removed, a large wake log moved aside.
fn prepare(
    dir: &Path,
    state: &Path,
    mark: Mark,
    seq: u64,
    text: &[u8],
) -> std::io::Result<PathBuf> {
    let body = serde_json::json!({"version": 1, "seq": mark.seq, "timestamp": mark.timestamp});
    crate::fsx::write_atomic(state, body.to_string().as_bytes())?;
    let messages = dir.join("messages");
    let file = messages.join(format!("{seq}.txt"));
    crate::fsx::write_atomic(&file, text)?;
    prune_messages(&messages, &file);
    let log = dir.join("room.wake.log");
    if std::fs::symlink_metadata(&log).is_ok_and(|m| m.is_file() && m.len() > WAKE_LOG_MAX) {
        let _ = std::fs::rename(&log, dir.join("room.wake.log.1"));
    }
    Ok(file)
}

/// Removes all but the newest [`MESSAGE_FILES_KEPT`] message files (never `current`).
fn prune_messages(messages: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(messages) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?;
            (meta.is_file() && e.path() != current).then(|| (modified, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(MESSAGE_FILES_KEPT - 1) {
        let _ = std::fs::remove_file(path);
    }
}

/// The newest seq handled, from the state file; `Err` says why a file that is there cannot
/// be used.
fn load_state(path: &Path) -> Result<Option<Mark>, String> {
    match crate::fsx::read_untrusted(path, 4096) {
        Ok(crate::fsx::Untrusted::Bytes(bytes)) => serde_json::from_slice::<Mark>(&bytes)
            .map(Some)
            .map_err(|e| format!("not a room state: {e}")),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.loaded {
            return;
        }
        let path = self.state_file();
        let read = actix_rt::task::spawn_blocking(move || load_state(&path));
        ctx.spawn(read.into_actor(self).map(|read, act, ctx| match read {
            Ok(Ok(mark)) => act.loaded(mark, ctx),
            Ok(Err(why)) => {
                log_event!(
                    act.env.log,
                    Warn,
                    "room_state_unreadable",
                    file = act.state_file().to_string_lossy(),
                    error = why,
                    note = "starting without a newest seq: it is written again at the next room wake"
                );
                act.loaded(None, ctx);
            }
            Err(e) => act
                .env
                .fail(ctx, format!("reading the room wake state panicked: {e}")),
        }));
    }
}

impl Drop for RoomActor {
    fn drop(&mut self) {
        // However the actor ends (a panic included), a room command does not outlive it.
        if let Some((_, Some(tree))) = &self.running {
            tree.kill();
        }
    }
}

crate::answers_probe!(RoomActor);

impl Child for RoomActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<RoomMessageFromHub>());
    }
}

impl Handler<Stop> for RoomActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        if let Some((seq, Some(tree))) = self.running.take() {
            tree.kill();
            log_event!(
                self.env.log,
                Info,
                "room_wake_done",
                seq = seq,
                outcome = "stopped",
                error = "the sidecar is stopping: the room wake command's process tree is killed"
            );
        }
        ctx.stop();
    }
}

impl Handler<RoomMessageFromHub> for RoomActor {
    type Result = ();
    fn handle(&mut self, msg: RoomMessageFromHub, ctx: &mut Context<Self>) {
        if !self.loaded {
            if self.pending.len() < PENDING_MAX {
                self.pending.push_back(msg);
            } else {
                let seq = msg.message.as_ref().ok().map(|m| m.seq);
                self.skipped(seq, "busy");
            }
            return;
        }
        self.on_message(msg, ctx);
    }
}
