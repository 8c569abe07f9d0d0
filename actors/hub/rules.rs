//! The HubActor's session rules: what each frame from the hub means.

use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytes::Bytes;

use super::{
    assign_event, report_event, HubActor, HubRefused, HubRestartRequested, HubState, PongReceived,
    RoomMessageFromHub, SessionIdentified, State,
};
use crate::log_event;
use crate::outbound::{frame_task_id, Attribution};
use crate::protocol::{Incoming, Outgoing, TaskIdField};
use crate::tasks::Event;

impl HubActor {
    pub(super) fn on_message(&mut self, text: bool, data: Bytes, ctx: &mut Context<Self>) {
        if !text {
            log_event!(
                self.env.log,
                Warn,
                "frame_rejected",
                reason = "binary message (the hub protocol is JSON text)",
                kind = "binary",
                bytes = data.len()
            );
            return;
        }
        let Ok(frame_text) = std::str::from_utf8(&data) else {
            log_event!(
                self.env.log,
                Warn,
                "frame_rejected",
                reason = "text frame is not valid UTF-8",
                bytes = data.len()
            );
            return;
        };
        match Incoming::parse(frame_text) {
            Ok(incoming) => self.on_incoming(incoming, ctx),
            Err(e) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "frame_rejected",
                    reason = e.to_string(),
                    bytes = frame_text.len(),
                    preview = frame_text.chars().take(120).collect::<String>()
                );
            }
        }
    }

    fn on_incoming(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(s) = self.session() else { return };
        let attribution = s.outbound.attribute(&incoming, now);
        let identified = s.identified;
        let session = s.id;
        match (&incoming, &attribution) {
            (Incoming::Identified, _) => return self.on_identified(ctx),
            (Incoming::Pong { timestamp }, attribution) => {
                if identified {
                    let first = self
                        .session()
                        .is_some_and(|s| !std::mem::replace(&mut s.answered_ping, true));
                    if first {
                        // Identified and answering: this session has proved itself.
                        self.backoff.reset();
                    }
                    // A fence ping's pong is nobody's: the heartbeat times its own.
                    let fence = matches!(attribution, Attribution::Answer(s) if s.fence);
                    if !fence {
                        let _ = self.env.bus.send(PongReceived {
                            session,
                            hub_timestamp: *timestamp,
                        });
                    }
                }
            }
            (_, Attribution::Dropped { sent, retry_after }) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "frame_rate_limited",
                    frame = sent.frame.kind(),
                    task_id = frame_task_id(&sent.frame),
                    retry_after_ms = retry_after.as_millis() as u64,
                    action = if matches!(sent.frame, Outgoing::Ping) { "the hub is alive: counted as answered" } else { "sent again after retry_after_ms" }
                );
                if matches!(sent.frame, Outgoing::Ping) && !sent.fence && identified {
                    let _ = self.env.bus.send(PongReceived {
                        session,
                        hub_timestamp: None,
                    });
                }
            }
            (Incoming::RateLimited { .. }, _) => {
                log_event!(
                    self.env.log,
                    Warn,
                    "hub_error",
                    error = "rate_limited",
                    note = "no frame of ours waits for an answer in that tier"
                );
            }
            (Incoming::RateLimitWarning { tier, remaining, capacity }, _) => {
                log_event!(
                    self.env.log,
                    Info,
                    "rate_limit_warning",
                    tier = tier,
                    remaining = remaining,
                    capacity = capacity
                );
            }
            (Incoming::Error { error, errors, message_type }, answer) => {
                let refused = match answer {
                    Attribution::Answer(sent) => Some(sent.frame.kind()),
                    _ => None,
                };
                if error == "validation_failed" {
                    log_event!(
                        self.env.log,
                        Error,
                        "validation_failed",
                        frame = refused.or(message_type.as_deref()),
                        errors = errors,
                        note = "the hub refused a frame of ours as invalid (this counts as a violation at the hub)"
                    );
                }
                match answer {
                    Attribution::Answer(sent) => match report_event(sent, &incoming) {
                        Some(event) => self.task_event(session, event),
                        None if error == "validation_failed" => {}
                        None if matches!(sent.frame, Outgoing::Identify { .. }) => {
                            self.on_hub_error(error.clone(), ctx)
                        }
                        None => log_event!(
                            self.env.log,
                            Warn,
                            "hub_error",
                            error = error,
                            frame = sent.frame.kind(),
                            task_id = frame_task_id(&sent.frame)
                        ),
                    },
                    _ => self.on_hub_error(error.clone(), ctx),
                }
            }
            (Incoming::TaskAck { task_id, status }, answer) => match answer {
                Attribution::Answer(sent) => match report_event(sent, &incoming) {
                    Some(event) => self.task_event(session, event),
                    None => log_event!(self.env.log, Debug, "task_ack", task_id = task_id, status = status),
                },
                _ => log_event!(
                    self.env.log,
                    Warn,
                    "task_ack_unmatched",
                    task_id = task_id,
                    status = status,
                    note = "no report of ours waits for this answer"
                ),
            },
            (Incoming::StateReportAck { task_id, action }, answer) => match answer {
                Attribution::Answer(sent) => {
                    if let Some(event) = report_event(sent, &incoming) {
                        self.task_event(session, event);
                    }
                }
                _ => log_event!(
                    self.env.log,
                    Warn,
                    "state_report_ack_unmatched",
                    task_id = task_id,
                    action = action
                ),
            },
            (Incoming::TaskContinue { task_id, generation }, _) => self.task_event(
                session,
                Event::Continue {
                    task_id: task_id.clone(),
                    generation: *generation,
                },
            ),
            (Incoming::TaskReassign { task_id }, _) => self.task_event(
                session,
                Event::Reassign {
                    task_id: task_id.clone(),
                },
            ),
            (Incoming::TaskCancelled { task_id }, _) => self.task_event(
                session,
                Event::Cancelled {
                    task_id: task_id.clone(),
                },
            ),
            (Incoming::TaskAssign(a), _) => match &a.task_id {
                // Also while identifying again on the same connection (the hub still has
                // it): any session that was identified once.
                Some(TaskIdField::Str(id)) if session != 0 => {
                    self.task_event(session, assign_event(id, a))
                }
                Some(TaskIdField::Str(id)) => log_event!(
                    self.env.log,
                    Warn,
                    "frame_ignored",
                    task_id = id,
                    reason = "task_assign before the first identify: the hub takes it back after its acceptance timeout"
                ),
                None => log_event!(
                    self.env.log,
                    Warn,
                    "frame_rejected",
                    reason = "task_assign without task_id: ignored",
                    bytes = a.raw.len()
                ),
                Some(TaskIdField::NotAString(id)) => log_event!(
                    self.env.log,
                    Warn,
                    "task_rejected",
                    task_id = id,
                    reason = "invalid_task_id",
                    sent = "nothing: a task_id that is not a string cannot be answered; the hub takes the task back after its acceptance timeout"
                ),
            },
            (Incoming::RestartSidecar { reason }, _) => {
                log_event!(self.env.log, Warn, "restart_requested", reason = reason);
                let _ = self.env.bus.send(HubRestartRequested {
                    reason: reason.clone(),
                });
            }
            (Incoming::OllamaReportAck, _) => {}
            (Incoming::RoomMessage(message), _) => {
                let msg = RoomMessageFromHub {
                    session,
                    message: message.clone(),
                };
                if let Err(msg) = self.env.bus.send(msg) {
                    log_event!(
                        self.env.log,
                        Debug,
                        "room_message_unrouted",
                        seq = msg.message.as_ref().ok().map(|m| m.seq),
                        note = "no room actor accepts room messages"
                    );
                }
            }
            (Incoming::Other { kind }, _) => {
                log_event!(self.env.log, Debug, "frame_ignored", frame = kind);
            }
        }
        // An answer may let held frames go.
        self.pump(ctx);
    }

    /// `identified`: a new session id, published; a re-identify after a session that ended
    /// without a close is scheduled if that one may still linger at the hub.
    fn on_identified(&mut self, ctx: &mut Context<Self>) {
        let id = self.counter.next_session();
        let Some(s) = self.session() else { return };
        if s.identified {
            return;
        }
        s.identified = true;
        s.id = id;
        s.lost_announced = false;
        let conn = s.conn;
        log_event!(
            self.env.log,
            Info,
            "identified",
            session = id,
            hub_url = self.env.config.hub_url.as_str()
        );
        let _ = self.env.bus.send(SessionIdentified {
            session: id,
            after_unclean: self.stale_since.is_some(),
        });
        self.publish_state(HubState::Identified, None);
        let (Some(since), Some(after)) = (
            self.stale_since.take(),
            self.env.config.stale_session_reidentify,
        ) else {
            return;
        };
        let due = since + after;
        let now = Instant::now();
        if due <= now {
            return;
        }
        log_event!(
            self.env.log,
            Info,
            "reidentify_scheduled",
            session = id,
            in_ms = due.duration_since(now).as_millis() as u64,
            reason = "the previous session ended without a close: the hub may keep it until its idle timeout, and meanwhile not push to this one"
        );
        ctx.run_later(due - now, move |act, ctx| {
            act.reidentify(conn, id, "the stale session must be gone at the hub by now: identifying again so this one is registered for pushes", ctx)
        });
    }

    /// Identifies again on the same connection: the hub registers this session for pushes
    /// (and presence) again once the stale one is gone.
    pub(super) fn reidentify(
        &mut self,
        conn: u64,
        id: u64,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(&self.state, State::Open(s) if s.conn == conn && s.id == id && s.identified && !s.closing)
        {
            return;
        }
        log_event!(
            self.env.log,
            Warn,
            "reidentify",
            session = id,
            reason = reason
        );
        self.reidentified_at = Some(Instant::now());
        self.announce_lost();
        if let Some(s) = self.session() {
            s.identified = false;
        }
        self.send_identify(ctx);
        // The same deadline as the first identify on this connection.
        ctx.run_later(self.env.config.connect_timeout, move |act, ctx| {
            act.on_connect_deadline(conn, ctx)
        });
    }

    pub(super) fn on_hub_error(&mut self, error: String, ctx: &mut Context<Self>) {
        match error.as_str() {
            refusal @ ("invalid_token" | "token_agent_mismatch") => {
                let _ = self.env.bus.send(HubRefused {
                    error: if refusal == "invalid_token" {
                        "invalid_token"
                    } else {
                        "token_agent_mismatch"
                    },
                    detail: None,
                    cooldown: None,
                });
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
}
