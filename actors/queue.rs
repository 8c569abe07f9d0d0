//! QueueActor: the tasks. Accepts what the hub assigns, keeps it on disk, has the agent
//! woken, follows it to its result, and reports — without ever losing a task or a result.
//!
//! It is the only reader and writer of `queue_file` (see [`crate::queue`]): one active
//! task, one recovering task, and the outbox of `task_accepted` / `task_complete` /
//! `task_failed` frames. Every change is made durable (off the event loop) before anything
//! that depends on it happens: `task_accepted` is sent only once the task is on disk, the
//! agent is woken only once its `TASK_FILE` exists, result files are removed only once the
//! outcome is in the outbox. Outbox frames are sent as soon as they are durable and a
//! session is identified, and again, in order, after every identify, until the hub's
//! `task_ack` removes them.
//!
//! At the process's first start an active task found on disk becomes the recovering task,
//! announced with `task_recovering` after each identify until the hub answers
//! `task_reassign` (dropped) or `task_continue` (active again: woken again if the agent
//! never confirmed, else its result is looked for). A restart of this actor alone reloads
//! the file and carries on. It fails (and is restarted) only if the queue file cannot be
//! read at all; a file that does not parse is moved aside and the sidecar starts empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde_json::Value;

use super::hub::{AnnounceSession, SendFrame, SessionIdentified, SessionLost, TaskFrameReceived};
use super::results::{RescanResults, ResultFileRead, StartedFileSeen};
use super::waker::{CancelWake, WakeConfirmed, WakeFailed, WakeSucceeded, WakeTask, WakerStarted};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::protocol::{Outgoing, TaskFrame, TaskFrameKind, TaskIdField};
use crate::queue::{
    self, FileOp, Loaded, OutboxEntry, OutboxKind, QueueState, StepError, TaskRecord,
};

/// Whether this process has loaded the queue before (recovery happens only at the first).
static LOADED_ONCE: AtomicBool = AtomicBool::new(false);

/// How long a failed write waits before it is tried again.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// Failed writes in a row after which a task whose acceptance is not on disk is given back.
const GIVE_BACK_AFTER: u32 = 3;

/// Published after every change of the queue: what is active, recovering, and waiting for
/// an ack (for status reports and metrics).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TasksChanged {
    /// Task id and its status (`accepted`, `woken`, `working`).
    pub active: Option<(String, &'static str)>,
    pub recovering: Option<String>,
    pub outbox: usize,
}

/// Publish [`TasksChanged`] now (for an observer that started later).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AnnounceTasks;

/// Published when a task leaves the sidecar's hands: `complete`, `failed`, `rejected`,
/// `cancelled`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskEnded {
    pub task_id: String,
    pub outcome: &'static str,
}

pub struct QueueActor {
    env: Env,
    state: QueueState,
    /// The identified session, if any.
    session: Option<u64>,
    /// Per outbox entry (same order): the change that added it, and the session it was last
    /// sent on.
    outbox_meta: Vec<Meta>,
    /// The session `task_recovering` was last sent on.
    recovery_reported_on: Option<u64>,
    /// Bumped by every change; `durable` is the last change known to be on disk.
    change: u64,
    durable: u64,
    writing: bool,
    pending: Pending,
    /// Work waiting for a change to be durable.
    deferred: Vec<(u64, Deferred)>,
    /// The active task's wait for `.started`.
    confirmation_timer: Option<SpawnHandle>,
    /// Failed queue writes in a row.
    write_failures: u32,
    /// The change that made the active task active (it is on disk once that is durable).
    active_since: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    change: u64,
    sent_on: Option<u64>,
}

/// File work to do with the next write: `before` the queue file, `after` it.
#[derive(Default)]
struct Pending {
    before: Vec<FileOp>,
    after: Vec<FileOp>,
}

enum Deferred {
    Wake(String),
    Rescan,
}

/// How a task ended.
enum Outcome {
    Complete(serde_json::Map<String, Value>),
    Failed { reason: String, error: String },
}

