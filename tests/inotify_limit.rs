//! With the inotify watch limit reached, the results directory is polled instead: the
//! sidecar keeps working; it does not restart in a loop and give up. (One test in its own
//! binary: it uses up this user's inotify watches while it runs.)

mod common;

use common::*;
use serde_json::json;

/// Uses up this user's inotify watches (the limit a busy machine reaches first): every
/// instance it may create but one, each watching the same files until the kernel says
/// ENOSPC. The sidecar can still create its instance, and its watch then fails. Closed when
/// dropped.
struct Exhausted {
    fds: Vec<i32>,
    _files: tempfile::TempDir,
}

impl Exhausted {
    fn watches() -> Exhausted {
        let files = tempfile::tempdir().unwrap();
        let paths: Vec<std::ffi::CString> = (0..4000)
            .map(|i| {
                let p = files.path().join(format!("f{i}"));
                std::fs::write(&p, "").unwrap();
                std::ffi::CString::new(p.to_str().unwrap()).unwrap()
            })
            .collect();
        let mut fds = Vec::new();
        loop {
            // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if fd < 0 {
                break;
            }
            fds.push(fd);
        }
        // One instance left for the sidecar.
        if let Some(fd) = fds.pop() {
            // SAFETY: a descriptor this value opened.
            unsafe { libc::close(fd) };
        }
        'fill: for fd in &fds {
            for path in &paths {
                // SAFETY: a valid descriptor and a NUL-terminated path.
                let wd = unsafe { libc::inotify_add_watch(*fd, path.as_ptr(), libc::IN_MODIFY) };
                if wd < 0 {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC) {
                        break 'fill;
                    }
                    break;
                }
            }
        }
        Exhausted { fds, _files: files }
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        for fd in &self.fds {
            // SAFETY: closing descriptors this value opened and nobody else uses.
            unsafe { libc::close(*fd) };
        }
    }
}

#[test]
fn at_the_inotify_watch_limit_the_results_directory_is_polled_and_tasks_still_complete() {
    let hub = hub();
    let exhausted = Exhausted::watches();
    let script = r#"touch "$RESULTS_DIR/$TASK_ID.started"; printf '{"status":"success"}' > "$RESULTS_DIR/$TASK_ID.json""#;
    let sidecar = sidecar_with_script(&hub, script, json!({}));
    let fallback = sidecar.wait_event("results_watch_fallback");
    assert!(
        fallback["error"]
            .as_str()
            .is_some_and(|e| e.contains("limit") || e.contains("space")),
        "{fallback}"
    );
    let task_id = submit(&hub, json!({"description": "polled"}));
    wait_status(&hub, &task_id, "completed");
    assert!(
        sidecar.events("actor_restarted").is_empty(),
        "{}",
        sidecar.dump()
    );
    drop(exhausted);
}
