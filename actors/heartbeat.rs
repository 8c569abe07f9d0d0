//! HeartbeatActor: proves the hub session alive, or declares it dead.
//!
//! Once a session is identified it sends an application-level `ping` at once (a first
//! round trip also lets the hub actor reset its backoff) and then every
//! `heartbeat_interval`. If no `pong` comes within `heartbeat_timeout` of the oldest
//! unanswered ping, it logs `heartbeat_timeout` and tells the hub actor to drop the session
//! at once ([`DropSession`]): a half-open TCP connection gives no close handshake to wait on.
//! Its timers run on the event loop, which actix keeps turning during bursts of incoming
//! frames (it yields every 16 stream items). A [`SessionIdentified`] for the session it
//! already follows (re-published when another actor restarts and asks [`AnnounceSession`])
//! changes nothing: no extra ping, the ticker keeps its phase. It holds no state worth
//! keeping: a restart asks for the current session and starts pinging it.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::hub::{
    AnnounceSession, DropSession, PongReceived, SendFrame, SessionIdentified, SessionLost,
};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::protocol::Outgoing;

pub struct HeartbeatActor {
    env: Env,
    session: Option<u64>,
    /// When the oldest unanswered ping was sent.
    awaiting_since: Option<Instant>,
    ticker: Option<SpawnHandle>,
}

/// Published for every answered ping: the round trip it took.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HeartbeatAnswered {
    pub session: u64,
    pub rtt: Duration,
}

impl HeartbeatActor {
    pub fn new(env: &Env) -> Self {
        HeartbeatActor {
            env: env.clone(),
            session: None,
            awaiting_since: None,
            ticker: None,
        }
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        let Some(session) = self.session else { return };
        let now = Instant::now();
        self.awaiting_since.get_or_insert(now);
        let frame = SendFrame {
            session: Some(session),
            frame: Outgoing::Ping,
        };
        if self.env.bus.send(frame).is_err() {
            return;
        }
        let timeout = self.env.config.heartbeat_timeout;
        ctx.run_later(timeout, move |act, ctx| act.check(session, ctx));
    }

    fn check(&mut self, session: u64, ctx: &mut Context<Self>) {
        let timeout = self.env.config.heartbeat_timeout;
        let Some(since) = self.awaiting_since else {
            return;
        };
        if self.session != Some(session) || since.elapsed() < timeout {
            return;
        }
        log_event!(
            self.env.log,
            Warn,
            "heartbeat_timeout",
            session = session,
            waited_ms = since.elapsed().as_millis() as u64,
            timeout_ms = timeout.as_millis() as u64,
        );
        self.forget();
        if let Some(ticker) = self.ticker.take() {
            ctx.cancel_future(ticker);
        }
        let _ = self.env.bus.send(DropSession {
            session,
            reason: "heartbeat_timeout",
        });
    }

    fn forget(&mut self) {
        self.session = None;
        self.awaiting_since = None;
    }
}

impl Actor for HeartbeatActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        // After a restart of this actor alone, the session may already be up.
        let _ = self.env.bus.send(AnnounceSession);
    }
}

crate::answers_probe!(HeartbeatActor);

impl Child for HeartbeatActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<SessionIdentified>());
        bus.register(addr.clone().recipient::<SessionLost>());
        bus.register(addr.clone().recipient::<PongReceived>());
    }
}

impl Handler<Stop> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<SessionIdentified> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, msg: SessionIdentified, ctx: &mut Context<Self>) {
        if self.session == Some(msg.session) && self.ticker.is_some() {
            // The session this actor already follows, announced again (another actor
            // restarted and asked `AnnounceSession`): nothing changes, no extra ping.
            return;
        }
        if let Some(ticker) = self.ticker.take() {
            ctx.cancel_future(ticker);
        }
        self.session = Some(msg.session);
        self.awaiting_since = None;
        self.ping(ctx);
        let interval = self.env.config.heartbeat_interval;
        self.ticker = Some(ctx.run_interval(interval, |act, ctx| act.ping(ctx)));
    }
}

impl Handler<SessionLost> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, msg: SessionLost, ctx: &mut Context<Self>) {
        if self.session == Some(msg.session) {
            self.forget();
            if let Some(ticker) = self.ticker.take() {
                ctx.cancel_future(ticker);
            }
        }
    }
}

impl Handler<PongReceived> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, msg: PongReceived, _: &mut Context<Self>) {
        if self.session != Some(msg.session) {
            return;
        }
        if let Some(since) = self.awaiting_since.take() {
            let rtt: Duration = since.elapsed();
            log_event!(
                self.env.log,
                Debug,
                "heartbeat",
                rtt_us = rtt.as_micros() as u64,
                hub_ts = msg.hub_timestamp
            );
            let _ = self.env.bus.send(HeartbeatAnswered {
                session: msg.session,
                rtt,
            });
        }
    }
}
