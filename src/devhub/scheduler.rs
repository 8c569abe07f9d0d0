//! Who works on what, as the hub's `Scheduler`, `AgentFSM` timers, `TaskQueue` sweeps and
//! `Reaper` decide it. Scheduling is event driven (a submit, a take-back, a retry, a
//! completion, an agent joining or going idle, a routing fallback's retry): idle agents
//! (not rate limited), by agent id, get queued tasks, highest priority first. A trivial or
//! complex task with `assign_to` waits for that agent; a standard one (no Ollama endpoint on
//! a dev hub: the routing fallback) goes to any agent with the needed capabilities. Taking a
//! task back (disconnect, acceptance timeout, stuck, overdue) queues it at the next
//! generation, which usually schedules it again at once. The ticker calls [`Core::tick`] at
//! [`Core::next_deadline`].

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::core::{later, Command, Core, Delivery, Now};
use super::events::{HubEventKind, TakeBackReason};
use super::fsm::FsmState;
use super::queue::Status;
use super::routing;
use super::Behaviour;

impl Core {
    /// One scheduling pass.
    pub fn schedule(&mut self, now: Now) {
        let quiet = self.limits.rate_quiet_period;
        let mut idle: Vec<(String, Vec<String>)> = self
            .fsms
            .iter()
            .filter(|(agent, fsm)| {
                fsm.state == FsmState::Idle && !self.limiter.is_limited(agent, now.at, quiet)
            })
            .map(|(agent, fsm)| (agent.clone(), fsm.capabilities.clone()))
            .collect();
        if idle.is_empty() {
            return;
        }
        let ready: Vec<String> = self
            .queue
            .queued()
            .into_iter()
            .filter(|t| {
                t.depends_on.iter().all(|dep| {
                    self.queue
                        .get(dep)
                        .is_some_and(|d| d.status == Status::Completed)
                })
            })
            .map(|t| t.id.clone())
            .collect();
        for task_id in ready {
            if idle.is_empty() {
                break;
            }
            let Some(task) = self.queue.get(&task_id) else {
                continue;
            };
            let decision = routing::route(&task.complexity, now.ms);
            let fits =
                |caps: &Vec<String>| task.needed_capabilities.iter().all(|c| caps.contains(c));
            let chosen = match (&task.assign_to, decision.is_fallback()) {
                (Some(target), false) => idle.iter().position(|(agent, _)| agent == target),
                _ => idle.iter().position(|(_, caps)| fits(caps)),
            };
            if decision.is_fallback() {
                let retry = later(now.at, self.timings.fallback_wait);
                self.timers
                    .fallbacks
                    .entry(task_id.clone())
                    .or_insert(retry);
            }
            if let Some(index) = chosen {
                let (agent, _) = idle.remove(index);
                let decision = decision.for_agent(self.ollama.get(&agent).map(String::as_str));
                self.assign(&task_id, &agent, decision, now);
            }
        }
    }

    /// Assigns a queued task and pushes it to the agent's registered session, if any.
    fn assign(&mut self, task_id: &str, agent: &str, decision: routing::Decision, now: Now) {
        self.queue.store_decision(task_id, decision);
        let Some(task) = self.queue.assign(task_id, agent, now.ms, now.at) else {
            return;
        };
        let generation = task.generation;
        let f = &task.fields;
        let mut fields = Map::new();
        let mut put = |key: &str, value: Value| {
            fields.insert(key.to_string(), value);
        };
        put("description", json!(task.description));
        put("metadata", task.metadata.clone());
        put("generation", json!(generation));
        put("repo", f.repo.clone());
        put("branch", f.branch.clone());
        put("file_hints", f.file_hints.clone());
        put("success_criteria", f.success_criteria.clone());
        put("verification_steps", f.verification_steps.clone());
        put("complexity", task.complexity.to_json());
        put(
            "routing_decision",
            task.routing_decision
                .as_ref()
                .map_or(Value::Null, |d| d.to_ws_json()),
        );
        put("skip_verification", f.skip_verification.clone());
        put("verification_timeout_ms", f.verification_timeout_ms.clone());
        put(
            "max_verification_retries",
            json!(f.max_verification_retries),
        );
        self.timers.fallbacks.remove(task_id);
        let (task_id, agent_id) = (task_id.to_string(), agent.to_string());
        self.record(
            0,
            HubEventKind::TaskAssigned {
                task_id: task_id.clone(),
                agent_id: agent_id.clone(),
                generation,
            },
        );
        self.say(format_args!(
            "task {task_id} assigned to {agent_id} (generation {generation})"
        ));
        let delivery = Delivery::TaskAssign {
            task_id: task_id.clone(),
            generation,
            fields,
        };
        if !self.push(&agent_id, delivery) {
            self.record(0, HubEventKind::PushUnroutable { task_id, agent_id });
        }
    }

