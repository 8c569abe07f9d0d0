//! The actors, and the one list that says which run.
//!
//! [`children`] is the Supervisor's child list: start order top to bottom, stop order
//! bottom to top (the logger starts first and stops last, so everyone can log until the
//! end). Adding an actor type is one new file in this folder, a `mod` line, and one row in
//! that list; the new actor declares the messages it accepts in [`Child::routes`] and reaches
//! the others through the bus. See `docs/development/adding-an-actor.md`.

use std::cell::RefCell;
use std::rc::Rc;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};

use crate::bus::Bus;
use crate::config::Config;
use crate::log::Log;

pub mod heartbeat;
pub mod hub;
pub mod logger;
pub mod queue;
pub mod reconcile;
pub mod resources;
pub mod results;
pub mod room;
pub mod shutdown;
pub mod status;
pub mod supervisor;
pub mod waker;

/// The Supervisor's children, in start order.
pub fn children() -> Vec<ChildSpec> {
    vec![
        ChildSpec::new("logger", logger::LoggerActor::new),
        ChildSpec::new("shutdown", shutdown::ShutdownActor::new),
        ChildSpec::new("status", status::StatusActor::new),
        ChildSpec::new("heartbeat", heartbeat::HeartbeatActor::new),
        ChildSpec::new(hub::CHILD_NAME, hub::HubActor::new),
        ChildSpec::new("results", results::ResultsActor::new),
        ChildSpec::new("waker", waker::WakerActor::new),
        ChildSpec::new("queue", queue::QueueActor::new),
        ChildSpec::new("resources", resources::ResourceActor::new),
        ChildSpec::new("reconcile", reconcile::ReconcileActor::new),
        ChildSpec::new("room", room::RoomActor::new),
    ]
}

/// What every child is built from: the config, the bus, the log, what it keeps across its
/// restarts, and its exit note.
#[derive(Clone)]
pub struct Env {
    pub config: Rc<Config>,
    pub bus: Bus,
    pub log: Log,
    /// Values that outlive an incarnation (see [`Kept`]).
    pub kept: Kept,
    exit: ExitNote,
}

impl Env {
    pub fn new(config: Rc<Config>, bus: Bus, log: Log) -> Self {
        Env {
            config,
            bus,
            log,
            kept: Kept::default(),
            exit: ExitNote::default(),
        }
    }

    /// The same environment with a fresh exit note, for one incarnation of a child.
    fn for_incarnation(&self) -> Env {
        Env {
            exit: ExitNote::default(),
            ..self.clone()
        }
    }

    /// Stops the calling actor as failed: the Supervisor restarts it and logs `reason`.
    pub fn fail<A: Actor<Context = Context<A>>>(
        &self,
        ctx: &mut Context<A>,
        reason: impl Into<String>,
    ) {
        use actix::ActorContext;
        *self.exit.0.borrow_mut() = Some(reason.into());
        ctx.stop();
    }
}

/// Values an actor type keeps across its own restarts (a fresh actor is built from the same
/// `Env`): one value per Rust type, created on first use and shared by every later
/// incarnation. For what a restart must not forget — e.g. the session counter, so session
/// ids are never reused, or the queue's write fence. Everything else starts clean.
#[derive(Clone, Default)]
pub struct Kept(Rc<RefCell<std::collections::HashMap<std::any::TypeId, Rc<dyn std::any::Any>>>>);

impl Kept {
    /// The kept value of type `T` (created with `T::default()` the first time).
    pub fn get<T: Default + 'static>(&self) -> Rc<T> {
        let mut map = self.0.borrow_mut();
        let entry = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Rc::new(T::default()) as Rc<dyn std::any::Any>);
        match entry.clone().downcast::<T>() {
            Ok(value) => value,
            // Unreachable: the map is keyed by the value's own type.
            Err(_) => Rc::new(T::default()),
        }
    }
}

/// Why an incarnation stopped, when it says so before stopping (see [`Env::fail`]).
#[derive(Clone, Default)]
pub struct ExitNote(Rc<RefCell<Option<String>>>);

impl ExitNote {
    pub fn take(&self) -> Option<String> {
        self.0.borrow_mut().take()
    }
}

/// Asks a child to stop in good order (the Supervisor's shutdown, in reverse start order).
/// The child finishes what must not be cut (the hub's close handshake, the log's flush) and
/// then stops its context.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The watchdog's liveness probe: answered by every child as soon as its mailbox turns.
/// Implement it with [`answers_probe!`](crate::answers_probe).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Probe;

/// Implements the answer to [`Probe`] for a child actor type: `answers_probe!(MyActor);`.
#[macro_export]
macro_rules! answers_probe {
    ($actor:ty) => {
        impl ::actix::Handler<$crate::actors::Probe> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::Probe, _: &mut Self::Context) {}
        }
    };
}

/// An actor the Supervisor can run.
pub trait Child: Actor<Context = Context<Self>> + Handler<Stop> + Handler<Probe> {
    /// Registers on the bus every message this actor accepts from the others. Called by the
    /// Supervisor with the new address before the actor runs, so nothing sent meanwhile is
    /// lost.
    fn routes(bus: &Bus, addr: &Addr<Self>);
}

/// One row of the child list: a name and how to make a fresh actor.
pub struct ChildSpec {
    pub name: &'static str,
    start: Box<dyn Fn(&Env) -> Running>,
}

/// A started incarnation: how to ask it to stop, and its task (which ends when the actor
/// stops, or with a panic).
pub struct Running {
    pub stop: actix::Recipient<Stop>,
    pub probe: actix::Recipient<Probe>,
    pub task: tokio::task::JoinHandle<()>,
    pub exit: ExitNote,
}

impl ChildSpec {
    pub fn new<A: Child>(name: &'static str, make: fn(&Env) -> A) -> Self {
        ChildSpec {
            name,
            start: Box::new(move |env| {
                let env = env.for_incarnation();
                let ctx = Context::<A>::new();
                let addr = ctx.address();
                A::routes(&env.bus, &addr);
                let actor = make(&env);
                Running {
                    stop: addr.clone().recipient(),
                    probe: addr.recipient(),
                    // The Supervisor owns the task handle: a panic ends the task with an
                    // error it can see, instead of the actor silently vanishing.
                    task: actix_rt::spawn(ctx.into_future(actor)),
                    exit: env.exit,
                }
            }),
        }
    }

    /// Starts a fresh incarnation.
    pub fn start(&self, env: &Env) -> Running {
        (self.start)(env)
    }
}
