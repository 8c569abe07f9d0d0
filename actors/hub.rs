//! HubActor: the one WebSocket session with the hub, and its rules.
//!
//! It connects (plumbing in [`crate::hubconn`]), sends `identify`, and routes what the hub
//! sends: pongs to the heartbeat, task frames and the answers to our reports to the
//! QueueActor ([`TaskEventFromHub`]), `restart_sidecar` to the QueueActor too (which decides
//! when), room chat to the RoomActor ([`RoomMessageFromHub`]). Other actors send frames through it ([`SendFrame`]); every frame goes through the
//! session's [`Outbound`], which paces frames below the hub's rate limits, keeps each sent
//! frame until the hub answers it, and so knows which report an answer without a task id
//! (`task_complete_failed: …`, `validation_failed`) refuses, and which frame a
//! `rate_limited` dropped (sent again after `retry_after_ms`).
//!
//! Losing the session is normal operation: the next attempt comes at an exponential backoff
//! with equal jitter (reset once a session has been identified and answered a ping), never
//! before a cooldown the hub asked for (1008 "retry in N s"). One attempt (TCP, TLS, upgrade,
//! identify reply) has `connect_timeout`. A session that ended without a close (heartbeat
//! timeout, broken connection) may linger at the hub, which then does not push to the new
//! session and later drops the agent from its presence list (a hub defect): the next
//! session identifies again once the old one must be gone (`stale_session_reidentify_ms`).
//! On [`Stop`] it sends a close 1000 and waits briefly for the hub to end the connection.
//! It is restarted by the Supervisor only if it panics or cannot build its TLS client.

use std::cell::Cell;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, Frame, Message as WsMessage, ProtocolError};
use tokio::sync::mpsc;

use super::{Child, Env, Stop};
use crate::backoff::Backoff;
use crate::bus::Bus;
use crate::hubconn::{self, Reassembly};
use crate::log_event;
use crate::outbound::{Outbound, Sent};
use crate::protocol::{Incoming, Outgoing};
use crate::tasks::{Answer, Assign, Event, ReportKind};

/// Send a frame to the hub. With `session: Some(id)` only on that session (a frame for a
/// session that has since been replaced is dropped). Frames other than `identify` are sent
/// only once the session is identified; without a session they are dropped (the task
/// actors keep what must survive and send it again after each identify).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SendFrame {
    pub session: Option<u64>,
    pub frame: Outgoing,
}

/// Drop this session at once, without a close handshake, and reconnect.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct DropSession {
    pub session: u64,
    pub reason: &'static str,
}

/// Identify again on this session (same connection), at most once in
/// [`REIDENTIFY_MIN_GAP`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Reidentify {
    pub session: u64,
    pub reason: &'static str,
}

/// The HubActor's name among the Supervisor's children (and in `actor_restarted`).
pub const CHILD_NAME: &str = "hub";

/// Identifies again no more often than this (the hub allows 10 identifies a minute).
pub const REIDENTIFY_MIN_GAP: Duration = Duration::from_secs(10);

/// Publish [`SessionIdentified`] again if a session is identified now (for an actor that
/// started after the identify).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AnnounceSession;

/// Published when the hub answered `identified`: the session is usable. Every identify,
/// also a second one on the same connection, is a new session id.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SessionIdentified {
    pub session: u64,
    /// The session before it ended without a close (a cut link, a missed heartbeat): the
    /// hub may have pushed tasks into that dead connection.
    pub after_unclean: bool,
}

/// Published when a session ended, however it ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SessionLost {
    pub session: u64,
}

/// Where the session stands, for status reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HubState {
    Connecting,
    Identified,
    Waiting,
}

/// Published on every change of [`HubState`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HubStateChanged {
    pub state: HubState,
    /// The connect attempt this is about.
    pub attempt: u64,
    /// With `Waiting`: when the next attempt comes.
    pub retry_in: Option<Duration>,
}

/// Published when the hub refuses the agent: its identify (`invalid_token`,
/// `token_agent_mismatch`) or the session, with a 1008 close (`hub_lockout`: too many
/// refused frames, or a cooldown, whose end the close may say). The refusal stands until the
/// next identify succeeds ([`HubStateChanged`] with `Identified`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HubRefused {
    /// `invalid_token`, `token_agent_mismatch` or `hub_lockout`.
    pub error: &'static str,
    /// The close reason of a lockout.
    pub detail: Option<String>,
    /// The wait the hub asked for: no attempt before it ends.
    pub cooldown: Option<Duration>,
}

/// Published for every `pong` on an identified session (and for a `ping` the hub dropped
/// as rate-limited: the hub is alive).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PongReceived {
    pub session: u64,
    pub hub_timestamp: Option<i64>,
}

/// Published for every task frame from the hub, and every answer to a task report.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskEventFromHub {
    pub session: u64,
    pub event: Event,
}

/// Published for every `room_message` (room chat) from the hub: the message, or why its
/// fields cannot be used. The RoomActor decides what it wakes.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RoomMessageFromHub {
    pub session: u64,
    pub message: Result<crate::room::RoomMessage, crate::room::Rejected>,
}

