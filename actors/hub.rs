//! HubActor: the one WebSocket session with the hub.
//!
//! It connects (awc, `ws://` or `wss://`), sends `identify`, and routes what the hub sends:
//! pongs to the heartbeat, `task_*` frames to the task actors ([`TaskFrameReceived`]),
//! `restart_sidecar` to the Supervisor. Other actors send frames through it
//! ([`SendFrame`]) and can have the session dropped ([`DropSession`]). It answers WebSocket
//! pings, echoes the hub's close, reassembles fragmented messages, and holds every incoming
//! message to `max_frame_bytes`. A bad frame is logged and skipped; only a frame over the
//! limit or a broken connection ends the session.
//!
//! Losing the session is normal operation, not a failure: after any loss the actor
//! schedules the next attempt itself, at an exponential backoff with equal jitter that
//! resets once a session has been identified and has answered a heartbeat, and never before
//! a cooldown the hub asked for (1008 "retry in N s"). One attempt (TCP, TLS, upgrade and the
//! identify reply) has `connect_timeout`. The connect runs as a spawned future, never
//! `wait`ed, so a [`Stop`] is handled at once even during a hanging handshake. On [`Stop`]
//! it sends a close frame with code 1000 and waits briefly for the hub to end the
//! connection, then stops. It is restarted by the Supervisor only if it panics or cannot
//! build its TLS client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::ws::{
    CloseCode, CloseReason, Codec, Frame, Item, Message as WsMessage, ProtocolError,
};
use awc::BoxedSocket;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use tokio::sync::mpsc;

use super::supervisor::RestartRequested;
use super::{Child, Env, Stop};
use crate::backoff::Backoff;
use crate::bus::Bus;
use crate::config::Config;
use crate::log_event;
use crate::protocol::{Incoming, Outgoing, TaskFrame, TaskFrameKind, TaskIdField};

/// Send a frame to the hub. With `session: Some(id)` only on that session (a ping for a
/// session that has since been replaced is dropped). Frames other than `identify` are sent
/// only once the session is identified; without a session they are dropped (the task
/// actors keep what must survive in their outbox and resend after each identify).
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

/// Publish [`SessionIdentified`] again if a session is identified now (for an actor that
/// started after the identify).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AnnounceSession;

/// Published when the hub answered `identified`: the session is usable.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SessionIdentified {
    pub session: u64,
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
    /// The connect attempt (also the session id) this is about.
    pub attempt: u64,
    /// With `Waiting`: when the next attempt comes.
    pub retry_in: Option<Duration>,
}

/// Published for every `pong` on an identified session.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PongReceived {
    pub session: u64,
    pub hub_timestamp: Option<i64>,
}

/// Published for every `task_*` frame from the hub.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskFrameReceived {
    pub session: u64,
    pub frame: TaskFrame,
}

/// One item of a session's incoming stream; `None` when the connection has ended.
struct WsEvent {
    session: u64,
    item: Option<Result<Frame, ProtocolError>>,
}

type WsSink = SplitSink<Framed<BoxedSocket, Codec>, WsMessage>;

/// Attempts numbered across the whole process: a restarted HubActor never reuses a session
/// id that other actors still remember.
static LAST_ATTEMPT: AtomicU64 = AtomicU64::new(0);

pub struct HubActor {
    env: Env,
    client: Option<awc::Client>,
    backoff: Backoff,
    /// The latest connect attempt's number, which is also its session id.
    attempts: u64,
    state: State,
    /// No attempt before this (the hub's cooldown or rate limit).
    not_before: Option<Instant>,
    stopping: bool,
}

enum State {
    /// Between sessions: the next attempt is scheduled.
    Waiting,
    Connecting {
        id: u64,
        handle: SpawnHandle,
    },
    Open(Session),
}

struct Session {
    id: u64,
    outgoing: mpsc::UnboundedSender<WsMessage>,
    reader: SpawnHandle,
    writer: SpawnHandle,
    identified: bool,
    answered_ping: bool,
    /// A close frame went out (ours or our echo of the hub's): waiting for the end.
    closing: bool,
    /// The end of this session has been logged already.
    end_logged: bool,
    /// [`SessionLost`] has been published (as soon as the session stopped being usable).
    lost_announced: bool,
    partial: Option<Partial>,
}

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    data: BytesMut,
}