impl QueueActor {
    pub fn new(env: &Env) -> Self {
        QueueActor {
            env: env.clone(),
            state: QueueState::default(),
            session: None,
            outbox_meta: Vec::new(),
            recovery_reported_on: None,
            change: 0,
            durable: 0,
            writing: false,
            pending: Pending::default(),
            deferred: Vec::new(),
            confirmation_timer: None,
            write_failures: 0,
            active_since: 0,
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) -> Result<(), String> {
        let path = self.env.config.queue_file.clone();
        let loaded = queue::load(&path)
            .map_err(|e| format!("cannot read queue_file {}: {e}", path.display()))?;
        let first_load = !LOADED_ONCE.swap(true, Ordering::SeqCst);
        match loaded {
            Loaded::Missing => {}
            Loaded::Corrupt { moved_to, error } => {
                log_event!(
                    self.env.log,
                    Error,
                    "queue_corrupt",
                    queue_file = path,
                    moved_to = moved_to,
                    error = error,
                    action = "starting with an empty queue"
                );
            }
            Loaded::Found(state) => {
                self.outbox_meta = vec![Meta::default(); state.outbox.len()];
                self.state = state;
                if first_load {
                    self.recover(ctx);
                } else if let Some(task) = &self.state.active {
                    // Only this actor restarted: the task carries on where it was.
                    let task_id = task.task_id.clone();
                    let awaiting_confirmation = task.woken && !task.confirmed;
                    let next = if task.woken || task.confirmed {
                        Deferred::Rescan
                    } else {
                        Deferred::Wake(task_id.clone())
                    };
                    self.deferred.push((0, next));
                    if awaiting_confirmation {
                        self.await_confirmation(task_id, ctx);
                    }
                }
            }
        }
        Ok(())
    }

    /// First start of the process: the active task was interrupted by a crash or stop.
    fn recover(&mut self, ctx: &mut Context<Self>) {
        if let Some(task) = self.state.active.take() {
            let mut after = Vec::new();
            if let Some(older) = self.state.recovering.replace(task) {
                // One recovering slot. The older task is reported with the result its agent
                // left, if any; else failed, so the hub reassigns it.
                let on_disk = self.result_on_disk(&older.task_id);
                after = self.task_files(&older.task_id);
                if on_disk.is_some() {
                    // Reported: its file goes. A result file that is not usable stays for
                    // the operator.
                    let result = format!("{}.json", older.task_id);
                    after.push(FileOp::Remove(self.env.config.results_dir.join(result)));
                }
                let outcome = on_disk.unwrap_or(Outcome::Failed {
                    reason: "superseded_in_recovery".into(),
                    error: "a newer interrupted task took the recovery slot".into(),
                });
                let entry = self.conclude(&older, outcome);
                self.push_outbox(entry);
            }
            self.commit(ctx, Vec::new(), after, None);
        }
        if let Some(r) = &self.state.recovering {
            log_event!(
                self.env.log,
                Info,
                "recovery_found",
                task_id = r.task_id,
                last_status = r.last_status(),
                generation = r.generation
            );
        }
    }

    // ----- durability -----

    /// Records a change: it is written with `before`/`after` file work, and `then` runs once
    /// it is durable.
    fn commit(
        &mut self,
        ctx: &mut Context<Self>,
        before: Vec<FileOp>,
        after: Vec<FileOp>,
        then: Option<Deferred>,
    ) {
        self.change += 1;
        // A file this change writes must not be removed by the clean-up of an earlier change
        // in the same batch (a task cancelled and assigned again before the write landed).
        let rewritten: Vec<&std::path::Path> =
            before.iter().filter_map(FileOp::written_path).collect();
        self.pending
            .after
            .retain(|op| !matches!(op, FileOp::Remove(p) if rewritten.contains(&p.as_path())));
        self.pending.before.extend(before);
        self.pending.after.extend(after);
        if let Some(d) = then {
            self.deferred.push((self.change, d));
        }
        self.publish_tasks();
        self.write(ctx);
    }

    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.durable == self.change {
            return;
        }
        self.writing = true;
        let upto = self.change;
        let path = self.env.config.queue_file.clone();
        let Pending { before, after } = std::mem::take(&mut self.pending);
        // A task may be megabytes: the event loop only copies the state; encoding it (with
        // its escaping) and writing it happen on the blocking pool.
        let state = self.state.clone();
        let job = actix_rt::task::spawn_blocking(move || {
            let snapshot =
                serde_json::to_vec(&state).map_err(|e| StepError::NotSaved(e.to_string()));
            snapshot
                .and_then(|bytes| queue::write_step(&path, &bytes, &before, &after))
                .map_err(|e| (e, before, after))
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(job).map(move |result, act, ctx| {
                act.writing = false;
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err((StepError::CleanupFailed(error), _, _))) => {
                        log_event!(act.env.log, Warn, "queue_cleanup_failed", error = error);
                        None
                    }
                    Ok(Err((StepError::NotSaved(error), before, after))) => {
                        Some((error, before, after))
                    }
                    // The blocking task itself died: its file work is gone with it; the next
                    // write saves the state again.
                    Err(e) => Some((format!("writer task failed: {e}"), Vec::new(), Vec::new())),
                };
                if let Some((error, before, after)) = failure {
                    log_event!(
                        act.env.log,
                        Error,
                        "queue_write_failed",
                        queue_file = act.env.config.queue_file,
                        error = error,
                        retry_ms = WRITE_RETRY.as_millis() as u64
                    );
                    // Keep the file work for the retry, ahead of anything newer.
                    let newer = std::mem::take(&mut act.pending);
                    act.pending.before = before.into_iter().chain(newer.before).collect();
                    act.pending.after = after.into_iter().chain(newer.after).collect();
                    act.write_failures += 1;
                    if act.write_failures >= GIVE_BACK_AFTER {
                        act.give_back_unsaved_task(ctx);
                    }
                    ctx.run_later(WRITE_RETRY, |act, ctx| act.write(ctx));
                    return;
                }
                act.write_failures = 0;
                act.durable = upto;
                act.on_durable(ctx);
                act.write(ctx);
            }),
        );
    }

    fn on_durable(&mut self, ctx: &mut Context<Self>) {
        // The hub hears first (task_accepted); starting the agent can wait a moment.
        self.flush();
        let durable = self.durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(c, _)| *c <= durable);
        self.deferred = waiting;
        for (_, work) in ready {
            match work {
                Deferred::Wake(task_id) => self.wake(&task_id, ctx),
                Deferred::Rescan => {
                    let _ = self.env.bus.send(RescanResults);
                }
            }
        }
    }

    fn publish_tasks(&self) {
        let _ = self.env.bus.send(TasksChanged {
            active: self
                .state
                .active
                .as_ref()
                .map(|t| (t.task_id.clone(), t.last_status())),
            recovering: self.state.recovering.as_ref().map(|t| t.task_id.clone()),
            outbox: self.state.outbox.len(),
        });
    }

    fn publish_end(&self, task_id: &str, outcome: &'static str) {
        let _ = self.env.bus.send(TaskEnded {
            task_id: task_id.to_string(),
            outcome,
        });
    }

    // ----- sending -----

    fn push_outbox(&mut self, entry: OutboxEntry) {
        self.state.outbox.push(entry);
        self.outbox_meta.push(Meta {
            change: self.change + 1,
            sent_on: None,
        });
    }

    /// Sends what is durable and not yet sent on this session, in order; then the recovery.
    fn flush(&mut self) {
        let Some(session) = self.session else { return };
        for (entry, meta) in self.state.outbox.iter().zip(self.outbox_meta.iter_mut()) {
            if meta.change <= self.durable && meta.sent_on != Some(session) {
                meta.sent_on = Some(session);
                let _ = self.env.bus.send(SendFrame {
                    session: Some(session),
                    frame: entry.frame(),
                });
            }
        }
        if let Some(task) = &self.state.recovering {
            if self.recovery_reported_on != Some(session) {
                self.recovery_reported_on = Some(session);
                let fields = task.fields();
                let frame = Outgoing::TaskRecovering {
                    task_id: task.task_id.clone(),
                    description: fields.get("description").cloned().unwrap_or(Value::Null),
                    metadata: fields.get("metadata").cloned().unwrap_or(Value::Null),
                    last_status: task.last_status().to_string(),
                    generation: task.generation,
                };
                let _ = self.env.bus.send(SendFrame {
                    session: Some(session),
                    frame,
                });
                log_event!(
                    self.env.log,
                    Info,
                    "recovery_reported",
                    task_id = task.task_id,
                    last_status = task.last_status(),
                    generation = task.generation
                );
            }
        }
    }

    /// A frame that needs no durability (rejections): sent now if a session is up.
    fn send_now(&self, frame: Outgoing) {
        if let Some(session) = self.session {
            let _ = self.env.bus.send(SendFrame {
                session: Some(session),
                frame,
            });
        }
    }

    fn reject(&self, task_id: String, reason: &str, generation: Option<u64>) {
        log_event!(
            self.env.log,
            Warn,
            "task_rejected",
            task_id = task_id,
            reason = reason,
            generation = generation
        );
        self.publish_end(&task_id, "rejected");
        self.send_now(Outgoing::TaskRejected {
            task_id,
            reason: reason.to_string(),
            generation,
        });
    }

    // ----- the task's life -----

    fn on_assign(&mut self, frame: TaskFrame, ctx: &mut Context<Self>) {
        let generation = frame.generation;
        let task_id = match frame.task_id {
            Some(TaskIdField::Str(id)) if queue::valid_task_id(&id) => id,
            Some(TaskIdField::Str(id)) | Some(TaskIdField::NotAString(id)) => {
                // Task ids become file names: anything else runs nothing.
                return self.reject(id, "invalid_task_id", generation);
            }
            None => return,
        };
        log_event!(
            self.env.log,
            Info,
            "task_received",
            task_id = task_id,
            generation = generation,
            bytes = frame.raw.len()
        );
        if self
            .state
            .active
            .as_ref()
            .is_some_and(|t| t.task_id == task_id)
        {
            return self.accept_again(task_id, generation, ctx);
        }
        if self.state.active.is_some() {
            return self.reject(task_id, "busy", generation);
        }
        let record = TaskRecord {
            task_id: task_id.clone(),
            generation,
            raw: frame.raw,
            woken: false,
            confirmed: false,
            accepted_at_ms: now_ms(),
        };
        let task_file = FileOp::Write {
            path: self.env.config.task_file(&task_id),
            bytes: record.raw.clone().into_bytes(),
        };
        if self
            .state
            .recovering
            .as_ref()
            .is_some_and(|t| t.task_id == task_id)
        {
            // The hub pushed the interrupted task again: it is the same task, now active.
            let mut recovered = self.state.recovering.take().unwrap_or(record);
            recovered.generation = generation.max(recovered.generation);
            log_event!(
                self.env.log,
                Info,
                "recovery_continued",
                task_id = task_id,
                generation = recovered.generation,
                via = "task_assign"
            );
            // Pushed again because the hub never saw an accept: it gets one.
            log_event!(
                self.env.log,
                Info,
                "task_accepted",
                task_id = task_id,
                generation = recovered.generation
            );
            return self.activate(recovered, true, ctx);
        }
        self.state.active = Some(record);
        self.active_since = self.change + 1;
        self.push_outbox(accepted_entry(&task_id, generation));
        log_event!(
            self.env.log,
            Info,
            "task_accepted",
            task_id = task_id,
            generation = generation
        );
        let then = self.next_step(&task_id);
        self.commit(ctx, vec![task_file], Vec::new(), Some(then));
    }

    /// The same task pushed again (the hub never saw the accept): accept idempotently,
    /// adopt the new generation, do not wake a second agent.
    fn accept_again(&mut self, task_id: String, generation: Option<u64>, ctx: &mut Context<Self>) {
        if let Some(task) = &mut self.state.active {
            task.generation = generation.max(task.generation);
        }
        let generation = self.state.active.as_ref().and_then(|t| t.generation);
        let existing = self
            .state
            .outbox
            .iter()
            .position(|e| e.task_id == task_id && e.kind == OutboxKind::TaskAccepted);
        match existing {
            Some(i) => {
                self.state.outbox[i].generation = generation;
                self.outbox_meta[i] = Meta {
                    change: self.change + 1,
                    sent_on: None,
                };
            }
            None => self.push_outbox(accepted_entry(&task_id, generation)),
        }
        log_event!(
            self.env.log,
            Info,
            "task_accepted",
            task_id = task_id,
            generation = generation,
            again = true
        );
        self.commit(ctx, Vec::new(), Vec::new(), None);
    }

    /// A recovering task made active again: by `task_continue`, or pushed again by a
    /// `task_assign` (which is answered with `task_accepted`).
    fn activate(&mut self, task: TaskRecord, accept: bool, ctx: &mut Context<Self>) {
        let task_id = task.task_id.clone();
        let generation = task.generation;
        let task_file = FileOp::Write {
            path: self.env.config.task_file(&task_id),
            bytes: task.raw.clone().into_bytes(),
        };
        let awaiting_confirmation = task.woken && !task.confirmed;
        self.state.active = Some(task);
        self.active_since = self.change + 1;
        if accept {
            self.push_outbox(accepted_entry(&task_id, generation));
        }
        let then = self.next_step(&task_id);
        self.commit(ctx, vec![task_file], Vec::new(), Some(then));
        if awaiting_confirmation {
            self.await_confirmation(task_id, ctx);
        }
    }

    /// What an active task needs next: waking, or (woken, or no wake command) its result.
    fn next_step(&self, task_id: &str) -> Deferred {
        let woken = self
            .state
            .active
            .as_ref()
            .is_some_and(|t| t.woken || t.confirmed);
        if self.env.config.wake_command.is_some() && !woken {
            Deferred::Wake(task_id.to_string())
        } else {
            Deferred::Rescan
        }
    }

    fn wake(&mut self, task_id: &str, _: &mut Context<Self>) {
        let Some(task) = self.state.active.as_ref().filter(|t| t.task_id == task_id) else {
            return;
        };
        let config = &self.env.config;
        let msg = WakeTask {
            task_id: task.task_id.clone(),
            raw: task.raw.clone(),
            description: task.description_text(),
            task_file: config.task_file(task_id),
            output_file: config.wake_output_file(task_id),
        };
        if self.env.bus.send(msg).is_err() {
            log_event!(
                self.env.log,
                Error,
                "wake_error",
                task_id = task_id,
                error = "the waker is not running; retried when the queue restarts"
            );
        }
        // The agent may already have confirmed (or even finished) before the wake returns.
        let _ = self.env.bus.send(RescanResults);
    }

    fn await_confirmation(&mut self, task_id: String, ctx: &mut Context<Self>) {
        self.stop_confirmation_timer(ctx);
        let timeout = self.env.config.confirmation_timeout;
        self.confirmation_timer = Some(ctx.run_later(timeout, move |act, ctx| {
            act.confirmation_timer = None;
            let waiting = act
                .state
                .active
                .as_ref()
                .is_some_and(|t| t.task_id == task_id && !t.confirmed);
            if waiting {
                let ms = timeout.as_millis() as u64;
                log_event!(
                    act.env.log,
                    Warn,
                    "confirmation_timeout",
                    task_id = task_id,
                    timeout_ms = ms
                );
                let error =
                    format!("no {task_id}.started within confirmation_timeout_ms ({ms} ms)");
                act.finish(
                    Outcome::Failed {
                        reason: "confirmation_timeout".into(),
                        error,
                    },
                    false,
                    ctx,
                );
            }
        }));
    }

    /// The queue file cannot be written: a task accepted since the last good write is not
    /// safe, so it is given back to the hub (`task_rejected`, `storage_unavailable`) rather
    /// than run late, or twice once the hub has reassigned it.
    fn give_back_unsaved_task(&mut self, ctx: &mut Context<Self>) {
        let Some(task) = self
            .state
            .active
            .as_ref()
            .filter(|_| self.active_since > self.durable)
        else {
            return;
        };
        let (task_id, generation) = (task.task_id.clone(), task.generation);
        self.state.active = None;
        self.stop_confirmation_timer(ctx);
        self.forget_deferred(&task_id);
        self.retain_outbox(|e| !(e.task_id == task_id && e.kind == OutboxKind::TaskAccepted));
        let task_file = self.env.config.task_file(&task_id);
        self.pending
            .before
            .retain(|op| op.written_path() != Some(task_file.as_path()));
        self.reject(task_id, "storage_unavailable", generation);
        self.publish_tasks();
    }

    fn stop_confirmation_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.confirmation_timer.take() {
            ctx.cancel_future(timer);
        }
    }

    /// Work queued for a task that has left (a wake for a cancelled task must not run when
    /// an earlier write lands).
    fn forget_deferred(&mut self, task_id: &str) {
        self.deferred
            .retain(|(_, d)| !matches!(d, Deferred::Wake(id) if id == task_id));
    }

    /// The active task is over: its outcome goes in the outbox, its files are cleaned up.
    fn finish(&mut self, outcome: Outcome, invalid_result: bool, ctx: &mut Context<Self>) {
        let Some(task) = self.state.active.take() else {
            return;
        };
        self.stop_confirmation_timer(ctx);
        self.forget_deferred(&task.task_id);
        let config = self.env.config.clone();
        let id = &task.task_id;
        let entry = self.conclude(&task, outcome);
        self.push_outbox(entry);
        let result = config.results_dir.join(format!("{id}.json"));
        let mut after = self.task_files(id);
        after.push(if invalid_result {
            // Kept for the operator, out of the way of a new result.
            FileOp::Rename {
                from: result.clone(),
                to: config.results_dir.join(format!("{id}.json.invalid")),
            }
        } else {
            FileOp::Remove(result)
        });
        let _ = self.env.bus.send(CancelWake {
            task_id: id.clone(),
        });
        // A recovering task whose `task_continue` had to wait is offered again now.
        self.recovery_reported_on = None;
        self.commit(ctx, Vec::new(), after, None);
    }

    /// Logs how a task ended and makes its outbox entry.
    fn conclude(&self, task: &TaskRecord, outcome: Outcome) -> OutboxEntry {
        let id = &task.task_id;
        let elapsed_ms = now_ms().saturating_sub(task.accepted_at_ms);
        let (entry, ended) = match outcome {
            Outcome::Complete(result) => {
                log_event!(
                    self.env.log,
                    Info,
                    "task_complete",
                    task_id = id,
                    generation = task.generation,
                    duration_ms = elapsed_ms
                );
                let entry = OutboxEntry {
                    kind: OutboxKind::TaskComplete,
                    task_id: id.clone(),
                    generation: task.generation,
                    result: Some(Value::Object(result)),
                    reason: None,
                    error: None,
                };
                (entry, "complete")
            }
            Outcome::Failed { reason, error } => {
                log_event!(
                    self.env.log,
                    Warn,
                    "task_failed",
                    task_id = id,
                    reason = reason,
                    error = error,
                    generation = task.generation,
                    duration_ms = elapsed_ms
                );
                (failed_entry(task, &reason, &error), "failed")
            }
        };
        self.publish_end(id, ended);
        entry
    }

    /// A task's own files, removed when it ends (its result file is handled by the caller).
    fn task_files(&self, task_id: &str) -> Vec<FileOp> {
        let config = &self.env.config;
        vec![
            FileOp::Remove(config.results_dir.join(format!("{task_id}.started"))),
            FileOp::Remove(config.task_file(task_id)),
            FileOp::Remove(config.wake_output_file(task_id)),
        ]
    }

    /// A result the agent wrote for `task_id`, read straight from disk (at start-up only,
    /// when the watcher has not run yet): its outcome, or `None` if there is none usable.
    fn result_on_disk(&self, task_id: &str) -> Option<Outcome> {
        let path = self.env.config.results_dir.join(format!("{task_id}.json"));
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > self.env.config.max_result_bytes {
            return None;
        }
        match serde_json::from_slice(&std::fs::read(&path).ok()?).ok()? {
            Value::Object(result) => Some(outcome_of(result)),
            _ => None,
        }
    }

    fn on_result(&mut self, msg: ResultFileRead, ctx: &mut Context<Self>) {
        if self
            .state
            .active
            .as_ref()
            .is_none_or(|t| t.task_id != msg.task_id)
        {
            log_event!(
                self.env.log,
                Info,
                "result_ignored",
                task_id = msg.task_id,
                reason = "not the active task: left alone"
            );
            return;
        }
        match msg.outcome {
            Ok(result) => self.finish(outcome_of(result), false, ctx),
            Err(why) => self.finish(
                Outcome::Failed {
                    reason: "invalid_result".into(),
                    error: why,
                },
                true,
                ctx,
            ),
        }
    }

    fn on_ack(&mut self, frame: &TaskFrame, ctx: &mut Context<Self>) {
        let Some(TaskIdField::Str(task_id)) = &frame.task_id else {
            return;
        };
        let status = frame
            .fields
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(kind) = OutboxKind::acked_by(status) else {
            log_event!(
                self.env.log,
                Warn,
                "task_ack_unknown",
                task_id = task_id,
                status = status
            );
            return;
        };
        let before = self.state.outbox.len();
        self.retain_outbox(|e| !(e.task_id == *task_id && e.kind == kind));
        let removed = before - self.state.outbox.len();
        log_event!(
            self.env.log,
            Debug,
            "task_ack",
            task_id = task_id,
            status = status,
            removed = removed
        );
        if removed > 0 {
            self.commit(ctx, Vec::new(), Vec::new(), None);
        }
    }

    fn retain_outbox(&mut self, keep: impl Fn(&OutboxEntry) -> bool) {
        let entries = std::mem::take(&mut self.state.outbox);
        let metas = std::mem::take(&mut self.outbox_meta);
        for (entry, meta) in entries.into_iter().zip(metas) {
            if keep(&entry) {
                self.state.outbox.push(entry);
                self.outbox_meta.push(meta);
            }
        }
    }

    fn on_reassign(&mut self, task_id: &str, ctx: &mut Context<Self>) {
        if self
            .state
            .recovering
            .as_ref()
            .is_some_and(|t| t.task_id == task_id)
        {
            self.state.recovering = None;
            log_event!(self.env.log, Info, "recovery_reassigned", task_id = task_id);
            let after = self.task_files(task_id);
            self.commit(ctx, Vec::new(), after, None);
        } else {
            log_event!(
                self.env.log,
                Debug,
                "task_reassign_ignored",
                task_id = task_id
            );
        }
    }

    fn on_continue(&mut self, task_id: &str, generation: Option<u64>, ctx: &mut Context<Self>) {
        if self
            .state
            .recovering
            .as_ref()
            .is_none_or(|t| t.task_id != task_id)
        {
            log_event!(
                self.env.log,
                Debug,
                "task_continue_ignored",
                task_id = task_id
            );
            return;
        }
        if self.state.active.is_some() {
            log_event!(
                self.env.log,
                Warn,
                "task_continue_deferred",
                task_id = task_id,
                reason = "another task is active; kept recovering"
            );
            return;
        }
        let Some(mut task) = self.state.recovering.take() else {
            return;
        };
        task.generation = generation.max(task.generation);
        log_event!(
            self.env.log,
            Info,
            "recovery_continued",
            task_id = task_id,
            generation = task.generation,
            last_status = task.last_status()
        );
        self.activate(task, false, ctx);
    }

    fn on_cancel(&mut self, task_id: &str, ctx: &mut Context<Self>) {
        let active = self
            .state
            .active
            .as_ref()
            .is_some_and(|t| t.task_id == task_id);
        let recovering = self
            .state
            .recovering
            .as_ref()
            .is_some_and(|t| t.task_id == task_id);
        if !active && !recovering {
            log_event!(
                self.env.log,
                Debug,
                "task_cancel_ignored",
                task_id = task_id
            );
            return;
        }
        if active {
            self.state.active = None;
            self.stop_confirmation_timer(ctx);
            self.forget_deferred(task_id);
            let _ = self.env.bus.send(CancelWake {
                task_id: task_id.to_string(),
            });
        } else {
            self.state.recovering = None;
        }
        // The hub no longer wants to hear about it.
        self.retain_outbox(|e| e.task_id != task_id);
        log_event!(self.env.log, Info, "task_cancelled", task_id = task_id);
        self.publish_end(task_id, "cancelled");
        let after = self.task_files(task_id);
        self.commit(ctx, Vec::new(), after, None);
    }
}