    /// Takes an assigned task back to the queue (next generation) and schedules.
    pub fn take_back(
        &mut self,
        task_id: &str,
        reason: TakeBackReason,
        why: &'static str,
        now: Now,
    ) {
        let Some((agent_id, generation)) = self.queue.reclaim(task_id, why, now.ms, now.at) else {
            return;
        };
        self.timers.fallbacks.remove(task_id);
        self.say(format_args!(
            "task {task_id} taken back from {agent_id} ({}), generation {generation}",
            reason.name()
        ));
        let task_id = task_id.to_string();
        self.record(
            0,
            HubEventKind::TakenBack {
                task_id,
                agent_id,
                reason,
                generation,
            },
        );
        self.schedule(now);
    }

    /// The earliest timer.
    pub fn next_deadline(&self) -> Instant {
        let t = &self.timers;
        let sweeps = [t.stuck, t.overdue, t.ttl, t.reaper];
        let acceptance = self
            .fsms
            .values()
            .filter_map(|f| f.acceptance.as_ref().map(|(at, _)| *at));
        let joins = self.sessions.values().filter_map(|s| s.join_schedule);
        sweeps
            .into_iter()
            .chain(acceptance)
            .chain(joins)
            .chain(t.fallbacks.values().copied())
            .min()
            .unwrap_or(t.stuck)
    }

