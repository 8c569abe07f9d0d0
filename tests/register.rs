//! `agentcom-sidecar register` against the dev hub: a new agent gets a complete config
//! (mode 600) with which the sidecar identifies and reports; an id taken (409), a hub that
//! is down, an untrusted TLS certificate and an existing config are each one clear message,
//! exit code 1 and nothing written.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

fn register(cwd: &Path, args: &[&str]) -> Output {
    let mut all = vec!["register"];
    all.extend_from_slice(args);
    run_in(cwd, &all)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn registered(hub: &DevHub) -> Vec<String> {
    hub.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            HubEventKind::AgentRegistered { agent_id } => Some(agent_id),
            _ => None,
        })
        .collect()
}

/// A dev hub that accepts only the tokens it hands out (none to begin with).
fn empty_hub() -> DevHub {
    DevHub::start(DevHubOptions {
        tokens: Some(Default::default()),
        ..DevHubOptions::default()
    })
    .expect("dev hub starts")
}

#[test]
fn a_registered_agent_gets_a_private_config_and_its_sidecar_identifies_and_reports() {
    let hub = empty_hub();
    let dir = tempfile::tempdir().unwrap();
    let out = register(
        dir.path(),
        &["--hub", &hub.http_url(), "--agent-id", "new-agent"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(registered(&hub), ["new-agent"]);

    // ./config.json by default, owner-only, complete, with the hub's socket URL.
    let path = dir.path().join("config.json");
    assert_eq!(mode(&path), 0o600);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(config["agent_id"], "new-agent");
    assert_eq!(config["hub_url"], hub.ws_url());
    assert_eq!(config["heartbeat_interval_ms"], 30000);
    let token = config["token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    assert!(
        !stdout.contains(&token) && !stderr.contains(&token),
        "{stdout}"
    );

    // The next steps name check-config, the start and a test task.
    for step in [
        "check-config --config",
        "agentcom-sidecar --config",
        "agentcom-sidecar submit --config",
        "running-a-fleet.md",
    ] {
        assert!(stdout.contains(step), "{step} missing from:\n{stdout}");
    }

    // The written config passes check-config as it is.
    let check = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    // Notes only (the state directories it will create), no warning.
    let stderr = text(&check.stderr);
    assert!(stderr.lines().all(|l| l.starts_with("note: ")), "{stderr}");

    // The second command: start. Timings shortened only so the test sees a report soon.
    let mut config = config;
    config["resource_report_interval_ms"] = json!(100);
    write_config(&path, &config);
    let mut sidecar = Sidecar::start_in(dir, &["--config", "config.json"]);
    sidecar.wait_event("identified");
    let report = wait_frames(&hub, "resource_report", 1).remove(0);
    assert!(report["ram_total_bytes"].is_number(), "{report}");
    assert_eq!(hub.violations("new-agent"), 0);
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn with_token_file_the_token_goes_to_its_own_file() {
    let hub = empty_hub();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = register(
        dir.path(),
        &[
            "--hub",
            &hub.ws_url(),
            "--agent-id",
            "a7",
            "--config",
            "etc/a7.json",
            "--token-file",
            "--state-dir",
            state.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:9465",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config_path = dir.path().join("etc/a7.json");
    let token_path = dir.path().join("etc/a7.token");
    assert_eq!(mode(&config_path), 0o600);
    assert_eq!(mode(&token_path), 0o600);
    // The directory it made for them is private too.
    assert_eq!(mode(&dir.path().join("etc")), 0o700);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert!(config.get("token").is_none(), "{config}");
    assert_eq!(config["token_file"], "a7.token");
    assert_eq!(config["hub_url"], hub.ws_url());
    assert_eq!(config["metrics_listen"], "127.0.0.1:9465");
    assert_eq!(
        config["queue_file"].as_str().map(Path::new),
        Some(state.join("queue.json").as_path())
    );
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert!(token.ends_with('\n') && token.trim().len() > 8);
    assert!(!text(&out.stdout).contains(token.trim()));
    // The test task goes through `submit`, which reads the token where the config says.
    assert!(text(&out.stdout).contains("agentcom-sidecar submit --config "));

    // The sidecar identifies with it.
    let mut config = config;
    config["metrics_listen"] = Value::Null;
    write_config(&config_path, &config);
    let mut sidecar = Sidecar::start_in(dir, &["--config", "etc/a7.json"]);
    sidecar.log_path = state.join("sidecar.log");
    sidecar.wait_event("identified");
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn an_id_already_registered_is_refused_with_409_and_nothing_is_written() {
    let hub = empty_hub();
    let dir = tempfile::tempdir().unwrap();
    let first = register(dir.path(), &["--hub", &hub.http_url(), "--agent-id", "dup"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let before = std::fs::read(dir.path().join("config.json")).unwrap();

    let out = register(
        dir.path(),
        &[
            "--hub",
            &hub.http_url(),
            "--agent-id",
            "dup",
            "--config",
            "other.json",
            "--token-file",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"dup\" is already registered") && stderr.contains("409"),
        "{stderr}"
    );
    assert!(!dir.path().join("other.json").exists());
    assert!(!dir.path().join("other.token").exists());
    assert_eq!(
        std::fs::read(dir.path().join("config.json")).unwrap(),
        before
    );
}

#[test]
fn a_hub_that_is_down_is_named_and_nothing_is_written() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let hub = format!("http://127.0.0.1:{port}");
    let out = register(dir.path(), &["--hub", &hub, "--agent-id", "a1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the hub at {hub}"))
            && stderr.contains("connection refused"),
        "{stderr}"
    );
    assert!(!dir.path().join("config.json").exists());

    // Not a hub address at all: said before anything is tried.
    let out = register(dir.path(), &["--hub", "hub-host:4000", "--agent-id", "a1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--hub hub-host:4000"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_existing_config_is_kept_unless_forced() {
    let hub = empty_hub();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{\"keep\": true}\n").unwrap();

    let out = register(dir.path(), &["--hub", &hub.http_url(), "--agent-id", "a1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"keep\": true}\n"
    );
    // The hub was not asked: the id is still free.
    assert!(registered(&hub).is_empty());

    let out = register(
        dir.path(),
        &["--hub", &hub.http_url(), "--agent-id", "a1", "--force"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(config["agent_id"], "a1");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn an_untrusted_tls_certificate_says_to_pass_ca_file() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let certs = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let c = certs.path();
    std::fs::write(c.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(c.join("hub.pem"), cert.pem()).unwrap();
    std::fs::write(c.join("hub.key"), key.serialize_pem()).unwrap();
    let hub = DevHub::start(DevHubOptions {
        tokens: Some(Default::default()),
        tls: Some((c.join("hub.pem"), c.join("hub.key"))),
        ..DevHubOptions::default()
    })
    .unwrap();
    assert!(hub.http_url().starts_with("https://"));

    let dir = tempfile::tempdir().unwrap();
    let out = register(dir.path(), &["--hub", &hub.http_url(), "--agent-id", "a1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TLS") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    assert!(!dir.path().join("config.json").exists());

    let ca_file = c.join("ca.pem");
    let out = register(
        dir.path(),
        &[
            "--hub",
            &hub.http_url(),
            "--agent-id",
            "a1",
            "--ca-file",
            ca_file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["hub_url"], hub.ws_url());
    assert_eq!(
        config["ca_file"].as_str().map(Path::new),
        Some(ca_file.as_path())
    );
}
