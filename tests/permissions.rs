//! Task data is readable by its owner only, whatever the umask: the queue file, the task
//! files, wake logs, the status file, the queue's lock file and the log are 0600; every
//! directory the sidecar creates (`results_dir`, the tasks directory, the queue's and the
//! log's directories and their parents) 0700. (One test in its own binary: it sets the
//! process's umask.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::json;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn task_data_is_private_whatever_the_umask() {
    // SAFETY: umask(2) only changes this process's file creation mask; this binary runs
    // this one test, so nothing else here depends on it.
    unsafe { libc::umask(0) };
    let hub = hub();
    let script = r#"echo hi; touch "$RESULTS_DIR/$TASK_ID.started""#;
    let mut sidecar = sidecar_with_script(
        &hub,
        script,
        json!({
            "queue_file": "state/q/queue.json",
            "log_file": "logs/l/sidecar.log",
            "status_file": "run/s/status.json",
        }),
    );
    sidecar.log_path = sidecar.dir.path().join("logs/l/sidecar.log");
    let task_id = submit(&hub, json!({"description": "secret plans"}));
    sidecar.wait_event("confirmation_received");
    sidecar.wait_event("wake_success");
    let root = sidecar.dir.path();
    eventually("the status file written", || {
        root.join("run/s/status.json").exists()
    });
    assert_eq!(mode(&root.join("state/q/queue.json")), 0o600);
    assert_eq!(mode(&root.join("state/q/queue.json.lock")), 0o600);
    assert_eq!(
        mode(&root.join(format!("state/q/tasks/{task_id}.json"))),
        0o600
    );
    assert_eq!(
        mode(&root.join(format!("state/q/tasks/{task_id}.wake.log"))),
        0o600
    );
    assert_eq!(mode(&root.join("run/s/status.json")), 0o600);
    assert_eq!(mode(&root.join("logs/l/sidecar.log")), 0o600);
    for dir in [
        "state",
        "state/q",
        "state/q/tasks",
        "results",
        "logs",
        "logs/l",
        "run",
        "run/s",
    ] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
    }
}
