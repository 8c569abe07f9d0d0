//! The task state the sidecar keeps on disk, as values: every task id it knows, the outbox of
//! reports waiting for the hub's answer, and the reports the hub refused.
//!
//! Pure data, no I/O and no rules (the rules are in [`super::machine`]). The whole state is
//! one JSON document, replaced atomically by [`super::store`]. Version 1 files (one `active`
//! and one `recovering` slot, written by earlier releases) are read and converted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The queue file's format version written by this release.
pub const VERSION: u32 = 2;

/// Task ids become file names: `^[A-Za-z0-9._-]{1,128}$`, and not `.` or `..`; on Windows
/// also not a name Windows reserves for a device ([`is_windows_device_name`]).
pub fn valid_task_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !(cfg!(windows) && is_windows_device_name(id))
}

/// Whether Windows would take a file named `<id>.<anything>` for a device: `CON`, `PRN`,
/// `AUX`, `NUL`, `COM0`–`COM9` or `LPT0`–`LPT9` before the first dot, in any letter case
/// (`nul.json` is the null device, and `con.json` the console, which would block a read).
pub fn is_windows_device_name(id: &str) -> bool {
    let stem = id.split('.').next().unwrap_or(id).to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        s if s.len() == 4 && (s.starts_with("COM") || s.starts_with("LPT")) => {
            s.as_bytes()[3].is_ascii_digit()
        }
        _ => false,
    }
}

/// Who the task belongs to now, as far as the sidecar knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The hub's current lease is ours: we answer for it.
    Held,
    /// Held when the process last stopped: waiting for the hub's verdict (`task_recovering`).
    Recovering,
    /// The hub took it back (reassigned, aborted, cancelled, or refused our report). Its agent
    /// may still be running and its result may be known: a re-push of the same id adopts it.
    Released,
}

/// Why a task was released (for the log, `status` and the operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    Reassigned,
    Aborted,
    Cancelled,
    Refused,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Reassigned => "reassigned",
            Release::Aborted => "aborted",
            Release::Cancelled => "cancelled",
            Release::Refused => "refused",
        }
    }
}

/// The agent's side of a task: what has been done to start it, and what it confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Agent {
    /// No wake attempt yet (or no wake command applies: the agent starts by itself).
    NotWoken,
    /// Attempt `wake_id` is on disk; its command may be running (recorded before the spawn).
    Waking { wake_id: u64, attempt: u32 },
    /// The attempt's command exited 0: waiting for `<task_id>.started`.
    Woken { wake_id: u64, attempt: u32 },
    /// The last attempt failed (`attempt` attempts so far); a retry may follow.
    WakeFailed {
        wake_id: u64,
        attempt: u32,
        error: String,
    },
    /// `<task_id>.started` was seen: an agent runs (or ran) for this task.
    Confirmed,
    /// Every attempt failed or the agent never confirmed: no agent is expected to run.
    GaveUp,
}

impl Agent {
    /// Whether an agent may be running for the task (so none may be started).
    pub fn may_run(&self) -> bool {
        matches!(
            self,
            Agent::Waking { .. } | Agent::Woken { .. } | Agent::Confirmed
        )
    }
}

/// How a task ended, from the agent's result or from the sidecar's own verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Complete {
        result: Map<String, Value>,
    },
    Failed {
        reason: String,
        /// The full text (sent cut to the hub's limit; kept whole here and in the log).
        error: String,
    },
}

impl Outcome {
    pub fn kind(&self) -> ReportKind {
        match self {
            Outcome::Complete { .. } => ReportKind::Complete,
            Outcome::Failed { .. } => ReportKind::Failed,
        }
    }

