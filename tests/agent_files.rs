//! Files an agent writes, hostile or clumsy: a FIFO or a device behind a result's name, a
//! result file opened early and written later, the inotify limit reached.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A sidecar whose agent confirms at once; waits for identify.
fn confirming(hub: &DevHub, extra: serde_json::Value) -> Sidecar {
    let script = r#"touch "$RESULTS_DIR/$TASK_ID.started""#;
    sidecar_with_script(hub, script, with(json!({"result_settle_ms": 200}), extra))
}

#[test]
fn a_fifo_or_a_device_behind_a_result_name_neither_hangs_nor_fills_memory() {
    let hub = hub();
    let mut sidecar = confirming(&hub, json!({"max_result_bytes": 4096}));
    let fifo_task = submit(&hub, json!({"description": "fifo", "max_retries": 0}));
    sidecar.wait_event("confirmation_received");
    let fifo = sidecar.results_dir().join(format!("{fifo_task}.json"));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let failed = wait_task_frame(&hub, "task_failed", &fifo_task, 1);
    assert_eq!(failed["reason"], "invalid_result");
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("not a regular file"));

    let zero_task = submit(&hub, json!({"description": "zero", "max_retries": 0}));
    sidecar.wait_count("confirmation_received", 2);
    std::os::unix::fs::symlink(
        "/dev/zero",
        sidecar.results_dir().join(format!("{zero_task}.json")),
    )
    .unwrap();
    let failed = wait_task_frame(&hub, "task_failed", &zero_task, 1);
    assert_eq!(failed["reason"], "invalid_result");
    // Still responsive, and it stops in good order.
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_result_file_opened_early_and_written_later_is_taken_when_closed() {
    let hub = hub();
    // The agent opens its result file at once and writes it in two pieces, the second long
    // after result_settle_ms; it closes the file at the end.
    let script = r#"
touch "$RESULTS_DIR/$TASK_ID.started"
(
  exec 3> "$RESULTS_DIR/$TASK_ID.json"
  printf '{"status":"success",' >&3
  n=0; while [ ! -e "$(dirname "$RESULTS_DIR")/go" ] && [ $n -lt 1500 ]; do sleep 0.02; n=$((n+1)); done
  printf '"output":"late"}' >&3
  exec 3>&-
) >/dev/null 2>&1 &
"#;
    let sidecar = sidecar_with_script(&hub, script, json!({"result_settle_ms": 100}));
    let task_id = submit(&hub, json!({"description": "slow writer"}));
    sidecar.wait_event("confirmation_received");
    // Far past result_settle_ms with half a result in the file.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        task_frames(&hub, "task_failed", &task_id).is_empty(),
        "{}",
        sidecar.dump()
    );
    std::fs::write(sidecar.dir.path().join("go"), "").unwrap();
    let complete = wait_task_frame(&hub, "task_complete", &task_id, 1);
    assert_eq!(complete["result"]["output"], "late");
}
