//! `token_file`: the token in a file of its own (relative to the config, or a systemd
//! credential in `$CREDENTIALS_DIRECTORY`), in the real binary against the dev hub; exactly
//! one of `token` and `token_file`; a clear message for every unusable file; the token never
//! shown.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

/// `fast_config` with `token_file` in place of `token`.
fn file_config(hub_url: &str, token_file: &str) -> Value {
    let mut config = with(fast_config(hub_url), json!({"token_file": token_file}));
    config.as_object_mut().unwrap().remove("token");
    config
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    set_mode(path, 0o600);
}

/// `check-config` on `config` written into `dir`, with extra environment variables.
fn check_config(dir: &Path, config: &Value, env: &[(&str, &Path)]) -> Output {
    let path = dir.join("config.json");
    write_config(&path, config);
    let mut cmd = Command::new(bin());
    cmd.args(["check-config", "--config", path.to_str().unwrap()])
        .current_dir(dir)
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

#[test]
fn the_token_is_read_from_a_file_beside_the_config_and_never_shown() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("agent.token"), &format!("{TOKEN}\n"));
    let config = file_config(&hub.ws_url(), "agent.token");
    write_config(&dir.path().join("config.json"), &config);
    let mut sidecar = Sidecar::start_in(dir, &["--config", "config.json"]);

    // The hub accepted the token (with its trailing newline gone).
    wait_identified(&hub, 1);
    let startup = sidecar.wait_event("startup");
    let shown = startup["config"]["token_file"].as_str().unwrap();
    assert!(shown.ends_with("/agent.token"), "{startup}");
    assert_eq!(startup["config"]["token"], "<redacted>");
    assert!(
        sidecar.events("config_warning").is_empty(),
        "{}",
        sidecar.dump()
    );

    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let log = std::fs::read_to_string(&sidecar.log_path).unwrap();
    for out in [log, sidecar.stdout(), sidecar.stderr()] {
        assert!(!out.contains(TOKEN), "token shown:\n{out}");
    }
}

#[test]
fn a_bare_name_is_taken_from_the_credentials_directory_first() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    // The same name beside the config holds a wrong token: the credential must win.
    write_private(&dir.path().join("agent.token"), "wrong-token\n");
    write_private(&creds.path().join("agent.token"), TOKEN);
    let config = file_config(&hub.ws_url(), "agent.token");
    write_config(&dir.path().join("config.json"), &config);
    let mut sidecar = Sidecar::start_with_env(
        dir,
        &["--config", "config.json"],
        &[(
            "CREDENTIALS_DIRECTORY",
            creds.path().to_str().unwrap().to_string(),
        )],
    );
    wait_identified(&hub, 1);
    let startup = sidecar.wait_event("startup");
    assert_eq!(
        startup["config"]["token_file"].as_str().map(Path::new),
        Some(creds.path().join("agent.token").as_path()),
        "{startup}"
    );
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));

    // check-config under the same environment shows the same file, and not the token.
    let out = check_config(
        tempfile::tempdir().unwrap().path(),
        &file_config("ws://127.0.0.1:9/ws", "agent.token"),
        &[("CREDENTIALS_DIRECTORY", creds.path())],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&creds.path().join("agent.token").display().to_string()));
    assert!(!stdout.contains(TOKEN) && !text(&out.stderr).contains(TOKEN));
}

