//! ResultsActor: watches `results_dir` for what the agent writes (the file contract of
//! `docs/usage/writing-an-agent.md`).
//!
//! - `<task_id>.started` → [`StartedFileSeen`].
//! - `<task_id>.json` → [`ResultFileRead`] once it is completely written: the parsed object,
//!   or why it is not a valid result.
//! - `<task_id>.progress` (JSON lines, appended) → one [`AgentProgressSeen`] per new
//!   complete line that is a JSON object, read a bounded piece at a time; after each piece
//!   an [`AgentProgressRead`], and the next piece only after the QueueActor's
//!   [`ProgressFlow`] `open` (back-pressure: the events read wait to go out).
//!
//! "Completely written": a file renamed into place, or closed after writing (inotify's
//! `IN_CLOSE_WRITE`), is final: it is a result or it is invalid. A change while the file is
//! still open for writing only counts if it already parses as a JSON object (nothing can be
//! appended to a complete object and leave it valid); an empty file is no result yet. A file
//! found by a scan (at start-up, or when polling) without such events is declared invalid
//! only after it has stopped changing for `result_settle`.
//!
//! Files are read untrusted (see [`crate::fsx::read_untrusted`]): no symlink followed, no
//! blocking open (a FIFO cannot hang the reader), regular files only, at most
//! `max_result_bytes`. Reading and listing the directory happen on the blocking pool; on the
//! event loop there is only a stat per file to tell a change. The
//! directory is watched with inotify (the `notify` crate), or polled every second when
//! inotify cannot be used (watch limit reached, no inotify); it is scanned in full at
//! start-up, after a watch error, and on a [`RescanResults`] without a task id (one with a
//! task id looks at that task's files only). The actor decides nothing about tasks. It fails (and
//! is restarted) only if `results_dir` cannot be created or watched at all.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::Watcher;
use serde_json::{Map, Value};

use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::tasks::store::{self, ResultRead};
use crate::tasks::valid_task_id;

/// Look again at one task's files (`<id>.started`, `<id>.json`, `<id>.progress`), or with
/// no task id at the whole results directory, and report them, including what was reported
/// before (the QueueActor now cares about a task it ignored, or was restarted).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RescanResults {
    pub task_id: Option<String>,
}

/// Published: `<task_id>.started` exists.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct StartedFileSeen {
    pub task_id: String,
}

/// Published: `<task_id>.json` was read: the result object, or why it is not valid.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ResultFileRead {
    pub task_id: String,
    pub outcome: Result<Map<String, Value>, String>,
}

/// Published: a new line of `<task_id>.progress`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AgentProgressSeen {
    pub task_id: String,
    /// The line's `progress`, when it is a whole number from 0 to 100.
    pub progress: Option<i64>,
    /// The line itself (forwarded as `execution_event`).
    pub event: Map<String, Value>,
}

/// Published after the [`AgentProgressSeen`] lines of one read: reading that file goes on
/// only after a [`ProgressFlow`] `open` for it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AgentProgressRead {
    pub task_id: String,
}

/// From the QueueActor: whether more of `<task_id>.progress` may be read now (`open`), or
/// only after a later `open` (the lines already read wait to go out).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ProgressFlow {
    pub task_id: String,
    pub open: bool,
}

/// Changes under the results directory, from the watcher's thread.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct FsChanged(notify::Result<notify::Event>);

/// How far each progress file was read (see [`ResultsActor`]'s `progress`).
#[derive(Default)]
struct KeptOffsets(std::cell::RefCell<HashMap<String, (u64, bool)>>);

/// Size and modification time: what a file looked like when it was last read.
type Fingerprint = (u64, Option<SystemTime>);

/// Longest progress line read; a longer one is skipped.
const PROGRESS_LINE_MAX: usize = 64 * 1024;
/// The most of a progress file read at once: one line of the longest kind and its newline.
const PROGRESS_CHUNK: usize = PROGRESS_LINE_MAX + 1;
/// How soon a result file that could not be read for a passing reason (out of descriptors or
/// memory) is read again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(1);