    /// What a result object says: `"status":"success"` is complete, anything else failed
    /// with the file's `reason` or `error`.
    pub fn from_result(result: Map<String, Value>) -> Outcome {
        if result.get("status").and_then(Value::as_str) == Some("success") {
            return Outcome::Complete { result };
        }
        let text = |k: &str| result.get(k).and_then(value_text);
        let reason = text("reason")
            .or_else(|| text("error"))
            .unwrap_or_else(|| "agent_reported_failure".into());
        let error = text("error").unwrap_or_else(|| reason.clone());
        Outcome::Failed { reason, error }
    }
}

/// One task the sidecar knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    /// The hub's latest lease on the task (never goes down).
    #[serde(default)]
    pub generation: u64,
    /// The first `task_assign` frame's text exactly as the hub sent it (what the agent got).
    pub raw: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Release>,
    pub agent: Agent,
    /// The outcome, once known (reported while held, kept aside otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// `routing_decision.target_type` and `.selected_model` of the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Milliseconds since the epoch: accepted, and last changed.
    #[serde(default)]
    pub accepted_at_ms: u64,
    #[serde(default)]
    pub changed_at_ms: u64,
    /// The latest lease: when the task was accepted, or pushed again and adopted since
    /// (`task_timeout_ms` counts from here). 0 in files written before it existed: then
    /// `accepted_at_ms`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_at_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TaskRecord {
    /// Where `task_timeout_ms` counts from: the latest lease.
    pub fn lease_start(&self) -> u64 {
        if self.lease_at_ms == 0 {
            self.accepted_at_ms
        } else {
            self.lease_at_ms
        }
    }

    /// What the task was doing, for `task_recovering`, `state_report` and `status`.
    pub fn status(&self) -> &'static str {
        if self.outcome.is_some() {
            return "finished";
        }
        match self.agent {
            Agent::NotWoken => "accepted",
            Agent::Waking { .. } | Agent::WakeFailed { .. } => "waking",
            Agent::Woken { .. } => "woken",
            Agent::Confirmed => "working",
            Agent::GaveUp => "finished",
        }
    }

    /// The frame's fields (the raw text was a JSON object when it was accepted).
    pub fn fields(&self) -> Map<String, Value> {
        serde_json::from_str(&self.raw).unwrap_or_default()
    }

    /// The task's `description` as text (empty when there is none).
    pub fn description(&self) -> String {
        self.fields()
            .get("description")
            .and_then(value_text)
            .unwrap_or_default()
    }

    /// Held and not finished: the task the agent slot is busy with.
    pub fn in_progress(&self) -> bool {
        self.role == Role::Held && self.outcome.is_none()
    }
}

/// The two reports that end a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    Complete,
    Failed,
}

impl ReportKind {
    pub fn wire_type(self) -> &'static str {
        match self {
            ReportKind::Complete => "task_complete",
            ReportKind::Failed => "task_failed",
        }
    }
}

/// A report kept until the hub answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub task_id: String,
    pub kind: ReportKind,
    /// The generation it is sent with: the task's latest when it was (re)stamped.
    pub generation: u64,
}

/// A report the hub refused for good: kept for the operator, never sent again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedReport {
    pub task_id: String,
    pub kind: ReportKind,
    pub generation: u64,
    /// The hub's `error` text.
    pub error: String,
    /// `validation_failed`'s `errors` details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub outcome: Outcome,
    pub at_ms: u64,
}

/// Everything in `queue_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    pub version: u32,
    /// Every task id the sidecar knows, oldest first.
    #[serde(default)]
    pub tasks: Vec<TaskRecord>,
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
    #[serde(default)]
    pub refused: Vec<RefusedReport>,
    /// The next wake attempt's id (ids are never reused, so a late completion of an old
    /// attempt cannot be taken for a new one).
    #[serde(default = "first_wake_id")]
    pub next_wake_id: u64,
}

fn first_wake_id() -> u64 {
    1
}

impl Default for QueueState {
    fn default() -> Self {
        QueueState {
            version: VERSION,
            tasks: Vec::new(),
            outbox: Vec::new(),
            refused: Vec::new(),
            next_wake_id: first_wake_id(),
        }
    }
}

