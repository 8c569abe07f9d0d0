//! A wake command that lives as long as its agent and writes without end keeps a bounded
//! wake log: the attempt's first 64 KiB, a line that says what was cut, and what follows.

mod common;

use common::*;
use serde_json::json;

#[test]
fn the_wake_log_of_an_agent_living_inside_its_wake_command_stays_bounded() {
    let hub = hub();
    // Confirms, then writes 6 MiB to stdout (the wake log), then waits for its go file.
    let script = r#"
touch "$RESULTS_DIR/$TASK_ID.started"
dir=$(dirname "$RESULTS_DIR")
head -c 6291456 /dev/zero | tr '\0' 'x'
touch "$dir/written"
n=0
while [ ! -e "$dir/go" ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done
printf '{"status":"success","output":"done"}' > "$RESULTS_DIR/.$TASK_ID.tmp"
mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
"#;
    let sidecar = sidecar_with_script(&hub, script, json!({"wake_timeout_ms": 60000}));
    let task_id = submit(&hub, json!({"description": "talk a lot"}));
    let root = sidecar.dir.path().to_path_buf();
    eventually("the agent wrote its output", || {
        root.join("written").exists()
    });
    let log = root.join(format!("tasks/{task_id}.wake.log"));
    // Cut back to the head, the line that says so, and what followed (the size is checked
    // with the line, which comes a moment after the cut).
    let cut_back = || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.len() < 1024 * 1024 && t.contains("of this attempt's output cut here"))
    };
    eventually("the wake log cut back", || cut_back().is_some());
    let text = cut_back().unwrap();
    assert!(text.starts_with(&"x".repeat(64 * 1024)), "the head is kept");
    let cut = sidecar.wait_event("wake_log_cut");
    assert_eq!(cut["task_id"], task_id.as_str());
    std::fs::write(root.join("go"), "").unwrap();
    wait_task_frame(&hub, "task_complete", &task_id, 1);
    assert_eq!(wake_attempts(&sidecar, &task_id), 1);
}
