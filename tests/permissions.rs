//! Task data is readable by its owner only, whatever the umask: the queue file, the task
//! files, wake logs and the status file are 0600, `results_dir` and the tasks directory
//! 0700; the log stays 0640. (One test in its own binary: it sets the process's umask.)

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
    let sidecar = sidecar_with_script(&hub, script, json!({}));
    let task_id = submit(&hub, json!({"description": "secret plans"}));
    sidecar.wait_event("confirmation_received");
    sidecar.wait_event("wake_success");
    let root = sidecar.dir.path();
    eventually("the status file written", || {
        root.join("status.json").exists()
    });
    assert_eq!(mode(&root.join("queue.json")), 0o600);
    assert_eq!(mode(&root.join(format!("tasks/{task_id}.json"))), 0o600);
    assert_eq!(mode(&root.join(format!("tasks/{task_id}.wake.log"))), 0o600);
    assert_eq!(mode(&root.join("tasks")), 0o700);
    assert_eq!(mode(&root.join("results")), 0o700);
    assert_eq!(mode(&root.join("status.json")), 0o600);
    assert_eq!(mode(&root.join("sidecar.log")), 0o640);
}
