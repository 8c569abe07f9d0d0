//! The hub's model, behind one lock: the sessions (one per WebSocket, with the socket
//! process's own state: the agent it identified as, its violation window, whether it is cut),
//! the push registry (agent → the one session that receives pushes, as the hub's unique
//! `Registry`), presence (what `/api/agents` lists), one [`Fsm`] per agent, the task queue,
//! tokens, cooldowns and rate-limit buckets. It decides and records; it does no I/O of its
//! own: frames for other sessions go out as [`Command`]s on their channels, frames for the
//! session being served are returned to it. This file holds the state, session life and the
//! operations of the HTTP side; [`frames`](super::frames) answers frames and
//! [`scheduler`](super::scheduler) assigns tasks and runs the timers.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::events::{EventLog, HubEventKind, TakeBackReason};
use super::fsm::Fsm;
use super::options::{DevHubOptions, HubLimits, HubTimings};
use super::queue::{self, TaskQueue};
use super::ratelimit::RateLimiter;
use super::tokens::Tokens;
use super::validation::{self, HttpBody};
use super::violations::{Cooldowns, ViolationWindow};
use super::RawFrame;

/// The time, on both clocks: monotonic for timers, wall milliseconds for what is shown.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub at: Instant,
    pub ms: u64,
}

/// `at` plus `wait`; a wait too long for the clock is a year (timings come from flags).
pub(crate) fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .or_else(|| at.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(at)
}

