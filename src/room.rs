//! Room chat as pure rules: what a `room_message` frame holds, which messages may wake the
//! agent (its own, replays, filters) and how often (a token bucket), and the environment a
//! room wake command gets. No I/O and no clock: time is passed in. The RoomActor
//! (`actors/room.rs`) runs these rules, writes the state and starts the command.
//!
//! Room text is untrusted: anyone who can post to the hub's room writes it. It is kept as the
//! bytes of the JSON string (valid UTF-8, except that a lone surrogate escape such as
//! `"\udc80"` becomes its three-byte WTF-8 form) and reaches the command only as the value of
//! an environment variable or the content of a file, never as command text.

use std::time::{Duration, Instant};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One `room_message` from the hub, its fields checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    /// Who posted it, as the hub says (a human poster chooses it freely).
    pub from: Vec<u8>,
    pub text: Vec<u8>,
    /// The hub's room sequence number (from 1, one more per message, reset when the hub
    /// restarts).
    pub seq: u64,
    /// The message's type (`chat` by default at the hub); a value that is not a string is
    /// kept as its JSON text.
    pub message_type: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch, when the hub sent a whole number.
    pub timestamp: Option<i64>,
}

/// A `room_message` frame that cannot be used: why (never quoting the text), and its `seq`
/// as sent, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: String,
    pub seq: Option<String>,
}

/// The frame as read when it is not valid for `serde_json::Value` (a lone surrogate escape
/// somewhere): strings read as bytes.
#[derive(Deserialize)]
struct Lenient {
    #[serde(rename = "type")]
    kind: WireBytes,
    from: Option<WireBytes>,
    text: Option<WireBytes>,
    seq: Option<Value>,
    message_type: Option<WireBytes>,
    timestamp: Option<Value>,
}

/// A JSON string as its raw bytes (lone surrogates as WTF-8).
struct WireBytes(Vec<u8>);