/// The hub asked for a restart (`restart_sidecar`); the QueueActor decides when.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct HubRestartRequested {
    pub reason: String,
}

/// One item of a connection's incoming stream; `None` when the connection has ended.
struct WsEvent {
    conn: u64,
    item: Option<Result<Frame, ProtocolError>>,
}

/// Kept across restarts of this actor: numbers are never reused, so other actors never take
/// a new session for one they remember. Connections (connect attempts) and sessions
/// (identifies) are counted apart, each from 1.
#[derive(Default)]
struct Counter {
    conns: Cell<u64>,
    sessions: Cell<u64>,
}

/// The agent's allowance at the hub as the last session left it, kept across sessions and
/// across restarts of this actor: the hub's rate limits are per agent, not per socket.
#[derive(Default)]
struct KeptPacer(std::cell::RefCell<Option<crate::outbound::Pacer>>);

impl Counter {
    fn next_conn(&self) -> u64 {
        self.conns.set(self.conns.get() + 1);
        self.conns.get()
    }

    fn next_session(&self) -> u64 {
        self.sessions.set(self.sessions.get() + 1);
        self.sessions.get()
    }
}

pub struct HubActor {
    env: Env,
    client: Option<awc::Client>,
    backoff: Backoff,
    counter: std::rc::Rc<Counter>,
    pacer: std::rc::Rc<KeptPacer>,
    /// The latest connect attempt's number.
    attempts: u64,
    state: State,
    /// No attempt before this (the hub's cooldown).
    not_before: Option<Instant>,
    /// When the last session that ended without a close was last heard from.
    stale_since: Option<Instant>,
    /// When the last re-identify was sent.
    reidentified_at: Option<Instant>,
    stopping: bool,
}

enum State {
    /// Between sessions: the next attempt is scheduled.
    Waiting,
    Connecting {
        id: u64,
        handle: SpawnHandle,
    },
    Open(Box<Session>),
}

struct Session {
    conn: u64,
    /// The current identify's session id (0 until identified).
    id: u64,
    outgoing: mpsc::UnboundedSender<WsMessage>,
    outbound: Outbound,
    poll_timer: Option<SpawnHandle>,
    reader: SpawnHandle,
    writer: SpawnHandle,
    identified: bool,
    answered_ping: bool,
    last_heard: Instant,
    /// A close frame went out (ours or our echo of the hub's): waiting for the end.
    closing: bool,
    end_logged: bool,
    lost_announced: bool,
    fragments: Reassembly,
}

mod io;
mod rules;

impl HubActor {
    pub fn new(env: &Env) -> Self {
        let config = &env.config;
        HubActor {
            env: env.clone(),
            client: None,
            backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
            counter: env.kept.get::<Counter>(),
            pacer: env.kept.get::<KeptPacer>(),
            attempts: 0,
            state: State::Waiting,
            not_before: None,
            stale_since: None,
            reidentified_at: None,
            stopping: false,
        }
    }

    fn session(&mut self) -> Option<&mut Session> {
        match &mut self.state {
            State::Open(s) => Some(s),
            _ => None,
        }
    }

    fn conn_id(&self) -> Option<u64> {
        match &self.state {
            State::Open(s) => Some(s.conn),
            _ => None,
        }
    }

    /// The identified session's id.
    fn identified_id(&self) -> Option<u64> {
        match &self.state {
            State::Open(s) if s.identified && !s.closing => Some(s.id),
            _ => None,
        }
    }

    fn publish_state(&self, state: HubState, retry_in: Option<Duration>) {
        let _ = self.env.bus.send(HubStateChanged {
            state,
            attempt: self.attempts,
            retry_in,
        });
    }

    fn task_event(&self, session: u64, event: Event) {
        if let Err(msg) = self.env.bus.send(TaskEventFromHub { session, event }) {
            log_event!(
                self.env.log,
                Warn,
                "task_frame_unrouted",
                event = format!("{:?}", msg.event)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
        }
    }
}

impl Actor for HubActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match hubconn::build_client(&self.env.config) {
            Ok(client) => {
                self.client = Some(client);
                self.connect(ctx);
            }
            Err(e) => self
                .env
                .fail(ctx, format!("cannot build the hub client: {e}")),
        }
    }
}

/// However the actor ends (stopped, failed, or unwound by a panic), the session it held
/// ends with it: the others hear `SessionLost` for it, as for any other end of a session.
impl Drop for HubActor {
    fn drop(&mut self) {
        self.announce_lost();
    }
}

crate::answers_probe!(HubActor);

impl Child for HubActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<SendFrame>());
        bus.register(addr.clone().recipient::<DropSession>());
        bus.register(addr.clone().recipient::<AnnounceSession>());
        bus.register(addr.clone().recipient::<Reidentify>());
    }
}

