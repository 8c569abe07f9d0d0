//! The hub's side of a task's life: taken (or refused), adopted again when pushed again,
//! continued or released after a restart, aborted, cancelled, and reported.
//!
//! The rule every branch keeps: **the task id is the work**, a generation only the hub's
//! latest lease on it. A `task_assign` for a task id the sidecar still knows (its agent may
//! run, its result is known, or its report waits) adopts the new generation and answers
//! `task_accepted`: it never starts a second agent. Only a *different* task while one is in
//! progress is refused (`busy`), with a `task_failed` the hub accepts (the current hub has no
//! schema for `task_rejected`).

use super::effects::{Answer, Assign, Effect, FileOp};
use super::machine::Machine;
use super::model::{valid_task_id, Agent, RefusedReport, Release, ReportKind, Role, TaskRecord};
use super::session::failed_frame;
use crate::config::LogLevel;

impl Machine {
    pub(super) fn on_assign(&mut self, a: Assign) {
        if (self.shutting_down || self.restart.is_some()) && self.task(&a.task_id).is_none() {
            self.note(
                LogLevel::Info,
                "task_rejected",
                vec![
                    ("task_id", a.task_id.into()),
                    ("generation", a.generation.into()),
                    (
                        "reason",
                        if self.shutting_down {
                            "shutting_down"
                        } else {
                            "restarting"
                        }
                        .into(),
                    ),
                    (
                        "sent",
                        "nothing: the hub takes it back when the session closes".into(),
                    ),
                ],
            );
            return;
        }
        self.note(
            LogLevel::Info,
            "task_received",
            vec![
                ("task_id", a.task_id.clone().into()),
                ("generation", a.generation.into()),
                ("bytes", a.raw.len().into()),
            ],
        );
        if self
            .undecided
            .as_ref()
            .is_some_and(|u| u.task_id == a.task_id)
        {
            // Pushed again: this push is the one to decide.
            self.undecided = None;
        }
        if !valid_task_id(&a.task_id) {
            // Task ids become file names: anything else runs nothing.
            return self.refuse(
                &a,
                "invalid_task_id",
                "task_id is not a safe file name (^[A-Za-z0-9._-]{1,128}$)",
            );
        }
        if self.task(&a.task_id).is_some() {
            return self.adopt(a);
        }
        if let Some(busy) = self.state.busy_with() {
            let busy_id = busy.task_id.clone();
            let waiting_answer = self.marks.get(&busy_id).is_some_and(|m| {
                m.state_report_pending.is_some() && m.state_report_pending == self.session
            });
            if waiting_answer && self.undecided.is_none() {
                // The hub's answer to our state_report may free the slot: decide then.
                self.note(
                    LogLevel::Info,
                    "task_deferred",
                    vec![
                        ("task_id", a.task_id.clone().into()),
                        ("busy_with", busy_id.into()),
                        (
                            "until",
                            "the hub answers the state_report of the held task".into(),
                        ),
                    ],
                );
                self.undecided = Some(a);
                return;
            }
            if self.park(&a, &busy_id) {
                return;
            }
            return self.refuse_busy(&a, &busy_id);
        }
        let was_parked = self
            .parked
            .as_ref()
            .is_some_and(|p| p.assign.task_id == a.task_id);
        // Pushed again (or found by the reconciliation) with the slot free: taken as any
        // push; and the hub's FSM, which was not tracking it, starts over with it (see
        // `parking.rs`).
        self.parked = self.parked.take().filter(|_| !was_parked);
        self.accept(a);
        if let (true, Some(session)) = (was_parked, self.session) {
            self.out.push(Effect::Reidentify {
                session,
                reason: "a parked task took the slot: the hub's FSM, idle since the last task ended, starts over assigned to it",
            });
        }
    }

    /// Refuses a task pushed while `busy_id` is in progress (and it cannot be parked: see
    /// `parking.rs`). The hub counts the refusal as a failed attempt of that task.
    pub(super) fn refuse_busy(&mut self, a: &Assign, busy_id: &str) {
        let why = format!("busy with task {busy_id}");
        self.refuse(a, "busy", &why);
    }

