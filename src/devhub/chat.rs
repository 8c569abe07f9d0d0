//! The chat frames a sidecar does not send (`status`, `list_agents`, `message`, the channel
//! frames), answered as the hub answers them, for a hub without channels or mailboxes; and the
//! hub's room (`AgentCom.Room`): messages posted over HTTP get the next `seq`, are kept (the
//! newest 500, in memory: a hub restart starts again from seq 1) and broadcast as
//! `room_message` to every identified socket but the sender's.

use std::collections::VecDeque;

use serde_json::{json, Map, Value};

use super::core::{Core, Delivery, Now};
use super::frames::{error, Reply};

impl Core {
    /// The chat frames a sidecar does not send; answered as the hub does, for a hub without
    /// channels.
    pub(crate) fn handle_chat(
        &mut self,
        agent: &str,
        kind: &str,
        frame: &Value,
        now: Now,
    ) -> Reply {
        match kind {
            "status" => {
                let status = frame.get("status").cloned().unwrap_or_default();
                if let Some(entry) = self.presence.get_mut(agent) {
                    entry.status = status;
                    let shown = entry.to_json(agent);
                    self.broadcast(|| Delivery::StatusChanged {
                        agent: shown.clone(),
                    });
                }
                Reply::json(json!({"type": "status_updated"}))
            }
            "list_agents" => {
                let agents: Vec<Value> = self.presence.iter().map(|(a, e)| e.to_json(a)).collect();
                Reply::json(json!({"type": "agents", "agents": agents}))
            }
            "message" => {
                let id = format!("{:016x}", fastrand::u64(..));
                let to = frame.get("to").and_then(Value::as_str);
                let message = json!({"type": "message", "id": id, "from": agent,
                    "message_type": frame.get("message_type").and_then(Value::as_str).unwrap_or("chat"),
                    "payload": frame.get("payload").cloned().unwrap_or_else(|| json!({})),
                    "reply_to": frame.get("reply_to").cloned().unwrap_or(Value::Null),
                    "timestamp": now.ms});
                match to {
                    Some(to) if to != "broadcast" => {
                        self.push(to, Delivery::Message { frame: message });
                    }
                    _ => self.broadcast(|| Delivery::Message {
                        frame: message.clone(),
                    }),
                }
                Reply::json(json!({"type": "message_sent", "id": id}))
            }
            "channel_history" => Reply::json(json!({"type": "channel_history",
                "channel": frame.get("channel"), "messages": []})),
            "list_channels" => Reply::json(json!({"type": "channels", "channels": []})),
            "channel_subscribe" | "channel_unsubscribe" | "channel_publish" => {
                error("channel_not_found")
            }
            _ => error("unknown_message_type"),
        }
    }
}

/// Messages the room keeps, as the hub's ring buffer.
const ROOM_KEPT: usize = 500;

/// The hub's room: its last `seq` and the newest messages, newest first.
#[derive(Default)]
pub(crate) struct Room {
    seq: u64,
    messages: VecDeque<Value>,
}

impl Core {
    /// `AgentCom.Room.send_message`: the message (`seq`, `from`, `text`, `type`,
    /// `timestamp`), kept and broadcast.
    pub fn room_send(&mut self, from: &str, text: &str, message_type: Value, now: Now) -> Value {
        self.room.seq += 1;
        let message = json!({"seq": self.room.seq, "from": from, "text": text,
            "type": message_type, "timestamp": now.ms});
        self.room.messages.push_front(message.clone());
        self.room.messages.truncate(ROOM_KEPT);
        self.broadcast(|| Delivery::Room {
            message: message.clone(),
        });
        message
    }

    /// `POST /api/room/message` (`from` is the token's agent) and, with `from` in the body,
    /// `POST /api/room/message/human`: status and body.
    pub fn room_post(
        &mut self,
        agent: &str,
        body: &Map<String, Value>,
        human: bool,
        now: Now,
    ) -> (u16, Value) {
        let text = body.get("text").and_then(Value::as_str).unwrap_or("");
        // `conn.body_params["type"] || "chat"`: nil and false give "chat".
        let message_type = match body.get("type") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => json!("chat"),
            Some(other) => other.clone(),
        };
        let from = if human {
            body.get("from").and_then(Value::as_str).unwrap_or("")
        } else {
            agent
        };
        if text.is_empty() || from.is_empty() {
            let error = if human {
                "from and text are required"
            } else {
                "text is required"
            };
            return (422, json!({ "error": error }));
        }
        let from = from.to_string();
        (201, self.room_send(&from, text, message_type, now))
    }

    /// `GET /api/room/messages?since=&limit=`: the newest `limit` messages after `since`,
    /// oldest first, and the room's last seq.
    pub fn room_messages(&self, since: i64, limit: i64) -> Value {
        let limit = usize::try_from(limit).unwrap_or(0);
        let mut messages: Vec<Value> = self
            .room
            .messages
            .iter()
            .filter(|m| m["seq"].as_i64().is_some_and(|s| s > since))
            .take(limit)
            .cloned()
            .collect();
        messages.reverse();
        json!({"messages": messages, "last_seq": self.room.seq})
    }

    /// A hub restart loses the room.
    pub fn room_restarted(&mut self) {
        self.room = Room::default();
    }
}

/// The `room_message` frame a socket pushes for a room message, unless the session is not
/// identified or is the sender's.
pub(crate) fn room_frame(message: &Value, identified: bool, agent: Option<&str>) -> Option<Value> {
    let from = message["from"].as_str();
    if !identified || (agent.is_some() && from == agent) {
        return None;
    }
    Some(
        json!({"type": "room_message", "from": message["from"], "text": message["text"],
        "seq": message["seq"], "message_type": message["type"], "timestamp": message["timestamp"]}),
    )
}
