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

/// Every frame the sidecar sends, each within the current hub's schema for its type (see
/// [`clip`] for the text limits). `Debug` never shows the token (see [`Secret`]).
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
        #[serde(skip_serializing_if = "Option::is_none")]
        ollama_url: Option<String>,
    },
    Ping,
    TaskAccepted {
        task_id: String,
        generation: u64,
    },
    /// Work in progress: keeps the task from being taken back as stuck.
    TaskProgress {
        task_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        progress: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        execution_event: Option<Map<String, Value>>,
    },
    /// The result goes whole in `result`; the fields the hub reads only at the top level
    /// (see [`Outgoing::task_complete`]) are copied there too.
    TaskComplete {
        task_id: String,
        generation: u64,
        result: Map<String, Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tokens_used: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        verification_report: Option<Map<String, Value>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        verification_history: Option<Vec<Value>>,
    },
    /// The first hub version reads `reason`, later ones `error` then `reason`: both are sent,
    /// each cut to [`TEXT_MAX`] characters.
    TaskFailed {
        task_id: String,
        generation: u64,
        reason: String,
        error: String,
    },
    TaskRecovering {
        task_id: String,
        generation: u64,
        last_status: &'static str,
    },
    /// The outcome of one wake attempt.
    WakeResult {
        task_id: String,
        status: &'static str,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// What the sidecar holds, after a (re)identify: the hub answers `continue` or `abort`.
    StateReport {
        task_id: String,
        status: &'static str,
        generation: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        assigned_at: Option<u64>,
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

/// The longest `error`/`reason` text the current hub accepts, in characters.
pub const TEXT_MAX: usize = 2000;

/// `text` cut to at most `max` characters (the hub counts graphemes, which are never more
/// than characters), with a marker that says how long the whole text was.
pub fn clip(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_string();
    }
    let marker = format!(" [cut: {total} characters in all; the whole text is in the sidecar log]");
    let keep = max.saturating_sub(marker.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(&marker);
    out
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(flatten)]
    frame: &'a Outgoing,
    protocol_version: u32,
}

impl Outgoing {
    /// `task_complete` for a result object: `tokens_used` (an integer),
    /// `verification_report` (an object) and `verification_history` (a list of objects) are
    /// also sent at the top level, where the current hub reads them (it ignores the last two
    /// inside `result`). A value of another type is left out of the top level (the task
    /// machine refuses such a result before it gets here: [`crate::result_file::report_fields`]).
    pub fn task_complete(task_id: String, generation: u64, result: Map<String, Value>) -> Self {
        let tokens_used = result.get("tokens_used").and_then(Value::as_i64);
        let verification_report = match result.get("verification_report") {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        let verification_history = match result.get("verification_history") {
            Some(Value::Array(items)) if items.iter().all(Value::is_object) => Some(items.clone()),
            _ => None,
        };
        Outgoing::TaskComplete {
            task_id,
            generation,
            result,
            tokens_used,
            verification_report,
            verification_history,
        }
    }

    /// The frame's `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Outgoing::Identify { .. } => "identify",
            Outgoing::Ping => "ping",
            Outgoing::TaskAccepted { .. } => "task_accepted",
            Outgoing::TaskProgress { .. } => "task_progress",
            Outgoing::TaskComplete { .. } => "task_complete",
            Outgoing::TaskFailed { .. } => "task_failed",
            Outgoing::TaskRecovering { .. } => "task_recovering",
            Outgoing::WakeResult { .. } => "wake_result",
            Outgoing::StateReport { .. } => "state_report",
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
    /// `not_identified`, `task_complete_failed: …`, `validation_failed` (with the failed
    /// frame's `message_type` and the `errors` details), …
    Error {
        error: String,
        message_type: Option<String>,
        errors: Option<Value>,
    },
    Pong {
        timestamp: Option<i64>,
    },
    /// The frame that caused it was dropped: send it again after `retry_after_ms`.
    RateLimited {
        retry_after_ms: Option<u64>,
        tier: Option<String>,
    },
    RateLimitWarning {
        tier: Option<String>,
        remaining: Option<u64>,
        capacity: Option<u64>,
    },
    RestartSidecar {
        reason: String,
    },
    TaskAssign(TaskAssign),
    TaskAck {
        task_id: String,
        status: String,
    },
    TaskContinue {
        task_id: String,
        generation: u64,
    },
    TaskReassign {
        task_id: String,
    },
    TaskCancelled {
        task_id: String,
    },
    StateReportAck {
        task_id: String,
        action: String,
    },
    OllamaReportAck,
    /// A `room_message` (room chat), its fields checked; a bad one says why without quoting
    /// its text (it is untrusted and may be large).
    RoomMessage(Result<crate::room::RoomMessage, crate::room::Rejected>),
    /// A type the sidecar has no use for (chat, presence, …).
    Other {
        kind: String,
    },
}

/// A `task_assign`: the fields the sidecar reads, and the whole frame as sent (every field
/// is kept with the task).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskAssign {
    /// `None` when absent or null.
    pub task_id: Option<TaskIdField>,
    /// The hub's lease; 0 when the hub sent none (the hub's own default).
    pub generation: u64,
    /// `routing_decision.target_type` and `.selected_model`, when strings.
    pub target_type: Option<String>,
    pub model: Option<String>,
    /// The frame's text exactly as the hub sent it.
    pub raw: String,
}

/// What the hub put in `task_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskIdField {
    Str(String),
    /// Not a string: the value's JSON text, for the log.
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
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            // Room text may hold lone surrogate escapes, which `Value` refuses: such a
            // message is read with its strings as bytes.
            Err(e) => {
                return crate::room::RoomMessage::from_lenient(text)
                    .map(Incoming::RoomMessage)
                    .ok_or_else(|| FrameError::InvalidJson(e.to_string()))
            }
        };
        let Value::Object(fields) = value else {
            return Err(FrameError::NotAnObject(json_kind(&value)));
        };
        let kind = match fields.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(FrameError::MissingType),
        };
        let f = Fields {
            kind: wire_kind(kind),
            map: &fields,
        };
        Ok(match kind {
            "identified" => Incoming::Identified,
            "error" => Incoming::Error {
                error: match fields.get("error") {
                    Some(Value::String(e)) => e.clone(),
                    Some(other) => other.to_string(),
                    None => "unspecified".to_string(),
                },
                message_type: f.opt_str("message_type"),
                errors: fields.get("errors").filter(|v| !v.is_null()).cloned(),
            },
            "pong" => Incoming::Pong {
                timestamp: fields.get("timestamp").and_then(Value::as_i64),
            },
            "rate_limited" => Incoming::RateLimited {
                retry_after_ms: fields.get("retry_after_ms").and_then(Value::as_u64),
                tier: f.opt_str("tier"),
            },
            "rate_limit_warning" => Incoming::RateLimitWarning {
                tier: f.opt_str("tier"),
                remaining: fields.get("remaining").and_then(Value::as_u64),
                capacity: fields.get("capacity").and_then(Value::as_u64),
            },
            "restart_sidecar" => Incoming::RestartSidecar {
                reason: f.opt_str("reason").unwrap_or_else(|| "unspecified".into()),
            },
            "task_assign" => {
                let routing = fields.get("routing_decision").and_then(Value::as_object);
                let routed = |k: &str| {
                    routing
                        .and_then(|r| r.get(k))
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                Incoming::TaskAssign(TaskAssign {
                    task_id: fields.get("task_id").and_then(|v| match v {
                        Value::Null => None,
                        Value::String(s) => Some(TaskIdField::Str(s.clone())),
                        other => Some(TaskIdField::NotAString(other.to_string())),
                    }),
                    generation: f.generation()?,
                    target_type: routed("target_type"),
                    model: routed("selected_model"),
                    raw: text.to_string(),
                })
            }
            "task_ack" => Incoming::TaskAck {
                task_id: f.task_id()?,
                status: f.opt_str("status").unwrap_or_default(),
            },
            "task_continue" => Incoming::TaskContinue {
                task_id: f.task_id()?,
                generation: f.generation()?,
            },
            "task_reassign" => Incoming::TaskReassign {
                task_id: f.task_id()?,
            },
            "task_cancelled" => Incoming::TaskCancelled {
                task_id: f.task_id()?,
            },
            "state_report_ack" => Incoming::StateReportAck {
                task_id: f.task_id()?,
                action: f.opt_str("action").unwrap_or_default(),
            },
            "ollama_report_ack" => Incoming::OllamaReportAck,
            "room_message" => Incoming::RoomMessage(crate::room::RoomMessage::from_fields(&fields)),
            other => Incoming::Other {
                kind: other.to_string(),
            },
        })
    }
}

