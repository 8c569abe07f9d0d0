//! The hub's task queue, as its `TaskQueue` keeps it: tasks with an id `task-<16 hex>`, a
//! priority lane (urgent 0, high 1, normal 2, low 3; first come first served within one), a
//! status (`queued`, `assigned`, `completed`; `dead_letter` ones kept apart, where reports no
//! longer find them), the agent it is assigned to, and a **generation** that every assignment
//! and every take-back (reclaim, retry) bumps and that reports must match. A failure is
//! retried until `max_retries` failures, then dead-lettered. History is newest first, capped
//! at 50 entries. Pure value: the caller passes the time; scheduling, timers and pushes are
//! elsewhere.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::routing::Decision;
pub(crate) use super::task::{new_task, Task};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Queued,
    Assigned,
    Completed,
    DeadLetter,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Assigned => "assigned",
            Status::Completed => "completed",
            Status::DeadLetter => "dead_letter",
        }
    }
}

/// Why a report (complete, fail) is refused: `task_complete_failed: <this>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    StaleGeneration,
    InvalidState,
    NotFound,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::StaleGeneration => "stale_generation",
            Refusal::InvalidState => "invalid_state",
            Refusal::NotFound => "not_found",
        }
    }
}

/// What an accepted failure report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    Retried,
    DeadLetter,
}

/// The answer to `task_recovering`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Assigned (to anyone): continue at this generation.
    Continue(u64),
    Reassign,
}

#[derive(Debug, Default)]
pub(crate) struct TaskQueue {
    tasks: HashMap<String, Task>,
    dead: HashMap<String, Task>,
    next_seq: u64,
}

impl TaskQueue {
    pub fn submit(&mut self, mut task: Task) -> &Task {
        task.seq = self.next_seq;
        self.next_seq += 1;
        let id = task.id.clone();
        self.tasks.entry(id).or_insert(task)
    }

