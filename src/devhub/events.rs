//! What the dev hub records: one [`HubEvent`] per thing that happened on a connection or
//! inside the hub (connection `0`), in order, with two clocks; and how `GET /api/events`
//! serves each one (never frame text, tokens or offending values).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::watch;

/// Something that happened on one connection (`conn`), or in the hub itself (`conn` 0).
#[derive(Clone, Debug)]
pub struct HubEvent {
    pub at: Instant,
    /// The same moment as `at`, as CLOCK_MONOTONIC nanoseconds: comparable with the monotonic
    /// clock of any other process on the machine (on Linux, Python's `time.monotonic_ns()`).
    /// Where there is no CLOCK_MONOTONIC it counts from the hub's first event instead.
    pub mono_ns: u64,
    pub conn: u64,
    pub kind: HubEventKind,
}

/// Why the hub took a task back from its agent (and queued it again, next generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeBackReason {
    /// The agent's socket went down (a disconnect, a kill, the hub's shutdown).
    Disconnect,
    /// No `task_accepted` within the acceptance timeout of the assignment.
    AcceptanceTimeout,
    /// No sign of life within the stuck threshold.
    Stuck,
    /// Past the task's `complete_by`.
    Overdue,
}

impl TakeBackReason {
    pub fn name(self) -> &'static str {
        match self {
            TakeBackReason::Disconnect => "disconnect",
            TakeBackReason::AcceptanceTimeout => "acceptance_timeout",
            TakeBackReason::Stuck => "stuck",
            TakeBackReason::Overdue => "overdue",
        }
    }
}

#[derive(Clone, Debug)]
pub enum HubEventKind {
    Connected,
    /// A text frame from the client, raw, and parsed (`Value::Null` if it is not JSON).
    Frame {
        text: String,
        json: Value,
    },
    BinaryFrame(usize),
    /// A WebSocket Pong frame from the client, with its payload.
    WsPong(Vec<u8>),
    /// A Close frame from the client.
    CloseReceived {
        code: Option<u16>,
        reason: String,
    },
    Identified {
        agent_id: String,
    },
    /// Identify refused: `invalid_token` or `token_agent_mismatch`.
    IdentifyRefused {
        agent_id: String,
        error: String,
    },
    Disconnected,
    /// `POST /api/admin/push-task` pushed a task: recorded when the connection's task hands
    /// the `task_assign` frame to the WebSocket session.
    TaskPushed {
        agent_id: String,
        task_id: String,
    },
    /// `POST /api/onboard/register` made a token for a new agent (connection 0: the hub).
    AgentRegistered {
        agent_id: String,
    },
    /// A frame failed its schema (or has no schema): answered `validation_failed` and
    /// counted; `violations` is the count in the connection's current window.
    ValidationFailed {
        agent_id: Option<String>,
        message_type: Value,
        errors: Vec<Value>,
        violations: u32,
    },
    /// Too many violations: closed 1008 `too many validation errors`; the cooldown that
    /// now applies to the agent (none if the session was not identified).
    ViolationDisconnect {
        agent_id: Option<String>,
        cooldown_ms: Option<u64>,
    },
    /// Identify during a cooldown: closed 1008 `cooldown active: retry in Ns`.
    CooldownRefused {
        agent_id: String,
        retry_in_s: u64,
    },
    /// A frame dropped for its rate limit, answered `rate_limited`.
    RateLimited {
        agent_id: String,
        frame_type: String,
        tier: String,
        retry_after_ms: u64,
    },
    /// A `rate_limit_warning` went out with the answer to a frame.
    RateLimitWarning {
        agent_id: String,
        tier: String,
        remaining: u64,
        capacity: u64,
    },
    /// A task entered the queue.
    TaskSubmitted {
        task_id: String,
    },
    /// The scheduler assigned a queued task (the push follows if the agent's socket is
    /// registered: [`AssignmentPushed`](HubEventKind::AssignmentPushed)).
    TaskAssigned {
        task_id: String,
        agent_id: String,
        generation: u64,
    },
    /// A session handled the push of an assigned task: `delivered` is false when the session
    /// is cut (half-open) and the frame went nowhere.
    AssignmentPushed {
        task_id: String,
        agent_id: String,
        generation: u64,
        delivered: bool,
    },
    /// The scheduler assigned a task to an agent without a socket registered for pushes:
    /// nothing was sent, the task stays assigned.
    PushUnroutable {
        task_id: String,
        agent_id: String,
    },
    TakenBack {
        task_id: String,
        agent_id: String,
        reason: TakeBackReason,
        /// The generation after the take-back.
        generation: u64,
    },
    TaskCompleted {
        task_id: String,
        agent_id: String,
        generation: u64,
    },
    /// A failure report accepted: `outcome` is `retried` or `dead_letter`.
    TaskFailed {
        task_id: String,
        agent_id: String,
        generation: u64,
        outcome: String,
    },
    /// A report refused: `error` as sent (`task_complete_failed: stale_generation`, …).
    ReportRefused {
        task_id: String,
        frame_type: String,
        error: String,
    },
    TaskCancelled {
        task_id: String,
        agent_id: Option<String>,
    },
    /// A queued task past its TTL went to the dead letters.
    TaskExpired {
        task_id: String,
    },
    /// A `restart_sidecar` frame was handed to the session.
    RestartCommanded {
        agent_id: String,
        reason: String,
    },
    /// An identify whose socket could not be registered for pushes: another session of the
    /// same agent (`held_by`) still holds the registration.
    RegistrationRefused {
        agent_id: String,
        held_by: u64,
    },
    /// A session's clean-up removed `agent_id` from presence (`/api/agents`).
    PresenceRemoved {
        agent_id: String,
    },
    /// The session received nothing for the idle timeout and was closed (1002).
    SessionTimedOut {
        agent_id: Option<String>,
    },
    /// [`DevHub::cut_connections`](super::DevHub::cut_connections): the hub no longer reads
    /// or writes this connection.
    ConnectionCut {
        agent_id: String,
    },
    /// The reaper found the agent stale; `outcome`: `exit_trapped`, `killed` or
    /// `presence_removed`.
    Evicted {
        agent_id: String,
        outcome: String,
    },
    /// [`DevHub::restart`](super::DevHub::restart) started the server again.
    HubRestarted,
}

