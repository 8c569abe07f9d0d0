//! Room chat (`room_message`) waking the agent, in the real binary against the dev hub: chat
//! text reaches the room wake command only as data (never as command text), each `seq` wakes
//! at most once across reconnects and restarts, a flood is paced, the agent's own messages
//! and unwanted ones are skipped, a room wake never touches a task's agent, a hanging room
//! command is killed, and without `room_wake_command` nothing runs.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// A directory for the room wake command: its script and what it records per wake.
struct RoomDir {
    dir: tempfile::TempDir,
}

/// Records, per wake: its seq in `wakes`; `printenv ROOM_TEXT` in `env-SEQ`; the content of
/// `ROOM_MESSAGE_FILE` in `file-SEQ`; the other variables in `meta-SEQ`.
const RECORDING_ROOM: &str = r#"
out="$(dirname "$0")"
printf '%s\n' "$ROOM_SEQ" >> "$out/wakes"
printenv ROOM_TEXT > "$out/env-$ROOM_SEQ"
cat "$ROOM_MESSAGE_FILE" > "$out/file-$ROOM_SEQ"
{
  printf 'from=%s\n' "$ROOM_FROM"
  printf 'type=%s\n' "${ROOM_MESSAGE_TYPE:-}"
  printf 'omitted=%s\n' "${ROOM_TEXT_OMITTED:-}"
  printf 'timestamp=%s\n' "${ROOM_TIMESTAMP:-}"
  printf 'task=%s\n' "${TASK_ID:-}${TASK_JSON:-}${RESULTS_DIR:-}"
} > "$out/meta-$ROOM_SEQ"
exit 0
"#;

