//! ReconcileActor: finds tasks the hub assigned to this agent whose push never arrived.
//!
//! The sidecar learns of work by push, and the current hub can push into a connection that
//! died without a close: it keeps such a session registered for well over a minute, and a
//! task assigned meanwhile sits `assigned` to this agent at the hub and never arrives. So
//! this actor asks the hub's HTTP API what it believes this agent holds
//! (`GET /api/tasks?status=assigned&assigned_to=<agent_id>`, the agent's token as bearer,
//! no redirects) right after a session that followed one that ended without a close, and
//! every `reconcile_interval` while no task is held. A task it does not hold is handed to the
//! task machine exactly as a push would be (a `task_assign` built from the hub's record, at
//! the hub's generation): the same rules decide (accept, adopt a known id, park, refuse),
//! and a push that arrives after all changes nothing. With the interval set to 0 it does
//! nothing at all.
//!
//! It accepts [`SessionIdentified`], [`SessionLost`] and [`TasksChanged`]; its only state is
//! the session, whether a task is held, and one request at a time. A restart asks for the
//! session and the tasks again.

use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Map, Value};

use super::hub::{AnnounceSession, SessionIdentified, SessionLost, TaskEventFromHub};
use super::queue::{AnnounceTasks, TaskEnded, TasksChanged};
use super::{Child, Env, Stop};
use crate::bus::Bus;
use crate::log_event;
use crate::protocol::{Incoming, TaskIdField};
use crate::tasks::{Assign, Event};

/// Largest answer read from the hub's task list.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// A task that left the sidecar's hands this recently is never taken from the hub's list:
/// the list may have been made before the hub handled the task's report (a new lifetime of
/// the same id comes by push).
const RECENTLY_ENDED: std::time::Duration = std::time::Duration::from_secs(300);
/// Fields of the hub's task record that a `task_assign` carries.
const ASSIGN_FIELDS: &[&str] = &[
    "description",
    "metadata",
    "generation",
    "assigned_at",
    "repo",
    "branch",
    "file_hints",
    "success_criteria",
    "verification_steps",
    "complexity",
    "routing_decision",
    "skip_verification",
    "verification_timeout_ms",
    "max_verification_retries",
];

pub struct ReconcileActor {
    env: Env,
    session: Option<u64>,
    /// The tasks the sidecar has in hand (held or recovering): not asked about.
    in_hand: Vec<String>,
    /// Tasks that ended lately, and when (see [`RECENTLY_ENDED`]); at most 64.
    ended: std::collections::VecDeque<(String, std::time::Instant)>,
    ticker: Option<SpawnHandle>,
    asking: bool,
    /// The last request failed (logged once until one succeeds).
    failing: bool,
    client: Option<awc::Client>,
}

impl ReconcileActor {
    pub fn new(env: &Env) -> Self {
        ReconcileActor {
            env: env.clone(),
            session: None,
            in_hand: Vec::new(),
            ended: std::collections::VecDeque::new(),
            ticker: None,
            asking: false,
            failing: false,
            client: None,
        }
    }

    fn interval(&self) -> Option<Duration> {
        self.env.config.reconcile_interval
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let Some(interval) = self.interval() else {
            return;
        };
        if let Some(t) = self.ticker.take() {
            ctx.cancel_future(t);
        }
        self.ticker = Some(ctx.run_later(interval, move |act, ctx| {
            act.ticker = None;
            if act.in_hand.is_empty() {
                act.ask(ctx, "idle");
            }
            act.schedule(ctx);
        }));
    }

    /// One request to the hub's task list, off the event loop's way (awc is async).
    fn ask(&mut self, ctx: &mut Context<Self>, why: &'static str) {
        let Some(session) = self.session else { return };
        if self.asking {
            return;
        }
        let client = match &self.client {
            Some(c) => c.clone(),
            None => match crate::hubconn::build_api_client(&self.env.config) {
                Ok(c) => {
                    self.client = Some(c.clone());
                    c
                }
                Err(e) => {
                    log_event!(self.env.log, Warn, "reconcile_failed", error = e);
                    return;
                }
            },
        };
        self.asking = true;
        let config = &self.env.config;
        let url = format!(
            "{}/api/tasks?status=assigned&assigned_to={}",
            config.hub_url.api_base(),
            crate::register::hub::percent_encode(&config.agent_id)
        );
        let token = format!("Bearer {}", config.token.expose());
        log_event!(
            self.env.log,
            Debug,
            "reconcile_asked",
            session = session,
            why = why
        );
        let request = async move {
            let mut response = client
                .get(&url)
                .insert_header(("Authorization", token))
                .insert_header((
                    "User-Agent",
                    concat!("agentcom-sidecar/", env!("CARGO_PKG_VERSION")),
                ))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .body()
                .limit(MAX_ANSWER_BYTES)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "the hub answered {} to GET /api/tasks",
                    status.as_u16()
                ));
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| format!("not JSON: {e}"))
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(request).map(move |answer, act, _| {
                act.asking = false;
                match answer {
                    Ok(list) => {
                        act.failing = false;
                        act.found(session, &list);
                    }
                    Err(e) if !std::mem::replace(&mut act.failing, true) => log_event!(
                        act.env.log,
                        Warn,
                        "reconcile_failed",
                        error = e,
                        note = "tasks are still taken by push; asked again later"
                    ),
                    Err(_) => {}
                }
            }),
        );
    }

    /// The hub's list: each task assigned here that the sidecar does not have in hand goes
    /// to the task machine as a push.
    fn found(&mut self, session: u64, list: &Value) {
        if self.session != Some(session) {
            return;
        }
        let tasks = list.get("tasks").and_then(Value::as_array);
        for task in tasks.into_iter().flatten() {
            let Some(frame) = assign_frame(task, &self.env.config.agent_id) else {
                continue;
            };
            let Ok(Incoming::TaskAssign(a)) = Incoming::parse(&frame) else {
                continue;
            };
            let Some(TaskIdField::Str(task_id)) = &a.task_id else {
                continue;
            };
            let ended_lately = self
                .ended
                .iter()
                .any(|(id, at)| id == task_id && at.elapsed() < RECENTLY_ENDED);
            if self.in_hand.contains(task_id) || ended_lately {
                continue;
            }
            log_event!(
                self.env.log,
                Warn,
                "reconcile_found",
                task_id = task_id,
                generation = a.generation,
                note = "assigned to this agent at the hub, but its push never arrived: taken as if pushed"
            );
            let _ = self.env.bus.send(TaskEventFromHub {
                session,
                event: Event::Assign(Assign {
                    task_id: task_id.clone(),
                    generation: a.generation,
                    raw: a.raw.clone(),
                    target_type: a.target_type.clone(),
                    model: a.model.clone(),
                }),
            });
        }
    }
}

