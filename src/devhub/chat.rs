//! The chat frames a sidecar does not send (`status`, `list_agents`, `message`, the channel
//! frames), answered as the hub answers them, for a hub without channels or mailboxes.

use serde_json::{json, Value};

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
