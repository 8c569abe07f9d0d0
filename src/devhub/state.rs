//! The hub's shared state: the event log, the live connections with the agent each one
//! identified as, the behaviour switches and the token check. It is reached from the server's
//! worker thread and from the thread that owns the [`DevHub`](super::DevHub), so everything
//! sits behind std locks; a poisoned lock is used as is, never turned into a panic.
//!
//! Every event is stamped twice: with an [`Instant`] for the tests, and with
//! [`monotonic_ns`] for clients outside the process (`GET /api/events`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use super::tokens::{RegisterError, Tokens};
use super::{Behaviour, HubEvent, HubEventKind, RawFrame};

/// What a connection's task is asked to do from outside.
#[derive(Debug)]
pub(crate) enum Command {
    Send(RawFrame),
    /// Send the frame, then record the event: its time is the moment the frame was handed
    /// to the WebSocket session (the socket write follows on the same thread).
    SendAndRecord(RawFrame, HubEventKind),
    /// End the connection without a Close frame.
    Kill,
}

/// The agent a connection identified as, as `/api/agents` lists it.
#[derive(Clone, Debug)]
pub(crate) struct AgentInfo {
    pub agent_id: String,
    pub name: String,
    pub status: String,
    pub capabilities: Value,
    pub connected_at: u64,
}

impl AgentInfo {
    /// Reads the optional fields of an identify frame, with the hub's defaults.
    pub fn from_identify(agent_id: &str, frame: &Value) -> AgentInfo {
        let text = |key: &str, default: &str| {
            frame
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let capabilities = match frame.get("capabilities") {
            Some(list @ Value::Array(_)) => list.clone(),
            _ => json!([]),
        };
        AgentInfo {
            agent_id: agent_id.to_string(),
            name: text("name", agent_id),
            status: text("status", "idle"),
            capabilities,
            connected_at: now_ms(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "agent_id": self.agent_id,
            "name": self.name,
            "status": self.status,
            "capabilities": self.capabilities,
            "connected_at": self.connected_at,
        })
    }
}

struct Conn {
    commands: UnboundedSender<Command>,
    agent: Option<AgentInfo>,
}

impl Conn {
    fn is_agent(&self, agent_id: &str) -> bool {
        self.agent.as_ref().is_some_and(|a| a.agent_id == agent_id)
    }
}

/// Every event since the hub started, and two ways to wait for new ones: a condition
/// variable for threads, a watch of the event count for async tasks.
struct EventLog {
    list: Mutex<Vec<HubEvent>>,
    added: Condvar,
    count: watch::Sender<usize>,
}

pub(crate) struct Hub {
    events: EventLog,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    behaviour: Mutex<Behaviour>,
    tokens: Mutex<Tokens>,
    print_presence: bool,
    default_repo: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    pub fn new(
        tokens: Option<HashMap<String, String>>,
        print_presence: bool,
        default_repo: Option<String>,
    ) -> Hub {
        Hub {
            events: EventLog {
                list: Mutex::new(Vec::new()),
                added: Condvar::new(),
                count: watch::Sender::new(0),
            },
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            behaviour: Mutex::new(Behaviour::default()),
            tokens: Mutex::new(Tokens::new(tokens)),
            print_presence,
            default_repo,
        }
    }

    pub fn record(&self, conn: u64, kind: HubEventKind) {
        let event = HubEvent {
            at: Instant::now(),
            mono_ns: monotonic_ns(),
            conn,
            kind,
        };
        let mut list = lock(&self.events.list);
        list.push(event);
        let count = list.len();
        drop(list);
        self.events.added.notify_all();
        self.events.count.send_replace(count);
    }

    pub fn events(&self) -> Vec<HubEvent> {
        lock(&self.events.list).clone()
    }

    /// Runs `read` on the events from index `since` on (none if there are fewer), without
    /// copying them; also passes the number of events recorded so far.
    pub fn read_events<R>(&self, since: usize, read: impl FnOnce(&[HubEvent], usize) -> R) -> R {
        let list = lock(&self.events.list);
        read(list.get(since..).unwrap_or_default(), list.len())
    }

    /// A receiver that sees the event count change: subscribe before looking at the events,
    /// then wait on it, and no event recorded in between is missed.
    pub fn watch_events(&self) -> watch::Receiver<usize> {
        self.events.count.subscribe()
    }

    /// The events recorded after the first `seen` ones, waiting for at least one until
    /// `deadline`; `None` when none came in time.
    pub fn events_after(&self, seen: usize, deadline: Instant) -> Option<Vec<HubEvent>> {
        let mut list = lock(&self.events.list);
        while list.len() <= seen {
            let left = deadline.checked_duration_since(Instant::now())?;
            list = self
                .events
                .added
                .wait_timeout(list, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(list[seen..].to_vec())
    }

    pub fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.behaviour) = behaviour;
    }

