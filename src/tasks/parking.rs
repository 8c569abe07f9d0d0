//! A task the hub pushes while another is in progress, and the hub's FSM already sees the
//! agent working on that one: it waits, unanswered, for the slot ("parked").
//!
//! Why not refuse it: the hub counts a `task_failed` as a failed attempt, and its FSM, on
//! `task_failed`, takes a `working` agent for idle and at once pushes the next queued task,
//! which is refused in turn, a retry each: a long task walks the queue to the dead letters.
//! The FSM ignored the push (it only takes an assignment while idle), so an unanswered push
//! leaves it `working` on the held task, and nothing else is pushed.
//!
//! When the slot frees (and every report has gone out, so the hub hears the held task's end
//! first), the parked task is checked with a `state_report`: the hub answers `continue` only
//! if it is still assigned here at that generation. Then it is accepted like any push, and
//! the sidecar identifies again, so that the hub's FSM (idle after the held task's end)
//! starts over `assigned` to it and the `task_accepted` after the identify makes it
//! `working`. If another push took the slot meanwhile, the parked task waits for the next
//! free slot. `abort`: it is dropped. Only one task is parked; another push while busy is
//! refused as before. A parked task is not on disk: after a restart the hub's stuck sweep,
//! or the reconciliation with the hub's task list, finds it again.

use super::effects::{Assign, Effect};
use super::machine::Machine;
use crate::config::LogLevel;
use crate::protocol::Outgoing;

/// The parked task, and the session its check (`state_report`) went out on, if it did.
#[derive(Debug, Clone)]
pub struct Parked {
    pub assign: Assign,
    pub verifying: Option<u64>,
}

impl Machine {
    /// Whether a push for another task while `busy_id` is in progress is parked (true) or
    /// must be refused: parked when nothing else is, or when it is the parked task again (a
    /// newer lease replaces it). Not answering costs the task no retry either way: if the
    /// hub's FSM ignored the push (it was working), nothing else is pushed; if it took it
    /// (it was idle), it takes the task back at its acceptance timeout, uncounted, and
    /// pushes it again later.
    pub(super) fn park(&mut self, a: &Assign, busy_id: &str) -> bool {
        let same = self
            .parked
            .as_ref()
            .is_some_and(|p| p.assign.task_id == a.task_id);
        if !same && (self.parked.is_some() || self.session.is_none()) {
            return false;
        }
        self.note(
            LogLevel::Info,
            "task_parked",
            vec![
                ("task_id", a.task_id.clone().into()),
                ("generation", a.generation.into()),
                ("busy_with", busy_id.into()),
                (
                    "note",
                    "not answered: it waits for the slot, and the hub's FSM keeps the agent working on the task in progress"
                        .into(),
                ),
            ],
        );
        self.parked = Some(Parked {
            assign: a.clone(),
            verifying: None,
        });
        true
    }

    /// After every step: once the slot is free and every report has gone out on this
    /// session, the parked task is checked with the hub (`state_report`).
    pub(super) fn check_parked(&mut self) {
        let Some(session) = self.session else { return };
        if self.shutting_down
            || self.state.busy_with().is_some()
            || !self.outbox_sent_on_this_session()
        {
            return;
        }
        let Some(p) = self
            .parked
            .as_mut()
            .filter(|p| p.verifying != Some(session))
        else {
            return;
        };
        p.verifying = Some(session);
        let a = p.assign.clone();
        let assigned_at = serde_json::from_str::<serde_json::Value>(&a.raw)
            .ok()
            .and_then(|v| v.get("assigned_at").and_then(serde_json::Value::as_u64));
        self.send(Outgoing::StateReport {
            task_id: a.task_id,
            status: "assigned",
            generation: a.generation,
            assigned_at,
        });
    }

    /// The hub's answer about the parked task; false when `task_id` is not parked.
    pub(super) fn on_parked_answer(
        &mut self,
        task_id: &str,
        generation: u64,
        action: &str,
    ) -> bool {
        let Some(p) = self
            .parked
            .as_mut()
            .filter(|p| p.assign.task_id == task_id && p.assign.generation == generation)
        else {
            return false;
        };
        p.verifying = None;
        match action {
            "continue" if self.state.busy_with().is_none() => {
                let Some(p) = self.parked.take() else {
                    return true;
                };
                self.note(
                    LogLevel::Info,
                    "task_unparked",
                    vec![
                        ("task_id", task_id.into()),
                        ("generation", generation.into()),
                    ],
                );
                self.on_assign(p.assign);
                if let (Some(session), true) = (
                    self.session,
                    self.state.busy_with().is_some_and(|t| t.task_id == task_id),
                ) {
                    self.out.push(Effect::Reidentify {
                        session,
                        reason: "a parked task took the slot: the hub's FSM, idle since the last task ended, starts over assigned to it",
                    });
                }
            }
            // Another push took the slot meanwhile: it waits for the next free one.
            "continue" => {}
            _ => {
                self.parked = None;
                self.note(
                    LogLevel::Info,
                    "task_parked_dropped",
                    vec![
                        ("task_id", task_id.into()),
                        ("generation", generation.into()),
                        ("reason", "the hub no longer has it assigned here".into()),
                    ],
                );
            }
        }
        true
    }

    /// The parked task is let go: cancelled by the hub (`reason` `cancelled`, nothing sent)
    /// or refused at shutdown (`task_failed`, so the hub requeues it now rather than at its
    /// stuck sweep).
    pub(super) fn drop_parked(&mut self, task_id: Option<&str>, refuse: bool) {
        if task_id.is_some_and(|id| self.parked.as_ref().is_none_or(|p| p.assign.task_id != id)) {
            return;
        }
        let Some(p) = self.parked.take() else { return };
        if refuse {
            self.refuse(
                &p.assign,
                "busy",
                "shutting down with this task waiting for the slot",
            );
        } else {
            self.note(
                LogLevel::Info,
                "task_parked_dropped",
                vec![
                    ("task_id", p.assign.task_id.into()),
                    ("generation", p.assign.generation.into()),
                    ("reason", "cancelled by the hub".into()),
                ],
            );
        }
    }
}
