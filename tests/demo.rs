//! `agentcom-sidecar demo`, as a newcomer runs it: the real binary, its own dev hub, the
//! sample agent. It ends its story with a summary (the task, the agent's output, where the
//! files are, a command for another task), stays quiet at `info`, and stops cleanly on
//! SIGTERM.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The demo process, killed if the test ends early.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects what the demo prints on stdout.
fn collect(mut out: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let seen = Arc::new(Mutex::new(String::new()));
    let into = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// Waits until stdout holds `n` summaries; returns stdout.
fn wait_summaries(seen: &Mutex<String>, n: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = seen.lock().unwrap().clone();
        if text.matches("the agent's output:").count() >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no summary #{n} within {WAIT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value after `flag` in the copy-paste `curl` line, between single quotes.
fn quoted_after<'a>(line: &'a str, flag: &str) -> &'a str {
    let rest = &line[line.find(flag).unwrap() + flag.len()..];
    rest.trim_start()
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap()
}

#[test]
fn the_demo_ends_with_a_summary_of_its_task_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo(
        Command::new(bin())
            .arg("demo")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut demo.0;
    let seen = collect(child.stdout.take().unwrap());
    let errors = collect(child.stderr.take().unwrap());
    wait_summaries(&seen, 1);
    // The whole first summary (its last line comes after the command to copy): a snapshot
    // taken earlier may end in the middle of that command.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = seen.lock().unwrap().clone();
        if text.contains("Ctrl-C stops the demo.") {
            break text;
        }
        assert!(Instant::now() < deadline, "no whole summary:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };

    // The summary names the task, what the agent made of it, and where the files are.
    let task_id = text
        .lines()
        .find_map(|l| l.strip_prefix("demo: task "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no task line:\n{text}"))
        .to_string();
    assert!(task_id.starts_with("task-"), "{text}");
    let output = text
        .lines()
        .find(|l| l.contains("the agent's output:"))
        .unwrap();
    assert!(
        output.contains(&format!("sample agent finished {task_id}")),
        "{output}"
    );
    assert!(
        text.contains(&format!("demo: task {task_id} completed in ")),
        "{text}"
    );
    assert!(text.contains("  files: "), "{text}");
    // The story before it: acknowledged, and nothing at debug.
    let before = &text[..text.find("the agent's output:").unwrap()];
    assert!(
        before
            .lines()
            .any(|l| l.contains(" task_ack ") && l.contains(&task_id)),
        "{text}"
    );
    assert!(!text.contains(" DEBUG "), "{text}");
    assert!(!text.contains(" heartbeat "), "{text}");
    let startup = text.lines().find(|l| l.contains(" startup ")).unwrap();
    assert!(
        startup.len() < 400,
        "{} characters: {startup}",
        startup.len()
    );
    assert!(!startup.contains("config={"), "{startup}");
    assert!(text.contains(" ws_open conn=1 "), "{text}");
    assert!(text.contains(" identified session=1 "), "{text}");

    // Then a routed task done by the bundled Ollama agent against the demo's stand-in model
    // server: the model's text, its tokens, and the hub's live view of the stream.
    wait_summaries(&seen, 2);
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = seen.lock().unwrap().clone();
        if text.contains("characters of its text as it streamed") {
            break text;
        }
        assert!(Instant::now() < deadline, "no routed summary:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let routed = text
        .lines()
        .find(|l| l.contains("done by the bundled agent with model standin-coder"))
        .unwrap_or_else(|| panic!("no routed task done by the bundled agent:\n{text}"));
    assert!(!routed.contains("got 0 characters"), "{routed}");
    assert!(
        text.contains("the agent's output: Here is the plan."),
        "{text}"
    );

    // The command it gives pushes another task, which gets a summary of its own.
    let curl = text
        .lines()
        .find(|l| l.trim_start().starts_with("curl -X POST"))
        .unwrap_or_else(|| panic!("no command for another task:\n{text}"));
    let url = curl.split_whitespace().nth(3).unwrap();
    let auth = quoted_after(curl, "-H");
    let body = quoted_after(curl, "-d");
    let authority = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let path = &url[url.find(authority).unwrap() + authority.len()..];
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let text = wait_summaries(&seen, 3);
    assert!(text.matches(" completed").count() >= 3, "{text}");

    // SIGTERM: both stop in good order.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, SIGTERM) }, 0);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "{}", errors.lock().unwrap());
    // Its output thread ends with the pipe: the last line says where the files are.
    let deadline = Instant::now() + WAIT;
    while !seen.lock().unwrap().contains("demo: stopped;") {
        assert!(Instant::now() < deadline, "{}", seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
}