/// What a result object says: `"status":"success"` is complete, anything else failed with
/// the file's `reason` or `error`.
fn outcome_of(result: serde_json::Map<String, Value>) -> Outcome {
    if result.get("status").and_then(Value::as_str) == Some("success") {
        return Outcome::Complete(result);
    }
    let text = |k: &str| result.get(k).and_then(Value::as_str).map(str::to_string);
    let reason = text("reason")
        .or_else(|| text("error"))
        .unwrap_or_else(|| "agent_reported_failure".into());
    let error = text("error").unwrap_or_else(|| reason.clone());
    Outcome::Failed { reason, error }
}

fn accepted_entry(task_id: &str, generation: Option<u64>) -> OutboxEntry {
    OutboxEntry {
        kind: OutboxKind::TaskAccepted,
        task_id: task_id.to_string(),
        generation,
        result: None,
        reason: None,
        error: None,
    }
}

fn failed_entry(task: &TaskRecord, reason: &str, error: &str) -> OutboxEntry {
    OutboxEntry {
        kind: OutboxKind::TaskFailed,
        task_id: task.task_id.clone(),
        generation: task.generation,
        result: None,
        reason: Some(reason.to_string()),
        error: Some(error.to_string()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.load(ctx) {
            self.env.fail(ctx, e);
            return;
        }
        // Learn about a session that is already up (after a restart of this actor).
        let _ = self.env.bus.send(AnnounceSession);
        self.on_durable(ctx);
    }
}

crate::answers_probe!(QueueActor);

impl Child for QueueActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<TaskFrameReceived>());
        bus.register(addr.clone().recipient::<SessionIdentified>());
        bus.register(addr.clone().recipient::<SessionLost>());
        bus.register(addr.clone().recipient::<WakeSucceeded>());
        bus.register(addr.clone().recipient::<WakeFailed>());
        bus.register(addr.clone().recipient::<WakerStarted>());
        bus.register(addr.clone().recipient::<AnnounceTasks>());
        bus.register(addr.clone().recipient::<StartedFileSeen>());
        bus.register(addr.clone().recipient::<ResultFileRead>());
    }
}

