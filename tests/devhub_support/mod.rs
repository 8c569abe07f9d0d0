//! Shared by the dev hub's integration tests: a hub with three known agents and test timings,
//! and an agent played by a real awc WebSocket client. Every wait has a generous timeout and
//! returns as soon as what it waits for is there.
#![allow(dead_code)]

pub mod raw;

use std::future::Future;
use std::time::{Duration, Instant};

use actix_codec::Framed;
use agentcom_sidecar::devhub::{
    DevHub, DevHubOptions, HubEvent, HubEventKind, HubLimits, HubTimings,
};
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(15);
pub const HOUR: Duration = Duration::from_secs(3600);

pub type Ws = Framed<BoxedSocket, Codec>;

pub fn run<F: Future>(test: F) -> F::Output {
    actix_rt::System::new().block_on(test)
}

/// Timings that never fire unless a test shortens them.
pub fn quiet_timings() -> HubTimings {
    HubTimings {
        acceptance_timeout: HOUR,
        stuck_threshold: HOUR,
        stuck_sweep_interval: HOUR,
        overdue_sweep_interval: HOUR,
        task_ttl: HOUR,
        ttl_sweep_interval: HOUR,
        fallback_wait: HOUR,
        presence_ttl: HOUR,
        reaper_interval: HOUR,
        idle_timeout: HOUR,
        join_schedule_delay: Duration::from_millis(20),
    }
}

/// A hub knowing a1/t1 … a5/t5.
pub fn hub_with(timings: HubTimings, limits: HubLimits) -> DevHub {
    let tokens = (1..=5)
        .map(|n| (format!("a{n}"), format!("t{n}")))
        .collect();
    DevHub::start(DevHubOptions {
        tokens: Some(tokens),
        timings,
        limits,
        ..DevHubOptions::default()
    })
    .expect("hub starts")
}

pub fn hub() -> DevHub {
    hub_with(quiet_timings(), HubLimits::default())
}

/// The token of a1 … a5.
pub fn token(agent: &str) -> String {
    agent.replace('a', "t")
}

/// Waits for the first event matching `pred` (recorded before or after the call).
pub fn wait_event(hub: &DevHub, what: &str, pred: impl Fn(&HubEvent) -> bool) -> HubEvent {
    hub.wait_for(WAIT, pred)
        .unwrap_or_else(|| panic!("waited {WAIT:?} for {what}"))
}

/// Polls `cond` until it holds.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn taken_back(task: &str) -> impl Fn(&HubEvent) -> bool + '_ {
    move |e| matches!(&e.kind, HubEventKind::TakenBack { task_id, .. } if task_id == task)
}

/// Frames the hub pushes to every session about others (presence): skipped by `recv`.
fn is_broadcast(frame: &Value) -> bool {
    matches!(
        frame["type"].as_str(),
        Some("agent_joined" | "agent_left" | "status_changed")
    )
}

/// One agent's WebSocket session.
pub struct Agent {
    pub ws: Ws,
    pub id: String,
    /// Broadcasts `recv` skipped, in order.
    pub broadcasts: Vec<Value>,
}

impl Agent {
    /// A connected, not identified session.
    pub async fn open(hub: &DevHub, id: &str) -> Agent {
        let client = awc::Client::new();
        let (_, ws) = client
            .ws(hub.ws_url())
            .connect()
            .await
            .expect("websocket connects");
        Agent {
            ws,
            id: id.to_string(),
            broadcasts: Vec::new(),
        }
    }

    /// A session identified with the agent's token.
    pub async fn connect(hub: &DevHub, id: &str) -> Agent {
        let mut agent = Agent::open(hub, id).await;
        let reply = agent.identify().await;
        assert_eq!(reply, json!({"type": "identified", "agent_id": id}));
        agent
    }

    pub fn identify_frame(&self) -> Value {
        json!({"type": "identify", "agent_id": self.id, "token": token(&self.id),
            "name": self.id, "status": "idle", "capabilities": ["code"],
            "client_type": "sidecar", "protocol_version": 1})
    }

    pub async fn identify(&mut self) -> Value {
        let frame = self.identify_frame();
        self.ask(frame).await
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("frame sent");
    }

    /// The next frame, whatever it is; `None` when the connection ended.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("{}: no frame within {WAIT:?}", self.id),
        }
    }

    /// The next JSON text frame, presence broadcasts skipped.
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = match self.next_frame().await {
                Some(Frame::Text(text)) => serde_json::from_slice(&text).expect("JSON text frame"),
                Some(Frame::Ping(payload)) => {
                    let _ = self.ws.send(Message::Pong(payload)).await;
                    continue;
                }
                other => panic!("{}: expected a text frame, got {other:?}", self.id),
            };
            if is_broadcast(&frame) {
                self.broadcasts.push(frame);
                continue;
            }
            return frame;
        }
    }

    /// Sends `frame` and returns the next frame.
    pub async fn ask(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// The next frame is a Close: its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Some(Frame::Close(Some(reason))) => {
                    return (
                        u16::from(reason.code),
                        reason.description.unwrap_or_default(),
                    )
                }
                Some(Frame::Text(text))
                    if is_broadcast(&serde_json::from_slice(&text).unwrap_or_default()) => {}
                other => panic!("{}: expected a close frame, got {other:?}", self.id),
            }
        }
    }

    /// No text frame (but broadcasts) for `quiet`.
    pub async fn silent_for(&mut self, quiet: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Frame::Text(text)))) => {
                    let frame: Value = serde_json::from_slice(&text).unwrap_or_default();
                    if !is_broadcast(&frame) {
                        return false;
                    }
                    self.broadcasts.push(frame);
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => return false,
            }
        }
    }

    /// Waits for a `task_assign` and answers `task_accepted` at its generation.
    pub async fn accept_next(&mut self) -> Value {
        let assign = self.recv().await;
        assert_eq!(assign["type"], "task_assign", "{assign}");
        let accepted = json!({"type": "task_accepted", "task_id": assign["task_id"],
            "generation": assign["generation"], "protocol_version": 1});
        let ack = self.ask(accepted).await;
        assert_eq!(ack["status"], "accepted", "{ack}");
        assign
    }

    /// Pings until `pred` holds for an event of `hub` (keeps this session from idling out).
    pub async fn ping_until(
        &mut self,
        hub: &DevHub,
        what: &str,
        pred: impl Fn(&HubEvent) -> bool,
    ) -> HubEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(event) = hub.wait_for(Duration::from_millis(50), &pred) {
                return event;
            }
            assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
            let pong = self.ask(json!({"type": "ping"})).await;
            assert_eq!(pong["type"], "pong", "{pong}");
        }
    }
}

/// `complete` at `generation` for `task_id`.
pub fn complete(task_id: &Value, generation: &Value) -> Value {
    json!({"type": "task_complete", "task_id": task_id, "generation": generation,
        "result": {"status": "success"}, "protocol_version": 1})
}

pub fn failed(task_id: &Value, generation: &Value, error: &str) -> Value {
    json!({"type": "task_failed", "task_id": task_id, "generation": generation,
        "error": error, "reason": error, "protocol_version": 1})
}

pub fn hub_error(code: &str) -> Value {
    json!({"type": "error", "error": code})
}
