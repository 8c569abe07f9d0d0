//! The task machine: the sidecar's task rules as a pure state machine.
//!
//! [`Machine::handle`] takes one [`Event`] and returns the [`Effect`]s it decides; nothing
//! here touches a file, a socket, a process or a clock (the time comes with each event). The
//! persisted part of its state is a [`QueueState`] value; the rest (the session, what was
//! sent on it, writes in flight, wakes spawned) lives only as long as the machine.
//!
//! Durability first: every change of the persisted state is written (an [`Effect::Persist`])
//! before anything that depends on it leaves the machine. Frames the hub must be able to
//! rely on (`task_accepted`, reports, recovery) are derived from the durable state by
//! [`Machine::flush`], once per session; a wake is spawned only once its attempt is on disk.
//!
//! This file holds the machine's frame (state, dispatch, durability, what is sent when);
//! the rules of a task's life are in `lifecycle.rs` (the hub's side) and `agent.rs` (the
//! agent's side).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::effects::{Assign, Effect, Event, FileOp, Note, Persist, Timer};
use super::model::{QueueState, Role, TaskRecord};
use crate::config::LogLevel;

/// The machine's settings: what it needs of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Delays between wake attempts (attempts = delays + 1).
    pub wake_retry_delays: Vec<Duration>,
    pub confirmation_timeout: Duration,
    /// A held task still without a result after this long fails (`task_timeout`).
    pub task_timeout: Option<Duration>,
    /// How often the hub hears that held tasks are alive (`task_progress`).
    pub progress_interval: Duration,
    /// The agent's own progress is forwarded at most this often per task (the latest wins).
    pub agent_progress_gap: Duration,
    /// A failed write is tried again after this long…
    pub write_retry: Duration,
    /// …and after this many failures in a row, a task whose acceptance is not on disk is
    /// given back to the hub.
    pub give_back_after: u32,
    pub results_dir: PathBuf,
    /// Where `TASK_FILE`s and wake logs are kept.
    pub tasks_dir: PathBuf,
    /// Which tasks have a wake command (the others' agents start by themselves).
    pub wake: WakeTargets,
    /// Released tasks remembered (their agent may run, or their result is kept aside).
    pub keep_released: usize,
    /// The most bytes the kept results of released tasks may take in the queue file
    /// together (the newest are kept): with the held task's, what bounds a write.
    pub keep_released_bytes: usize,
    /// Refused reports kept for the operator.
    pub keep_refused: usize,
    /// The longest a restart the hub asked for waits for the task in progress.
    pub restart_wait: Duration,
}

/// Which routing targets have a wake command: `default` (`wake_command`) applies to all but
/// `none`, `types` (`wake_commands` and the bundled agents' targets) to those target types;
/// `none` (empty `wake_commands` entries) are never woken: their agent starts by itself. A
/// task that has no command by these rules starts by itself only with `self_start`
/// (`agent_starts_itself`); otherwise it fails at once (`no_wake_command`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WakeTargets {
    pub default: bool,
    pub types: BTreeSet<String>,
    pub none: BTreeSet<String>,
    pub self_start: bool,
}

/// What becomes of a task that is to be started, by its routing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeRule {
    /// Its wake command runs.
    Wake,
    /// Nothing runs: the agent starts by itself and confirms within the confirmation timeout.
    SelfStart,
    /// No wake command, and the config does not say the agent starts by itself: it fails.
    Missing,
}

impl WakeTargets {
    pub fn rule(&self, target_type: Option<&str>) -> WakeRule {
        match target_type {
            Some(t) if self.none.contains(t) => WakeRule::SelfStart,
            Some(t) if self.types.contains(t) => WakeRule::Wake,
            _ if self.default => WakeRule::Wake,
            _ if self.self_start => WakeRule::SelfStart,
            _ => WakeRule::Missing,
        }
    }

    pub fn wakes(&self, target_type: Option<&str>) -> bool {
        self.rule(target_type) == WakeRule::Wake
    }
}

