//! The message bus: how children reach each other without holding each other's address.
//!
//! A child registers a [`Recipient`] for each message type it accepts (in `Child::routes`,
//! before it runs); a sender posts a typed message to whoever accepts that type. Senders
//! never name the receiving actor, so a restarted child (a fresh actor with a new address)
//! is reached as soon as it has registered again, and a new actor type plugs in without
//! touching the others.
//!
//! **Held while away.** A message type registered with [`Bus::register`] is *held*: when
//! every recipient of it is gone (its actor died and is in its restart delay), a message
//! sent meanwhile is kept here, in order, and delivered to the next recipient that
//! registers, before anything sent after. At most [`HELD_PER_TYPE`] messages are kept per
//! type (the oldest); the ones that do not fit are counted, and so are the held messages
//! dropped when the shutdown begins ([`Bus::stop_holding`]): each loss is published as
//! [`MessagesDropped`], which the Supervisor logs (`bus_messages_dropped`). A type
//! registered with [`Bus::register_unheld`] is never held: its sender has a better fallback
//! (a `LogRecord` is written to stderr at once).
//!
//! **`send`'s answer.** `Ok` when the message was delivered to a live recipient or is held
//! for one that is restarting. `Err(msg)` only when nobody will ever receive it: the type
//! was never registered (a forgotten route), it is unheld and nobody is there now, its held
//! queue is full, or the shutdown has begun and nobody is there. The sender decides what
//! losing it means.
//!
//! Everything runs on the one arbiter thread, so the registry is an `Rc<RefCell<…>>`.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use actix::{Message, Recipient};

/// Messages held per type while its recipient is away; past that the newest are handed
/// back (and counted).
pub const HELD_PER_TYPE: usize = 256;

/// Published when held messages were lost: `count` messages of type `message` (the type's
/// name), and why.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct MessagesDropped {
    pub message: &'static str,
    pub count: u64,
    pub reason: &'static str,
}

const OVERFLOW: &str = "held while its recipient was restarting, past the limit per message type";
const SHUTDOWN: &str = "held for a recipient that will not come back: the shutdown began";

#[derive(Clone)]
pub struct Bus {
    routes: Rc<RefCell<HashMap<TypeId, Box<dyn AnyRoute>>>>,
    /// False once the shutdown has begun: nothing is held any more.
    holding: Rc<Cell<bool>>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            routes: Rc::default(),
            holding: Rc::new(Cell::new(true)),
        }
    }
}

/// The recipients of one message type, and what is held for them.
struct Route<M: Message + Send>
where
    M::Result: Send,
{
    recipients: Vec<Recipient<M>>,
    name: &'static str,
    hold: bool,
    held: VecDeque<M>,
    /// Held messages dropped (no room) since the last report.
    overflowed: u64,
}

/// What the bus needs of a route without knowing its message type.
trait AnyRoute {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_any(&self) -> &dyn Any;
    /// Drops everything held; how many.
    fn abandon_held(&mut self) -> u64;
    fn name(&self) -> &'static str;
}

impl<M: Message + Send + 'static> AnyRoute for Route<M>
where
    M::Result: Send,
{
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn abandon_held(&mut self) -> u64 {
        let n = self.held.len() as u64 + self.overflowed;
        self.held.clear();
        self.overflowed = 0;
        n
    }
    fn name(&self) -> &'static str {
        self.name
    }
}