    /// Runs every timer due at `now`.
    pub fn tick(&mut self, now: Now, behaviour: &Behaviour) {
        let due: Vec<(String, String)> = self
            .fsms
            .iter()
            .filter_map(|(agent, f)| {
                f.acceptance
                    .as_ref()
                    .filter(|(at, _)| *at <= now.at)
                    .map(|(_, t)| (agent.clone(), t.clone()))
            })
            .collect();
        for (agent, task_id) in due {
            let timed_out = self
                .fsms
                .get_mut(&agent)
                .and_then(|f| f.acceptance_timeout(&task_id));
            if let Some(task_id) = timed_out {
                self.show_fsm_state(&agent, "idle");
                self.take_back(
                    &task_id,
                    TakeBackReason::AcceptanceTimeout,
                    "agent_disconnect",
                    now,
                );
            }
        }
        let joins: Vec<u64> = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| s.join_schedule.is_some_and(|at| at <= now.at))
            .map(|(id, s)| {
                s.join_schedule = None;
                *id
            })
            .collect();
        let fallbacks: Vec<String> = self
            .timers
            .fallbacks
            .iter()
            .filter(|(_, at)| **at <= now.at)
            .map(|(id, _)| id.clone())
            .collect();
        for task_id in &fallbacks {
            self.timers.fallbacks.remove(task_id);
        }
        let still_queued = fallbacks.iter().any(|id| {
            self.queue
                .get(id)
                .is_some_and(|t| t.status == Status::Queued)
        });
        if !joins.is_empty() || still_queued {
            self.schedule(now);
        }
        if self.timers.stuck <= now.at {
            self.stuck_sweep(now);
            self.timers.stuck = self.next_sweep(now, self.timings.stuck_sweep_interval);
        }
        if self.timers.overdue <= now.at {
            self.overdue_sweep(now);
            self.timers.overdue = self.next_sweep(now, self.timings.overdue_sweep_interval);
        }
        if self.timers.ttl <= now.at {
            self.ttl_sweep(now);
            self.timers.ttl = self.next_sweep(now, self.timings.ttl_sweep_interval);
        }
        if self.timers.reaper <= now.at {
            self.reap(now, behaviour.evict_kills);
            self.timers.reaper = self.next_sweep(now, self.timings.reaper_interval);
        }
    }

    /// When a sweep runs next: at least a millisecond later (a zero interval must not spin).
    fn next_sweep(&self, now: Now, interval: std::time::Duration) -> Instant {
        later(now.at, interval.max(std::time::Duration::from_millis(1)))
    }

    /// Assigned tasks without a sign of life for the stuck threshold (twice that while the
    /// agent works) are taken back.
    fn stuck_sweep(&mut self, now: Now) {
        let threshold = self.timings.stuck_threshold;
        let stuck: Vec<String> = self
            .queue
            .assigned()
            .into_iter()
            .filter(|task| {
                let silent = now.at.saturating_duration_since(task.touched);
                let agent = task.assigned_to.as_deref().unwrap_or("");
                let working = self
                    .fsms
                    .get(agent)
                    .is_some_and(|f| f.state == FsmState::Working);
                silent > threshold && (!working || silent > threshold.saturating_mul(2))
            })
            .map(|task| task.id.clone())
            .collect();
        for task_id in stuck {
            self.take_back(&task_id, TakeBackReason::Stuck, "agent_disconnect", now);
        }
    }

    /// Assigned tasks past their `complete_by` are taken back.
    fn overdue_sweep(&mut self, now: Now) {
        let overdue: Vec<String> = self
            .queue
            .assigned()
            .into_iter()
            .filter(|t| t.complete_by.is_some_and(|by| by < now.ms as i64))
            .map(|t| t.id.clone())
            .collect();
        for task_id in overdue {
            self.take_back(&task_id, TakeBackReason::Overdue, "overdue", now);
        }
    }

    /// Tasks queued longer than the TTL, unless trivial, go to the dead letters.
    fn ttl_sweep(&mut self, now: Now) {
        let cutoff = now
            .ms
            .saturating_sub(self.timings.task_ttl.as_millis() as u64);
        let expired: Vec<String> = self
            .queue
            .queued()
            .into_iter()
            .filter(|t| t.created_at < cutoff && !t.is_trivial())
            .map(|t| t.id.clone())
            .collect();
        for task_id in expired {
            if self.queue.expire(&task_id, now.ms) {
                self.timers.fallbacks.remove(&task_id);
                self.record(0, HubEventKind::TaskExpired { task_id });
            }
        }
    }

    /// Agents without a ping for the presence TTL: their registered socket is sent an exit
    /// signal, which it traps (nothing happens but a message); without a registered socket,
    /// the agent leaves presence.
    fn reap(&mut self, now: Now, kills: bool) {
        let ttl = self.timings.presence_ttl;
        let stale: Vec<String> = self
            .presence
            .iter()
            .filter(|(_, e)| now.at.saturating_duration_since(e.last_seen) > ttl)
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in stale {
            let outcome = match self
                .registry
                .get(&agent)
                .and_then(|id| self.sessions.get(id))
            {
                Some(session) if kills => {
                    let _ = session.commands.send(Command::Die);
                    "killed"
                }
                Some(session) => {
                    let _ = session.commands.send(Command::Deliver(Delivery::Exit));
                    "exit_trapped"
                }
                None => {
                    self.presence.remove(&agent);
                    self.broadcast(|| Delivery::AgentLeft {
                        agent_id: agent.clone(),
                    });
                    "presence_removed"
                }
            };
            self.say(format_args!("agent {agent} stale: {outcome}"));
            self.record(
                0,
                HubEventKind::Evicted {
                    agent_id: agent,
                    outcome: outcome.to_string(),
                },
            );
        }
    }
}
