//! One WebSocket connection of the dev hub: the `/ws` upgrade, then a task that plays the
//! hub's socket process. It handles, strictly one at a time and in order, the client's frames
//! (answered by the model, [`Core::on_text`](super::core::Core)) and the messages the hub
//! sends it (pushes, broadcasts, test commands), and ends as the hub's does: on the client's
//! Close or disconnect, on a close the model decides (violations, cooldown, a crash), on the
//! idle timeout (nothing received for `idle_timeout`), or on the hub's shutdown. A *cut*
//! connection neither reads nor writes any more but lingers, handling messages into the void,
//! until its idle timeout.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Item, Session};
use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::{sleep_until, Instant};

use super::core::{later, Command, Delivery, Now};
use super::events::HubEventKind;
use super::frames::{Out, Reply};
use super::state::Hub;
use super::RawFrame;

/// Largest frame, and largest reassembled fragmented message, the hub accepts.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long the hub waits for the client to echo a Close frame it sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /ws`.
pub(crate) async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    hub: web::Data<Hub>,
) -> actix_web::Result<HttpResponse> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE);
    let (commands_tx, commands) = unbounded_channel();
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_string(), |addr| addr.to_string());
    let hub = hub.into_inner();
    let id = hub.open(commands_tx, &peer);
    let idle = hub.with_core(|core| core.timings.idle_timeout);
    let conn = Connection {
        reg: Registration { hub, id },
        session,
        cut: false,
        held: None,
        idle,
    };
    actix_web::rt::spawn(serve(conn, stream, commands));
    Ok(response)
}

/// Runs the session's clean-up when its task ends, however it ends (also by a panic).
struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.id;
        self.hub
            .with_core(|core| core.session_ended(id, true, Now::get()));
    }
}

/// What the connection does after handling one message or command.
enum Flow {
    Continue,
    /// A Close frame went out: wait for the client's echo, at most [`CLOSE_TIMEOUT`].
    Closing,
    End,
}

struct Connection {
    reg: Registration,
    session: Session,
    cut: bool,
    /// Messages from inside the hub held back by a test (see `DevHub::hold_deliveries`).
    held: Option<std::collections::VecDeque<Delivery>>,
    idle: Duration,
}

async fn serve(
    mut conn: Connection,
    mut stream: AggregatedMessageStream,
    mut commands: UnboundedReceiver<Command>,
) {
    let idle_after = |idle| Instant::from_std(later(std::time::Instant::now(), idle));
    let mut idle_deadline = idle_after(conn.idle);
    loop {
        let flow = tokio::select! {
            message = stream.recv(), if !conn.cut => conn.on_message(message).await,
            command = commands.recv() => conn.on_command(command).await,
            () = sleep_until(idle_deadline) => conn.on_idle_timeout().await,
        };
        idle_deadline = idle_after(conn.idle);
        match flow {
            Flow::Continue => {}
            Flow::Closing => {
                conn.await_close_echo(&mut stream, &mut commands).await;
                break;
            }
            Flow::End => break,
        }
    }
}

type Incoming = Option<Result<AggregatedMessage, actix_ws::ProtocolError>>;

impl Connection {
    fn record(&self, kind: HubEventKind) {
        self.reg.hub.record(self.reg.id, kind);
    }

    /// The model's clean-up, now (the close that follows is only the wire's).
    fn terminate(&self, clean_up: bool) {
        let id = self.reg.id;
        self.reg
            .hub
            .with_core(|core| core.session_ended(id, clean_up, Now::get()));
    }