impl HubActor {
    pub fn new(env: &Env) -> Self {
        let config = &env.config;
        HubActor {
            env: env.clone(),
            client: None,
            backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
            attempts: LAST_ATTEMPT.load(Ordering::Relaxed),
            state: State::Waiting,
            not_before: None,
            stopping: false,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || !matches!(self.state, State::Waiting) {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let config = self.env.config.clone();
        self.attempts = LAST_ATTEMPT.fetch_add(1, Ordering::Relaxed) + 1;
        let id = self.attempts;
        log_event!(
            self.env.log,
            Info,
            "ws_connecting",
            hub_url = config.hub_url.as_str(),
            attempt = id
        );
        self.publish_state(HubState::Connecting, None);
        let request = client
            .ws(config.hub_url.as_str())
            .max_frame_size(config.max_frame_bytes);
        let handle = ctx.spawn(
            actix::fut::wrap_future::<_, Self>(request.connect())
                .map(move |result, act, ctx| act.on_connect(id, result, ctx)),
        );
        self.state = State::Connecting { id, handle };
        ctx.run_later(config.connect_timeout, move |act, ctx| {
            act.on_connect_deadline(id, ctx)
        });
    }

    fn on_connect(
        &mut self,
        id: u64,
        result: Result<
            (awc::ClientResponse, Framed<BoxedSocket, Codec>),
            awc::error::WsClientError,
        >,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.state, State::Connecting { id: current, .. } if current == id) {
            return;
        }
        let framed = match result {
            Ok((response, framed)) => {
                log_event!(
                    self.env.log,
                    Info,
                    "ws_open",
                    session = id,
                    status = response.status().as_u16()
                );
                framed
            }
            Err(e) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "ws_error",
                    stage = "connect",
                    attempt = id,
                    error = e.to_string()
                );
                self.state = State::Waiting;
                self.schedule_reconnect(ctx);
                return;
            }
        };
        let (sink, stream) = framed.split();
        let (outgoing, queue) = mpsc::unbounded_channel();
        let writer = ctx.spawn(
            actix::fut::wrap_future::<_, Self>(write_all(sink, queue))
                .map(move |result, act, ctx| act.on_writer_end(id, result, ctx)),
        );
        let ended = futures_util::stream::once(async move {
            WsEvent {
                session: id,
                item: None,
            }
        });
        let reader = ctx.add_stream(
            stream
                .map(move |item| WsEvent {
                    session: id,
                    item: Some(item),
                })
                .chain(ended),
        );
        self.state = State::Open(Session {
            id,
            outgoing,
            reader,
            writer,
            identified: false,
            answered_ping: false,
            closing: false,
            end_logged: false,
            lost_announced: false,
            partial: None,
        });
        self.send_identify();
    }

    fn send_identify(&mut self) {
        let config = self.env.config.clone();
        let frame = Outgoing::Identify {
            agent_id: config.agent_id.clone(),
            token: config.token.clone(),
            name: config.name.clone(),
            status: "idle",
            capabilities: config.capabilities.clone(),
            client_type: "sidecar",
        };
        if self.transmit(&frame) {
            let session = self.session_id();
            log_event!(
                self.env.log,
                Info,
                "identify_sent",
                session = session,
                name = config.name,
                capabilities = config.capabilities
            );
        }
    }

    fn on_connect_deadline(&mut self, id: u64, ctx: &mut Context<Self>) {
        let stage = match &self.state {
            State::Connecting {
                id: current,
                handle,
            } if *current == id => {
                ctx.cancel_future(*handle);
                self.state = State::Waiting;
                "connect"
            }
            State::Open(s) if s.id == id && !s.identified && !s.closing => "identify",
            _ => return,
        };
        let timeout_ms = self.env.config.connect_timeout.as_millis() as u64;
        log_event!(
            self.env.log,
            Warn,
            "ws_error",
            stage = stage,
            attempt = id,
            error = format!(
                "no {} within connect_timeout_ms ({timeout_ms} ms)",
                if stage == "connect" {
                    "connection"
                } else {
                    "identify reply"
                }
            ),
        );
        match self.state {
            State::Open(_) => self.drop_session(ctx),
            _ => self.schedule_reconnect(ctx),
        }
    }

    fn on_writer_end(
        &mut self,
        id: u64,
        result: Result<(), ProtocolError>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = result {
            if self.session_id() == Some(id) {
                log_event!(
                    self.env.log,
                    Warn,
                    "ws_error",
                    stage = "write",
                    session = id,
                    error = e.to_string()
                );
                self.log_end("sidecar", None, "write failed");
                self.drop_session(ctx);
            }
        }
    }

    fn session_id(&self) -> Option<u64> {
        match &self.state {
            State::Open(s) => Some(s.id),
            _ => None,
        }
    }

    fn session(&mut self) -> Option<&mut Session> {
        match &mut self.state {
            State::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Queues a frame on the open session; false if there is none.
    fn transmit(&mut self, frame: &Outgoing) -> bool {
        let text = match frame.encode() {
            Ok(text) => text,
            Err(e) => {
                log_event!(
                    self.env.log,
                    Error,
                    "frame_not_sent",
                    frame = frame.kind(),
                    error = e.to_string()
                );
                return false;
            }
        };
        self.transmit_raw(WsMessage::Text(text.into()))
    }

    fn transmit_raw(&mut self, message: WsMessage) -> bool {
        match self.session() {
            Some(s) => s.outgoing.send(message).is_ok(),
            None => false,
        }
    }

    /// Logs the end of the session once: who ended it and why.
    fn log_end(&mut self, initiator: &'static str, code: Option<u16>, reason: &str) {
        let Some(s) = self.session() else { return };
        if std::mem::replace(&mut s.end_logged, true) {
            return;
        }
        let session = s.id;
        log_event!(
            self.env.log,
            Info,
            "ws_close",
            session = session,
            initiator = initiator,
            code = code,
            reason = reason
        );
    }

    /// Tells the others the session is no longer usable (once per session).
    fn announce_lost(&mut self) {
        let Some(s) = self.session() else { return };
        if !std::mem::replace(&mut s.lost_announced, true) {
            let session = s.id;
            let _ = self.env.bus.send(SessionLost { session });
        }
    }

    /// Sends a close frame and gives the hub a moment to end the connection.
    fn close_session(&mut self, code: CloseCode, reason: &'static str, ctx: &mut Context<Self>) {
        let close_wait = self.close_wait();
        let Some(s) = self.session() else { return };
        if s.closing {
            return;
        }
        s.closing = true;
        let id = s.id;
        let _ = s.outgoing.send(WsMessage::Close(Some(CloseReason {
            code,
            description: Some(reason.to_string()),
        })));
        self.log_end("sidecar", Some(u16::from(code)), reason);
        self.announce_lost();
        ctx.run_later(close_wait, move |act, ctx| {
            if act.session_id() == Some(id) {
                log_event!(
                    act.env.log,
                    Debug,
                    "close_timeout",
                    session = id,
                    waited_ms = close_wait.as_millis() as u64
                );
                act.drop_session(ctx);
            }
        });
    }

    fn close_wait(&self) -> Duration {
        (self.env.config.shutdown_timeout / 4).min(Duration::from_secs(1))
    }

    /// Ends the session at once: both halves of the socket are dropped.
    fn drop_session(&mut self, ctx: &mut Context<Self>) {
        if let State::Open(s) = &self.state {
            ctx.cancel_future(s.reader);
            ctx.cancel_future(s.writer);
        }
        self.after_session(ctx);
    }

    /// The session is over, however it ended: tell the others, then reconnect (or stop).
    fn after_session(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::Open(_)) {
            return;
        }
        self.announce_lost();
        self.state = State::Waiting;
        if self.stopping {
            ctx.stop();
        } else {
            self.schedule_reconnect(ctx);
        }
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let step_ms = self.backoff.current_step().as_millis() as u64;
        let mut delay = self.backoff.next_delay();
        let cooldown = self
            .not_before
            .map(|t| t.saturating_duration_since(Instant::now()))
            .filter(|wait| *wait > delay);
        if let Some(wait) = cooldown {
            delay = wait;
        }
        log_event!(
            self.env.log,
            Info,
            "reconnect_scheduled",
            delay_ms = delay.as_millis() as u64,
            step_ms = step_ms,
            attempt = self.attempts + 1,
            cooldown = cooldown.is_some(),
        );
        self.publish_state(HubState::Waiting, Some(delay));
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn publish_state(&self, state: HubState, retry_in: Option<Duration>) {
        let _ = self.env.bus.send(HubStateChanged {
            state,
            attempt: self.attempts,
            retry_in,
        });
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Text(data) => self.on_message(true, data, ctx),
            Frame::Binary(data) => self.on_message(false, data, ctx),
            Frame::Continuation(item) => self.on_fragment(item, ctx),
            Frame::Ping(payload) => {
                self.transmit_raw(WsMessage::Pong(payload));
            }
            Frame::Pong(_) => {}
            Frame::Close(reason) => self.on_close_frame(reason, ctx),
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut Context<Self>) {
        let limit = self.env.config.max_frame_bytes;
        let Some(s) = self.session() else { return };
        let (chunk, last) = match item {
            Item::FirstText(data) | Item::FirstBinary(data) if s.partial.is_some() => {
                // A new message before the last one ended: the protocol forbids it.
                s.partial = None;
                log_event!(
                    self.env.log,
                    Warn,
                    "frame_rejected",
                    reason = "new fragmented message before the previous one ended",
                    bytes = data.len()
                );
                return;
            }
            Item::FirstText(data) => {
                s.partial = Some(Partial {
                    text: true,
                    data: BytesMut::new(),
                });
                (data, false)
            }
            Item::FirstBinary(data) => {
                s.partial = Some(Partial {
                    text: false,
                    data: BytesMut::new(),
                });
                (data, false)
            }
            Item::Continue(data) => (data, false),
            Item::Last(data) => (data, true),
        };
        let Some(partial) = &mut s.partial else {
            log_event!(
                self.env.log,
                Warn,
                "frame_rejected",
                reason = "continuation frame without a first frame",
                bytes = chunk.len()
            );
            return;
        };
        if partial.data.len() + chunk.len() > limit {
            let total = partial.data.len() + chunk.len();
            s.partial = None;
            self.frame_too_large(total, ctx);
            return;
        }
        partial.data.extend_from_slice(&chunk);
        if last {
            if let Some(done) = s.partial.take() {
                self.on_message(done.text, done.data.freeze(), ctx);
            }
        }
    }

    fn frame_too_large(&mut self, bytes: usize, ctx: &mut Context<Self>) {
        let limit = self.env.config.max_frame_bytes;
        log_event!(
            self.env.log,
            Error,
            "frame_too_large",
            bytes = bytes,
            max_frame_bytes = limit,
            action = "session dropped"
        );
        self.log_end("sidecar", None, "frame over max_frame_bytes");
        self.drop_session(ctx);
    }

    fn on_close_frame(&mut self, reason: Option<CloseReason>, ctx: &mut Context<Self>) {
        let code = reason.as_ref().map(|r| u16::from(r.code));
        let text = reason
            .as_ref()
            .and_then(|r| r.description.clone())
            .unwrap_or_default();
        if let Some(wait) = cooldown_from(code, &text) {
            self.not_before = Some(Instant::now() + wait);
        }
        let Some(s) = self.session() else { return };
        if s.closing {
            // The hub's answer to our close: both close frames have crossed, so the
            // handshake is complete and the socket can go now.
            self.drop_session(ctx);
            return;
        }
        self.log_end("hub", code, &text);
        self.announce_lost();
        if let Some(s) = self.session() {
            s.closing = true;
            // awc does not echo a close: do it, or the hub waits for its close timeout.
            let _ = s.outgoing.send(WsMessage::Close(reason));
        }
        let id = self.session_id();
        let close_wait = self.close_wait();
        ctx.run_later(close_wait, move |act, ctx| {
            if act.session_id() == id {
                act.drop_session(ctx);
            }
        });
    }

    fn on_message(&mut self, text: bool, data: Bytes, ctx: &mut Context<Self>) {
        if !text {
            log_event!(
                self.env.log,
                Warn,
                "frame_rejected",
                reason = "binary message (the hub protocol is JSON text)",
                bytes = data.len()
            );
            return;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            log_event!(
                self.env.log,
                Warn,
                "frame_rejected",
                reason = "text frame is not valid UTF-8",
                bytes = data.len()
            );
            return;
        };
        match Incoming::parse(text) {
            Ok(incoming) => self.on_incoming(incoming, ctx),
            Err(e) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "frame_rejected",
                    reason = e.to_string(),
                    bytes = text.len(),
                    preview = preview(text)
                );
            }
        }
    }

    fn on_incoming(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let Some(s) = self.session() else { return };
        let session = s.id;
        let identified = s.identified;
        match incoming {
            Incoming::Identified => {
                if identified {
                    return;
                }
                s.identified = true;
                log_event!(
                    self.env.log,
                    Info,
                    "identified",
                    session = session,
                    hub_url = self.env.config.hub_url.as_str()
                );
                let _ = self.env.bus.send(SessionIdentified { session });
                self.publish_state(HubState::Identified, None);
            }
            Incoming::Pong { timestamp } => {
                if !identified {
                    return;
                }
                if !std::mem::replace(&mut s.answered_ping, true) {
                    // Identified and answering: this session has proved itself.
                    self.backoff.reset();
                }
                let _ = self.env.bus.send(PongReceived {
                    session,
                    hub_timestamp: timestamp,
                });
            }
            Incoming::Error { error } => self.on_hub_error(error, ctx),
            Incoming::RateLimited { retry_after_ms } => {
                if let Some(ms) = retry_after_ms {
                    self.not_before =
                        Some(Instant::now() + Duration::from_millis(ms.min(3_600_000)));
                }
                log_event!(
                    self.env.log,
                    Warn,
                    "hub_error",
                    error = "rate_limited",
                    retry_after_ms = retry_after_ms
                );
            }
            Incoming::RestartSidecar { reason } => {
                log_event!(self.env.log, Warn, "restart_requested", reason = reason);
                let _ = self.env.bus.send(RestartRequested { reason });
            }
            Incoming::Task(frame) => self.route_task(session, frame),
            Incoming::Other { kind } => {
                log_event!(self.env.log, Debug, "frame_ignored", frame = kind);
            }
        }
    }

    fn on_hub_error(&mut self, error: String, ctx: &mut Context<Self>) {
        match error.as_str() {
            "invalid_token" | "token_agent_mismatch" => {
                let config = &self.env.config;
                log_event!(
                    self.env.log,
                    Error,
                    "hub_error",
                    error = error,
                    agent_id_sent = config.agent_id,
                    action = "check token and agent_id in the config; retrying at the backoff",
                );
                // The hub keeps such a socket open: close it ourselves, then back off.
                self.close_session(CloseCode::Normal, "identify refused", ctx);
            }
            _ => {
                log_event!(self.env.log, Warn, "hub_error", error = error);
            }
        }
    }

    fn route_task(&mut self, session: u64, frame: TaskFrame) {
        if frame.kind == TaskFrameKind::Assign && frame.task_id.is_none() {
            log_event!(
                self.env.log,
                Warn,
                "frame_rejected",
                reason = "task_assign without task_id: ignored",
                bytes = frame.raw.len()
            );
            return;
        }
        let task_id = match &frame.task_id {
            Some(TaskIdField::Str(id)) => Some(id.clone()),
            Some(TaskIdField::NotAString(raw)) => Some(raw.clone()),
            None => None,
        };
        let kind = frame.kind;
        if self
            .env
            .bus
            .send(TaskFrameReceived { session, frame })
            .is_err()
        {
            log_event!(
                self.env.log,
                Warn,
                "task_frame_unrouted",
                frame = kind.wire_type(),
                task_id = task_id
            );
        }
    }
}

