//! The raw-socket helpers of the dev hub's protocol tests: an awc WebSocket and plain
//! functions to send, receive and ask.

use std::collections::HashMap;

use agentcom_sidecar::devhub::{DevHub, DevHubOptions, HubEvent, HubEventKind};
use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::{Ws, WAIT};

pub fn tokens() -> HashMap<String, String> {
    HashMap::from([("a1".into(), "t1".into()), ("a2".into(), "t2".into())])
}

pub fn hub_with_tokens() -> DevHub {
    DevHub::start(DevHubOptions {
        tokens: Some(tokens()),
        ..DevHubOptions::default()
    })
    .expect("hub starts")
}

pub async fn connect(client: &awc::Client, url: &str) -> Ws {
    let (_, ws) = client.ws(url).connect().await.expect("websocket connects");
    ws
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("frame sent");
}

pub async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(Some(Err(_)) | None) => None,
        Err(_) => panic!("no frame within {WAIT:?}"),
    }
}

pub async fn recv_json(ws: &mut Ws) -> Value {
    match next_frame(ws).await {
        Some(Frame::Text(text)) => serde_json::from_slice(&text).expect("JSON text frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Sends `frame` and returns the hub's answer.
pub async fn ask(ws: &mut Ws, frame: Value) -> Value {
    send(ws, frame).await;
    recv_json(ws).await
}

pub async fn identify(ws: &mut Ws, agent_id: &str, token: &str) -> Value {
    let frame = json!({"type": "identify", "agent_id": agent_id, "token": token,
        "name": format!("{agent_id} name"), "status": "idle", "capabilities": ["code"],
        "client_type": "sidecar", "protocol_version": 1});
    ask(ws, frame).await
}

pub async fn identified(client: &awc::Client, hub: &DevHub, agent_id: &str, token: &str) -> Ws {
    let mut ws = connect(client, &hub.ws_url()).await;
    let reply = identify(&mut ws, agent_id, token).await;
    assert_eq!(reply, json!({"type": "identified", "agent_id": agent_id}));
    ws
}

pub fn error(code: &str) -> Value {
    json!({"type": "error", "error": code})
}

pub fn is_identified(agent: &str) -> impl Fn(&HubEvent) -> bool + '_ {
    move |e| matches!(&e.kind, HubEventKind::Identified { agent_id } if agent_id == agent)
}

/// POST /api/admin/push-task; status and JSON body.
pub async fn push_task(hub: &DevHub, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let client = awc::Client::new();
    let mut request = client.post(format!("{}/api/admin/push-task", hub.http_url()));
    if let Some(token) = bearer {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut response = request.send_json(&body).await.expect("HTTP answer");
    let json = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status().as_u16(), json)
}

pub async fn get_json(client: &awc::Client, url: String) -> Value {
    let mut response = client.get(url).send().await.expect("HTTP answer");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON body")
}