impl Now {
    pub fn get() -> Now {
        Now {
            at: Instant::now(),
            ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// What a session's task is asked to do from outside.
#[derive(Debug)]
pub(crate) enum Command {
    /// A test's raw frame, written as is.
    Send(RawFrame),
    /// A message from inside the hub to the socket process.
    Deliver(Delivery),
    /// The client vanished (reset): end, with the session's clean-up.
    Kill,
    /// The socket process dies without its clean-up (an untrapped kill).
    Die,
    /// A network cut: stop reading and writing, notice nothing, linger until the idle timeout.
    Cut,
    /// The hub shuts down: Close 1000, clean-up, end.
    Shutdown,
    /// Hold (`true`) or release the messages from inside the hub: a socket process busy
    /// elsewhere handles them later, in order (its FSM hears of a push only then).
    Hold(bool),
    /// Handle the oldest held message now, and keep holding the rest.
    ReleaseOne,
}

/// A message to a socket process, as the hub sends them (`send(pid, …)` and PubSub).
#[derive(Clone, Debug)]
pub(crate) enum Delivery {
    /// A scheduled task: the frame's fields but `type` and `assigned_at`.
    TaskAssign {
        task_id: String,
        generation: u64,
        fields: Map<String, Value>,
    },
    /// `POST /api/admin/push-task`: a task the queue does not know.
    AdminPush {
        task_id: String,
        fields: Map<String, Value>,
    },
    TaskCancelled {
        task_id: String,
    },
    RestartSidecar {
        reason: String,
    },
    AgentJoined {
        agent_id: String,
        agent: Value,
    },
    AgentLeft {
        agent_id: String,
    },
    StatusChanged {
        agent: Value,
    },
    Message {
        frame: Value,
    },
    /// A room message (`AgentCom.Room`'s PubSub broadcast).
    Room {
        message: Value,
    },
    /// The reaper's `Process.exit(pid, :stale_connection)`: trapped, a message like any other.
    Exit,
}

/// One WebSocket session: the socket process's state.
pub(crate) struct Session {
    pub commands: UnboundedSender<Command>,
    /// The agent it identified as (last identify wins), kept after a failed re-identify.
    pub agent_id: Option<String>,
    pub identified: bool,
    pub violations: ViolationWindow,
    /// PubSub subscriptions: one more at every identify, each delivering every broadcast.
    pub subscriptions: u32,
    pub cut: bool,
    /// The scheduling an identify triggered, deferred (see `Behaviour::repush_before_reassign`).
    pub join_schedule: Option<Instant>,
}

/// An agent as presence keeps it.
pub(crate) struct PresenceEntry {
    pub name: Value,
    pub status: Value,
    pub capabilities: Value,
    pub connected_at: u64,
    pub last_seen: Instant,
    /// Unknown until the agent's FSM moves after the identify.
    pub fsm_state: Option<&'static str>,
}

impl PresenceEntry {
    /// As `list_agents`, `agent_joined` and `status_changed` show an agent.
    pub fn to_json(&self, agent_id: &str) -> Value {
        json!({"agent_id": agent_id, "name": self.name, "status": self.status,
            "capabilities": self.capabilities, "connected_at": self.connected_at})
    }
}

pub(crate) struct Core {
    pub timings: HubTimings,
    pub limits: HubLimits,
    pub tokens: Tokens,
    pub queue: TaskQueue,
    pub sessions: HashMap<u64, Session>,
    /// agent → the session pushes go to.
    pub registry: HashMap<String, u64>,
    pub presence: BTreeMap<String, PresenceEntry>,
    pub fsms: BTreeMap<String, Fsm>,
    pub cooldowns: Cooldowns,
    pub limiter: RateLimiter,
    pub resources: HashMap<String, Value>,
    pub ollama: HashMap<String, String>,
    /// The dashboard's live view of each task's progress events.
    pub live: super::live::LiveView,
    pub timers: Timers,
    /// Pushes to this session are collected here instead of queued (written inline).
    pub capture: Option<(u64, Vec<Delivery>)>,
    pub events: Arc<EventLog>,
    pub room: super::chat::Room,
    print: bool,
    default_repo: Option<String>,
}

/// The periodic sweeps' next runs and the pending fallback retries.
pub(crate) struct Timers {
    pub stuck: Instant,
    pub overdue: Instant,
    pub ttl: Instant,
    pub reaper: Instant,
    pub fallbacks: HashMap<String, Instant>,
}

impl Timers {
    pub fn start(timings: &HubTimings, now: Instant) -> Timers {
        Timers {
            stuck: later(now, timings.stuck_sweep_interval),
            overdue: later(now, timings.overdue_sweep_interval),
            ttl: later(now, timings.ttl_sweep_interval),
            reaper: later(now, timings.reaper_interval),
            fallbacks: HashMap::new(),
        }
    }
}

impl Core {
    pub fn new(opts: &DevHubOptions, events: Arc<EventLog>) -> Core {
        Core {
            timers: Timers::start(&opts.timings, Instant::now()),
            timings: opts.timings.clone(),
            limits: opts.limits.clone(),
            tokens: Tokens::new(opts.tokens.clone()),
            queue: TaskQueue::default(),
            sessions: HashMap::new(),
            registry: HashMap::new(),
            presence: BTreeMap::new(),
            fsms: BTreeMap::new(),
            cooldowns: Cooldowns::default(),
            limiter: RateLimiter::default(),
            resources: HashMap::new(),
            ollama: HashMap::new(),
            live: Default::default(),
            capture: None,
            events,
            room: Default::default(),
            print: opts.print_presence,
            default_repo: opts.default_repo.clone(),
        }
    }

    /// After the server stopped: what a hub restart loses (everything in memory and ETS), with
    /// the queue and the tokens kept (DETS and the tokens file).
    pub fn restarted(&mut self, now: Now) {
        for id in self.sessions.keys().copied().collect::<Vec<_>>() {
            self.session_ended(id, true, now);
        }
        self.registry.clear();
        self.presence.clear();
        self.fsms.clear();
        self.cooldowns = Cooldowns::default();
        self.limiter = RateLimiter::default();
        self.resources.clear();
        self.ollama.clear();
        self.room_restarted();
        self.timers = Timers::start(&self.timings, now.at);
        self.record(0, HubEventKind::HubRestarted);
    }

    pub fn record(&self, conn: u64, kind: HubEventKind) {
        self.events.record(conn, kind);
    }

    /// One human line on stdout, if asked for; a closed stdout is ignored.
    pub fn say(&self, line: std::fmt::Arguments<'_>) {
        if self.print {
            let _ = writeln!(std::io::stdout().lock(), "hub: {line}");
        }
    }

    // -- sessions -------------------------------------------------------------------------

    pub fn open(&mut self, id: u64, commands: UnboundedSender<Command>, peer: &str) {
        let session = Session {
            commands,
            agent_id: None,
            identified: false,
            violations: ViolationWindow::default(),
            subscriptions: 0,
            cut: false,
            join_schedule: None,
        };
        self.sessions.insert(id, session);
        self.record(id, HubEventKind::Connected);
        self.say(format_args!("conn {id} connected from {peer}"));
    }

    /// The session ended. With `terminate`, its clean-up runs as the hub's `terminate/2`
    /// does: its push registration dropped, and **the agent it identified as removed from
    /// presence**, whichever session presence shows. Then, as the process is gone: any
    /// registration it still holds is dropped, and the FSMs watching it take their current
    /// task back. Idempotent.
    pub fn session_ended(&mut self, id: u64, terminate: bool, now: Now) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        if let (true, Some(agent)) = (terminate, session.agent_id.as_deref()) {
            if self.registry.get(agent) == Some(&id) {
                self.registry.remove(agent);
            }
            self.presence.remove(agent);
            self.record(
                id,
                HubEventKind::PresenceRemoved {
                    agent_id: agent.to_string(),
                },
            );
            self.broadcast(|| Delivery::AgentLeft {
                agent_id: agent.to_string(),
            });
            self.say(format_args!("agent {agent} left (conn {id})"));
        }
        self.registry.retain(|_, holder| *holder != id);
        let watching: Vec<String> = self
            .fsms
            .iter()
            .filter(|(_, fsm)| fsm.conn == id)
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in watching {
            let current = self.fsms.remove(&agent).and_then(|fsm| fsm.current_task);
            if let Some(entry) = self.presence.get_mut(&agent) {
                entry.fsm_state = Some("offline");
            }
            if let Some(task_id) = current {
                self.take_back(
                    &task_id,
                    TakeBackReason::Disconnect,
                    "agent_disconnect",
                    now,
                );
            }
        }
        self.record(id, HubEventKind::Disconnected);
        if session.agent_id.is_none() {
            self.say(format_args!("conn {id} closed"));
        }
    }

    /// Marks the session cut (it lingers, unreachable, until its idle timeout).
    pub fn cut(&mut self, id: u64) {
        if let Some(session) = self.sessions.get_mut(&id) {
            session.cut = true;
            let agent_id = session.agent_id.clone().unwrap_or_default();
            self.record(id, HubEventKind::ConnectionCut { agent_id });
        }
    }

    /// The sessions identified as `agent_id` and not cut.
    pub fn sessions_of(&self, agent_id: &str) -> Vec<(u64, UnboundedSender<Command>)> {
        let mut found: Vec<(u64, UnboundedSender<Command>)> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.cut && s.agent_id.as_deref() == Some(agent_id))
            .map(|(id, s)| (*id, s.commands.clone()))
            .collect();
        found.sort_by_key(|(id, _)| *id);
        found
    }

    /// Sends `delivery` to the session registered for `agent_id`; whether there is one.
    pub fn push(&mut self, agent_id: &str, delivery: Delivery) -> bool {
        let Some(&id) = self.registry.get(agent_id) else {
            return false;
        };
        if let Some((captured_for, captured)) = &mut self.capture {
            if *captured_for == id {
                captured.push(delivery);
                return true;
            }
        }
        self.sessions
            .get(&id)
            .is_some_and(|s| s.commands.send(Command::Deliver(delivery)).is_ok())
    }

    /// A PubSub broadcast: every subscribed session gets it once per subscription.
    pub fn broadcast(&self, delivery: impl Fn() -> Delivery) {
        for session in self.sessions.values() {
            for _ in 0..session.subscriptions {
                let _ = session.commands.send(Command::Deliver(delivery()));
            }
        }
    }

    /// Presence's FSM state of `agent_id`, if it is listed.
    pub fn show_fsm_state(&mut self, agent_id: &str, state: &'static str) {
        if let Some(entry) = self.presence.get_mut(agent_id) {
            entry.fsm_state = Some(state);
        }
    }

    // -- the HTTP side ----------------------------------------------------------------------

    /// `/api/agents`' list.
    pub fn agents_json(&self) -> Vec<Value> {
        self.presence
            .iter()
            .map(|(agent, entry)| {
                let mut json = entry.to_json(agent);
                json["fsm_state"] = json!(entry.fsm_state.unwrap_or("unknown"));
                if json["capabilities"].is_null() {
                    json["capabilities"] = json!([]);
                }
                json
            })
            .collect()
    }

    pub fn default_repo(&self) -> Option<&str> {
        self.default_repo.as_deref()
    }

    /// `POST /api/tasks`: 201 and its body, or the error status and body.
    pub fn submit(
        &mut self,
        body: &Map<String, Value>,
        submitted_by: &str,
        now: Now,
    ) -> (u16, Value) {
        if let Err(errors) = validation::validate_http(body, HttpBody::PostTask)
            .and_then(|()| validation::validate_enrichment(body))
        {
            return (422, json!({"error": "validation_failed", "errors": errors}));
        }
        let task = queue::new_task(body, submitted_by, now.ms, now.at);
        if task
            .depends_on
            .iter()
            .any(|dep| self.queue.get(dep).is_none())
        {
            // The hub has no answer for unknown dependencies: the request crashes.
            return (500, json!({"error": "internal_server_error"}));
        }
        let task = self.queue.submit(task);
        let mut answer = json!({"status": "queued", "task_id": task.id,
            "priority": task.priority, "created_at": task.created_at});
        if task
            .fields
            .verification_steps
            .as_array()
            .is_some_and(|s| s.len() > 10)
        {
            let steps = task
                .fields
                .verification_steps
                .as_array()
                .map_or(0, Vec::len);
            answer["warnings"] = json!([format!("Task has {steps} verification steps (soft limit: 10). Consider splitting into smaller tasks.")]);
        }
        let task_id = task.id.clone();
        self.record(
            0,
            HubEventKind::TaskSubmitted {
                task_id: task_id.clone(),
            },
        );
        self.say(format_args!("task {task_id} submitted"));
        self.schedule(now);
        (201, answer)
    }

    /// `POST /api/tasks/:id/cancel`: the task is removed, whatever its state; its agent (if it
    /// has one) gets `task_cancelled` and its FSM goes idle.
    pub fn cancel(&mut self, task_id: &str, now: Now) -> Option<Value> {
        let task = self.queue.cancel(task_id)?;
        self.timers.fallbacks.remove(task_id);
        let agent = task.assigned_to.clone();
        self.record(
            0,
            HubEventKind::TaskCancelled {
                task_id: task_id.to_string(),
                agent_id: agent.clone(),
            },
        );
        if let Some(agent) = &agent {
            self.push(
                agent,
                Delivery::TaskCancelled {
                    task_id: task_id.to_string(),
                },
            );
            if let Some(fsm) = self.fsms.get_mut(agent) {
                if fsm.task_cancelled() == super::fsm::FsmOutcome::BecameIdle {
                    self.show_fsm_state(agent, "idle");
                    self.schedule(now);
                }
            }
        }
        Some(
            json!({"status": "cancelled", "task_id": task_id, "previous_status": task.status.name()}),
        )
    }

    /// `POST /api/admin/agents/:id/restart`: whether a session is registered for the agent.
    pub fn restart_agent(&mut self, agent_id: &str, reason: &str) -> bool {
        self.push(
            agent_id,
            Delivery::RestartSidecar {
                reason: reason.to_string(),
            },
        )
    }

    /// `POST /api/admin/push-task`: status and body.
    pub fn push_task(&mut self, body: &Map<String, Value>, by: &str, now: Now) -> (u16, Value) {
        if let Err(errors) = validation::validate_http(body, HttpBody::PushTask) {
            return (422, json!({"error": "validation_failed", "errors": errors}));
        }
        let agent_id = body
            .get("agent_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let task_id = format!("task-{:016x}", fastrand::u64(..));
        let mut fields = Map::new();
        fields.insert(
            "description".into(),
            body.get("description").cloned().unwrap_or_default(),
        );
        let metadata = body
            .get("metadata")
            .filter(|m| !m.is_null())
            .cloned()
            .unwrap_or_else(|| json!({}));
        fields.insert("metadata".into(), metadata);
        fields.insert("submitted_by".into(), json!(by));
        fields.insert("submitted_at".into(), json!(now.ms));
        let delivery = Delivery::AdminPush {
            task_id: task_id.clone(),
            fields,
        };
        if !self.push(&agent_id, delivery) {
            return (
                404,
                json!({"error": "agent_not_connected", "agent_id": agent_id}),
            );
        }
        self.say(format_args!("pushed task {task_id} to {agent_id}"));
        (
            200,
            json!({"status": "pushed", "task_id": task_id, "agent_id": agent_id}),
        )
    }
}
