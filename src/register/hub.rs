//! The hub's side of `register`: the address the operator gave ([`HubAddress`]: the HTTP
//! base and the WebSocket URL derived from it), the one request (`POST
//! /api/onboard/register`), and what each answer or connection failure means, in words
//! that never show the token. It writes nothing.

use std::time::Duration;

use serde_json::{json, Value};

use super::Failure;
use crate::config::Secret;

/// How long one request to the hub may take, connection and answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read from the hub.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The hub's HTTP base and the WebSocket URL derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAddress {
    /// `http(s)://host:port[/prefix]`, no trailing slash.
    pub api: String,
    /// `ws(s)://host:port[/prefix]/ws`: the config's `hub_url`.
    pub ws: String,
}

impl HubAddress {
    /// Accepts the hub's HTTP address (`http://hub:4000`, `https://hub.example/agentcom`)
    /// or its WebSocket URL (`ws://hub:4000/ws`). The WebSocket URL is derived from the
    /// address the operator reached the hub at: the hub's own `hub_ws_url` is built from its
    /// listening port and always says `ws://`, which is wrong behind a TLS proxy.
    pub fn parse(s: &str) -> Result<HubAddress, String> {
        let uri: awc::http::Uri = s.trim().parse().map_err(|e| format!("not a URL ({e})"))?;
        let (http, ws) = match uri.scheme_str() {
            Some("http" | "ws") => ("http", "ws"),
            Some("https" | "wss") => ("https", "wss"),
            Some(other) => {
                return Err(format!(
                    "scheme must be http:// or https://, not {other}://"
                ))
            }
            None => return Err("must start with http:// or https://".into()),
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => a.as_str(),
            _ => return Err("has no host".into()),
        };
        if authority.contains('@') {
            return Err("must not carry a user name or password".into());
        }
        if uri.query().is_some() {
            return Err("must not have a query (?…)".into());
        }
        let mut prefix = uri.path().trim_end_matches('/');
        if matches!(uri.scheme_str(), Some("ws" | "wss")) {
            prefix = prefix.strip_suffix("/ws").unwrap_or(prefix);
        }
        Ok(HubAddress {
            api: format!("{http}://{authority}{prefix}"),
            ws: format!("{ws}://{authority}{prefix}/ws"),
        })
    }

    pub fn register_url(&self) -> String {
        format!("{}/api/onboard/register", self.api)
    }

    pub(super) fn is_tls(&self) -> bool {
        self.api.starts_with("https://")
    }

    /// A warning when the token would come back over a network in clear text.
    pub fn cleartext_warning(&self) -> Option<String> {
        crate::config::cleartext_warning(&self.api, self.is_tls())
    }
}
/// Text as one URL path segment or query value: RFC 3986's unreserved characters as they
/// are, every other byte percent-encoded.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /api/onboard/register`; the token of a 201.
pub(super) fn request(
    hub: &HubAddress,
    agent_id: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Secret, Failure> {
    let (status, body) = send(
        hub,
        &tls,
        Call {
            method: awc::http::Method::POST,
            url: hub.register_url(),
            bearer: None,
            body: Some(json!({ "agent_id": agent_id })),
        },
    )?;
    interpret(hub, agent_id, status, &body)
}

/// One request to the hub: its method, URL, token (sent as `Authorization: Bearer`, never
/// shown) and JSON body.
pub struct Call<'a> {
    pub method: awc::http::Method,
    pub url: String,
    pub bearer: Option<&'a Secret>,
    pub body: Option<Value>,
}

/// Sends one request and reads its answer (status, body), within [`REQUEST_TIMEOUT`].
/// Redirects are not followed: the request and its answer (a token) would follow the hub's
/// word anywhere, https:// to http:// included; a 3xx is an error that names where it
/// pointed. A connection failure is [`Failure::Unreachable`] or [`Failure::Tls`].
pub fn send(
    hub: &HubAddress,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    call: Call<'_>,
) -> Result<(u16, Vec<u8>), Failure> {
    let connector = awc::Connector::new()
        .rustls_0_23(tls.clone())
        .timeout(REQUEST_TIMEOUT)
        .handshake_timeout(REQUEST_TIMEOUT);
    actix_rt::System::new().block_on(async {
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(REQUEST_TIMEOUT)
            .disable_redirects()
            .finish();
        let mut request = client.request(call.method, &call.url).insert_header((
            "User-Agent",
            concat!("agentcom-sidecar/", env!("CARGO_PKG_VERSION")),
        ));
        if let Some(token) = call.bearer {
            request =
                request.insert_header(("Authorization", format!("Bearer {}", token.expose())));
        }
        let sent = match &call.body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| unreachable(hub, &e))?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|l| short(&String::from_utf8_lossy(l.as_bytes())));
        if (300..400).contains(&status) {
            return Err(Failure::Redirected {
                hub: hub.api.clone(),
                status,
                location: location.unwrap_or_else(|| "nowhere (no Location header)".into()),
            });
        }
        let body =
            response
                .body()
                .limit(MAX_ANSWER_BYTES)
                .await
                .map_err(|e| Failure::Unreachable {
                    hub: hub.api.clone(),
                    reason: format!("reading the answer: {e}"),
                })?;
        Ok::<_, Failure>((status, body.to_vec()))
    })
}

/// The error text of a hub's answer: its `errors` or `error` (with `message`), or the body.
pub fn detail(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let main = v.get("errors").or_else(|| v.get("error")).map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            match (main, v.get("message").and_then(Value::as_str)) {
                (Some(m), Some(msg)) => short(&format!("{m}: {msg}")),
                (Some(m), None) => short(&m),
                (None, _) => short(&v.to_string()),
            }
        }
        Err(_) => short(&String::from_utf8_lossy(body)),
    }
}

