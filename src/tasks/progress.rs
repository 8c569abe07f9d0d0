//! The agent's progress events on their way to the hub's dashboard: which can be merged,
//! and what waits per task. Pure rules.
//!
//! The dashboard appends each event's `text` to what it shows for the event's `event_type`
//! (`token`, `stdout`, `stderr`, `status`, `error`; `stdout` when absent), so streamed text
//! must arrive whole and in order, while the hub takes only so many frames a minute. So:
//!
//! - a **text event** (one with a string `text`) is never dropped for a newer one: the
//!   text of consecutive events of the same `event_type` is concatenated into one event
//!   (the newer one's other fields win), up to [`FRAME_TEXT_MAX`] bytes of text per event;
//! - an event **without text** (a bare `progress`, a `step`) is a state: a newer one
//!   without text replaces it while it waits;
//! - what waits per task is bounded ([`PENDING_MAX`]): past it, the caller stops reading
//!   the agent's file until enough has been sent (back-pressure), so nothing is lost and
//!   memory stays bounded whatever an agent writes.

use std::collections::VecDeque;

use serde_json::{Map, Value};

/// The most text one `execution_event` carries, in bytes. Longer runs of text go in
/// several events, in order.
pub const FRAME_TEXT_MAX: usize = 32 * 1024;

/// The most a task's waiting events may hold (text bytes plus the other fields' JSON size)
/// before reading its progress file pauses.
pub const PENDING_MAX: usize = 256 * 1024;

/// Reading resumes once what waits is down to this much.
pub const PENDING_RESUME: usize = PENDING_MAX / 2;

/// The `event_type` whose text the dashboard appends this event's `text` to, if it is a text
/// event: `text` a string, and `event_type` a string or absent (the dashboard's default,
/// `stdout`).
pub fn text_kind(event: &Map<String, Value>) -> Option<&str> {
    if !event.get("text").is_some_and(Value::is_string) {
        return None;
    }
    match event.get("event_type") {
        None | Some(Value::Null) => Some("stdout"),
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => None,
    }
}

fn text_len(event: &Map<String, Value>) -> usize {
    event
        .get("text")
        .and_then(Value::as_str)
        .map_or(0, str::len)
}

/// Merges `newer` into `older` when the dashboard shows the pair as it would show them one
/// after the other: two text events of the same `event_type` whose texts fit in one event
/// (texts concatenated; the newer one's other fields win), or two events without text (the
/// newer one wins). Otherwise gives `newer` back.
pub fn merge(
    older: &mut Map<String, Value>,
    newer: Map<String, Value>,
    text_max: usize,
) -> Result<(), Map<String, Value>> {
    match (text_kind(older), text_kind(&newer)) {
        (None, None) => {
            *older = newer;
            Ok(())
        }
        (Some(a), Some(b)) if a == b && text_len(older) + text_len(&newer) <= text_max => {
            let mut text = match older.remove("text") {
                Some(Value::String(s)) => s,
                _ => String::new(),
            };
            for (key, value) in newer {
                match (key.as_str(), value) {
                    ("text", Value::String(more)) => text.push_str(&more),
                    (_, value) => {
                        older.insert(key, value);
                    }
                }
            }
            older.insert("text".into(), Value::String(text));
            Ok(())
        }
        _ => Err(newer),
    }
}

/// What an event costs in memory beyond its contents (the map and its entries), counted
/// against [`PENDING_MAX`] so that many tiny events are bounded as well as a few large ones.
const EVENT_OVERHEAD: usize = 128;

/// What one event counts against [`PENDING_MAX`]: its text, the JSON size of the rest, and
/// [`EVENT_OVERHEAD`].
fn weight(event: &Map<String, Value>) -> usize {
    let others: usize = event
        .iter()
        .filter(|(k, _)| k.as_str() != "text")
        .map(|(k, v)| k.len() + 4 + serde_json::to_string(v).map_or(0, |s| s.len()))
        .sum();
    text_len(event) + others + EVENT_OVERHEAD
}

/// The events of one task waiting to be sent, oldest first, merged as [`merge`] allows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    events: VecDeque<Map<String, Value>>,
    weight: usize,
}

impl Pending {
    /// Adds an event after the others (merged into the last one where it may be). A text
    /// longer than [`FRAME_TEXT_MAX`] is split at character boundaries.
    pub fn push(&mut self, event: Map<String, Value>) {
        for event in split(event) {
            let event = match self.events.back_mut() {
                Some(last) => {
                    let before = weight(last);
                    match merge(last, event, FRAME_TEXT_MAX) {
                        Ok(()) => {
                            self.weight = self.weight - before + weight(last);
                            continue;
                        }
                        Err(event) => event,
                    }
                }
                None => event,
            };
            self.weight += weight(&event);
            self.events.push_back(event);
        }
    }

