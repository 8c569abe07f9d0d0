//! ResultsActor: watches `results_dir` for what the agent writes.
//!
//! `<task_id>.started` is published as [`StartedFileSeen`]; `<task_id>.json` is read once
//! it is completely written and published as [`ResultFileRead`] (the parsed object, or why
//! it is not a valid result). The directory is watched with inotify (the `notify` crate; a
//! 1 s poll only if inotify cannot be set up) and scanned in full at start-up and on
//! [`RescanResults`], so a file written while the sidecar was down is found.
//!
//! "Completely written": a file renamed into place is read at once; otherwise every change
//! triggers a read, and a read that parses as a JSON object is final (nothing can be
//! appended to a complete object and leave it valid). A read that does not parse waits
//! until the file has stopped changing for `result_settle` before it is declared invalid,
//! so an agent writing in pieces is not cut short. Files over `max_result_bytes` are
//! refused unread; reading and parsing happen on the blocking pool, never on the event loop. The actor decides nothing about tasks: the QueueActor does, and removes
//! the files. It fails (and is restarted) only if `results_dir` cannot be created.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::Watcher;
use serde_json::Value;

use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::queue::valid_task_id;

/// Scan the whole results directory again and report every file, including ones reported
/// before (the QueueActor now cares about a task it ignored).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RescanResults;

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
    pub outcome: Result<serde_json::Map<String, Value>, String>,
}

/// Changes under the results directory, from the watcher's thread.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct FsChanged(notify::Result<notify::Event>);

/// Size and modification time: what a file looked like when it was last read.
type Fingerprint = (u64, Option<SystemTime>);

pub struct ResultsActor {
    env: Env,
    watcher: Option<Box<dyn Watcher>>,
    /// Results already published, by task id, with the content they had.
    reported: HashMap<String, Fingerprint>,
    started: HashSet<String>,
    /// Results being read right now, and those that changed meanwhile.
    reading: HashSet<String>,
    look_again: HashSet<String>,
}

/// What a file in the results directory is.
enum Name {
    Started(String),
    Result(String),
}

impl ResultsActor {
    pub fn new(env: &Env) -> Self {
        ResultsActor {
            env: env.clone(),
            watcher: None,
            reported: HashMap::new(),
            started: HashSet::new(),
            reading: HashSet::new(),
            look_again: HashSet::new(),
        }
    }