    /// A task by id, dead-lettered ones included.
    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).or_else(|| self.dead.get(id))
    }

    pub fn all(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().chain(self.dead.values())
    }

    /// Queued tasks, in scheduling order.
    pub fn queued(&self) -> Vec<&Task> {
        let mut queued: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| t.status == Status::Queued)
            .collect();
        queued.sort_by_key(|t| (t.priority, t.created_at, t.seq));
        queued
    }

    /// Assigned tasks, oldest submission first.
    pub fn assigned(&self) -> Vec<&Task> {
        let mut assigned: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| t.status == Status::Assigned)
            .collect();
        assigned.sort_by_key(|t| t.seq);
        assigned
    }

    /// The first task still assigned to `agent_id`, if any.
    pub fn assigned_to(&self, agent_id: &str) -> Option<String> {
        let assigned = self.assigned();
        let task = assigned
            .into_iter()
            .find(|t| t.assigned_to.as_deref() == Some(agent_id))?;
        Some(task.id.clone())
    }

    pub fn store_decision(&mut self, id: &str, decision: Decision) {
        if let Some(task) = self.tasks.get_mut(id) {
            task.routing_decision = Some(decision);
        }
    }

    /// Assigns a queued task: the next generation.
    pub fn assign(&mut self, id: &str, agent_id: &str, now_ms: u64, now: Instant) -> Option<&Task> {
        let task = self
            .tasks
            .get_mut(id)
            .filter(|t| t.status == Status::Queued)?;
        task.status = Status::Assigned;
        task.assigned_to = Some(agent_id.to_string());
        task.assigned_at = Some(now_ms);
        task.generation += 1;
        task.updated_at = now_ms;
        task.touched = now;
        let details = json!({"agent_id": agent_id, "generation": task.generation});
        task.push_history("assigned", now_ms, details);
        Some(task)
    }

    /// Refreshes an assigned task's last sign of life (any agent's report does).
    pub fn touch(&mut self, id: &str, now_ms: u64, now: Instant) {
        if let Some(task) = self
            .tasks
            .get_mut(id)
            .filter(|t| t.status == Status::Assigned)
        {
            task.updated_at = now_ms;
            task.touched = now;
        }
    }

    fn fenced(&mut self, id: &str, generation: i64) -> Result<&mut Task, Refusal> {
        let task = self.tasks.get_mut(id).ok_or(Refusal::NotFound)?;
        match task.status {
            Status::Assigned if i64::try_from(task.generation) == Ok(generation) => Ok(task),
            Status::Assigned => Err(Refusal::StaleGeneration),
            _ => Err(Refusal::InvalidState),
        }
    }

    /// `task_complete` at `generation`.
    pub fn complete(
        &mut self,
        id: &str,
        generation: i64,
        report: &Map<String, Value>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let task = self.fenced(id, generation)?;
        let result = report
            .get("result")
            .cloned()
            .filter(|r| !r.is_null())
            .unwrap_or_else(|| json!({}));
        let tokens_used = report
            .get("tokens_used")
            .cloned()
            .filter(|t| !t.is_null())
            .or_else(|| result.get("tokens_used").cloned())
            .unwrap_or(Value::Null);
        task.status = Status::Completed;
        task.result = result;
        task.tokens_used = tokens_used.clone();
        task.verification_report = report
            .get("verification_report")
            .cloned()
            .unwrap_or(Value::Null);
        task.verification_history = match report.get("verification_history") {
            Some(list @ Value::Array(_)) => list.clone(),
            _ => json!([]),
        };
        task.updated_at = now_ms;
        task.push_history("completed", now_ms, json!({"tokens_used": tokens_used}));
        Ok(())
    }

    /// `task_failed` at `generation`: retried (queued, next generation) or dead-lettered.
    pub fn fail(
        &mut self,
        id: &str,
        generation: i64,
        error: &str,
        now_ms: u64,
        now: Instant,
    ) -> Result<Failed, Refusal> {
        let task = self.fenced(id, generation)?;
        task.retry_count += 1;
        task.last_error = Value::from(error);
        if task.retry_count >= task.max_retries {
            task.status = Status::DeadLetter;
            task.updated_at = now_ms;
            task.push_history("dead_letter", now_ms, Value::from(error));
            if let Some(task) = self.tasks.remove(id) {
                self.dead.insert(task.id.clone(), task);
            }
            Ok(Failed::DeadLetter)
        } else {
            task.requeue(now_ms, now);
            task.push_history("retry", now_ms, Value::from(error));
            Ok(Failed::Retried)
        }
    }

    /// `task_recovering`.
    pub fn recover(&self, id: &str) -> Recovery {
        match self.tasks.get(id) {
            Some(task) if task.status == Status::Assigned => Recovery::Continue(task.generation),
            _ => Recovery::Reassign,
        }
    }

    /// Takes an assigned task back to the queue (next generation); its previous agent and new
    /// generation, or `None` if it is not assigned.
    pub fn reclaim(
        &mut self,
        id: &str,
        why: &'static str,
        now_ms: u64,
        now: Instant,
    ) -> Option<(String, u64)> {
        let task = self
            .tasks
            .get_mut(id)
            .filter(|t| t.status == Status::Assigned)?;
        let agent = task.assigned_to.clone().unwrap_or_default();
        task.requeue(now_ms, now);
        task.push_history("reclaimed", now_ms, Value::from(why));
        Some((agent, task.generation))
    }

    /// Removes a task whatever its status (the hub's `cancel_task`).
    pub fn cancel(&mut self, id: &str) -> Option<Task> {
        self.tasks.remove(id).or_else(|| self.dead.remove(id))
    }

    /// Moves a queued task to the dead letters as `ttl_expired`.
    pub fn expire(&mut self, id: &str, now_ms: u64) -> bool {
        let Some(mut task) = self.tasks.remove(id) else {
            return false;
        };
        if task.status != Status::Queued {
            self.tasks.insert(task.id.clone(), task);
            return false;
        }
        task.status = Status::DeadLetter;
        task.last_error = Value::from("ttl_expired");
        task.updated_at = now_ms;
        task.push_history("dead_letter", now_ms, Value::from("ttl_expired"));
        self.dead.insert(task.id.clone(), task);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with(body: Value) -> (TaskQueue, String) {
        let mut queue = TaskQueue::default();
        let task = new_task(body.as_object().unwrap(), "a0", 1000, Instant::now());
        let id = queue.submit(task).id.clone();
        (queue, id)
    }

    fn report() -> Map<String, Value> {
        json!({"result": {"ok": true}, "tokens_used": 7})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_new_task_has_the_hubs_defaults() {
        let (queue, id) = queue_with(json!({"description": "d", "repo": " https://x/r.git/ ",
            "metadata": {"assign_to": "a9"}}));
        let task = queue.get(&id).unwrap();
        assert!(id.starts_with("task-") && id.len() == 21);
        assert_eq!(
            (task.priority, task.max_retries, task.generation),
            (2, 3, 0)
        );
        assert_eq!(task.fields.repo, "https://x/r");
        assert_eq!(task.fields.max_verification_retries, 5);
        assert_eq!(task.assign_to.as_deref(), Some("a9"));
        let json = task.to_json();
        assert_eq!(json["status"], "queued");
        assert_eq!(
            json["history"],
            json!([{"event": "queued", "timestamp": 1000, "details": "submitted"}])
        );
        assert_eq!(json["routing_decision"], Value::Null);
    }

    #[test]
    fn generations_fence_reports() {
        let (mut queue, id) = queue_with(json!({"description": "d"}));
        let now = Instant::now();
        assert_eq!(
            queue.complete(&id, 0, &report(), 1),
            Err(Refusal::InvalidState)
        );
        assert_eq!(queue.assign(&id, "a1", 2, now).unwrap().generation, 1);
        assert!(
            queue.assign(&id, "a2", 2, now).is_none(),
            "only a queued task is assigned"
        );
        assert_eq!(queue.recover(&id), Recovery::Continue(1));
        assert_eq!(
            queue.reclaim(&id, "agent_disconnect", 3, now),
            Some(("a1".to_string(), 2))
        );
        assert_eq!(queue.recover(&id), Recovery::Reassign);
        assert_eq!(
            queue.complete(&id, 1, &report(), 4),
            Err(Refusal::InvalidState)
        );
        assert_eq!(queue.assign(&id, "a1", 5, now).unwrap().generation, 3);
        assert_eq!(
            queue.complete(&id, 1, &report(), 6),
            Err(Refusal::StaleGeneration)
        );
        assert_eq!(queue.complete(&id, 3, &report(), 7), Ok(()));
        assert_eq!(
            queue.complete(&id, 3, &report(), 8),
            Err(Refusal::InvalidState)
        );
        assert_eq!(
            queue.complete("task-nope", 1, &report(), 8),
            Err(Refusal::NotFound)
        );
        let task = queue.get(&id).unwrap().to_json();
        assert_eq!(
            (&task["status"], &task["tokens_used"]),
            (&json!("completed"), &json!(7))
        );
        let events: Vec<&str> = task["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            events,
            ["completed", "assigned", "reclaimed", "assigned", "queued"]
        );
    }

    #[test]
    fn failures_retry_then_dead_letter() {
        let (mut queue, id) = queue_with(json!({"description": "d", "max_retries": 2}));
        let now = Instant::now();
        queue.assign(&id, "a1", 1, now);
        assert_eq!(queue.fail(&id, 1, "e1", 2, now), Ok(Failed::Retried));
        let task = queue.get(&id).unwrap();
        assert_eq!(
            (task.status, task.generation, task.retry_count),
            (Status::Queued, 2, 1)
        );
        queue.assign(&id, "a1", 3, now);
        assert_eq!(queue.fail(&id, 3, "e2", 4, now), Ok(Failed::DeadLetter));
        assert_eq!(queue.get(&id).unwrap().status, Status::DeadLetter);
        assert_eq!(
            queue.fail(&id, 3, "e3", 5, now),
            Err(Refusal::NotFound),
            "dead letters are apart"
        );
        assert_eq!(queue.get(&id).unwrap().last_error, "e2");
        assert!(queue.cancel(&id).is_some());
        assert!(queue.get(&id).is_none());
    }

    #[test]
    fn order_touch_and_expiry() {
        let mut queue = TaskQueue::default();
        let now = Instant::now();
        let body = |p: &str| {
            json!({"description": "d", "priority": p})
                .as_object()
                .unwrap()
                .clone()
        };
        let low = queue.submit(new_task(&body("low"), "", 1, now)).id.clone();
        let urgent = queue
            .submit(new_task(&body("urgent"), "", 2, now))
            .id
            .clone();
        let normal = queue
            .submit(new_task(&body("whatever"), "", 1, now))
            .id
            .clone();
        let order: Vec<&str> = queue.queued().iter().map(|t| t.id.as_str()).collect();
        assert_eq!(order, [urgent.as_str(), normal.as_str(), low.as_str()]);
        queue.assign(&low, "a1", 5, now);
        assert_eq!(queue.assigned_to("a1"), Some(low.clone()));
        let later = now + std::time::Duration::from_secs(1);
        queue.touch(&low, 6, later);
        queue.touch(&normal, 6, later);
        assert_eq!(queue.get(&low).unwrap().touched, later);
        assert_eq!(
            queue.get(&normal).unwrap().touched,
            now,
            "only assigned tasks are touched"
        );
        assert!(!queue.expire(&low, 7));
        assert!(queue.expire(&normal, 7));
        assert_eq!(queue.get(&normal).unwrap().last_error, "ttl_expired");
    }
}
