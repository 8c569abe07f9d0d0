//! The dashboard's live view: the agent's streamed text reaches the hub whole and in order,
//! joined into few frames within the hub's rate limits, and a flood of progress lines costs
//! bounded memory (back-pressure on reading the file, nothing dropped). Against the dev hub,
//! which keeps what its dashboard would show.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{HubLimits, HubTimings, RateTier};
use common::*;
use serde_json::json;

/// An agent that confirms, appends `LINES` text lines to its progress file one write each
/// (as fast as the shell goes), and writes its result when the test says so ([`release`]).
const STREAMING_AGENT: &str = r#"
dir=$(dirname "$RESULTS_DIR")
echo "$TASK_ID" >> "$dir/starts"
(
  touch "$RESULTS_DIR/$TASK_ID.started"
  i=0
  while [ $i -lt 2000 ]; do
    printf '{"event_type":"stdout","text":"line %d\\n"}\n' $i >> "$RESULTS_DIR/$TASK_ID.progress"
    i=$((i+1))
  done
  n=0
  while [ ! -e "$dir/go-$TASK_ID" ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done
  [ -e "$dir/go-$TASK_ID" ] || exit 0
  cp "$dir/go-$TASK_ID" "$RESULTS_DIR/.$TASK_ID.tmp"
  mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
) >/dev/null 2>&1 </dev/null &
"#;

fn agent_starts(sidecar: &Sidecar) -> usize {
    std::fs::read_to_string(sidecar.dir.path().join("starts"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn two_thousand_text_lines_reach_the_dashboard_whole_in_order_in_few_frames() {
    // The hub's own limits (60 task frames a minute).
    let hub = hub();
    let sidecar = sidecar_with_script(&hub, STREAMING_AGENT, json!({}));
    let task_id = submit(&hub, json!({"description": "stream"}));
    let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    eventually("the whole text on the dashboard", || {
        hub.progress_text(&task_id).len() >= expected.len()
    });
    assert_eq!(hub.progress_text(&task_id), expected);
    let frames = hub.progress_frames(&task_id);
    assert!(frames <= 20, "{frames} frames for 2000 lines");
    assert!(hub.rate_limited().is_empty(), "{:?}", hub.rate_limited());
    assert_eq!(hub.violations(AGENT), 0);

    release(
        &sidecar,
        &task_id,
        &json!({"status": "success", "output": "ok"}),
    );
    wait_task_frame(&hub, "task_complete", &task_id, 1);
    wait_status(&hub, &task_id, "completed");
    assert_eq!(agent_starts(&sidecar), 1);
    assert_eq!(wake_attempts(&sidecar, &task_id), 1);
}

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// An agent that confirms and waits for its result (the test writes the progress file).
const WAITING_AGENT: &str = r#"
dir=$(dirname "$RESULTS_DIR")
echo "$TASK_ID" >> "$dir/starts"
(
  touch "$RESULTS_DIR/$TASK_ID.started"
  n=0
  while [ ! -e "$dir/go-$TASK_ID" ] && [ $n -lt 6000 ]; do sleep 0.01; n=$((n+1)); done
  [ -e "$dir/go-$TASK_ID" ] || exit 0
  cp "$dir/go-$TASK_ID" "$RESULTS_DIR/.$TASK_ID.tmp"
  mv "$RESULTS_DIR/.$TASK_ID.tmp" "$RESULTS_DIR/$TASK_ID.json"
) >/dev/null 2>&1 </dev/null &
"#;

/// 4 MiB of `{"text":"x"}` lines (322 638 events of one byte of text each). Read whole and
/// sent one bus message per line, as before back-pressure, they grew the resident set by
/// about 330 MiB (and all but 2 bytes of the text were replaced on the way); read 64 KiB at
/// a time, each piece taken in (merged into at most 256 KiB waiting) before the next, the
/// resident set grows by one piece's parsed lines, what waits and the frames on their way:
/// about 5 MiB measured. The bound, 16 MiB over the resident set before the file came,
/// leaves room for the allocator's slack and the debug build.
#[test]
fn a_4_mib_progress_file_of_tiny_lines_costs_bounded_memory_and_loses_nothing() {
    // Limits high enough for the test to end soon (frames every 24 ms), alike on both sides.
    let limits = HubLimits {
        light: RateTier::per_minute(12_000),
        normal: RateTier::per_minute(6_000),
        ..HubLimits::default()
    };
    let hub = hub_with(HubTimings::default(), limits);
    let sidecar = sidecar_with_script(
        &hub,
        WAITING_AGENT,
        json!({"hub_rate_limits": {"light": 12000, "normal": 6000}, "agent_progress_min_ms": 0,
               "log_level": "info"}),
    );
    let task_id = submit(&hub, json!({"description": "flood"}));
    let started = sidecar.results_dir().join(format!("{task_id}.started"));
    eventually("the agent confirmed", || started.exists());
    sidecar.wait_event("wake_success");
    let pid = sidecar.pid();
    let before = status_kib(pid, "VmRSS:");

    let line = "{\"text\":\"x\"}\n";
    let lines = 4 * 1024 * 1024 / line.len();
    let tmp = sidecar.results_dir().join(".flood.tmp");
    std::fs::write(&tmp, line.repeat(lines)).unwrap();
    std::fs::rename(
        &tmp,
        sidecar.results_dir().join(format!("{task_id}.progress")),
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = before;
    while hub.progress_text(&task_id).len() < lines {
        peak = peak.max(status_kib(pid, "VmRSS:"));
        assert!(
            Instant::now() < deadline,
            "{} of {lines} bytes of text arrived; resident set {before} KiB before, {peak} KiB at most since",
            hub.progress_text(&task_id).len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    peak = peak.max(status_kib(pid, "VmHWM:"));
    assert_eq!(hub.progress_text(&task_id), "x".repeat(lines));
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "resident set grew by {grown} KiB (from {before} KiB)"
    );
    assert!(hub.rate_limited().is_empty(), "{:?}", hub.rate_limited());
    assert_eq!(hub.violations(AGENT), 0);

    release(&sidecar, &task_id, &json!({"status": "success"}));
    wait_status(&hub, &task_id, "completed");
    assert_eq!(agent_starts(&sidecar), 1);
    eprintln!("resident set: {before} KiB before, peak {peak} KiB");
}
