//! Running many agents on one machine, and the static build: the systemd template unit
//! passes `systemd-analyze verify` and keeps the single unit's settings; the pm2 example
//! starts one sidecar per agent; the `x86_64-unknown-linux-musl` build is static and starts.
//! Each test that needs a tool the machine lacks says so and passes without it.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MUSL: &str = "x86_64-unknown-linux-musl";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `systemd-analyze verify` on one instance of a unit file, with the installed binary's path
/// replaced by the built one (verify checks that ExecStart's program exists). Returns the
/// exit code and everything it printed.
fn verify(unit: &str, instance: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("config").join(unit))
        .unwrap()
        .replace("/usr/local/bin/agentcom-sidecar", &bin());
    std::fs::write(dir.path().join(unit), text).unwrap();
    let target = match instance {
        Some(id) => {
            let name = unit.replace("@.", &format!("@{id}."));
            std::os::unix::fs::symlink(unit, dir.path().join(&name)).unwrap();
            name
        }
        None => unit.to_string(),
    };
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", &format!("./{target}")])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_template_unit_passes_systemd_analyze_verify() {
    if !found("systemd-analyze") {
        return skip(
            "the_template_unit_passes_systemd_analyze_verify",
            "systemd-analyze is not installed (Debian package systemd)",
        );
    }
    // verify exits 0 on a setting it ignores, but prints why: nothing may be printed.
    let (code, out) = verify("agentcom-sidecar@.service", Some("agent-7"));
    assert_eq!((code, out.as_str()), (Some(0), ""), "{out}");
    let (code, out) = verify("agentcom-sidecar.service", None);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{out}");
}

/// `key=value` settings of one section of a unit file, comments left out.
fn settings(path: &Path, section: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_string();
        } else if current == section && !line.starts_with('#') && !line.is_empty() {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_template_unit_keeps_every_setting_of_the_single_unit() {
    let single = repo().join("config/agentcom-sidecar.service");
    let template = repo().join("config/agentcom-sidecar@.service");
    // Per instance by design: the config and state paths and the journal tag.
    let per_instance = [
        "ExecStartPre",
        "ExecStart",
        "StateDirectory",
        "WorkingDirectory",
        "SyslogIdentifier",
    ];
    for section in ["[Unit]", "[Service]", "[Install]"] {
        let theirs = settings(&template, section);
        for (key, value) in settings(&single, section) {
            if per_instance.contains(&key.as_str()) || key == "Description" {
                continue;
            }
            assert!(
                theirs.contains(&(key.clone(), value.clone())),
                "{section} {key}={value} of the single unit is missing from the template"
            );
        }
    }
    let service = settings(&template, "[Service]");
    let get = |k: &str| {
        service
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        get("ExecStart"),
        Some("/usr/local/bin/agentcom-sidecar --config /etc/agentcom-sidecar/%i.json")
    );
    assert_eq!(get("StateDirectory"), Some("agentcom-sidecar/%i"));
    assert_eq!(
        get("WorkingDirectory"),
        Some("/var/lib/agentcom-sidecar/%i")
    );
    assert_eq!(
        get("LoadCredential"),
        Some("%i.token:/etc/agentcom-sidecar/%i.token")
    );
}

#[test]
fn the_pm2_example_runs_one_sidecar_per_agent() {
    if !found("node") {
        return skip(
            "the_pm2_example_runs_one_sidecar_per_agent",
            "node is not installed",
        );
    }
    let file = repo().join("config/ecosystem.config.js");
    let out = Command::new("node")
        .args([
            "-e",
            "process.stdout.write(JSON.stringify(require(process.argv[1])))",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let apps = v["apps"].as_array().expect("apps");
    assert!(apps.len() >= 2, "{v}");
    let mut configs = Vec::new();
    for app in apps {
        assert_eq!(app["script"], "/usr/local/bin/agentcom-sidecar", "{app}");
        assert_eq!(app["treekill"], false, "{app}");
        assert!(app["kill_timeout"].as_u64().unwrap() >= 10_000, "{app}");
        let args = app["args"].as_array().unwrap();
        assert_eq!(args[0], "--config", "{app}");
        configs.push(args[1].as_str().unwrap().to_string());
        assert!(app["name"]
            .as_str()
            .unwrap()
            .starts_with("agentcom-sidecar-"));
    }
    configs.dedup();
    assert_eq!(
        configs.len(),
        apps.len(),
        "one config per agent: {configs:?}"
    );
}

#[test]
fn the_static_musl_binary_builds_and_starts() {
    let test = "the_static_musl_binary_builds_and_starts";
    let Some(libdir) = rustc_target_libdir(MUSL) else {
        return skip(
            test,
            &format!("the {MUSL} target is not installed (rustup target add {MUSL})"),
        );
    };
    let has_std = std::fs::read_dir(&libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    });
    if !has_std {
        return skip(
            test,
            &format!("the {MUSL} target is not installed (rustup target add {MUSL})"),
        );
    }
    if !found("x86_64-linux-musl-gcc") && !found("musl-gcc") {
        return skip(
            test,
            "no musl C compiler for ring's C code (Debian package musl-tools)",
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--bin",
            "agentcom-sidecar",
            "--target",
            MUSL,
        ])
        .current_dir(repo())
        // No debug info: the test needs a binary that runs, not one to debug (and it
        // halves the build's disk and link time).
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "musl build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let binary = target_dir.join(MUSL).join("debug").join("agentcom-sidecar");

    // Static: no program interpreter, no shared libraries (ELF program header PT_INTERP
    // absent and no DT_NEEDED), checked on the file itself rather than with ldd.
    let elf = std::fs::read(&binary).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert!(
        !has_interpreter(&elf),
        "{} asks for a dynamic loader",
        binary.display()
    );

    let out = Command::new(&binary).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("agentcom-sidecar {}", env!("CARGO_PKG_VERSION"))
    );
}

fn rustc_target_libdir(target: &str) -> Option<PathBuf> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|p| p.is_dir())
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header (a dynamic
/// loader): a static binary has none.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3)
}

#[test]
fn the_kubernetes_example_config_is_valid_and_serves_the_probes() {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes.yaml")).unwrap();
    // The ConfigMap's config.json: the block indented under `config.json: |`.
    let json: String = yaml
        .lines()
        .skip_while(|l| l.trim() != "config.json: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "t0k\n").unwrap();
    let json = json.replace(
        "/etc/agentcom-sidecar/secret/token",
        token.path().to_str().unwrap(),
    );
    let config = agentcom_sidecar::config::Config::from_json(
        &json,
        Path::new("/etc/agentcom-sidecar/config.json"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert!(config.wake_command.is_none(), "the image has no shell");
    assert_eq!(config.token.expose(), "t0k");
    let port = config
        .metrics_listen
        .expect("probes need the endpoint")
        .port();
    for probe in [
        "path: /healthz, port: health",
        "path: /readyz, port: health",
    ] {
        assert!(yaml.contains(probe), "{probe}");
    }
    assert!(yaml.contains(&format!("containerPort: {port}")));
    assert!(yaml.contains("restartPolicy: Always"));
    // The Dockerfile copies the binary the static build test builds (in release).
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("COPY target/{MUSL}/release/agentcom-sidecar ")));
    assert!(dockerfile.contains("FROM scratch"));
}