/// The frame types the sidecar reads, as static names for errors.
fn wire_kind(kind: &str) -> &'static str {
    match kind {
        "task_assign" => "task_assign",
        "task_ack" => "task_ack",
        "task_continue" => "task_continue",
        "task_reassign" => "task_reassign",
        "task_cancelled" => "task_cancelled",
        "state_report_ack" => "state_report_ack",
        _ => "hub",
    }
}

/// Typed reads of one frame's fields.
struct Fields<'a> {
    kind: &'static str,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn opt_str(&self, key: &str) -> Option<String> {
        self.map
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn task_id(&self) -> Result<String, FrameError> {
        match self.map.get("task_id") {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(FrameError::BadField {
                kind: self.kind,
                field: "task_id",
                problem: "is missing",
            }),
            Some(_) => Err(FrameError::BadField {
                kind: self.kind,
                field: "task_id",
                problem: "is not a string",
            }),
        }
    }

    fn generation(&self) -> Result<u64, FrameError> {
        match self.map.get("generation") {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().ok_or(FrameError::BadField {
                kind: self.kind,
                field: "generation",
                problem: "is not a whole number",
            }),
        }
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
                generation: 3,
            },
            Outgoing::TaskFailed {
                task_id: "t".into(),
                reason: "r".into(),
                error: "r".into(),
                generation: 0,
            },
            Outgoing::TaskProgress {
                task_id: "t".into(),
                progress: None,
                execution_event: None,
            },
        ];
        for f in frames {
            let v: Value = serde_json::from_str(&f.encode().unwrap()).unwrap();
            assert_eq!(v["protocol_version"], 1);
            assert_eq!(v["type"], f.kind());
            if v.get("generation").is_some() {
                assert!(v["generation"].is_u64(), "generation is an integer");
            }
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
            ollama_url: None,
        };
        assert!(f.encode().unwrap().contains("\"token\":\"s3cret\""));
        assert!(!f.encode().unwrap().contains("ollama_url"));
        assert!(!format!("{f:?}").contains("s3cret"));
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_to_the_limit_with_a_marker() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(3000);
        let cut = clip(&long, TEXT_MAX);
        assert_eq!(cut.chars().count(), TEXT_MAX);
        assert!(cut.ends_with("the whole text is in the sidecar log]"));
        assert!(cut.contains("3000 characters"));
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
        assert!(matches!(
            Incoming::parse(r#"{"type":"task_ack","status":"complete"}"#),
            Err(FrameError::BadField {
                field: "task_id",
                ..
            })
        ));
        assert!(matches!(
            Incoming::parse(r#"{"type":"task_assign","task_id":"t","generation":-1}"#),
            Err(FrameError::BadField {
                field: "generation",
                ..
            })
        ));
    }

    #[test]
    fn task_assign_keeps_the_raw_text_and_reads_routing() {
        let raw = r#"{"type":"task_assign","task_id":"t-1","generation":3,"repo":"x","routing_decision":{"target_type":"ollama","selected_model":"qwen"}}"#;
        let Ok(Incoming::TaskAssign(t)) = Incoming::parse(raw) else {
            panic!()
        };
        assert_eq!(t.task_id, Some(TaskIdField::Str("t-1".into())));
        assert_eq!(t.generation, 3);
        assert_eq!(t.target_type.as_deref(), Some("ollama"));
        assert_eq!(t.model.as_deref(), Some("qwen"));
        assert_eq!(t.raw, raw);
        let Ok(Incoming::TaskAssign(t)) = Incoming::parse(r#"{"type":"task_assign","task_id":7}"#)
        else {
            panic!()
        };
        assert_eq!(t.task_id, Some(TaskIdField::NotAString("7".into())));
        assert_eq!(t.generation, 0);
    }

    #[test]
    fn room_messages_are_typed_even_with_lone_surrogates_or_bad_fields() {
        let Ok(Incoming::RoomMessage(Ok(m))) = Incoming::parse(
            r#"{"type":"room_message","from":"a","text":"$(x)","seq":2,"message_type":"chat","timestamp":5}"#,
        ) else {
            panic!()
        };
        assert_eq!((m.text.as_slice(), m.seq), (&b"$(x)"[..], 2));
        let Ok(Incoming::RoomMessage(Ok(m))) =
            Incoming::parse(r#"{"type":"room_message","from":"a","text":"\udc80","seq":3}"#)
        else {
            panic!()
        };
        assert_eq!(m.text, b"\xed\xb2\x80");
        assert!(matches!(
            Incoming::parse(r#"{"type":"room_message","from":"a","text":7,"seq":3}"#),
            Ok(Incoming::RoomMessage(Err(_)))
        ));
        assert!(matches!(
            Incoming::parse(r#"{"type":"agent_joined","x":"\udc80"}"#),
            Err(FrameError::InvalidJson(_))
        ));
    }

    #[test]
    fn errors_keep_the_failed_type_and_details() {
        let Ok(Incoming::Error {
            error,
            message_type,
            errors,
        }) = Incoming::parse(
            r#"{"type":"error","error":"validation_failed","message_type":"task_failed","errors":[{"field":"error"}]}"#,
        )
        else {
            panic!()
        };
        assert_eq!(error, "validation_failed");
        assert_eq!(message_type.as_deref(), Some("task_failed"));
        assert_eq!(errors, Some(serde_json::json!([{"field": "error"}])));
    }
}