pub struct ResultsActor {
    env: Env,
    watcher: Option<Box<dyn Watcher>>,
    /// No close events (polling): unparsable files are judged by the settle time.
    polling: bool,
    /// Results already published, by task id, with the content they had.
    reported: HashMap<String, Fingerprint>,
    started: HashSet<String>,
    /// Results being read right now, and those that changed meanwhile (with whether the
    /// change was final).
    reading: HashSet<String>,
    look_again: HashMap<String, Trigger>,
    /// Progress files: bytes consumed so far, and whether a line over the limit is being
    /// skipped there. Kept across a restart of this actor: its events went out already,
    /// and reading the files again from their start would show their text twice.
    progress: Rc<KeptOffsets>,
    /// Progress files whose lines were published and not yet taken in (waiting for
    /// [`ProgressFlow`] `open`).
    progress_held: HashSet<String>,
    /// Progress files being read, and whether they changed meanwhile (read again after).
    progress_reading: HashMap<String, bool>,
}

/// What made us look at a result file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Renamed into place or closed after writing: complete.
    Final,
    /// Changed while possibly still open for writing.
    Changed,
    /// Found by a scan: no events to tell.
    Scan,
}

impl Trigger {
    fn max(self, other: Trigger) -> Trigger {
        if self == Trigger::Final || other == Trigger::Final {
            Trigger::Final
        } else if self == Trigger::Changed || other == Trigger::Changed {
            Trigger::Changed
        } else {
            Trigger::Scan
        }
    }
}

/// What a file in the results directory is.
enum Name {
    Started(String),
    Result(String),
    Progress(String),
}

impl ResultsActor {
    pub fn new(env: &Env) -> Self {
        ResultsActor {
            env: env.clone(),
            watcher: None,
            polling: false,
            reported: HashMap::new(),
            started: HashSet::new(),
            reading: HashSet::new(),
            look_again: HashMap::new(),
            progress: env.kept.get::<KeptOffsets>(),
            progress_reading: HashMap::new(),
            progress_held: HashSet::new(),
        }
    }

    fn watch(&mut self, ctx: &mut Context<Self>) -> notify::Result<()> {
        let dir = self.env.config.results_dir.clone();
        let recipient = ctx.address().recipient::<FsChanged>();
        let forward = move |event| recipient.do_send(FsChanged(event));
        let inotify = notify::recommended_watcher(forward.clone()).and_then(|mut w| {
            w.watch(&dir, notify::RecursiveMode::NonRecursive)
                .map(|()| w)
        });
        let watcher: Box<dyn Watcher> = match inotify {
            Ok(w) => {
                self.polling = false;
                Box::new(w)
            }
            Err(e) => {
                // The watch limit reached (ENOSPC), no inotify: poll instead of failing.
                log_event!(
                    self.env.log,
                    Warn,
                    "results_watch_fallback",
                    error = e.to_string(),
                    poll_ms = 1000,
                    note = "results_dir is polled every second (raise fs.inotify.max_user_watches for instant results)"
                );
                let config = notify::Config::default().with_poll_interval(Duration::from_secs(1));
                let mut w = notify::PollWatcher::new(forward, config)?;
                w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
                self.polling = true;
                Box::new(w)
            }
        };
        self.watcher = Some(watcher);
        Ok(())
    }

    /// `results_dir` was removed or replaced: create it again, watch the new one, and look
    /// at what is in it.
    fn rewatch(&mut self, ctx: &mut Context<Self>) {
        let dir = self.env.config.results_dir.clone();
        log_event!(
            self.env.log,
            Warn,
            "results_dir_replaced",
            dir = dir,
            action = "watching it again"
        );
        self.watcher = None;
        let watched = crate::fsx::create_private_dir(&dir)
            .map_err(notify::Error::io)
            .and_then(|()| self.watch(ctx));
        if let Err(e) = watched {
            return self.env.fail(
                ctx,
                format!("cannot watch results_dir {} again: {e}", dir.display()),
            );
        }
        self.forget_all();
        self.scan(ctx);
    }

    fn forget_all(&mut self) {
        self.reported.clear();
        self.started.clear();
        self.progress.0.borrow_mut().clear();
        self.progress_held.clear();
    }

