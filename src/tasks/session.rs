//! What the task machine sends on the hub session, and when: everything a task's durable
//! state calls for, once per session (recoveries, acceptances with a `state_report` after a
//! re-identify, then the outbox), the periodic `task_progress`, and the frames themselves.

use serde_json::Value;

use super::effects::{Effect, Timer};
use super::machine::Machine;
use super::model::{ReportKind, Role, TaskRecord};
use crate::protocol::{clip, Outgoing, TEXT_MAX};

impl Machine {
    /// Sends what is durable and not yet sent on this session, in order: for each task,
    /// oldest first, its recovery question or its acceptance (with a `state_report` after a
    /// re-identify); then the outbox.
    pub(super) fn flush(&mut self) {
        let Some(session) = self.session else { return };
        let durable = self.durable;
        // Once the shutdown began the session is about to close and the hub takes back what
        // it assigned: nothing more is accepted (or reported alive) on it.
        let shutting_down = self.shutting_down;
        let mut frames = Vec::new();
        for task in &self.state.tasks {
            let Some(marks) = self.marks.get_mut(&task.task_id) else {
                continue;
            };
            if marks.stamp > durable {
                continue;
            }
            match task.role {
                Role::Recovering if marks.recovering_sent != Some(session) => {
                    marks.recovering_sent = Some(session);
                    frames.push(Outgoing::TaskRecovering {
                        task_id: task.task_id.clone(),
                        generation: task.generation,
                        last_status: task.status(),
                    });
                }
                Role::Held if !shutting_down => {
                    if marks.accept_sent != Some(session) {
                        marks.accept_sent = Some(session);
                        frames.push(Outgoing::TaskAccepted {
                            task_id: task.task_id.clone(),
                            generation: task.generation,
                        });
                    }
                    if marks.state_report_due && task.in_progress() {
                        marks.state_report_due = false;
                        marks.state_report_pending = Some(session);
                        frames.push(Outgoing::StateReport {
                            task_id: task.task_id.clone(),
                            status: task.status(),
                            generation: task.generation,
                            assigned_at: assigned_at(task),
                        });
                    }
                }
                _ => {}
            }
        }
        for (entry, mark) in self.state.outbox.iter().zip(self.outbox_marks.iter_mut()) {
            if mark.stamp > durable || mark.sent_on == Some(session) {
                continue;
            }
            let Some(task) = self.state.tasks.iter().find(|t| t.task_id == entry.task_id) else {
                continue;
            };
            mark.sent_on = Some(session);
            if let Some(frame) = report_frame(task, entry.kind, entry.generation) {
                frames.push(frame);
            }
        }
        for frame in frames {
            self.send(frame);
        }
    }

    /// Sends a frame on the current session now (if there is one).
    pub(super) fn send(&mut self, frame: Outgoing) {
        if let Some(session) = self.session {
            self.out.push(Effect::Send { session, frame });
        }
    }

    pub(super) fn on_session_up(&mut self, session: u64) {
        if self.session == Some(session) {
            // The same session announced again (an actor restarted): nothing new.
            return;
        }
        self.session = Some(session);
        let mut waiting = Vec::new();
        for task in &self.state.tasks {
            let marks = self.marks.entry(task.task_id.clone()).or_default();
            marks.state_report_due = task.in_progress();
            marks.state_report_pending = None;
            if !marks.pending.is_empty() && !marks.pending_armed {
                waiting.push(task.task_id.clone());
            }
        }
        // The agent's events that waited for a session go after what the session starts with.
        for task_id in waiting {
            if let Some(marks) = self.marks.get_mut(&task_id) {
                marks.pending_armed = true;
            }
            self.out.push(Effect::Arm {
                timer: Timer::AgentProgress { task_id },
                after: self.cfg.agent_progress_gap,
            });
        }
        self.out.push(Effect::Arm {
            timer: Timer::Progress { session },
            after: self.cfg.progress_interval,
        });
    }

    pub(super) fn on_session_down(&mut self, session: u64) {
        if self.session != Some(session) {
            return;
        }
        self.session = None;
        for marks in self.marks.values_mut() {
            marks.state_report_pending = None;
        }
        self.drop_undecided(
            "busy",
            "nothing: the session ended and the hub takes it back",
        );
    }

    pub(super) fn on_progress_timer(&mut self, session: u64) {
        if self.session != Some(session) {
            return;
        }
        let frames: Vec<Outgoing> = self
            .state
            .tasks
            .iter()
            .filter(|t| t.in_progress())
            .map(|t| Outgoing::TaskProgress {
                task_id: t.task_id.clone(),
                progress: self.marks.get(&t.task_id).and_then(|m| m.progress),
                execution_event: None,
            })
            .collect();
        for frame in frames {
            self.send(frame);
        }
        self.out.push(Effect::Arm {
            timer: Timer::Progress { session },
            after: self.cfg.progress_interval,
        });
    }
}

/// The report frame of a finished task, with `generation`; text cut to the hub's limits.
pub(super) fn report_frame(
    task: &TaskRecord,
    kind: ReportKind,
    generation: u64,
) -> Option<Outgoing> {
    use super::model::Outcome;
    let task_id = task.task_id.clone();
    match (&task.outcome, kind) {
        (Some(Outcome::Complete { result }), ReportKind::Complete) => {
            Some(Outgoing::task_complete(task_id, generation, result.clone()))
        }
        (Some(Outcome::Failed { reason, error }), ReportKind::Failed) => {
            Some(failed_frame(task_id, generation, reason, error))
        }
        _ => None,
    }
}

/// `task_failed` with `reason` and `error` each cut to the hub's limit.
pub(super) fn failed_frame(
    task_id: String,
    generation: u64,
    reason: &str,
    error: &str,
) -> Outgoing {
    Outgoing::TaskFailed {
        task_id,
        generation,
        reason: clip(reason, TEXT_MAX),
        error: clip(error, TEXT_MAX),
    }
}

/// The assignment's `assigned_at`, if the hub sent a whole number.
fn assigned_at(task: &TaskRecord) -> Option<u64> {
    task.fields().get("assigned_at").and_then(Value::as_u64)
}