impl Settings {
    /// `TASK_FILE`: the task JSON exactly as the hub sent it, kept until the task ends.
    pub fn task_file(&self, task_id: &str) -> PathBuf {
        self.tasks_dir.join(format!("{task_id}.json"))
    }
    /// Where the wake command's stdout and stderr go.
    pub fn wake_log(&self, task_id: &str) -> PathBuf {
        self.tasks_dir.join(format!("{task_id}.wake.log"))
    }
    pub fn result_file(&self, task_id: &str) -> PathBuf {
        self.results_dir.join(format!("{task_id}.json"))
    }
    pub fn started_file(&self, task_id: &str) -> PathBuf {
        self.results_dir.join(format!("{task_id}.started"))
    }
    pub fn progress_file(&self, task_id: &str) -> PathBuf {
        self.results_dir.join(format!("{task_id}.progress"))
    }
    /// Attempts in all: the first and one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        self.wake_retry_delays.len() as u32 + 1
    }
}

/// What reading the results directory at start-up found for a known task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskFacts {
    pub started: bool,
    pub result: Option<Result<serde_json::Map<String, Value>, String>>,
}

/// What was sent for one task on which session (volatile).
#[derive(Debug, Clone, Default)]
pub(super) struct Marks {
    /// The change after which the task's announcement is due (its acceptance, a new
    /// generation, its recovery): nothing is announced before that change is durable.
    pub stamp: u64,
    pub accept_sent: Option<u64>,
    pub recovering_sent: Option<u64>,
    /// A `state_report` is due on the next flush.
    pub state_report_due: bool,
    /// The session whose `state_report` has not been answered yet.
    pub state_report_pending: Option<u64>,
    /// Last progress value the agent reported, and pacing of its events.
    pub progress: Option<i64>,
    pub event_sent_at: Option<u64>,
    /// The agent's events held back by the pacing, merged where the dashboard allows.
    pub pending: super::progress::Pending,
    /// The timer that sends the next of `pending` is armed.
    pub pending_armed: bool,
    /// Reading the progress file waits for `pending` to drain (told by `ProgressFlow`).
    pub reading_paused: bool,
}

/// Per outbox entry (same order): when it became due, and the session it was sent on.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SendMark {
    pub stamp: u64,
    pub sent_on: Option<u64>,
}

/// Work that waits for a change to be durable.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Deferred {
    Wake { task_id: String, wake_id: u64 },
}

/// The queue file's write: one in flight (its file work kept for a retry), or a failed one
/// waiting for its retry timer.
#[derive(Debug)]
pub(super) enum Writing {
    InFlight {
        seq: u64,
        before: Vec<FileOp>,
        after: Vec<FileOp>,
    },
    RetryWait {
        seq: u64,
    },
}

pub struct Machine {
    pub(super) cfg: Settings,
    pub(super) state: QueueState,
    pub(super) session: Option<u64>,
    pub(super) now_ms: u64,
    /// The latest change and the latest one known to be on disk.
    pub(super) change: u64,
    pub(super) durable: u64,
    /// The write in flight, or the wait before a failed one goes again.
    pub(super) writing: Option<Writing>,
    pub(super) before: Vec<FileOp>,
    pub(super) after: Vec<FileOp>,
    pub(super) write_failures: u32,
    pub(super) deferred: Vec<(u64, Deferred)>,
    pub(super) marks: BTreeMap<String, Marks>,
    pub(super) outbox_marks: Vec<SendMark>,
    /// Wake attempts spawned by this machine (a restart cannot know about earlier ones).
    pub(super) spawned: BTreeSet<u64>,
    /// A new task pushed while busy, kept until the busy task's `state_report` is answered.
    pub(super) undecided: Option<Assign>,
    /// A task pushed while busy that waits, unanswered, for the slot (see `parking.rs`).
    pub(super) parked: Option<super::parking::Parked>,
    pub(super) shutting_down: bool,
    /// A restart the hub asked for, waiting for the task in progress.
    pub(super) restart: Option<String>,
    pub(super) out: Vec<Effect>,
}

