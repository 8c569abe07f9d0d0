//! The hub's HTTP side: `/health`, `/api/agents` and the admin route that pushes a task to a
//! connected agent, as the real hub has them; and, for the dev hub only, `/api/events`, the
//! recorded events for clients in other processes (the benchmark).

use std::time::Duration;

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::state::{now_ms, Hub};
use super::tokens::RegisterError;
use super::validation::{self, HttpBody};
use super::{HubEvent, HubEventKind};

/// Events per `/api/events` answer when the request does not say.
const EVENTS_PAGE: usize = 1000;
/// Most events per `/api/events` answer.
const EVENTS_PAGE_MAX: usize = 10_000;
/// Longest `wait_ms` of `/api/events`.
const EVENTS_WAIT_MAX: Duration = Duration::from_secs(30);

/// `GET /health`.
pub(crate) async fn health(hub: web::Data<Hub>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "service": "agent_com",
        "agents_connected": hub.agents().len(),
    }))
}

/// `GET /api/agents`.
pub(crate) async fn agents(hub: web::Data<Hub>) -> HttpResponse {
    let agents: Vec<Value> = hub.agents().iter().map(|a| a.to_json()).collect();
    HttpResponse::Ok().json(json!({ "agents": agents }))
}

/// `POST /api/admin/push-task`: `{"agent_id":…, "description":…, "metadata":…, …}` becomes a
/// `task_assign` frame on that agent's connection.
pub(crate) async fn push_task(
    req: HttpRequest,
    body: web::Bytes,
    hub: web::Data<Hub>,
) -> HttpResponse {
    if !hub.admin_token_ok(bearer(&req).unwrap_or("")) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_body");
    };
    let agent_id = match fields.remove("agent_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return error(StatusCode::BAD_REQUEST, "missing_agent_id"),
    };
    let task_id = format!("task-{:016x}", fastrand::u64(..));
    let frame = task_assign(&task_id, fields).to_string();
    if !hub.push_task(&agent_id, &task_id, frame) {
        return error(StatusCode::NOT_FOUND, "agent_not_connected");
    }
    HttpResponse::Ok().json(json!({ "status": "queued", "task_id": task_id }))
}