impl Handler<Stop> for HubActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopping = true;
        match &self.state {
            State::Open(_) => self.close_session(CloseCode::Normal, "sidecar shutting down", ctx),
            State::Connecting { handle, .. } => {
                ctx.cancel_future(*handle);
                ctx.stop();
            }
            State::Waiting => ctx.stop(),
        }
    }
}

impl Handler<SendFrame> for HubActor {
    type Result = ();
    fn handle(&mut self, msg: SendFrame, ctx: &mut Context<Self>) {
        let kind = msg.frame.kind();
        let usable = match &self.state {
            State::Open(s) => s.identified && !s.closing && msg.session.is_none_or(|id| id == s.id),
            _ => false,
        };
        if !usable {
            log_event!(
                self.env.log,
                Debug,
                "frame_dropped",
                frame = kind,
                reason = "no identified session"
            );
            return;
        }
        if let Some(s) = self.session() {
            s.outbound.submit(msg.frame);
        }
        self.pump(ctx);
    }
}

impl Handler<AnnounceSession> for HubActor {
    type Result = ();
    fn handle(&mut self, _: AnnounceSession, _: &mut Context<Self>) {
        if let Some(session) = self.identified_id() {
            let _ = self.env.bus.send(SessionIdentified {
                session,
                after_unclean: false,
            });
        }
    }
}

impl Handler<Reidentify> for HubActor {
    type Result = ();
    fn handle(&mut self, msg: Reidentify, ctx: &mut Context<Self>) {
        let Some(conn) = self.conn_id() else { return };
        if self.identified_id() != Some(msg.session) {
            return;
        }
        // Too soon after the last one (the hub allows few identifies): once the gap has
        // passed, if the session is still the same.
        if let Some(wait) = self
            .reidentified_at
            .map(|t| REIDENTIFY_MIN_GAP.saturating_sub(t.elapsed()))
            .filter(|w| !w.is_zero())
        {
            ctx.run_later(wait, move |_, ctx| ctx.notify(msg));
            return;
        }
        self.reidentify(conn, msg.session, msg.reason, ctx);
    }
}

impl Handler<DropSession> for HubActor {
    type Result = ();
    fn handle(&mut self, msg: DropSession, ctx: &mut Context<Self>) {
        if self.identified_id() == Some(msg.session) {
            self.log_end("sidecar", None, msg.reason);
            self.mark_stale();
            self.drop_session(ctx);
        }
    }
}

impl StreamHandler<WsEvent> for HubActor {
    fn handle(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        if self.conn_id() != Some(event.conn) {
            return;
        }
        if let Some(s) = self.session() {
            s.last_heard = Instant::now();
        }
        match event.item {
            Some(Ok(frame)) => self.on_frame(frame, ctx),
            Some(Err(ProtocolError::Overflow)) => {
                self.frame_too_large(self.env.config.max_frame_bytes + 1, ctx)
            }
            Some(Err(e)) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "ws_error",
                    stage = "read",
                    conn = event.conn,
                    error = e.to_string()
                );
                self.log_end("sidecar", None, "protocol error");
                self.mark_stale();
                self.drop_session(ctx);
            }
            None => {
                self.log_end("hub", None, "connection ended");
                if let State::Open(s) = &self.state {
                    ctx.cancel_future(s.writer);
                }
                self.after_session(ctx);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Each connection's stream ends with its own `None` event; the actor lives on.
    }
}

/// What an answer to one of our frames means for the task actors.
fn report_event(sent: &Sent, incoming: &Incoming) -> Option<Event> {
    let (task_id, kind, generation) = match &sent.frame {
        Outgoing::TaskComplete {
            task_id,
            generation,
            ..
        } => (task_id.clone(), ReportKind::Complete, *generation),
        Outgoing::TaskFailed {
            task_id,
            generation,
            ..
        } => (task_id.clone(), ReportKind::Failed, *generation),
        Outgoing::StateReport {
            task_id,
            generation,
            ..
        } => {
            // An error instead of an answer (a hub without `state_report`, a refused frame):
            // no verdict, so the task is kept; the action says why.
            let action = match incoming {
                Incoming::StateReportAck { action, .. } => action.clone(),
                Incoming::Error { error, .. } => format!("unanswered: {error}"),
                _ => return None,
            };
            return Some(Event::StateReportAnswered {
                task_id: task_id.clone(),
                generation: *generation,
                action,
            });
        }
        _ => return None,
    };
    let answer = match incoming {
        Incoming::TaskAck { status, .. } => Answer::Acked {
            status: status.clone(),
        },
        Incoming::Error { error, errors, .. } => Answer::Refused {
            error: error.clone(),
            details: errors.clone(),
        },
        _ => return None,
    };
    Some(Event::ReportAnswered {
        task_id,
        kind,
        generation,
        answer,
    })
}

/// A `task_assign` with the string `task_id` it carries, as the task machine takes it.
fn assign_event(task_id: &str, a: &crate::protocol::TaskAssign) -> Event {
    Event::Assign(Assign {
        task_id: task_id.to_string(),
        generation: a.generation,
        raw: a.raw.clone(),
        target_type: a.target_type.clone(),
        model: a.model.clone(),
    })
}
