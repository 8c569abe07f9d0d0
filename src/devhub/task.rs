//! One task as the hub's queue keeps it: its fields as submitted (with the hub's defaults),
//! its complexity, routing decision, status, generation and history (newest first, capped at
//! 50), and how `GET /api/tasks/:id` shows it. The transitions are the queue's
//! ([`TaskQueue`](super::queue::TaskQueue)).

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::queue::Status;
use super::routing::{Complexity, Decision, Tier};

const HISTORY_CAP: usize = 50;

#[derive(Clone, Debug)]
pub(crate) struct Task {
    pub id: String,
    pub description: String,
    pub metadata: Value,
    pub priority: i64,
    pub status: Status,
    pub assigned_to: Option<String>,
    pub assigned_at: Option<u64>,
    pub generation: u64,
    pub retry_count: i64,
    pub max_retries: i64,
    pub complete_by: Option<i64>,
    pub needed_capabilities: Vec<String>,
    pub result: Value,
    pub tokens_used: Value,
    pub last_error: Value,
    pub submitted_by: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// `updated_at` on the monotonic clock: what the stuck sweep compares.
    pub touched: Instant,
    /// Newest first: (event, time, details).
    pub history: Vec<(&'static str, u64, Value)>,
    pub fields: Enrichment,
    pub complexity: Complexity,
    pub routing_decision: Option<Decision>,
    pub verification_report: Value,
    pub verification_history: Value,
    pub depends_on: Vec<String>,
    /// `assign_to`, or the metadata's `assign_to`.
    pub assign_to: Option<String>,
    /// Submission order: breaks ties of priority and creation time.
    pub seq: u64,
}

/// The fields a task carries for the agent, as submitted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Enrichment {
    pub repo: Value,
    pub branch: Value,
    pub file_hints: Value,
    pub success_criteria: Value,
    pub verification_steps: Value,
    pub max_verification_retries: i64,
    pub skip_verification: Value,
    pub verification_timeout_ms: Value,
    pub goal_id: Value,
}

/// `POST /api/tasks`'s body (already validated) → a new queued task, with the hub's defaults:
/// priority `normal`, 3 retries, `max_verification_retries` at most 5 (and 5 when absent:
/// the hub takes `min(nil, 5)`, and in Erlang's term order a number is smaller than `nil`).
pub(crate) fn new_task(
    body: &Map<String, Value>,
    submitted_by: &str,
    now_ms: u64,
    now: Instant,
) -> Task {
    let get = |key: &str| body.get(key).filter(|v| !v.is_null());
    let text = |key: &str| get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let list = |key: &str| get(key).cloned().unwrap_or_else(|| json!([]));
    let strings = |key: &str| -> Vec<String> {
        let items = get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let priority = match get("priority").and_then(Value::as_str).unwrap_or("normal") {
        "urgent" => 0,
        "high" => 1,
        "low" => 3,
        _ => 2,
    };
    let repo = match get("repo").and_then(Value::as_str) {
        Some(url) if !url.is_empty() => {
            let url = url.trim().trim_end_matches('/');
            Value::from(url.strip_suffix(".git").unwrap_or(url))
        }
        _ => Value::Null,
    };
    let metadata = get("metadata").cloned().unwrap_or_else(|| json!({}));
    let assign_to = get("assign_to")
        .or_else(|| metadata.get("assign_to"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let fields = Enrichment {
        repo,
        branch: get("branch").cloned().unwrap_or(Value::Null),
        file_hints: list("file_hints"),
        success_criteria: list("success_criteria"),
        verification_steps: list("verification_steps"),
        max_verification_retries: get("max_verification_retries")
            .and_then(Value::as_i64)
            .map_or(5, |n| n.min(5)),
        skip_verification: get("skip_verification").cloned().unwrap_or(Value::Null),
        verification_timeout_ms: get("verification_timeout_ms")
            .cloned()
            .unwrap_or(Value::Null),
        goal_id: get("goal_id").cloned().unwrap_or(Value::Null),
    };
    let description = text("description");
    let complexity = Complexity::build(
        &description,
        &fields.file_hints,
        &fields.verification_steps,
        get("complexity_tier").and_then(Value::as_str),
    );
    Task {
        id: format!("task-{:016x}", fastrand::u64(..)),
        description,
        metadata,
        priority,
        status: Status::Queued,
        assigned_to: None,
        assigned_at: None,
        generation: 0,
        retry_count: 0,
        max_retries: get("max_retries").and_then(Value::as_i64).unwrap_or(3),
        complete_by: get("complete_by").and_then(Value::as_i64),
        needed_capabilities: strings("needed_capabilities"),
        result: Value::Null,
        tokens_used: Value::Null,
        last_error: Value::Null,
        submitted_by: submitted_by.to_string(),
        created_at: now_ms,
        updated_at: now_ms,
        touched: now,
        history: vec![("queued", now_ms, json!("submitted"))],
        fields,
        complexity,
        routing_decision: None,
        verification_report: Value::Null,
        verification_history: json!([]),
        depends_on: strings("depends_on"),
        assign_to,
        seq: 0,
    }
}

impl Task {
    pub(crate) fn push_history(&mut self, event: &'static str, at: u64, details: Value) {
        self.history.insert(0, (event, at, details));
        self.history.truncate(HISTORY_CAP);
    }

    /// Back to the queue with the next generation.
    pub(crate) fn requeue(&mut self, now_ms: u64, now: Instant) {
        self.status = Status::Queued;
        self.assigned_to = None;
        self.assigned_at = None;
        self.generation += 1;
        self.updated_at = now_ms;
        self.touched = now;
    }

    /// Trivial tasks are spared by the queued-task TTL sweep.
    pub fn is_trivial(&self) -> bool {
        self.complexity.effective == Tier::Trivial
    }

    /// As `GET /api/tasks/:id` shows it.
    pub fn to_json(&self) -> Value {
        let history: Vec<Value> = self
            .history
            .iter()
            .map(
                |(event, at, details)| json!({"event": event, "timestamp": at, "details": details}),
            )
            .collect();
        let f = &self.fields;
        json!({
            "id": self.id, "description": self.description, "metadata": self.metadata,
            "priority": self.priority, "status": self.status.name(),
            "assigned_to": self.assigned_to, "assigned_at": self.assigned_at,
            "generation": self.generation, "retry_count": self.retry_count,
            "max_retries": self.max_retries, "needed_capabilities": self.needed_capabilities,
            "last_error": self.last_error, "complete_by": self.complete_by,
            "result": self.result, "tokens_used": self.tokens_used,
            "submitted_by": self.submitted_by, "created_at": self.created_at,
            "updated_at": self.updated_at, "history": history,
            "repo": f.repo, "branch": f.branch, "file_hints": f.file_hints,
            "success_criteria": f.success_criteria, "verification_steps": f.verification_steps,
            "complexity": self.complexity.to_json(),
            "verification_report": self.verification_report,
            "verification_history": self.verification_history,
            "max_verification_retries": f.max_verification_retries,
            "routing_decision": self.routing_decision.as_ref().map(Decision::to_json),
            "depends_on": self.depends_on, "goal_id": f.goal_id,
        })
    }
}
