//! The hub's wire protocol as typed values (see PROTOCOL.md of the hub).
//!
//! [`Outgoing`] is every frame the sidecar sends; [`Outgoing::encode`] adds
//! `protocol_version` to each. [`Incoming::parse`] turns one text frame into a typed value or
//! a [`FrameError`] that says precisely what was wrong with it; frame types the sidecar has no
//! use for become [`Incoming::Other`] rather than errors, since the hub pushes chat and
//! presence frames to every socket. Nothing here does I/O.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Secret;

/// Sent on every outgoing frame.
pub const PROTOCOL_VERSION: u32 = 1;

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

/// Every frame the sidecar sends. `Debug` never shows the token (see [`Secret`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outgoing {
    Identify {
        agent_id: String,
        token: Secret,
        name: String,
        status: &'static str,
        capabilities: Vec<String>,
        client_type: &'static str,
    },
    Ping,
    TaskAccepted {
        task_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    TaskRejected {
        task_id: String,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    TaskComplete {
        task_id: String,
        result: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    /// The first hub version reads `reason`, later ones `error` then `reason`: both are sent.
    TaskFailed {
        task_id: String,
        reason: String,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    TaskRecovering {
        task_id: String,
        description: Value,
        metadata: Value,
        last_status: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    /// The machine's load, for the hub's routing. Every number is optional: what the
    /// platform does not report is left out, never sent as `null` or 0.
    ResourceReport {
        #[serde(skip_serializing_if = "Option::is_none")]
        cpu_percent: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ram_used_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ram_total_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vram_used_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vram_total_bytes: Option<u64>,
        /// Milliseconds since the Unix epoch.
        timestamp: u64,
    },
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(flatten)]
    frame: &'a Outgoing,
    protocol_version: u32,
}

impl Outgoing {
    /// The frame's `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Outgoing::Identify { .. } => "identify",
            Outgoing::Ping => "ping",
            Outgoing::TaskAccepted { .. } => "task_accepted",
            Outgoing::TaskRejected { .. } => "task_rejected",
            Outgoing::TaskComplete { .. } => "task_complete",
            Outgoing::TaskFailed { .. } => "task_failed",
            Outgoing::TaskRecovering { .. } => "task_recovering",
            Outgoing::ResourceReport { .. } => "resource_report",
        }
    }

    /// The JSON text sent on the wire, `protocol_version` included.
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&Wire {
            frame: self,
            protocol_version: PROTOCOL_VERSION,
        })
    }
}

/// A frame from the hub that the sidecar acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Identified,
    /// `{"type":"error","error":…}`: `invalid_token`, `token_agent_mismatch`,
    /// `not_identified`, `invalid_json`, `unknown_message_type`, …
    Error {
        error: String,
    },
    Pong {
        timestamp: Option<i64>,
    },
    RateLimited {
        retry_after_ms: Option<u64>,
    },
    RestartSidecar {
        reason: String,
    },
    /// `task_*` frames, handed to the task actors as they are.
    Task(TaskFrame),
    /// A type the sidecar has no use for (chat, presence, …).
    Other {
        kind: String,
    },
}

/// A `task_*` frame from the hub. Every one carries its whole JSON object, so fields this
/// version does not know are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFrame {
    pub kind: TaskFrameKind,
    /// `task_id` as sent: `None` when absent, the JSON text of the value when not a string.
    pub task_id: Option<TaskIdField>,
    pub generation: Option<u64>,
    pub fields: Map<String, Value>,
    /// The frame's text exactly as the hub sent it.
    pub raw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFrameKind {
    Assign,
    Ack,
    Reassign,
    Continue,
    Cancelled,
}

impl TaskFrameKind {
    /// The frame's `type` on the wire.
    pub fn wire_type(self) -> &'static str {
        match self {
            TaskFrameKind::Assign => "task_assign",
            TaskFrameKind::Ack => "task_ack",
            TaskFrameKind::Reassign => "task_reassign",
            TaskFrameKind::Continue => "task_continue",
            TaskFrameKind::Cancelled => "task_cancelled",
        }
    }
}

/// What the hub put in `task_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskIdField {
    Str(String),
    /// Not a string: the value's JSON text, for the log and the rejection.
    NotAString(String),
}

/// Why a frame from the hub could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("not a JSON object but {0}")]
    NotAnObject(&'static str),
    #[error("no \"type\" field")]
    MissingType,
    #[error("\"{field}\" of a {kind} frame {problem}")]
    BadField {
        kind: &'static str,
        field: &'static str,
        problem: &'static str,
    },
}

