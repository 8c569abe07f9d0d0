//! The hub's shared state, reached from the server's worker thread, the ticker and the thread
//! that owns the [`DevHub`](super::DevHub): the model ([`Core`]) behind one lock, the event log,
//! the behaviour switches, and the ticker that runs the model's timers. Everything sits behind
//! std locks; a poisoned lock is used as is, never turned into a panic. Lock order: the model,
//! then the event log (which never takes the model).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;

use super::core::{Command, Core, Now};
use super::events::{EventLog, HubEvent, HubEventKind};
use super::options::DevHubOptions;
use super::Behaviour;

pub(crate) struct Hub {
    core: Mutex<Core>,
    pub events: Arc<EventLog>,
    next_conn: AtomicU64,
    behaviour: Mutex<Behaviour>,
    /// Wakes the ticker: a timer may have moved.
    timers_changed: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(opts: &DevHubOptions) -> Hub {
        let events = Arc::new(EventLog::new());
        Hub {
            core: Mutex::new(Core::new(opts, events.clone())),
            events,
            next_conn: AtomicU64::new(1),
            behaviour: Mutex::new(Behaviour::default()),
            timers_changed: Notify::new(),
        }
    }

    /// Runs `f` on the model; then the ticker looks at the timers again.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let result = f(&mut lock(&self.core));
        self.timers_changed.notify_one();
        result
    }

    pub fn record(&self, conn: u64, kind: HubEventKind) {
        self.events.record(conn, kind);
    }

    pub fn events(&self) -> Vec<HubEvent> {
        self.events.all()
    }

    pub fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.behaviour) = behaviour;
    }

    /// A new connection: its id, with the `Connected` event recorded once it can be reached.
    pub fn open(&self, commands: UnboundedSender<Command>, peer: &str) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.with_core(|core| core.open(id, commands, peer));
        id
    }

    /// Queues `command` for every session identified as `agent_id` and not cut; their ids.
    pub fn command_agent(&self, agent_id: &str, command: impl Fn() -> Command) -> Vec<u64> {
        let sessions = self.with_core(|core| core.sessions_of(agent_id));
        sessions
            .into_iter()
            .filter(|(_, commands)| commands.send(command()).is_ok())
            .map(|(id, _)| id)
            .collect()
    }

    /// Asks every session to shut down (the hub stopping); how many there were.
    pub fn shut_sessions(&self) -> usize {
        self.with_core(|core| {
            core.sessions
                .values()
                .filter(|s| s.commands.send(Command::Shutdown).is_ok())
                .count()
        })
    }

    pub fn session_count(&self) -> usize {
        lock(&self.core).sessions.len()
    }

    /// Runs the model's timers until the hub stops: sleeps until the earliest one, or until
    /// an operation may have changed them.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            let deadline = lock(&self.core).next_deadline();
            let changed = self.timers_changed.notified();
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {
                    let behaviour = self.behaviour();
                    self.with_core(|core| core.tick(Now::get(), &behaviour));
                }
                () = changed => {}
            }
        }
    }
}
