//! One WebSocket connection of the dev hub: the `/ws` upgrade, then a task that answers the
//! client's frames the way the hub does (identify first, then pings and task reports) and
//! writes the frames queued for it by [`DevHub::send`](super::DevHub::send), in order.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Item, Session};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::{sleep_until, Instant};

use super::state::{now_ms, AgentInfo, Command, Hub};
use super::{Behaviour, HubEventKind, RawFrame};

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
    let id = hub.register(commands_tx, &peer);
    let registration = Registration { hub, id };
    actix_web::rt::spawn(serve(registration, session, stream, commands));
    Ok(response)
}

/// Unregisters the connection when its task ends, however it ends.
struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
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
    identified: bool,
}

async fn serve(
    reg: Registration,
    session: Session,
    mut stream: AggregatedMessageStream,
    mut commands: UnboundedReceiver<Command>,
) {
    let mut conn = Connection {
        reg,
        session,
        identified: false,
    };
    loop {
        let flow = tokio::select! {
            message = stream.recv() => conn.on_message(message).await,
            command = commands.recv() => conn.on_command(command).await,
        };
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

    async fn on_message(&mut self, message: Incoming) -> Flow {
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return self.on_protocol_error(error).await,
            None => return Flow::End,
        };
        match message {
            AggregatedMessage::Text(text) => self.on_text(&text).await,
            AggregatedMessage::Binary(data) => {
                self.record(HubEventKind::BinaryFrame(data.len()));
                Flow::Continue
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

    async fn on_close(&mut self, reason: Option<CloseReason>) -> Flow {
        self.record(close_event(reason.as_ref()));
        if !self.reg.hub.behaviour().echo_close {
            return Flow::Continue;
        }
        let _ = self.session.clone().close(reason).await;
        Flow::End
    }

    /// Answers with the behaviour as it was when the frame was recorded.
    async fn on_text(&mut self, text: &str) -> Flow {
        let behaviour = self.reg.hub.behaviour();
        let parsed = serde_json::from_str::<Value>(text);
        self.record(frame_event(text, &parsed));
        let answer = match parsed {
            Ok(frame) => self.answer(&frame, &behaviour),
            Err(_) => Some(error_frame("invalid_json")),
        };
        match answer {
            Some(answer) => after_send(self.session.text(answer.to_string()).await),
            None => Flow::Continue,
        }
    }

    /// The hub's reply to one parsed frame, if it sends one.
    fn answer(&mut self, frame: &Value, behaviour: &Behaviour) -> Option<Value> {
        let kind = frame.get("type").and_then(Value::as_str);
        if kind == Some("identify") {
            return behaviour.answer_identify.then(|| self.identify(frame));
        }
        if !self.identified {
            return Some(error_frame("not_identified"));
        }
        match kind {
            Some("ping") => behaviour
                .answer_pings
                .then(|| json!({"type": "pong", "timestamp": now_ms()})),
            Some("task_accepted") => behaviour.auto_ack.then(|| task_ack(frame, "accepted")),
            Some("task_complete") => behaviour.auto_ack.then(|| task_ack(frame, "complete")),
            Some("task_failed") => behaviour.auto_ack.then(|| task_ack(frame, "failed")),
            Some("task_rejected" | "task_progress" | "task_recovering") => None,
            _ => Some(error_frame("unknown_message_type")),
        }
    }

    fn identify(&mut self, frame: &Value) -> Value {
        let field = |key| frame.get(key).and_then(Value::as_str).unwrap_or("");
        let agent_id = field("agent_id");
        let hub = &self.reg.hub;
        match hub.check_token(agent_id, field("token")) {
            Ok(()) => {
                hub.identify(self.reg.id, AgentInfo::from_identify(agent_id, frame));
                self.identified = true;
                json!({"type": "identified", "agent_id": agent_id})
            }
            Err(error) => {
                self.record(HubEventKind::IdentifyRefused {
                    agent_id: agent_id.to_string(),
                    error: error.to_string(),
                });
                let id = self.reg.id;
                hub.presence(format_args!(
                    "conn {id} refused as agent {agent_id:?}: {error}"
                ));
                error_frame(error)
            }
        }
    }

    async fn on_command(&mut self, command: Option<Command>) -> Flow {
        match command {
            Some(Command::Send(frame)) => self.write(frame).await,
            Some(Command::SendAndRecord(frame, event)) => {
                let flow = self.write(frame).await;
                if !matches!(flow, Flow::End) {
                    self.record(event);
                }
                flow
            }
            Some(Command::Kill) | None => Flow::End,
        }
    }

    async fn write(&mut self, frame: RawFrame) -> Flow {
        let session = &mut self.session;
        let sent = match frame {
            RawFrame::Text(text) => session.text(text).await,
            RawFrame::Binary(data) => session.binary(data).await,
            RawFrame::Ping(payload) => session.ping(&payload).await,
            RawFrame::FragmentedText(text, chunk) => write_fragmented(session, &text, chunk).await,
            RawFrame::Close(code, reason) => {
                let reason = CloseReason {
                    code: CloseCode::from(code),
                    description: (!reason.is_empty()).then_some(reason),
                };
                // A clone of the session keeps the connection open until the echo.
                return match session.clone().close(Some(reason)).await {
                    Ok(()) => Flow::Closing,
                    Err(_) => Flow::End,
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
                    if matches!(command, Some(Command::Kill) | None) {
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

fn frame_event(text: &str, parsed: &serde_json::Result<Value>) -> HubEventKind {
    HubEventKind::Frame {
        text: text.to_string(),
        json: parsed.as_ref().cloned().unwrap_or(Value::Null),
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

fn error_frame(error: &str) -> Value {
    json!({"type": "error", "error": error})
}

fn task_ack(frame: &Value, status: &str) -> Value {
    let task_id = frame.get("task_id").cloned().unwrap_or(Value::Null);
    json!({"type": "task_ack", "task_id": task_id, "status": status})
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
