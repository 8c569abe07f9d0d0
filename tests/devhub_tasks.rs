//! The dev hub's task queue against real WebSocket clients: submit and assignment (every
//! field of `task_assign`, generations), the answers to each report and each refusal, retries
//! to the dead letters, recovery and state reports, cancel, restart, the HTTP task API.
#![cfg(unix)]

mod devhub_support;

use agentcom_sidecar::devhub::{HubEventKind, RawFrame};
use devhub_support::*;
use serde_json::{json, Value};

#[test]
fn a_submitted_task_goes_to_an_idle_agent_with_every_field() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub
            .submit_task(
                json!({"description": "fix typo in the readme", "priority": "high",
                "metadata": {"k": 1}, "repo": "https://git/r.git", "branch": "main",
                "file_hints": [{"path": "README.md"}], "success_criteria": ["spelled"],
                "verification_steps": [{"type": "test", "target": "docs"}],
                "skip_verification": true, "verification_timeout_ms": 5000,
                "max_verification_retries": 9}),
            )
            .expect("submitted");
        let assign = a1.recv().await;
        assert_eq!(assign["type"], "task_assign");
        assert_eq!(assign["task_id"], task_id.as_str());
        assert_eq!(assign["generation"], 1);
        assert_eq!(assign["description"], "fix typo in the readme");
        assert_eq!(assign["metadata"], json!({"k": 1}));
        assert_eq!(
            (&assign["repo"], &assign["branch"]),
            (&json!("https://git/r"), &json!("main"))
        );
        assert_eq!(assign["file_hints"], json!([{"path": "README.md"}]));
        assert_eq!(assign["success_criteria"], json!(["spelled"]));
        assert_eq!(assign["verification_steps"][0]["target"], "docs");
        assert_eq!(assign["skip_verification"], true);
        assert_eq!(assign["verification_timeout_ms"], 5000);
        assert_eq!(assign["max_verification_retries"], 5, "capped at 5");
        assert!(assign["assigned_at"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000));
        assert_eq!(assign["complexity"]["effective_tier"], "trivial");
        assert_eq!(assign["complexity"]["source"], "inferred");
        let routing = &assign["routing_decision"];
        assert_eq!(
            (&routing["target_type"], &routing["fallback_used"]),
            (&json!("sidecar"), &json!(false))
        );
        assert_eq!(routing["estimated_cost_tier"], "free");
        assert!(routing["classification_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("inferred:trivial")));
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("assigned"));

        let accepted = json!({"type": "task_accepted", "task_id": task_id, "generation": 1});
        let ack = a1.ask(accepted).await;
        assert_eq!(
            ack,
            json!({"type": "task_ack", "task_id": task_id, "status": "accepted"})
        );
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("working"));
        let task = hub.task(&task_id).expect("task");
        assert_eq!(
            (&task["status"], &task["assigned_to"], &task["generation"]),
            (&json!("assigned"), &json!("a1"), &json!(1))
        );
        assert_eq!(task["priority"], 1);

        let ack = a1.ask(complete(&json!(task_id), &json!(1))).await;
        assert_eq!(
            ack,
            json!({"type": "task_ack", "task_id": task_id, "status": "complete"})
        );
        let task = hub.task(&task_id).expect("task");
        assert_eq!(
            (&task["status"], &task["result"]),
            (&json!("completed"), &json!({"status": "success"}))
        );
        let events: Vec<&str> = task["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["completed", "assigned", "queued"]);
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("idle"));
        let agents = hub.agents();
        assert_eq!(
            (&agents[0]["agent_id"], &agents[0]["fsm_state"]),
            (&json!("a1"), &json!("idle"))
        );
    });
    let assignments = hub.assignments();
    assert_eq!(assignments.len(), 1);
    assert_eq!(
        (assignments[0].generation, assignments[0].delivered),
        (1, true)
    );
}