    /// Lists the results directory off the event loop (it may hold many files), then looks
    /// at each.
    fn scan(&mut self, ctx: &mut Context<Self>) {
        let dir = self.env.config.results_dir.clone();
        let list = actix_rt::task::spawn_blocking(move || {
            std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .collect::<Vec<PathBuf>>()
                })
                .map_err(|e| (dir, e))
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(list).map(|listed, act, ctx| match listed {
                Ok(Ok(paths)) => {
                    for path in paths {
                        act.on_path(&path, Trigger::Scan, ctx);
                    }
                }
                Ok(Err((dir, e))) => log_event!(
                    act.env.log,
                    Error,
                    "results_scan_failed",
                    dir = dir,
                    error = e.to_string()
                ),
                Err(e) => log_event!(
                    act.env.log,
                    Error,
                    "results_scan_failed",
                    error = e.to_string()
                ),
            }),
        );
    }

    fn on_path(&mut self, path: &Path, trigger: Trigger, ctx: &mut Context<Self>) {
        match classify(path) {
            Some(Name::Started(task_id)) => {
                let there = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
                if !there {
                    self.started.remove(&task_id);
                } else if self.started.insert(task_id.clone()) {
                    let _ = self.env.bus.send(StartedFileSeen { task_id });
                }
            }
            Some(Name::Result(task_id)) => self.check(task_id, trigger, ctx),
            Some(Name::Progress(task_id)) => self.read_progress(task_id, ctx),
            None => {}
        }
    }

    /// Reads `<task_id>.json` (off the event loop) and publishes it, unless it is still
    /// being written.
    fn check(&mut self, task_id: String, trigger: Trigger, ctx: &mut Context<Self>) {
        let path = self.env.config.results_dir.join(format!("{task_id}.json"));
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            // Removed (reported and cleaned up, or never finished).
            self.reported.remove(&task_id);
            self.started.remove(&task_id);
            return;
        };
        let fingerprint = (meta.len(), meta.modified().ok());
        if self.reported.get(&task_id) == Some(&fingerprint) {
            return;
        }
        if !self.reading.insert(task_id.clone()) {
            // A read is under way: look again when it is done.
            let t = self
                .look_again
                .get(&task_id)
                .map_or(trigger, |t| t.max(trigger));
            self.look_again.insert(task_id, t);
            return;
        }
        let max = self.env.config.max_result_bytes;
        let read = actix_rt::task::spawn_blocking(move || store::read_result(&path, max));
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(read).map(move |result, act, ctx| {
                act.reading.remove(&task_id);
                match result {
                    Ok(Some(outcome)) => {
                        act.decide(task_id.clone(), fingerprint, trigger, outcome, ctx)
                    }
                    // Empty (opened, nothing written yet) or gone: no result yet.
                    Ok(None) => {}
                    Err(e) => log_event!(
                        act.env.log,
                        Warn,
                        "result_read_failed",
                        task_id = task_id,
                        error = e.to_string()
                    ),
                }
                if let Some(again) = act.look_again.remove(&task_id) {
                    act.check(task_id, again, ctx);
                }
            }),
        );
    }

    /// Publishes what a read found, or waits for a file that may still be being written.
    fn decide(
        &mut self,
        task_id: String,
        fingerprint: Fingerprint,
        trigger: Trigger,
        read: ResultRead,
        ctx: &mut Context<Self>,
    ) {
        if let ResultRead::Transient(why) = &read {
            // Out of descriptors or memory for a moment: the file is read again, whatever it
            // holds, and nothing is decided until a read succeeds.
            log_event!(
                self.env.log,
                Warn,
                "result_read_deferred",
                task_id = task_id,
                error = why,
                retry_ms = TRANSIENT_RETRY.as_millis() as u64
            );
            ctx.run_later(TRANSIENT_RETRY, move |act, ctx| {
                act.check(task_id, trigger, ctx);
            });
            return;
        }
        if let ResultRead::Partial(_) = read {
            match (trigger, self.polling) {
                (Trigger::Final, _) => {}
                // Still open for writing: its close (or rename) will come.
                (Trigger::Changed, false) => return,
                // No events to tell: decide once it has stopped changing.
                (Trigger::Scan, _) | (Trigger::Changed, true) => {
                    let settle = self.env.config.result_settle;
                    ctx.run_later(settle, move |act, ctx| {
                        let path = act.env.config.results_dir.join(format!("{task_id}.json"));
                        let now =
                            std::fs::symlink_metadata(path).map(|m| (m.len(), m.modified().ok()));
                        if now.ok() == Some(fingerprint) {
                            act.check(task_id, Trigger::Final, ctx);
                        }
                    });
                    return;
                }
            }
        }
        self.reported.insert(task_id.clone(), fingerprint);
        let outcome = read.into_result();
        let _ = self.env.bus.send(ResultFileRead { task_id, outcome });
    }

    /// Reads the next complete lines of `<task_id>.progress` (off the event loop), at most
    /// [`PROGRESS_CHUNK`] bytes at a time. Once lines are published, the next read waits for
    /// the QueueActor's [`ProgressFlow`]: it says when what was read has gone out far enough
    /// (back-pressure), so an agent that writes faster than the hub may hear never makes
    /// the sidecar hold more than a bounded amount, and no line is dropped.
    fn read_progress(&mut self, task_id: String, ctx: &mut Context<Self>) {
        if let Some(again) = self.progress_reading.get_mut(&task_id) {
            // Lines appended after that read reached the end: read again once it is done.
            *again = true;
            return;
        }
        if self.progress_held.contains(&task_id) {
            // Read on when the QueueActor says so.
            return;
        }
        self.progress_reading.insert(task_id.clone(), false);
        let path = self
            .env
            .config
            .results_dir
            .join(format!("{task_id}.progress"));
        let (offset, skipping) = self
            .progress
            .0
            .borrow()
            .get(&task_id)
            .copied()
            .unwrap_or((0, false));
        let read = actix_rt::task::spawn_blocking(move || {
            read_lines(&path, offset, skipping, PROGRESS_CHUNK)
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(read).map(move |result, act, ctx| {
                let mut again = act.progress_reading.remove(&task_id) == Some(true);
                if let Ok(Err(e)) = &result {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        // Gone (the task ended): a file of that name later is read whole.
                        act.progress.0.borrow_mut().remove(&task_id);
                    }
                }
                if let Ok(Ok(read)) = result {
                    act.progress
                        .0
                        .borrow_mut()
                        .insert(task_id.clone(), (read.offset, read.skipping));
                    again |= read.more;
                    if !read.lines.is_empty() {
                        for line in read.lines {
                            act.publish_progress(&task_id, line);
                        }
                        let told = act.env.bus.send(AgentProgressRead {
                            task_id: task_id.clone(),
                        });
                        if told.is_ok() {
                            act.progress_held.insert(task_id.clone());
                        }
                    }
                }
                if again {
                    act.read_progress(task_id, ctx);
                }
            }),
        );
    }

    fn publish_progress(&self, task_id: &str, line: Result<Vec<u8>, usize>) {
        let parsed = match line {
            // The line goes out inside a frame (`execution_event`): as deep as a result may
            // be at most, so that the hub's parser reads the frame.
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|v| match crate::result_file::depth(&v) {
                    d if d > crate::result_file::MAX_DEPTH => Err(format!(
                        "line nests {d} levels deep; at most {} are accepted",
                        crate::result_file::MAX_DEPTH
                    )),
                    _ => Ok(v),
                }),
            Err(len) => Err(format!("line of {len} bytes is over {PROGRESS_LINE_MAX}")),
        };
        match parsed {
            Ok(Value::Object(event)) => {
                let progress = event
                    .get("progress")
                    .and_then(Value::as_i64)
                    .filter(|p| (0..=100).contains(p));
                let _ = self.env.bus.send(AgentProgressSeen {
                    task_id: task_id.to_string(),
                    progress,
                    event,
                });
            }
            Ok(_) | Err(_) => log_event!(
                self.env.log,
                Warn,
                "progress_line_invalid",
                task_id = task_id,
                error = parsed.err().unwrap_or_else(|| "not a JSON object".into()),
                note =
                    "each line of <task_id>.progress must be one JSON object; this one is skipped"
            ),
        }
    }
}

