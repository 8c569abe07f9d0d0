//! The task machine's timers: what each one does when it fires (a timer carries what it was
//! armed for, so a stale one changes nothing), the windows a wake attempt gets, and the
//! timers a task's state needs again after a load.

use super::effects::{Effect, Timer};
use super::machine::Machine;
use super::model::{Agent, Outcome, Role};
use crate::config::LogLevel;

impl Machine {
    pub(super) fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Confirmation { task_id, wake_id } => {
                self.on_confirmation_timeout(&task_id, wake_id)
            }
            Timer::WakeRetry { task_id, wake_id } => {
                let Some(task) = self.task(&task_id) else {
                    return;
                };
                if let (
                    Role::Held,
                    Agent::WakeFailed {
                        wake_id: w,
                        attempt,
                        ..
                    },
                ) = (task.role, &task.agent)
                {
                    if *w == wake_id && task.outcome.is_none() {
                        let next = attempt + 1;
                        self.start_wake(&task_id, next);
                    }
                }
            }
            Timer::TaskTimeout {
                task_id,
                lease_at_ms,
            } => {
                let Some(task) = self.task(&task_id) else {
                    return;
                };
                let agent = task.agent.clone();
                if task.in_progress() && task.lease_start() == lease_at_ms {
                    let ms = self.cfg.task_timeout.map_or(0, |d| d.as_millis() as u64);
                    self.note(
                        LogLevel::Warn,
                        "task_timeout",
                        vec![
                            ("task_id", task_id.clone().into()),
                            ("timeout_ms", ms.into()),
                        ],
                    );
                    if let Agent::Waking { wake_id, .. } | Agent::Woken { wake_id, .. } = agent {
                        self.out.push(Effect::KillWake { wake_id });
                    }
                    let error = format!("no result within task_timeout_ms ({ms} ms)");
                    self.conclude(
                        &task_id,
                        Outcome::Failed {
                            reason: "task_timeout".into(),
                            error,
                        },
                        None,
                    );
                }
            }
            Timer::SelfStart {
                task_id,
                lease_at_ms,
            } => self.on_self_start_timeout(&task_id, lease_at_ms),
            Timer::Progress { session } => self.on_progress_timer(session),
            Timer::AgentProgress { task_id } => {
                let held = self.task(&task_id).is_some_and(|t| t.in_progress());
                let Some(marks) = self.marks.get_mut(&task_id) else {
                    return;
                };
                marks.pending_armed = false;
                if !held {
                    self.drop_pending(&task_id);
                } else if self.session.is_some() {
                    self.send_pending(&task_id);
                }
                // Without a session the events wait (and so does reading the file): the next
                // session sends them.
            }
            Timer::WriteRetry { seq } => self.on_write_retry(seq),
            Timer::RestartDeadline => {
                if let Some(reason) = self.restart.take() {
                    self.note(
                        LogLevel::Warn,
                        "restart_wait_over",
                        vec![(
                            "note",
                            "restarting with a task in progress: it is recovered after the restart"
                                .into(),
                        )],
                    );
                    self.out.push(Effect::Restart { reason });
                }
            }
        }
    }

    fn on_confirmation_timeout(&mut self, task_id: &str, wake_id: u64) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        let ms = self.cfg.confirmation_timeout.as_millis() as u64;
        match task.agent.clone() {
            Agent::Woken { wake_id: w, .. } if w == wake_id => {
                self.note(
                    LogLevel::Warn,
                    "confirmation_timeout",
                    vec![("task_id", task_id.into()), ("timeout_ms", ms.into())],
                );
                if let Some(t) = self.task_mut(task_id) {
                    t.agent = Agent::GaveUp;
                }
                let error =
                    format!("no {task_id}.started within confirmation_timeout_ms ({ms} ms)");
                if self.task(task_id).is_some_and(|t| t.role == Role::Released) {
                    self.changed();
                    self.prune();
                } else {
                    self.conclude(
                        task_id,
                        Outcome::Failed {
                            reason: "confirmation_timeout".into(),
                            error,
                        },
                        None,
                    );
                }
            }
            // An attempt found on disk at a restart, never confirmed in its window: it counts
            // as failed (a retry may follow).
            Agent::Waking {
                wake_id: w,
                attempt,
            } if w == wake_id && !self.spawned.contains(&w) => {
                let error = format!("no {task_id}.started within confirmation_timeout_ms ({ms} ms) after a restart interrupted this attempt");
                self.note(
                    LogLevel::Warn,
                    "wake_error",
                    vec![
                        ("task_id", task_id.into()),
                        ("attempt", attempt.into()),
                        ("error", error.clone().into()),
                    ],
                );
                self.attempt_failed(task_id, wake_id, attempt, error);
            }
            _ => {}
        }
    }

    pub(super) fn on_waker_restarted(&mut self) {
        let lost: Vec<(String, u64)> = self
            .state
            .tasks
            .iter()
            .filter_map(|t| match t.agent {
                Agent::Waking { wake_id, .. } if self.spawned.contains(&wake_id) => {
                    Some((t.task_id.clone(), wake_id))
                }
                _ => None,
            })
            .collect();
        for (task_id, wake_id) in lost {
            // Its command may run on: it gets the window a restart would give it.
            self.spawned.remove(&wake_id);
            self.note(
                LogLevel::Warn,
                "wake_outcome_lost",
                vec![
                    ("task_id", task_id.clone().into()),
                    ("wake_id", wake_id.into()),
                    ("note", "the waker restarted while this attempt ran: waiting confirmation_timeout_ms for .started".into()),
                ],
            );
            self.out.push(Effect::Arm {
                timer: Timer::Confirmation { task_id, wake_id },
                after: self.cfg.confirmation_timeout,
            });
        }
    }

    pub(super) fn arm_task_timeout(&mut self, task_id: &str) {
        let (Some(timeout), Some(task)) = (self.cfg.task_timeout, self.task(task_id)) else {
            return;
        };
        let elapsed = self.now_ms.saturating_sub(task.lease_start());
        let after = timeout.saturating_sub(std::time::Duration::from_millis(elapsed));
        let timer = Timer::TaskTimeout {
            task_id: task_id.to_string(),
            lease_at_ms: task.lease_start(),
        };
        self.out.push(Effect::Arm { timer, after });
    }

    /// After a load: the timers a task's state needs again.
    pub(super) fn rearm(&mut self, task_id: &str) {
        let Some(task) = self.task(task_id) else {
            return;
        };
        let (role, agent, in_progress) = (task.role, task.agent.clone(), task.in_progress());
        let self_start =
            self.cfg.wake.rule(task.target_type.as_deref()) == super::machine::WakeRule::SelfStart;
        let lease_at_ms = task.lease_start();
        if in_progress {
            self.arm_task_timeout(task_id);
        }
        match agent {
            // An attempt that may have started an agent (the process stopped after it was
            // recorded) gets its whole confirmation window before anyone is woken again.
            Agent::Waking { wake_id, .. } | Agent::Woken { wake_id, .. } => {
                self.out.push(Effect::Arm {
                    timer: Timer::Confirmation {
                        task_id: task_id.to_string(),
                        wake_id,
                    },
                    after: self.cfg.confirmation_timeout,
                });
            }
            Agent::WakeFailed {
                wake_id, attempt, ..
            } if role == Role::Held && in_progress => {
                self.after_failed_attempt(task_id, wake_id, attempt);
            }
            // An agent that starts by itself gets its confirmation window again.
            Agent::NotWoken if role == Role::Held && in_progress && self_start => {
                self.out.push(Effect::Arm {
                    timer: Timer::SelfStart {
                        task_id: task_id.to_string(),
                        lease_at_ms,
                    },
                    after: self.cfg.confirmation_timeout,
                });
            }
            _ => {}
        }
    }
}
