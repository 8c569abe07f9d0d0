//! What any agent's result may carry for the hub beyond `result`: `tokens_used`,
//! `verification_report` and `verification_history` go at the top level of `task_complete`
//! (the hub reads the last two only there) and the dev hub stores them as the hub does; of
//! the wrong type they make the result invalid (`invalid_result`, a clear reason), never a
//! frame the hub refuses. And the routing decision the dev hub sends with a task.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn verification_fields_reach_the_top_level_and_the_hub_stores_them() {
    let hub = hub();
    let sidecar = sidecar_with_script(&hub, RECORDING_AGENT, json!({}));
    let task_id = submit(&hub, json!({"description": "run the checks"}));
    eventually("the agent started", || starts_of(&sidecar, &task_id) == 1);
    let report = json!({"task_id": task_id, "run_number": 1, "status": "pass",
        "checks": [{"type": "file_exists", "target": "README.md", "status": "pass"}],
        "summary": {"total": 1, "passed": 1, "failed": 0, "errors": 0, "timed_out": 0}});
    let history = json!([{"status": "fail", "run_number": 0}, report]);
    let result = json!({"status": "success", "output": "done", "tokens_used": 1234,
        "model_used": "m1", "tokens_in": 1000, "tokens_out": 234, "execution_ms": 5000,
        "verification_report": report, "verification_history": history});
    release(&sidecar, &task_id, &result);

    let frame = wait_task_frame(&hub, "task_complete", &task_id, 1);
    assert_eq!(frame["tokens_used"], 1234);
    assert_eq!(frame["verification_report"], report);
    assert_eq!(frame["verification_history"], history);
    assert_eq!(frame["result"], result, "and all of it stays in result");
    wait_status(&hub, &task_id, "completed");
    assert_eq!(task_field(&hub, &task_id, "verification_report"), report);
    assert_eq!(task_field(&hub, &task_id, "verification_history"), history);
    assert_eq!(task_field(&hub, &task_id, "tokens_used"), 1234);
    assert_eq!(task_field(&hub, &task_id, "result")["model_used"], "m1");
    assert_eq!(hub.violations(AGENT), 0);
    assert_eq!(starts_of(&sidecar, &task_id), 1);
}

#[test]
fn verification_fields_of_the_wrong_type_are_an_invalid_result_and_no_violation() {
    let hub = hub();
    let sidecar = sidecar_with_script(&hub, RECORDING_AGENT, json!({}));
    for (n, (field, bad, why)) in [
        ("verification_report", json!(["pass"]), "must be an object"),
        (
            "verification_history",
            json!([{"status": "pass"}, "x"]),
            "item 1 is a string",
        ),
        ("tokens_used", json!(12.5), "must be a whole number"),
    ]
    .into_iter()
    .enumerate()
    {
        let task_id = submit(
            &hub,
            json!({"description": format!("bad {n}"), "max_retries": 0}),
        );
        eventually("the agent started", || starts_of(&sidecar, &task_id) == 1);
        let mut result = json!({"status": "success", "output": "done"});
        result[field] = bad;
        release(&sidecar, &task_id, &result);
        let failed = wait_task_frame(&hub, "task_failed", &task_id, 1);
        assert_eq!(failed["reason"], "invalid_result", "{failed}");
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains(field) && error.contains(why), "{error}");
        assert!(task_frames(&hub, "task_complete", &task_id).is_empty());
        assert_eq!(starts_of(&sidecar, &task_id), 1);
        // Kept aside for the operator.
        let kept = sidecar
            .results_dir()
            .join(format!("{task_id}.json.invalid"));
        eventually("the invalid result kept aside", || kept.exists());
    }
    assert_eq!(hub.violations(AGENT), 0);
    assert!(hub.validation_failures().is_empty());
}

#[test]
fn the_dev_hub_routes_every_scheduled_task_and_a_standard_one_to_the_agents_own_endpoint() {
    let hub = hub();
    let sidecar = sidecar_with_script(
        &hub,
        RECORDING_AGENT,
        json!({"ollama_url": "http://127.0.0.1:11434"}),
    );
    for (tier, target, endpoint, model) in [
        ("standard", "ollama", json!("127.0.0.1:11434"), json!(null)),
        ("trivial", "sidecar", json!(null), json!(null)),
        ("complex", "claude", json!("claude_api"), json!("claude")),
    ] {
        let task_id = submit(
            &hub,
            json!({"description": "work", "complexity_tier": tier}),
        );
        eventually("the agent started", || starts_of(&sidecar, &task_id) == 1);
        // What the agent got (TASK_TARGET_TYPE, TASK_MODEL), and the hub's stored decision.
        let start = starts(&sidecar)
            .into_iter()
            .find(|s| s[0] == task_id)
            .unwrap();
        assert_eq!(start[2], target);
        assert_eq!(start[3], model.as_str().unwrap_or("-"));
        let routing = &task_field(&hub, &task_id, "routing_decision");
        assert_eq!(routing["target_type"], target, "{routing}");
        assert_eq!(routing["effective_tier"], tier);
        assert_eq!(routing["selected_endpoint"], endpoint, "{routing}");
        assert_eq!(routing["selected_model"], model);
        assert_eq!(routing["fallback_used"], false);
        for key in [
            "fallback_reason",
            "classification_reason",
            "estimated_cost_tier",
        ] {
            assert!(routing.get(key).is_some(), "{key} in {routing}");
        }
        release(&sidecar, &task_id, &json!({"status": "success"}));
        wait_status(&hub, &task_id, "completed");
    }
}
