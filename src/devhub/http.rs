//! The hub's HTTP side, as its `Endpoint` serves it: `/health`, `/api/agents`, the task API
//! (`POST /api/tasks`, `GET /api/tasks[/:id]`, `POST /api/tasks/:id/cancel`), the admin
//! routes (push-task, restart an agent, `DELETE /admin/tokens/:agent_id`),
//! `POST /api/onboard/register` and the room (`POST /api/room/message`,
//! `POST /api/room/message/human`, `GET /api/room/messages`); and, for the dev hub
//! only, `/api/events`, the recorded events for clients in other processes (the benchmark).
//! Authenticated routes take `Authorization: Bearer <token>` with any agent's token.

use std::time::Duration;

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::core::Now;
use super::events::event_json;
use super::state::Hub;
use super::tokens::RegisterError;
use super::validation::{self, HttpBody};

/// Events per `/api/events` answer when the request does not say.
const EVENTS_PAGE: usize = 1000;
/// Most events per `/api/events` answer.
const EVENTS_PAGE_MAX: usize = 10_000;
/// Longest `wait_ms` of `/api/events`.
const EVENTS_WAIT_MAX: Duration = Duration::from_secs(30);

/// Every route, on `app`.
pub(crate) fn routes(app: &mut web::ServiceConfig) {
    app.route("/health", web::get().to(health))
        .route("/api/agents", web::get().to(agents))
        .route("/api/tasks", web::post().to(submit))
        .route("/api/tasks", web::get().to(list_tasks))
        .route("/api/tasks/{task_id}", web::get().to(get_task))
        .route("/api/tasks/{task_id}/cancel", web::post().to(cancel))
        .route("/api/dev/tasks/{task_id}/live", web::get().to(live))
        .route("/api/admin/push-task", web::post().to(push_task))
        .route(
            "/api/admin/agents/{agent_id}/restart",
            web::post().to(restart_agent),
        )
        .route("/api/onboard/register", web::post().to(register))
        .route("/api/room/message", web::post().to(room_message))
        .route(
            "/api/room/message/human",
            web::post().to(room_message_human),
        )
        .route("/api/room/messages", web::get().to(room_messages))
        .route("/admin/tokens/{agent_id}", web::delete().to(revoke_token))
        .route("/api/events", web::get().to(events))
        .default_service(web::to(|| async {
            reply(404, json!({"error": "not_found"}))
        }));
}

/// `GET /health`.
async fn health(hub: web::Data<Hub>) -> HttpResponse {
    let connected = hub.with_core(|core| core.presence.len());
    reply(
        200,
        json!({"status": "ok", "service": "agent_com", "agents_connected": connected}),
    )
}

/// `GET /api/agents` (no auth, as on the hub): presence, with each agent's FSM state.
async fn agents(hub: web::Data<Hub>) -> HttpResponse {
    let agents = hub.with_core(|core| core.agents_json());
    reply(200, json!({ "agents": agents }))
}

/// `POST /api/tasks`.
async fn submit(req: HttpRequest, body: web::Bytes, hub: web::Data<Hub>) -> HttpResponse {
    let Some(agent) = authenticated(&req, &hub) else {
        return unauthorized();
    };
    let Some(fields) = json_body(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json");
    };
    let (status, body) = hub.with_core(|core| core.submit(&fields, &agent, Now::get()));
    reply(status, body)
}

/// The query of `GET /api/tasks`.
#[derive(Debug, Deserialize)]
struct TasksQuery {
    status: Option<String>,
    assigned_to: Option<String>,
}

/// `GET /api/tasks?status=…&assigned_to=…` (dead letters not included, as on the hub).
async fn list_tasks(
    req: HttpRequest,
    query: web::Query<TasksQuery>,
    hub: web::Data<Hub>,
) -> HttpResponse {
    if authenticated(&req, &hub).is_none() {
        return unauthorized();
    }
    let tasks: Vec<Value> = hub.with_core(|core| {
        let mut tasks: Vec<_> = core
            .queue
            .all()
            .filter(|t| t.status != super::queue::Status::DeadLetter)
            .filter(|t| query.status.as_deref().is_none_or(|s| s == t.status.name()))
            .filter(|t| query.assigned_to.is_none() || t.assigned_to == query.assigned_to)
            .collect();
        tasks.sort_by_key(|t| (t.priority, t.created_at, t.seq));
        tasks.into_iter().map(|t| t.to_json()).collect()
    });
    reply(200, json!({"count": tasks.len(), "tasks": tasks}))
}

/// `GET /api/tasks/:id`.
async fn get_task(req: HttpRequest, path: web::Path<String>, hub: web::Data<Hub>) -> HttpResponse {
    if authenticated(&req, &hub).is_none() {
        return unauthorized();
    }
    let task_id = path.into_inner();
    match hub.with_core(|core| core.queue.get(&task_id).map(|t| t.to_json())) {
        Some(task) => reply(200, task),
        None => reply(404, json!({"error": "task_not_found", "task_id": task_id})),
    }
}

