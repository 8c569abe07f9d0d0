//! The HubActor's connection life: connect, identify, write, close, reconnect.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use futures_util::stream::StreamExt;
use tokio::sync::mpsc;

use super::{HubActor, HubRefused, HubState, Session, SessionLost, State, WsEvent};
use crate::hubconn::{self, FragmentError};
use crate::log_event;
use crate::outbound::{Outbound, Pacing};
use crate::protocol::Outgoing;

impl HubActor {
    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || !matches!(self.state, State::Waiting) {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let config = self.env.config.clone();
        self.attempts = self.counter.next_conn();
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
                    conn = id,
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
            actix::fut::wrap_future::<_, Self>(hubconn::write_all(sink, queue))
                .map(move |result, act, ctx| act.on_writer_end(id, result, ctx)),
        );
        let ended = futures_util::stream::once(async move {
            WsEvent {
                conn: id,
                item: None,
            }
        });
        let reader = ctx.add_stream(
            stream
                .map(move |item| WsEvent {
                    conn: id,
                    item: Some(item),
                })
                .chain(ended),
        );
        let now = Instant::now();
        self.state = State::Open(Box::new(Session {
            conn: id,
            id: 0,
            outgoing,
            outbound: match self.pacer.0.borrow_mut().take() {
                Some(pacer) => Outbound::resume(pacer),
                None => Outbound::new(Pacing::below(self.env.config.hub_rate_limits), now),
            },
            poll_timer: None,
            reader,
            writer,
            identified: false,
            answered_ping: false,
            last_heard: now,
            closing: false,
            end_logged: false,
            lost_announced: false,
            fragments: Default::default(),
        }));
        self.send_identify(ctx);
    }

    pub(super) fn send_identify(&mut self, ctx: &mut Context<Self>) {
        let config = self.env.config.clone();
        let frame = Outgoing::Identify {
            agent_id: config.agent_id.clone(),
            token: config.token.clone(),
            name: config.name.clone(),
            status: "idle",
            capabilities: config.capabilities.clone(),
            client_type: "sidecar",
            ollama_url: config.ollama_url.clone(),
        };
        let Some(s) = self.session() else { return };
        let conn = s.conn;
        s.outbound.submit(frame);
        self.pump(ctx);
        log_event!(
            self.env.log,
            Info,
            "identify_sent",
            conn = conn,
            name = config.name,
            capabilities = config.capabilities
        );
    }

    pub(super) fn on_connect_deadline(&mut self, id: u64, ctx: &mut Context<Self>) {
        let stage = match &self.state {
            State::Connecting {
                id: current,
                handle,
            } if *current == id => {
                ctx.cancel_future(*handle);
                self.state = State::Waiting;
                "connect"
            }
            State::Open(s) if s.conn == id && !s.identified && !s.closing => "identify",
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
        result: Result<(), actix_http::ws::ProtocolError>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = result {
            if self.conn_id() == Some(id) {
                log_event!(
                    self.env.log,
                    Warn,
                    "ws_error",
                    stage = "write",
                    conn = id,
                    error = e.to_string()
                );
                self.log_end("sidecar", None, "write failed");
                self.mark_stale();
                self.drop_session(ctx);
            }
        }
    }

    /// Sends what the outbound lets go now, and polls again when something held can go.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(s) = self.session() else { return };
        let frames = s.outbound.poll(now);
        let next = s.outbound.next_poll(now);
        let mut sent = Vec::new();
        let mut unencodable = Vec::new();
        for frame in frames {
            match frame.encode() {
                Ok(text) => {
                    if s.outgoing.send(WsMessage::Text(text.into())).is_ok() {
                        sent.push(frame.kind());
                    }
                }
                Err(e) => unencodable.push((frame.kind(), e.to_string())),
            }
        }
        if let Some(timer) = s.poll_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(at) = next {
            let wait = at
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let handle = ctx.run_later(wait, |act, ctx| act.pump(ctx));
            if let Some(s) = self.session() {
                s.poll_timer = Some(handle);
            }
        }
        for kind in sent {
            log_event!(self.env.log, Debug, "frame_sent", frame = kind);
        }
        for (kind, error) in unencodable {
            log_event!(
                self.env.log,
                Error,
                "frame_not_sent",
                frame = kind,
                error = error
            );
        }
    }

    pub(super) fn transmit_raw(&mut self, message: WsMessage) -> bool {
        match self.session() {
            Some(s) => s.outgoing.send(message).is_ok(),
            None => false,
        }
    }

    /// Logs the end of the session once: who ended it and why.
    pub(super) fn log_end(&mut self, initiator: &'static str, code: Option<u16>, reason: &str) {
        let Some(s) = self.session() else { return };
        if std::mem::replace(&mut s.end_logged, true) {
            return;
        }
        let conn = s.conn;
        // The session the connection carried, if it was identified.
        let session = (s.id != 0).then_some(s.id);
        log_event!(
            self.env.log,
            Info,
            "ws_close",
            conn = conn,
            session = session,
            initiator = initiator,
            code = code,
            reason = reason
        );
    }

    /// Tells the others the session is no longer usable (once per session id).
    pub(super) fn announce_lost(&mut self) {
        let Some(s) = self.session() else { return };
        if s.identified && !std::mem::replace(&mut s.lost_announced, true) {
            let session = s.id;
            let _ = self.env.bus.send(SessionLost { session });
        }
    }

    /// The session ended without a close: the hub may keep its side for a while.
    pub(super) fn mark_stale(&mut self) {
        if let Some(s) = self.session() {
            if s.identified {
                let heard = s.last_heard;
                self.stale_since = Some(heard);
            }
        }
    }

    /// Sends a close frame and gives the hub a moment to end the connection.
    pub(super) fn close_session(
        &mut self,
        code: CloseCode,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        let close_wait = self.close_wait();
        let Some(s) = self.session() else { return };
        if s.closing {
            return;
        }
        s.closing = true;
        let id = s.conn;
        let _ = s.outgoing.send(WsMessage::Close(Some(CloseReason {
            code,
            description: Some(reason.to_string()),
        })));
        self.log_end("sidecar", Some(u16::from(code)), reason);
        self.announce_lost();
        ctx.run_later(close_wait, move |act, ctx| {
            if act.conn_id() == Some(id) {
                log_event!(
                    act.env.log,
                    Debug,
                    "close_timeout",
                    conn = id,
                    waited_ms = close_wait.as_millis() as u64
                );
                act.drop_session(ctx);
            }
        });
    }

    pub(super) fn close_wait(&self) -> Duration {
        (self.env.config.shutdown_timeout / 4).min(Duration::from_secs(1))
    }

    /// Ends the session at once: both halves of the socket are dropped.
    pub(super) fn drop_session(&mut self, ctx: &mut Context<Self>) {
        if let State::Open(s) = &self.state {
            ctx.cancel_future(s.reader);
            ctx.cancel_future(s.writer);
        }
        self.after_session(ctx);
    }

    /// The session is over, however it ended: tell the others, then reconnect (or stop).
    pub(super) fn after_session(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::Open(_)) {
            return;
        }
        self.announce_lost();
        if let State::Open(s) = &mut self.state {
            if let Some(timer) = s.poll_timer.take() {
                ctx.cancel_future(timer);
            }
            *self.pacer.0.borrow_mut() = Some(s.outbound.pacer());
        }
        self.state = State::Waiting;
        if self.stopping {
            ctx.stop();
        } else {
            self.schedule_reconnect(ctx);
        }
    }

    pub(super) fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Text(data) => self.on_message(true, data, ctx),
            Frame::Binary(data) => self.on_message(false, data, ctx),
            Frame::Continuation(item) => {
                let limit = self.env.config.max_frame_bytes;
                let Some(s) = self.session() else { return };
                match s.fragments.push(item, limit) {
                    Ok(Some((text, data))) => self.on_message(text, data, ctx),
                    Ok(None) => {}
                    Err(FragmentError::TooLarge { bytes }) => self.frame_too_large(bytes, ctx),
                    Err(FragmentError::Interleaved { bytes }) => {
                        log_event!(
                            self.env.log,
                            Warn,
                            "frame_rejected",
                            reason = "new fragmented message before the previous one ended",
                            bytes = bytes
                        );
                    }
                    Err(FragmentError::Orphan { bytes }) => {
                        log_event!(
                            self.env.log,
                            Warn,
                            "frame_rejected",
                            reason = "continuation frame without a first frame",
                            bytes = bytes
                        );
                    }
                }
            }
            Frame::Ping(payload) => {
                self.transmit_raw(WsMessage::Pong(payload));
            }
            Frame::Pong(_) => {}
            Frame::Close(reason) => self.on_close_frame(reason, ctx),
        }
    }

    pub(super) fn frame_too_large(&mut self, bytes: usize, ctx: &mut Context<Self>) {
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
        let cooldown = hubconn::cooldown_from(code, &text);
        if let Some(wait) = cooldown {
            self.not_before = Some(Instant::now() + wait);
        }
        if code == Some(1008) {
            let _ = self.env.bus.send(HubRefused {
                error: "hub_lockout",
                detail: Some(text.clone()),
                cooldown,
            });
            log_event!(
                self.env.log,
                Error,
                "hub_lockout",
                code = code,
                reason = text,
                note = "the hub closed the session for policy violations (too many refused frames) or a cooldown; no reconnect before it ends"
            );
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
        let id = self.conn_id();
        let close_wait = self.close_wait();
        ctx.run_later(close_wait, move |act, ctx| {
            if act.conn_id() == id {
                act.drop_session(ctx);
            }
        });
    }
}