impl Handler<Stop> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // Stop taking tasks; let a write in flight land (the Supervisor's grace bounds it).
        if self.writing || self.durable != self.change {
            ctx.run_later(Duration::from_millis(5), |act, ctx| act.handle(Stop, ctx));
        } else {
            ctx.stop();
        }
    }
}

impl Handler<TaskFrameReceived> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: TaskFrameReceived, ctx: &mut Context<Self>) {
        let frame = msg.frame;
        let task_id = match &frame.task_id {
            Some(TaskIdField::Str(id)) => id.clone(),
            _ => String::new(),
        };
        match frame.kind {
            TaskFrameKind::Assign => self.on_assign(frame, ctx),
            TaskFrameKind::Ack => self.on_ack(&frame, ctx),
            TaskFrameKind::Reassign => self.on_reassign(&task_id, ctx),
            TaskFrameKind::Continue => self.on_continue(&task_id, frame.generation, ctx),
            TaskFrameKind::Cancelled => self.on_cancel(&task_id, ctx),
        }
    }
}

impl Handler<SessionIdentified> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: SessionIdentified, _: &mut Context<Self>) {
        if self.session != Some(msg.session) {
            self.session = Some(msg.session);
            self.flush();
        }
    }
}

impl Handler<SessionLost> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: SessionLost, _: &mut Context<Self>) {
        if self.session == Some(msg.session) {
            self.session = None;
        }
    }
}

