//! One agent's work state, as the hub's `AgentFSM` keeps it: `idle → assigned → working →
//! idle`, `offline` when its socket goes down. A new one is made at every identify (the old
//! one is dropped without taking anything back), starting `assigned` when the queue still has
//! a task assigned to the agent. `assigned` arms the acceptance timer; `task_accepted` for the
//! current task moves to `working` and disarms it; a timer that fires while its task is still
//! the current one takes the task back and flags the agent unresponsive. Events that do not
//! fit the current state are ignored, as the hub logs and ignores them. Pure value: the
//! caller runs the timer and the take-back this returns.

use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FsmState {
    Idle,
    Assigned,
    Working,
}

impl FsmState {
    pub fn name(self) -> &'static str {
        match self {
            FsmState::Idle => "idle",
            FsmState::Assigned => "assigned",
            FsmState::Working => "working",
        }
    }
}

/// What an event did, for the caller to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FsmOutcome {
    /// Nothing changed.
    Ignored,
    /// Moved to this state.
    Moved(FsmState),
    /// Moved back to idle after finishing a task: the hub broadcasts `agent_idle`, a
    /// scheduling trigger.
    BecameIdle,
}

#[derive(Clone, Debug)]
pub(crate) struct Fsm {
    /// The connection whose end stops this FSM (and takes its current task back).
    pub conn: u64,
    pub state: FsmState,
    pub current_task: Option<String>,
    /// The acceptance deadline and the task it is for.
    pub acceptance: Option<(Instant, String)>,
    pub unresponsive: bool,
    pub capabilities: Vec<String>,
}

impl Fsm {
    /// A new FSM at identify: `assigned` (timer armed) if `assigned_task` is still assigned to
    /// the agent in the queue, else `idle`.
    pub fn start(
        conn: u64,
        capabilities: Vec<String>,
        assigned_task: Option<String>,
        deadline: Instant,
    ) -> Fsm {
        let (state, acceptance) = match &assigned_task {
            Some(task) => (FsmState::Assigned, Some((deadline, task.clone()))),
            None => (FsmState::Idle, None),
        };
        Fsm {
            conn,
            state,
            current_task: assigned_task,
            acceptance,
            unresponsive: false,
            capabilities,
        }
    }

    /// A `task_assign` was handed to the agent's socket. Only from idle.
    pub fn task_assigned(&mut self, task_id: &str, deadline: Instant) -> FsmOutcome {
        if self.state != FsmState::Idle {
            return FsmOutcome::Ignored;
        }
        self.state = FsmState::Assigned;
        self.current_task = Some(task_id.to_string());
        self.acceptance = Some((deadline, task_id.to_string()));
        FsmOutcome::Moved(FsmState::Assigned)
    }

    /// `task_accepted` for the current task while assigned.
    pub fn task_accepted(&mut self, task_id: &str) -> FsmOutcome {
        if self.state != FsmState::Assigned || self.current_task.as_deref() != Some(task_id) {
            return FsmOutcome::Ignored;
        }
        self.acceptance = None;
        self.state = FsmState::Working;
        FsmOutcome::Moved(FsmState::Working)
    }

    /// A completed or failed (retried or dead-lettered) report was accepted: working → idle.
    pub fn task_finished(&mut self) -> FsmOutcome {
        if self.state != FsmState::Working {
            return FsmOutcome::Ignored;
        }
        self.go_idle();
        FsmOutcome::BecameIdle
    }

    /// The agent's task was cancelled: working or assigned → idle; otherwise only the current
    /// task is forgotten.
    pub fn task_cancelled(&mut self) -> FsmOutcome {
        if self.state == FsmState::Idle {
            self.current_task = None;
            return FsmOutcome::Ignored;
        }
        self.go_idle();
        FsmOutcome::BecameIdle
    }

    /// The acceptance timer fired: the task to take back, if it is still the current one
    /// (the FSM is then idle and flagged unresponsive; no `agent_idle` broadcast).
    pub fn acceptance_timeout(&mut self, task_id: &str) -> Option<String> {
        self.acceptance = None;
        if self.current_task.as_deref() != Some(task_id) {
            return None;
        }
        self.go_idle();
        self.unresponsive = true;
        Some(task_id.to_string())
    }

    fn go_idle(&mut self) {
        self.state = FsmState::Idle;
        self.current_task = None;
        self.acceptance = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsm(task: Option<&str>) -> Fsm {
        Fsm::start(1, vec![], task.map(str::to_string), Instant::now())
    }

    #[test]
    fn the_happy_path() {
        let mut f = fsm(None);
        assert_eq!(f.state, FsmState::Idle);
        assert_eq!(
            f.task_assigned("t", Instant::now()),
            FsmOutcome::Moved(FsmState::Assigned)
        );
        assert!(f.acceptance.is_some());
        assert_eq!(f.task_accepted("other"), FsmOutcome::Ignored);
        assert_eq!(f.task_accepted("t"), FsmOutcome::Moved(FsmState::Working));
        assert!(f.acceptance.is_none());
        assert_eq!(f.task_assigned("t2", Instant::now()), FsmOutcome::Ignored);
        assert_eq!(f.task_finished(), FsmOutcome::BecameIdle);
        assert_eq!((f.state, f.current_task.as_deref()), (FsmState::Idle, None));
    }

    #[test]
    fn a_reconnect_starts_assigned_and_times_out_unless_accepted() {
        let mut f = fsm(Some("t"));
        assert_eq!(f.state, FsmState::Assigned);
        assert_eq!(f.acceptance_timeout("stale"), None);
        let mut f = fsm(Some("t"));
        assert_eq!(
            f.task_finished(),
            FsmOutcome::Ignored,
            "a report while assigned moves nothing"
        );
        assert_eq!(f.acceptance_timeout("t"), Some("t".to_string()));
        assert!(f.unresponsive);
        assert_eq!(f.state, FsmState::Idle);
    }

    #[test]
    fn cancel_from_any_task_state() {
        let mut f = fsm(Some("t"));
        assert_eq!(f.task_cancelled(), FsmOutcome::BecameIdle);
        assert_eq!(f.task_cancelled(), FsmOutcome::Ignored);
        assert_eq!(f.state.name(), "idle");
    }
}
