//! The hub's answers to one session's frames, as its `Socket` module gives them: JSON, then
//! the schema (a failure is a violation; too many close the socket 1008 and start the agent's
//! cooldown; a non-object crashes the socket process, 1011), then the rate limit (identified
//! sessions only: a warning before the answer, or the frame dropped), then the frame's own
//! handler (identify first; everything else answers `not_identified` until then). Also the
//! other half of a socket process: what it does with the messages the hub sends it
//! ([`Core::deliver`]).

use serde_json::{json, Map, Value};

use super::core::{later, Core, Delivery, Now, PresenceEntry};
use super::events::HubEventKind;
use super::fsm::{Fsm, FsmOutcome, FsmState};
use super::queue::{Failed, Recovery};
use super::ratelimit::{Check, Tier};
use super::validation::{self, Invalid};
use super::Behaviour;

/// Something a session writes, in order.
pub(crate) enum Out {
    Text(String),
    /// A push handled inline (before the answer that follows it).
    Deliver(Delivery),
}

/// How a session closes after its frames: the clean-up has already run.
pub(crate) struct Close {
    pub code: u16,
    pub reason: String,
    /// Wait for the client's Close (the hub's `{:stop, :normal, …}`); `false`: the socket
    /// process crashed and the connection ends at once.
    pub wait_echo: bool,
}

/// A session's answer to one frame.
#[derive(Default)]
pub(crate) struct Reply {
    pub out: Vec<Out>,
    pub close: Option<Close>,
    /// The answer is `task_reassign`.
    reassign: bool,
}

impl Reply {
    pub(crate) fn json(frame: Value) -> Reply {
        Reply {
            out: vec![Out::Text(frame.to_string())],
            ..Reply::default()
        }
    }

    fn close(code: u16, reason: &str, wait_echo: bool) -> Reply {
        let close = Close {
            code,
            reason: reason.to_string(),
            wait_echo,
        };
        Reply {
            close: Some(close),
            ..Reply::default()
        }
    }
}

pub(crate) fn error(code: &str) -> Reply {
    Reply::json(json!({"type": "error", "error": code}))
}

