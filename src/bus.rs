//! The message bus: how children reach each other without holding each other's address.
//!
//! A child registers a [`Recipient`] for each message type it accepts, in its `started()`;
//! a sender posts a typed message to whoever accepts that type. Senders never name the
//! receiving actor, so a restarted child (a fresh actor with a new address) is reached as
//! soon as it has registered again, and a new actor type plugs in without touching the
//! others. A message with no live recipient is handed back to the sender, which decides what
//! losing it means (a log line falls back to stderr; a frame for a dropped session is moot).
//!
//! Everything runs on the one arbiter thread, so the registry is an `Rc<RefCell<…>>`.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use actix::{Message, Recipient};

#[derive(Clone, Default)]
pub struct Bus {
    routes: Rc<RefCell<HashMap<TypeId, Box<dyn Any>>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a recipient of `M`. Recipients of dead actors are dropped here and on send.
    pub fn register<M>(&self, recipient: Recipient<M>)
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let mut routes = self.routes.borrow_mut();
        let list = routes
            .entry(TypeId::of::<M>())
            .or_insert_with(|| Box::new(Vec::<Recipient<M>>::new()));
        if let Some(list) = list.downcast_mut::<Vec<Recipient<M>>>() {
            list.retain(Recipient::connected);
            list.push(recipient);
        }
    }

    /// Delivers `msg` to every live recipient of `M`; hands it back if there is none.
    pub fn send<M>(&self, msg: M) -> Result<(), M>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
    {
        let mut routes = self.routes.borrow_mut();
        let Some(list) = routes
            .get_mut(&TypeId::of::<M>())
            .and_then(|l| l.downcast_mut::<Vec<Recipient<M>>>())
        else {
            return Err(msg);
        };
        list.retain(Recipient::connected);
        let Some((last, others)) = list.split_last() else {
            return Err(msg);
        };
        for r in others {
            r.do_send(msg.clone());
        }
        last.do_send(msg);
        Ok(())
    }

    /// Sends `msg` to the first live recipient of `M` and returns its answer (for queries
    /// such as the watchdog's liveness check); `None` if nobody accepts `M`.
    pub fn ask<M>(&self, msg: M) -> Option<actix::dev::RecipientRequest<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let routes = self.routes.borrow();
        let list = routes
            .get(&TypeId::of::<M>())?
            .downcast_ref::<Vec<Recipient<M>>>()?;
        let recipient = list.iter().find(|r| r.connected())?;
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
            .and_then(|l| l.downcast_ref::<Vec<Recipient<M>>>())
            .is_some_and(|l| l.iter().any(Recipient::connected))
    }
}