/// What one read of a progress file found.
#[derive(Debug, PartialEq)]
struct ReadLines {
    /// Where the next read starts: after the last complete line (or skipped bytes).
    offset: u64,
    /// The complete lines read (a line over the limit comes as its length).
    lines: Vec<Result<Vec<u8>, usize>>,
    /// The read ended inside a line over the limit: the next read skips to its newline.
    skipping: bool,
    /// The read stopped at `max` bytes: there may be more to read now.
    more: bool,
}

/// The complete lines after `offset`, from at most `max` bytes (`max` must exceed
/// [`PROGRESS_LINE_MAX`], so a line within the limit always fits). An unfinished line
/// already over the limit is given up at once (as its length so far), so that it never
/// holds back the lines after it; the rest of it, up to its newline, is skipped (`skipping`
/// in and out). Blocking.
fn read_lines(path: &Path, offset: u64, skipping: bool, max: usize) -> std::io::Result<ReadLines> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(mut file) = crate::fsx::open_untrusted(path)? else {
        return Ok(ReadLines {
            offset,
            lines: Vec::new(),
            skipping,
            more: false,
        });
    };
    let len = file.metadata()?.len();
    // Truncated or replaced: start again from the beginning.
    let (start, mut skipping) = if len < offset {
        (0, false)
    } else {
        (offset, skipping)
    };
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(max as u64).read_to_end(&mut buf)?;
    let more = buf.len() >= max;
    let mut lines = Vec::new();
    let mut consumed = 0;
    while let Some(end) = buf[consumed..].iter().position(|b| *b == b'\n') {
        let line = &buf[consumed..consumed + end];
        if std::mem::take(&mut skipping) {
            // The rest of a line already given up.
        } else if line.len() > PROGRESS_LINE_MAX {
            lines.push(Err(line.len()));
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push(Ok(line.to_vec()));
        }
        consumed += end + 1;
    }
    let tail = buf.len() - consumed;
    if skipping {
        consumed = buf.len();
    } else if tail > PROGRESS_LINE_MAX {
        lines.push(Err(tail));
        consumed = buf.len();
        skipping = true;
    }
    Ok(ReadLines {
        offset: start + consumed as u64,
        lines,
        skipping,
        more,
    })
}

