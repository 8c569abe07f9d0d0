//! The systemd watchdog is fed only while the actor system really turns: a test-only actor
//! blocks the event loop for a while, and no `WATCHDOG=1` may arrive during it (a timer on
//! a side thread would keep pinging). In-process, in its own test binary, because it sets
//! `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` for the whole process.
#![cfg(unix)]

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;

use agentcom_sidecar::actors::supervisor::ShutdownRequested;
use agentcom_sidecar::actors::{children, Child, ChildSpec, Env, Probe, Stop};
use agentcom_sidecar::bus::Bus;
use agentcom_sidecar::config::Config;

const BLOCK_AT: Duration = Duration::from_millis(500);
const BLOCK_FOR: Duration = Duration::from_millis(800);

/// Blocks the event loop once, then ends the run.
struct Blocker {
    env: Env,
}

impl Actor for Blocker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(BLOCK_AT, |_, _| std::thread::sleep(BLOCK_FOR));
        ctx.run_later(
            BLOCK_AT + BLOCK_FOR + Duration::from_millis(600),
            |act, _| {
                let _ = act.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
            },
        );
    }
}

impl Handler<Probe> for Blocker {
    type Result = ();
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) {}
}

impl Handler<Stop> for Blocker {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Child for Blocker {
    fn routes(_: &Bus, _: &Addr<Self>) {}
}

#[test]
fn no_watchdog_ping_while_the_event_loop_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::env::set_var("NOTIFY_SOCKET", &socket_path);
    std::env::set_var("WATCHDOG_USEC", "100000");

    let pings = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let done = Arc::new(Mutex::new(false));
    let reader = {
        let (pings, done) = (pings.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !*done.lock().unwrap() {
                if let Ok(n) = socket.recv(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                        pings.lock().unwrap().push(Instant::now());
                    }
                }
            }
        })
    };

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config =
        json!({"agent_id": "a1", "token": "t", "hub_url": format!("ws://127.0.0.1:{port}/ws")});
    let config = Config::from_json(&config.to_string(), &dir.path().join("config.json")).unwrap();
    let started = Instant::now();
    let code = agentcom_sidecar::runtime::run_with(config, || {
        let mut list = children();
        list.push(ChildSpec::new("blocker", |env| Blocker {
            env: env.clone(),
        }));
        list
    });
    *done.lock().unwrap() = true;
    reader.join().unwrap();
    assert_eq!(code, 0);

    let pings = pings.lock().unwrap().clone();
    let block_start = started + BLOCK_AT;
    let block_end = block_start + BLOCK_FOR;
    let before = pings.iter().filter(|t| **t < block_start).count();
    // Pings resume once the loop turns again.
    let after = pings.iter().filter(|t| **t > block_end).count();
    assert!(
        before >= 2 && after >= 2,
        "{before} pings before the block, {after} after"
    );
    // None while blocked (a little slack at the edges for the reader thread).
    let during: Vec<_> = pings
        .iter()
        .filter(|t| {
            **t > block_start + Duration::from_millis(100)
                && **t < block_end - Duration::from_millis(50)
        })
        .collect();
    assert!(
        during.is_empty(),
        "{} pings while the event loop was blocked",
        during.len()
    );
}