/// Writes the session's queued messages in order until the queue closes or a write fails.
async fn write_all(
    mut sink: WsSink,
    mut queue: mpsc::UnboundedReceiver<WsMessage>,
) -> Result<(), ProtocolError> {
    while let Some(message) = queue.recv().await {
        sink.send(message).await?;
    }
    Ok(())
}

/// The wait a 1008 close asks for: "cooldown active: retry in 37s" → 37 s.
fn cooldown_from(code: Option<u16>, reason: &str) -> Option<Duration> {
    if code != Some(1008) {
        return None;
    }
    let rest = &reason[reason.find("retry in")? + "retry in".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let secs: u64 = digits.parse().ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

/// The start of a rejected frame, for the log.
fn preview(text: &str) -> String {
    text.chars().take(120).collect()
}

impl Actor for HubActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match build_client(&self.env.config) {
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

fn build_client(config: &Config) -> Result<awc::Client, String> {
    let tls = crate::tls::client_config(config.ca_file.as_deref())?;
    // No `max_http_version`, on the connector or the builder: it replaces the TLS config (and
    // `ca_file` with it) by awc's default. Ours already offers only HTTP/1.1 in ALPN.
    let connector = awc::Connector::new()
        .connector(NoDelay::default())
        .rustls_0_23(tls)
        .timeout(config.connect_timeout)
        .handshake_timeout(config.connect_timeout);
    Ok(awc::Client::builder()
        .connector(connector)
        .timeout(config.connect_timeout)
        .finish())
}

crate::answers_probe!(HubActor);

/// The TCP connector with `TCP_NODELAY` set on every connection: a frame the hub does not
/// answer (`task_rejected`, `task_recovering`) must not hold the next one back for the
/// peer's delayed ACK (about 40 ms on Linux). awc's default connector leaves Nagle on.
#[derive(Clone, Default)]
struct NoDelay(actix_tls::connect::ConnectorService);

impl actix_service::Service<actix_tls::connect::ConnectInfo<awc::http::Uri>> for NoDelay {
    type Response = actix_tls::connect::Connection<awc::http::Uri, actix_rt::net::TcpStream>;
    type Error = actix_tls::connect::ConnectError;
    type Future =
        futures_util::future::LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        actix_service::Service::<actix_tls::connect::ConnectInfo<awc::http::Uri>>::poll_ready(
            &self.0, cx,
        )
    }

    fn call(&self, request: actix_tls::connect::ConnectInfo<awc::http::Uri>) -> Self::Future {
        let connecting = self.0.call(request);
        Box::pin(async move {
            let connection = connecting.await?;
            // Best effort: a socket that refuses the option still works, only slower.
            let _ = connection.io_ref().set_nodelay(true);
            Ok(connection)
        })
    }
}

impl Child for HubActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<SendFrame>());
        bus.register(addr.clone().recipient::<DropSession>());
        bus.register(addr.clone().recipient::<AnnounceSession>());
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
    fn handle(&mut self, msg: SendFrame, _: &mut Context<Self>) {
        let kind = msg.frame.kind();
        let usable = match &self.state {
            State::Open(s) => s.identified && !s.closing && msg.session.is_none_or(|id| id == s.id),
            _ => false,
        };
        if usable && self.transmit(&msg.frame) {
            log_event!(self.env.log, Debug, "frame_sent", frame = kind);
        } else {
            log_event!(
                self.env.log,
                Debug,
                "frame_dropped",
                frame = kind,
                reason = "no identified session"
            );
        }
    }
}