impl Machine {
    /// A machine over the state loaded from disk. `process_start`: the first load of this
    /// process (held tasks were interrupted and are recovered); otherwise only the actor
    /// restarted and carries on. `disk` holds what the results directory says about known
    /// tasks; `running` the wake attempts whose commands still run (known to the waker).
    /// Returns the machine and its first effects.
    pub fn start(
        cfg: Settings,
        state: QueueState,
        disk: BTreeMap<String, DiskFacts>,
        running: BTreeSet<u64>,
        process_start: bool,
        now_ms: u64,
    ) -> (Machine, Vec<Effect>) {
        let outbox_marks = vec![SendMark::default(); state.outbox.len()];
        let mut m = Machine {
            cfg,
            state,
            session: None,
            now_ms,
            change: 0,
            durable: 0,
            writing: None,
            before: Vec::new(),
            after: Vec::new(),
            write_failures: 0,
            deferred: Vec::new(),
            marks: BTreeMap::new(),
            outbox_marks,
            spawned: running,
            undecided: None,
            parked: None,
            shutting_down: false,
            restart: None,
            out: Vec::new(),
        };
        m.recover(process_start, disk);
        let effects = m.finish_step();
        (m, effects)
    }

    /// The persisted state as it stands (not necessarily durable yet).
    pub fn state(&self) -> &QueueState {
        &self.state
    }

    /// Whether everything is on disk and no write is in flight (shutdown waits for this).
    pub fn settled(&self) -> bool {
        self.writing.is_none() && self.durable == self.change
    }