    async fn on_message(&mut self, message: Incoming) -> Flow {
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return self.on_protocol_error(error).await,
            None => return Flow::End,
        };
        match message {
            AggregatedMessage::Text(text) => self.on_text(&text).await,
            AggregatedMessage::Binary(data) => {
                // The hub's socket has no clause for binary frames: its process crashes.
                self.record(HubEventKind::BinaryFrame(data.len()));
                self.terminate(true);
                self.close(1011, "").await;
                Flow::End
            }
            AggregatedMessage::Ping(payload) => after_send(self.session.pong(&payload).await),
            AggregatedMessage::Pong(payload) => {
                self.record(HubEventKind::WsPong(payload.to_vec()));
                Flow::Continue
            }
            AggregatedMessage::Close(reason) => self.on_close(reason).await,
        }
    }

    /// A frame the hub cannot read ends the connection with a Close frame saying why.
    async fn on_protocol_error(&mut self, error: actix_ws::ProtocolError) -> Flow {
        let code = match error {
            actix_ws::ProtocolError::Overflow => CloseCode::Size,
            _ => CloseCode::Protocol,
        };
        let reason = CloseReason {
            code,
            description: Some(error.to_string()),
        };
        let _ = self.session.clone().close(Some(reason)).await;
        Flow::End
    }

    /// The hub answers a Close with 1000 (1002 for a code it does not accept) and ends.
    async fn on_close(&mut self, reason: Option<CloseReason>) -> Flow {
        self.record(close_event(reason.as_ref()));
        if !self.reg.hub.behaviour().echo_close {
            return Flow::Continue;
        }
        let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
        let answer = match code {
            1000..=1003 | 1007..=1011 | 3000.. => 1000,
            _ => 1002,
        };
        self.close(answer, "").await;
        Flow::End
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let behaviour = self.reg.hub.behaviour();
        let parsed = serde_json::from_str::<serde_json::Value>(text);
        self.record(frame_event(text, &parsed));
        let id = self.reg.id;
        let reply: Reply = self
            .reg
            .hub
            .with_core(|core| core.on_text(id, text, &behaviour, Now::get()));
        for out in reply.out {
            let flow = match out {
                Out::Text(frame) => after_send(self.session.text(frame).await),
                Out::Deliver(delivery) => self.deliver(delivery).await,
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        match reply.close {
            None => Flow::Continue,
            Some(close) => {
                let sent = self.close(close.code, &close.reason).await;
                if close.wait_echo && sent {
                    Flow::Closing
                } else {
                    Flow::End
                }
            }
        }
    }

    /// Handles a message from inside the hub; writes its frame unless cut.
    async fn deliver(&mut self, delivery: Delivery) -> Flow {
        let id = self.reg.id;
        let delivered = self
            .reg
            .hub
            .with_core(|core| core.deliver(id, delivery, Now::get()));
        let flow = match delivered.frame {
            Some(frame) if !self.cut => after_send(self.session.text(frame).await),
            _ => Flow::Continue,
        };
        if let (Some(event), false) = (delivered.event, matches!(flow, Flow::End)) {
            self.record(event);
        }
        flow
    }

    async fn on_command(&mut self, command: Option<Command>) -> Flow {
        match command {
            Some(Command::Send(_)) if self.cut => Flow::Continue,
            Some(Command::Send(frame)) => self.write(frame).await,
            Some(Command::Deliver(delivery)) => match &mut self.held {
                Some(held) => {
                    held.push_back(delivery);
                    Flow::Continue
                }
                None => self.deliver(delivery).await,
            },
            Some(Command::Hold(true)) => {
                self.held.get_or_insert_with(Default::default);
                Flow::Continue
            }
            Some(Command::ReleaseOne) => match self.held.as_mut().and_then(|h| h.pop_front()) {
                Some(delivery) => self.deliver(delivery).await,
                None => Flow::Continue,
            },
            Some(Command::Hold(false)) => {
                let held = self.held.take().unwrap_or_default();
                for delivery in held {
                    if matches!(self.deliver(delivery).await, Flow::End) {
                        return Flow::End;
                    }
                }
                Flow::Continue
            }
            Some(Command::Cut) => {
                self.cut = true;
                let id = self.reg.id;
                self.reg.hub.with_core(|core| core.cut(id));
                Flow::Continue
            }
            Some(Command::Die) => {
                self.terminate(false);
                Flow::End
            }
            Some(Command::Shutdown) => {
                self.terminate(true);
                if !self.cut {
                    self.close(1000, "").await;
                }
                Flow::End
            }
            Some(Command::Kill) | None => Flow::End,
        }
    }

    /// Nothing received for the idle timeout: the hub closes (1002) after its clean-up.
    async fn on_idle_timeout(&mut self) -> Flow {
        let id = self.reg.id;
        let agent_id = self
            .reg
            .hub
            .with_core(|core| core.sessions.get(&id).and_then(|s| s.agent_id.clone()));
        self.record(HubEventKind::SessionTimedOut { agent_id });
        self.terminate(true);
        if !self.cut {
            self.close(1002, "").await;
        }
        Flow::End
    }

    /// Sends a Close frame; whether it went out.
    async fn close(&mut self, code: u16, reason: &str) -> bool {
        let reason = CloseReason {
            code: CloseCode::from(code),
            description: (!reason.is_empty()).then(|| reason.to_string()),
        };
        // A clone of the session keeps the connection open until the echo.
        self.session.clone().close(Some(reason)).await.is_ok()
    }

    async fn write(&mut self, frame: RawFrame) -> Flow {
        let session = &mut self.session;
        let sent = match frame {
            RawFrame::Text(text) => session.text(text).await,
            RawFrame::Binary(data) => session.binary(data).await,
            RawFrame::Ping(payload) => session.ping(&payload).await,
            RawFrame::FragmentedText(text, chunk) => write_fragmented(session, &text, chunk).await,
            RawFrame::Close(code, reason) => {
                return match self.close(code, &reason).await {
                    true => Flow::Closing,
                    false => Flow::End,
                };
            }
        };
        after_send(sent)
    }

    /// After the hub sent a Close frame: record what still comes in, answer nothing, and end
    /// on the client's Close, its disconnect, a kill, or the timeout.
    async fn await_close_echo(
        &mut self,
        stream: &mut AggregatedMessageStream,
        commands: &mut UnboundedReceiver<Command>,
    ) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            tokio::select! {
                message = stream.recv() => match message {
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        self.record(close_event(reason.as_ref()));
                        return;
                    }
                    Some(Ok(other)) => self.record_late(other),
                    Some(Err(_)) | None => return,
                },
                command = commands.recv() => {
                    if matches!(command, Some(Command::Kill | Command::Die | Command::Shutdown) | None) {
                        return;
                    }
                }
                () = sleep_until(deadline) => return,
            }
        }
    }

    /// Records a message that arrived while closing, without answering it.
    fn record_late(&self, message: AggregatedMessage) {
        let kind = match message {
            AggregatedMessage::Text(text) => frame_event(&text, &serde_json::from_str(&text)),
            AggregatedMessage::Binary(data) => HubEventKind::BinaryFrame(data.len()),
            AggregatedMessage::Pong(payload) => HubEventKind::WsPong(payload.to_vec()),
            AggregatedMessage::Ping(_) | AggregatedMessage::Close(_) => return,
        };
        self.record(kind);
    }
}

