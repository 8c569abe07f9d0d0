//! The task queue's data and its file: at most one active task, one recovering task (from
//! before a crash), and the outbox of lifecycle frames the hub has not acknowledged yet.
//!
//! Pure data and blocking file work; the QueueActor owns the one instance and decides what
//! happens. The file is replaced atomically (temporary file, fsync, rename, directory
//! fsync) so a crash leaves either the old or the new state, never a torn one. A file that
//! does not parse is moved aside, never deleted.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::Outgoing;

/// Task ids become file names: `^[A-Za-z0-9._-]{1,128}$`, and not `.` or `..`.
pub fn valid_task_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One task, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    #[serde(default)]
    pub generation: Option<u64>,
    /// The `task_assign` frame's text exactly as the hub sent it (every field kept).
    pub raw: String,
    /// The wake command has succeeded.
    #[serde(default)]
    pub woken: bool,
    /// The agent confirmed its start (`<task_id>.started`).
    #[serde(default)]
    pub confirmed: bool,
    /// Milliseconds since the epoch when it was accepted.
    #[serde(default)]
    pub accepted_at_ms: u64,
}

impl TaskRecord {
    /// What the task was doing, for `task_recovering`.
    pub fn last_status(&self) -> &'static str {
        match (self.woken, self.confirmed) {
            (_, true) => "working",
            (true, false) => "woken",
            (false, false) => "accepted",
        }
    }

    /// The frame's fields (the raw text was a JSON object when it was accepted).
    pub fn fields(&self) -> Map<String, Value> {
        serde_json::from_str(&self.raw).unwrap_or_default()
    }

    /// The description as text, for `TASK_DESCRIPTION`.
    pub fn description_text(&self) -> String {
        match self.fields().remove("description") {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => String::new(),
            Some(other) => other.to_string(),
        }
    }
}

/// What kind of lifecycle frame an outbox entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxKind {
    TaskAccepted,
    TaskComplete,
    TaskFailed,
}

impl OutboxKind {
    /// Which entries a `task_ack` with this `status` removes.
    pub fn acked_by(status: &str) -> Option<OutboxKind> {
        match status {
            "accepted" => Some(OutboxKind::TaskAccepted),
            "complete" => Some(OutboxKind::TaskComplete),
            "failed" | "retried" | "dead_letter" => Some(OutboxKind::TaskFailed),
            _ => None,
        }
    }
}

/// A lifecycle frame kept until the hub acknowledges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub kind: OutboxKind,
    pub task_id: String,
    #[serde(default)]
    pub generation: Option<u64>,
    /// `task_complete`: the agent's result object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// `task_failed`: the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `task_failed`: the detail sent as `error` (defaults to the reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OutboxEntry {
    pub fn frame(&self) -> Outgoing {
        let task_id = self.task_id.clone();
        let generation = self.generation;
        match self.kind {
            OutboxKind::TaskAccepted => Outgoing::TaskAccepted {
                task_id,
                generation,
            },
            OutboxKind::TaskComplete => Outgoing::TaskComplete {
                task_id,
                result: self.result.clone().unwrap_or(Value::Null),
                generation,
            },
            OutboxKind::TaskFailed => {
                let reason = self.reason.clone().unwrap_or_else(|| "failed".into());
                Outgoing::TaskFailed {
                    task_id,
                    error: self.error.clone().unwrap_or_else(|| reason.clone()),
                    reason,
                    generation,
                }
            }
        }
    }
}

/// Everything in `queue_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    #[serde(default = "version")]
    pub version: u32,
    #[serde(default)]
    pub active: Option<TaskRecord>,
    #[serde(default)]
    pub recovering: Option<TaskRecord>,
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
}

fn version() -> u32 {
    1
}

impl Default for QueueState {
    fn default() -> Self {
        QueueState {
            version: version(),
            active: None,
            recovering: None,
            outbox: Vec::new(),
        }
    }
}

/// What reading `queue_file` found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a first start.
    Missing,
    Found(QueueState),
    /// The file did not parse; it was moved to `moved_to`.
    Corrupt {
        moved_to: PathBuf,
        error: String,
    },
}

/// Reads the queue file; a file that does not parse is renamed
/// `<name>.corrupt-<unix seconds>` and reported, never deleted.
pub fn load(path: &Path) -> std::io::Result<Loaded> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<QueueState>(&bytes) {
        Ok(state) => Ok(Loaded::Found(state)),
        Err(e) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".corrupt-{stamp}"));
            let moved_to = path.with_file_name(name);
            std::fs::rename(path, &moved_to)?;
            Ok(Loaded::Corrupt {
                moved_to,
                error: e.to_string(),
            })
        }
    }
}