#[test]
fn highest_priority_first_and_assign_to_as_the_hub_reads_it() {
    let hub = hub();
    let low = hub
        .submit_task(json!({"description": "later", "priority": "low"}))
        .unwrap();
    let urgent = hub
        .submit_task(json!({"description": "now", "priority": "urgent"}))
        .unwrap();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        assert_eq!(
            a1.accept_next().await["task_id"],
            urgent.as_str(),
            "urgent first"
        );
        let mut a2 = Agent::connect(&hub, "a2").await;
        assert_eq!(a2.accept_next().await["task_id"], low.as_str());
        a1.ask(complete(&json!(urgent), &json!(1))).await;
        a2.ask(complete(&json!(low), &json!(1))).await;

        // A standard task takes the routing fallback, which does not look at `assign_to`.
        let standard = hub
            .submit_task(json!({"description": "do it", "assign_to": "a2"}))
            .unwrap();
        let pushed = a1.accept_next().await;
        assert_eq!(pushed["task_id"], standard.as_str());
        assert_eq!(pushed["routing_decision"]["fallback_used"], true);
        assert_eq!(pushed["routing_decision"]["target_type"], "ollama");
        // A complex (or trivial) one waits for its `assign_to` agent, idle agents or not.
        let complex = hub
            .submit_task(
                json!({"description": "x", "complexity_tier": "complex", "assign_to": "a1"}),
            )
            .unwrap();
        assert!(a2.silent_for(std::time::Duration::from_millis(100)).await);
        a1.ask(complete(&json!(standard), &json!(1))).await;
        let pushed = a1.recv().await;
        assert_eq!(
            (
                &pushed["task_id"],
                &pushed["routing_decision"]["target_type"]
            ),
            (&json!(complex), &json!("claude"))
        );
    });
}

/// The hub's FSM moves to idle only from `working`: a task completed without a
/// `task_accepted` leaves the agent `assigned`, and it gets no new task.
#[test]
fn a_report_without_an_accept_leaves_the_agent_assigned() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let first = json!(hub.submit_task(json!({"description": "one"})).unwrap());
        assert_eq!(a1.recv().await["generation"], 1);
        assert_eq!(
            a1.ask(complete(&first, &json!(1))).await["status"],
            "complete"
        );
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("assigned"));
        hub.submit_task(json!({"description": "two"})).unwrap();
        assert!(a1.silent_for(std::time::Duration::from_millis(100)).await);
    });
}

#[test]
fn report_refusals_as_the_hub_words_them() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = json!(hub.submit_task(json!({"description": "d"})).unwrap());
        let first = a1.accept_next().await;
        assert_eq!(first["generation"], 1);
        // Taken back on disconnect, pushed again to the next session.
        drop(a1);
        wait_event(&hub, "the take-back", taken_back(task_id.as_str().unwrap()));
        let mut a1 = Agent::connect(&hub, "a1").await;
        let again = a1.accept_next().await;
        assert_eq!(
            (&again["task_id"], &again["generation"]),
            (&task_id, &json!(3))
        );

        let stale = a1.ask(complete(&task_id, &json!(1))).await;
        assert_eq!(stale, hub_error("task_complete_failed: stale_generation"));
        assert!(stale.get("task_id").is_none());
        let stale = a1.ask(failed(&task_id, &json!(2), "x")).await;
        assert_eq!(stale, hub_error("task_fail_failed: stale_generation"));
        assert_eq!(
            a1.ask(complete(&task_id, &json!(3))).await["status"],
            "complete"
        );
        let again = a1.ask(complete(&task_id, &json!(3))).await;
        assert_eq!(again, hub_error("task_complete_failed: invalid_state"));
        let unknown = a1
            .ask(failed(&json!("task-0000000000000000"), &json!(1), "x"))
            .await;
        assert_eq!(unknown, hub_error("task_fail_failed: not_found"));

        // A raw task_assign is a task the queue never had.
        hub.send(
            "a1",
            RawFrame::Text(
                json!({"type": "task_assign", "task_id": "t-raw",
            "generation": 1})
                .to_string(),
            ),
        );
        assert_eq!(a1.recv().await["task_id"], "t-raw");
        let raw = a1.ask(complete(&json!("t-raw"), &json!(1))).await;
        assert_eq!(raw, hub_error("task_complete_failed: not_found"));
    });
    let refused: Vec<String> = hub
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            HubEventKind::ReportRefused { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 5, "{refused:?}");
}