    /// The oldest event, to send now.
    pub fn pop(&mut self) -> Option<Map<String, Value>> {
        let event = self.events.pop_front()?;
        self.weight = self.weight.saturating_sub(weight(&event));
        Some(event)
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// What waits, in the measure of [`PENDING_MAX`].
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// Whether reading more of the agent's file should wait.
    pub fn full(&self) -> bool {
        self.weight >= PENDING_MAX
    }
}

/// A text event as events of at most [`FRAME_TEXT_MAX`] bytes of text (the other fields on
/// each); any other event as it is.
fn split(mut event: Map<String, Value>) -> Vec<Map<String, Value>> {
    if text_kind(&event).is_none() || text_len(&event) <= FRAME_TEXT_MAX {
        return vec![event];
    }
    let Some(Value::String(text)) = event.remove("text") else {
        return vec![event];
    };
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut cut = rest.len().min(FRAME_TEXT_MAX);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut piece = event.clone();
        piece.insert("text".into(), Value::String(rest[..cut].to_string()));
        out.push(piece);
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ev(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn text_of_the_same_type_is_concatenated_and_other_types_keep_their_place() {
        let mut p = Pending::default();
        p.push(ev(
            json!({"event_type": "token", "text": "Hel", "tokens_so_far": 1}),
        ));
        p.push(ev(
            json!({"event_type": "token", "text": "lo", "tokens_so_far": 2}),
        ));
        p.push(ev(json!({"event_type": "status", "text": "compiling"})));
        p.push(ev(json!({"event_type": "token", "text": "!"})));
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.pop().unwrap(),
            ev(json!({"event_type": "token", "text": "Hello", "tokens_so_far": 2}))
        );
        assert_eq!(p.pop().unwrap()["text"], "compiling");
        assert_eq!(p.pop().unwrap()["text"], "!");
        assert!(p.pop().is_none());
        assert_eq!(p.weight(), 0);
    }

    #[test]
    fn an_event_without_text_is_replaced_by_a_newer_one_but_never_replaces_text() {
        let mut p = Pending::default();
        p.push(ev(json!({"progress": 10})));
        p.push(ev(json!({"progress": 20, "step": "b"})));
        assert_eq!(p.len(), 1);
        p.push(ev(json!({"text": "out"})));
        p.push(ev(json!({"progress": 30})));
        assert_eq!(p.len(), 3);
        assert_eq!(p.pop().unwrap()["progress"], 20);
        assert_eq!(p.pop().unwrap()["text"], "out");
        assert_eq!(p.pop().unwrap()["progress"], 30);
    }

    #[test]
    fn event_type_absent_is_the_dashboards_stdout() {
        let mut p = Pending::default();
        p.push(ev(json!({"text": "a"})));
        p.push(ev(json!({"event_type": "stdout", "text": "b"})));
        assert_eq!(p.len(), 1);
        assert_eq!(p.pop().unwrap()["text"], "ab");
    }

    #[test]
    fn a_long_text_is_split_at_character_boundaries() {
        let mut p = Pending::default();
        let text = "é".repeat(FRAME_TEXT_MAX);
        p.push(ev(json!({"event_type": "stdout", "text": text})));
        let mut joined = String::new();
        while let Some(e) = p.pop() {
            let t = e["text"].as_str().unwrap();
            assert!(t.len() <= FRAME_TEXT_MAX);
            joined.push_str(t);
        }
        assert_eq!(joined, text);
    }

    #[derive(Debug, Clone)]
    enum Line {
        Text(u8, String),
        Bare(u8),
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            4 => (0u8..3, "[a-zé\n]{0,40}").prop_map(|(t, s)| Line::Text(t, s)),
            1 => (0u8..100).prop_map(Line::Bare),
        ]
    }

    const TYPES: [&str; 3] = ["token", "stdout", "stderr"];

    proptest! {
        /// Whatever the interleaving of pushes and pops, the text of each event type comes
        /// out whole and in order, no event carries more than the limit, and the weight
        /// counts exactly what waits.
        #[test]
        fn text_comes_out_whole_and_in_order(
            ops in prop::collection::vec((line(), any::<bool>()), 1..200)
        ) {
            let mut p = Pending::default();
            let mut sent = [String::new(), String::new(), String::new()];
            let mut written = [String::new(), String::new(), String::new()];
            let take = |e: Map<String, Value>, sent: &mut [String; 3]| {
                if let Some(kind) = text_kind(&e) {
                    let i = TYPES.iter().position(|t| *t == kind).unwrap();
                    let t = e["text"].as_str().unwrap();
                    assert!(t.len() <= FRAME_TEXT_MAX);
                    sent[i].push_str(t);
                }
            };
            for (line, pop) in ops {
                match line {
                    Line::Text(t, s) => {
                        written[t as usize].push_str(&s);
                        p.push(ev(json!({"event_type": TYPES[t as usize], "text": s})));
                    }
                    Line::Bare(n) => p.push(ev(json!({"progress": n}))),
                }
                let expected: usize = p.events.iter().map(weight).sum();
                prop_assert_eq!(p.weight(), expected);
                if pop {
                    if let Some(e) = p.pop() {
                        take(e, &mut sent);
                    }
                }
            }
            while let Some(e) = p.pop() {
                take(e, &mut sent);
            }
            prop_assert_eq!(sent, written);
            prop_assert_eq!(p.weight(), 0);
        }
    }
}