impl QueueState {
    pub fn task(&self, task_id: &str) -> Option<&TaskRecord> {
        self.tasks.iter().find(|t| t.task_id == task_id)
    }

    pub fn task_mut(&mut self, task_id: &str) -> Option<&mut TaskRecord> {
        self.tasks.iter_mut().find(|t| t.task_id == task_id)
    }

    /// The held task the agent slot is busy with, if any.
    pub fn busy_with(&self) -> Option<&TaskRecord> {
        self.tasks.iter().find(|t| t.in_progress())
    }

    /// Reads a queue file's text: version 2, or version 1 converted.
    pub fn from_json(bytes: &[u8]) -> Result<QueueState, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let version = value.get("version").and_then(Value::as_u64).unwrap_or(1);
        match version {
            1 => serde_json::from_value::<v1::State>(value)
                .map(v1::State::upgrade)
                .map_err(|e| format!("version 1 queue file: {e}")),
            2 => serde_json::from_value(value).map_err(|e| e.to_string()),
            other => Err(format!(
                "queue file version {other} is newer than this release understands ({VERSION})"
            )),
        }
    }
}

/// The format of earlier releases: one active and one recovering task, and an outbox that
/// also held `task_accepted`.
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    pub struct State {
        #[serde(default)]
        active: Option<Task>,
        #[serde(default)]
        recovering: Option<Task>,
        #[serde(default)]
        outbox: Vec<Entry>,
    }

    #[derive(Deserialize)]
    struct Task {
        task_id: String,
        #[serde(default)]
        generation: Option<u64>,
        raw: String,
        #[serde(default)]
        woken: bool,
        #[serde(default)]
        confirmed: bool,
        #[serde(default)]
        accepted_at_ms: u64,
    }

    #[derive(Deserialize)]
    struct Entry {
        kind: String,
        task_id: String,
        #[serde(default)]
        generation: Option<u64>,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        error: Option<String>,
    }

    impl State {
        pub fn upgrade(self) -> QueueState {
            let mut state = QueueState::default();
            for (task, role) in [
                (self.recovering, Role::Recovering),
                (self.active, Role::Held),
            ] {
                let Some(t) = task else { continue };
                // A woken, unconfirmed task may have an agent: wait for its confirmation.
                let agent = match (t.woken, t.confirmed) {
                    (_, true) => Agent::Confirmed,
                    (true, false) => Agent::Woken {
                        wake_id: 0,
                        attempt: 1,
                    },
                    (false, false) => Agent::NotWoken,
                };
                state.tasks.push(TaskRecord {
                    task_id: t.task_id,
                    generation: t.generation.unwrap_or(0),
                    raw: t.raw,
                    role,
                    released: None,
                    agent,
                    outcome: None,
                    target_type: None,
                    model: None,
                    accepted_at_ms: t.accepted_at_ms,
                    changed_at_ms: t.accepted_at_ms,
                    lease_at_ms: 0,
                });
            }
            for e in self.outbox {
                let outcome = match e.kind.as_str() {
                    "task_complete" => match e.result {
                        Some(Value::Object(result)) => Outcome::Complete { result },
                        other => Outcome::Complete {
                            result: Map::from_iter([(
                                "output".to_string(),
                                other.unwrap_or(Value::Null),
                            )]),
                        },
                    },
                    "task_failed" => {
                        let reason = e.reason.unwrap_or_else(|| "failed".into());
                        Outcome::Failed {
                            error: e.error.unwrap_or_else(|| reason.clone()),
                            reason,
                        }
                    }
                    // An accept is announced again from the task itself.
                    _ => continue,
                };
                let generation = e.generation.unwrap_or(0);
                let kind = outcome.kind();
                match state.task_mut(&e.task_id) {
                    Some(t) => t.outcome = Some(outcome),
                    None => state.tasks.push(TaskRecord {
                        task_id: e.task_id.clone(),
                        generation,
                        raw: "{}".into(),
                        role: Role::Held,
                        released: None,
                        agent: Agent::GaveUp,
                        outcome: Some(outcome),
                        target_type: None,
                        model: None,
                        accepted_at_ms: 0,
                        changed_at_ms: 0,
                        lease_at_ms: 0,
                    }),
                }
                state.outbox.push(OutboxEntry {
                    task_id: e.task_id,
                    kind,
                    generation,
                });
            }
            state
        }
    }
}

