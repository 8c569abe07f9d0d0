//! What goes into the task machine and what comes out of it: [`Event`]s in (hub frames,
//! agent files seen, wake outcomes, timers, write completions), [`Effect`]s out (writes,
//! frames, wakes, timers, log lines). Plain values: the QueueActor turns effects into I/O and
//! feeds the outcomes back as events; the tests feed events by hand.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::model::{QueueState, ReportKind};
use crate::config::LogLevel;
use crate::protocol::Outgoing;

/// Something that happened, as the machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A hub session was identified.
    SessionUp {
        session: u64,
    },
    /// That session ended (however).
    SessionDown {
        session: u64,
    },
    Assign(Assign),
    /// `task_continue`: the hub still has the task assigned.
    Continue {
        task_id: String,
        generation: u64,
    },
    /// `task_reassign`: the hub no longer has it assigned to us.
    Reassign {
        task_id: String,
    },
    Cancelled {
        task_id: String,
    },
    /// `state_report_ack` to our `state_report` of `task_id` at `generation`.
    StateReportAnswered {
        task_id: String,
        generation: u64,
        action: String,
    },
    /// The hub's answer to one of our reports (`task_complete`, `task_failed`).
    ReportAnswered {
        task_id: String,
        kind: ReportKind,
        generation: u64,
        answer: Answer,
    },
    /// `<task_id>.started` exists.
    StartedSeen {
        task_id: String,
    },
    /// `<task_id>.json` was read: the object, or why it is not a valid result.
    ResultSeen {
        task_id: String,
        result: Result<Map<String, Value>, String>,
    },
    /// A line of `<task_id>.progress`.
    AgentProgress {
        task_id: String,
        progress: Option<i64>,
        event: Map<String, Value>,
    },
    /// The lines of `<task_id>.progress` read in one go have all been given
    /// ([`Event::AgentProgress`]): answered with [`Effect::ProgressFlow`].
    AgentProgressRead {
        task_id: String,
    },
    /// A wake attempt's command ended (or could not start).
    WakeExited {
        task_id: String,
        wake_id: u64,
        attempt: u32,
        outcome: WakeOutcome,
    },
    Timer(Timer),
    /// The write with this sequence number is durable.
    Persisted {
        seq: u64,
    },
    PersistFailed {
        seq: u64,
        error: String,
    },
    /// The orderly shutdown began: no new task is taken.
    ShutdownBegun,
    /// The waker restarted: the attempts it ran are out of sight (their outcome will never
    /// be reported); each gets a confirmation window instead, as after a restart.
    WakerRestarted,
    /// The hub asked for a restart (`restart_sidecar`): it happens once no task is in
    /// progress and every report is answered, or after `restart_wait`.
    RestartRequested {
        reason: String,
    },
}

/// A `task_assign`, as far as the machine needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    pub task_id: String,
    pub generation: u64,
    /// The frame's text exactly as sent.
    pub raw: String,
    pub target_type: Option<String>,
    pub model: Option<String>,
}

/// The hub's answer to a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `task_ack` with this status.
    Acked { status: String },
    /// An error that answers it (`task_complete_failed: …`, `validation_failed`, …).
    Refused {
        error: String,
        details: Option<Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeOutcome {
    Success,
    Failed(String),
    /// Still running after `wake_timeout`: its process group was killed.
    TimedOut(String),
}

/// A timer the machine armed; when it fires it comes back as [`Event::Timer`]. Each carries
/// what it was armed for, so a stale one (its task or attempt moved on) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Wait for `.started` after wake attempt `wake_id` (or after a restart found it).
    Confirmation { task_id: String, wake_id: u64 },
    /// Retry after failed attempt `wake_id`.
    WakeRetry { task_id: String, wake_id: u64 },
    /// A task whose agent starts by itself (no wake command) has not confirmed within the
    /// confirmation timeout of its lease at `lease_at_ms`.
    SelfStart { task_id: String, lease_at_ms: u64 },
    /// `task_timeout`: the held task leased at `lease_at_ms` (accepted, or pushed again and
    /// adopted) has run too long.
    TaskTimeout { task_id: String, lease_at_ms: u64 },
    /// Tell the hub the held tasks are alive (`task_progress`).
    Progress { session: u64 },
    /// Send the agent's next progress event that had to wait.
    AgentProgress { task_id: String },
    /// Try the failed write again.
    WriteRetry { seq: u64 },
    /// The longest a requested restart waits for the task in progress.
    RestartDeadline,
}