/// `GET /api/dev/tasks/:id/live` (the dev hub's own): the dashboard's live view of the task,
/// the text per event type as the dashboard appends it.
async fn live(req: HttpRequest, path: web::Path<String>, hub: web::Data<Hub>) -> HttpResponse {
    if authenticated(&req, &hub).is_none() {
        return unauthorized();
    }
    let task_id = path.into_inner();
    reply(200, hub.with_core(|core| core.live.to_json(&task_id)))
}

/// `POST /api/tasks/:id/cancel`.
async fn cancel(req: HttpRequest, path: web::Path<String>, hub: web::Data<Hub>) -> HttpResponse {
    if authenticated(&req, &hub).is_none() {
        return unauthorized();
    }
    let task_id = path.into_inner();
    match hub.with_core(|core| core.cancel(&task_id, Now::get())) {
        Some(answer) => reply(200, answer),
        None => reply(404, json!({"error": "task_not_found", "task_id": task_id})),
    }
}

/// `POST /api/admin/push-task`: `{"agent_id","description","metadata"}` becomes a
/// `task_assign` (generation 0) on the agent's registered session; the queue never knows it.
async fn push_task(req: HttpRequest, body: web::Bytes, hub: web::Data<Hub>) -> HttpResponse {
    let Some(agent) = authenticated(&req, &hub) else {
        return unauthorized();
    };
    let Some(fields) = json_body(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json");
    };
    let (status, body) = hub.with_core(|core| core.push_task(&fields, &agent, Now::get()));
    reply(status, body)
}

/// `POST /api/admin/agents/:id/restart` with an optional `{"reason"}`: `restart_sidecar`.
async fn restart_agent(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    hub: web::Data<Hub>,
) -> HttpResponse {
    if authenticated(&req, &hub).is_none() {
        return unauthorized();
    }
    let agent_id = path.into_inner();
    let fields = json_body(&body).unwrap_or_default();
    let reason = fields
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("admin_commanded");
    if hub.with_core(|core| core.restart_agent(&agent_id, reason)) {
        reply(
            200,
            json!({"status": "restart_commanded", "agent_id": agent_id, "reason": reason}),
        )
    } else {
        reply(
            404,
            json!({"error": "agent_not_connected", "agent_id": agent_id}),
        )
    }
}

/// `DELETE /admin/tokens/:agent_id`: the agent's tokens are revoked (any authenticated
/// agent may, as on the hub; an unknown agent id is no error there either): 200
/// `{"status":"revoked","agent_id"}`. Its open sessions stay; its next identify fails.
async fn revoke_token(
    req: HttpRequest,
    path: web::Path<String>,
    hub: web::Data<Hub>,
) -> HttpResponse {
    if authenticated(&req, &hub).is_none() {
        return unauthorized();
    }
    let agent_id = path.into_inner();
    hub.with_core(|core| core.tokens.revoke(&agent_id));
    reply(200, json!({"status": "revoked", "agent_id": agent_id}))
}

/// `POST /api/onboard/register` (no auth): `{"agent_id":…}` → 201 with a new token and the
/// hub's URLs (from the request's `Host`, as the hub builds them), 409 if the id already has a
/// token, 422 if the body fails the hub's schema or the id is empty.
async fn register(req: HttpRequest, body: web::Bytes, hub: web::Data<Hub>) -> HttpResponse {
    let Some(fields) = json_body(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json");
    };
    if let Err(errors) = validation::validate_http(&fields, HttpBody::Register) {
        return reply(422, json!({"error": "validation_failed", "errors": errors}));
    }
    let agent_id = fields.get("agent_id").and_then(Value::as_str).unwrap_or("");
    if agent_id.is_empty() {
        let errors = json!([{"field": "agent_id", "error": "required", "detail": "agent_id must not be empty"}]);
        return reply(422, json!({"error": "validation_failed", "errors": errors}));
    }
    let registered = hub.with_core(|core| {
        let token = core.tokens.register(agent_id)?;
        core.record(
            0,
            super::HubEventKind::AgentRegistered {
                agent_id: agent_id.to_string(),
            },
        );
        core.say(format_args!("agent {agent_id} registered"));
        Ok((token, core.default_repo().map(str::to_string)))
    });
    let (token, default_repo) = match registered {
        Ok(answer) => answer,
        Err(RegisterError::AlreadyRegistered) => {
            return error(StatusCode::CONFLICT, "agent_id already registered")
        }
    };
    let info = req.connection_info();
    let (ws, http) = if info.scheme() == "https" {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let host = info.host();
    reply(
        201,
        json!({
            "agent_id": agent_id,
            "token": token,
            "hub_ws_url": format!("{ws}://{host}/ws"),
            "hub_api_url": format!("{http}://{host}"),
            "default_repo": default_repo,
        }),
    )
}

/// `POST /api/room/message` `{"text","type"}`: a room message from the token's agent.
async fn room_message(req: HttpRequest, body: web::Bytes, hub: web::Data<Hub>) -> HttpResponse {
    room_post(req, body, hub, false)
}

/// `POST /api/room/message/human` `{"from","text","type"}`: a room message from anyone the
/// body names (any valid token may post it).
async fn room_message_human(
    req: HttpRequest,
    body: web::Bytes,
    hub: web::Data<Hub>,
) -> HttpResponse {
    room_post(req, body, hub, true)
}

fn room_post(req: HttpRequest, body: web::Bytes, hub: web::Data<Hub>, human: bool) -> HttpResponse {
    let Some(agent) = authenticated(&req, &hub) else {
        return unauthorized();
    };
    let Some(fields) = json_body(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json");
    };
    let (status, body) = hub.with_core(|core| core.room_post(&agent, &fields, human, Now::get()));
    reply(status, body)
}

/// The query of `GET /api/room/messages`, as text: the hub's `String.to_integer` crashes the
/// request (500) on anything but an integer.
#[derive(Debug, Deserialize)]
struct RoomQuery {
    since: Option<String>,
    limit: Option<String>,
}

/// `GET /api/room/messages?since=SEQ&limit=N` (no auth): `{"messages", "last_seq"}`.
async fn room_messages(query: web::Query<RoomQuery>, hub: web::Data<Hub>) -> HttpResponse {
    let number = |v: &Option<String>, default: i64| match v {
        None => Some(default),
        Some(text) => text.parse::<i64>().ok(),
    };
    let (Some(since), Some(limit)) = (number(&query.since, 0), number(&query.limit, 50)) else {
        return reply(500, json!({"error": "internal_server_error"}));
    };
    reply(200, hub.with_core(|core| core.room_messages(since, limit)))
}

/// The query of `GET /api/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// The first event wanted, by `seq`: the `next` of the previous answer. Default 0.
    #[serde(default)]
    since: usize,
    /// At most this many events (default 1000, at most 10000).
    limit: Option<usize>,
    /// With no event from `since` on yet, wait up to this long (at most 30 s) for one.
    #[serde(default)]
    wait_ms: u64,
}