impl Core {
    /// One text frame from session `id`.
    pub fn on_text(&mut self, id: u64, text: &str, behaviour: &Behaviour, now: Now) -> Reply {
        if !self.sessions.contains_key(&id) {
            return Reply::default();
        }
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return error("invalid_json");
        };
        let kind = frame
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if kind == "identify" && !behaviour.answer_identify {
            return Reply::default();
        }
        match validation::validate_ws(&frame) {
            Ok(()) => {}
            Err(Invalid::NotAnObject(_)) => {
                self.session_ended(id, true, now);
                return Reply::close(1011, "", false);
            }
            Err(Invalid::Errors(errors)) => return self.violation(id, &frame, errors, now),
        }
        // The scheduling an earlier identify left for after this frame (not this one's own).
        // A heartbeat or a resource report, which touch no task, leave it for the next one.
        let housekeeping = matches!(kind.as_str(), "ping" | "resource_report");
        let pending = !housekeeping
            && self
                .sessions
                .get(&id)
                .is_some_and(|s| s.join_schedule.is_some());
        let mut reply = self.rate_gate(id, &kind, &frame, behaviour, now);
        let session = self.sessions.get_mut(&id);
        let pending = pending && session.and_then(|s| s.join_schedule.take()).is_some();
        if pending && reply.close.is_none() {
            if reply.reassign {
                self.capture = Some((id, Vec::new()));
            }
            self.schedule(now);
            if let Some((_, captured)) = self.capture.take() {
                let answer = std::mem::take(&mut reply.out);
                reply.out = captured
                    .into_iter()
                    .map(Out::Deliver)
                    .chain(answer)
                    .collect();
            }
        }
        reply
    }

    fn violation(&mut self, id: u64, frame: &Value, errors: Vec<Value>, now: Now) -> Reply {
        let window = self.limits.violation_window;
        let Some(session) = self.sessions.get_mut(&id) else {
            return Reply::default();
        };
        let count = session.violations.track(now.at, window);
        let agent = session.agent_id.clone();
        let identified = session.identified;
        let message_type = frame
            .get("type")
            .cloned()
            .unwrap_or_else(|| json!("unknown"));
        self.record(
            id,
            HubEventKind::ValidationFailed {
                agent_id: agent.clone(),
                message_type: message_type.clone(),
                errors: errors.clone(),
                violations: count,
            },
        );
        if count < self.limits.violation_threshold {
            return Reply::json(json!({"type": "error", "error": "validation_failed",
                "message_type": message_type, "errors": errors}));
        }
        let cooldown = match (&agent, identified) {
            (Some(agent), true) => {
                let cooldowns = self.limits.cooldowns;
                Some(self.cooldowns.record_disconnect(agent, now.at, &cooldowns))
            }
            _ => None,
        };
        let cooldown_ms = cooldown.map(|c| c.as_millis() as u64);
        self.record(
            id,
            HubEventKind::ViolationDisconnect {
                agent_id: agent,
                cooldown_ms,
            },
        );
        self.session_ended(id, true, now);
        Reply::close(1008, "too many validation errors", true)
    }

    fn rate_gate(
        &mut self,
        id: u64,
        kind: &str,
        frame: &Value,
        behaviour: &Behaviour,
        now: Now,
    ) -> Reply {
        let agent = match self.sessions.get(&id) {
            Some(s) if s.identified => s.agent_id.clone().unwrap_or_default(),
            _ => return self.handle(id, kind, frame, behaviour, now),
        };
        let tier = Tier::of(kind);
        let limit = match tier {
            Tier::Light => self.limits.light,
            Tier::Normal => self.limits.normal,
            Tier::Heavy => self.limits.heavy,
        };
        match self.limiter.check(&agent, tier, limit, now.at) {
            Check::Allow => self.handle(id, kind, frame, behaviour, now),
            Check::Warn {
                remaining,
                capacity,
            } => {
                let mut reply = self.handle(id, kind, frame, behaviour, now);
                if reply.close.is_none() {
                    let warning = json!({"type": "rate_limit_warning", "tier": tier.name(),
                        "remaining": remaining, "capacity": capacity});
                    reply.out.insert(0, Out::Text(warning.to_string()));
                    let tier = tier.name().to_string();
                    self.record(
                        id,
                        HubEventKind::RateLimitWarning {
                            agent_id: agent,
                            tier,
                            remaining,
                            capacity,
                        },
                    );
                }
                reply
            }
            Check::Deny { retry_after_ms } => {
                self.limiter
                    .record_denial(&agent, now.at, self.limits.rate_quiet_period);
                self.record(
                    id,
                    HubEventKind::RateLimited {
                        agent_id: agent,
                        frame_type: kind.to_string(),
                        tier: tier.name().to_string(),
                        retry_after_ms,
                    },
                );
                Reply::json(
                    json!({"type": "rate_limited", "retry_after_ms": retry_after_ms,
                    "tier": tier.name()}),
                )
            }
        }
    }

    fn handle(
        &mut self,
        id: u64,
        kind: &str,
        frame: &Value,
        behaviour: &Behaviour,
        now: Now,
    ) -> Reply {
        if kind == "identify" {
            return self.identify(id, frame, behaviour, now);
        }
        let agent = match self.sessions.get(&id) {
            Some(s) if s.identified => s.agent_id.clone().unwrap_or_default(),
            _ => return error("not_identified"),
        };
        let task_id = frame
            .get("task_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let acked = |reply: Reply| {
            if behaviour.auto_ack {
                reply
            } else {
                Reply::default()
            }
        };
        match kind {
            "ping" => {
                if let Some(entry) = self.presence.get_mut(&agent) {
                    entry.last_seen = now.at;
                }
                match behaviour.answer_pings {
                    true => Reply::json(json!({"type": "pong", "timestamp": now.ms})),
                    false => Reply::default(),
                }
            }
            "task_accepted" => {
                self.queue.touch(&task_id, now.ms, now.at);
                let moved = self.fsms.get_mut(&agent).map(|f| f.task_accepted(&task_id));
                if moved == Some(FsmOutcome::Moved(FsmState::Working)) {
                    self.show_fsm_state(&agent, "working");
                }
                acked(task_ack(&task_id, "accepted"))
            }
            "task_progress" => {
                self.queue.touch(&task_id, now.ms, now.at);
                self.live.record(&task_id, frame);
                Reply::default()
            }
            "task_complete" => acked(self.task_complete(id, &agent, &task_id, frame, now)),
            "task_failed" => acked(self.task_failed(id, &agent, &task_id, frame, now)),
            "task_recovering" => match self.queue.recover(&task_id) {
                Recovery::Continue(generation) => Reply::json(json!({"type": "task_continue",
                    "task_id": task_id, "generation": generation})),
                Recovery::Reassign => Reply {
                    reassign: true,
                    ..Reply::json(json!({"type": "task_reassign", "task_id": task_id}))
                },
            },
            "wake_result" => {
                if frame.get("status").and_then(Value::as_str) == Some("success") {
                    self.queue.touch(&task_id, now.ms, now.at);
                }
                Reply::default()
            }
            "state_report" => {
                let reported = frame.get("generation").and_then(Value::as_i64).unwrap_or(0);
                let holds = self.queue.get(&task_id).is_some_and(|t| {
                    t.status == super::queue::Status::Assigned
                        && t.assigned_to.as_deref() == Some(agent.as_str())
                        && i64::try_from(t.generation) == Ok(reported)
                });
                if holds {
                    self.queue.touch(&task_id, now.ms, now.at);
                }
                let action = if holds { "continue" } else { "abort" };
                Reply::json(
                    json!({"type": "state_report_ack", "task_id": task_id, "action": action}),
                )
            }
            "resource_report" => {
                let keys = [
                    "cpu_percent",
                    "ram_used_bytes",
                    "ram_total_bytes",
                    "vram_used_bytes",
                    "vram_total_bytes",
                ];
                let metrics: Map<String, Value> = keys
                    .iter()
                    .map(|k| (k.to_string(), frame.get(*k).cloned().unwrap_or(Value::Null)))
                    .collect();
                self.resources.insert(agent, Value::Object(metrics));
                Reply::default()
            }
            "ollama_report" => {
                let url = frame
                    .get("ollama_url")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.ollama.insert(agent, url.to_string());
                Reply::json(json!({"type": "ollama_report_ack", "status": "registered"}))
            }
            _ => self.handle_chat(&agent, kind, frame, now),
        }
    }

    fn task_complete(
        &mut self,
        id: u64,
        agent: &str,
        task_id: &str,
        frame: &Value,
        now: Now,
    ) -> Reply {
        let generation = frame.get("generation").and_then(Value::as_i64).unwrap_or(0);
        let fields = frame.as_object().cloned().unwrap_or_default();
        match self.queue.complete(task_id, generation, &fields, now.ms) {
            Ok(()) => {
                self.timers.fallbacks.remove(task_id);
                let generation = generation as u64;
                let (task_id_s, agent_s) = (task_id.to_string(), agent.to_string());
                self.record(
                    id,
                    HubEventKind::TaskCompleted {
                        task_id: task_id_s,
                        agent_id: agent_s,
                        generation,
                    },
                );
                self.say(format_args!("task {task_id} completed by {agent}"));
                self.schedule(now);
                self.finished(agent, now);
                task_ack(task_id, "complete")
            }
            Err(refusal) => self.refused(
                id,
                task_id,
                "task_complete",
                format!("task_complete_failed: {}", refusal.name()),
            ),
        }
    }

    fn task_failed(
        &mut self,
        id: u64,
        agent: &str,
        task_id: &str,
        frame: &Value,
        now: Now,
    ) -> Reply {
        let generation = frame.get("generation").and_then(Value::as_i64).unwrap_or(0);
        let text = |key: &str| frame.get(key).and_then(Value::as_str);
        let why = text("error")
            .or_else(|| text("reason"))
            .unwrap_or("unknown")
            .to_string();
        match self.queue.fail(task_id, generation, &why, now.ms, now.at) {
            Ok(outcome) => {
                let status = match outcome {
                    Failed::Retried => "retried",
                    Failed::DeadLetter => "dead_letter",
                };
                self.timers.fallbacks.remove(task_id);
                self.record(
                    id,
                    HubEventKind::TaskFailed {
                        task_id: task_id.to_string(),
                        agent_id: agent.to_string(),
                        generation: generation as u64,
                        outcome: status.to_string(),
                    },
                );
                self.say(format_args!("task {task_id} failed on {agent}: {status}"));
                if outcome == Failed::Retried {
                    self.schedule(now);
                }
                self.finished(agent, now);
                task_ack(task_id, status)
            }
            Err(refusal) => self.refused(
                id,
                task_id,
                "task_failed",
                format!("task_fail_failed: {}", refusal.name()),
            ),
        }
    }

    /// The agent's FSM after an accepted report: working → idle, which triggers scheduling.
    fn finished(&mut self, agent: &str, now: Now) {
        let outcome = self.fsms.get_mut(agent).map(Fsm::task_finished);
        if outcome == Some(FsmOutcome::BecameIdle) {
            self.show_fsm_state(agent, "idle");
            self.schedule(now);
        }
    }

    fn refused(&mut self, id: u64, task_id: &str, frame_type: &str, error_text: String) -> Reply {
        self.record(
            id,
            HubEventKind::ReportRefused {
                task_id: task_id.to_string(),
                frame_type: frame_type.to_string(),
                error: error_text.clone(),
            },
        );
        error(&error_text)
    }

    fn identify(&mut self, id: u64, frame: &Value, behaviour: &Behaviour, now: Now) -> Reply {
        let agent = frame
            .get("agent_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let cooldowns = self.limits.cooldowns;
        if let Some(secs) = self.cooldowns.remaining(&agent, now.at, &cooldowns) {
            self.record(
                id,
                HubEventKind::CooldownRefused {
                    agent_id: agent.clone(),
                    retry_in_s: secs,
                },
            );
            self.say(format_args!(
                "conn {id} refused as agent {agent:?}: cooldown {secs}s"
            ));
            self.session_ended(id, true, now);
            return Reply::close(1008, &format!("cooldown active: retry in {secs}s"), true);
        }
        let token = frame.get("token").and_then(Value::as_str).unwrap_or("");
        if let Err(refused) = self.tokens.check(&agent, token) {
            let code = refused.code();
            self.record(
                id,
                HubEventKind::IdentifyRefused {
                    agent_id: agent.clone(),
                    error: code.to_string(),
                },
            );
            self.say(format_args!("conn {id} refused as agent {agent:?}: {code}"));
            return error(code);
        }
        // A new FSM: the old one (of any earlier session) stops, taking nothing back.
        let capabilities: Vec<String> = frame
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|caps| {
                caps.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let assigned = self.queue.assigned_to(&agent);
        let deadline = later(now.at, self.timings.acceptance_timeout);
        self.fsms.insert(
            agent.clone(),
            Fsm::start(id, capabilities, assigned, deadline),
        );
        // Registration for pushes: refused while another session holds it.
        match self.registry.get(&agent).copied() {
            None => {
                self.registry.insert(agent.clone(), id);
            }
            Some(holder) if holder == id => {}
            Some(holder) => {
                self.record(
                    id,
                    HubEventKind::RegistrationRefused {
                        agent_id: agent.clone(),
                        held_by: holder,
                    },
                );
                self.say(format_args!(
                    "agent {agent} (conn {id}) not registered for pushes: conn {holder} holds it"
                ));
            }
        }
        let field = |key: &str, default: Value| frame.get(key).cloned().unwrap_or(default);
        let entry = PresenceEntry {
            name: field("name", json!(agent)),
            status: field("status", json!("connected")),
            capabilities: field("capabilities", json!([])),
            connected_at: now.ms,
            last_seen: now.at,
            fsm_state: None,
        };
        let shown = entry.to_json(&agent);
        self.presence.insert(agent.clone(), entry);
        self.broadcast(|| Delivery::AgentJoined {
            agent_id: agent.clone(),
            agent: shown.clone(),
        });
        if let Some(url) = frame.get("ollama_url").and_then(Value::as_str) {
            self.ollama.insert(agent.clone(), url.to_string());
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.subscriptions += 1;
            session.agent_id = Some(agent.clone());
            session.identified = true;
        }
        self.record(
            id,
            HubEventKind::Identified {
                agent_id: agent.clone(),
            },
        );
        self.say(format_args!("agent {agent} identified (conn {id})"));
        if behaviour.repush_before_reassign {
            let deadline = later(now.at, self.timings.join_schedule_delay);
            if let Some(session) = self.sessions.get_mut(&id) {
                session.join_schedule = Some(deadline);
            }
        } else {
            self.schedule(now);
        }
        Reply::json(json!({"type": "identified", "agent_id": agent}))
    }
}

fn task_ack(task_id: &str, status: &str) -> Reply {
    Reply::json(json!({"type": "task_ack", "task_id": task_id, "status": status}))
}