impl<'de> Deserialize<'de> for WireBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = WireBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WireBytes, E> {
                Ok(WireBytes(v.to_vec()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireBytes, E> {
                Ok(WireBytes(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

impl RoomMessage {
    /// A `room_message` frame parsed as a JSON object.
    pub fn from_fields(fields: &Map<String, Value>) -> Result<RoomMessage, Rejected> {
        let seq_value = fields.get("seq");
        let shown_seq = seq_value.map(Value::to_string);
        let reject = |reason: String| Rejected {
            reason,
            seq: shown_seq.clone(),
        };
        let string = |key: &str| -> Result<Vec<u8>, Rejected> {
            match fields.get(key) {
                Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
                None | Some(Value::Null) => Err(reject(format!("\"{key}\" is missing"))),
                Some(other) => Err(reject(format!(
                    "\"{key}\" is not a string but {}",
                    kind_of(other)
                ))),
            }
        };
        let text = string("text")?;
        let from = string("from")?;
        let seq = read_seq(seq_value).map_err(reject)?;
        let message_type = match fields.get("message_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_bytes().to_vec()),
            Some(other) => Some(other.to_string().into_bytes()),
        };
        Ok(RoomMessage {
            from,
            text,
            seq,
            message_type,
            timestamp: fields.get("timestamp").and_then(Value::as_i64),
        })
    }

    /// A frame `serde_json::Value` refused: a `room_message` whose strings hold lone
    /// surrogate escapes. `None` if it is not a `room_message` readable this way.
    pub fn from_lenient(text: &str) -> Option<Result<RoomMessage, Rejected>> {
        let frame: Lenient = serde_json::from_str(text).ok()?;
        if frame.kind.0 != b"room_message" {
            return None;
        }
        let shown_seq = frame.seq.as_ref().map(Value::to_string);
        let reject = |reason: String| Rejected {
            reason,
            seq: shown_seq.clone(),
        };
        let fields = (|| {
            let text = frame
                .text
                .ok_or_else(|| reject("\"text\" is missing".into()))?;
            let from = frame
                .from
                .ok_or_else(|| reject("\"from\" is missing".into()))?;
            let seq = read_seq(frame.seq.as_ref()).map_err(reject)?;
            Ok(RoomMessage {
                from: from.0,
                text: text.0,
                seq,
                message_type: frame.message_type.map(|t| t.0),
                timestamp: frame.timestamp.as_ref().and_then(Value::as_i64),
            })
        })();
        Some(fields)
    }
}

/// `seq`: a whole number ≥ 0.
fn read_seq(seq: Option<&Value>) -> Result<u64, String> {
    match seq {
        None | Some(Value::Null) => Err("\"seq\" is missing".into()),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            format!("\"seq\" is {n}: not a whole number of 0 or more (the hub counts from 1)")
        }),
        Some(other) => Err(format!("\"seq\" is not a number but {}", kind_of(other))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// -- which messages are new ----------------------------------------------------------------

/// The newest message seen: its `seq`, and its `timestamp` if the hub sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// Whether a message is new after `mark`: a higher `seq`; or, with a `seq` at or below it, a
/// `timestamp` later than the mark's — the hub keeps its room in memory, so after a hub
/// restart `seq` starts at 1 again while time goes on. A message that is neither is a replay.
pub fn is_new(mark: Option<Mark>, seq: u64, timestamp: Option<i64>) -> bool {
    let Some(mark) = mark else { return true };
    if seq > mark.seq {
        return true;
    }
    matches!((timestamp, mark.timestamp), (Some(t), Some(m)) if t > m)
}

// -- filters -------------------------------------------------------------------------------

/// Whether `from` is this agent: its id or its name, exactly.
pub fn is_own(from: &[u8], agent_id: &str, name: &str) -> bool {
    from == agent_id.as_bytes() || from == name.as_bytes()
}

/// Whether `text` mentions `who` (the agent's id or name): `@who`, or `who` as a word of its
/// own (not inside a longer name such as `who-2` or `my-who`). Letter case is ignored (ASCII).
pub fn mentions(text: &[u8], who: &str) -> bool {
    let who = who.as_bytes();
    if who.is_empty() || who.len() > text.len() {
        return false;
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    (0..=text.len() - who.len()).any(|at| {
        text[at..at + who.len()].eq_ignore_ascii_case(who)
            && (at == 0 || !word(text[at - 1]) || !word(who[0]))
            && text
                .get(at + who.len())
                .is_none_or(|b| !word(*b) || !word(who[who.len() - 1]))
    })
}

// -- pacing ---------------------------------------------------------------------------------

/// A token bucket: at most `burst` wakes at once, then one per `interval`. Time is passed in.
#[derive(Debug, Clone)]
pub struct Bucket {
    burst: u32,
    interval: Duration,
    tokens: u32,
    /// When the last token was added (or the bucket was last full).
    since: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, interval: Duration, now: Instant) -> Bucket {
        Bucket {
            burst: burst.max(1),
            interval: interval.max(Duration::from_millis(1)),
            tokens: burst.max(1),
            since: now,
        }
    }

    /// Takes a token if there is one: whether the wake may go ahead.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == self.burst {
            // Refilling starts from the first token taken out of a full bucket.
            self.since = now;
        }
        self.tokens -= 1;
        true
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.burst {
            return;
        }
        let elapsed = now.saturating_duration_since(self.since);
        let added = (elapsed.as_nanos() / self.interval.as_nanos()).min(u128::from(self.burst));
        if added == 0 {
            return;
        }
        self.tokens = (self.tokens + added as u32).min(self.burst);
        self.since = if self.tokens == self.burst {
            now
        } else {
            self.since + self.interval * added as u32
        };
    }
}

// -- the command's environment --------------------------------------------------------------

/// Largest value passed in one environment variable (as for `TASK_JSON`): Linux refuses a
/// single string over 128 KiB.
pub const ENV_VALUE_MAX: usize = 64 * 1024;

/// Whether a value can go into the environment: small enough, no NUL, and (Windows, whose
/// environment is UTF-16 text) valid UTF-8.
pub fn fits_env(value: &[u8]) -> bool {
    value.len() <= ENV_VALUE_MAX
        && !value.contains(&0)
        && (cfg!(unix) || std::str::from_utf8(value).is_ok())
}

/// One environment variable of a room wake: set to a value, or left out (`_OMITTED=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Set(Vec<u8>),
    Omitted,
}

/// The variables a room wake command gets for `message` (besides `ROOM_MESSAGE_FILE`, which
/// names the file holding the text): `ROOM_FROM`, `ROOM_TEXT`, `ROOM_SEQ`,
/// `ROOM_MESSAGE_TYPE`, `ROOM_TIMESTAMP`. A value that cannot be an environment string
/// ([`fits_env`]) is left out and `<NAME>_OMITTED=1` set instead; a missing type or
/// timestamp is simply not set.
pub fn environment(message: &RoomMessage) -> Vec<(&'static str, EnvValue)> {
    let checked = |v: &[u8]| {
        if fits_env(v) {
            EnvValue::Set(v.to_vec())
        } else {
            EnvValue::Omitted
        }
    };
    let mut env = vec![
        ("ROOM_FROM", checked(&message.from)),
        ("ROOM_TEXT", checked(&message.text)),
        (
            "ROOM_SEQ",
            EnvValue::Set(message.seq.to_string().into_bytes()),
        ),
    ];
    if let Some(t) = &message.message_type {
        env.push(("ROOM_MESSAGE_TYPE", checked(t)));
    }
    if let Some(ts) = message.timestamp {
        env.push(("ROOM_TIMESTAMP", EnvValue::Set(ts.to_string().into_bytes())));
    }
    env
}

/// Variables a room wake command never inherits from the sidecar: a task's, so it is never
/// taken for a task's wake, and stale room values.
pub const FOREIGN_ENV: &[&str] = &[
    "TASK_ID",
    "TASK_JSON",
    "TASK_JSON_OMITTED",
    "TASK_DESCRIPTION",
    "TASK_DESCRIPTION_OMITTED",
    "TASK_FILE",
    "TASK_TARGET_TYPE",
    "TASK_MODEL",
    "RESULTS_DIR",
    "WAKE_ATTEMPT",
    "ROOM_FROM",
    "ROOM_TEXT",
    "ROOM_SEQ",
    "ROOM_MESSAGE_TYPE",
    "ROOM_TIMESTAMP",
    "ROOM_MESSAGE_FILE",
    "ROOM_FROM_OMITTED",
    "ROOM_TEXT_OMITTED",
    "ROOM_MESSAGE_TYPE_OMITTED",
];

/// Bytes shown in a log line: lossy UTF-8, at most `max` characters.
pub fn shown(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes).chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<RoomMessage, Rejected> {
        RoomMessage::from_fields(v.as_object().unwrap())
    }

    #[test]
    fn a_room_message_keeps_its_fields_and_a_non_string_type_as_json() {
        let m = parse(
            json!({"type": "room_message", "from": "ann", "text": "hi $(x)",
            "seq": 7, "message_type": "chat", "timestamp": 1_700_000_000_000i64}),
        )
        .unwrap();
        assert_eq!(m.from, b"ann");
        assert_eq!(m.text, b"hi $(x)");
        assert_eq!(m.seq, 7);
        assert_eq!(m.message_type.as_deref(), Some(&b"chat"[..]));
        assert_eq!(m.timestamp, Some(1_700_000_000_000));
        let m = parse(json!({"from": "a", "text": "t", "seq": 1, "message_type": 5})).unwrap();
        assert_eq!(m.message_type.as_deref(), Some(&b"5"[..]));
        assert_eq!(m.timestamp, None);
    }

    #[test]
    fn bad_fields_are_rejected_with_a_precise_reason_that_never_quotes_the_text() {
        let cases = [
            (
                json!({"from": "a", "text": 5, "seq": 1}),
                "\"text\" is not a string but a number",
            ),
            (json!({"from": "a", "seq": 1}), "\"text\" is missing"),
            (json!({"from": "a", "text": "secret"}), "\"seq\" is missing"),
            (
                json!({"from": "a", "text": "secret", "seq": -3}),
                "\"seq\" is -3",
            ),
            (
                json!({"from": "a", "text": "secret", "seq": 1.5}),
                "\"seq\" is 1.5",
            ),
            (
                json!({"from": "a", "text": "secret", "seq": "4"}),
                "\"seq\" is not a number but a string",
            ),
            (
                json!({"from": ["a"], "text": "secret", "seq": 1}),
                "\"from\" is not a string but an array",
            ),
        ];
        for (frame, reason) in cases {
            let e = parse(frame.clone()).unwrap_err();
            assert!(e.reason.starts_with(reason), "{frame}: {}", e.reason);
            assert!(!e.reason.contains("secret"));
        }
        assert_eq!(
            parse(json!({"from": "a", "text": "t", "seq": -3}))
                .unwrap_err()
                .seq
                .as_deref(),
            Some("-3")
        );
    }

    #[test]
    fn lone_surrogates_are_read_as_wtf8_bytes() {
        let frame = r#"{"type":"room_message","from":"a\udc80","text":"x\udc80y\ud800","seq":3,"timestamp":9,"extra":"\udfff"}"#;
        assert!(serde_json::from_str::<Value>(frame).is_err());
        let m = RoomMessage::from_lenient(frame).unwrap().unwrap();
        assert_eq!(m.text, b"x\xed\xb2\x80y\xed\xa0\x80");
        assert_eq!(m.from, b"a\xed\xb2\x80");
        assert_eq!((m.seq, m.timestamp), (3, Some(9)));
        let no_seq = r#"{"type":"room_message","from":"a","text":"\udc80"}"#;
        assert_eq!(
            RoomMessage::from_lenient(no_seq)
                .unwrap()
                .unwrap_err()
                .reason,
            "\"seq\" is missing"
        );
        assert!(RoomMessage::from_lenient(r#"{"type":"task_assign","x":"\udc80"}"#).is_none());
        assert!(RoomMessage::from_lenient("{").is_none());
    }

    #[test]
    fn a_seq_at_or_below_the_mark_is_a_replay_unless_the_hub_restarted_its_room() {
        assert!(is_new(None, 0, None));
        let mark = Some(Mark {
            seq: 10,
            timestamp: Some(1000),
        });
        assert!(is_new(mark, 11, None));
        assert!(!is_new(mark, 10, Some(1000)));
        assert!(!is_new(mark, 9, Some(999)));
        assert!(!is_new(mark, 10, None));
        // The hub restarted: seq from 1 again, later in time.
        assert!(is_new(mark, 1, Some(5000)));
        // Without the mark's timestamp, only seq counts.
        assert!(!is_new(
            Some(Mark {
                seq: 10,
                timestamp: None
            }),
            1,
            Some(5000)
        ));
    }

    #[test]
    fn own_messages_are_the_agent_id_or_name_exactly() {
        assert!(is_own(b"agent-1", "agent-1", "Builder"));
        assert!(is_own(b"Builder", "agent-1", "Builder"));
        assert!(!is_own(b"agent-10", "agent-1", "Builder"));
        assert!(!is_own(b"builder", "agent-1", "Builder"));
    }

    #[test]
    fn a_mention_is_at_name_or_the_name_as_a_word_of_its_own() {
        for text in [
            "@agent-1 please",
            "hey agent-1.",
            "agent-1",
            "(AGENT-1)",
            "x\n@agent-1\n",
        ] {
            assert!(mentions(text.as_bytes(), "agent-1"), "{text}");
        }
        for text in [
            "agent-10 please",
            "my-agent-1",
            "agent_1",
            "agent-",
            "",
            "@agent",
        ] {
            assert!(!mentions(text.as_bytes(), "agent-1"), "{text}");
        }
        assert!(mentions(b"ask Build Bot now", "Build Bot"));
        assert!(mentions(b"bytes \xff then agent-1", "agent-1"));
        assert!(!mentions(b"anything", ""));
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_one_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Bucket::new(3, ms(100), t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + ms(99)));
        assert!(b.take(t0 + ms(100)));
        assert!(!b.take(t0 + ms(150)));
        assert!(b.take(t0 + ms(200)));
        // A long pause refills to the burst, never beyond.
        let later = t0 + ms(10_000);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn a_flood_gets_at_most_burst_plus_elapsed_over_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, Duration::from_millis(50), t0);
        // 1 000 tries over one second.
        let allowed = (0..1000)
            .filter(|i| b.take(t0 + Duration::from_millis(*i)))
            .count();
        assert!((3..=3 + 1000 / 50).contains(&allowed), "{allowed}");
    }

    #[test]
    fn values_that_cannot_be_environment_strings_are_omitted() {
        let mut m = RoomMessage {
            from: b"ann".to_vec(),
            text: vec![b'a'; ENV_VALUE_MAX + 1],
            seq: 4,
            message_type: Some(b"chat".to_vec()),
            timestamp: Some(12),
        };
        let env = environment(&m);
        assert_eq!(env[0], ("ROOM_FROM", EnvValue::Set(b"ann".to_vec())));
        assert_eq!(env[1], ("ROOM_TEXT", EnvValue::Omitted));
        assert_eq!(env[2], ("ROOM_SEQ", EnvValue::Set(b"4".to_vec())));
        assert_eq!(env[4], ("ROOM_TIMESTAMP", EnvValue::Set(b"12".to_vec())));
        m.text = b"a\0b".to_vec();
        assert_eq!(environment(&m)[1], ("ROOM_TEXT", EnvValue::Omitted));
        m.text = vec![b'a'; ENV_VALUE_MAX];
        assert!(matches!(environment(&m)[1].1, EnvValue::Set(_)));
    }
}
