//! The Supervisor against a test-only actor type that fails on purpose: restarted with a
//! fresh actor and `actor_restarted` logged, whether it panics, fails with an error or just
//! stops; restart delays doubling; and the intensity limit ending the process non-zero.
//!
//! The real actor system runs in this process (`runtime::run_with`) with the standard
//! children plus the faulty one, so the fault is one only a test build can trigger.
#![cfg(unix)]

use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;
use serde_json::{json, Value};

use agentcom_sidecar::actors::supervisor::ShutdownRequested;
use agentcom_sidecar::actors::{children, Child, ChildSpec, Env, Stop};
use agentcom_sidecar::bus::Bus;
use agentcom_sidecar::config::Config;
use agentcom_sidecar::runtime::run_with;

/// How the faulty actor misbehaves.
const PANIC_ONCE: usize = 0;
const FAIL_ONCE: usize = 1;
const STOP_ONCE: usize = 2;
const ALWAYS_PANIC: usize = 3;

/// Incarnations started, per mode (each test uses its own mode).
static STARTS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

struct Faulty<const MODE: usize> {
    env: Env,
}

impl<const MODE: usize> Faulty<MODE> {
    fn new(env: &Env) -> Self {
        Faulty { env: env.clone() }
    }
}

impl<const MODE: usize> Actor for Faulty<MODE> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let incarnation = STARTS[MODE].fetch_add(1, Ordering::SeqCst);
        ctx.run_later(std::time::Duration::from_millis(20), move |act, ctx| {
            if incarnation > 0 && MODE != ALWAYS_PANIC {
                // The fresh actor works: end the run the way a signal would.
                let _ = act.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
                return;
            }
            match MODE {
                FAIL_ONCE => act.env.fail(ctx, "injected error"),
                STOP_ONCE => ctx.stop(),
                _ => panic!("injected fault #{incarnation}"),
            }
        });
    }
}

impl<const MODE: usize> Handler<agentcom_sidecar::actors::Probe> for Faulty<MODE> {
    type Result = ();
    fn handle(&mut self, _: agentcom_sidecar::actors::Probe, _: &mut Context<Self>) {}
}

impl<const MODE: usize> Child for Faulty<MODE> {
    fn routes(_: &Bus, _: &Addr<Self>) {}
}

impl<const MODE: usize> Handler<Stop> for Faulty<MODE> {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Runs the sidecar (hub unreachable: it just retries) with the faulty child added;
/// returns the exit code and the parsed log.
fn run_with_faulty<const MODE: usize>(extra: Value) -> (i32, Vec<Value>) {
    let (code, lines, _) = run_with_faulty_status::<MODE>(extra);
    (code, lines)
}

/// As [`run_with_faulty`], plus the state file the run left behind.
fn run_with_faulty_status<const MODE: usize>(extra: Value) -> (i32, Vec<Value>, Value) {
    let run = run_children(extra, || {
        vec![ChildSpec::new("faulty", Faulty::<MODE>::new)]
    });
    (run.code, run.lines, run.status)
}

/// What a run of the real children plus test ones left: its exit code, its log and its
/// state file.
struct Run {
    code: i32,
    lines: Vec<Value>,
    status: Value,
}

/// Runs the sidecar's children plus `extra_children` in this process, with `config` over a
/// base config whose hub is unreachable (it just retries). A run that has not ended within
/// a minute fails the test instead of hanging it.
fn run_children(
    config: Value,
    extra_children: impl FnOnce() -> Vec<ChildSpec> + Send + 'static,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut full = json!({
        "agent_id": "a1",
        "token": "t",
        "hub_url": format!("ws://127.0.0.1:{port}/ws"),
        "restart_delay_ms": 10,
        "reconnect_initial_ms": 1000,
    });
    full.as_object_mut()
        .unwrap()
        .extend(config.as_object().unwrap().clone());
    let config = Config::from_json(&full.to_string(), &dir.path().join("config.json")).unwrap();
    let log_file = config.log_file.clone();
    let status_file = config.status_file.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let code = run_with(config, || {
            let mut list = children();
            list.extend(extra_children());
            list
        });
        let _ = tx.send(code);
    });
    let code = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the run ended within a minute");
    let lines = std::fs::read_to_string(log_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let status = serde_json::from_str(&std::fs::read_to_string(status_file).unwrap()).unwrap();
    Run {
        code,
        lines,
        status,
    }
}

fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

