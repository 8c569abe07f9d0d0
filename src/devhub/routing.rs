//! A task's complexity and routing decision, as the hub's `Complexity`, `TaskRouter` and
//! the scheduler's fallback build them (the dev hub has no LLM registry): the tier is
//! inferred from the description's words and keywords, the file hints and the verification
//! steps (an explicit `complexity_tier` wins); trivial tasks route to `sidecar`, complex ones
//! to `claude` (model `claude`), standard and unknown ones to `ollama`: at the chosen agent's
//! own endpoint (`identify.ollama_url` as `host:port`) when it has one, else with no healthy
//! endpoint they fall back (`selected_endpoint: null`, `fallback_used`). Pure functions.

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    Trivial,
    Standard,
    Complex,
    Unknown,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Trivial => "trivial",
            Tier::Standard => "standard",
            Tier::Complex => "complex",
            Tier::Unknown => "unknown",
        }
    }

    fn parse(text: &str) -> Option<Tier> {
        Some(match text {
            "trivial" => Tier::Trivial,
            "standard" => Tier::Standard,
            "complex" => Tier::Complex,
            "unknown" => Tier::Unknown,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Complexity {
    pub effective: Tier,
    pub explicit: Option<Tier>,
    pub inferred: Tier,
    pub confidence: f64,
    pub word_count: usize,
    pub file_count: usize,
}

const COMPLEX_WORDS: &[&str] = &[
    "refactor",
    "architect",
    "migration",
    "redesign",
    "migrate",
    "security",
    "overhaul",
    "rewrite",
];
const TRIVIAL_WORDS: &[&str] = &[
    "fix typo",
    "update readme",
    "bump version",
    "rename",
    "typo",
    "format",
    "lint",
    "version bump",
];

impl Complexity {
    /// From a submitted task's description, file hints, verification steps and explicit tier.
    pub fn build(
        description: &str,
        file_hints: &Value,
        steps: &Value,
        explicit: Option<&str>,
    ) -> Complexity {
        let explicit = explicit.and_then(Tier::parse);
        let count = |list: &Value| list.as_array().map_or(0, Vec::len);
        let (word_count, file_count, step_count) =
            (words(description), count(file_hints), count(steps));
        let lower = description.to_lowercase();
        let complex = COMPLEX_WORDS.iter().any(|w| lower.contains(w));
        let trivial = TRIVIAL_WORDS.iter().any(|w| lower.contains(w));
        let (inferred, confidence) =
            if word_count == 0 && file_count == 0 && step_count == 0 && !complex && !trivial {
                (Tier::Unknown, 0.0)
            } else if complex {
                let supporting = [file_count > 3, step_count > 3, word_count > 50]
                    .iter()
                    .filter(|s| **s)
                    .count();
                (Tier::Complex, 0.7 + supporting as f64 * 0.1)
            } else if trivial && file_count <= 3 && step_count <= 3 {
                (Tier::Trivial, if word_count < 10 { 0.9 } else { 0.75 })
            } else {
                let votes = [
                    by_count(word_count, 10, 50, true),
                    by_count(file_count, 0, 3, false),
                    by_count(step_count, 0, 3, false),
                ];
                let mut tier = majority(&votes);
                let agreeing = votes.iter().filter(|v| **v == tier).count();
                let confidence = agreeing as f64 / votes.len() as f64;
                if tier == Tier::Trivial && !trivial {
                    tier = Tier::Standard;
                }
                (tier, confidence)
            };
        Complexity {
            effective: explicit.unwrap_or(inferred),
            explicit,
            inferred,
            confidence: confidence.clamp(0.0, 1.0),
            word_count,
            file_count,
        }
    }

    fn source(&self) -> &'static str {
        if self.explicit.is_some() {
            "explicit"
        } else {
            "inferred"
        }
    }

    /// As `GET /api/tasks/:id` and `task_assign` show it.
    pub fn to_json(&self) -> Value {
        json!({
            "effective_tier": self.effective.name(),
            "explicit_tier": self.explicit.map(Tier::name),
            "source": self.source(),
            "inferred": {"tier": self.inferred.name(), "confidence": self.confidence},
        })
    }
}

/// Words as the hub splits them: runs of ASCII white space.
fn words(text: &str) -> usize {
    text.split([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
        .filter(|w| !w.is_empty())
        .count()
}

/// Trivial up to `low` (below it, for word counts), complex above `high`, else standard.
fn by_count(n: usize, low: usize, high: usize, strict_low: bool) -> Tier {
    if (strict_low && n < low) || (!strict_low && n <= low) {
        Tier::Trivial
    } else if n > high {
        Tier::Complex
    } else {
        Tier::Standard
    }
}

/// The most voted tier; ties go to standard, then complex, then trivial.
fn majority(votes: &[Tier]) -> Tier {
    [Tier::Standard, Tier::Complex, Tier::Trivial]
        .into_iter()
        .max_by_key(|tier| {
            let count = votes.iter().filter(|v| *v == tier).count();
            let preference = match tier {
                Tier::Standard => 2,
                Tier::Complex => 1,
                _ => 0,
            };
            (count, preference)
        })
        .unwrap_or(Tier::Standard)
}

/// A routing decision, stored on the task when it is assigned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    pub effective_tier: &'static str,
    pub target_type: &'static str,
    pub selected_endpoint: Option<String>,
    pub selected_model: Option<&'static str>,
    pub fallback_from_tier: Option<&'static str>,
    pub fallback_reason: Option<&'static str>,
    pub classification_reason: String,
    pub estimated_cost_tier: &'static str,
    pub decided_at: u64,
}

impl Decision {
    /// Whether the task went the fallback way (its `assign_to` is then not looked at, and a
    /// fallback timer asks the scheduler again later).
    pub fn is_fallback(&self) -> bool {
        self.fallback_from_tier.is_some()
    }

    /// As `GET /api/tasks/:id` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "effective_tier": self.effective_tier,
            "target_type": self.target_type,
            "selected_endpoint": self.selected_endpoint,
            "selected_model": self.selected_model,
            "fallback_used": self.is_fallback(),
            "fallback_from_tier": self.fallback_from_tier,
            "fallback_reason": self.fallback_reason,
            "candidate_count": 0,
            "classification_reason": self.classification_reason,
            "estimated_cost_tier": self.estimated_cost_tier,
            "decided_at": self.decided_at,
        })
    }

    /// As `task_assign` carries it.
    pub fn to_ws_json(&self) -> Value {
        json!({
            "effective_tier": self.effective_tier,
            "target_type": self.target_type,
            "selected_endpoint": self.selected_endpoint,
            "selected_model": self.selected_model,
            "fallback_used": self.is_fallback(),
            "fallback_reason": self.fallback_reason,
            "classification_reason": self.classification_reason,
            "estimated_cost_tier": self.estimated_cost_tier,
        })
    }
}