#[test]
fn both_token_and_token_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("agent.token"), TOKEN);
    let config = with(
        fast_config("ws://127.0.0.1:9/ws"),
        json!({"token_file": "agent.token"}),
    );
    let out = check_config(dir.path(), &config, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"token_file\"") && stderr.contains("both token and token_file"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN));

    // Neither: the message names both ways.
    let mut neither = fast_config("ws://127.0.0.1:9/ws");
    neither.as_object_mut().unwrap().remove("token");
    let stderr = text(&check_config(dir.path(), &neither, &[]).stderr);
    assert!(
        stderr.contains("\"token\" is missing") && stderr.contains("token_file"),
        "{stderr}"
    );

    // The running sidecar refuses the same config before it starts anything.
    let out = Command::new(bin())
        .args(["--config", dir.path().join("config.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unusable_token_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = "ws://127.0.0.1:9/ws";
    let cases: [(&str, Option<&[u8]>, &str); 4] = [
        ("missing.token", None, "cannot be read"),
        ("empty.token", Some(b""), "is empty"),
        ("blank.token", Some(b"\n"), "is empty"),
        (
            "two-lines.token",
            Some(b"abc\ndef\n"),
            "more than the token",
        ),
    ];
    for (name, content, why) in cases {
        if let Some(bytes) = content {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            set_mode(&dir.path().join(name), 0o600);
        }
        let out = check_config(dir.path(), &file_config(url, name), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("key \"token_file\"") && stderr.contains(name) && stderr.contains(why),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("def"), "{stderr}");
    }
    let out = check_config(dir.path(), &file_config(url, ""), &[]);
    assert!(text(&out.stderr).contains("\"token_file\" must be a non-empty path"));

    // A FIFO nobody writes to, a directory and a file that is too large: each named, none
    // read (the FIFO would hang a plain open).
    let fifo = dir.path().join("fifo.token");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(dir.path().join("dir.token")).unwrap();
    std::fs::write(dir.path().join("big.token"), vec![b'x'; 64 * 1024 + 1]).unwrap();
    set_mode(&dir.path().join("big.token"), 0o600);
    for (name, why) in [
        ("fifo.token", "not a regular file"),
        ("dir.token", "is a directory"),
        ("big.token", "is larger than"),
    ] {
        let out = check_config(dir.path(), &file_config(url, name), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(why),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_token_file_readable_by_others_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.token");
    std::fs::write(&path, TOKEN).unwrap();
    set_mode(&path, 0o644);
    let out = check_config(
        dir.path(),
        &file_config("ws://127.0.0.1:9/ws", "agent.token"),
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: token_file")
            && stderr.contains("mode 644")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn status_needs_only_the_state_file_not_the_token() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    write_private(&token, TOKEN);
    write_config(
        &dir.path().join("config.json"),
        &file_config(&hub.ws_url(), "agent.token"),
    );
    let mut sidecar = Sidecar::start_in(dir, &["--config", "config.json"]);
    wait_identified(&hub, 1);
    // The operator asking may not be able to read the token (a file only the service's user
    // or root can read): here it is gone altogether.
    std::fs::remove_file(&token).unwrap();
    let status = || {
        Command::new(bin())
            .args(["status", "--config", "config.json"])
            .current_dir(sidecar.dir.path())
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("binary runs")
    };
    eventually("status to show the identified session", || {
        let out = status();
        out.status.code() == Some(0) && text(&out.stdout).contains("identified to ws://")
    });
    let out = status();
    assert!(!text(&out.stdout).contains(TOKEN) && !text(&out.stderr).contains(TOKEN));
    // check-config, which validates everything, still names the missing file.
    let out = Command::new(bin())
        .args(["check-config", "--config", "config.json"])
        .current_dir(sidecar.dir.path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("token_file"),
        "{}",
        text(&out.stderr)
    );
    sidecar.signal(SIGTERM);
    assert_eq!(sidecar.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_config_readable_by_others_is_not_said_to_hold_a_token_it_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("agent.token"), TOKEN);
    let path = dir.path().join("config.json");
    write_config(&path, &file_config("ws://127.0.0.1:9/ws", "agent.token"));
    set_mode(&path, 0o644);
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("binary runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("config file") && l.contains("mode 644"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(!warning.contains("holds the token"), "{warning}");
    assert!(
        warning.contains("token is in token_file") && warning.contains("chmod 600"),
        "{warning}"
    );
}