/// `<id>.started`, `<id>.json` or `<id>.progress` with a valid task id; anything else is
/// not ours.
fn classify(path: &Path) -> Option<Name> {
    let name = path.file_name()?.to_str()?;
    if let Some(id) = name.strip_suffix(".started") {
        return valid_task_id(id).then(|| Name::Started(id.to_string()));
    }
    if let Some(id) = name.strip_suffix(".progress") {
        return valid_task_id(id).then(|| Name::Progress(id.to_string()));
    }
    let id = name.strip_suffix(".json")?;
    valid_task_id(id).then(|| Name::Result(id.to_string()))
}

impl Actor for ResultsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let dir = self.env.config.results_dir.clone();
        if let Err(e) = crate::fsx::create_private_dir(&dir) {
            self.env.fail(
                ctx,
                format!("cannot create results_dir {}: {e}", dir.display()),
            );
            return;
        }
        if let Err(e) = self.watch(ctx) {
            self.env.fail(
                ctx,
                format!("cannot watch results_dir {}: {e}", dir.display()),
            );
            return;
        }
        self.scan(ctx);
    }
}

crate::answers_probe!(ResultsActor);

impl Child for ResultsActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<RescanResults>());
        bus.register(addr.clone().recipient::<ProgressFlow>());
    }
}

impl Handler<Stop> for ResultsActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.watcher = None;
        ctx.stop();
    }
}

impl Handler<RescanResults> for ResultsActor {
    type Result = ();
    fn handle(&mut self, msg: RescanResults, ctx: &mut Context<Self>) {
        let Some(task_id) = msg.task_id else {
            self.reported.clear();
            self.started.clear();
            // (A QueueActor that starts again has none of the lines read before.)
            self.progress_held.clear();
            return self.scan(ctx);
        };
        self.reported.remove(&task_id);
        self.started.remove(&task_id);
        self.progress_held.remove(&task_id);
        let dir = self.env.config.results_dir.clone();
        for name in [
            format!("{task_id}.started"),
            format!("{task_id}.json"),
            format!("{task_id}.progress"),
        ] {
            self.on_path(&dir.join(name), Trigger::Scan, ctx);
        }
    }
}

impl Handler<ProgressFlow> for ResultsActor {
    type Result = ();
    fn handle(&mut self, msg: ProgressFlow, ctx: &mut Context<Self>) {
        if msg.open && self.progress_held.remove(&msg.task_id) {
            self.read_progress(msg.task_id, ctx);
        }
    }
}