/// The `task_assign` text for one record of the hub's task list, if it is assigned to
/// `agent_id` (the list is filtered by the hub; this checks again).
fn assign_frame(task: &Value, agent_id: &str) -> Option<String> {
    let record = task.as_object()?;
    if record.get("assigned_to").and_then(Value::as_str) != Some(agent_id)
        || record.get("status").and_then(Value::as_str) != Some("assigned")
    {
        return None;
    }
    let id = record.get("id").or_else(|| record.get("task_id"))?.clone();
    let mut frame = Map::new();
    frame.insert("type".into(), json!("task_assign"));
    frame.insert("task_id".into(), id);
    for key in ASSIGN_FIELDS {
        if let Some(v) = record.get(*key) {
            frame.insert((*key).into(), v.clone());
        }
    }
    Some(Value::Object(frame).to_string())
}

impl Actor for ReconcileActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if self.interval().is_some() {
            let _ = self.env.bus.send(AnnounceSession);
            let _ = self.env.bus.send(AnnounceTasks);
        }
    }
}

crate::answers_probe!(ReconcileActor);

impl Child for ReconcileActor {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<SessionIdentified>());
        bus.register(addr.clone().recipient::<SessionLost>());
        bus.register(addr.clone().recipient::<TasksChanged>());
        bus.register(addr.clone().recipient::<TaskEnded>());
    }
}

impl Handler<Stop> for ReconcileActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<SessionIdentified> for ReconcileActor {
    type Result = ();
    fn handle(&mut self, msg: SessionIdentified, ctx: &mut Context<Self>) {
        if self.interval().is_none() || self.session == Some(msg.session) {
            return;
        }
        self.session = Some(msg.session);
        if msg.after_unclean {
            self.ask(ctx, "the previous session ended without a close");
        }
        self.schedule(ctx);
    }
}

impl Handler<SessionLost> for ReconcileActor {
    type Result = ();
    fn handle(&mut self, msg: SessionLost, ctx: &mut Context<Self>) {
        if self.session == Some(msg.session) {
            self.session = None;
            if let Some(t) = self.ticker.take() {
                ctx.cancel_future(t);
            }
        }
    }
}

impl Handler<TaskEnded> for ReconcileActor {
    type Result = ();
    fn handle(&mut self, msg: TaskEnded, _: &mut Context<Self>) {
        if self.ended.len() >= 64 {
            self.ended.pop_front();
        }
        self.ended
            .push_back((msg.task_id, std::time::Instant::now()));
    }
}

impl Handler<TasksChanged> for ReconcileActor {
    type Result = ();
    fn handle(&mut self, msg: TasksChanged, _: &mut Context<Self>) {
        self.in_hand = msg
            .active
            .map(|(id, _)| id)
            .into_iter()
            .chain(msg.recovering)
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_record_becomes_the_task_assign_a_push_would_have_been() {
        let record = json!({
            "id": "task-1", "status": "assigned", "assigned_to": "a1", "generation": 4,
            "description": "d", "metadata": {"k": 1}, "assigned_at": 7, "priority": 2,
            "history": [], "routing_decision": {"target_type": "ollama", "selected_model": "m"},
        });
        let frame = assign_frame(&record, "a1").unwrap();
        let Ok(Incoming::TaskAssign(a)) = Incoming::parse(&frame) else {
            panic!("{frame}")
        };
        assert_eq!(a.task_id, Some(TaskIdField::Str("task-1".into())));
        assert_eq!(a.generation, 4);
        assert_eq!(a.target_type.as_deref(), Some("ollama"));
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["metadata"], json!({"k": 1}));
        assert!(v.get("history").is_none() && v.get("priority").is_none());
        assert!(assign_frame(&record, "other").is_none());
        let mut queued = record.clone();
        queued["status"] = json!("queued");
        assert!(assign_frame(&queued, "a1").is_none());
        assert_eq!(
            crate::register::hub::percent_encode("a b/é"),
            "a%20b%2F%C3%A9"
        );
    }
}
