//! The dev hub against a real WebSocket and HTTP client (awc): the session protocol, the HTTP
//! side, the test controls (send, close, kill, restart) and TLS.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::ws::Item;
use agentcom_sidecar::devhub::{
    load_tokens, Behaviour, DevHub, DevHubOptions, HubEvent, HubEventKind, RawFrame,
};
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(3);

type Ws = Framed<BoxedSocket, Codec>;

fn run<F: std::future::Future>(test: F) -> F::Output {
    actix_rt::System::new().block_on(test)
}

fn tokens() -> HashMap<String, String> {
    HashMap::from([("a1".into(), "t1".into()), ("a2".into(), "t2".into())])
}

fn hub_with_tokens() -> DevHub {
    DevHub::start(DevHubOptions {
        tokens: Some(tokens()),
        ..DevHubOptions::default()
    })
    .expect("hub starts")
}

async fn connect(client: &awc::Client, url: &str) -> Ws {
    let (_, ws) = client.ws(url).connect().await.expect("websocket connects");
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("frame sent");
}

async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(Some(Err(_)) | None) => None,
        Err(_) => panic!("no frame within {WAIT:?}"),
    }
}

async fn recv_json(ws: &mut Ws) -> Value {
    match next_frame(ws).await {
        Some(Frame::Text(text)) => serde_json::from_slice(&text).expect("JSON text frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Sends `frame` and returns the hub's answer.
async fn ask(ws: &mut Ws, frame: Value) -> Value {
    send(ws, frame).await;
    recv_json(ws).await
}

async fn identify(ws: &mut Ws, agent_id: &str, token: &str) -> Value {
    let frame = json!({"type": "identify", "agent_id": agent_id, "token": token,
        "name": format!("{agent_id} name"), "status": "idle", "capabilities": ["code"],
        "client_type": "sidecar", "protocol_version": 1});
    ask(ws, frame).await
}

async fn identified(client: &awc::Client, hub: &DevHub, agent_id: &str, token: &str) -> Ws {
    let mut ws = connect(client, &hub.ws_url()).await;
    let reply = identify(&mut ws, agent_id, token).await;
    assert_eq!(reply, json!({"type": "identified", "agent_id": agent_id}));
    ws
}

fn error(code: &str) -> Value {
    json!({"type": "error", "error": code})
}

fn is_identified(agent: &str) -> impl Fn(&HubEvent) -> bool + '_ {
    move |e| matches!(&e.kind, HubEventKind::Identified { agent_id } if agent_id == agent)
}

/// POST /api/admin/push-task; status and JSON body.
async fn push_task(hub: &DevHub, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let client = awc::Client::new();
    let mut request = client.post(format!("{}/api/admin/push-task", hub.http_url()));
    if let Some(token) = bearer {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut response = request.send_json(&body).await.expect("HTTP answer");
    let json = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status().as_u16(), json)
}

async fn get_json(client: &awc::Client, url: String) -> Value {
    let mut response = client.get(url).send().await.expect("HTTP answer");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON body")
}

#[test]
fn session_protocol_before_and_after_identify() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    run(async {
        let client = awc::Client::new();
        let mut ws = connect(&client, &hub.ws_url()).await;
        assert_eq!(
            ask(&mut ws, json!({"type": "ping"})).await,
            error("not_identified")
        );
        // Validated before anything else, identified or not: a violation.
        let reply = ask(&mut ws, json!({"type": "what"})).await;
        assert_eq!(
            (&reply["error"], &reply["message_type"]),
            (&json!("validation_failed"), &json!("what"))
        );
        assert_eq!(reply["errors"][0]["error"], "unknown_message_type");
        ws.send(Message::Text("{oops".into())).await.expect("sent");
        assert_eq!(recv_json(&mut ws).await, error("invalid_json"));

        let reply = identify(&mut ws, "anyone", "any-token").await;
        assert_eq!(reply, json!({"type": "identified", "agent_id": "anyone"}));
        let pong = ask(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong");
        assert!(pong["timestamp"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000));
        let reply = ask(&mut ws, json!({"type": "what"})).await;
        assert_eq!(reply["error"], "validation_failed");

        send(
            &mut ws,
            json!({"type": "task_progress", "task_id": "t", "progress": 5}),
        )
        .await;
        let ack = ask(&mut ws, json!({"type": "task_accepted", "task_id": "t"})).await;
        assert_eq!(
            ack,
            json!({"type": "task_ack", "task_id": "t", "status": "accepted"})
        );
        let refused = ask(
            &mut ws,
            json!({"type": "task_failed", "task_id": "t", "generation": 1}),
        )
        .await;
        assert_eq!(refused, error("task_fail_failed: not_found"));

        ws.send(Message::Ping("hb".into())).await.expect("sent");
        assert!(matches!(next_frame(&mut ws).await, Some(Frame::Pong(p)) if &p[..] == b"hb"));
    });
    let progress = hub.wait_for(WAIT, |e| e.frame_type() == Some("task_progress"));
    assert!(progress.is_some());
    assert!(hub.wait_for(WAIT, is_identified("anyone")).is_some());
    assert_eq!(hub.violations("anyone"), 1, "the one after identify");
    assert_eq!(hub.validation_failures().len(), 2);
}

/// A JSON value that is not an object crashes the hub's socket process: 1011.
#[test]
fn a_frame_that_is_not_an_object_ends_the_session() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    run(async {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t").await;
        send(&mut ws, json!("not an object")).await;
        let Some(Frame::Close(Some(reason))) = next_frame(&mut ws).await else {
            panic!("expected a close frame");
        };
        assert_eq!(u16::from(reason.code), 1011);
    });
    let gone = |e: &HubEvent| matches!(&e.kind, HubEventKind::PresenceRemoved { agent_id } if agent_id == "a1");
    assert!(hub.wait_for(WAIT, gone).is_some());
    assert!(hub.agents().is_empty());
}

#[test]
fn refused_identify_keeps_the_socket_open() {
    let hub = hub_with_tokens();
    run(async {
        let client = awc::Client::new();
        let mut ws = connect(&client, &hub.ws_url()).await;
        assert_eq!(
            identify(&mut ws, "a1", "nope").await,
            error("invalid_token")
        );
        assert_eq!(
            identify(&mut ws, "a1", "t2").await,
            error("token_agent_mismatch")
        );
        assert_eq!(
            ask(&mut ws, json!({"type": "ping"})).await,
            error("not_identified")
        );
        let reply = identify(&mut ws, "a1", "t1").await;
        assert_eq!(reply, json!({"type": "identified", "agent_id": "a1"}));
    });
    let refused = |e: &HubEvent| matches!(&e.kind, HubEventKind::IdentifyRefused { error, .. } if error == "token_agent_mismatch");
    assert!(hub.wait_for(WAIT, refused).is_some());
}

#[test]
fn behaviour_switches_silence_the_hub() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    hub.set_behaviour(Behaviour {
        answer_identify: false,
        ..Behaviour::default()
    });
    run(async {
        let client = awc::Client::new();
        let mut ws = connect(&client, &hub.ws_url()).await;
        send(
            &mut ws,
            json!({"type": "identify", "agent_id": "a1", "token": "t"}),
        )
        .await;
        let seen = hub.wait_for(WAIT, |e| e.frame_type() == Some("identify"));
        assert!(seen.is_some());
        hub.set_behaviour(Behaviour {
            answer_pings: false,
            ..Behaviour::default()
        });
        // The swallowed identify left the session unidentified.
        assert_eq!(
            ask(&mut ws, json!({"type": "ping"})).await,
            error("not_identified")
        );
        identify(&mut ws, "a1", "t").await;
        send(&mut ws, json!({"type": "ping"})).await;
        let complete = json!({"type": "task_complete", "task_id": "x", "generation": 1});
        let refused = ask(&mut ws, complete).await;
        assert_eq!(
            refused,
            error("task_complete_failed: not_found"),
            "the ping got no pong"
        );

        hub.set_behaviour(Behaviour {
            echo_close: false,
            ..Behaviour::default()
        });
        ws.send(Message::Close(None)).await.expect("close sent");
        let ack = ask(&mut ws, json!({"type": "task_accepted", "task_id": "y"})).await;
        assert_eq!(
            ack["status"], "accepted",
            "no close echo, connection still open"
        );
    });
    assert!(!hub.behaviour().echo_close);
}

