//! Property tests of the parsers that read outside input: hub frames, the config file and
//! the agent's result files. Whatever the input, each answers (a value or a precise error)
//! and never panics; the config never echoes the token; a task frame keeps what it was sent.
//!
//! 2000 cases per property by default; `PROPTEST_CASES=100000 cargo test --test parsers`
//! runs more. The fuzz targets in `fuzz/` explore the same parsers with coverage guidance.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use agentcom_sidecar::config::{Config, ConfigError, KNOWN_KEYS};
use agentcom_sidecar::protocol::{Incoming, TaskIdField};
use agentcom_sidecar::result_file;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

/// Any string of up to `max` characters from all of Unicode (cheaper than a regex).
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect())
}

/// Any JSON value, nested a few levels, with strings from all of Unicode.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Quarters are exact in binary, so they survive a round trip through text.
        (-4000i32..4000).prop_map(|n| json!(f64::from(n) / 4.0)),
        text(24).prop_map(Value::from),
        text(100).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(text(6), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FRAME_TYPES: &[&str] = &[
    "identified",
    "error",
    "pong",
    "rate_limited",
    "restart_sidecar",
    "task_assign",
    "task_ack",
    "task_reassign",
    "task_continue",
    "task_cancelled",
    "room_message",
];

const FRAME_FIELDS: &[&str] = &[
    "task_id",
    "generation",
    "error",
    "timestamp",
    "retry_after_ms",
    "reason",
    "description",
    "metadata",
    "status",
];

/// A frame-shaped object: a known (or any) `type` and known fields with any values.
fn frame_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            prop::sample::select(FRAME_TYPES).prop_map(Value::from),
            any_json()
        ],
        prop::collection::vec((prop::sample::select(FRAME_FIELDS), any_json()), 0..6),
    )
        .prop_map(|(kind, fields)| {
            let mut map = Map::new();
            map.insert("type".into(), kind);
            for (k, v) in fields {
                map.insert(k.to_string(), v);
            }
            Value::Object(map)
        })
}