/// The last segment of a type's path: `SendFrame` for `…::actors::hub::SendFrame`.
fn short_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a recipient of `M`; messages of `M` are held while no recipient is alive, and
    /// what was held is delivered to this one now, in order. Recipients of dead actors are
    /// dropped here and on send.
    pub fn register<M>(&self, recipient: Recipient<M>)
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.add(recipient, true);
    }

    /// Adds a recipient of `M`, whose messages are never held: with no live recipient,
    /// [`send`](Self::send) hands them back at once.
    pub fn register_unheld<M>(&self, recipient: Recipient<M>)
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.add(recipient, false);
    }

    fn add<M>(&self, recipient: Recipient<M>, hold: bool)
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let overflowed = {
            let mut routes = self.routes.borrow_mut();
            let entry = routes.entry(TypeId::of::<M>()).or_insert_with(|| {
                Box::new(Route::<M> {
                    recipients: Vec::new(),
                    name: short_name::<M>(),
                    hold,
                    held: VecDeque::new(),
                    overflowed: 0,
                })
            });
            let Some(route) = entry.as_any_mut().downcast_mut::<Route<M>>() else {
                return;
            };
            route.hold = hold;
            route.recipients.retain(Recipient::connected);
            // What was held for the type goes first, in the order it was sent.
            for msg in route.held.drain(..) {
                recipient.do_send(msg);
            }
            route.recipients.push(recipient);
            std::mem::take(&mut route.overflowed)
        };
        self.report::<M>(overflowed, OVERFLOW);
    }

    /// Delivers `msg` to every live recipient of `M`, or holds it for the next one (see the
    /// module doc); hands it back if nobody will ever receive it.
    pub fn send<M>(&self, msg: M) -> Result<(), M>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
    {
        let mut routes = self.routes.borrow_mut();
        let Some(route) = routes
            .get_mut(&TypeId::of::<M>())
            .and_then(|r| r.as_any_mut().downcast_mut::<Route<M>>())
        else {
            return Err(msg);
        };
        route.recipients.retain(Recipient::connected);
        let Some((last, others)) = route.recipients.split_last() else {
            if !(route.hold && self.holding.get()) {
                return Err(msg);
            }
            if route.held.len() >= HELD_PER_TYPE {
                // Counted here for the report; handed back, as nobody will receive it.
                route.overflowed += 1;
                return Err(msg);
            }
            route.held.push_back(msg);
            return Ok(());
        };
        for r in others {
            r.do_send(msg.clone());
        }
        last.do_send(msg);
        Ok(())
    }

    /// The shutdown has begun: children that stop now do not come back, so nothing is held
    /// any more, and what is held now is dropped (and reported as [`MessagesDropped`]).
    pub fn stop_holding(&self) {
        self.holding.set(false);
        let dropped: Vec<(&'static str, u64)> = self
            .routes
            .borrow_mut()
            .values_mut()
            .map(|route| (route.name(), route.abandon_held()))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (name, count) in dropped {
            let _ = self.send(MessagesDropped {
                message: name,
                count,
                reason: SHUTDOWN,
            });
        }
    }

    /// Messages of `M` held now (for tests and the status).
    pub fn held<M>(&self) -> usize
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.routes
            .borrow()
            .get(&TypeId::of::<M>())
            .and_then(|r| r.as_any().downcast_ref::<Route<M>>())
            .map_or(0, |r| r.held.len())
    }

    fn report<M>(&self, count: u64, reason: &'static str) {
        if count > 0 {
            let _ = self.send(MessagesDropped {
                message: short_name::<M>(),
                count,
                reason,
            });
        }
    }

    /// Sends `msg` to the first live recipient of `M` and returns its answer (for queries
    /// such as the watchdog's liveness check); `None` if nobody accepts `M` now. Never held.
    pub fn ask<M>(&self, msg: M) -> Option<actix::dev::RecipientRequest<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let routes = self.routes.borrow();
        let route = routes
            .get(&TypeId::of::<M>())?
            .as_any()
            .downcast_ref::<Route<M>>()?;
        let recipient = route.recipients.iter().find(|r| r.connected())?;
        Some(recipient.send(msg))
    }

    /// Whether anyone accepts `M` right now.
    pub fn routes<M>(&self) -> bool
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.routes
            .borrow()
            .get(&TypeId::of::<M>())
            .and_then(|r| r.as_any().downcast_ref::<Route<M>>())
            .is_some_and(|r| r.recipients.iter().any(Recipient::connected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::prelude::*;

    #[derive(Debug, Clone, Message)]
    #[rtype(result = "()")]
    struct Note(u32);

    #[derive(Message)]
    #[rtype(result = "Vec<u32>")]
    struct Seen;

    #[derive(Default)]
    struct Receiver(Vec<u32>);

    impl Actor for Receiver {
        type Context = Context<Self>;
    }

    impl Handler<Note> for Receiver {
        type Result = ();
        fn handle(&mut self, msg: Note, _: &mut Context<Self>) {
            self.0.push(msg.0);
        }
    }

    impl Handler<Seen> for Receiver {
        type Result = MessageResult<Seen>;
        fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.0.clone())
        }
    }

    /// The recipient of an actor that is gone (its mailbox dropped).
    fn dead() -> Recipient<Note> {
        let ctx = Context::<Receiver>::new();
        let recipient = ctx.address().recipient();
        drop(ctx);
        recipient
    }

    fn run(test: impl std::future::Future<Output = ()>) {
        System::new().block_on(test);
    }

    #[test]
    fn a_type_never_registered_comes_back() {
        run(async {
            assert!(Bus::new().send(Note(1)).is_err());
        });
    }

    #[test]
    fn held_messages_reach_the_next_recipient_in_order_before_later_ones() {
        run(async {
            let bus = Bus::new();
            bus.register(dead());
            for n in 0..3 {
                assert!(bus.send(Note(n)).is_ok(), "held");
            }
            assert_eq!(bus.held::<Note>(), 3);
            let addr = Receiver::default().start();
            bus.register(addr.clone().recipient::<Note>());
            assert_eq!(bus.held::<Note>(), 0);
            bus.send(Note(3)).unwrap();
            assert_eq!(addr.send(Seen).await.unwrap(), [0, 1, 2, 3]);
        });
    }

    #[test]
    fn past_the_limit_messages_come_back_to_the_sender_and_the_held_ones_are_delivered() {
        run(async {
            let bus = Bus::new();
            bus.register(dead());
            let sent: Vec<bool> = (0..HELD_PER_TYPE as u32 + 2)
                .map(|n| bus.send(Note(n)).is_ok())
                .collect();
            assert!(sent[..HELD_PER_TYPE].iter().all(|ok| *ok));
            assert!(!sent[HELD_PER_TYPE] && !sent[HELD_PER_TYPE + 1]);
            let addr = Receiver::default().start();
            bus.register(addr.clone().recipient::<Note>());
            let seen = addr.send(Seen).await.unwrap();
            assert_eq!(seen, (0..HELD_PER_TYPE as u32).collect::<Vec<_>>());
        });
    }

    #[test]
    fn an_unheld_type_comes_back_when_nobody_is_there() {
        run(async {
            let bus = Bus::new();
            bus.register_unheld(dead());
            assert!(bus.send(Note(1)).is_err());
            assert_eq!(bus.held::<Note>(), 0);
        });
    }

    #[test]
    fn once_the_shutdown_begins_nothing_is_held() {
        run(async {
            let bus = Bus::new();
            bus.register(dead());
            bus.send(Note(1)).unwrap();
            bus.stop_holding();
            assert_eq!(bus.held::<Note>(), 0);
            assert!(bus.send(Note(2)).is_err());
        });
    }
}
