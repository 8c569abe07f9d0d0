//! The hub's agent tokens, as its `Auth` keeps them: a map from token to the one agent id it
//! belongs to, loaded from the tokens file and grown by `POST /api/onboard/register`. Without
//! a tokens file the dev hub is *open*: any non-empty token lets any agent in, except a
//! token registered for another agent, and except an agent registered with
//! `POST /api/onboard/register`, which needs its own token (as on the real hub). It owns no I/O: the tokens file is read by
//! [`load_tokens`](super::load_tokens) and registration never writes one.

use std::collections::HashMap;

/// Why an identify (or a Bearer token) is refused: the hub's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    InvalidToken,
    TokenAgentMismatch,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            TokenError::InvalidToken => "invalid_token",
            TokenError::TokenAgentMismatch => "token_agent_mismatch",
        }
    }
}

/// Why a registration is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegisterError {
    /// `409 {"error":"agent_id already registered"}`.
    AlreadyRegistered,
}

#[derive(Debug, Default)]
pub(crate) struct Tokens {
    /// token -> agent id.
    by_token: HashMap<String, String>,
    /// No tokens file: any non-empty token is accepted for any agent it is not bound to, if
    /// that agent has no token of its own.
    open: bool,
}

impl Tokens {
    /// From the tokens file's `agent_id -> token` map; `None` is an open hub.
    pub fn new(file: Option<HashMap<String, String>>) -> Tokens {
        match file {
            Some(agents) => Tokens {
                by_token: agents
                    .into_iter()
                    .map(|(agent, token)| (token, agent))
                    .collect(),
                open: false,
            },
            None => Tokens {
                by_token: HashMap::new(),
                open: true,
            },
        }
    }

    /// The hub's identify check: the token's agent must be `agent_id`.
    pub fn check(&self, agent_id: &str, token: &str) -> Result<(), TokenError> {
        match self.by_token.get(token) {
            Some(owner) if owner == agent_id => Ok(()),
            Some(_) => Err(TokenError::TokenAgentMismatch),
            None if self.open
                && !token.is_empty()
                && !agent_id.is_empty()
                && !self.has_agent(agent_id) =>
            {
                Ok(())
            }
            None => Err(TokenError::InvalidToken),
        }
    }

    /// The agent a Bearer token authenticates, as the HTTP API's `RequireAuth` does; an open
    /// hub accepts any non-empty token (as an anonymous agent, `""`).
    pub fn bearer_agent(&self, token: &str) -> Option<&str> {
        match self.by_token.get(token) {
            Some(agent) => Some(agent),
            None if self.open && !token.is_empty() => Some(""),
            None => None,
        }
    }

    /// Whether any token belongs to `agent_id`.
    pub fn has_agent(&self, agent_id: &str) -> bool {
        self.by_token.values().any(|agent| agent == agent_id)
    }

    /// Forgets every token of `agent_id` (the hub's `Auth.revoke`); how many there were.
    pub fn revoke(&mut self, agent_id: &str) -> usize {
        let before = self.by_token.len();
        self.by_token.retain(|_, agent| agent != agent_id);
        before - self.by_token.len()
    }

    /// A new token for a new agent id: 32 random bytes in lowercase hex, as the hub makes them.
    pub fn register(&mut self, agent_id: &str) -> Result<String, RegisterError> {
        if self.has_agent(agent_id) {
            return Err(RegisterError::AlreadyRegistered);
        }
        let token = new_token();
        self.by_token.insert(token.clone(), agent_id.to_string());
        Ok(token)
    }
}

/// 64 lowercase hex digits. `fastrand` is seeded from the OS: good enough for a development
/// hub, not for a real one.
fn new_token() -> String {
    use std::fmt::Write;
    let mut token = String::with_capacity(64);
    for _ in 0..4 {
        let _ = write!(token, "{:016x}", fastrand::u64(..));
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Tokens {
        Tokens::new(Some(HashMap::from([
            ("a1".to_string(), "t1".to_string()),
            ("a2".to_string(), "t2".to_string()),
        ])))
    }

    #[test]
    fn identify_checks_as_the_hub_does() {
        let tokens = file();
        assert_eq!(tokens.check("a1", "t1"), Ok(()));
        assert_eq!(
            tokens.check("a1", "t2"),
            Err(TokenError::TokenAgentMismatch)
        );
        assert_eq!(tokens.check("a1", "zz"), Err(TokenError::InvalidToken));
        assert_eq!(
            tokens.check("a3", "t1").unwrap_err().code(),
            "token_agent_mismatch"
        );
        assert_eq!(tokens.bearer_agent("t2"), Some("a2"));
        assert_eq!(tokens.bearer_agent("nope"), None);
    }

    #[test]
    fn an_open_hub_accepts_any_token_not_bound_elsewhere() {
        let mut tokens = Tokens::new(None);
        assert_eq!(tokens.check("x", "anything"), Ok(()));
        assert_eq!(tokens.check("x", ""), Err(TokenError::InvalidToken));
        assert_eq!(tokens.check("", "t"), Err(TokenError::InvalidToken));
        let token = tokens.register("new").expect("registered");
        assert_eq!(
            tokens.check("other", &token),
            Err(TokenError::TokenAgentMismatch)
        );
        // A registered agent needs its own token, open hub or not.
        assert_eq!(tokens.check("new", &token), Ok(()));
        assert_eq!(
            tokens.check("new", "anything"),
            Err(TokenError::InvalidToken)
        );
        assert_eq!(tokens.bearer_agent("whatever"), Some(""));
        assert_eq!(tokens.bearer_agent(""), None);
    }

    #[test]
    fn registration_makes_a_working_token_once() {
        let mut tokens = file();
        assert_eq!(tokens.register("a1"), Err(RegisterError::AlreadyRegistered));
        let token = tokens.register("a3").expect("registered");
        assert_eq!(token.len(), 64);
        assert!(token
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(tokens.check("a3", &token), Ok(()));
        assert_eq!(tokens.register("a3"), Err(RegisterError::AlreadyRegistered));
    }
}