#[test]
fn a_panicking_child_is_restarted_fresh_and_the_restart_is_logged() {
    let (code, lines, status) = run_with_faulty_status::<PANIC_ONCE>(json!({}));
    assert_eq!(code, 0);
    let restarted = events(&lines, "actor_restarted");
    assert_eq!(restarted.len(), 1, "{lines:#?}");
    let r = restarted[0];
    assert_eq!(r["actor"], "faulty");
    assert_eq!(r["reason"], "panic");
    assert!(r["detail"].as_str().unwrap().contains("injected fault #0"));
    assert_eq!(r["restart_count"], 1);
    assert_eq!(r["delay_ms"], 10);
    let started: Vec<_> = events(&lines, "actor_started")
        .into_iter()
        .filter(|l| l["actor"] == "faulty")
        .collect();
    assert_eq!(started.len(), 2);
    // The state file behind `agentcom-sidecar status` keeps the count and the last reason.
    assert_eq!(status["restarts"]["faulty"]["count"], 1);
    let reason = status["restarts"]["faulty"]["last_reason"]
        .as_str()
        .unwrap();
    assert!(reason.starts_with("panic: injected fault"), "{reason}");
    assert!(status["stopped_at"].is_string());
    assert_eq!(lines.last().unwrap()["phase"], "complete");
}

#[test]
fn a_child_that_fails_with_an_error_is_restarted_with_its_reason() {
    let (code, lines) = run_with_faulty::<FAIL_ONCE>(json!({}));
    assert_eq!(code, 0);
    let r = events(&lines, "actor_restarted")[0];
    assert_eq!(r["reason"], "error");
    assert_eq!(r["detail"], "injected error");
}

#[test]
fn a_child_that_stops_unexpectedly_is_restarted() {
    let (code, lines) = run_with_faulty::<STOP_ONCE>(json!({}));
    assert_eq!(code, 0);
    assert_eq!(events(&lines, "actor_restarted")[0]["reason"], "stopped");
}

#[test]
fn past_the_restart_intensity_the_supervisor_gives_up_and_exits_non_zero() {
    let (code, lines) =
        run_with_faulty::<ALWAYS_PANIC>(json!({"restart_max": 3, "restart_window_ms": 60000}));
    assert_eq!(code, 70);
    let delays: Vec<_> = events(&lines, "actor_restarted")
        .iter()
        .map(|l| l["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(
        delays,
        [10, 20, 40],
        "delays double with each recent restart"
    );
    let gave_up = events(&lines, "supervisor_gave_up");
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0]["actor"], "faulty");
    assert_eq!(gave_up[0]["restarts"], 3);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["exit_code"].as_i64()),
        (Some("shutdown"), Some(70))
    );
}

/// Incarnations of the session listener, and sessions its later incarnation learned.
static LISTENER_STARTS: AtomicUsize = AtomicUsize::new(0);
static SESSIONS_LEARNED: AtomicUsize = AtomicUsize::new(0);

/// A child that cares about the hub session, as the heartbeat, queue and status actors do:
/// it asks for the current session when it starts, and its first incarnation dies on it.
struct SessionListener {
    env: Env,
    incarnation: usize,
}

impl Actor for SessionListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.incarnation = LISTENER_STARTS.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .env
            .bus
            .send(agentcom_sidecar::actors::hub::AnnounceSession);
        // Whatever happens, the run ends: the test fails instead of hanging.
        ctx.run_later(std::time::Duration::from_secs(10), |act, _| {
            let _ = act.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
        });
    }
}

impl Handler<agentcom_sidecar::actors::hub::SessionIdentified> for SessionListener {
    type Result = ();
    fn handle(
        &mut self,
        _: agentcom_sidecar::actors::hub::SessionIdentified,
        _: &mut Context<Self>,
    ) {
        if self.incarnation == 0 {
            panic!("dies once the session is up");
        }
        // The fresh actor learned the session without waiting for a reconnect.
        SESSIONS_LEARNED.fetch_add(1, Ordering::SeqCst);
        let _ = self.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
    }
}

impl Handler<agentcom_sidecar::actors::Probe> for SessionListener {
    type Result = ();
    fn handle(&mut self, _: agentcom_sidecar::actors::Probe, _: &mut Context<Self>) {}
}

impl Handler<Stop> for SessionListener {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Child for SessionListener {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(
            addr.clone()
                .recipient::<agentcom_sidecar::actors::hub::SessionIdentified>(),
        );
    }
}

