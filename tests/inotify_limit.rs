//! With inotify unavailable (the user's instance limit reached), the results directory is
//! polled instead: the sidecar keeps working, it does not restart in a loop and give up.
//! (One test in its own binary: it exhausts this user's inotify instances while it runs.)

mod common;

use common::*;
use serde_json::json;

/// Takes every inotify instance this user may still create; they close when dropped.
struct Exhausted(Vec<i32>);

impl Exhausted {
    fn take() -> Exhausted {
        let mut fds = Vec::new();
        loop {
            // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if fd < 0 || fds.len() > 100_000 {
                break;
            }
            fds.push(fd);
        }
        Exhausted(fds)
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        for fd in &self.0 {
            // SAFETY: closing descriptors this value opened and nobody else uses.
            unsafe { libc::close(*fd) };
        }
    }
}

#[test]
fn without_inotify_the_results_directory_is_polled_and_tasks_still_complete() {
    let hub = hub();
    let exhausted = Exhausted::take();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.sh");
    std::fs::write(
        &script,
        r#"touch "$RESULTS_DIR/$TASK_ID.started"; printf '{"status":"success"}' > "$RESULTS_DIR/$TASK_ID.json""#,
    )
    .unwrap();
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"wake_command": format!("sh {}", script.display())}),
    );
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);
    let fallback = sidecar.wait_event("results_watch_fallback");
    assert!(fallback["error"].as_str().is_some(), "{fallback}");
    let task_id = submit(&hub, json!({"description": "polled"}));
    wait_status(&hub, &task_id, "completed");
    assert!(
        sidecar.events("actor_restarted").is_empty(),
        "{}",
        sidecar.dump()
    );
    drop(exhausted);
}
