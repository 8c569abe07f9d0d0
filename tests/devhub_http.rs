//! The dev hub's HTTP side against a real client (awc): push-task, `/api/events`,
//! `/health` and `/api/agents`, registration, and the `dev-hub` subcommand's flags.
#![cfg(unix)]

mod devhub_support;

use std::time::Duration;

use agentcom_sidecar::devhub::{DevHub, HubEvent, HubEventKind};
use devhub_support::raw::*;
use devhub_support::{run, WAIT};
use serde_json::{json, Value};

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
        assert_eq!(
            assign["routing_decision"],
            Value::Null,
            "pushed without routing"
        );
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

#[test]
fn the_live_view_shows_each_tasks_progress_text_as_the_dashboard_appends_it() {
    let hub = hub_with_tokens();
    run(async {
        let client = awc::Client::new();
        let mut ws = identified(&client, &hub, "a1", "t1").await;
        for event in [
            json!({"text": "Hel", "secret": "not forwarded"}),
            json!({"event_type": "token", "text": "abc", "tokens_so_far": 3}),
            json!({"event_type": "stdout", "text": "lo\n"}),
            json!({"progress": 50}),
        ] {
            send(
                &mut ws,
                json!({"type": "task_progress", "task_id": "t-1", "execution_event": event}),
            )
            .await;
        }
        send(
            &mut ws,
            json!({"type": "task_progress", "task_id": "t-1", "progress": 60}),
        )
        .await;
        // A frame the hub refuses is not on the dashboard.
        let refused = json!({"type": "task_progress", "task_id": "t-1", "execution_event": "x"});
        assert_eq!(ask(&mut ws, refused).await["error"], "validation_failed");

        assert_eq!(hub.progress_text("t-1"), "Helabclo\n");
        assert_eq!(hub.progress_frames("t-1"), 5);
        let url = format!("{}/api/dev/tasks/t-1/live", hub.http_url());
        assert_eq!(
            client.get(&url).send().await.unwrap().status().as_u16(),
            401
        );
        let mut response = client
            .get(&url)
            .insert_header(("Authorization", "Bearer t1"))
            .send()
            .await
            .unwrap();
        let live: Value = response.json().await.unwrap();
        assert_eq!(live["text"], json!({"stdout": "Hello\n", "token": "abc"}));
        assert_eq!(live["frames"], 5);
        assert_eq!(
            live["events"][0],
            json!({"event_type": "stdout", "text": "Hel"})
        );
        assert_eq!(live["events"][1]["tokens_so_far"], 3);
    });
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

/// The `dev-hub` subcommand with a timing flag: an unanswered assignment comes back after
/// `--acceptance-timeout-ms`, at the next generation.
#[cfg(unix)]
#[test]
fn dev_hub_subcommand_flags_apply() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let bin = env!("CARGO_BIN_EXE_agentcom-sidecar");
    let refused = Command::new(bin)
        .args([
            "dev-hub",
            "--listen",
            "127.0.0.1:0",
            "--cooldowns-ms",
            "1,2",
        ])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("three values"));

    let mut child = HubProcess(
        Command::new(bin)
            .args([
                "dev-hub",
                "--listen",
                "127.0.0.1:0",
                "--acceptance-timeout-ms",
                "100",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dev hub starts"),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lines.next());
        lines.for_each(drop);
    });
    let first = rx
        .recv_timeout(WAIT)
        .expect("the dev hub's first line in time")
        .expect("a line")
        .expect("text");
    let ws_url = first
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .expect("the ws URL")
        .to_string();
    let http_url = ws_url.replace("ws://", "http://").replace("/ws", "");
    run(async {
        let client = awc::Client::new();
        let mut ws = connect(&client, &ws_url).await;
        identify(&mut ws, "a1", "any").await;
        let mut response = client
            .post(format!("{http_url}/api/tasks"))
            .insert_header(("Authorization", "Bearer any"))
            .send_json(&json!({"description": "d"}))
            .await
            .expect("HTTP answer");
        assert_eq!(response.status().as_u16(), 201);
        let task_id = response.json::<Value>().await.expect("JSON")["task_id"].clone();
        let first = recv_json(&mut ws).await;
        assert_eq!(
            (&first["task_id"], &first["generation"]),
            (&task_id, &json!(1))
        );
        let again = recv_json(&mut ws).await;
        assert_eq!(
            (&again["task_id"], &again["generation"]),
            (&task_id, &json!(3))
        );
    });
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waitable") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dev hub still runs {WAIT:?} after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

/// A `dev-hub` process, killed if the test ends before it does.
struct HubProcess(std::process::Child);

impl Drop for HubProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A task body larger than actix's default payload limit (256 kB) is taken, as the hub's
/// parser takes up to 8 MB.
#[test]
fn a_large_task_body_is_accepted() {
    let hub = hub_with_tokens();
    run(async {
        let client = awc::Client::new();
        let body = json!({"description": "d", "metadata": {"blob": "x".repeat(1 << 20)}});
        let response = client
            .post(format!("{}/api/tasks", hub.http_url()))
            .insert_header(("Authorization", "Bearer t1"))
            .send_json(&body)
            .await
            .expect("HTTP answer");
        assert_eq!(response.status().as_u16(), 201);
    });
}