/// `GET /api/events?since=N&limit=L&wait_ms=W`: the events the hub recorded (connections,
/// frames received, identifies, tasks assigned and pushed, take-backs, violations, …), from
/// `seq` N on, oldest first:
///
/// ```json
/// {"events": [{"seq": 7, "conn": 2, "mono_ns": 81234567890123, "kind": "frame",
///              "type": "task_accepted", "task_id": "task-0123456789abcdef", "bytes": 70}],
///  "next": 8, "total": 8, "clock": "CLOCK_MONOTONIC"}
/// ```
///
/// `mono_ns` is the moment of the event on the machine's monotonic clock (see
/// [`HubEvent::mono_ns`](super::HubEvent::mono_ns)); `clock` says which clock that is. Frames
/// are described by their `type`, `task_id` and size only: their text, identify tokens
/// included, is never served. With `wait_ms`, an answer that would be empty waits for the next
/// event instead (a long poll), so a client learns of an event at once without polling.
///
/// There is no authentication: this is a development hub, listening on loopback unless told
/// otherwise, and the real hub has no such route. Anyone who can reach the port can read
/// which agents connect and which tasks they get.
async fn events(query: web::Query<EventsQuery>, hub: web::Data<Hub>) -> HttpResponse {
    let since = query.since;
    let limit = query.limit.unwrap_or(EVENTS_PAGE).clamp(1, EVENTS_PAGE_MAX);
    let wait = Duration::from_millis(query.wait_ms).min(EVENTS_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look: an event recorded in between still wakes the wait.
    let mut added = hub.events.watch();
    let mut closed = false;
    loop {
        let (events, total) = hub.events.read(since, |events, total| {
            let page = events.iter().take(limit).enumerate();
            let page = page.map(|(i, event)| event_json(since + i, event));
            (page.collect::<Vec<Value>>(), total)
        });
        if !events.is_empty() || closed || tokio::time::Instant::now() >= deadline {
            return reply(
                200,
                json!({
                    "next": since + events.len(),
                    "total": total,
                    "clock": CLOCK,
                    "events": events,
                }),
            );
        }
        let changed = tokio::time::timeout_at(deadline, added.changed()).await;
        closed = matches!(changed, Ok(Err(_)));
    }
}

#[cfg(unix)]
const CLOCK: &str = "CLOCK_MONOTONIC";
#[cfg(not(unix))]
const CLOCK: &str = "hub_start";

/// The agent a request's `Authorization: Bearer <token>` authenticates (the hub matches the
/// header's `Bearer ` prefix exactly).
fn authenticated(req: &HttpRequest, hub: &Hub) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    hub.with_core(|core| core.tokens.bearer_agent(token).map(str::to_string))
}

fn unauthorized() -> HttpResponse {
    reply(
        401,
        json!({"error": "unauthorized", "hint": "provide Authorization: Bearer <token>"}),
    )
}

/// A request body's fields; `None` if it is not JSON (a 400).
fn json_body(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Some(fields),
        // The hub's JSON parser puts any other JSON value under "_json": no field is there.
        Ok(_) => Some(Map::new()),
        Err(_) => None,
    }
}

fn reply(status: u16, body: Value) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(body)
}

fn error(status: StatusCode, error: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": error }))
}
