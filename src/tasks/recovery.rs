//! What the task machine keeps and for how long: released tasks pruned, an acceptance that
//! cannot be saved given back, and the state loaded at start-up recovered (interrupted tasks
//! become recovering; what the results directory holds is taken into account).

use std::collections::BTreeMap;

use super::effects::{Assign, Effect};
use super::machine::{DiskFacts, Machine};
use super::model::{Agent, Role, TaskRecord};
use crate::config::LogLevel;

impl Machine {
    /// Released tasks are forgotten once nothing is left to remember (no agent can run and
    /// no result is kept), and beyond `keep_released` or `keep_released_bytes` of kept
    /// results, oldest first (a result file set aside stays on disk).
    pub(super) fn prune(&mut self) {
        let idle: Vec<String> = self
            .state
            .tasks
            .iter()
            .filter(|t| t.role == Role::Released && !t.agent.may_run() && t.outcome.is_none())
            .map(|t| t.task_id.clone())
            .collect();
        for id in idle {
            self.forget(&id, true);
        }
        let released: Vec<String> = self
            .state
            .tasks
            .iter()
            .filter(|t| t.role == Role::Released)
            .map(|t| t.task_id.clone())
            .collect();
        let by_count = released.len().saturating_sub(self.cfg.keep_released);
        // The newest results fit the byte budget (the newest is kept whatever its size); an
        // older one past it goes with its task.
        let mut by_bytes = 0;
        let mut bytes = 0usize;
        let newest = released.len().saturating_sub(1);
        for (i, id) in released.iter().enumerate().rev() {
            bytes = bytes.saturating_add(self.task(id).map_or(0, outcome_bytes));
            if bytes > self.cfg.keep_released_bytes && i != newest {
                by_bytes = i + 1;
                break;
            }
        }
        // The byte cut takes only tasks whose result it is about: one whose agent may still
        // run without a result yet is kept (forgetting it would let a push of the same id
        // start a second agent beside it).
        let forget: Vec<(String, &'static str)> = released
            .into_iter()
            .enumerate()
            .filter_map(|(i, id)| {
                if i < by_count {
                    Some((id, "keep_released reached"))
                } else if i < by_bytes && self.task(&id).is_some_and(|t| t.outcome.is_some()) {
                    Some((id, "keep_released_bytes reached"))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in forget {
            self.note(
                LogLevel::Info,
                "task_forgotten",
                vec![("task_id", id.clone().into()), ("reason", reason.into())],
            );
            self.forget(&id, false);
        }
    }

    /// The queue file cannot be written: a task accepted since the last good write is not
    /// safe, so it is given back to the hub rather than run late, or twice once the hub has
    /// taken it back.
    pub(super) fn give_back_unsaved(&mut self) {
        let durable = self.durable;
        let unsaved: Vec<TaskRecord> = self
            .state
            .tasks
            .iter()
            .filter(|t| {
                let unspawned = match t.agent {
                    Agent::NotWoken => true,
                    Agent::Waking { wake_id, .. } => self.spawn_pending(wake_id),
                    _ => false,
                };
                t.role == Role::Held
                    && unspawned
                    && self
                        .marks
                        .get(&t.task_id)
                        .is_some_and(|m| m.stamp > durable && m.accept_sent.is_none())
            })
            .cloned()
            .collect();
        for task in unsaved {
            let file = self.cfg.task_file(&task.task_id);
            self.before
                .retain(|op| op.written_path() != Some(file.as_path()));
            self.state.tasks.retain(|t| t.task_id != task.task_id);
            self.remove_marks(&task.task_id);
            self.deferred.retain(|(_, d)| !matches!(d, super::machine::Deferred::Wake { task_id, .. } if *task_id == task.task_id));
            self.changed();
            let a = Assign {
                task_id: task.task_id.clone(),
                generation: task.generation,
                raw: String::new(),
                target_type: None,
                model: None,
            };
            self.refuse(
                &a,
                "storage_unavailable",
                "the queue file cannot be written",
            );
        }
    }

    /// After loading: interrupted tasks become recovering (at the process's first load), what
    /// the results directory holds is taken into account, and timers are armed again.
    pub(super) fn recover(&mut self, process_start: bool, disk: BTreeMap<String, DiskFacts>) {
        let ids: Vec<String> = self.state.tasks.iter().map(|t| t.task_id.clone()).collect();
        for id in &ids {
            self.marks.entry(id.clone()).or_default();
        }
        if process_start {
            for task in self.state.tasks.iter_mut().filter(|t| t.in_progress()) {
                task.role = Role::Recovering;
            }
        }
        let recovering: Vec<(String, &'static str, u64)> = self
            .state
            .tasks
            .iter()
            .filter(|t| t.role == Role::Recovering)
            .map(|t| (t.task_id.clone(), t.status(), t.generation))
            .collect();
        if !recovering.is_empty() && process_start {
            self.changed();
        }
        // Asked about at once (not after the write: a crash before it only asks again), so
        // the hub's answer comes as early as it can.
        for (id, status, generation) in recovering {
            self.note(
                LogLevel::Info,
                "recovery_found",
                vec![
                    ("task_id", id.into()),
                    ("last_status", status.into()),
                    ("generation", generation.into()),
                ],
            );
        }
        for (id, facts) in disk {
            if facts.started {
                self.on_started(&id);
            }
            if let Some(result) = facts.result {
                self.on_result(&id, result);
            }
        }
        for id in ids {
            self.rearm(&id);
        }
        self.prune();
        self.out.push(Effect::Rescan { task_id: None });
    }
}

/// The bytes a task's outcome takes in the queue file (counted, not built).
fn outcome_bytes(task: &TaskRecord) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match &task.outcome {
        Some(outcome) => serde_json::to_writer(&mut count, outcome).map_or(0, |()| count.0),
        None => 0,
    }
}
