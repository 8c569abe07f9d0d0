//! Every config the Node.js sidecar shipped or wrote (tests/fixtures/node-configs: both
//! versions' example file and onboarding script, and Node-only values by hand) passes
//! `check-config` with a specific warning for each Node-only key, and starts: the sidecar
//! identifies at the dev hub. Only `hub_url` is changed, to point at the dev hub (an
//! `http://` one stays an `http://` address); `openclaw`, the wake command's program, is a
//! stand-in on `PATH`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{DevHub, DevHubOptions, HubEventKind};
use common::*;
use serde_json::Value;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "fixtures: {files:?}");
    files
}

/// A directory with an executable `openclaw` that does nothing, for `PATH`.
fn stand_in_openclaw(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let program = bin.join("openclaw");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    set_mode(&program, 0o755);
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn identified_as(hub: &DevHub, agent_id: &str) -> usize {
    hub.events()
        .iter()
        .filter(|e| matches!(&e.kind, HubEventKind::Identified { agent_id: a } if a == agent_id))
        .count()
}

#[test]
fn every_node_config_passes_check_config_and_starts() {
    // An open dev hub: the fixtures' own tokens are let in.
    let hub = DevHub::start(DevHubOptions::default()).expect("dev hub starts");
    for fixture in fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let written = config["hub_url"].as_str().unwrap().to_string();
        config["hub_url"] = if written.starts_with("http") {
            hub.http_url().into()
        } else {
            hub.ws_url().into()
        };
        let agent_id = config["agent_id"].as_str().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_config(&path, &config);
        let path_var = stand_in_openclaw(dir.path());

        let out = Command::new(bin())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env("PATH", &path_var)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{name}: check-config failed:\n{stdout}\n{stderr}"
        );
        assert!(
            !stderr.contains("unknown key"),
            "{name}: a Node key counted as unknown:\n{stderr}"
        );
        for (key, _) in agentcom_sidecar::config::NODE_KEYS {
            if config.get(*key).is_some() {
                assert!(
                    stderr.contains(&format!("key \"{key}\"")) && stderr.contains("is ignored:"),
                    "{name}: no warning for \"{key}\":\n{stderr}"
                );
            }
        }
        if written.starts_with("http") {
            assert!(stderr.contains("is an HTTP address"), "{name}:\n{stderr}");
        }
        let effective: Value = {
            // The effective config is the JSON object before the routing table.
            let end = stdout.find("\nrouting").expect("routing table");
            serde_json::from_str(&stdout[..end]).unwrap()
        };
        assert_eq!(effective["confirmation_timeout_ms"], 30000, "{name}");
        let expect_level = match config["log_level"].as_str() {
            Some("warning" | "notice") => "warn",
            _ => "info",
        };
        assert_eq!(effective["log_level"], expect_level, "{name}");
        assert!(
            effective["results_dir"]
                .as_str()
                .unwrap()
                .ends_with("/results"),
            "{name}"
        );

        let before = identified_as(&hub, &agent_id);
        let sidecar = Sidecar::start_with_env(
            dir,
            &["--config", path.to_str().unwrap()],
            &[("PATH", path_var)],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while identified_as(&hub, &agent_id) == before {
            assert!(
                Instant::now() < deadline,
                "{name}: not identified\n{}",
                sidecar.dump()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(sidecar);
    }
}