/// `POST /api/onboard/register` (no auth): `{"agent_id":…}` → 201 with a new token and the
/// hub's URLs (from the request's `Host`, as the hub builds them), 409 if the id already has a
/// token, 422 if the body fails the hub's schema or the id is empty.
pub(crate) async fn register(
    req: HttpRequest,
    body: web::Bytes,
    hub: web::Data<Hub>,
) -> HttpResponse {
    let Some(fields) = json_body(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json");
    };
    if let Err(errors) = validation::validate_http(&fields, HttpBody::Register) {
        return validation_failed(errors);
    }
    let agent_id = fields.get("agent_id").and_then(Value::as_str).unwrap_or("");
    if agent_id.is_empty() {
        return validation_failed(vec![json!({"field": "agent_id", "error": "required",
            "detail": "agent_id must not be empty"})]);
    }
    let token = match hub.register_agent(agent_id) {
        Ok(token) => token,
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
    HttpResponse::Created().json(json!({
        "agent_id": agent_id,
        "token": token,
        "hub_ws_url": format!("{ws}://{host}/ws"),
        "hub_api_url": format!("{http}://{host}"),
        "default_repo": hub.default_repo(),
    }))
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

/// 422 `{"error":"validation_failed","errors":[…]}`.
fn validation_failed(errors: Vec<Value>) -> HttpResponse {
    HttpResponse::build(StatusCode::UNPROCESSABLE_ENTITY)
        .json(json!({"error": "validation_failed", "errors": errors}))
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
/// frames received, identifies, tasks pushed), from `seq` N on, oldest first:
///
/// ```json
/// {"events": [{"seq": 7, "conn": 2, "mono_ns": 81234567890123, "kind": "frame",
///              "type": "task_accepted", "task_id": "task-0123456789abcdef", "bytes": 70}],
///  "next": 8, "total": 8, "clock": "CLOCK_MONOTONIC"}
/// ```
///
/// `mono_ns` is the moment of the event on the machine's monotonic clock (see
/// [`HubEvent::mono_ns`]); `clock` says which clock that is. Frames are described by their
/// `type`, `task_id` and size only: their text, identify tokens included, is never served.
/// With `wait_ms`, an answer that would be empty waits for the next event instead (a long
/// poll), so a client learns of an event at once without polling in a loop.
///
/// There is no authentication: this is a development hub, listening on loopback unless told
/// otherwise, and the real hub has no such route. Anyone who can reach the port can read
/// which agents connect and which tasks they get.
pub(crate) async fn events(query: web::Query<EventsQuery>, hub: web::Data<Hub>) -> HttpResponse {
    let since = query.since;
    let limit = query.limit.unwrap_or(EVENTS_PAGE).clamp(1, EVENTS_PAGE_MAX);
    let wait = Duration::from_millis(query.wait_ms).min(EVENTS_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look: an event recorded in between still wakes the wait.
    let mut added = hub.watch_events();
    let mut closed = false;
    loop {
        let (events, total) = hub.read_events(since, |events, total| {
            let page = events.iter().take(limit).enumerate();
            let page = page.map(|(i, event)| event_json(since + i, event));
            (page.collect::<Vec<Value>>(), total)
        });
        if !events.is_empty() || closed || tokio::time::Instant::now() >= deadline {
            return HttpResponse::Ok().json(json!({
                "next": since + events.len(),
                "total": total,
                "clock": CLOCK,
                "events": events,
            }));
        }
        let changed = tokio::time::timeout_at(deadline, added.changed()).await;
        closed = matches!(changed, Ok(Err(_)));
    }
}

#[cfg(unix)]
const CLOCK: &str = "CLOCK_MONOTONIC";
#[cfg(not(unix))]
const CLOCK: &str = "hub_start";

/// One event as `/api/events` serves it.
fn event_json(seq: usize, event: &HubEvent) -> Value {
    let mut out = json!({"seq": seq, "conn": event.conn, "mono_ns": event.mono_ns});
    let fields = match &event.kind {
        HubEventKind::Connected => json!({"kind": "connected"}),
        HubEventKind::Frame { text, json } => {
            let text_field = |key: &str| json.get(key).and_then(Value::as_str);
            json!({"kind": "frame", "type": text_field("type"), "task_id": text_field("task_id"),
                "bytes": text.len()})
        }
        HubEventKind::BinaryFrame(bytes) => json!({"kind": "binary_frame", "bytes": bytes}),
        HubEventKind::WsPong(payload) => json!({"kind": "ws_pong", "bytes": payload.len()}),
        HubEventKind::CloseReceived { code, reason } => {
            json!({"kind": "close_received", "code": code, "reason": reason})
        }
        HubEventKind::Identified { agent_id } => {
            json!({"kind": "identified", "agent_id": agent_id})
        }
        HubEventKind::IdentifyRefused { agent_id, error } => {
            json!({"kind": "identify_refused", "agent_id": agent_id, "error": error})
        }
        HubEventKind::Disconnected => json!({"kind": "disconnected"}),
        HubEventKind::TaskPushed { agent_id, task_id } => {
            json!({"kind": "task_pushed", "agent_id": agent_id, "task_id": task_id})
        }
        HubEventKind::AgentRegistered { agent_id } => {
            json!({"kind": "agent_registered", "agent_id": agent_id})
        }
    };
    if let (Value::Object(out), Value::Object(fields)) = (&mut out, fields) {
        out.extend(fields.into_iter().filter(|(_, v)| !v.is_null()));
    }
    out
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The frame for a new task: the request's own fields (but `type` and `task_id`), over the
/// hub's defaults.
fn task_assign(task_id: &str, fields: Map<String, Value>) -> Value {
    let mut frame = Map::new();
    frame.insert("description".into(), json!(""));
    frame.insert("metadata".into(), json!({}));
    frame.insert("assigned_at".into(), json!(now_ms()));
    frame.insert("generation".into(), json!(1));
    frame.extend(fields);
    frame.insert("type".into(), json!("task_assign"));
    frame.insert("task_id".into(), json!(task_id));
    Value::Object(frame)
}

fn error(status: StatusCode, error: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": error }))
}