/// One file operation done by the writer, in order, around the queue file's replacement.
/// Its `Debug` shows the operation and the path, never the bytes (task data stays out of
/// the log).
#[derive(Clone)]
pub enum FileOp {
    /// Atomically replaces `path` with `bytes`.
    Write { path: PathBuf, bytes: Vec<u8> },
    /// Removes `path` if it exists.
    Remove(PathBuf),
    /// Renames, if `from` exists.
    Rename { from: PathBuf, to: PathBuf },
}

impl std::fmt::Debug for FileOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileOp::Write { path, bytes } => {
                write!(f, "write {} ({} bytes)", path.display(), bytes.len())
            }
            FileOp::Remove(path) => write!(f, "remove {}", path.display()),
            FileOp::Rename { from, to } => {
                write!(f, "rename {} to {}", from.display(), to.display())
            }
        }
    }
}

impl FileOp {
    /// The file this operation creates or replaces.
    pub fn written_path(&self) -> Option<&Path> {
        match self {
            FileOp::Write { path, .. } => Some(path),
            FileOp::Rename { to, .. } => Some(to),
            FileOp::Remove(_) => None,
        }
    }

    pub fn run(&self) -> std::io::Result<()> {
        let ignore_missing = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        match self {
            FileOp::Write { path, bytes } => write_atomic(path, bytes),
            FileOp::Remove(path) => ignore_missing(std::fs::remove_file(path)),
            FileOp::Rename { from, to } => ignore_missing(std::fs::rename(from, to)),
        }
    }
}

/// Temporary file, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = atomic_write_file::AtomicWriteFile::open(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Why a durable step did not fully succeed.
#[derive(Debug)]
pub enum StepError {
    /// Nothing of the step is certain to be on disk: retry it.
    NotSaved(String),
    /// The state is durable; only the cleanup after it failed (logged, not retried).
    CleanupFailed(String),
}

/// One durable step: `before`, then the queue file, then `after`. Blocking: run it off the
/// event loop.
pub fn write_step(
    queue_file: &Path,
    snapshot: &[u8],
    before: &[FileOp],
    after: &[FileOp],
) -> Result<(), StepError> {
    for op in before {
        op.run()
            .map_err(|e| StepError::NotSaved(format!("{op:?}: {e}")))?;
    }
    write_atomic(queue_file, snapshot)
        .map_err(|e| StepError::NotSaved(format!("{}: {e}", queue_file.display())))?;
    let failed: Vec<String> = after
        .iter()
        .filter_map(|op| op.run().err().map(|e| format!("{op:?}: {e}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(StepError::CleanupFailed(failed.join("; ")))
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
    fn acks_match_outbox_kinds_as_the_protocol_says() {
        assert_eq!(
            OutboxKind::acked_by("accepted"),
            Some(OutboxKind::TaskAccepted)
        );
        assert_eq!(
            OutboxKind::acked_by("complete"),
            Some(OutboxKind::TaskComplete)
        );
        for s in ["failed", "retried", "dead_letter"] {
            assert_eq!(OutboxKind::acked_by(s), Some(OutboxKind::TaskFailed));
        }
        assert_eq!(OutboxKind::acked_by("bogus"), None);
    }

    #[test]
    fn state_round_trips_and_a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        assert!(matches!(load(&path).unwrap(), Loaded::Missing));
        let state = QueueState {
            version: 1,
            active: Some(TaskRecord {
                task_id: "t1".into(),
                generation: Some(3),
                raw: r#"{"type":"task_assign","task_id":"t1","repo":"r"}"#.into(),
                woken: true,
                confirmed: false,
                accepted_at_ms: 1,
            }),
            recovering: None,
            outbox: vec![OutboxEntry {
                kind: OutboxKind::TaskFailed,
                task_id: "t0".into(),
                generation: None,
                result: None,
                reason: Some("wake_failed".into()),
                error: None,
            }],
        };
        write_step(&path, &serde_json::to_vec(&state).unwrap(), &[], &[]).unwrap();
        match load(&path).unwrap() {
            Loaded::Found(s) => assert_eq!(s, state),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "{\"active\": tru").unwrap();
        let Loaded::Corrupt { moved_to, .. } = load(&path).unwrap() else {
            panic!()
        };
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_to_string(moved_to).unwrap(),
            "{\"active\": tru"
        );
    }

    #[test]
    fn failed_frames_carry_both_reason_and_error() {
        let e = OutboxEntry {
            kind: OutboxKind::TaskFailed,
            task_id: "t".into(),
            generation: Some(2),
            result: None,
            reason: Some("invalid_result".into()),
            error: None,
        };
        let v: Value = serde_json::from_str(&e.frame().encode().unwrap()).unwrap();
        assert_eq!(
            (
                v["reason"].as_str(),
                v["error"].as_str(),
                v["generation"].as_u64()
            ),
            (Some("invalid_result"), Some("invalid_result"), Some(2))
        );
    }
}
