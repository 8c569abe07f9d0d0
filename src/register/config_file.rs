//! The config `register` writes: every key the sidecar knows, grouped as in
//! `config/config.json.example`, at its default unless an option set it, with the token
//! inline or named by `token_file`. Text only: the caller writes it.

use std::path::Path;

use serde_json::{json, Value};

use super::hub::HubAddress;
use super::Options;
use crate::config::Secret;

/// Where the token goes in the written config.
pub enum TokenPlace<'a> {
    Inline(&'a Secret),
    /// The `token_file` value (see [`token_file_value`]).
    File(&'a str),
}

/// The `token_file` value for a token written at `token_path`, for a config at
/// `config_path`: the bare file name when both share a directory (so that the value is also
/// the name of a systemd credential, see `crate::token_file::locate`), else the absolute
/// path.
pub fn token_file_value(config_path: &Path, token_path: &Path) -> String {
    let same_dir = config_path.parent() == token_path.parent();
    match token_path.file_name() {
        Some(name) if same_dir => name.to_string_lossy().into_owned(),
        _ => token_path.display().to_string(),
    }
}

/// The complete config: every key the sidecar knows, grouped as in
/// `config/config.json.example`, at its default unless `options` set it.
pub fn config_text(options: &Options, hub: &HubAddress, token: TokenPlace<'_>) -> String {
    let state = |name: &str| match &options.state_dir {
        Some(dir) => Value::from(dir.join(name).display().to_string()),
        None => Value::from(format!("./{name}")),
    };
    let token = match token {
        TokenPlace::Inline(secret) => ("token", Value::from(secret.expose())),
        TokenPlace::File(name) => ("token_file", Value::from(name)),
    };
    let groups: Vec<Vec<(&str, Value)>> = vec![
        vec![
            ("agent_id", json!(options.agent_id)),
            token,
            ("hub_url", json!(hub.ws)),
            ("name", json!(options.agent_id)),
            ("capabilities", json!([])),
        ],
        vec![
            ("wake_command", Value::Null),
            ("wake_commands", json!({})),
            ("ollama_url", Value::Null),
            ("allow_hub_commands", json!(false)),
            ("agent_starts_itself", json!(false)),
            ("claude_command", json!("claude")),
            ("confirmation_timeout_ms", json!(30000)),
            ("wake_retry_delays_ms", json!([5000, 15000, 30000])),
            ("wake_timeout_ms", json!(60000)),
            ("results_dir", state("results")),
            ("queue_file", state("queue.json")),
            ("max_result_bytes", json!(16777216)),
            ("result_settle_ms", json!(1000)),
            ("progress_interval_ms", json!(60000)),
            ("agent_progress_min_ms", json!(1000)),
            ("task_timeout_ms", json!(86400000)),
        ],
        vec![
            ("log_file", state("sidecar.log")),
            ("log_level", json!("info")),
            ("log_max_bytes", json!(10485760)),
            ("log_keep", json!(5)),
            ("status_file", state("status.json")),
            (
                "metrics_listen",
                json!(options.metrics_listen.map(|a| a.to_string())),
            ),
            ("metrics_public", json!(false)),
            ("resource_report_interval_ms", json!(30000)),
        ],
        vec![
            ("heartbeat_interval_ms", json!(30000)),
            ("heartbeat_timeout_ms", json!(10000)),
            ("reconnect_initial_ms", json!(1000)),
            ("reconnect_max_ms", json!(60000)),
            ("connect_timeout_ms", json!(20000)),
            ("max_frame_bytes", json!(16777216)),
            ("stale_session_reidentify_ms", json!(65000)),
            ("reconcile_interval_ms", json!(30000)),
            (
                "ca_file",
                json!(options.ca_file.as_ref().map(|p| p.display().to_string())),
            ),
        ],
        vec![
            ("restart_max", json!(5)),
            ("restart_window_ms", json!(30000)),
            ("restart_delay_ms", json!(100)),
            ("shutdown_timeout_ms", json!(5000)),
            ("restart_wait_ms", json!(300000)),
            (
                "hub_rate_limits",
                json!({"light": 120, "normal": 60, "heavy": 10}),
            ),
        ],
        vec![
            ("room_wake_command", Value::Null),
            ("room_wake_min_interval_ms", json!(1000)),
            ("room_wake_burst", json!(3)),
            ("room_wake_timeout_ms", json!(60000)),
            ("room_message_types", Value::Null),
            ("room_mention_only", json!(false)),
        ],
    ];
    let blocks: Vec<String> = groups
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|(k, v)| format!("  {}: {v}", Value::from(*k)))
                .collect::<Vec<_>>()
                .join(",\n")
        })
        .collect();
    format!("{{\n{}\n}}\n", blocks.join(",\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::register::tests::options;

    #[test]
    fn the_written_config_loads_with_the_defaults_of_a_minimal_one() {
        let hub = HubAddress::parse("http://127.0.0.1:4000").unwrap();
        let secret = Secret::new("s3cret");
        let path = Path::new("/etc/agentcom-sidecar/a1.json");
        let text = config_text(&options(None), &hub, TokenPlace::Inline(&secret));
        let written = Config::from_json(&text, path).unwrap();
        assert!(written.warnings.is_empty(), "{:?}", written.warnings);
        let minimal = Config::from_json(
            r#"{"agent_id":"a1","token":"s3cret","hub_url":"ws://127.0.0.1:4000/ws"}"#,
            path,
        )
        .unwrap();
        assert_eq!(written.effective(), minimal.effective());
        assert_eq!(written.token.expose(), "s3cret");
        // Every key the sidecar knows is there.
        let keys: Value = serde_json::from_str(&text).unwrap();
        for key in crate::config::KNOWN_KEYS {
            if *key != "token_file" {
                assert!(keys.get(*key).is_some(), "{key} missing from\n{text}");
            }
        }
    }

    #[test]
    fn state_dir_metrics_and_token_file_are_written_as_asked() {
        let hub = HubAddress::parse("https://hub:4000").unwrap();
        let mut o = options(Some("/var/lib/agentcom-sidecar/a1"));
        o.metrics_listen = Some("127.0.0.1:9465".parse().unwrap());
        let text = config_text(&o, &hub, TokenPlace::File("a1.token"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["token_file"], "a1.token");
        assert!(v.get("token").is_none());
        assert_eq!(v["hub_url"], "wss://hub:4000/ws");
        assert_eq!(v["queue_file"], "/var/lib/agentcom-sidecar/a1/queue.json");
        assert_eq!(v["log_file"], "/var/lib/agentcom-sidecar/a1/sidecar.log");
        assert_eq!(v["metrics_listen"], "127.0.0.1:9465");
    }

    #[test]
    fn the_token_file_value_is_a_bare_name_beside_the_config() {
        let config = Path::new("/etc/agentcom-sidecar/a1.json");
        assert_eq!(
            token_file_value(config, Path::new("/etc/agentcom-sidecar/a1.token")),
            "a1.token"
        );
        assert_eq!(
            token_file_value(config, Path::new("/root/secrets/a1.token")),
            "/root/secrets/a1.token"
        );
    }
}