fn frame_event(text: &str, parsed: &serde_json::Result<serde_json::Value>) -> HubEventKind {
    HubEventKind::Frame {
        text: text.to_string(),
        json: parsed.as_ref().cloned().unwrap_or(serde_json::Value::Null),
    }
}

fn close_event(reason: Option<&CloseReason>) -> HubEventKind {
    HubEventKind::CloseReceived {
        code: reason.map(|r| u16::from(r.code)),
        reason: reason
            .and_then(|r| r.description.clone())
            .unwrap_or_default(),
    }
}

/// A connection whose session is gone ends.
fn after_send(sent: Result<(), actix_ws::Closed>) -> Flow {
    match sent {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::End,
    }
}

/// `text` as a fragmented message: a first frame, continuations, and a last frame, each of at
/// most `chunk` bytes (a message that fits in one chunk ends with an empty last frame).
async fn write_fragmented(
    session: &mut Session,
    text: &str,
    chunk: usize,
) -> Result<(), actix_ws::Closed> {
    let bytes = Bytes::copy_from_slice(text.as_bytes());
    let chunk = chunk.max(1);
    let mut pieces = (0..bytes.len())
        .step_by(chunk)
        .map(|start| bytes.slice(start..start.saturating_add(chunk).min(bytes.len())));
    let first = pieces.next().unwrap_or_default();
    let mut rest: Vec<Bytes> = pieces.collect();
    let last = rest.pop().unwrap_or_default();
    session.continuation(Item::FirstText(first)).await?;
    for piece in rest {
        session.continuation(Item::Continue(piece)).await?;
    }
    session.continuation(Item::Last(last)).await
}