    /// A new task: on disk (with its `TASK_FILE`) before `task_accepted`, then the agent.
    fn accept(&mut self, a: Assign) {
        let now = self.now_ms;
        let task_id = a.task_id.clone();
        let task_file = FileOp::Write {
            path: self.cfg.task_file(&task_id),
            bytes: a.raw.clone().into_bytes(),
        };
        self.state.tasks.push(TaskRecord {
            task_id: task_id.clone(),
            generation: a.generation,
            raw: a.raw,
            role: Role::Held,
            released: None,
            agent: Agent::NotWoken,
            outcome: None,
            target_type: a.target_type,
            model: a.model,
            accepted_at_ms: now,
            changed_at_ms: now,
            lease_at_ms: now,
        });
        self.changed();
        self.file_work(vec![task_file], Vec::new());
        self.announce(&task_id);
        self.note(
            LogLevel::Info,
            "task_accepted",
            vec![
                ("task_id", task_id.clone().into()),
                ("generation", a.generation.into()),
            ],
        );
        self.arm_task_timeout(&task_id);
        self.resume(&task_id);
    }

    /// The same task id again: the same work under a new lease.
    fn adopt(&mut self, a: Assign) {
        let now = self.now_ms;
        let Some(task) = self.task_mut(&a.task_id) else {
            return;
        };
        let was = task.role;
        let released = task.released;
        let generation = task.generation.max(a.generation);
        task.generation = generation;
        // A new lease: task_timeout_ms counts from here.
        task.lease_at_ms = now;
        task.role = Role::Held;
        task.released = None;
        let in_progress = task.outcome.is_none();
        self.changed();
        self.announce(&a.task_id);
        if was == Role::Held && a.generation < generation {
            self.note(
                LogLevel::Warn,
                "task_generation_stale",
                vec![
                    ("task_id", a.task_id.clone().into()),
                    ("pushed", a.generation.into()),
                    ("kept", generation.into()),
                ],
            );
        }
        self.note(
            LogLevel::Info,
            "task_accepted",
            vec![
                ("task_id", a.task_id.clone().into()),
                ("generation", generation.into()),
                ("again", true.into()),
                ("was", role_name(was, released).into()),
            ],
        );
        if was != Role::Held {
            if in_progress {
                self.arm_task_timeout(&a.task_id);
            }
            self.resume(&a.task_id);
        } else {
            if in_progress {
                // The timer of the previous lease no longer fits the task: it is ignored.
                self.arm_task_timeout(&a.task_id);
            }
            // The report (if any) goes again with the new generation.
            self.queue_report(&a.task_id);
        }
    }

    /// Refuses a task the hub pushed, in a frame the current hub accepts: `task_failed`
    /// (the task goes back to the hub's queue at once; no violation). Not kept on disk: if
    /// the session drops first, the hub takes the task back anyway.
    pub(super) fn refuse(&mut self, a: &Assign, reason: &'static str, error: &str) {
        self.note(
            LogLevel::Warn,
            "task_rejected",
            vec![
                ("task_id", a.task_id.clone().into()),
                ("generation", a.generation.into()),
                ("reason", reason.into()),
                ("error", error.into()),
                ("sent", "task_failed".into()),
            ],
        );
        self.out.push(Effect::Ended {
            task_id: a.task_id.clone(),
            outcome: "rejected",
        });
        let frame = failed_frame(
            a.task_id.clone(),
            a.generation,
            reason,
            &format!("{reason}: {error}"),
        );
        self.send(frame);
    }

    pub(super) fn on_continue(&mut self, task_id: &str, generation: u64) {
        if self
            .task(task_id)
            .is_none_or(|t| t.role != Role::Recovering)
        {
            self.note(
                LogLevel::Debug,
                "task_continue_ignored",
                vec![("task_id", task_id.into())],
            );
            return;
        }
        let Some(task) = self.task_mut(task_id) else {
            return;
        };
        task.generation = task.generation.max(generation);
        task.role = Role::Held;
        let generation = task.generation;
        let status = task.status();
        let in_progress = task.outcome.is_none();
        self.changed();
        self.announce(task_id);
        if let Some(m) = self.marks.get_mut(task_id) {
            m.state_report_due = in_progress;
        }
        self.note(
            LogLevel::Info,
            "recovery_continued",
            vec![
                ("task_id", task_id.into()),
                ("generation", generation.into()),
                ("last_status", status.into()),
            ],
        );
        if in_progress {
            self.arm_task_timeout(task_id);
        }
        self.resume(task_id);
    }