    fn watch(&mut self, ctx: &mut Context<Self>) -> notify::Result<()> {
        let dir = self.env.config.results_dir.clone();
        let recipient = ctx.address().recipient::<FsChanged>();
        let forward = move |event| recipient.do_send(FsChanged(event));
        let mut watcher: Box<dyn Watcher> = match notify::recommended_watcher(forward.clone()) {
            Ok(w) => Box::new(w),
            Err(e) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "results_watch_fallback",
                    error = e.to_string(),
                    poll_ms = 1000
                );
                let config = notify::Config::default().with_poll_interval(Duration::from_secs(1));
                Box::new(notify::PollWatcher::new(forward, config)?)
            }
        };
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
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
        let watched = std::fs::create_dir_all(&dir)
            .map_err(notify::Error::io)
            .and_then(|()| self.watch(ctx));
        if let Err(e) = watched {
            return self.env.fail(
                ctx,
                format!("cannot watch results_dir {} again: {e}", dir.display()),
            );
        }
        self.reported.clear();
        self.started.clear();
        self.scan(ctx);
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        let dir = &self.env.config.results_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                log_event!(
                    self.env.log,
                    Error,
                    "results_scan_failed",
                    dir = dir,
                    error = e.to_string()
                );
                return;
            }
        };
        let paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        for path in paths {
            self.on_path(&path, false, ctx);
        }
    }

    fn on_path(&mut self, path: &Path, renamed_into_place: bool, ctx: &mut Context<Self>) {
        match classify(path) {
            Some(Name::Started(task_id))
                if path.exists() && self.started.insert(task_id.clone()) =>
            {
                let _ = self.env.bus.send(StartedFileSeen { task_id });
            }
            Some(Name::Result(task_id)) => self.check(task_id, renamed_into_place, ctx),
            Some(Name::Started(_)) | None => {}
        }
    }

    /// Reads `<task_id>.json` (off the event loop) and publishes it, unless it is still
    /// being written.
    fn check(&mut self, task_id: String, complete: bool, ctx: &mut Context<Self>) {
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
        let limit = self.env.config.max_result_bytes;
        if !meta.is_file() {
            // A link could make the sidecar read, and send, any file it can read.
            let why = "result path is not a regular file (symlinks are refused)".to_string();
            return self.decide(task_id, fingerprint, true, Err(why), ctx);
        }
        if meta.len() > limit {
            let why = format!(
                "result file is {} bytes; max_result_bytes is {limit}",
                meta.len()
            );
            return self.decide(task_id, fingerprint, true, Err(why), ctx);
        }
        if !self.reading.insert(task_id.clone()) {
            // A read is under way: look again when it is done.
            self.look_again.insert(task_id);
            return;
        }
        let read = actix_rt::task::spawn_blocking(move || read_result(&path));
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(read).map(move |result, act, ctx| {
                act.reading.remove(&task_id);
                match result {
                    Ok(Ok(outcome)) => {
                        act.decide(task_id.clone(), fingerprint, complete, outcome, ctx)
                    }
                    // The file could not be read, or the reading task died.
                    Ok(Err(e)) => act.read_failed(&task_id, &e),
                    Err(e) => act.read_failed(&task_id, &e),
                }
                if act.look_again.remove(&task_id) {
                    act.check(task_id, false, ctx);
                }
            }),
        );
    }

    /// A read that failed is logged; the file's next change triggers another.
    fn read_failed(&self, task_id: &str, error: &dyn std::fmt::Display) {
        log_event!(
            self.env.log,
            Warn,
            "result_read_failed",
            task_id = task_id,
            error = error.to_string()
        );
    }

    /// Publishes what a read found, or waits for a file that may still be being written.
    fn decide(
        &mut self,
        task_id: String,
        fingerprint: Fingerprint,
        complete: bool,
        outcome: Result<serde_json::Map<String, Value>, String>,
        ctx: &mut Context<Self>,
    ) {
        if outcome.is_err() && !complete {
            // Maybe still being written: decide once it has stopped changing.
            let settle = self.env.config.result_settle;
            ctx.run_later(settle, move |act, ctx| {
                let path = act.env.config.results_dir.join(format!("{task_id}.json"));
                let now = std::fs::symlink_metadata(path).map(|m| (m.len(), m.modified().ok()));
                if now.ok() == Some(fingerprint) {
                    act.check(task_id, true, ctx);
                }
            });
            return;
        }
        self.reported.insert(task_id.clone(), fingerprint);
        let _ = self.env.bus.send(ResultFileRead { task_id, outcome });
    }
}

/// Reads and parses a result file: the object, or why it is not a valid result. Blocking.
fn read_result(path: &Path) -> std::io::Result<Result<serde_json::Map<String, Value>, String>> {
    let bytes = std::fs::read(path)?;
    if crate::result_file::is_blank(&bytes) {
        // Created but not written yet: not a result, and never an invalid one. Like a failed
        // read, the file's next change triggers another.
        return Err(std::io::Error::other(
            "result file is empty: not a result yet, waiting for the agent to write it",
        ));
    }
    Ok(crate::result_file::parse(&bytes))
}

/// `<id>.started` or `<id>.json` with a valid task id; anything else is not ours.
fn classify(path: &Path) -> Option<Name> {
    let name = path.file_name()?.to_str()?;
    if let Some(id) = name.strip_suffix(".started") {
        return valid_task_id(id).then(|| Name::Started(id.to_string()));
    }
    let id = name.strip_suffix(".json")?;
    valid_task_id(id).then(|| Name::Result(id.to_string()))
}

impl Actor for ResultsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let dir = self.env.config.results_dir.clone();
        if let Err(e) = std::fs::create_dir_all(&dir) {
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
    fn handle(&mut self, _: RescanResults, ctx: &mut Context<Self>) {
        self.reported.clear();
        self.started.clear();
        self.scan(ctx);
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
        // Our own reads open and close the file: only writes, creations and renames matter,
        // or every read would trigger the next one.
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Any
                | EventKind::Other
        );
        if !relevant {
            return;
        }
        let renamed_into_place = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        // For a rename within the directory the destination is the last path.
        let paths: Vec<&PathBuf> = if renamed_into_place {
            event.paths.last().into_iter().collect()
        } else {
            event.paths.iter().collect()
        };
        for path in paths {
            self.on_path(path, renamed_into_place, ctx);
        }
    }
}