    /// Handles one event at wall-clock time `now_ms`; returns what to do.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Effect> {
        self.now_ms = now_ms.max(self.now_ms);
        match event {
            Event::SessionUp { session } => self.on_session_up(session),
            Event::SessionDown { session } => self.on_session_down(session),
            Event::Assign(assign) => self.on_assign(assign),
            Event::Continue {
                task_id,
                generation,
            } => self.on_continue(&task_id, generation),
            Event::Reassign { task_id } => self.on_reassign(&task_id),
            Event::Cancelled { task_id } => self.on_cancelled(&task_id),
            Event::StateReportAnswered {
                task_id,
                generation,
                action,
            } => self.on_state_report_answer(&task_id, generation, &action),
            Event::ReportAnswered {
                task_id,
                kind,
                generation,
                answer,
            } => self.on_report_answer(&task_id, kind, generation, answer),
            Event::StartedSeen { task_id } => self.on_started(&task_id),
            Event::ResultSeen { task_id, result } => self.on_result(&task_id, result),
            Event::AgentProgress {
                task_id,
                progress,
                event,
            } => self.on_agent_progress(&task_id, progress, event),
            Event::AgentProgressRead { task_id } => self.on_agent_progress_read(&task_id),
            Event::WakeExited {
                task_id,
                wake_id,
                attempt,
                outcome,
            } => self.on_wake_exited(&task_id, wake_id, attempt, outcome),
            Event::Timer(timer) => self.on_timer(timer),
            Event::Persisted { seq } => self.on_persisted(seq),
            Event::PersistFailed { seq, error } => self.on_persist_failed(seq, &error),
            Event::RestartRequested { reason } => {
                if self.restart.is_none() {
                    self.note(
                        LogLevel::Warn,
                        "restart_pending",
                        vec![
                            ("reason", reason.clone().into()),
                            ("wait_ms", (self.cfg.restart_wait.as_millis() as u64).into()),
                            ("note", "restarting once no task is in progress and every report is answered (or when the wait is over); no new task is taken meanwhile".into()),
                        ],
                    );
                    self.out.push(Effect::Arm {
                        timer: Timer::RestartDeadline,
                        after: self.cfg.restart_wait,
                    });
                    self.restart = Some(reason);
                }
            }
            Event::WakerRestarted => self.on_waker_restarted(),
            Event::ShutdownBegun => {
                self.shutting_down = true;
                self.drop_parked(None, true);
                self.drop_undecided(
                    "shutting_down",
                    "nothing: the hub takes it back when the session closes",
                );
            }
        }
        self.finish_step()
    }

    // ----- the frame: changes, writes, sending -----

    /// Records that the persisted state changed: it will be written, and anything that
    /// depends on it waits for that write.
    pub(super) fn changed(&mut self) -> u64 {
        self.change += 1;
        self.out.push(Effect::Changed);
        self.change
    }

    /// File work to do with the next write.
    pub(super) fn file_work(&mut self, before: Vec<FileOp>, after: Vec<FileOp>) {
        // A file this change writes must not be removed by the clean-up of an earlier change
        // still waiting in the same batch (a task dropped and taken again before a write).
        let written: Vec<PathBuf> = before
            .iter()
            .filter_map(|op| op.written_path().map(PathBuf::from))
            .collect();
        self.after
            .retain(|op| !matches!(op, FileOp::Remove(p) if written.contains(p)));
        self.before.extend(before);
        self.after.extend(after);
    }

    /// Whether every report in the outbox has been sent on the current session.
    pub(super) fn outbox_sent_on_this_session(&self) -> bool {
        self.session.is_some() && self.outbox_marks.iter().all(|m| m.sent_on == self.session)
    }

    /// A task waiting to be decided is let go without an answer (the hub takes it back).
    pub(super) fn drop_undecided(&mut self, reason: &'static str, sent: &'static str) {
        if let Some(a) = self.undecided.take() {
            self.note(
                LogLevel::Info,
                "task_rejected",
                vec![
                    ("task_id", a.task_id.into()),
                    ("reason", reason.into()),
                    ("sent", sent.into()),
                ],
            );
        }
    }

    /// Whether attempt `wake_id` waits for its write and has not been spawned by anyone.
    pub(super) fn spawn_pending(&self, wake_id: u64) -> bool {
        self.deferred
            .iter()
            .any(|(_, d)| matches!(d, Deferred::Wake { wake_id: w, .. } if *w == wake_id))
    }

    pub(super) fn defer(&mut self, work: Deferred) {
        let seq = self.change;
        self.deferred.push((seq, work));
    }

    fn finish_step(&mut self) -> Vec<Effect> {
        self.release_deferred();
        self.flush();
        // After the flush: the report of the task that freed the slot goes out first.
        self.check_parked();
        let idle = self.state.busy_with().is_none() && self.state.outbox.is_empty();
        if idle && self.settled() {
            if let Some(reason) = self.restart.take() {
                self.out.push(Effect::Restart { reason });
            }
        }
        if self.writing.is_none() && self.change > self.durable {
            let before = std::mem::take(&mut self.before);
            let after = std::mem::take(&mut self.after);
            self.writing = Some(Writing::InFlight {
                seq: self.change,
                before: before.clone(),
                after: after.clone(),
            });
            self.out.push(Effect::Persist(Persist {
                seq: self.change,
                state: self.state.clone(),
                before,
                after,
            }));
        }
        std::mem::take(&mut self.out)
    }

    fn on_persisted(&mut self, seq: u64) {
        if !matches!(&self.writing, Some(Writing::InFlight { seq: s, .. }) if *s == seq) {
            return;
        }
        self.writing = None;
        self.write_failures = 0;
        self.durable = self.durable.max(seq);
    }

    fn on_persist_failed(&mut self, seq: u64, error: &str) {
        let (before, after) = match self.writing.take() {
            Some(Writing::InFlight {
                seq: s,
                before,
                after,
            }) if s == seq => (before, after),
            other => {
                self.writing = other;
                return;
            }
        };
        // The file work goes again with the retry, ahead of anything newer.
        let newer_before = std::mem::replace(&mut self.before, before);
        let newer_after = std::mem::replace(&mut self.after, after);
        self.before.extend(newer_before);
        self.after.extend(newer_after);
        self.write_failures += 1;
        self.note(
            LogLevel::Error,
            "queue_write_failed",
            vec![
                ("error", error.into()),
                ("failures", self.write_failures.into()),
                ("retry_ms", (self.cfg.write_retry.as_millis() as u64).into()),
            ],
        );
        if self.write_failures >= self.cfg.give_back_after {
            self.give_back_unsaved();
        }
        // Nothing is written until the retry: the change counter stays ahead of `durable`.
        self.writing = Some(Writing::RetryWait { seq });
        self.out.push(Effect::Arm {
            timer: Timer::WriteRetry { seq },
            after: self.cfg.write_retry,
        });
    }

    pub(super) fn on_write_retry(&mut self, seq: u64) {
        if matches!(&self.writing, Some(Writing::RetryWait { seq: s }) if *s == seq) {
            self.writing = None;
        }
    }

    fn release_deferred(&mut self) {
        let durable = self.durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(seq, _)| *seq <= durable);
        self.deferred = waiting;
        // The hub hears first (`task_accepted`); the agent is started right after.
        self.flush();
        for (_, work) in ready {
            match work {
                Deferred::Wake { task_id, wake_id } => self.spawn_wake(&task_id, wake_id),
            }
        }
    }

    // ----- helpers shared by the rule files -----

    pub(super) fn note(
        &mut self,
        level: LogLevel,
        event: &'static str,
        fields: Vec<(&'static str, Value)>,
    ) {
        self.out.push(Effect::Log(Note {
            level,
            event,
            fields,
        }));
    }

    pub(super) fn task(&self, task_id: &str) -> Option<&TaskRecord> {
        self.state.task(task_id)
    }

    pub(super) fn task_mut(&mut self, task_id: &str) -> Option<&mut TaskRecord> {
        let now = self.now_ms;
        let task = self.state.task_mut(task_id)?;
        task.changed_at_ms = now;
        Some(task)
    }

    /// The task's announcement is due again from this change on (acceptance, new
    /// generation, recovery): it is sent once the change is durable.
    pub(super) fn announce(&mut self, task_id: &str) {
        let stamp = self.change;
        let marks = self.marks.entry(task_id.to_string()).or_default();
        marks.stamp = stamp;
        marks.accept_sent = None;
        marks.recovering_sent = None;
    }

    /// Adds (or re-stamps with the task's generation) the report of a held, finished task.
    pub(super) fn queue_report(&mut self, task_id: &str) {
        let Some(task) = self.state.task(task_id) else {
            return;
        };
        let (Some(outcome), Role::Held) = (&task.outcome, task.role) else {
            return;
        };
        let kind = outcome.kind();
        let generation = task.generation;
        let stamp = self.change;
        match self.state.outbox.iter().position(|e| e.task_id == task_id) {
            Some(i) => {
                self.state.outbox[i].kind = kind;
                self.state.outbox[i].generation = generation;
                self.outbox_marks[i] = SendMark {
                    stamp,
                    sent_on: None,
                };
            }
            None => {
                self.state.outbox.push(super::model::OutboxEntry {
                    task_id: task_id.to_string(),
                    kind,
                    generation,
                });
                self.outbox_marks.push(SendMark {
                    stamp,
                    sent_on: None,
                });
            }
        }
    }

    pub(super) fn drop_reports(&mut self, task_id: &str) {
        let entries = std::mem::take(&mut self.state.outbox);
        let marks = std::mem::take(&mut self.outbox_marks);
        for (entry, mark) in entries.into_iter().zip(marks) {
            if entry.task_id != task_id {
                self.state.outbox.push(entry);
                self.outbox_marks.push(mark);
            }
        }
    }

    /// A task's own files (not its result, which is handled where it is read).
    pub(super) fn task_files(&self, task_id: &str) -> Vec<FileOp> {
        vec![
            FileOp::Remove(self.cfg.started_file(task_id)),
            FileOp::Remove(self.cfg.progress_file(task_id)),
            FileOp::Remove(self.cfg.task_file(task_id)),
            FileOp::Remove(self.cfg.wake_log(task_id)),
        ]
    }

    /// Forgets what was sent for a task; reading its progress file is not held back any more.
    pub(super) fn remove_marks(&mut self, task_id: &str) {
        if let Some(marks) = self.marks.remove(task_id) {
            if marks.reading_paused {
                self.out.push(Effect::ProgressFlow {
                    task_id: task_id.to_string(),
                    open: true,
                });
            }
        }
    }

    /// Forgets a task: its record and its files — with its result too (`with_result`:
    /// once the hub has it), else a result kept aside stays for the operator.
    pub(super) fn forget(&mut self, task_id: &str, with_result: bool) {
        self.drop_reports(task_id);
        self.state.tasks.retain(|t| t.task_id != task_id);
        self.remove_marks(task_id);
        let mut files = self.task_files(task_id);
        if with_result {
            let result = self.cfg.result_file(task_id);
            files.push(FileOp::Remove(result.with_extension("json.unreported")));
            files.push(FileOp::Remove(result));
        }
        self.changed();
        self.file_work(Vec::new(), files);
    }
}
