//! What a config written for the Node.js sidecar means here.
//!
//! Both Node versions (the first, and the current one with structured logs and the git
//! workflow) read their config with JavaScript's `||` defaults: `0` and `""` meant "the
//! default", the `ws` library took an `http(s)://` hub URL as `ws(s)://`, any `log_level` it
//! did not know meant `info`, and keys for features this sidecar does not have (`repo_dir`,
//! `reviewer`, `hub_api_url`, `workspace`) sat beside the others. These functions map each
//! such value to this sidecar's, and say in one warning what changed; they are pure, and
//! [`super::Raw::validate`] applies them.

use serde_json::Value;

use super::LogLevel;

/// Keys only the Node sidecar read, and what stands in for each here.
pub const NODE_KEYS: &[(&str, &str)] = &[
    (
        "hub_api_url",
        "the hub's HTTP API address is derived from hub_url (ws://host:port/ws -> http://host:port)",
    ),
    (
        "repo_dir",
        "the Node sidecar ran its git workflow (a branch per task, a pull request) in this checkout; this sidecar does no git work, and its bundled agents work in the task's metadata.repo_dir, else in the sidecar's working directory (a wake command can cd where it likes)",
    ),
    (
        "reviewer",
        "the Node sidecar's git workflow asked this reviewer on its pull requests; this sidecar opens no pull requests (leave that to the agent)",
    ),
    (
        "workspace",
        "the Node ollama executor's tool directory when repo_dir was unset; the bundled ollama agent works in the task's metadata.repo_dir, else in the sidecar's working directory",
    ),
];

/// The specific warning for a Node-only key, or `None` for any other key.
pub fn node_key_warning(key: &str, value: &Value) -> Option<String> {
    let (_, instead) = NODE_KEYS.iter().find(|(k, _)| *k == key)?;
    let shown = match value {
        Value::String(s) if s.is_empty() => "\"\"".to_string(),
        Value::String(s) => format!("\"{}\"", super::redact_url_secrets(s)),
        other => super::kind_of(other).to_string(),
    };
    Some(format!(
        "key \"{key}\" ({shown}) of the Node sidecar is ignored: {instead}"
    ))
}

/// `log_level`: this sidecar's four levels, and the Node sidecar's names. The Node logger
/// had `debug`, `info`, `notice`, `warning` and `error`, and used `info` for any other value.
/// Returns the level and, where the meaning is not the one written, a warning.
pub fn log_level(text: &str) -> (LogLevel, Option<String>) {
    match text {
        "debug" => (LogLevel::Debug, None),
        "info" => (LogLevel::Info, None),
        "warn" | "warning" => (LogLevel::Warn, None),
        "error" => (LogLevel::Error, None),
        // The Node sidecar logged nothing at `notice`: the level let through its warnings
        // and errors, which is `warn` here.
        "notice" => (
            LogLevel::Warn,
            Some("log_level \"notice\" (a level of the Node sidecar, which logged no event at it) is taken as \"warn\": warnings and errors".into()),
        ),
        other => (
            LogLevel::Info,
            Some(format!(
                "log_level \"{other}\" is not a level (debug, info, warn, error); \"info\" is used, as the Node sidecar did"
            )),
        ),
    }
}

/// `confirmation_timeout_ms` as the Node sidecar read it (`value || 30000`): `0` is the
/// default, and a string of digits is its number. `Ok(None)`: the value is not one of these
/// Node forms (the caller's usual check applies). The warning says what was taken.
pub fn confirmation_timeout(value: &Value, default: u64) -> Option<(u64, Option<String>)> {
    match value {
        Value::Number(n) if n.as_u64() == Some(0) => Some((
            default,
            Some(format!(
                "confirmation_timeout_ms 0 is taken as the default {default}, as the Node sidecar took it (its 0 meant \"the default\")"
            )),
        )),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || t.len() > 12 {
                return None;
            }
            let n: u64 = t.parse().ok()?;
            let taken = if n == 0 { default } else { n };
            Some((
                taken,
                Some(format!(
                    "confirmation_timeout_ms is a string \"{s}\"; taken as the number {taken} (write it without quotes)"
                )),
            ))
        }
        _ => None,
    }
}

/// `hub_url` with an `http://` or `https://` scheme, as the Node sidecar's `ws` library took
/// it: `ws://` or `wss://`, and the hub's socket path `/ws` when there is no path. `None`
/// for any other URL (left to the usual check).
pub fn hub_url(url: &str) -> Option<String> {
    let trimmed = url.trim();
    let (scheme, rest) = trimmed.split_once("://")?;
    let ws = if scheme.eq_ignore_ascii_case("http") {
        "ws"
    } else if scheme.eq_ignore_ascii_case("https") {
        "wss"
    } else {
        return None;
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let tail = if tail.is_empty() || tail == "/" {
        "/ws"
    } else {
        tail
    };
    Some(format!("{ws}://{authority}{tail}"))
}

/// An authority with an empty port (`host:`), as the Node onboarding script wrote for a hub
/// address without a port (`wss://hub.example:/ws`), is the scheme's default port: the colon
/// goes. Any other URL is returned as it is.
pub fn drop_empty_port(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    match authority.strip_suffix(':') {
        Some(host) if !host.is_empty() && !host.ends_with(':') => {
            format!("{scheme}://{host}{tail}").into()
        }
        _ => url.into(),
    }
}
