//! The test accessors of [`DevHub`]: the hub's view without parsing events — the queue
//! (submit, get, cancel as the HTTP API does them), agents, FSM states, what sidecars reported,
//! and what the hub did to them (violations, rate-limited frames, take-backs, assignments),
//! read back from the recorded events.

use serde_json::{Map, Value};

use super::core::Now;
use super::events::{HubEventKind, TakeBackReason};
use super::server::DevHub;

/// A frame that failed validation (a violation).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidationFailure {
    pub conn: u64,
    /// `None` before identify.
    pub agent_id: Option<String>,
    pub message_type: Value,
    pub errors: Vec<Value>,
}

/// A frame dropped for its rate limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitedFrame {
    pub conn: u64,
    pub agent_id: String,
    pub frame_type: String,
    pub tier: String,
    pub retry_after_ms: u64,
}

/// A task taken back from its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeBack {
    pub task_id: String,
    pub agent_id: String,
    pub reason: TakeBackReason,
    /// The generation after the take-back.
    pub generation: u64,
}

/// A scheduled task's push, as the agent's registered session handled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub conn: u64,
    pub task_id: String,
    pub agent_id: String,
    pub generation: u64,
    /// `false`: the session was cut, the frame went nowhere.
    pub delivered: bool,
}

impl DevHub {
    /// `POST /api/room/message/human` with this `from`, `text` and `type`: the message as
    /// the hub answers it (with its `seq`), broadcast as `room_message` to every identified
    /// agent but `from`.
    pub fn room_post(&self, from: &str, text: &str, message_type: &str) -> Value {
        self.hub
            .with_core(|core| core.room_send(from, text, Value::from(message_type), Now::get()))
    }

    /// `GET /api/room/messages?since=&limit=`.
    pub fn room_messages(&self, since: i64, limit: i64) -> Value {
        self.hub.with_core(|core| core.room_messages(since, limit))
    }

    /// `POST /api/tasks` with `body` (as the token of no agent in particular): the new task's
    /// id, or the HTTP status and body of the refusal.
    pub fn submit_task(&self, body: Value) -> Result<String, (u16, Value)> {
        let fields = match body {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        let (status, answer) = self
            .hub
            .with_core(|core| core.submit(&fields, "", Now::get()));
        match (status, answer["task_id"].as_str()) {
            (201, Some(task_id)) => Ok(task_id.to_string()),
            _ => Err((status, answer)),
        }
    }

    /// `GET /api/tasks/:id`'s body (dead letters included).
    pub fn task(&self, task_id: &str) -> Option<Value> {
        self.hub
            .with_core(|core| core.queue.get(task_id).map(|t| t.to_json()))
    }

    /// What the hub's dashboard shows of the task's live output: the `text` of every
    /// `execution_event` the hub took, concatenated in order.
    pub fn progress_text(&self, task_id: &str) -> String {
        self.hub.with_core(|core| core.live.text(task_id))
    }

    /// How many `task_progress` frames the hub took for the task.
    pub fn progress_frames(&self, task_id: &str) -> u64 {
        self.hub.with_core(|core| core.live.frames(task_id))
    }

    /// `POST /api/tasks/:id/cancel`'s body, `None` for an unknown task.
    pub fn cancel_task(&self, task_id: &str) -> Option<Value> {
        self.hub.with_core(|core| core.cancel(task_id, Now::get()))
    }

    /// `POST /api/admin/agents/:id/restart`: whether a session is registered for the agent.
    pub fn restart_agent(&self, agent_id: &str, reason: &str) -> bool {
        self.hub
            .with_core(|core| core.restart_agent(agent_id, reason))
    }

    /// `POST /api/onboard/register`: the new token, `None` if the id has one.
    pub fn register_agent(&self, agent_id: &str) -> Option<String> {
        self.hub
            .with_core(|core| core.tokens.register(agent_id).ok())
    }

    /// `GET /api/agents`' list.
    pub fn agents(&self) -> Vec<Value> {
        self.hub.with_core(|core| core.agents_json())
    }

    /// The state of the agent's FSM (`idle`, `assigned`, `working`); `None` without one.
    pub fn fsm_state(&self, agent_id: &str) -> Option<String> {
        self.hub
            .with_core(|core| core.fsms.get(agent_id).map(|f| f.state.name().to_string()))
    }

    /// The connection that receives the agent's pushes, if one is registered.
    pub fn registered_conn(&self, agent_id: &str) -> Option<u64> {
        self.hub
            .with_core(|core| core.registry.get(agent_id).copied())
    }

    /// The agent's last `resource_report`, as the hub keeps it (the five metrics).
    pub fn resource_report(&self, agent_id: &str) -> Option<Value> {
        self.hub
            .with_core(|core| core.resources.get(agent_id).cloned())
    }

    /// The Ollama URL the agent reported (in identify or `ollama_report`).
    pub fn ollama_url(&self, agent_id: &str) -> Option<String> {
        self.hub
            .with_core(|core| core.ollama.get(agent_id).cloned())
    }

    /// Validation violations of `agent_id` so far, across its sessions.
    pub fn violations(&self, agent_id: &str) -> usize {
        self.validation_failures()
            .iter()
            .filter(|f| f.agent_id.as_deref() == Some(agent_id))
            .count()
    }

    /// Every frame that failed validation, oldest first.
    pub fn validation_failures(&self) -> Vec<ValidationFailure> {
        self.collect(|conn, kind| match kind {
            HubEventKind::ValidationFailed {
                agent_id,
                message_type,
                errors,
                ..
            } => Some(ValidationFailure {
                conn,
                agent_id: agent_id.clone(),
                message_type: message_type.clone(),
                errors: errors.clone(),
            }),
            _ => None,
        })
    }

    /// Every frame dropped for its rate limit, oldest first.
    pub fn rate_limited(&self) -> Vec<RateLimitedFrame> {
        self.collect(|conn, kind| match kind {
            HubEventKind::RateLimited {
                agent_id,
                frame_type,
                tier,
                retry_after_ms,
            } => Some(RateLimitedFrame {
                conn,
                agent_id: agent_id.clone(),
                frame_type: frame_type.clone(),
                tier: tier.clone(),
                retry_after_ms: *retry_after_ms,
            }),
            _ => None,
        })
    }

    /// Every task taken back, oldest first.
    pub fn take_backs(&self) -> Vec<TakeBack> {
        self.collect(|_, kind| match kind {
            HubEventKind::TakenBack {
                task_id,
                agent_id,
                reason,
                generation,
            } => Some(TakeBack {
                task_id: task_id.clone(),
                agent_id: agent_id.clone(),
                reason: *reason,
                generation: *generation,
            }),
            _ => None,
        })
    }

    /// Every push of a scheduled task a session handled, oldest first.
    pub fn assignments(&self) -> Vec<Assignment> {
        self.collect(|conn, kind| match kind {
            HubEventKind::AssignmentPushed {
                task_id,
                agent_id,
                generation,
                delivered,
            } => Some(Assignment {
                conn,
                task_id: task_id.clone(),
                agent_id: agent_id.clone(),
                generation: *generation,
                delivered: *delivered,
            }),
            _ => None,
        })
    }

    fn collect<T>(&self, pick: impl Fn(u64, &HubEventKind) -> Option<T>) -> Vec<T> {
        self.hub.events.read(0, |events, _| {
            events
                .iter()
                .filter_map(|e| pick(e.conn, &e.kind))
                .collect()
        })
    }
}