/// One file operation done with a write, in order, around the queue file's replacement. Its
/// `Debug` shows the operation and the path, never the bytes (task data stays out of logs).
#[derive(Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Atomically replaces `path` with `bytes` (owner-only).
    Write { path: PathBuf, bytes: Vec<u8> },
    /// Removes `path` if it exists.
    Remove(PathBuf),
    /// Sets `from` aside as `to`, if `from` exists, never over a file kept there before:
    /// `to.1` … `to.9` are taken in turn, and only when all ten are taken is `to.9`
    /// replaced (see [`super::store::KEPT_ASIDE`]).
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
    pub fn written_path(&self) -> Option<&std::path::Path> {
        match self {
            FileOp::Write { path, .. } => Some(path),
            FileOp::Rename { to, .. } => Some(to),
            FileOp::Remove(_) => None,
        }
    }
}

/// Write this state (sequence `seq`), with file work `before` and `after` it.
#[derive(Debug, Clone, PartialEq)]
pub struct Persist {
    pub seq: u64,
    pub state: QueueState,
    pub before: Vec<FileOp>,
    pub after: Vec<FileOp>,
}

/// Start the agent for a task: one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct WakeOrder {
    pub wake_id: u64,
    pub attempt: u32,
    pub task_id: String,
    pub raw: String,
    /// The task's `description` as text (empty when there is none).
    pub description: String,
    /// `TASK_FILE`, and where the command's output goes.
    pub task_file: std::path::PathBuf,
    pub output_file: std::path::PathBuf,
    pub target_type: Option<String>,
    pub model: Option<String>,
}

/// A log line: the actor writes it with `log_event!`.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub level: LogLevel,
    pub event: &'static str,
    pub fields: Vec<(&'static str, Value)>,
}

impl Note {
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// What the machine asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Persist(Persist),
    /// Send on the identified session `session` (dropped if it is gone).
    Send {
        session: u64,
        frame: Outgoing,
    },
    Wake(WakeOrder),
    /// Kill attempt `wake_id`'s process group if its command still runs.
    KillWake {
        wake_id: u64,
    },
    /// The agent confirmed: attempt `wake_id` must never be killed by its timeout.
    WakeConfirmed {
        wake_id: u64,
    },
    Arm {
        timer: Timer,
        after: Duration,
    },
    /// Whether more of `<task_id>.progress` may be read now (`open`), or reading waits until
    /// the events already read have gone out (back-pressure; a later `open` resumes it).
    ProgressFlow {
        task_id: String,
        open: bool,
    },
    /// Look at the results directory again (files there may matter now): one task's files,
    /// or all of them.
    Rescan {
        task_id: Option<String>,
    },
    Log(Note),
    /// The task list changed (for status and metrics).
    Changed,
    /// A task left the sidecar's hands: `complete`, `failed`, `rejected`, `cancelled`,
    /// `aborted`, `refused`, `reassigned`.
    Ended {
        task_id: String,
        outcome: &'static str,
    },
    /// Restart the process now (the hub asked; nothing is in progress, or the wait is over).
    Restart {
        reason: String,
    },
    /// Identify again on the session: the hub's idea of this agent is stale (it keeps an
    /// agent whose report it refused marked working, and schedules nothing to it).
    Reidentify {
        session: u64,
        reason: &'static str,
    },
}