#[test]
fn push_task_reaches_the_agent_over_http() {
    let hub = hub_with_tokens();
    run(async {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t1").await;
        let task = json!({"agent_id": "a1", "description": "do it", "metadata": {"k": 1},
            "repo": "r"});

        assert_eq!(push_task(&hub, None, task.clone()).await.0, 401);
        let (status, body) = push_task(&hub, Some("bogus"), task.clone()).await;
        assert_eq!((status, &body["error"]), (401, &json!("unauthorized")));
        let elsewhere = json!({"agent_id": "a2", "description": "x"});
        let (status, body) = push_task(&hub, Some("t2"), elsewhere).await;
        assert_eq!(
            (status, body),
            (
                404,
                json!({"error": "agent_not_connected", "agent_id": "a2"})
            )
        );
        let (status, body) = push_task(&hub, Some("t2"), json!([1])).await;
        assert_eq!((status, &body["error"]), (422, &json!("validation_failed")));

        let (status, body) = push_task(&hub, Some("t2"), task).await;
        assert_eq!((status, &body["status"]), (200, &json!("pushed")));
        assert_eq!(body["agent_id"], "a1");
        let task_id = body["task_id"].as_str().expect("task id").to_string();
        let hex = task_id.strip_prefix("task-").expect("task- prefix");
        assert!(hex.len() == 16 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));

        // The hub's push: its own fields only, generation 0, the rest at its defaults.
        let assign = recv_json(&mut ws).await;
        assert_eq!(assign["type"], "task_assign");
        assert_eq!(assign["task_id"], task_id.as_str());
        assert_eq!(assign["description"], "do it");
        assert_eq!(assign["metadata"], json!({"k": 1}));
        assert_eq!(assign["repo"], Value::Null);
        assert_eq!(assign["generation"], 0);
        assert_eq!(assign["file_hints"], json!([]));
        assert_eq!(assign["skip_verification"], false);
        assert!(assign["assigned_at"].as_u64().is_some());
        assert!(assign.get("agent_id").is_none());
        assert_eq!(
            hub.fsm_state("a1").as_deref(),
            Some("assigned"),
            "its FSM heard of it"
        );

        // The queue never had it.
        let complete = json!({"type": "task_complete", "task_id": task_id, "generation": 0});
        assert_eq!(
            ask(&mut ws, complete).await,
            error("task_complete_failed: not_found")
        );
    });
    let pushed = |e: &HubEvent| matches!(&e.kind, HubEventKind::TaskPushed { agent_id, .. } if agent_id == "a1");
    assert!(hub.wait_for(WAIT, pushed).is_some());
}

