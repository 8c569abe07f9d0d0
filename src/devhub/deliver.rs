//! The other half of a socket process: what it does with the messages the hub sends it
//! (`send(pid, …)` and PubSub): a scheduled task's push (the frame built as the hub's socket
//! builds it, and the agent's FSM told), an admin push, a cancel, a restart, presence and chat
//! broadcasts, the reaper's trapped exit. A cut session handles them all the same and writes
//! nothing.

use serde_json::{json, Map, Value};

use super::core::{later, Core, Delivery, Now};
use super::events::HubEventKind;
use super::fsm::{FsmOutcome, FsmState};

/// What handling a delivery gives the session: a frame to write (none when the session is
/// cut or the message is not for it) and an event to record once it is written.
pub(crate) struct Delivered {
    pub frame: Option<String>,
    pub event: Option<HubEventKind>,
}

impl Core {
    /// The socket process handles a message from inside the hub.
    pub fn deliver(&mut self, id: u64, delivery: Delivery, now: Now) -> Delivered {
        let Some(session) = self.sessions.get(&id) else {
            return Delivered {
                frame: None,
                event: None,
            };
        };
        let agent = session.agent_id.clone().unwrap_or_default();
        let cut = session.cut;
        let (frame, event) = match delivery {
            Delivery::TaskAssign {
                task_id,
                generation,
                fields,
            } => {
                self.fsm_assigned(&agent, &task_id, now);
                let event = HubEventKind::AssignmentPushed {
                    task_id: task_id.clone(),
                    agent_id: agent,
                    generation,
                    delivered: !cut,
                };
                (Some(assign_frame(&task_id, &fields, now.ms)), Some(event))
            }
            Delivery::AdminPush { task_id, fields } => {
                self.fsm_assigned(&agent, &task_id, now);
                let frame = assign_frame(&task_id, &fields, now.ms);
                (
                    Some(frame),
                    Some(HubEventKind::TaskPushed {
                        agent_id: agent,
                        task_id,
                    }),
                )
            }
            Delivery::TaskCancelled { task_id } => (
                Some(json!({"type": "task_cancelled", "task_id": task_id, "timestamp": now.ms})),
                None,
            ),
            Delivery::RestartSidecar { reason } => {
                let frame = json!({"type": "restart_sidecar", "reason": reason});
                (
                    Some(frame),
                    Some(HubEventKind::RestartCommanded {
                        agent_id: agent,
                        reason,
                    }),
                )
            }
            Delivery::AgentJoined {
                agent_id,
                agent: info,
            } => {
                let own = session.agent_id.as_deref() == Some(agent_id.as_str());
                (
                    (!own).then(|| json!({"type": "agent_joined", "agent": info})),
                    None,
                )
            }
            Delivery::AgentLeft { agent_id } => (
                Some(json!({"type": "agent_left", "agent_id": agent_id})),
                None,
            ),
            Delivery::StatusChanged { agent } => (
                Some(json!({"type": "status_changed", "agent": agent})),
                None,
            ),
            Delivery::Message { frame } => (Some(frame), None),
            Delivery::Room { message } => (
                super::chat::room_frame(&message, session.identified, session.agent_id.as_deref()),
                None,
            ),
            Delivery::Exit => (None, None),
        };
        let frame = frame.filter(|_| !cut).map(|f| f.to_string());
        Delivered { frame, event }
    }

    /// The hub's socket tells the agent's FSM about a pushed task.
    fn fsm_assigned(&mut self, agent: &str, task_id: &str, now: Now) {
        let deadline = later(now.at, self.timings.acceptance_timeout);
        let moved = self
            .fsms
            .get_mut(agent)
            .map(|f| f.task_assigned(task_id, deadline));
        if moved == Some(FsmOutcome::Moved(FsmState::Assigned)) {
            self.show_fsm_state(agent, "assigned");
        }
    }
}

/// The `task_assign` frame as the hub's socket builds it from the task it is handed, with
/// its defaults for what is missing (`null` and `false` count as missing).
pub(crate) fn assign_frame(task_id: &str, fields: &Map<String, Value>, now_ms: u64) -> Value {
    let get = |key: &str, default: Value| {
        fields
            .get(key)
            .filter(|v| !v.is_null() && **v != Value::Bool(false))
            .cloned()
            .unwrap_or(default)
    };
    json!({
        "type": "task_assign",
        "task_id": task_id,
        "description": get("description", json!("")),
        "metadata": get("metadata", json!({})),
        "generation": get("generation", json!(0)),
        "assigned_at": now_ms,
        "repo": get("repo", Value::Null),
        "branch": get("branch", Value::Null),
        "file_hints": get("file_hints", json!([])),
        "success_criteria": get("success_criteria", json!([])),
        "verification_steps": get("verification_steps", json!([])),
        "complexity": get("complexity", Value::Null),
        "routing_decision": get("routing_decision", Value::Null),
        "skip_verification": get("skip_verification", json!(false)),
        "verification_timeout_ms": get("verification_timeout_ms", Value::Null),
        "max_verification_retries": get("max_verification_retries", json!(0)),
    })
}