#[test]
fn failures_are_retried_then_dead_lettered() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = json!(hub
            .submit_task(json!({"description": "d", "max_retries": 2}))
            .unwrap());
        let first = a1.accept_next().await;
        let ack = a1.ask(failed(&task_id, &first["generation"], "boom")).await;
        assert_eq!(
            ack,
            json!({"type": "task_ack", "task_id": task_id, "status": "retried"})
        );
        let second = a1.accept_next().await;
        assert_eq!(
            second["generation"], 3,
            "a retry and an assignment each bump it"
        );
        let ack = a1
            .ask(failed(&task_id, &second["generation"], "boom again"))
            .await;
        assert_eq!(ack["status"], "dead_letter");
        let task = hub
            .task(task_id.as_str().unwrap())
            .expect("dead letters are kept");
        assert_eq!(
            (&task["status"], &task["retry_count"], &task["last_error"]),
            (&json!("dead_letter"), &json!(2), &json!("boom again"))
        );
        let late = a1.ask(failed(&task_id, &second["generation"], "x")).await;
        assert_eq!(late, hub_error("task_fail_failed: not_found"));
        // The reason is read when there is no error.
        let other = json!(hub
            .submit_task(json!({"description": "e", "max_retries": 1}))
            .unwrap());
        let assign = a1.accept_next().await;
        let only_reason = json!({"type": "task_failed", "task_id": other, "generation": assign["generation"], "reason": "why"});
        assert_eq!(a1.ask(only_reason).await["status"], "dead_letter");
        assert_eq!(
            hub.task(other.as_str().unwrap()).unwrap()["last_error"],
            "why"
        );
    });
}

#[test]
fn recovery_and_state_reports() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let mut a2 = Agent::connect(&hub, "a2").await;
        let task_id = json!(hub.submit_task(json!({"description": "d"})).unwrap());
        let assign = a1.accept_next().await;
        let recovering = |id: &Value| json!({"type": "task_recovering", "task_id": id, "generation": 1, "last_status": "woken"});
        // Continue while assigned, to anyone.
        let answer = a2.ask(recovering(&task_id)).await;
        assert_eq!(
            answer,
            json!({"type": "task_continue", "task_id": task_id, "generation": 1})
        );
        let answer = a1.ask(recovering(&json!("task-unknown"))).await;
        assert_eq!(
            answer,
            json!({"type": "task_reassign", "task_id": "task-unknown"})
        );

        let report = |id: &Value, generation: i64| {
            json!({"type": "state_report", "task_id": id,
            "status": "working", "generation": generation, "assigned_at": assign["assigned_at"]})
        };
        let ack = a1.ask(report(&task_id, 1)).await;
        assert_eq!(
            ack,
            json!({"type": "state_report_ack", "task_id": task_id, "action": "continue"})
        );
        assert_eq!(
            a1.ask(report(&task_id, 2)).await["action"],
            "abort",
            "another generation"
        );
        assert_eq!(
            a2.ask(report(&task_id, 1)).await["action"],
            "abort",
            "another agent"
        );
        assert_eq!(a1.ask(report(&json!("task-x"), 1)).await["action"], "abort");
        a1.ask(complete(&task_id, &json!(1))).await;
        assert_eq!(
            a1.ask(report(&task_id, 1)).await["action"],
            "abort",
            "completed"
        );
        assert_eq!(a1.ask(recovering(&task_id)).await["type"], "task_reassign");
    });
}

#[test]
fn cancel_tells_the_agent_and_frees_it() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        let task_id = hub.submit_task(json!({"description": "d"})).unwrap();
        a1.accept_next().await;
        // A queued task is cancelled without a frame.
        let queued = hub.submit_task(json!({"description": "q"})).unwrap();
        let answer = hub.cancel_task(&queued).expect("cancelled");
        assert_eq!(answer["previous_status"], "queued");
        assert!(a1.silent_for(std::time::Duration::from_millis(100)).await);

        let answer = hub.cancel_task(&task_id).expect("cancelled");
        assert_eq!(
            answer,
            json!({"status": "cancelled", "task_id": task_id, "previous_status": "assigned"})
        );
        let cancelled = a1.recv().await;
        assert_eq!(
            (&cancelled["type"], &cancelled["task_id"]),
            (&json!("task_cancelled"), &json!(task_id))
        );
        assert!(cancelled["timestamp"].as_u64().is_some());
        assert_eq!(hub.fsm_state("a1").as_deref(), Some("idle"));
        assert!(hub.task(&task_id).is_none());
        assert!(hub.cancel_task(&task_id).is_none());
        let late = a1.ask(complete(&json!(task_id), &json!(1))).await;
        assert_eq!(late, hub_error("task_complete_failed: not_found"));
    });
}

