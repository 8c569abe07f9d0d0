//! The dashboard's live view of each task: the `execution_event` of every `task_progress`
//! frame the hub took (validated, not rate-limited), as the hub's dashboard forwards it —
//! only `event_type` (`stdout` when absent), `text`, `tokens_so_far`, `model` and
//! `timestamp` — in the order received. The dashboard appends `text` per event type, so
//! [`LiveView::text`] is what it would show. Pure; bounded per task (a dev hub may run long).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// The most text kept per task; events past it are counted, not kept.
const TEXT_KEPT_MAX: usize = 64 * 1024 * 1024;

/// The fields the dashboard forwards.
const FORWARDED: &[&str] = &["event_type", "text", "tokens_so_far", "model", "timestamp"];

#[derive(Debug, Default)]
pub(crate) struct LiveView {
    tasks: HashMap<String, TaskLive>,
}

#[derive(Debug, Default)]
struct TaskLive {
    /// `task_progress` frames taken, with or without an event.
    frames: u64,
    events: Vec<Value>,
    text_bytes: usize,
    /// Events dropped here because the kept text reached its bound.
    dropped: u64,
}

impl LiveView {
    /// A `task_progress` frame the hub took.
    pub fn record(&mut self, task_id: &str, frame: &Value) {
        let live = self.tasks.entry(task_id.to_string()).or_default();
        live.frames += 1;
        let Some(event) = frame.get("execution_event").and_then(Value::as_object) else {
            return;
        };
        let mut shown: Map<String, Value> = FORWARDED
            .iter()
            .filter_map(|k| event.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        if !shown.get("event_type").is_some_and(Value::is_string) {
            shown.insert("event_type".into(), json!("stdout"));
        }
        let bytes = shown
            .get("text")
            .and_then(Value::as_str)
            .map_or(0, str::len);
        if live.text_bytes + bytes > TEXT_KEPT_MAX {
            live.dropped += 1;
            return;
        }
        live.text_bytes += bytes;
        live.events.push(Value::Object(shown));
    }

    /// Every `text`, concatenated in the order received (all event types).
    pub fn text(&self, task_id: &str) -> String {
        self.tasks.get(task_id).map_or_else(String::new, |live| {
            live.events
                .iter()
                .filter_map(|e| e.get("text").and_then(Value::as_str))
                .collect()
        })
    }

    /// `task_progress` frames taken for the task.
    pub fn frames(&self, task_id: &str) -> u64 {
        self.tasks.get(task_id).map_or(0, |l| l.frames)
    }

    /// The view as `GET /api/dev/tasks/:id/live` shows it: the text per event type, the
    /// events, the frame count.
    pub fn to_json(&self, task_id: &str) -> Value {
        let Some(live) = self.tasks.get(task_id) else {
            return json!({"task_id": task_id, "frames": 0, "events": [], "text": {}, "dropped": 0});
        };
        let mut text: Map<String, Value> = Map::new();
        for e in &live.events {
            if let (Some(kind), Some(t)) = (
                e.get("event_type").and_then(Value::as_str),
                e.get("text").and_then(Value::as_str),
            ) {
                let slot = text.entry(kind.to_string()).or_insert_with(|| json!(""));
                if let Value::String(s) = slot {
                    s.push_str(t);
                }
            }
        }
        json!({"task_id": task_id, "frames": live.frames, "events": live.events,
            "text": text, "dropped": live.dropped})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_appended_per_type_in_order_and_only_forwarded_fields_are_kept() {
        let mut v = LiveView::default();
        v.record(
            "t",
            &json!({"type": "task_progress", "task_id": "t", "progress": 5}),
        );
        v.record("t", &json!({"execution_event": {"text": "a", "secret": 1}}));
        v.record(
            "t",
            &json!({"execution_event": {"event_type": "token", "text": "b", "tokens_so_far": 3}}),
        );
        v.record("t", &json!({"execution_event": {"text": "c"}}));
        assert_eq!(v.text("t"), "abc");
        assert_eq!(v.frames("t"), 4);
        let j = v.to_json("t");
        assert_eq!(j["text"], json!({"stdout": "ac", "token": "b"}));
        assert!(j["events"][0].get("secret").is_none());
        assert_eq!(v.text("other"), "");
    }
}