/// A config-shaped object: the required keys (token distinctive) plus known keys with any
/// values.
fn config_like() -> impl Strategy<Value = (Value, String)> {
    (
        prop::collection::vec(
            prop::sample::select(
                &b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[..],
            ),
            12..24,
        )
        .prop_map(|b| String::from_utf8(b).unwrap_or_default()),
        prop::collection::vec((prop::sample::select(KNOWN_KEYS), any_json()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(secret, fields, keep_required)| {
            let token = format!("tok-{secret}");
            let mut map = Map::new();
            if keep_required {
                map.insert("agent_id".into(), json!("a1"));
                map.insert("hub_url".into(), json!("ws://127.0.0.1:9/ws"));
            }
            for (k, v) in fields {
                map.insert(k.to_string(), v);
            }
            // The token is set last, as a string, so it is always the distinctive secret.
            map.insert("token".into(), json!(token));
            (Value::Object(map), token)
        })
}

const CONFIG_PATH: &str = "/nonexistent/prop/config.json";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_text_as_a_hub_frame_is_parsed_or_refused(text in any::<String>()) {
        let _ = Incoming::parse(&text);
    }

    #[test]
    fn any_frame_shaped_object_is_parsed_or_refused(frame in frame_like()) {
        let text = frame.to_string();
        let parsed = Incoming::parse(&text);
        let kind = frame["type"].as_str();
        let task_id_ok = frame["task_id"].is_string();
        let generation_ok = frame["generation"].is_null() || frame["generation"].as_u64().is_some();
        match (kind, parsed) {
            (Some("task_assign"), Ok(Incoming::TaskAssign(task))) => {
                // The raw text is kept as sent.
                prop_assert_eq!(&task.raw, &text);
                match (&frame["task_id"], &task.task_id) {
                    (Value::Null, None) => {}
                    (Value::String(s), Some(TaskIdField::Str(t))) => prop_assert_eq!(s, t),
                    (other, Some(TaskIdField::NotAString(t))) => {
                        prop_assert_eq!(&other.to_string(), t)
                    }
                    (sent, got) => prop_assert!(false, "task_id {sent} parsed as {got:?}"),
                }
                prop_assert_eq!(task.generation, frame["generation"].as_u64().unwrap_or(0));
            }
            // Refused only for a generation that is not a whole number.
            (Some("task_assign"), Err(_)) => prop_assert!(!generation_ok),
            (Some("task_ack" | "task_reassign" | "task_cancelled" | "state_report_ack"), Ok(f)) => {
                prop_assert!(task_id_ok, "{f:?} without a string task_id");
            }
            (Some("task_ack" | "task_reassign" | "task_cancelled" | "state_report_ack"), Err(_)) => {
                prop_assert!(!task_id_ok);
            }
            (Some("task_continue"), Ok(Incoming::TaskContinue { generation, .. })) => {
                prop_assert!(task_id_ok);
                prop_assert_eq!(generation, frame["generation"].as_u64().unwrap_or(0));
            }
            (Some("task_continue"), Err(_)) => prop_assert!(!task_id_ok || !generation_ok),
            (Some(_), Ok(_)) => {}
            (Some(_), Err(e)) => prop_assert!(false, "{e} for a frame of a type"),
            (None, parsed) => prop_assert!(parsed.is_err()),
        }
    }

    #[test]
    fn any_text_as_a_config_file_is_a_config_or_a_config_error(text in any::<String>()) {
        let _ = Config::from_json(&text, Path::new(CONFIG_PATH));
    }

    #[test]
    fn any_config_shaped_object_loads_or_names_the_problem_and_never_the_token(
        (config, token) in config_like()
    ) {
        match Config::from_json(&config.to_string(), Path::new(CONFIG_PATH)) {
            Ok(c) => {
                let debug = format!("{c:?}");
                prop_assert!(!debug.contains(&token));
                prop_assert!(!c.effective().to_string().contains(&token));
                prop_assert!(c.warnings.iter().all(|w| !w.contains(&token)));
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.contains(&token), "token in {message}");
                prop_assert!(message.contains(CONFIG_PATH), "{message}");
            }
        }
    }

    #[test]
    fn a_wrongly_typed_value_is_quoted_whole_or_cut_on_a_character(value in any_json()) {
        prop_assume!(!value.is_null() && value.as_u64().is_none());
        let config = json!({
            "agent_id": "a1", "token": "t", "hub_url": "ws://h/ws",
            "heartbeat_interval_ms": value,
        });
        match Config::from_json(&config.to_string(), Path::new(CONFIG_PATH)) {
            Err(ConfigError::Invalid { key, found, .. }) => {
                prop_assert_eq!(key, "heartbeat_interval_ms");
                let text = value.to_string();
                let quoted = ["a string ", "a number ", "a list ", "an object ", "a boolean "]
                    .iter()
                    .find_map(|kind| found.strip_prefix(kind));
                prop_assert!(quoted.is_some(), "{found}");
                let quoted = quoted.unwrap_or_default();
                if let Some(cut) = quoted.strip_suffix("...").filter(|_| text.chars().count() > 80) {
                    prop_assert!(text.starts_with(cut), "{found} is not a prefix of {text}");
                    prop_assert_eq!(cut.chars().count(), 77);
                } else {
                    prop_assert!(found.ends_with(&text), "{found} does not end with {text}");
                }
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn any_bytes_as_a_result_file_are_an_object_or_a_reason(bytes in any::<Vec<u8>>()) {
        let parsed = result_file::parse(&bytes);
        if result_file::is_blank(&bytes) {
            prop_assert!(parsed.is_err());
        }
        if let Err(reason) = parsed {
            prop_assert!(reason.starts_with("result file "), "{reason}");
        }
    }

    #[test]
    fn any_json_object_written_as_a_result_is_read_back(value in any_json(), pretty in any::<bool>()) {
        let object = match value {
            Value::Object(o) => o,
            other => {
                let mut o = Map::new();
                o.insert("output".into(), other);
                o
            }
        };
        let bytes = if pretty {
            serde_json::to_vec_pretty(&object).unwrap()
        } else {
            serde_json::to_vec(&object).unwrap()
        };
        prop_assert_eq!(result_file::parse(&bytes), Ok(object));
    }
}