impl Decision {
    /// The decision once the agent is chosen: a task for `ollama` goes to the agent's own
    /// Ollama endpoint (from its `identify.ollama_url` or `ollama_report`), named as the
    /// hub's model registry names it, `host:port` — no fallback then. Without one it keeps
    /// `selected_endpoint: null` (the hub's fallback).
    pub fn for_agent(mut self, ollama_url: Option<&str>) -> Decision {
        let endpoint = ollama_url.and_then(host_port);
        if self.target_type == "ollama" {
            if let Some(endpoint) = endpoint {
                self.selected_endpoint = Some(endpoint);
                self.fallback_from_tier = None;
                self.fallback_reason = None;
                if let Some((reason, _)) = self.classification_reason.split_once(" [fallback") {
                    self.classification_reason = reason.to_string();
                }
            }
        }
        self
    }
}

/// `http://host:port/…` as `host:port` (the port 11434 when absent, as Ollama's).
fn host_port(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:11434")
    })
}

/// The decision for a task of this complexity, at `now_ms`.
pub(crate) fn route(complexity: &Complexity, now_ms: u64) -> Decision {
    let c = complexity;
    let conf = format!("{:.2}", c.confidence);
    match c.effective {
        Tier::Trivial | Tier::Complex => {
            let trivial = c.effective == Tier::Trivial;
            Decision {
                effective_tier: c.effective.name(),
                target_type: if trivial { "sidecar" } else { "claude" },
                selected_endpoint: (!trivial).then(|| "claude_api".to_string()),
                selected_model: (!trivial).then_some("claude"),
                fallback_from_tier: None,
                fallback_reason: None,
                classification_reason: format!(
                    "{}:{} (confidence {conf}, word_count={}, files={})",
                    c.source(),
                    c.effective.name(),
                    c.word_count,
                    c.file_count
                ),
                estimated_cost_tier: if trivial { "free" } else { "api" },
                decided_at: now_ms,
            }
        }
        Tier::Standard | Tier::Unknown => Decision {
            effective_tier: "standard",
            target_type: "ollama",
            selected_endpoint: None,
            selected_model: None,
            fallback_from_tier: Some("standard"),
            fallback_reason: Some("no_healthy_ollama_endpoints"),
            classification_reason: format!(
                "{}:{} (confidence {conf}) [fallback from standard: no_healthy_ollama_endpoints]",
                c.source(),
                c.effective.name()
            ),
            estimated_cost_tier: "local",
            decided_at: now_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(description: &str) -> Complexity {
        Complexity::build(description, &json!([]), &json!([]), None)
    }

    #[test]
    fn inference_as_the_hub_does_it() {
        let c = infer("Say hello to the new operator");
        assert_eq!(
            (c.inferred, c.confidence),
            (Tier::Standard, 1.0),
            "three trivial votes, no keyword"
        );
        let c = infer("fix typo in docs");
        assert_eq!((c.inferred, c.confidence), (Tier::Trivial, 0.9));
        let c = infer("refactor the auth module");
        assert_eq!((c.inferred, c.confidence), (Tier::Complex, 0.7));
        assert_eq!(infer("").inferred, Tier::Unknown);
        let long = "word ".repeat(60);
        let c = Complexity::build(&long, &json!([1, 2]), &json!([1, 2, 3, 4]), None);
        assert_eq!(c.inferred, Tier::Complex);
        assert_eq!(c.confidence, 2.0 / 3.0);
        let c = Complexity::build("x", &json!([]), &json!([]), Some("complex"));
        assert_eq!(
            (c.effective, c.explicit, c.inferred),
            (Tier::Complex, Some(Tier::Complex), Tier::Standard)
        );
        assert_eq!(
            Complexity::build("x", &json!([]), &json!([]), Some("huge")).explicit,
            None
        );
    }

    #[test]
    fn decisions_without_llm_endpoints() {
        let d = route(&infer("fix typo"), 5);
        assert_eq!(
            (d.target_type, d.estimated_cost_tier, d.is_fallback()),
            ("sidecar", "free", false)
        );
        assert_eq!(
            d.classification_reason,
            "inferred:trivial (confidence 0.90, word_count=2, files=0)"
        );
        let d = route(&infer("migrate the database"), 5);
        assert_eq!(
            (d.target_type, d.selected_model),
            ("claude", Some("claude"))
        );
        let d = route(&infer("do it"), 5);
        assert!(d.is_fallback());
        assert_eq!(d.target_type, "ollama");
        assert_eq!(
            d.classification_reason,
            "inferred:standard (confidence 1.00) [fallback from standard: no_healthy_ollama_endpoints]"
        );
        let ws = d.to_ws_json();
        assert_eq!(ws["fallback_used"], true);
        assert!(ws.get("decided_at").is_none());
        assert_eq!(d.to_json()["decided_at"], 5);
        let own = route(&infer("do it"), 5).for_agent(Some("http://10.0.0.5:11434/"));
        assert_eq!(own.selected_endpoint.as_deref(), Some("10.0.0.5:11434"));
        assert!(!own.is_fallback());
        assert_eq!(own.to_ws_json()["fallback_used"], false);
        assert_eq!(
            own.classification_reason,
            "inferred:standard (confidence 1.00)"
        );
        assert_eq!(
            route(&infer("do it"), 5)
                .for_agent(Some("http://gpu-box"))
                .selected_endpoint
                .as_deref(),
            Some("gpu-box:11434")
        );
        assert!(route(&infer("do it"), 5).for_agent(None).is_fallback());
        let claude = route(&infer("migrate the database"), 5).for_agent(Some("http://h:1"));
        assert_eq!(claude.selected_endpoint.as_deref(), Some("claude_api"));
        assert_eq!(route(&infer(""), 1).classification_reason,
            "inferred:unknown (confidence 0.00) [fallback from standard: no_healthy_ollama_endpoints]");
    }
}