impl Handler<WakeSucceeded> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: WakeSucceeded, ctx: &mut Context<Self>) {
        let Some(task) = self
            .state
            .active
            .as_mut()
            .filter(|t| t.task_id == msg.task_id)
        else {
            return;
        };
        task.woken = true;
        let confirmed = task.confirmed;
        self.commit(ctx, Vec::new(), Vec::new(), None);
        if !confirmed {
            self.await_confirmation(msg.task_id, ctx);
        }
    }
}

impl Handler<WakeFailed> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: WakeFailed, ctx: &mut Context<Self>) {
        let Some(task) = self
            .state
            .active
            .as_ref()
            .filter(|t| t.task_id == msg.task_id)
        else {
            return;
        };
        if task.confirmed {
            // The agent confirmed its start: it runs, whatever the wake command said.
            log_event!(
                self.env.log,
                Info,
                "wake_failure_ignored",
                task_id = msg.task_id,
                reason = "the agent confirmed its start"
            );
            return;
        }
        let outcome = Outcome::Failed {
            reason: "wake_failed".into(),
            error: msg.error,
        };
        self.finish(outcome, false, ctx);
    }
}

impl Handler<WakerStarted> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: WakerStarted, ctx: &mut Context<Self>) {
        // A restarted waker forgot what it was doing: ask again if the agent never started.
        let pending = self
            .state
            .active
            .as_ref()
            .filter(|t| !t.woken && !t.confirmed)
            .map(|t| t.task_id.clone());
        if let Some(task_id) = pending {
            if self.durable == self.change {
                self.wake(&task_id, ctx);
            }
        }
    }
}

impl Handler<AnnounceTasks> for QueueActor {
    type Result = ();
    fn handle(&mut self, _: AnnounceTasks, _: &mut Context<Self>) {
        self.publish_tasks();
    }
}

impl Handler<StartedFileSeen> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: StartedFileSeen, ctx: &mut Context<Self>) {
        let Some(task) = self
            .state
            .active
            .as_mut()
            .filter(|t| t.task_id == msg.task_id && !t.confirmed)
        else {
            return;
        };
        task.confirmed = true;
        let _ = self.env.bus.send(WakeConfirmed {
            task_id: msg.task_id.clone(),
        });
        log_event!(
            self.env.log,
            Info,
            "confirmation_received",
            task_id = msg.task_id
        );
        self.commit(ctx, Vec::new(), Vec::new(), None);
    }
}

impl Handler<ResultFileRead> for QueueActor {
    type Result = ();
    fn handle(&mut self, msg: ResultFileRead, ctx: &mut Context<Self>) {
        self.on_result(msg, ctx);
    }
}