impl Incoming {
    /// Parses one text frame. Never panics, whatever the input (nesting depth is bounded by
    /// serde_json's recursion limit).
    pub fn parse(text: &str) -> Result<Incoming, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(FrameError::NotAnObject(json_kind(&value)));
        };
        let kind = match fields.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(FrameError::MissingType),
        };
        let task = |kind| Incoming::task(kind, &fields, text);
        Ok(match kind {
            "identified" => Incoming::Identified,
            "error" => Incoming::Error {
                error: match fields.get("error") {
                    Some(Value::String(e)) => e.clone(),
                    Some(other) => other.to_string(),
                    None => "unspecified".to_string(),
                },
            },
            "pong" => Incoming::Pong {
                timestamp: fields.get("timestamp").and_then(Value::as_i64),
            },
            "rate_limited" => Incoming::RateLimited {
                retry_after_ms: fields.get("retry_after_ms").and_then(Value::as_u64),
            },
            "restart_sidecar" => Incoming::RestartSidecar {
                reason: fields
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("unspecified")
                    .to_string(),
            },
            "task_assign" => task(TaskFrameKind::Assign)?,
            "task_ack" => task(TaskFrameKind::Ack)?,
            "task_reassign" => task(TaskFrameKind::Reassign)?,
            "task_continue" => task(TaskFrameKind::Continue)?,
            "task_cancelled" => task(TaskFrameKind::Cancelled)?,
            other => Incoming::Other {
                kind: other.to_string(),
            },
        })
    }

    fn task(
        kind: TaskFrameKind,
        fields: &Map<String, Value>,
        raw: &str,
    ) -> Result<Incoming, FrameError> {
        let task_id = fields.get("task_id").and_then(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(TaskIdField::Str(s.clone())),
            other => Some(TaskIdField::NotAString(other.to_string())),
        });
        let generation = match fields.get("generation") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or(FrameError::BadField {
                kind: "task",
                field: "generation",
                problem: "is not a whole number",
            })?),
        };
        Ok(Incoming::Task(TaskFrame {
            kind,
            task_id,
            generation,
            fields: fields.clone(),
            raw: raw.to_string(),
        }))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outgoing_frame_carries_protocol_version() {
        let frames = [
            Outgoing::Ping,
            Outgoing::TaskAccepted {
                task_id: "t".into(),
                generation: Some(3),
            },
            Outgoing::TaskFailed {
                task_id: "t".into(),
                reason: "r".into(),
                error: "r".into(),
                generation: None,
            },
        ];
        for f in frames {
            let v: Value = serde_json::from_str(&f.encode().unwrap()).unwrap();
            assert_eq!(v["protocol_version"], 1);
            assert_eq!(v["type"], f.kind());
        }
    }

    #[test]
    fn identify_sends_the_token_but_debug_hides_it() {
        let f = Outgoing::Identify {
            agent_id: "a".into(),
            token: Secret::new("s3cret"),
            name: "a".into(),
            status: "idle",
            capabilities: vec![],
            client_type: "sidecar",
        };
        assert!(f.encode().unwrap().contains("\"token\":\"s3cret\""));
        assert!(!format!("{f:?}").contains("s3cret"));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(matches!(
            Incoming::parse("{"),
            Err(FrameError::InvalidJson(_))
        ));
        assert_eq!(
            Incoming::parse("[1]"),
            Err(FrameError::NotAnObject("an array"))
        );
        assert_eq!(Incoming::parse("{}"), Err(FrameError::MissingType));
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(
            matches!(Incoming::parse(&deep), Err(FrameError::InvalidJson(e)) if e.contains("recursion"))
        );
        assert_eq!(
            Incoming::parse(r#"{"type":"agent_joined"}"#),
            Ok(Incoming::Other {
                kind: "agent_joined".into()
            })
        );
    }

    #[test]
    fn task_frames_keep_every_field_and_the_raw_text() {
        let raw = r#"{"type":"task_assign","task_id":"t-1","generation":3,"repo":"x"}"#;
        let Ok(Incoming::Task(t)) = Incoming::parse(raw) else {
            panic!()
        };
        assert_eq!(t.kind, TaskFrameKind::Assign);
        assert_eq!(t.task_id, Some(TaskIdField::Str("t-1".into())));
        assert_eq!(t.generation, Some(3));
        assert_eq!(t.fields["repo"], "x");
        assert_eq!(t.raw, raw);
        let Ok(Incoming::Task(t)) = Incoming::parse(r#"{"type":"task_assign","task_id":7}"#) else {
            panic!()
        };
        assert_eq!(t.task_id, Some(TaskIdField::NotAString("7".into())));
    }
}
