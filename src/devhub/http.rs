//! The hub's HTTP side: `/health`, `/api/agents` and the admin route that pushes a task to a
//! connected agent.

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::state::{now_ms, Hub};

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