    pub(super) fn on_reassign(&mut self, task_id: &str) {
        if self
            .task(task_id)
            .is_none_or(|t| t.role != Role::Recovering)
        {
            // Often the answer to a `task_recovering` of a task the hub meanwhile pushed
            // again (and we adopted): it no longer applies.
            self.note(
                LogLevel::Debug,
                "task_reassign_ignored",
                vec![("task_id", task_id.into())],
            );
            return;
        }
        self.note(
            LogLevel::Info,
            "recovery_reassigned",
            vec![("task_id", task_id.into())],
        );
        self.release(task_id, Release::Reassigned);
    }

    pub(super) fn on_cancelled(&mut self, task_id: &str) {
        self.drop_parked(Some(task_id), false);
        if self
            .undecided
            .as_ref()
            .is_some_and(|a| a.task_id == task_id)
        {
            self.undecided = None;
            self.note(
                LogLevel::Info,
                "task_cancelled",
                vec![
                    ("task_id", task_id.into()),
                    ("note", "it was waiting to be decided: dropped".into()),
                ],
            );
        }
        let Some(task) = self.task(task_id) else {
            self.note(
                LogLevel::Debug,
                "task_cancel_ignored",
                vec![("task_id", task_id.into())],
            );
            return;
        };
        if task.role == Role::Released {
            self.note(
                LogLevel::Debug,
                "task_cancel_ignored",
                vec![
                    ("task_id", task_id.into()),
                    ("reason", "already released".into()),
                ],
            );
            return;
        }
        // Its wake command, if it still runs, is stopped (with the agent in its group).
        match task.agent {
            Agent::Waking { wake_id, .. } if self.spawn_pending(wake_id) => {
                // Recorded but not spawned yet: it never will be.
                self.deferred.retain(|(_, d)| !matches!(d, super::machine::Deferred::Wake { wake_id: w, .. } if *w == wake_id));
                if let Some(t) = self.task_mut(task_id) {
                    t.agent = Agent::NotWoken;
                }
            }
            // Spawned here (killed if it still runs), or by the process before a restart
            // (its confirmation window decides).
            Agent::Waking { wake_id, .. } => self.out.push(Effect::KillWake { wake_id }),
            Agent::Woken { wake_id, .. } => self.out.push(Effect::KillWake { wake_id }),
            _ => {}
        }
        self.note(
            LogLevel::Info,
            "task_cancelled",
            vec![("task_id", task_id.into())],
        );
        self.release(task_id, Release::Cancelled);
    }

    pub(super) fn on_state_report_answer(&mut self, task_id: &str, generation: u64, action: &str) {
        if self.on_parked_answer(task_id, generation, action) {
            return;
        }
        let Some(task) = self.task(task_id) else {
            return;
        };
        let current = task.role == Role::Held && task.generation == generation;
        if let Some(m) = self.marks.get_mut(task_id) {
            m.state_report_pending = None;
        }
        match action {
            "continue" => {
                self.note(
                    LogLevel::Debug,
                    "state_report_continue",
                    vec![
                        ("task_id", task_id.into()),
                        ("generation", generation.into()),
                    ],
                );
            }
            "abort" if current => {
                self.note(
                    LogLevel::Warn,
                    "task_aborted",
                    vec![
                        ("task_id", task_id.into()),
                        ("generation", generation.into()),
                        (
                            "reason",
                            "the hub answered state_report with abort: the task is no longer ours"
                                .into(),
                        ),
                        (
                            "note",
                            "the agent is not stopped; a late result is kept aside, not reported"
                                .into(),
                        ),
                    ],
                );
                self.release(task_id, Release::Aborted);
            }
            "abort" => {
                self.note(
                    LogLevel::Debug,
                    "state_report_abort_ignored",
                    vec![
                        ("task_id", task_id.into()),
                        ("generation", generation.into()),
                        ("reason", "a newer lease was adopted since".into()),
                    ],
                );
            }
            other => {
                self.note(
                    LogLevel::Warn,
                    "state_report_answer_unknown",
                    vec![("task_id", task_id.into()), ("action", other.into())],
                );
            }
        }
        // A task pushed while waiting for this answer is decided now.
        if let Some(a) = self.undecided.take() {
            if self.state.busy_with().is_some() {
                if !self.park(&a, task_id) {
                    self.refuse_busy(&a, task_id);
                }
            } else {
                self.on_assign(a);
            }
        }
    }