/// What the hub's answer means.
fn interpret(
    hub: &HubAddress,
    agent_id: &str,
    status: u16,
    body: &[u8],
) -> Result<Secret, Failure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let detail = || match &json {
        Some(v) => v
            .get("errors")
            .or_else(|| v.get("error"))
            .map(Value::to_string)
            .unwrap_or_else(|| short(&v.to_string())),
        None => short(&String::from_utf8_lossy(body)),
    };
    let hub_name = hub.api.clone();
    match status {
        201 | 200 => {
            let token = json
                .as_ref()
                .and_then(|v| v.get("token"))
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty() && !t.chars().any(char::is_control));
            match token {
                Some(t) => Ok(Secret::new(t)),
                None => Err(Failure::Unexpected {
                    hub: hub_name,
                    status,
                    detail: "the answer holds no usable \"token\"".into(),
                }),
            }
        }
        409 => Err(Failure::Taken {
            agent_id: agent_id.into(),
            hub: hub_name,
        }),
        400 | 422 => Err(Failure::Refused {
            agent_id: agent_id.into(),
            hub: hub_name,
            status,
            detail: detail(),
        }),
        429 => Err(Failure::RateLimited { hub: hub_name }),
        404 => Err(Failure::NoEndpoint {
            url: hub.register_url(),
            hub: hub_name,
        }),
        _ => Err(Failure::Unexpected {
            hub: hub_name,
            status,
            detail: detail(),
        }),
    }
}

/// A connection failure in words: TLS apart, since its fix differs.
fn unreachable(hub: &HubAddress, e: &awc::error::SendRequestError) -> Failure {
    use awc::error::{ConnectError, SendRequestError};
    let hub_name = hub.api.clone();
    let reason = match e {
        SendRequestError::Connect(ConnectError::Io(io)) => {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Failure::Tls {
                    hub: hub_name,
                    reason: tls.to_string(),
                };
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the hub running, and is this its port?)".to_string()
                }
                _ => io.to_string(),
            }
        }
        SendRequestError::Connect(ConnectError::Resolver(r)) => {
            format!("cannot resolve the host name ({r})")
        }
        SendRequestError::Connect(ConnectError::NoRecords) => {
            "the host name has no address".to_string()
        }
        SendRequestError::Connect(ConnectError::Timeout) | SendRequestError::Timeout => {
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
        }
        other if hub.is_tls() && other.to_string().to_lowercase().contains("tls") => {
            return Failure::Tls {
                hub: hub_name,
                reason: other.to_string(),
            }
        }
        other => other.to_string(),
    };
    Failure::Unreachable {
        hub: hub_name,
        reason,
    }
}

/// Text from the hub as the operator's terminal shows it: at most 200 characters, and no
/// control character (escape sequences, carriage returns) reaching the terminal as such.
pub(crate) fn short(s: &str) -> String {
    let s = s.trim();
    let cut = match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None if s.is_empty() => "(no body)".into(),
        None => s.to_string(),
    };
    cut.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_text_reaches_the_terminal_without_control_characters() {
        assert_eq!(short("ok\u{1b}[2Jgone\r"), "ok\\u{1b}[2Jgone");
        assert_eq!(short("a\nb"), "a\\nb");
        assert_eq!(short(""), "(no body)");
        assert_eq!(short(&"é".repeat(300)).chars().count(), 201);
    }

    #[test]
    fn the_hub_address_gives_the_api_base_and_the_websocket_url() {
        let p = |s| HubAddress::parse(s).unwrap();
        assert_eq!(
            p("http://hub:4000"),
            HubAddress {
                api: "http://hub:4000".into(),
                ws: "ws://hub:4000/ws".into()
            }
        );
        assert_eq!(p("http://hub:4000/").ws, "ws://hub:4000/ws");
        assert_eq!(
            p("https://hub.example/agentcom/"),
            HubAddress {
                api: "https://hub.example/agentcom".into(),
                ws: "wss://hub.example/agentcom/ws".into()
            }
        );
        assert_eq!(
            p("wss://hub.example:8443/ws"),
            HubAddress {
                api: "https://hub.example:8443".into(),
                ws: "wss://hub.example:8443/ws".into()
            }
        );
        assert_eq!(
            p("http://hub:4000").register_url(),
            "http://hub:4000/api/onboard/register"
        );
        for bad in [
            "hub:4000",
            "ftp://hub",
            "http://",
            "http://u:p@hub",
            "http://hub/?x=1",
            "",
        ] {
            assert!(HubAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_read_without_showing_a_token() {
        let hub = HubAddress::parse("http://hub:4000").unwrap();
        let ok = interpret(&hub, "a1", 201, br#"{"agent_id":"a1","token":"t0k"}"#).unwrap();
        assert_eq!(ok.expose(), "t0k");
        let e = interpret(
            &hub,
            "a1",
            409,
            br#"{"error":"agent_id already registered"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already registered") && e.contains("409"), "{e}");
        let e = interpret(
            &hub,
            "a1",
            422,
            br#"{"error":"validation_failed","errors":[{"field":"agent_id"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("agent_id") && e.contains("422"), "{e}");
        assert!(matches!(
            interpret(&hub, "a1", 201, b"{}"),
            Err(Failure::Unexpected { .. })
        ));
        assert!(matches!(
            interpret(&hub, "a1", 201, br#"{"token":""}"#),
            Err(Failure::Unexpected { .. })
        ));
        assert!(matches!(
            interpret(&hub, "a1", 404, b"not found"),
            Err(Failure::NoEndpoint { .. })
        ));
        assert!(matches!(
            interpret(&hub, "a1", 429, b""),
            Err(Failure::RateLimited { .. })
        ));
        let e = interpret(&hub, "a1", 500, &[b'x'; 1000])
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{e}");
    }
}
