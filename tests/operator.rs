//! The operator's commands beside `register`, against the dev hub: `submit` (a task through
//! the hub's API, its id, `--wait` to its end, `--push` to one agent), `unregister` (the
//! token revoked, what to remove printed) and `register --test-task` end to end with a
//! sidecar started on the written config. Each refusal (hub down, 401, 404, TLS) is one
//! message and exit code 1.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn run(cwd: &Path, args: &[&str]) -> Output {
    run_in(cwd, args)
}

/// A config for [`AGENT`] with [`TOKEN`] at `hub_url`, in `dir`.
fn config_in(dir: &Path, hub_url: &str, extra: Value) -> PathBuf {
    let path = dir.join("config.json");
    write_config(&path, &with(fast_config(hub_url), extra));
    path
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS dev hub whose certificate a private CA signed; the CA's PEM file.
fn tls_hub(certs: &Path) -> (DevHub, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(certs.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(certs.join("hub.pem"), cert.pem()).unwrap();
    std::fs::write(certs.join("hub.key"), key.serialize_pem()).unwrap();
    let hub = DevHub::start(DevHubOptions {
        tokens: Some([(AGENT.to_string(), TOKEN.to_string())].into()),
        tls: Some((certs.join("hub.pem"), certs.join("hub.key"))),
        ..DevHubOptions::default()
    })
    .unwrap();
    (hub, certs.join("ca.pem"))
}

#[test]
fn submit_prints_the_task_id_and_waits_for_its_end() {
    let hub = hub();
    let sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    wait_identified(&hub, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &hub.ws_url(), json!({}));
    let c = config.to_str().unwrap();

    // Queued for the agent: the id on stdout, the fields at the hub.
    let out = run(
        dir.path(),
        &[
            "submit",
            "--config",
            c,
            "--to",
            AGENT,
            "--priority",
            "high",
            "--complexity",
            "trivial",
            "--metadata",
            r#"{"onboarding_test": true}"#,
            "--wait",
            "--timeout",
            "60",
            "Onboarding test",
        ],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        sidecar.dump()
    );
    let id = stdout.lines().next().unwrap().trim().to_string();
    assert_eq!(task_field(&hub, &id, "status"), "completed");
    // The hub keeps the priority as its number (urgent 0, high 1, …).
    assert_eq!(task_field(&hub, &id, "priority"), 1);
    assert_eq!(task_field(&hub, &id, "assigned_to"), AGENT);
    assert!(
        stdout.contains("completed (agent \"agent-1\"): onboarding test"),
        "{stdout}"
    );
    assert!(stderr.contains(&format!("task {id}: ")), "{stderr}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    // With a token file and --hub instead of the config (for an agent that is not
    // connected: it stays queued, and the sidecar stays free for the push below).
    let token_file = dir.path().join("t.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    set_mode(&token_file, 0o600);
    let out = run(
        dir.path(),
        &[
            "submit",
            "--hub",
            &hub.http_url(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--to",
            OTHER,
            "--complexity",
            "trivial",
            "just queued",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(
        hub.task(&id).expect("the hub has it")["description"],
        "just queued"
    );

    // Pushed to one agent: no routing, its wake command (none here: the test plays the
    // agent, which starts by itself).
    let out = run(
        dir.path(),
        &["submit", "--config", c, "--to", AGENT, "--push", "pushed"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    wait_task_frame(&hub, "task_accepted", &id, 1);
}

#[test]
fn submit_waits_no_longer_than_its_timeout() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &hub.ws_url(), json!({}));
    // No agent connected: the task stays queued.
    let started = Instant::now();
    let out = run(
        dir.path(),
        &[
            "submit",
            "--config",
            config.to_str().unwrap(),
            "--to",
            AGENT,
            "--complexity",
            "trivial",
            "--wait",
            "--timeout",
            "1",
            "nobody home",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("still queued"),
        "{}",
        text(&out.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn submit_and_unregister_refusals_are_one_clear_message() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for command in [&["submit", "x"][..], &["unregister"][..]] {
        // The hub is down.
        let down = format!("ws://127.0.0.1:{}/ws", closed_port());
        let config = config_in(d, &down, json!({}));
        let mut args = command.to_vec();
        let c = config.to_str().unwrap().to_string();
        args.extend(["--config", &c]);
        let out = run(d, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("cannot reach the hub at http://127.0.0.1:")
                && stderr.contains("connection refused"),
            "{command:?}: {stderr}"
        );

        // A token the hub does not know: 401.
        config_in(d, &hub.ws_url(), json!({"token": "not-a-token"}));
        let out = run(d, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("refused the token (401") && !stderr.contains("not-a-token"),
            "{command:?}: {stderr}"
        );

        // Not the hub's API there: 404.
        config_in(d, &hub.ws_url(), json!({}));
        let mut wrong = args.clone();
        let elsewhere = format!("{}/not-the-hub", hub.http_url());
        wrong.extend(["--hub", &elsewhere]);
        let out = run(d, &wrong);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("(404") && stderr.contains("/not-the-hub/"),
            "{command:?}: {stderr}"
        );
    }
    // Bad options, said before anything is sent.
    let config = config_in(d, &hub.ws_url(), json!({}));
    let c = config.to_str().unwrap();
    let out = run(d, &["submit", "--config", c, "--metadata", "[1]", "x"]);
    assert!(text(&out.stderr).contains("--metadata: must be a JSON object"));
    let out = run(d, &["submit", "--config", c, "--push", "x"]);
    assert!(text(&out.stderr).contains("--push: needs --to"));
    assert_eq!(
        run(d, &["submit", "--token-file", c, "x"]).status.code(),
        Some(1)
    );
}

#[test]
fn an_untrusted_hub_certificate_is_a_tls_failure_until_its_ca_is_given() {
    let certs = tempfile::tempdir().unwrap();
    let (hub, ca) = tls_hub(certs.path());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = config_in(d, &hub.ws_url(), json!({}));
    let c = config.to_str().unwrap();
    for command in [&["submit", "over tls"][..], &["unregister"][..]] {
        let mut args = command.to_vec();
        args.extend(["--config", c]);
        let out = run(d, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("TLS") && stderr.contains("--ca-file"),
            "{command:?}: {stderr}"
        );
    }
    let out = run(
        d,
        &[
            "submit",
            "--config",
            c,
            "--ca-file",
            ca.to_str().unwrap(),
            "over tls",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The config's own ca_file is used too.
    let config = config_in(d, &hub.ws_url(), json!({"ca_file": ca}));
    let out = run(d, &["unregister", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn unregister_revokes_the_token_and_says_what_to_remove() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = config_in(d, &hub.ws_url(), json!({}));
    let c = config.to_str().unwrap();
    let out = run(d, &["unregister", "--config", c]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("revoked the token of agent \"agent-1\""),
        "{stdout}"
    );
    for what in [
        c.to_string(),
        "agentcom-sidecar@agent-1".into(),
        "pm2 delete agentcom-agent-1".into(),
        d.join("queue.json").display().to_string(),
        d.join("results").display().to_string(),
    ] {
        assert!(stdout.contains(&what), "{what}: {stdout}");
    }
    assert!(!stdout.contains(TOKEN));
    // The token is gone: the hub refuses it now, and the sidecar cannot identify.
    let out = run(d, &["submit", "--config", c, "x"]);
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let out = run(d, &["unregister", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401"));
}

#[test]
fn register_with_a_test_task_sees_it_completed_by_the_new_agents_sidecar() {
    let hub = DevHub::start(DevHubOptions {
        tokens: Some(Default::default()),
        ..DevHubOptions::default()
    })
    .expect("dev hub starts");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let register = Command::new(bin())
        .args([
            "register",
            "--hub",
            &hub.http_url(),
            "--agent-id",
            "fresh",
            "--config",
            config.to_str().unwrap(),
            "--test-task",
            "--test-timeout",
            "60",
        ])
        .env_remove("SIDECAR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the config written", || config.exists());
    // The operator starts the sidecar while register waits.
    let args = ["--config", config.to_str().unwrap()];
    let sidecar = Sidecar::start_in(dir, &args);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut register = register;
    while register.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "register still waits\n{}",
            sidecar.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = register.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        sidecar.dump()
    );
    for step in [
        "Test task: 1/3",
        "Test task: 2/3 submitted",
        "Test task: 3/3 completed",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    assert!(
        stdout.contains("systemctl enable --now agentcom-sidecar@fresh"),
        "{stdout}"
    );
    assert!(stdout.contains("--push"), "{stdout}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert!(!stdout.contains(written["token"].as_str().unwrap()));
}