impl Handler<FsChanged> for ResultsActor {
    type Result = ();
    fn handle(&mut self, msg: FsChanged, ctx: &mut Context<Self>) {
        let event = match msg.0 {
            Ok(event) => event,
            Err(e) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "results_watch_error",
                    error = e.to_string()
                );
                // Events may have been lost (queue overflow): look at everything again.
                self.scan(ctx);
                return;
            }
        };
        // The directory itself was removed or moved away: the watch went with it.
        let dir = &self.env.config.results_dir;
        let dir_gone = event.paths.iter().any(|p| p == dir)
            && matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            );
        if dir_gone {
            return self.rewatch(ctx);
        }
        // Our own reads open and close the file: only writes, creations, closes after
        // writing and renames matter, or every read would trigger the next one.
        let trigger = match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Access(AccessKind::Close(AccessMode::Write)) => Trigger::Final,
            _ if self.polling => Trigger::Scan,
            EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            | EventKind::Remove(_)
            | EventKind::Any
            | EventKind::Other => Trigger::Changed,
            _ => return,
        };
        // For a rename within the directory the destination is the last path.
        let renamed = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both))
        );
        let paths: Vec<&PathBuf> = if renamed {
            event.paths.last().into_iter().collect()
        } else {
            event.paths.iter().collect()
        };
        for path in paths {
            self.on_path(path, trigger, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(read: &[Result<Vec<u8>, usize>]) -> Vec<Result<String, usize>> {
        read.iter()
            .map(|l| {
                l.as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .map_err(|n| *n)
            })
            .collect()
    }

    /// One read as the actor makes it.
    #[allow(clippy::type_complexity)]
    fn read(path: &Path, offset: u64) -> std::io::Result<(u64, Vec<Result<Vec<u8>, usize>>)> {
        read_lines(path, offset, false, PROGRESS_CHUNK).map(|r| (r.offset, r.lines))
    }

    #[test]
    fn complete_lines_are_read_and_an_unfinished_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.progress");
        std::fs::write(&path, "{\"a\":1}\n\n{\"b\":2}\n{\"c\":").unwrap();
        let (offset, lines) = read(&path, 0).unwrap();
        assert_eq!(
            lines_of(&lines),
            [Ok("{\"a\":1}".into()), Ok("{\"b\":2}".into())]
        );
        assert_eq!(offset, 17);
        // The rest of the unfinished line comes.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("3}\n");
        std::fs::write(&path, text).unwrap();
        let (offset, lines) = read(&path, offset).unwrap();
        assert_eq!(lines_of(&lines), [Ok("{\"c\":3}".into())]);
        assert_eq!(offset, 25);
        // Nothing new: nothing read, the offset stays.
        assert_eq!(read(&path, offset).unwrap(), (offset, Vec::new()));
    }

    #[test]
    fn a_large_file_is_read_a_bounded_piece_at_a_time_and_every_line_comes_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.progress");
        let text: String = (0..20_000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let (mut offset, mut skipping, mut n, mut reads) = (0, false, 0, 0);
        loop {
            let r = read_lines(&path, offset, skipping, PROGRESS_CHUNK).unwrap();
            reads += 1;
            for line in &r.lines {
                assert_eq!(line.as_ref().unwrap(), format!("{{\"n\":{n}}}").as_bytes());
                n += 1;
            }
            (offset, skipping) = (r.offset, r.skipping);
            if !r.more {
                break;
            }
        }
        assert_eq!((n, offset), (20_000, text.len() as u64));
        assert!(reads >= text.len() / PROGRESS_CHUNK, "{reads}");
    }

    #[test]
    fn a_truncated_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.progress");
        std::fs::write(&path, "{\"new\":1}\n").unwrap();
        let (offset, lines) = read(&path, 500).unwrap();
        assert_eq!(lines_of(&lines), [Ok("{\"new\":1}".into())]);
        assert_eq!(offset, 10);
    }

    #[test]
    fn a_missing_file_is_an_error_that_keeps_the_offset_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&dir.path().join("none.progress"), 7).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn an_over_long_line_comes_as_its_length_and_never_holds_back_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.progress");
        let long = "x".repeat(PROGRESS_LINE_MAX + 1);
        std::fs::write(&path, format!("{long}\n{{\"after\":1}}\n")).unwrap();
        let (_, lines) = read(&path, 0).unwrap();
        assert_eq!(lines_of(&lines), [Err(PROGRESS_CHUNK)]);

        // Unfinished and already over the limit (here many reads long): given up at once,
        // the rest skipped up to its newline, then what follows it is read.
        let huge = "y".repeat(5 * 1024 * 1024);
        std::fs::write(&path, &huge).unwrap();
        let r = read_lines(&path, 0, false, PROGRESS_CHUNK).unwrap();
        assert_eq!(lines_of(&r.lines), [Err(PROGRESS_CHUNK)]);
        assert!(r.skipping && r.more);
        let (mut offset, mut skipping) = (r.offset, r.skipping);
        while offset < huge.len() as u64 {
            let r = read_lines(&path, offset, skipping, PROGRESS_CHUNK).unwrap();
            assert!(r.lines.is_empty());
            (offset, skipping) = (r.offset, r.skipping);
        }
        assert!(skipping);
        std::fs::write(&path, format!("{huge}\n{{\"next\":2}}\n")).unwrap();
        let r = read_lines(&path, offset, skipping, PROGRESS_CHUNK).unwrap();
        assert_eq!(lines_of(&r.lines), [Ok("{\"next\":2}".into())]);
        assert!(!r.skipping);
    }
}