/// The moment `GET /api/events` stamps events with: CLOCK_MONOTONIC, read here directly.
#[cfg(unix)]
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes only the timespec it is given, which lives on this stack.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[test]
fn events_are_served_over_http_with_monotonic_times() {
    let hub = hub_with_tokens();
    run(async {
        let client = awc::Client::new();
        let events_url = |query: &str| format!("{}/api/events?{query}", hub.http_url());
        let empty = get_json(&client, events_url("since=0")).await;
        assert_eq!(empty["events"], json!([]));
        assert_eq!((&empty["next"], &empty["total"]), (&json!(0), &json!(0)));

        #[cfg(unix)]
        let before = monotonic_ns();
        let mut ws = identified(&client, &hub, "a1", "t1").await;
        let push = json!({"agent_id": "a1", "description": "d"});
        let (status, body) = push_task(&hub, Some("t1"), push).await;
        assert_eq!(status, 200);
        let task_id = body["task_id"].as_str().expect("task id").to_string();
        assert_eq!(recv_json(&mut ws).await["type"], "task_assign");
        let accepted = json!({"type": "task_accepted", "task_id": task_id, "protocol_version": 1});
        assert_eq!(ask(&mut ws, accepted.clone()).await["status"], "accepted");
        #[cfg(unix)]
        let after = monotonic_ns();

        let page = get_json(&client, events_url("since=0")).await;
        assert_eq!(
            page["clock"],
            if cfg!(unix) {
                "CLOCK_MONOTONIC"
            } else {
                "hub_start"
            }
        );
        let events = page["events"].as_array().expect("events list");
        let kinds: Vec<(&str, Option<&str>)> = events
            .iter()
            .map(|e| (e["kind"].as_str().unwrap(), e["type"].as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("connected", None),
                ("frame", Some("identify")),
                ("identified", None),
                ("task_pushed", None),
                ("frame", Some("task_accepted")),
            ]
        );
        assert_eq!((&page["next"], &page["total"]), (&json!(5), &json!(5)));
        assert!(!page.to_string().contains(r#""t1""#), "no token is served");
        assert_eq!(events[2]["agent_id"], "a1");
        assert_eq!(events[3]["task_id"], task_id.as_str());
        assert_eq!(events[4]["task_id"], task_id.as_str());
        assert_eq!(events[4]["bytes"], accepted.to_string().len());

        // The same events and times as the hub's own log; times in order, on the same clock.
        let recorded = hub.events();
        let times: Vec<u64> = events
            .iter()
            .map(|e| e["mono_ns"].as_u64().unwrap())
            .collect();
        for (i, (served, event)) in events.iter().zip(&recorded).enumerate() {
            assert_eq!(served["seq"], i);
            assert_eq!(served["conn"], event.conn);
            assert_eq!(served["mono_ns"], event.mono_ns);
        }
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        #[cfg(unix)]
        assert!(
            before <= times[0] && times[4] <= after,
            "{before} <= {times:?} <= {after}"
        );

        // Paging: `since` and `limit`.
        let tail = get_json(&client, events_url("since=3&limit=1")).await;
        assert_eq!(tail["events"][0]["seq"], 3);
        assert_eq!(tail["events"][0]["kind"], "task_pushed");
        assert_eq!((&tail["next"], &tail["total"]), (&json!(4), &json!(5)));

        // Nothing new: an empty answer at once, or after `wait_ms`.
        let none = get_json(&client, events_url("since=5")).await;
        assert_eq!((&none["events"], &none["next"]), (&json!([]), &json!(5)));
        let started = std::time::Instant::now();
        let none = get_json(&client, events_url("since=5&wait_ms=100")).await;
        assert_eq!(none["events"], json!([]));
        assert!(started.elapsed() >= Duration::from_millis(100));

        // A long poll answers as soon as the next event is recorded.
        let started = std::time::Instant::now();
        let (polled, ()) = tokio::join!(
            get_json(&client, events_url("since=5&wait_ms=10000")),
            async {
                actix_rt::time::sleep(Duration::from_millis(50)).await;
                send(&mut ws, json!({"type": "task_progress", "task_id": "x"})).await;
            }
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(polled["events"][0]["seq"], 5);
        assert_eq!(polled["events"][0]["type"], "task_progress");
        assert_eq!(polled["next"], 6);

        let status = client
            .get(events_url("since=-1"))
            .send()
            .await
            .expect("HTTP answer")
            .status();
        assert_eq!(status.as_u16(), 400);
    });
}

#[test]
fn health_and_agents_list_identified_agents() {
    let hub = hub_with_tokens();
    run(async {
        let client = awc::Client::new();
        let health = get_json(&client, format!("{}/health", hub.http_url())).await;
        let expected = json!({"status": "ok", "service": "agent_com", "agents_connected": 0});
        assert_eq!(health, expected);

        let _ws = identified(&client, &hub, "a1", "t1").await;
        let health = get_json(&client, format!("{}/health", hub.http_url())).await;
        assert_eq!(health["agents_connected"], 1);
        let agents = get_json(&client, format!("{}/api/agents", hub.http_url())).await;
        let agent = &agents["agents"][0];
        assert_eq!(agent["agent_id"], "a1");
        assert_eq!(agent["name"], "a1 name");
        assert_eq!(agent["status"], "idle");
        assert_eq!(agent["capabilities"], json!(["code"]));
        assert!(agent["connected_at"].as_u64().is_some());
    });
}

#[test]
fn raw_frames_are_delivered_in_order() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    run(async {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t").await;
        assert_eq!(hub.send("a1", RawFrame::Text("one".into())), 1);
        hub.send("a1", RawFrame::FragmentedText("hello world".into(), 4));
        hub.send("a1", RawFrame::Ping(b"p".to_vec()));
        hub.send("a1", RawFrame::Binary(vec![1, 2]));
        assert_eq!(hub.send("nobody", RawFrame::Text("x".into())), 0);

        assert!(matches!(next_frame(&mut ws).await, Some(Frame::Text(t)) if &t[..] == b"one"));
        let mut pieces = Vec::new();
        for _ in 0..3 {
            match next_frame(&mut ws).await {
                Some(Frame::Continuation(
                    Item::FirstText(b) | Item::Continue(b) | Item::Last(b),
                )) => pieces.push(String::from_utf8_lossy(&b).into_owned()),
                other => panic!("expected a continuation, got {other:?}"),
            }
        }
        assert_eq!(pieces, ["hell", "o wo", "rld"]);
        assert!(matches!(next_frame(&mut ws).await, Some(Frame::Ping(p)) if &p[..] == b"p"));
        assert!(matches!(next_frame(&mut ws).await, Some(Frame::Binary(b)) if b[..] == [1, 2]));
    });
}

#[test]
fn big_and_fragmented_client_frames_are_reassembled() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    run(async {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t").await;
        let big = json!({"type": "task_progress", "task_id": "x".repeat(3 << 20)});
        send(&mut ws, big).await;
        for piece in [
            Item::FirstText(r#"{"type":"#.into()),
            Item::Continue(r#""pi"#.into()),
        ] {
            ws.send(Message::Continuation(piece)).await.expect("sent");
        }
        let last = Message::Continuation(Item::Last(r#"ng"}"#.into()));
        ws.send(last).await.expect("sent");
        assert_eq!(recv_json(&mut ws).await["type"], "pong");
    });
    let big = hub.wait_for(WAIT, |e| e.frame_type() == Some("task_progress"));
    assert!(
        matches!(big.map(|e| e.kind), Some(HubEventKind::Frame { text, .. }) if text.len() > 3 << 20)
    );
}

#[test]
fn close_handshakes_in_both_directions() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    run(async {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t").await;
        hub.send("a1", RawFrame::Close(4001, "go away".into()));
        let Some(Frame::Close(Some(reason))) = next_frame(&mut ws).await else {
            panic!("expected a close frame");
        };
        assert_eq!(u16::from(reason.code), 4001);
        ws.send(Message::Close(Some(reason)))
            .await
            .expect("echo sent");
        assert!(
            next_frame(&mut ws).await.is_none(),
            "the hub ended the connection"
        );

        let mut ws = identified(&client, &hub, "a1", "t").await;
        let reason = CloseReason {
            code: CloseCode::Away,
            description: Some("bye".into()),
        };
        ws.send(Message::Close(Some(reason)))
            .await
            .expect("close sent");
        let Some(Frame::Close(Some(echo))) = next_frame(&mut ws).await else {
            panic!("expected the close answer");
        };
        assert_eq!(echo.code, CloseCode::Normal, "the hub answers 1000");
    });
    let closed = |e: &HubEvent| matches!(&e.kind, HubEventKind::CloseReceived { code: Some(1001), reason } if reason == "bye");
    assert!(hub.wait_for(WAIT, closed).is_some());
}

/// As on the hub, a second session of an agent does not replace the first: both stay open,
/// and the first keeps the push registration.
#[test]
fn a_second_session_leaves_the_first_registered_and_kill_drops_without_close() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    run(async {
        let client = awc::Client::new();
        let mut old = identified(&client, &hub, "a1", "t").await;
        let first = hub.registered_conn("a1").expect("registered");
        let mut new = identified(&client, &hub, "a1", "t").await;
        assert_eq!(
            hub.registered_conn("a1"),
            Some(first),
            "the first one keeps it"
        );
        assert!(hub.restart_agent("a1", "test"));
        let restart = recv_json(&mut old).await;
        assert_eq!(
            restart,
            json!({"type": "restart_sidecar", "reason": "test"})
        );
        assert_eq!(hub.send("a1", RawFrame::Text("hi".into())), 2);
        assert!(matches!(next_frame(&mut new).await, Some(Frame::Text(t)) if &t[..] == b"hi"));

        assert_eq!(hub.kill_connections("a1"), 2);
        assert!(
            next_frame(&mut new).await.is_none(),
            "no close frame before the end"
        );
    });
    let identified_conns: Vec<u64> = hub
        .events()
        .iter()
        .filter(|e| is_identified("a1")(e))
        .map(|e| e.conn)
        .collect();
    assert_eq!(identified_conns.len(), 2);
    let refused = |e: &HubEvent| matches!(&e.kind, HubEventKind::RegistrationRefused { held_by, .. } if *held_by == identified_conns[0]);
    assert!(hub.wait_for(WAIT, refused).is_some());
    for conn in identified_conns {
        let gone = |e: &HubEvent| e.conn == conn && matches!(e.kind, HubEventKind::Disconnected);
        assert!(hub.wait_for(WAIT, gone).is_some(), "conn {conn} ended");
    }
}

#[test]
fn garbage_on_the_socket_does_not_hurt_the_hub() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    let mut tcp = TcpStream::connect(hub.addr()).expect("tcp connects");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout set");
    let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(upgrade.as_bytes()).expect("upgrade sent");
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).expect("upgrade answered");
    assert_eq!(&head, b"HTTP/1.1 101");
    // An unmasked frame header claiming a huge payload, then noise, then a dropped socket.
    tcp.write_all(&[0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3])
        .expect("sent");
    drop(tcp);
    assert!(hub
        .wait_for(WAIT, |e| matches!(e.kind, HubEventKind::Disconnected))
        .is_some());
    run(async {
        let client = awc::Client::new();
        let health = get_json(&client, format!("{}/health", hub.http_url())).await;
        assert_eq!(health["status"], "ok");
    });
}

#[test]
fn stopped_hub_drops_its_clients_and_frees_its_port() {
    let hub = DevHub::start(DevHubOptions::default()).expect("hub starts");
    let addr = hub.addr();
    run(async move {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t").await;
        hub.stop();
        assert!(next_frame(&mut ws).await.is_none(), "connection dropped");

        let again = DevHub::start(DevHubOptions {
            listen: addr,
            ..DevHubOptions::default()
        })
        .expect("restarts on the same port");
        assert_eq!(again.addr(), addr);
        identified(&client, &again, "a1", "t").await;
    });
}

#[test]
fn tokens_file_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, r#"{"a1": "t1"}"#).expect("written");
    assert_eq!(load_tokens(&path).expect("loads")["a1"], "t1");
    std::fs::write(&path, r#"{"a1": 5}"#).expect("written");
    assert!(load_tokens(&path).is_err());
    std::fs::write(&path, r#"{"a1": ""}"#).expect("written");
    assert!(load_tokens(&path).expect_err("empty token").contains("a1"));
    assert!(load_tokens(&dir.path().join("missing.json")).is_err());
}

#[test]
fn wss_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert written");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("key written");
    let hub = DevHub::start(DevHubOptions {
        tls: Some((cert_path, key_path)),
        ..DevHubOptions::default()
    })
    .expect("hub starts with TLS");
    assert!(hub.ws_url().starts_with("wss://localhost:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root added");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    run(async {
        let connector = awc::Connector::new().rustls_0_23(Arc::new(config));
        let client = awc::Client::builder().connector(connector).finish();
        let mut ws = identified(&client, &hub, "a1", "t").await;
        let pong = ask(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong");
        let health = get_json(&client, format!("{}/health", hub.http_url())).await;
        assert_eq!(health["agents_connected"], 1);
    });
}

/// POST /api/onboard/register (no auth); status and JSON body.
async fn register(hub: &DevHub, body: &str) -> (u16, Value) {
    let client = awc::Client::new();
    let mut response = client
        .post(format!("{}/api/onboard/register", hub.http_url()))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_string())
        .await
        .expect("HTTP answer");
    let json = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status().as_u16(), json)
}

#[test]
fn register_gives_a_new_agent_a_working_token_once() {
    let hub = hub_with_tokens();
    run(async {
        let (status, body) = register(&hub, r#"{"agent_id": "a3"}"#).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["agent_id"], "a3");
        let port = hub.addr().port();
        assert_eq!(body["hub_ws_url"], format!("ws://127.0.0.1:{port}/ws"));
        assert_eq!(body["hub_api_url"], format!("http://127.0.0.1:{port}"));
        assert_eq!(body["default_repo"], Value::Null);
        let token = body["token"].as_str().expect("token").to_string();
        assert_eq!(token.len(), 64);

        let (status, body) = register(&hub, r#"{"agent_id": "a3"}"#).await;
        assert_eq!(
            (status, body),
            (409, json!({"error": "agent_id already registered"}))
        );
        let (status, _) = register(&hub, r#"{"agent_id": "a1"}"#).await;
        assert_eq!(status, 409, "an id from the tokens file exists too");

        let (status, body) = register(&hub, r#"{"agent_id": ""}"#).await;
        assert_eq!(status, 422);
        assert_eq!(body["errors"][0]["detail"], "agent_id must not be empty");
        let (status, body) = register(&hub, r#"{"agent_id": 7}"#).await;
        assert_eq!((status, &body["error"]), (422, &json!("validation_failed")));
        assert_eq!(body["errors"][0]["detail"], "expected string, got integer");
        assert_eq!(register(&hub, "{nope").await.0, 400);

        let client = awc::Client::new();
        identified(&client, &hub, "a3", &token).await;
        let mut ws = connect(&client, &hub.ws_url()).await;
        assert_eq!(
            identify(&mut ws, "a1", &token).await,
            error("token_agent_mismatch")
        );
        let (status, _) = push_task(&hub, Some(&token), json!({"agent_id": "a3"})).await;
        assert_ne!(status, 401, "the new token works for the HTTP API");
    });
    let registered = |e: &HubEvent| matches!(&e.kind, HubEventKind::AgentRegistered { agent_id } if agent_id == "a3");
    assert!(hub.wait_for(WAIT, registered).is_some());
}