    pub(super) fn on_report_answer(
        &mut self,
        task_id: &str,
        kind: ReportKind,
        generation: u64,
        answer: Answer,
    ) {
        let waiting = self
            .state
            .outbox
            .iter()
            .any(|e| e.task_id == task_id && e.kind == kind && e.generation == generation);
        if !waiting {
            self.note(
                LogLevel::Debug,
                "report_answer_ignored",
                vec![
                    ("task_id", task_id.into()),
                    ("frame", kind.wire_type().into()),
                    ("generation", generation.into()),
                    (
                        "reason",
                        "no such report waiting (answered before, or re-stamped)".into(),
                    ),
                ],
            );
            return;
        }
        match answer {
            Answer::Acked { status } => {
                let fits = match kind {
                    ReportKind::Complete => status == "complete",
                    ReportKind::Failed => {
                        matches!(status.as_str(), "failed" | "retried" | "dead_letter")
                    }
                };
                if !fits {
                    self.note(
                        LogLevel::Warn,
                        "task_ack_unexpected",
                        vec![
                            ("task_id", task_id.into()),
                            ("status", status.into()),
                            ("frame", kind.wire_type().into()),
                        ],
                    );
                    return;
                }
                self.note(
                    LogLevel::Info,
                    "task_ack",
                    vec![
                        ("task_id", task_id.into()),
                        ("status", status.clone().into()),
                        ("generation", generation.into()),
                    ],
                );
                self.forget(task_id, true);
            }
            Answer::Refused { error, details } => {
                let Some(task) = self.task(task_id) else {
                    return;
                };
                let Some(outcome) = task.outcome.clone() else {
                    return;
                };
                self.note(
                    LogLevel::Error,
                    "report_refused",
                    vec![
                        ("task_id", task_id.into()),
                        ("frame", kind.wire_type().into()),
                        ("generation", generation.into()),
                        ("error", error.clone().into()),
                        ("errors", details.clone().unwrap_or(serde_json::Value::Null)),
                        ("action", "not sent again; kept in queue_file's refused list (see status); reported again only if the hub pushes the task again".into()),
                    ],
                );
                self.state.refused.push(RefusedReport {
                    task_id: task_id.to_string(),
                    kind,
                    generation,
                    error,
                    details: details.map(super::model::bounded),
                    outcome,
                    at_ms: self.now_ms,
                });
                let excess = self
                    .state
                    .refused
                    .len()
                    .saturating_sub(self.cfg.keep_refused);
                self.state.refused.drain(..excess);
                self.release(task_id, Release::Refused);
                if let (None, Some(session)) = (self.state.busy_with(), self.session) {
                    self.out.push(Effect::Reidentify {
                        session,
                        reason: "the hub refused a report: it keeps this agent marked working until it identifies again",
                    });
                }
            }
        }
    }

    /// The hub no longer wants this task from us. Its reports are dropped (nothing is sent
    /// for it again); it is remembered while its agent may run or its result is kept aside.
    pub(super) fn release(&mut self, task_id: &str, why: Release) {
        let Some(task) = self.task_mut(task_id) else {
            return;
        };
        task.role = Role::Released;
        task.released = Some(why);
        let kept = task.outcome.is_some();
        self.drop_reports(task_id);
        self.changed();
        if kept {
            // A result found while recovering stayed in place: now it is set aside.
            let result = self.cfg.result_file(task_id);
            let aside = FileOp::Rename {
                to: result.with_extension("json.unreported"),
                from: result,
            };
            self.file_work(Vec::new(), vec![aside]);
        }
        if let Some(m) = self.marks.get_mut(task_id) {
            m.state_report_due = false;
            m.state_report_pending = None;
        }
        self.out.push(Effect::Ended {
            task_id: task_id.to_string(),
            outcome: why.as_str(),
        });
        self.prune();
    }
}

fn role_name(role: Role, released: Option<Release>) -> &'static str {
    match (role, released) {
        (Role::Held, _) => "held",
        (Role::Recovering, _) => "recovering",
        (Role::Released, Some(r)) => r.as_str(),
        (Role::Released, None) => "released",
    }
}