#[test]
fn a_restarted_child_learns_the_current_session_without_a_reconnect() {
    use agentcom_sidecar::devhub::{DevHub, DevHubOptions};
    let hub = DevHub::start(DevHubOptions {
        tokens: Some([("a1".to_string(), "t".to_string())].into()),
        ..DevHubOptions::default()
    })
    .unwrap();
    let Run { code, lines, .. } = run_children(json!({"hub_url": hub.ws_url()}), || {
        vec![ChildSpec::new("listener", |env| SessionListener {
            env: env.clone(),
            incarnation: 0,
        })]
    });
    assert_eq!(code, 0);
    let restarted = events(&lines, "actor_restarted");
    assert_eq!(restarted.len(), 1);
    assert_eq!(
        (
            restarted[0]["actor"].as_str(),
            restarted[0]["reason"].as_str()
        ),
        (Some("listener"), Some("panic"))
    );
    assert_eq!(
        events(&lines, "identified").len(),
        1,
        "one session throughout"
    );
    assert_eq!(LISTENER_STARTS.load(Ordering::SeqCst), 2);
    assert_eq!(
        SESSIONS_LEARNED.load(Ordering::SeqCst),
        1,
        "the fresh actor never heard of the session"
    );
}

/// Incarnations of the re-announcer, and re-announcements its fresh incarnation has seen.
static REANNOUNCER_STARTS: AtomicUsize = AtomicUsize::new(0);
static REANNOUNCEMENTS_SEEN: AtomicUsize = AtomicUsize::new(0);

/// Asks for the current session at start, as a restarted child does; its first incarnation
/// dies once the session is up. The fresh one asks once more when it hears of the session,
/// and ends the run at the second answer: by then the heartbeat has handled both
/// re-announcements (its mailbox is in order) well before the hub session closes.
struct Reannouncer {
    env: Env,
    incarnation: usize,
}

impl Actor for Reannouncer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.incarnation = REANNOUNCER_STARTS.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .env
            .bus
            .send(agentcom_sidecar::actors::hub::AnnounceSession);
        ctx.run_later(std::time::Duration::from_secs(10), |act, _| {
            let _ = act.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
        });
    }
}

impl Handler<agentcom_sidecar::actors::hub::SessionIdentified> for Reannouncer {
    type Result = ();
    fn handle(
        &mut self,
        _: agentcom_sidecar::actors::hub::SessionIdentified,
        _: &mut Context<Self>,
    ) {
        if self.incarnation == 0 {
            panic!("dies once the session is up");
        }
        match REANNOUNCEMENTS_SEEN.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let _ = self
                    .env
                    .bus
                    .send(agentcom_sidecar::actors::hub::AnnounceSession);
            }
            _ => {
                let _ = self.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
            }
        }
    }
}

impl Handler<agentcom_sidecar::actors::Probe> for Reannouncer {
    type Result = ();
    fn handle(&mut self, _: agentcom_sidecar::actors::Probe, _: &mut Context<Self>) {}
}

impl Handler<Stop> for Reannouncer {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Child for Reannouncer {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(
            addr.clone()
                .recipient::<agentcom_sidecar::actors::hub::SessionIdentified>(),
        );
    }
}

#[test]
fn a_re_announced_session_does_not_make_the_heartbeat_ping_again() {
    use agentcom_sidecar::devhub::{DevHub, DevHubOptions, HubEventKind};
    let hub = DevHub::start(DevHubOptions {
        tokens: Some([("a1".to_string(), "t".to_string())].into()),
        ..DevHubOptions::default()
    })
    .unwrap();
    // One ping at identify; the next would be a minute later, long after the run.
    let config = json!({
        "hub_url": hub.ws_url(),
        "heartbeat_interval_ms": 60000, "heartbeat_timeout_ms": 30000,
    });
    let Run { code, lines, .. } = run_children(config, || {
        vec![ChildSpec::new("reannouncer", |env| Reannouncer {
            env: env.clone(),
            incarnation: 0,
        })]
    });
    assert_eq!(code, 0);
    let log = format!("{lines:#?}");
    assert_eq!(REANNOUNCER_STARTS.load(Ordering::SeqCst), 2, "{log}");
    assert_eq!(REANNOUNCEMENTS_SEEN.load(Ordering::SeqCst), 2, "{log}");
    let pings = hub
        .events()
        .iter()
        .filter(|e| matches!(&e.kind, HubEventKind::Frame { json, .. } if json["type"] == "ping"))
        .count();
    assert_eq!(
        pings, 1,
        "one ping at identify; the re-announcements of the same session change nothing"
    );
}

/// A test-only message for a child that restarts, and the end of a series of them.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
struct Note(usize);

#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
struct NotesEnd;

/// How many notes the sender sends during the restart delay: more than the bus holds.
const NOTES: usize = agentcom_sidecar::bus::HELD_PER_TYPE + 5;