impl HubEvent {
    /// The `type` of a text frame's JSON.
    pub fn frame_type(&self) -> Option<&str> {
        match &self.kind {
            HubEventKind::Frame { json, .. } => json.get("type")?.as_str(),
            _ => None,
        }
    }
}

/// Every event since the hub started, and two ways to wait for new ones: a condition
/// variable for threads, a watch of the event count for async tasks. A poisoned lock is used
/// as is, never turned into a panic.
pub(crate) struct EventLog {
    list: Mutex<Vec<HubEvent>>,
    added: Condvar,
    count: watch::Sender<usize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog {
            list: Mutex::new(Vec::new()),
            added: Condvar::new(),
            count: watch::Sender::new(0),
        }
    }

    pub fn record(&self, conn: u64, kind: HubEventKind) {
        let event = HubEvent {
            at: Instant::now(),
            mono_ns: monotonic_ns(),
            conn,
            kind,
        };
        let mut list = lock(&self.list);
        list.push(event);
        let count = list.len();
        drop(list);
        self.added.notify_all();
        self.count.send_replace(count);
    }

    pub fn all(&self) -> Vec<HubEvent> {
        lock(&self.list).clone()
    }

    /// Runs `read` on the events from index `since` on (none if there are fewer), without
    /// copying them; also passes the number of events recorded so far.
    pub fn read<R>(&self, since: usize, read: impl FnOnce(&[HubEvent], usize) -> R) -> R {
        let list = lock(&self.list);
        read(list.get(since..).unwrap_or_default(), list.len())
    }

    /// A receiver that sees the event count change: subscribe before looking at the events,
    /// then wait on it, and no event recorded in between is missed.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The events recorded after the first `seen` ones, waiting for at least one until
    /// `deadline`; `None` when none came in time.
    pub fn after(&self, seen: usize, deadline: Instant) -> Option<Vec<HubEvent>> {
        let mut list = lock(&self.list);
        while list.len() <= seen {
            let left = deadline.checked_duration_since(Instant::now())?;
            list = self
                .added
                .wait_timeout(list, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(list[seen..].to_vec())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of [`Instant`] on Linux, and of every other
/// process's monotonic clock on the same machine (Python's `time.monotonic_ns()`, for one), so
/// times recorded here can be compared with times taken outside the process.
#[cfg(unix)]
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = std::mem::MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: clock_gettime(2) only writes the timespec it is given, which lives on this stack;
    // it is read only when the call succeeded, i.e. filled it in.
    let now = unsafe {
        if libc::clock_gettime(libc::CLOCK_MONOTONIC, now.as_mut_ptr()) != 0 {
            return 0;
        }
        now.assume_init()
    };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Nanoseconds of a monotonic clock that starts with the first call: comparable only within
/// this process on systems without CLOCK_MONOTONIC.
#[cfg(not(unix))]
pub(crate) fn monotonic_ns() -> u64 {
    static ANCHOR: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One event as `GET /api/events` serves it.
pub(crate) fn event_json(seq: usize, event: &HubEvent) -> Value {
    use HubEventKind as K;
    let mut out = json!({"seq": seq, "conn": event.conn, "mono_ns": event.mono_ns});
    let fields = match &event.kind {
        K::Connected => json!({"kind": "connected"}),
        K::Frame { text, json } => {
            let text_field = |key: &str| json.get(key).and_then(Value::as_str);
            json!({"kind": "frame", "type": text_field("type"), "task_id": text_field("task_id"),
                "bytes": text.len()})
        }
        K::BinaryFrame(bytes) => json!({"kind": "binary_frame", "bytes": bytes}),
        K::WsPong(payload) => json!({"kind": "ws_pong", "bytes": payload.len()}),
        K::CloseReceived { code, reason } => {
            json!({"kind": "close_received", "code": code, "reason": reason})
        }
        K::Identified { agent_id } => json!({"kind": "identified", "agent_id": agent_id}),
        K::IdentifyRefused { agent_id, error } => {
            json!({"kind": "identify_refused", "agent_id": agent_id, "error": error})
        }
        K::Disconnected => json!({"kind": "disconnected"}),
        K::TaskPushed { agent_id, task_id } => {
            json!({"kind": "task_pushed", "agent_id": agent_id, "task_id": task_id})
        }
        K::AgentRegistered { agent_id } => {
            json!({"kind": "agent_registered", "agent_id": agent_id})
        }
        K::ValidationFailed {
            agent_id,
            message_type,
            errors,
            violations,
        } => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|e| json!({"field": e["field"], "error": e["error"]}))
                .collect();
            json!({"kind": "validation_failed", "agent_id": agent_id,
                "message_type": message_type.as_str(), "errors": errors, "violations": violations})
        }
        K::ViolationDisconnect {
            agent_id,
            cooldown_ms,
        } => {
            json!({"kind": "violation_disconnect", "agent_id": agent_id, "cooldown_ms": cooldown_ms})
        }
        K::CooldownRefused {
            agent_id,
            retry_in_s,
        } => {
            json!({"kind": "cooldown_refused", "agent_id": agent_id, "retry_in_s": retry_in_s})
        }
        K::RateLimited {
            agent_id,
            frame_type,
            tier,
            retry_after_ms,
        } => {
            json!({"kind": "rate_limited", "agent_id": agent_id, "type": frame_type, "tier": tier,
                "retry_after_ms": retry_after_ms})
        }
        K::RateLimitWarning {
            agent_id,
            tier,
            remaining,
            capacity,
        } => {
            json!({"kind": "rate_limit_warning", "agent_id": agent_id, "tier": tier,
                "remaining": remaining, "capacity": capacity})
        }
        K::TaskSubmitted { task_id } => json!({"kind": "task_submitted", "task_id": task_id}),
        K::TaskAssigned {
            task_id,
            agent_id,
            generation,
        } => {
            json!({"kind": "task_assigned", "task_id": task_id, "agent_id": agent_id,
                "generation": generation})
        }
        K::AssignmentPushed {
            task_id,
            agent_id,
            generation,
            delivered,
        } => {
            json!({"kind": "assignment_pushed", "task_id": task_id, "agent_id": agent_id,
                "generation": generation, "delivered": delivered})
        }
        K::PushUnroutable { task_id, agent_id } => {
            json!({"kind": "push_unroutable", "task_id": task_id, "agent_id": agent_id})
        }
        K::TakenBack {
            task_id,
            agent_id,
            reason,
            generation,
        } => {
            json!({"kind": "taken_back", "task_id": task_id, "agent_id": agent_id,
                "reason": reason.name(), "generation": generation})
        }
        K::TaskCompleted {
            task_id,
            agent_id,
            generation,
        } => {
            json!({"kind": "task_completed", "task_id": task_id, "agent_id": agent_id,
                "generation": generation})
        }
        K::TaskFailed {
            task_id,
            agent_id,
            generation,
            outcome,
        } => {
            json!({"kind": "task_failed", "task_id": task_id, "agent_id": agent_id,
                "generation": generation, "outcome": outcome})
        }
        K::ReportRefused {
            task_id,
            frame_type,
            error,
        } => {
            json!({"kind": "report_refused", "task_id": task_id, "type": frame_type, "error": error})
        }
        K::TaskCancelled { task_id, agent_id } => {
            json!({"kind": "task_cancelled", "task_id": task_id, "agent_id": agent_id})
        }
        K::TaskExpired { task_id } => json!({"kind": "task_expired", "task_id": task_id}),
        K::RestartCommanded { agent_id, reason } => {
            json!({"kind": "restart_commanded", "agent_id": agent_id, "reason": reason})
        }
        K::RegistrationRefused { agent_id, held_by } => {
            json!({"kind": "registration_refused", "agent_id": agent_id, "held_by": held_by})
        }
        K::PresenceRemoved { agent_id } => {
            json!({"kind": "presence_removed", "agent_id": agent_id})
        }
        K::SessionTimedOut { agent_id } => {
            json!({"kind": "session_timed_out", "agent_id": agent_id})
        }
        K::ConnectionCut { agent_id } => json!({"kind": "connection_cut", "agent_id": agent_id}),
        K::Evicted { agent_id, outcome } => {
            json!({"kind": "evicted", "agent_id": agent_id, "outcome": outcome})
        }
        K::HubRestarted => json!({"kind": "hub_restarted"}),
    };
    if let (Value::Object(out), Value::Object(fields)) = (&mut out, fields) {
        out.extend(fields.into_iter().filter(|(_, v)| !v.is_null()));
    }
    out
}
