//! The agent's side of a task's life: waking it (each attempt on disk before its command is
//! spawned), its confirmation (`.started`), its progress, its result, and the timers that
//! keep a task from waiting forever.
//!
//! One agent per task id: an attempt is started only when no earlier attempt can have an
//! agent running — never while one is `Waking`/`Woken`/`Confirmed`; after a failed attempt
//! (exit ≠ 0, timeout, could not start) and no `.started`; and after a restart only once the
//! attempt it found on disk had its whole confirmation window without a `.started`.

use serde_json::{Map, Value};

use super::effects::{Effect, FileOp, Timer, WakeOrder, WakeOutcome};
use super::machine::{Deferred, Machine, WakeRule};
use super::model::{Agent, Outcome, Role};
use crate::config::LogLevel;
use crate::protocol::{clip, Outgoing, TEXT_MAX};

impl Machine {
    /// The next step of a task that became held (accepted, adopted, continued).
    pub(super) fn resume(&mut self, task_id: &str) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        if task.outcome.is_some() {
            self.queue_report(task_id);
            return;
        }
        match task.agent.clone() {
            Agent::NotWoken => match self.cfg.wake.rule(task.target_type.as_deref()) {
                WakeRule::Wake => self.start_wake(task_id, 1),
                WakeRule::SelfStart => self.await_self_start(task_id),
                WakeRule::Missing => self.no_wake_command(task_id),
            },
            Agent::WakeFailed {
                wake_id, attempt, ..
            } => self.after_failed_attempt(task_id, wake_id, attempt),
            Agent::Confirmed => self.out.push(Effect::Rescan {
                task_id: Some(task_id.to_string()),
            }),
            // An attempt is under way or its confirmation window runs: wait for it.
            Agent::Waking { .. } | Agent::Woken { .. } => {}
            Agent::GaveUp => {}
        }
    }

    /// No command starts this task's agent, and the config says it starts by itself: look
    /// for its files, and give it the confirmation timeout to write `.started`.
    pub(super) fn await_self_start(&mut self, task_id: &str) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        let lease_at_ms = task.lease_start();
        let target = task.target_type.clone();
        let timeout = self.cfg.confirmation_timeout;
        let deadline_ms = self.now_ms + timeout.as_millis() as u64;
        let deadline = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(deadline_ms),
        );
        self.note(
            LogLevel::Info,
            "agent_self_start_wait",
            vec![
                ("task_id", task_id.into()),
                ("target_type", target.map_or(Value::Null, Value::from)),
                ("timeout_ms", (timeout.as_millis() as u64).into()),
                ("deadline", deadline.to_string().into()),
                (
                    "note",
                    "no wake command runs for this task: the agent starts by itself and must write <task_id>.started by the deadline".into(),
                ),
            ],
        );
        self.out.push(Effect::Rescan {
            task_id: Some(task_id.to_string()),
        });
        self.out.push(Effect::Arm {
            timer: Timer::SelfStart {
                task_id: task_id.to_string(),
                lease_at_ms,
            },
            after: timeout,
        });
    }

    /// No command starts this task's agent, and nothing says it starts by itself: the task
    /// fails at once, with the keys that would have given it one.
    pub(super) fn no_wake_command(&mut self, task_id: &str) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        let target = task.target_type.clone();
        let error = match &target {
            Some(t) => format!(
                "the sidecar has no wake command for this task (routing target \"{t}\"): set \"wake_command\" or \"wake_commands\": {{\"{t}\": …}} in its config, or \"agent_starts_itself\": true if the agent starts by itself"
            ),
            None => "the sidecar has no wake command for this task (no routing target): set \"wake_command\" in its config, or \"agent_starts_itself\": true if the agent starts by itself".to_string(),
        };
        self.note(
            LogLevel::Error,
            "no_wake_command",
            vec![
                ("task_id", task_id.into()),
                ("target_type", target.map_or(Value::Null, Value::from)),
                ("error", error.clone().into()),
            ],
        );
        self.give_up(task_id, "no_wake_command", error);
    }

    /// No agent will run for the task: it fails with `reason`.
    fn give_up(&mut self, task_id: &str, reason: &str, error: String) {
        if let Some(t) = self.task_mut(task_id) {
            t.agent = Agent::GaveUp;
        }
        self.conclude(
            task_id,
            Outcome::Failed {
                reason: reason.into(),
                error,
            },
            None,
        );
    }

    /// The self-starting agent of a task did not confirm in time: the task fails.
    pub(super) fn on_self_start_timeout(&mut self, task_id: &str, lease_at_ms: u64) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        if task.role != Role::Held
            || !task.in_progress()
            || task.agent != Agent::NotWoken
            || task.lease_start() != lease_at_ms
        {
            return;
        }
        let ms = self.cfg.confirmation_timeout.as_millis() as u64;
        self.note(
            LogLevel::Warn,
            "confirmation_timeout",
            vec![("task_id", task_id.into()), ("timeout_ms", ms.into())],
        );
        let error = format!(
            "no {task_id}.started within confirmation_timeout_ms ({ms} ms): no wake command runs for this task, and the agent that starts by itself did not confirm"
        );
        self.give_up(task_id, "confirmation_timeout", error);
    }

    /// Records attempt `attempt` on disk; it is spawned once that is durable.
    pub(super) fn start_wake(&mut self, task_id: &str, attempt: u32) {
        // No agent is started once the shutdown began; the task is recovered at the next
        // start and woken then (on `task_continue`).
        if self.shutting_down {
            return;
        }
        let wake_id = self.state.next_wake_id;
        self.state.next_wake_id += 1;
        let Some(task) = self.task_mut(task_id) else {
            return;
        };
        task.agent = Agent::Waking { wake_id, attempt };
        self.changed();
        self.defer(Deferred::Wake {
            task_id: task_id.to_string(),
            wake_id,
        });
    }

    /// A recorded attempt is now on disk: spawn it, unless the task moved on meanwhile.
    pub(super) fn spawn_wake(&mut self, task_id: &str, wake_id: u64) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        let Agent::Waking {
            wake_id: w,
            attempt,
        } = task.agent
        else {
            return;
        };
        if w != wake_id || task.role != Role::Held || self.spawned.contains(&wake_id) {
            return;
        }
        if self.shutting_down {
            // Recorded before the shutdown began, on disk only now: never spawned. The
            // record goes back to what it was before this attempt, so that the next start
            // wakes the agent (on `task_continue`) instead of waiting for one that never ran.
            let error = format!("attempt {attempt} not started: the shutdown began first");
            if let Some(task) = self.task_mut(task_id) {
                task.agent = match attempt {
                    0 | 1 => Agent::NotWoken,
                    n => Agent::WakeFailed {
                        wake_id,
                        attempt: n - 1,
                        error,
                    },
                };
            }
            self.changed();
            self.note(
                LogLevel::Info,
                "wake_not_started",
                vec![
                    ("task_id", task_id.into()),
                    ("attempt", attempt.into()),
                    ("reason", "shutting_down".into()),
                ],
            );
            return;
        }
        let order = WakeOrder {
            wake_id,
            attempt,
            task_id: task_id.to_string(),
            raw: task.raw.clone(),
            description: task.description(),
            task_file: self.cfg.task_file(task_id),
            output_file: self.cfg.wake_log(task_id),
            target_type: task.target_type.clone(),
            model: task.model.clone(),
        };
        self.spawned.insert(wake_id);
        self.out.push(Effect::Wake(order));
        // The agent may confirm (or even finish) before its wake command returns.
        self.out.push(Effect::Rescan {
            task_id: Some(task_id.to_string()),
        });
    }

    pub(super) fn on_wake_exited(
        &mut self,
        task_id: &str,
        wake_id: u64,
        attempt: u32,
        outcome: WakeOutcome,
    ) {
        let Some(task) = self.task(task_id) else {
            self.note_wake_outcome_ignored(wake_id, &outcome);
            return;
        };
        let held = task.role == Role::Held;
        let finished = task.outcome.is_some();
        let current = matches!(task.agent,
            Agent::Waking { wake_id: w, .. } | Agent::Woken { wake_id: w, .. } if w == wake_id);
        let (status, error) = match &outcome {
            WakeOutcome::Success => ("success", None),
            WakeOutcome::Failed(e) => ("failed", Some(e.clone())),
            WakeOutcome::TimedOut(e) => ("timeout", Some(e.clone())),
        };
        if held {
            // The hub hears about every attempt (a success also keeps the task alive there).
            self.send(Outgoing::WakeResult {
                task_id: task_id.to_string(),
                status,
                attempt,
                error: error.as_deref().map(|e| clip(e, TEXT_MAX)),
            });
        }
        if !current || finished {
            // Confirmed already (the agent runs, whatever its wake command said), or a
            // stale attempt: nothing changes.
            self.note_wake_outcome_ignored(wake_id, &outcome);
            return;
        }
        let task_id = task_id.to_string();
        match error {
            None => {
                if let Some(t) = self.task_mut(&task_id) {
                    t.agent = Agent::Woken { wake_id, attempt };
                }
                self.changed();
                self.out.push(Effect::Arm {
                    timer: Timer::Confirmation { task_id, wake_id },
                    after: self.cfg.confirmation_timeout,
                });
            }
            Some(error) => self.attempt_failed(&task_id, wake_id, attempt, error),
        }
    }

    /// Attempt `wake_id` failed: recorded; a held task retries (or gives up), a released one
    /// is forgotten once nothing is left to remember.
    pub(super) fn attempt_failed(
        &mut self,
        task_id: &str,
        wake_id: u64,
        attempt: u32,
        error: String,
    ) {
        let Some(t) = self.task_mut(task_id) else {
            return;
        };
        t.agent = Agent::WakeFailed {
            wake_id,
            attempt,
            error,
        };
        let held = t.role == Role::Held;
        self.changed();
        if held {
            self.after_failed_attempt(task_id, wake_id, attempt);
        } else {
            self.prune();
        }
    }

    fn note_wake_outcome_ignored(&mut self, wake_id: u64, outcome: &WakeOutcome) {
        self.note(
            LogLevel::Debug,
            "wake_outcome_ignored",
            vec![
                ("wake_id", wake_id.into()),
                ("outcome", format!("{outcome:?}").into()),
                (
                    "reason",
                    "its task confirmed, ended or moved to a newer attempt".into(),
                ),
            ],
        );
    }

    /// Attempt `attempt` failed: retry after its delay, or give up.
    pub(super) fn after_failed_attempt(&mut self, task_id: &str, wake_id: u64, attempt: u32) {
        match self
            .cfg
            .wake_retry_delays
            .get(attempt as usize - 1)
            .copied()
        {
            Some(delay) if attempt < self.cfg.max_attempts() => {
                self.out.push(Effect::Arm {
                    timer: Timer::WakeRetry {
                        task_id: task_id.to_string(),
                        wake_id,
                    },
                    after: delay,
                });
            }
            _ => {
                let error = match self.task(task_id).map(|t| &t.agent) {
                    Some(Agent::WakeFailed { error, .. }) => error.clone(),
                    _ => "wake failed".to_string(),
                };
                self.note(
                    LogLevel::Error,
                    "wake_failed",
                    vec![
                        ("task_id", task_id.into()),
                        ("attempts", attempt.into()),
                        ("error", error.clone().into()),
                    ],
                );
                self.give_up(task_id, "wake_failed", error);
            }
        }
    }

    pub(super) fn on_started(&mut self, task_id: &str) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        let wake_id = match task.agent {
            Agent::Confirmed | Agent::GaveUp => return,
            Agent::Waking { wake_id, .. }
            | Agent::Woken { wake_id, .. }
            | Agent::WakeFailed { wake_id, .. } => Some(wake_id),
            Agent::NotWoken => None,
        };
        if task.outcome.is_some() {
            return;
        }
        if let Some(t) = self.task_mut(task_id) {
            t.agent = Agent::Confirmed;
        }
        self.changed();
        if let Some(wake_id) = wake_id {
            self.out.push(Effect::WakeConfirmed { wake_id });
        }
        self.note(
            LogLevel::Info,
            "confirmation_received",
            vec![("task_id", task_id.into())],
        );
    }

    pub(super) fn on_result(&mut self, task_id: &str, result: Result<Map<String, Value>, String>) {
        let Some(task) = self.task(task_id) else {
            self.note(
                LogLevel::Info,
                "result_ignored",
                vec![
                    ("task_id", task_id.into()),
                    ("reason", "not a task this sidecar knows: left alone".into()),
                ],
            );
            return;
        };
        if task.outcome.is_some() {
            self.note(
                LogLevel::Debug,
                "result_ignored",
                vec![
                    ("task_id", task_id.into()),
                    ("reason", "its outcome is known already".into()),
                ],
            );
            return;
        }
        // A success whose top-level report fields the hub would refuse is not a valid result.
        let result = result.and_then(|obj| {
            if obj.get("status").and_then(Value::as_str) == Some("success") {
                crate::result_file::report_fields(&obj)?;
            }
            Ok(obj)
        });
        let (outcome, invalid) = match result {
            Ok(obj) => (Outcome::from_result(obj), false),
            Err(why) => (
                Outcome::Failed {
                    reason: "invalid_result".into(),
                    error: why,
                },
                true,
            ),
        };
        let result_file = self.cfg.result_file(task_id);
        let result_op = if invalid {
            // Kept for the operator, out of the way of a new result.
            Some(FileOp::Rename {
                from: result_file.clone(),
                to: result_file.with_extension("json.invalid"),
            })
        } else {
            match task.role {
                Role::Held => Some(FileOp::Remove(result_file.clone())),
                // The hub's verdict will tell: reported (then removed) or set aside.
                Role::Recovering => None,
                // Not reported now: kept aside for the operator (and for a re-push).
                Role::Released => Some(FileOp::Rename {
                    from: result_file.clone(),
                    to: result_file.with_extension("json.unreported"),
                }),
            }
        };
        self.conclude(task_id, outcome, result_op);
    }

    /// The task's outcome is known. A held task's report goes in the outbox and its files
    /// go; a recovering or released task keeps it (reported if the hub gives it back).
    pub(super) fn conclude(&mut self, task_id: &str, outcome: Outcome, result_op: Option<FileOp>) {
        let now = self.now_ms;
        let Some(task) = self.task_mut(task_id) else {
            return;
        };
        task.outcome = Some(outcome.clone());
        if task.agent.may_run() && !matches!(task.agent, Agent::Confirmed) {
            // A result means an agent ran: it confirmed, whatever the files said.
            task.agent = Agent::Confirmed;
        }
        let role = task.role;
        let elapsed = now.saturating_sub(task.accepted_at_ms);
        let generation = task.generation;
        self.changed();
        let mut after = Vec::new();
        if role == Role::Held {
            after = self.task_files(task_id);
        }
        after.extend(result_op);
        self.file_work(Vec::new(), after);
        let (event, level, ended) = match (&outcome, role) {
            (Outcome::Complete { .. }, Role::Held) => ("task_complete", LogLevel::Info, "complete"),
            (Outcome::Failed { .. }, Role::Held) => ("task_failed", LogLevel::Warn, "failed"),
            (_, _) => ("result_kept", LogLevel::Warn, ""),
        };
        let mut fields = vec![
            ("task_id", task_id.into()),
            ("generation", generation.into()),
            ("duration_ms", elapsed.into()),
        ];
        if let Outcome::Failed { reason, error } = &outcome {
            fields.push(("reason", reason.clone().into()));
            fields.push(("error", error.clone().into()));
        }
        if role != Role::Held {
            fields.push((
                "note",
                "the task is not held (recovering or released): its result is kept, not reported, unless the hub gives the task back".into(),
            ));
        }
        self.note(level, event, fields);
        if role == Role::Held {
            // The agent's last words reach the live view before the report.
            self.flush_pending(task_id);
        } else {
            self.drop_pending(task_id);
        }
        if role == Role::Held {
            self.out.push(Effect::Ended {
                task_id: task_id.to_string(),
                outcome: ended,
            });
            self.queue_report(task_id);
        } else if role == Role::Released {
            // A result kept aside counts against what released tasks may keep.
            self.prune();
        }
    }

    /// A line of the agent's progress file: its event waits its turn (merged with the
    /// ones before it where the dashboard allows: [`super::progress`]) and goes out at most
    /// once per gap; `progress` is remembered for the keep-alive.
    pub(super) fn on_agent_progress(
        &mut self,
        task_id: &str,
        progress: Option<i64>,
        event: Map<String, Value>,
    ) {
        if self.task(task_id).is_none_or(|t| !t.in_progress()) {
            return;
        }
        let now = self.now_ms;
        let gap = self.cfg.agent_progress_gap.as_millis() as u64;
        let marks = self.marks.entry(task_id.to_string()).or_default();
        if progress.is_some() {
            marks.progress = progress;
        }
        marks.pending.push(event);
        if marks.pending_armed {
            return;
        }
        let due = marks
            .event_sent_at
            .is_none_or(|t| now.saturating_sub(t) >= gap);
        if due && self.session.is_some() {
            self.send_pending(task_id);
        } else {
            let wait = gap.saturating_sub(now.saturating_sub(marks.event_sent_at.unwrap_or(now)));
            self.arm_pending(task_id, wait);
        }
    }

    /// The lines read in one go are all in: reading on is allowed while what waits is under
    /// its bound ([`super::progress::PENDING_MAX`]), else it pauses until enough went out.
    pub(super) fn on_agent_progress_read(&mut self, task_id: &str) {
        let full = self.marks.get(task_id).is_some_and(|m| m.pending.full());
        if let Some(m) = self.marks.get_mut(task_id) {
            m.reading_paused = full;
        }
        self.out.push(Effect::ProgressFlow {
            task_id: task_id.to_string(),
            open: !full,
        });
    }

    /// Sends the oldest waiting event of the task, and arms the timer for the next one.
    pub(super) fn send_pending(&mut self, task_id: &str) {
        let now = self.now_ms;
        let gap = self.cfg.agent_progress_gap.as_millis() as u64;
        let Some(marks) = self.marks.get_mut(task_id) else {
            return;
        };
        let Some(event) = marks.pending.pop() else {
            return;
        };
        marks.event_sent_at = Some(now);
        let progress = marks.progress;
        let more = !marks.pending.is_empty();
        let resume =
            marks.reading_paused && marks.pending.weight() <= super::progress::PENDING_RESUME;
        if resume {
            marks.reading_paused = false;
        }
        self.send(Outgoing::TaskProgress {
            task_id: task_id.to_string(),
            progress,
            execution_event: Some(event),
        });
        if more {
            self.arm_pending(task_id, gap);
        }
        if resume {
            self.out.push(Effect::ProgressFlow {
                task_id: task_id.to_string(),
                open: true,
            });
        }
    }

    /// Sends everything that waits for the task at once (before its report: the live view
    /// gets the whole text, and the report follows it).
    pub(super) fn flush_pending(&mut self, task_id: &str) {
        while self
            .marks
            .get(task_id)
            .is_some_and(|m| !m.pending.is_empty())
            && self.session.is_some()
        {
            self.send_pending(task_id);
        }
        self.drop_pending(task_id);
    }

    /// Forgets what waits for the task (it is no longer in progress); reading its file is
    /// not held back any more.
    pub(super) fn drop_pending(&mut self, task_id: &str) {
        let Some(marks) = self.marks.get_mut(task_id) else {
            return;
        };
        marks.pending = Default::default();
        if std::mem::take(&mut marks.reading_paused) {
            self.out.push(Effect::ProgressFlow {
                task_id: task_id.to_string(),
                open: true,
            });
        }
    }

    fn arm_pending(&mut self, task_id: &str, after_ms: u64) {
        if let Some(marks) = self.marks.get_mut(task_id) {
            marks.pending_armed = true;
        }
        self.out.push(Effect::Arm {
            timer: Timer::AgentProgress {
                task_id: task_id.to_string(),
            },
            after: std::time::Duration::from_millis(after_ms),
        });
    }
}