static RECEIVER_STARTS: AtomicUsize = AtomicUsize::new(0);
static NOTES_SEEN: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
/// What the sender saw: the receiver away while it sent, and `send`'s answers.
static SENDS: std::sync::Mutex<Option<(bool, Vec<bool>)>> = std::sync::Mutex::new(None);

/// Accepts `Note`s; its first incarnation panics at once, the fresh one records what it is
/// given and ends the run at `NotesEnd`.
struct NoteReceiver {
    env: Env,
}

impl Actor for NoteReceiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if RECEIVER_STARTS.fetch_add(1, Ordering::SeqCst) == 0 {
            ctx.run_later(std::time::Duration::from_millis(20), |_, _| {
                panic!("the receiver dies once")
            });
        }
        ctx.run_later(std::time::Duration::from_secs(10), |act, _| {
            let _ = act.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
        });
    }
}

impl Handler<Note> for NoteReceiver {
    type Result = ();
    fn handle(&mut self, msg: Note, _: &mut Context<Self>) {
        NOTES_SEEN.lock().unwrap().push(msg.0);
    }
}

impl Handler<NotesEnd> for NoteReceiver {
    type Result = ();
    fn handle(&mut self, _: NotesEnd, _: &mut Context<Self>) {
        let _ = self.env.bus.send(ShutdownRequested { signal: "SIGTERM" });
    }
}

impl Handler<agentcom_sidecar::actors::Probe> for NoteReceiver {
    type Result = ();
    fn handle(&mut self, _: agentcom_sidecar::actors::Probe, _: &mut Context<Self>) {}
}

impl Handler<Stop> for NoteReceiver {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Child for NoteReceiver {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(addr.clone().recipient::<Note>());
        bus.register(addr.clone().recipient::<NotesEnd>());
    }
}

/// Sends the notes as soon as the Supervisor says the receiver is being restarted, that is
/// during its restart delay.
struct NoteSender {
    env: Env,
}

impl Actor for NoteSender {
    type Context = Context<Self>;
}

impl Handler<agentcom_sidecar::actors::supervisor::ActorRestarted> for NoteSender {
    type Result = ();
    fn handle(
        &mut self,
        msg: agentcom_sidecar::actors::supervisor::ActorRestarted,
        _: &mut Context<Self>,
    ) {
        if msg.actor != "receiver" {
            return;
        }
        let away = !self.env.bus.routes::<Note>();
        let answers = (0..NOTES)
            .map(|n| self.env.bus.send(Note(n)).is_ok())
            .collect();
        let _ = self.env.bus.send(NotesEnd);
        *SENDS.lock().unwrap() = Some((away, answers));
    }
}

impl Handler<agentcom_sidecar::actors::Probe> for NoteSender {
    type Result = ();
    fn handle(&mut self, _: agentcom_sidecar::actors::Probe, _: &mut Context<Self>) {}
}

impl Handler<Stop> for NoteSender {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Child for NoteSender {
    fn routes(bus: &Bus, addr: &Addr<Self>) {
        bus.register(
            addr.clone()
                .recipient::<agentcom_sidecar::actors::supervisor::ActorRestarted>(),
        );
    }
}

#[test]
fn messages_sent_while_a_child_restarts_are_held_and_delivered_in_order() {
    // A restart delay long enough that the notes surely go out while the receiver is away
    // (checked below, not assumed).
    let Run { code, lines, .. } = run_children(json!({"restart_delay_ms": 300}), || {
        vec![
            ChildSpec::new("sender", |env| NoteSender { env: env.clone() }),
            ChildSpec::new("receiver", |env| NoteReceiver { env: env.clone() }),
        ]
    });
    assert_eq!(code, 0);
    let (away, answers) = SENDS.lock().unwrap().clone().expect("the sender ran");
    assert!(away, "the notes went out while the receiver was away");
    let held = agentcom_sidecar::bus::HELD_PER_TYPE;
    assert!(
        answers[..held].iter().all(|ok| *ok),
        "held: send answers Ok"
    );
    assert!(
        answers[held..].iter().all(|ok| !*ok),
        "past the limit: handed back"
    );
    assert_eq!(
        *NOTES_SEEN.lock().unwrap(),
        (0..held).collect::<Vec<_>>(),
        "the fresh receiver got the held notes, in order"
    );
    let dropped = events(&lines, "bus_messages_dropped");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0]["message"], "Note");
    assert_eq!(dropped[0]["count"], 5);
    assert_eq!(RECEIVER_STARTS.load(Ordering::SeqCst), 2);
}