impl RoomDir {
    fn new(script: &str) -> RoomDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("room.sh"), script).unwrap();
        RoomDir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `extra` with this directory's script as the room wake command (an argument list).
    fn config(&self, extra: Value) -> Value {
        let script = self.path("room.sh").display().to_string();
        with(json!({"room_wake_command": ["sh", script]}), extra)
    }

    /// The seqs the command was run for.
    fn wakes(&self) -> Vec<u64> {
        std::fs::read_to_string(self.path("wakes"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// Waits for the `room_wake_done` line of `seq`.
fn wait_done(sidecar: &Sidecar, seq: u64) -> Value {
    sidecar
        .wait_for(WAIT, |l| l["event"] == "room_wake_done" && l["seq"] == seq)
        .unwrap_or_else(|| panic!("no room_wake_done for seq {seq}\n{}", sidecar.dump()))
}

/// `room_wake_skipped` lines with this reason.
fn skipped(sidecar: &Sidecar, reason: &str) -> Vec<Value> {
    sidecar
        .events("room_wake_skipped")
        .into_iter()
        .filter(|l| l["reason"] == reason)
        .collect()
}

fn wait_skipped(sidecar: &Sidecar, reason: &str, n: usize) {
    eventually(&format!("{n} room_wake_skipped {reason}"), || {
        skipped(sidecar, reason).len() >= n
    });
}

/// A `room_message` frame as the hub pushes it.
fn room_frame(from: &str, text: &str, seq: i64, timestamp: u64) -> RawFrame {
    RawFrame::Text(
        json!({"type": "room_message", "from": from, "text": text, "seq": seq,
            "message_type": "chat", "timestamp": timestamp})
        .to_string(),
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn hostile_chat_text_reaches_the_room_command_intact_and_never_runs() {
    let hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let sidecar = sidecar_with_script(
        &hub,
        "exit 0",
        room.config(json!({"room_wake_min_interval_ms": 1, "room_wake_burst": 100})),
    );
    let target = |n: u32| room.path(&format!("pwned-{n}"));
    let t = |n: u32| target(n).display().to_string();
    let texts: Vec<String> = vec![
        format!("$(touch {})", t(1)),
        format!("`touch {}`", t(2)),
        format!("'; touch {}; echo '\"; touch {}; echo \"", t(3), t(3)),
        format!("line one\n$(touch {})\n\tline three\r\n", t(4)),
        format!("{}$(touch {})", "A".repeat(100 * 1024), t(5)),
        format!("nul\u{0}$(touch {})", t(6)),
        format!(
            "${{IFS}}touch${{IFS}}{} | touch {} ; touch {} & \\",
            t(7),
            t(7),
            t(7)
        ),
    ];
    for text in &texts {
        let message = hub.room_post("mallory", text, "chat");
        let seq = message["seq"].as_u64().unwrap();
        let done = wait_done(&sidecar, seq);
        assert_eq!(done["outcome"], "success", "{done}");
        // The file always holds the text exactly.
        assert_eq!(
            room.read(&format!("file-{seq}")),
            text.as_bytes(),
            "seq {seq}"
        );
        let meta = String::from_utf8(room.read(&format!("meta-{seq}"))).unwrap();
        assert!(
            meta.contains("from=mallory\n") && meta.contains("type=chat\n"),
            "{meta}"
        );
        assert!(meta.contains("task=\n"), "no task variable: {meta}");
        let env = room.read(&format!("env-{seq}"));
        if text.len() > 64 * 1024 || text.contains('\0') {
            assert!(meta.contains("omitted=1\n"), "{meta}");
            assert!(env.is_empty());
        } else {
            assert!(meta.contains("omitted=\n"), "{meta}");
            assert_eq!(env, [text.as_bytes(), b"\n"].concat(), "seq {seq}");
        }
    }
    // Not valid UTF-8: a lone surrogate escape, as the hub's JSON may carry it.
    let seq = 1000;
    let raw = format!(
        r#"{{"type":"room_message","from":"mallory","text":"x\udc80y $(touch {})","seq":{seq},"message_type":"chat","timestamp":{}}}"#,
        t(8),
        now_ms()
    );
    assert_eq!(hub.send(AGENT, RawFrame::Text(raw)), 1);
    assert_eq!(wait_done(&sidecar, seq)["outcome"], "success");
    let expected = [&b"x\xed\xb2\x80y $(touch "[..], t(8).as_bytes(), b")"].concat();
    assert_eq!(room.read(&format!("file-{seq}")), expected);
    assert_eq!(
        room.read(&format!("env-{seq}")),
        [&expected[..], b"\n"].concat()
    );

    for n in 1..=8 {
        assert!(!target(n).exists(), "chat text ran as a command: {}", t(n));
    }
    // The text is never in a line above debug, and there cut to 200 characters.
    for line in sidecar.lines() {
        if line["level"] != "debug" {
            assert!(!line.to_string().contains("touch"), "{line}");
        }
    }
    let received = sidecar.events("room_message_received");
    assert!(received.iter().all(|l| l.get("text").is_none()));
    assert_eq!(received[4]["bytes"], texts[4].len());
    // What the room wake keeps on disk is private.
    let mode = |p: PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777
    };
    let state_dir = sidecar.dir.path().join("room");
    assert_eq!(mode(state_dir.clone()), 0o700);
    assert_eq!(mode(state_dir.join("messages")), 0o700);
    for file in ["state.json", "room.wake.log", "messages/1000.txt"] {
        assert_eq!(mode(state_dir.join(file)), 0o600, "{file}");
    }
    let shown = sidecar.events("room_message_text");
    assert!(shown
        .iter()
        .all(|l| l["text"].as_str().unwrap().chars().count() <= 200));
}

#[test]
fn a_replayed_seq_wakes_nothing_after_a_reconnect_or_a_restart() {
    let mut hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let mut sidecar = sidecar_with_script(&hub, "exit 0", room.config(json!({})));
    let message = hub.room_post("ann", "hello", "chat");
    assert_eq!(message["seq"], 1);
    wait_done(&sidecar, 1);
    let state: Value =
        serde_json::from_slice(&std::fs::read(sidecar.dir.path().join("room/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["seq"], 1);
    let timestamp = message["timestamp"].as_u64().unwrap();
    let replay = || assert_eq!(hub.send(AGENT, room_frame("ann", "hello", 1, timestamp)), 1);

    // On the same session (the hub delivers a broadcast once per identify).
    replay();
    wait_skipped(&sidecar, "replayed", 1);
    // After the connection is dropped and the sidecar reconnects.
    assert_eq!(hub.kill_connections(AGENT), 1);
    wait_identified(&hub, 2);
    replay();
    wait_skipped(&sidecar, "replayed", 2);
    // After the sidecar is killed and started again: the seq was on disk before the wake.
    sidecar.kill_and_restart();
    wait_identified(&hub, 3);
    replay();
    wait_skipped(&sidecar, "replayed", 3);
    assert_eq!(room.wakes(), [1]);

    // A new message still wakes.
    assert_eq!(hub.room_post("ann", "again", "chat")["seq"], 2);
    wait_done(&sidecar, 2);
    assert_eq!(room.wakes(), [1, 2]);

    // The hub keeps its room in memory: after a hub restart seq starts at 1 again, later in
    // time, and is a new message, not a replay.
    hub.restart().unwrap();
    wait_identified(&hub, 4);
    let after = hub.room_post("ann", "after the hub restarted", "chat");
    assert_eq!(after["seq"], 1);
    sidecar.wait_count("room_wake_done", 3);
    assert_eq!(room.wakes(), [1, 2, 1]);
    assert_eq!(
        room.read("file-1"),
        b"after the hub restarted",
        "the message file of the new seq 1"
    );
}

#[test]
fn a_flood_of_chat_is_paced() {
    let hub = hub();
    let room = RoomDir::new("printf '%s\\n' \"$ROOM_SEQ\" >> \"$(dirname \"$0\")/wakes\"\n");
    let interval = 50u128;
    let burst = 3u128;
    let sidecar = sidecar_with_script(
        &hub,
        "exit 0",
        room.config(
            json!({"room_wake_min_interval_ms": interval as u64, "room_wake_burst": burst as u64}),
        ),
    );
    let start = Instant::now();
    // 1 000 messages over about a second: the bucket, not the one-at-a-time slot, is what
    // limits (a room command here takes a few milliseconds).
    for i in 0..1000 {
        hub.room_post("flood", &format!("message {i}"), "chat");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    sidecar.wait_count("room_message_received", 1000);
    // Every message is decided once: woken or skipped, none queued.
    eventually("every message decided", || {
        sidecar.events("room_wake").len() + sidecar.events("room_wake_skipped").len() == 1000
    });
    let elapsed = start.elapsed().as_millis();
    let wakes = sidecar.events("room_wake").len() as u128;
    assert!(wakes >= 1);
    assert!(
        wakes <= burst + elapsed / interval + 1,
        "{wakes} room wakes in {elapsed} ms"
    );
    let reasons: std::collections::BTreeSet<String> = sidecar
        .events("room_wake_skipped")
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().all(|r| r == "rate_limited" || r == "busy"),
        "{reasons:?}"
    );
    assert!(reasons.contains("rate_limited"), "{reasons:?}");
    eventually("every wake's command ran", || {
        room.wakes().len() as u128 == wakes
    });
}

#[test]
fn the_agents_own_messages_are_ignored() {
    let hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let sidecar = sidecar_with_script(&hub, "exit 0", room.config(json!({"name": "Builder"})));
    let now = now_ms();
    assert_eq!(hub.send(AGENT, room_frame(AGENT, "mine", 1, now)), 1);
    assert_eq!(
        hub.send(AGENT, room_frame("Builder", "mine too", 2, now)),
        1
    );
    assert_eq!(hub.send(AGENT, room_frame("ann", "yours", 3, now)), 1);
    wait_done(&sidecar, 3);
    wait_skipped(&sidecar, "own_message", 2);
    assert_eq!(room.wakes(), [3]);
}

#[test]
fn a_room_wake_while_a_task_runs_leaves_the_task_alone() {
    let hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let sidecar = recording_sidecar(&hub, room.config(json!({})));
    let task = submit(&hub, json!({"description": "long work"}));
    eventually("the task's agent started", || {
        starts_of(&sidecar, &task) == 1
    });

    let seq = hub.room_post("ann", "how is it going? $TASK_ID", "chat")["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(wait_done(&sidecar, seq)["outcome"], "success");
    assert_eq!(starts_of(&sidecar, &task), 1);
    let meta = String::from_utf8(room.read(&format!("meta-{seq}"))).unwrap();
    assert!(meta.contains("task=\n"), "{meta}");

    release(
        &sidecar,
        &task,
        &json!({"status": "success", "output": "done"}),
    );
    wait_status(&hub, &task, "completed");
    assert_eq!(starts_of(&sidecar, &task), 1);
    assert_eq!(wake_attempts(&sidecar, &task), 1);
}

/// Whether any live process (not a zombie) is in process group `pgid`.
fn group_alive(pgid: i64) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<i64>().ok() == Some(pgid)
        })
}

#[test]
fn a_hanging_room_command_is_killed_at_its_timeout() {
    let hub = hub();
    // A command that hangs, with a child in the background in its group.
    let room = RoomDir::new("sleep 300 &\nsleep 300\n");
    let sidecar = sidecar_with_script(
        &hub,
        "exit 0",
        room.config(json!({"room_wake_timeout_ms": 300})),
    );
    let started = Instant::now();
    hub.room_post("ann", "hang", "chat");
    let wake = sidecar.wait_event("room_wake");
    let pid = wake["pid"].as_i64().unwrap();
    eventually("the room command's group runs", || group_alive(pid));
    let done = wait_done(&sidecar, 1);
    assert_eq!(done["outcome"], "timed_out", "{done}");
    assert!(started.elapsed().as_millis() >= 300);
    eventually("the room command's process group is gone", || {
        !group_alive(pid)
    });
    // The slot is free again.
    let room2 = room.path("room.sh");
    std::fs::write(&room2, "exit 0\n").unwrap();
    hub.room_post("ann", "after", "chat");
    assert_eq!(wait_done(&sidecar, 2)["outcome"], "success");
}

#[test]
fn without_a_room_wake_command_nothing_runs() {
    let hub = hub();
    let sidecar = sidecar_with_script(&hub, "exit 0", json!({}));
    let target = sidecar.dir.path().join("pwned");
    hub.room_post("ann", &format!("$(touch {})", target.display()), "chat");
    hub.room_post("ann", "second", "chat");
    // Messages are handled in order: once the second is logged, the first was decided.
    let second = sidecar
        .wait_for(WAIT, |l| {
            l["event"] == "room_message_received" && l["seq"] == 2
        })
        .expect("the second room message is logged");
    assert_eq!(second["level"], "debug");
    assert!(sidecar.events("room_wake").is_empty());
    assert!(sidecar.events("room_wake_skipped").is_empty());
    assert!(!sidecar.dir.path().join("room").exists());
    assert!(!target.exists());
}

#[test]
fn bad_room_frames_are_rejected_precisely_and_run_nothing() {
    let hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let sidecar = sidecar_with_script(&hub, "exit 0", room.config(json!({})));
    for frame in [
        json!({"type": "room_message", "from": "ann", "text": 5, "seq": 1}),
        json!({"type": "room_message", "from": "ann", "text": "no seq"}),
        json!({"type": "room_message", "from": "ann", "text": "negative", "seq": -2}),
        json!({"type": "room_message", "from": "ann", "text": "fraction", "seq": 2.5}),
    ] {
        assert_eq!(hub.send(AGENT, RawFrame::Text(frame.to_string())), 1);
    }
    let rejected = sidecar.wait_count("room_message_rejected", 4);
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].starts_with("\"text\" is not a string"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], "\"seq\" is missing");
    assert!(reasons[2].starts_with("\"seq\" is -2"), "{reasons:?}");
    assert!(reasons[3].starts_with("\"seq\" is 2.5"), "{reasons:?}");
    wait_skipped(&sidecar, "invalid_message", 4);
    assert!(sidecar.events("room_wake").is_empty());
    // Still alive and waking for a good one.
    assert_eq!(hub.send(AGENT, room_frame("ann", "fine", 3, now_ms())), 1);
    wait_done(&sidecar, 3);
    assert_eq!(room.wakes(), [3]);
    assert!(sidecar.events("actor_restarted").is_empty());
}

#[test]
fn type_and_mention_filters_choose_what_wakes() {
    let hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let sidecar = sidecar_with_script(
        &hub,
        "exit 0",
        room.config(
            json!({"name": "Builder", "room_message_types": ["chat"], "room_mention_only": true}),
        ),
    );
    hub.room_post("ann", "@agent-1 status?", "status");
    hub.room_post("ann", "agent-10 go", "chat");
    hub.room_post("ann", "ping @agent-1", "chat");
    wait_done(&sidecar, 3);
    hub.room_post("ann", "Builder, look at this", "chat");
    wait_done(&sidecar, 4);
    wait_skipped(&sidecar, "type_filtered", 1);
    wait_skipped(&sidecar, "not_mentioned", 1);
    assert_eq!(room.wakes(), [3, 4]);
}

#[test]
fn the_dev_hub_serves_the_rooms_http_routes_and_pushes_to_others_only() {
    let hub = hub();
    let room = RoomDir::new(RECORDING_ROOM);
    let sidecar = sidecar_with_script(&hub, "exit 0", room.config(json!({})));
    // The agent's own post is not pushed back to it; a human's is.
    assert_eq!(
        post(&hub, "/api/room/message", json!({"text": "from me"})).0,
        201
    );
    let (status, body) = post(
        &hub,
        "/api/room/message/human",
        json!({"from": "ann", "text": "from ann", "type": "note"}),
    );
    assert_eq!(status, 201);
    assert_eq!(
        (body["seq"].clone(), body["from"].clone()),
        (json!(2), json!("ann"))
    );
    wait_done(&sidecar, 2);
    assert_eq!(room.wakes(), [2]);
    // Messages are handled in order: seq 1 (the agent's own) never reached it.
    assert!(sidecar
        .events("room_message_received")
        .iter()
        .all(|l| l["seq"] != 1));
    assert!(String::from_utf8(room.read("meta-2"))
        .unwrap()
        .contains("type=note\n"));
    assert_eq!(post(&hub, "/api/room/message", json!({"text": ""})).0, 422);
    assert_eq!(
        post(&hub, "/api/room/message/human", json!({"text": "x"})).0,
        422
    );
    let history = hub.room_messages(1, 50);
    assert_eq!(history["last_seq"], 2);
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0]["text"], "from ann");
    let (status, body) = get(&hub, "/api/room/messages?since=0&limit=1");
    assert_eq!(status, 200);
    assert_eq!(
        body["messages"][0]["seq"], 2,
        "the newest `limit` after since"
    );
}

/// A minimal HTTP/1.1 exchange with the dev hub (the tests have no HTTP client).
fn http(hub: &DevHub, request: String) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(hub.addr()).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(hub: &DevHub, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    http(
        hub,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn get(hub: &DevHub, path: &str) -> (u16, Value) {
    http(
        hub,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}
