//! The dev hub against a real WebSocket client (awc): the session protocol, the test controls
//! (send, close, kill, stop) and TLS.
#![cfg(unix)]

mod devhub_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use actix_http::ws::Item;
use agentcom_sidecar::devhub::{
    load_tokens, Behaviour, DevHub, DevHubOptions, HubEvent, HubEventKind, RawFrame,
};
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use devhub_support::raw::*;
use devhub_support::{run, WAIT};
use futures_util::SinkExt;
use serde_json::json;

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
        // (The first one's clean-up may broadcast `agent_left` to the second before it ends.)
        loop {
            match next_frame(&mut new).await {
                None => break,
                Some(Frame::Text(_)) => {}
                Some(other) => panic!("no close frame before the end: {other:?}"),
            }
        }
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