#[test]
fn resource_and_ollama_reports() {
    let hub = hub();
    run(async {
        let mut a1 = Agent::connect(&hub, "a1").await;
        a1.send(
            json!({"type": "resource_report", "cpu_percent": 12.5, "ram_used_bytes": 1,
            "ram_total_bytes": 2, "timestamp": 5}),
        )
        .await;
        let ack = a1
            .ask(json!({"type": "ollama_report", "ollama_url": "http://gpu:11434"}))
            .await;
        assert_eq!(
            ack,
            json!({"type": "ollama_report_ack", "status": "registered"})
        );
        let report = hub.resource_report("a1").expect("kept");
        assert_eq!(
            report,
            json!({"cpu_percent": 12.5, "ram_used_bytes": 1, "ram_total_bytes": 2,
            "vram_used_bytes": null, "vram_total_bytes": null})
        );
        assert_eq!(hub.ollama_url("a1").as_deref(), Some("http://gpu:11434"));
        let mut a2 = Agent::open(&hub, "a2").await;
        let mut identify = a2.identify_frame();
        identify["ollama_url"] = json!("http://other:1");
        assert_eq!(a2.ask(identify).await["type"], "identified");
        assert_eq!(hub.ollama_url("a2").as_deref(), Some("http://other:1"));
    });
}

/// The HTTP task API with a real client: submit, get, cancel, restart.
#[test]
fn the_http_task_api() {
    let hub = hub();
    run(async {
        let client = awc::Client::new();
        let url = |path: &str| format!("{}{path}", hub.http_url());
        let post = |path: &str, token: &str, body: Value| {
            let request = client
                .post(url(path))
                .insert_header(("Authorization", format!("Bearer {token}")));
            async move {
                let mut response = request.send_json(&body).await.expect("answer");
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
        let mut a1 = Agent::connect(&hub, "a1").await;
        let (status, body) = post(
            "/api/tasks",
            "t2",
            json!({"description": "d", "priority": "low"}),
        )
        .await;
        assert_eq!(
            (status, &body["status"], &body["priority"]),
            (201, &json!("queued"), &json!(3))
        );
        assert!(body["created_at"].as_u64().is_some());
        let task_id = body["task_id"].as_str().unwrap().to_string();
        a1.accept_next().await;
        let (status, body) = post("/api/tasks", "t2", json!({"description": 5})).await;
        assert_eq!(
            (status, &body["errors"][0]["field"]),
            (422, &json!("description"))
        );
        assert_eq!(
            post("/api/tasks", "nope", json!({"description": "d"}))
                .await
                .0,
            401
        );

        let mut response = client
            .get(url(&format!("/api/tasks/{task_id}")))
            .insert_header(("Authorization", "Bearer t1"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 200);
        let task: Value = response.json().await.expect("JSON");
        assert_eq!(
            (&task["id"], &task["submitted_by"], &task["assigned_to"]),
            (&json!(task_id), &json!("a2"), &json!("a1"))
        );
        let response = client
            .get(url("/api/tasks/task-none"))
            .insert_header(("Authorization", "Bearer t1"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 404);

        let (status, body) = post(&format!("/api/tasks/{task_id}/cancel"), "t1", json!({})).await;
        assert_eq!(
            (status, &body["previous_status"]),
            (200, &json!("assigned"))
        );
        assert_eq!(a1.recv().await["type"], "task_cancelled");
        assert_eq!(
            post(&format!("/api/tasks/{task_id}/cancel"), "t1", json!({}))
                .await
                .0,
            404
        );

        let (status, body) = post(
            "/api/admin/agents/a1/restart",
            "t3",
            json!({"reason": "upgrade"}),
        )
        .await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("restart_commanded"))
        );
        assert_eq!(
            a1.recv().await,
            json!({"type": "restart_sidecar", "reason": "upgrade"})
        );
        let (status, body) = post("/api/admin/agents/a3/restart", "t3", json!({})).await;
        assert_eq!(
            (status, body),
            (
                404,
                json!({"error": "agent_not_connected", "agent_id": "a3"})
            )
        );
    });
}