    /// One human line on stdout, if asked for; a closed stdout is ignored.
    pub fn presence(&self, line: std::fmt::Arguments<'_>) {
        if self.print_presence {
            let _ = writeln!(std::io::stdout().lock(), "hub: {line}");
        }
    }

    /// A new connection: its id, with the `Connected` event recorded once it can be reached.
    pub fn register(&self, commands: UnboundedSender<Command>, peer: &str) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            commands,
            agent: None,
        };
        lock(&self.conns).insert(id, conn);
        self.record(id, HubEventKind::Connected);
        self.presence(format_args!("conn {id} connected from {peer}"));
        id
    }

    pub fn unregister(&self, id: u64) {
        let gone = lock(&self.conns).remove(&id);
        self.record(id, HubEventKind::Disconnected);
        match gone.and_then(|conn| conn.agent) {
            Some(agent) => self.presence(format_args!("agent {} left (conn {id})", agent.agent_id)),
            None => self.presence(format_args!("conn {id} closed")),
        }
    }

    /// `Ok` if `token` lets `agent_id` in, else the hub's error code.
    pub fn check_token(&self, agent_id: &str, token: &str) -> Result<(), &'static str> {
        lock(&self.tokens)
            .check(agent_id, token)
            .map_err(|e| e.code())
    }

    /// Whether `token` is good enough for the admin API: any agent's token.
    pub fn admin_token_ok(&self, token: &str) -> bool {
        lock(&self.tokens).bearer_agent(token).is_some()
    }

    pub fn default_repo(&self) -> Option<&str> {
        self.default_repo.as_deref()
    }

    /// `POST /api/onboard/register`: a new token for a new agent id.
    pub fn register_agent(&self, agent_id: &str) -> Result<String, RegisterError> {
        let token = lock(&self.tokens).register(agent_id)?;
        self.record(
            0,
            HubEventKind::AgentRegistered {
                agent_id: agent_id.to_string(),
            },
        );
        self.presence(format_args!("agent {agent_id} registered"));
        Ok(token)
    }

    /// Marks connection `id` as `agent`. An older connection of the same agent is detached
    /// and asked to close: the newer one wins.
    pub fn identify(&self, id: u64, agent: AgentInfo) {
        let agent_id = agent.agent_id.clone();
        let mut conns = lock(&self.conns);
        for (&old, conn) in conns.iter_mut() {
            if old != id && conn.is_agent(&agent_id) {
                conn.agent = None;
                let close = RawFrame::Close(1000, "replaced by a newer connection".into());
                let _ = conn.commands.send(Command::Send(close));
                self.presence(format_args!(
                    "agent {agent_id} moved from conn {old} to conn {id}"
                ));
            }
        }
        if let Some(conn) = conns.get_mut(&id) {
            conn.agent = Some(agent);
        }
        drop(conns);
        self.record(
            id,
            HubEventKind::Identified {
                agent_id: agent_id.clone(),
            },
        );
        self.presence(format_args!("agent {agent_id} identified (conn {id})"));
    }

    /// Queues `command` for every connection identified as `agent_id`; their ids.
    pub fn command_agent(&self, agent_id: &str, command: impl Fn() -> Command) -> Vec<u64> {
        let mut reached = Vec::new();
        for (&id, conn) in lock(&self.conns).iter() {
            if conn.is_agent(agent_id) && conn.commands.send(command()).is_ok() {
                reached.push(id);
            }
        }
        reached
    }

    /// Queues a `task_assign` frame for the connection of `agent_id`; `false` if not
    /// connected. The `TaskPushed` event is recorded by the connection's task as it sends the
    /// frame, so its time is the send, not this call, and it still precedes the client's
    /// answers in the log (the same task records those, later).
    pub fn push_task(&self, agent_id: &str, task_id: &str, frame: String) -> bool {
        let conns = lock(&self.conns);
        let Some(conn) = conns.values().find(|conn| conn.is_agent(agent_id)) else {
            return false;
        };
        let pushed = HubEventKind::TaskPushed {
            agent_id: agent_id.to_string(),
            task_id: task_id.to_string(),
        };
        let command = Command::SendAndRecord(RawFrame::Text(frame), pushed);
        let queued = conn.commands.send(command).is_ok();
        drop(conns);
        if queued {
            self.presence(format_args!("pushed task {task_id} to {agent_id}"));
        }
        queued
    }

    /// The identified agents, oldest first.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut agents: Vec<AgentInfo> = lock(&self.conns)
            .values()
            .filter_map(|conn| conn.agent.clone())
            .collect();
        agents.sort_by(|a, b| (a.connected_at, &a.agent_id).cmp(&(b.connected_at, &b.agent_id)));
        agents
    }
}