/// How many levels `queue_file` puts around a stored result (`{"tasks":[{"outcome":{"result"`,
/// and the same under `refused`): a result may nest [`crate::result_file::MAX_DEPTH`] levels,
/// so the file nests at most that plus this, which must stay below serde_json's limit of 128
/// for the file to load again (checked by a test below).
pub const RESULT_WRAPPING: usize = 4;

/// A value the hub sent that is kept in `queue_file` (a refusal's `errors`): kept as it is
/// when it nests no deeper than a result may, else as its JSON text (a string), so that
/// nothing the hub sends can make the queue file unreadable.
pub fn bounded(value: Value) -> Value {
    if crate::result_file::depth(&value) <= crate::result_file::MAX_DEPTH {
        value
    } else {
        Value::String(value.to_string())
    }
}

/// A JSON value as text: a string as it is, null as nothing, anything else as JSON.
pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_that_could_escape_a_directory_are_invalid() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a b",
            "x\0",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!valid_task_id(bad), "{bad:?} accepted");
        }
        for good in ["task-abc", "T.1_2-3", "..x", &"a".repeat(128)] {
            assert!(valid_task_id(good), "{good:?} refused");
        }
    }

    #[test]
    fn windows_device_names_are_recognised_before_the_first_dot_in_any_case() {
        for device in [
            "CON",
            "nul",
            "Aux.x",
            "prn.tar.gz",
            "COM1",
            "lpt9.json",
            "com0",
        ] {
            assert!(is_windows_device_name(device), "{device}");
        }
        for name in [
            "CONS", "nul-1", "COM", "COM10", "LPTX", "xcon", "a.CON", "task-1",
        ] {
            assert!(!is_windows_device_name(name), "{name}");
        }
        // Refused as task ids on Windows only.
        assert_eq!(valid_task_id("NUL"), !cfg!(windows));
    }

    #[test]
    fn result_objects_map_to_outcomes() {
        let obj = |v: Value| v.as_object().cloned().unwrap();
        assert!(matches!(
            Outcome::from_result(obj(serde_json::json!({"status": "success", "output": 1}))),
            Outcome::Complete { .. }
        ));
        assert_eq!(
            Outcome::from_result(obj(
                serde_json::json!({"status": "failed", "error": "boom"})
            )),
            Outcome::Failed {
                reason: "boom".into(),
                error: "boom".into()
            }
        );
        assert_eq!(
            Outcome::from_result(obj(serde_json::json!({"status": "x", "reason": {"a": 1}}))),
            Outcome::Failed {
                reason: "{\"a\":1}".into(),
                error: "{\"a\":1}".into()
            }
        );
        assert_eq!(
            Outcome::from_result(obj(serde_json::json!({}))),
            Outcome::Failed {
                reason: "agent_reported_failure".into(),
                error: "agent_reported_failure".into()
            }
        );
    }

    #[test]
    fn version_1_files_are_converted() {
        let v1 = r#"{"version":1,
            "active":{"task_id":"t2","generation":3,"raw":"{}","woken":true,"confirmed":false,"accepted_at_ms":5},
            "recovering":{"task_id":"t1","raw":"{}","woken":true,"confirmed":true},
            "outbox":[{"kind":"task_accepted","task_id":"t2","generation":3},
                      {"kind":"task_failed","task_id":"t0","reason":"wake_failed"}]}"#;
        let s = QueueState::from_json(v1.as_bytes()).unwrap();
        assert_eq!(s.version, VERSION);
        let ids: Vec<_> = s.tasks.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(ids, ["t1", "t2", "t0"]);
        assert_eq!(s.task("t1").unwrap().role, Role::Recovering);
        assert_eq!(s.task("t1").unwrap().agent, Agent::Confirmed);
        assert_eq!(s.task("t2").unwrap().generation, 3);
        assert!(matches!(s.task("t2").unwrap().agent, Agent::Woken { .. }));
        assert_eq!(s.outbox.len(), 1, "accepts are not kept in the outbox");
        assert_eq!(s.outbox[0].kind, ReportKind::Failed);
        assert!(QueueState::from_json(br#"{"version":9}"#).is_err());
        assert!(QueueState::from_json(b"{\"active\": tru").is_err());
    }

    /// An object nested `levels` deep.
    fn nested(levels: usize) -> Map<String, Value> {
        let mut v = serde_json::json!({"status": "success"});
        for _ in 1..levels {
            v = serde_json::json!({ "d": v });
        }
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_deepest_result_an_agent_may_write_loads_again_wherever_it_is_kept() {
        use crate::result_file::{depth, MAX_DEPTH};
        const { assert!(MAX_DEPTH + RESULT_WRAPPING < 128) };
        let result = nested(MAX_DEPTH);
        assert_eq!(depth(&Value::Object(result.clone())), MAX_DEPTH);
        let outcome = Outcome::Complete { result };
        let mut s = QueueState::default();
        s.tasks.push(TaskRecord {
            task_id: "t".into(),
            generation: 1,
            raw: "{}".into(),
            role: Role::Released,
            released: Some(Release::Refused),
            agent: Agent::Confirmed,
            outcome: Some(outcome.clone()),
            target_type: None,
            model: None,
            accepted_at_ms: 1,
            changed_at_ms: 2,
            lease_at_ms: 0,
        });
        // The hub's `errors` of a refusal may nest as deep as a frame can: kept as text.
        let deep_details = Value::Object(nested(125));
        let details = bounded(deep_details.clone());
        assert_eq!(details, Value::String(deep_details.to_string()));
        assert_eq!(
            bounded(Value::Object(nested(MAX_DEPTH))),
            Value::Object(nested(MAX_DEPTH))
        );
        s.refused.push(RefusedReport {
            task_id: "t".into(),
            kind: ReportKind::Complete,
            generation: 1,
            error: "validation_failed".into(),
            details: Some(details),
            outcome,
            at_ms: 3,
        });
        let text = serde_json::to_vec(&s).unwrap();
        assert_eq!(QueueState::from_json(&text).unwrap(), s);
        // What the wrapping is: one level more and the file would not load.
        let mut too_deep = s.clone();
        too_deep.tasks[0].outcome = Some(Outcome::Complete {
            result: nested(128 - RESULT_WRAPPING),
        });
        let text = serde_json::to_vec(&too_deep).unwrap();
        assert!(QueueState::from_json(&text)
            .unwrap_err()
            .contains("recursion limit"));
    }

    #[test]
    fn state_round_trips() {
        let mut s = QueueState::default();
        s.tasks.push(TaskRecord {
            task_id: "t".into(),
            generation: 2,
            raw: "{\"x\":1}".into(),
            role: Role::Released,
            released: Some(Release::Aborted),
            agent: Agent::WakeFailed {
                wake_id: 4,
                attempt: 2,
                error: "exit code 3".into(),
            },
            outcome: Some(Outcome::Failed {
                reason: "r".into(),
                error: "e".into(),
            }),
            target_type: Some("ollama".into()),
            model: None,
            accepted_at_ms: 1,
            changed_at_ms: 2,
            lease_at_ms: 0,
        });
        let text = serde_json::to_vec(&s).unwrap();
        assert_eq!(QueueState::from_json(&text).unwrap(), s);
    }
}
