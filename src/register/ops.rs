//! The operator's other commands beside `register`, over the same HTTP client
//! ([`super::hub::send`]: no redirects, bounded, the token never shown):
//!
//! - `submit`: a task through `POST /api/tasks` (or, with `--push`, straight to one connected
//!   agent through `POST /api/admin/push-task`), its id printed, and with `--wait` followed
//!   through `GET /api/tasks/:id` to its end;
//! - `unregister`: the agent's token revoked (`DELETE /admin/tokens/:agent_id`), then what to
//!   remove on this machine;
//! - the test task at the end of `register --test-task`.
//!
//! Every hub refusal is one message naming the status and what to do ([`refusal`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::Method;
use serde_json::{json, Map, Value};

use super::hub::{self, Call, HubAddress};
use super::Failure;
use crate::config::{Config, Secret};

/// Who speaks to which hub: the address, the token, the agent (when a config said it).
pub struct Access {
    pub hub: HubAddress,
    pub token: Secret,
    pub agent_id: Option<String>,
    pub config: Option<Config>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Where the hub address and the token come from: `--token-file` (then `--hub` is needed),
/// else the config (its `hub_url`'s HTTP address unless `--hub` names another, its token,
/// its `ca_file` unless `--ca-file`).
pub fn access(
    hub: Option<&str>,
    token_file: Option<&Path>,
    config: &Path,
    ca_file: Option<&Path>,
) -> Result<Access, Failure> {
    let parse = |given: &str| {
        HubAddress::parse(given).map_err(|why| Failure::BadHub {
            given: given.to_string(),
            why,
        })
    };
    let (address, token, agent_id, loaded) = match token_file {
        Some(path) => {
            let Some(given) = hub else {
                return Err(Failure::BadOption {
                    option: "--token-file",
                    why: "needs --hub URL too (without --token-file, the config names both)".into(),
                });
            };
            let token = crate::token_file::read(path).map_err(|why| Failure::BadOption {
                option: "--token-file",
                why: format!("{}: {why}", path.display()),
            })?;
            (parse(given)?, token, None, None)
        }
        None => {
            let c = Config::load(config).map_err(|e| Failure::Config(e.to_string()))?;
            let address = match hub {
                Some(given) => parse(given)?,
                None => parse(&c.hub_url.api_base())?,
            };
            (address, c.token.clone(), Some(c.agent_id.clone()), Some(c))
        }
    };
    let ca = ca_file
        .map(Path::to_path_buf)
        .or_else(|| loaded.as_ref().and_then(|c| c.ca_file.clone()));
    let tls = crate::tls::client_config(ca.as_deref()).map_err(|reason| Failure::BadCaFile {
        path: ca
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        reason,
    })?;
    if let Some(w) = address.cleartext_warning() {
        eprintln!("{}: warning: {w}", env!("CARGO_PKG_NAME"));
    }
    Ok(Access {
        hub: address,
        token,
        agent_id,
        config: loaded,
        tls,
    })
}

impl Access {
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Failure> {
        let url = format!("{}{path}", self.hub.api);
        let (status, bytes) = hub::send(
            &self.hub,
            &self.tls,
            Call {
                method,
                url,
                bearer: Some(&self.token),
                body,
            },
        )?;
        if !(200..300).contains(&status) {
            return Err(refusal(&self.hub, path, status, &bytes));
        }
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// What a hub's refusal means, in one message.
pub fn refusal(hub: &HubAddress, path: &str, status: u16, body: &[u8]) -> Failure {
    let detail = hub::detail(body);
    let hub_name = hub.api.clone();
    match status {
        401 => Failure::Unauthorized {
            hub: hub_name,
            detail,
        },
        403 => Failure::Forbidden {
            hub: hub_name,
            detail,
        },
        404 => Failure::NotFound {
            url: format!("{}{path}", hub.api),
            detail,
        },
        409 => Failure::Conflict {
            hub: hub_name,
            detail,
        },
        429 => Failure::RateLimited { hub: hub_name },
        _ => Failure::Unexpected {
            hub: hub_name,
            status,
            detail,
        },
    }
}

/// What `submit` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub hub: Option<String>,
    pub description: String,
    pub to: Option<String>,
    pub priority: Option<String>,
    pub metadata: Option<String>,
    pub complexity: Option<String>,
    pub push: bool,
    pub wait: bool,
    pub timeout: Duration,
    pub token_file: Option<PathBuf>,
    pub config: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// `submit`: 0 submitted (with `--wait`: completed), 1 refused or failed, 3 still not ended
/// when `--timeout` passed.
pub fn run_submit(o: SubmitOptions) -> i32 {
    match submit(&o) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("{}: submit: {failure}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}

fn submit(o: &SubmitOptions) -> Result<i32, Failure> {
    if o.description.trim().is_empty() {
        return Err(Failure::BadOption {
            option: "description",
            why: "must not be empty".into(),
        });
    }
    let metadata = match &o.metadata {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Some(Value::Object(m)),
            _ => {
                return Err(Failure::BadOption {
                    option: "--metadata",
                    why: "must be a JSON object, e.g. '{\"repo\": \"…\"}'".into(),
                })
            }
        },
    };
    if o.push && o.to.is_none() {
        return Err(Failure::BadOption {
            option: "--push",
            why: "needs --to AGENT (the agent it is pushed to)".into(),
        });
    }
    if o.push && o.wait {
        return Err(Failure::BadOption {
            option: "--wait",
            why: "cannot follow a pushed task: the hub keeps no record of it (watch the agent's sidecar log instead)".into(),
        });
    }
    let access = access(
        o.hub.as_deref(),
        o.token_file.as_deref(),
        &o.config,
        o.ca_file.as_deref(),
    )?;
    let mut out = std::io::stdout().lock();
    if o.push {
        let to = o.to.clone().unwrap_or_default();
        let (_, answer) = access.call(
            Method::POST,
            "/api/admin/push-task",
            Some(json!({
                "agent_id": to,
                "description": o.description,
                "metadata": metadata.unwrap_or_else(|| json!({})),
            })),
        )?;
        let id = answer["task_id"].as_str().unwrap_or("").to_string();
        let _ = writeln!(out, "{id}");
        eprintln!(
            "pushed task {id} to agent \"{to}\" (no routing: its sidecar runs its wake_command)"
        );
        return Ok(0);
    }
    let mut body = Map::new();
    body.insert("description".into(), o.description.clone().into());
    for (key, value) in [
        ("priority", &o.priority),
        ("complexity_tier", &o.complexity),
        ("assign_to", &o.to),
    ] {
        if let Some(v) = value {
            body.insert(key.into(), v.clone().into());
        }
    }
    if let Some(m) = metadata {
        body.insert("metadata".into(), m);
    }
    let id = create_task(&access, Value::Object(body))?;
    let _ = writeln!(out, "{id}");
    let _ = out.flush();
    if !o.wait {
        return Ok(0);
    }
    let end = follow(&access, &id, o.timeout, &mut |line| eprintln!("{line}"))?;
    let _ = writeln!(out, "{}", end.summary());
    Ok(end.exit_code())
}

/// `POST /api/tasks`; the task id.
pub fn create_task(access: &Access, body: Value) -> Result<String, Failure> {
    let (status, answer) = access.call(Method::POST, "/api/tasks", Some(body))?;
    answer
        .get("task_id")
        .or_else(|| answer.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Failure::Unexpected {
            hub: access.hub.api.clone(),
            status,
            detail: "the answer names no task_id".into(),
        })
}

/// Where a followed task stood at the end.
pub struct End {
    pub status: String,
    pub task: Value,
    pub timed_out: bool,
}

impl End {
    pub fn completed(&self) -> bool {
        self.status == "completed" && !self.timed_out
    }

    pub fn exit_code(&self) -> i32 {
        match (self.completed(), self.timed_out) {
            (true, _) => 0,
            (false, true) => 3,
            (false, false) => 1,
        }
    }

    /// One line or a few: the status, who did it, and the result's or the error's gist.
    pub fn summary(&self) -> String {
        let t = &self.task;
        let by = t["assigned_to"]
            .as_str()
            .map(|a| format!(" (agent \"{}\")", hub::short(a)))
            .unwrap_or_default();
        if self.timed_out {
            return format!("still {}{by} when the wait ended", self.status);
        }
        let gist = if self.completed() {
            let result = &t["result"];
            let output = result.get("output").unwrap_or(result);
            match output {
                Value::String(s) => hub::short(s),
                Value::Null => String::new(),
                other => hub::short(&other.to_string()),
            }
        } else {
            match &t["last_error"] {
                Value::String(s) => hub::short(s),
                Value::Null => String::new(),
                other => hub::short(&other.to_string()),
            }
        };
        if gist.is_empty() {
            format!("{}{by}", self.status)
        } else {
            format!("{}{by}: {gist}", self.status)
        }
    }
}

/// Statuses after which a task does not move again by itself.
const FINAL: &[&str] = &["completed", "dead_letter", "failed", "cancelled"];
/// How often a followed task is asked about (the hub's rate limit allows far more).
const POLL: Duration = Duration::from_millis(500);

/// Asks `GET /api/tasks/:id` every [`POLL`] until the task ended or `timeout` passed; each
/// change of status or agent goes to `tell`.
pub fn follow(
    access: &Access,
    id: &str,
    timeout: Duration,
    tell: &mut dyn FnMut(String),
) -> Result<End, Failure> {
    let deadline = Instant::now() + timeout;
    let mut last = (String::new(), Value::Null);
    loop {
        let (_, task) = access.call(
            Method::GET,
            &format!("/api/tasks/{}", super::hub::percent_encode(id)),
            None,
        )?;
        let status = task["status"].as_str().unwrap_or("unknown").to_string();
        let now = (status.clone(), task["assigned_to"].clone());
        if now != last {
            let to = match &now.1 {
                Value::String(a) => format!(", agent \"{a}\""),
                _ => String::new(),
            };
            let error = match (&task["last_error"], status.as_str()) {
                (Value::String(e), "queued") => format!(" (last error: {})", hub::short(e)),
                _ => String::new(),
            };
            tell(format!("task {id}: {status}{to}{error}"));
            last = now;
        }
        if FINAL.contains(&status.as_str()) {
            return Ok(End {
                status,
                task,
                timed_out: false,
            });
        }
        if Instant::now() + POLL > deadline {
            return Ok(End {
                status,
                task,
                timed_out: true,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// What `unregister` was asked to do.
#[derive(Debug, Clone)]
pub struct UnregisterOptions {
    pub hub: Option<String>,
    pub config: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// `unregister`: 0 once the hub revoked the token, 1 otherwise (nothing changed then).
pub fn run_unregister(o: UnregisterOptions) -> i32 {
    match unregister(&o) {
        Ok(text) => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            0
        }
        Err(failure) => {
            eprintln!("{}: unregister: {failure}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}

fn unregister(o: &UnregisterOptions) -> Result<String, Failure> {
    let access = access(o.hub.as_deref(), None, &o.config, o.ca_file.as_deref())?;
    let config = access.config.as_ref().expect("read from the config");
    let id = &config.agent_id;
    access.call(
        Method::DELETE,
        &format!("/admin/tokens/{}", path_segment(id)),
        None,
    )?;
    Ok(removal_steps(config, &access.hub))
}

/// An agent id as one path segment (ids are letters, digits, `.`, `_`, `-` in practice;
/// anything else is percent-encoded).
fn path_segment(id: &str) -> String {
    super::hub::percent_encode(id)
}

/// After the revocation: what is left on this machine, with its paths.
pub fn removal_steps(c: &Config, hub: &HubAddress) -> String {
    let id = &c.agent_id;
    let mut out = format!(
        "revoked the token of agent \"{id}\" at the hub at {}: its sidecar can no longer identify (it logs hub_error invalid_token until it is stopped)\n\nLeft on this machine, to remove once its sidecar is stopped:\n",
        hub.api
    );
    out.push_str(&format!(
        "  1. Stop the sidecar: systemctl disable --now agentcom-sidecar@{id} (template unit),\n     or pm2 delete agentcom-{id} && pm2 save, or stop it where it runs by hand.\n"
    ));
    out.push_str(&format!("  2. The config: rm {}\n", c.path.display()));
    let mut n = 3;
    if let Some(t) = &c.token_file {
        out.push_str(&format!("  {n}. The token file: rm {}\n", t.display()));
        n += 1;
    }
    let tasks = c.tasks_dir();
    let mut state: Vec<String> = vec![
        format!(
            "{} (and its tasks/ directory {})",
            c.queue_file.display(),
            tasks.display()
        ),
        c.results_dir.display().to_string(),
        format!(
            "{} (and rotated {}.N)",
            c.log_file.display(),
            c.log_file.display()
        ),
        c.status_file.display().to_string(),
    ];
    state.dedup();
    out.push_str(&format!(
        "  {n}. Its state (keep the log if you want its history):\n{}",
        state
            .iter()
            .map(|s| format!("       {s}\n"))
            .collect::<String>()
    ));
    n += 1;
    out.push_str(&format!(
        "  {n}. Under systemd: rm /etc/agentcom-sidecar/{id}.json /etc/agentcom-sidecar/{id}.token and rm -r /var/lib/agentcom-sidecar/{id} if the template unit was used (see docs/usage/running-a-fleet.md)\n"
    ));
    out
}

/// The test task of `register --test-task`: a trivial task for exactly this agent. The
/// hub's scheduler gives a task with `assign_to` only to that agent when its routing has a
/// decision (trivial and complex tasks always do; a standard one falls back to any agent
/// while no model endpoint is known), and a trivial task goes to the `sidecar` target, so
/// the sidecar's bundled shell agent answers it. It carries no command: the shell agent
/// answers an `onboarding_test` task without running anything, so it needs no
/// `allow_hub_commands`.
pub fn test_task_body(agent_id: &str) -> Value {
    json!({
        "description": format!("Onboarding test: agent {agent_id} online"),
        "priority": "urgent",
        "complexity_tier": "trivial",
        "assign_to": agent_id,
        "max_retries": 0,
        "metadata": {"onboarding_test": true},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_each_status_means() {
        let hub = HubAddress::parse("http://hub:4000").unwrap();
        let text = |status, body: &[u8]| refusal(&hub, "/api/tasks", status, body).to_string();
        let e = text(
            401,
            br#"{"error":"unauthorized","hint":"provide Authorization: Bearer <token>"}"#,
        );
        assert!(e.contains("401") && e.contains("token"), "{e}");
        let e = text(
            403,
            br#"{"error":"admin_only","message":"Only admin agents can reset the hub"}"#,
        );
        assert!(
            e.contains("403") && e.contains("admin_only") && e.contains("administrator"),
            "{e}"
        );
        let e = text(404, br#"{"error":"task_not_found"}"#);
        assert!(
            e.contains("404") && e.contains("http://hub:4000/api/tasks"),
            "{e}"
        );
        let e = text(409, br#"{"error":"conflict"}"#);
        assert!(e.contains("409"), "{e}");
        let e = text(
            422,
            br#"{"error":"validation_failed","errors":[{"field":"description"}]}"#,
        );
        assert!(e.contains("422") && e.contains("description"), "{e}");
        assert!(text(429, b"").contains("429"));
    }

    #[test]
    fn agent_ids_are_one_path_segment() {
        assert_eq!(path_segment("gcu-grey_area.2"), "gcu-grey_area.2");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn the_test_task_is_trivial_and_for_this_agent_only() {
        let t = test_task_body("a1");
        assert_eq!(t["assign_to"], "a1");
        assert_eq!(t["complexity_tier"], "trivial");
        assert_eq!(t["metadata"]["onboarding_test"], true);
        assert!(t["metadata"].get("shell_command").is_none());
    }
}