impl Handler<AnnounceSession> for HubActor {
    type Result = ();
    fn handle(&mut self, _: AnnounceSession, _: &mut Context<Self>) {
        if let State::Open(s) = &self.state {
            if s.identified && !s.closing {
                let _ = self.env.bus.send(SessionIdentified { session: s.id });
            }
        }
    }
}

impl Handler<DropSession> for HubActor {
    type Result = ();
    fn handle(&mut self, msg: DropSession, ctx: &mut Context<Self>) {
        if self.session_id() == Some(msg.session) {
            self.log_end("sidecar", None, msg.reason);
            self.drop_session(ctx);
        }
    }
}

impl StreamHandler<WsEvent> for HubActor {
    fn handle(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        if self.session_id() != Some(event.session) {
            return;
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
                    session = event.session,
                    error = e.to_string()
                );
                self.log_end("sidecar", None, "protocol error");
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
        // Each session's stream ends with its own `None` event; the actor lives on.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_is_read_from_1008_close_reason_only() {
        assert_eq!(
            cooldown_from(Some(1008), "cooldown active: retry in 37s"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            cooldown_from(Some(1008), "retry in 5 s"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(cooldown_from(Some(1000), "retry in 5s"), None);
        assert_eq!(cooldown_from(Some(1008), "policy violation"), None);
    }
}
