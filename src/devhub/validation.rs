//! The hub's input validation, as its `Validation` and `Validation.Schemas` modules do it: one
//! schema per WebSocket frame `type` (and per HTTP body), required fields present, not null
//! and of their type, optional fields typed when present and not null, unknown fields allowed,
//! string length limits by field name. Errors come out in the hub's order (required fields,
//! then optional ones, each by field name) and shape (`field`, `error`, `detail`, and `value`
//! or `known_types` where the hub adds them). Pure functions, no state: counting violations is
//! [`violations`](super::violations)' job.

use serde_json::{json, Map, Value};

/// A field's type in a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    Int,
    Number,
    Map,
    Bool,
    ListOf(Item),
}

/// The type of a list's items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Str,
    Map,
}

struct Schema {
    required: &'static [(&'static str, Ty)],
    optional: &'static [(&'static str, Ty)],
}

use Ty::{Bool, Int, ListOf, Number, Str};

/// The WebSocket schemas, sorted by type; each field list sorted by name (the order the hub's
/// small Erlang maps iterate in, hence the order of its errors).
#[rustfmt::skip]
const WS_SCHEMAS: &[(&str, Schema)] = &[
    ("channel_history", Schema { required: &[("channel", Str), ("type", Str)], optional: &[("limit", Int), ("since", Int)] }),
    ("channel_publish", Schema { required: &[("channel", Str), ("payload", Ty::Map), ("type", Str)], optional: &[("message_type", Str), ("reply_to", Str)] }),
    ("channel_subscribe", Schema { required: &[("channel", Str), ("type", Str)], optional: &[] }),
    ("channel_unsubscribe", Schema { required: &[("channel", Str), ("type", Str)], optional: &[] }),
    ("identify", Schema { required: &[("agent_id", Str), ("token", Str), ("type", Str)], optional: &[("capabilities", ListOf(Item::Str)), ("name", Str), ("ollama_url", Str), ("status", Str)] }),
    ("list_agents", Schema { required: &[("type", Str)], optional: &[] }),
    ("list_channels", Schema { required: &[("type", Str)], optional: &[] }),
    ("message", Schema { required: &[("payload", Ty::Map), ("type", Str)], optional: &[("message_type", Str), ("reply_to", Str), ("to", Str)] }),
    ("ollama_report", Schema { required: &[("ollama_url", Str), ("type", Str)], optional: &[] }),
    ("ping", Schema { required: &[("type", Str)], optional: &[] }),
    ("resource_report", Schema { required: &[("type", Str)], optional: &[("cpu_percent", Number), ("ram_total_bytes", Number), ("ram_used_bytes", Number), ("timestamp", Number), ("vram_total_bytes", Number), ("vram_used_bytes", Number)] }),
    ("state_report", Schema { required: &[("task_id", Str), ("type", Str)], optional: &[("assigned_at", Number), ("generation", Int), ("status", Str)] }),
    ("status", Schema { required: &[("status", Str), ("type", Str)], optional: &[] }),
    ("task_accepted", Schema { required: &[("task_id", Str), ("type", Str)], optional: &[] }),
    ("task_complete", Schema { required: &[("generation", Int), ("task_id", Str), ("type", Str)], optional: &[("result", Ty::Map), ("tokens_used", Int), ("verification_history", ListOf(Item::Map)), ("verification_report", Ty::Map)] }),
    ("task_failed", Schema { required: &[("generation", Int), ("task_id", Str), ("type", Str)], optional: &[("error", Str), ("reason", Str)] }),
    ("task_progress", Schema { required: &[("task_id", Str), ("type", Str)], optional: &[("execution_event", Ty::Map), ("progress", Int)] }),
    ("task_recovering", Schema { required: &[("task_id", Str), ("type", Str)], optional: &[] }),
    ("wake_result", Schema { required: &[("status", Str), ("task_id", Str), ("type", Str)], optional: &[("attempt", Int), ("error", Str), ("reason", Str)] }),
];

/// The HTTP bodies the dev hub validates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpBody {
    PostTask,
    PushTask,
    Register,
}

const POST_TASK: Schema = Schema {
    required: &[("description", Str)],
    optional: &[
        ("branch", Str),
        ("complete_by", Int),
        ("complexity_tier", Str),
        ("depends_on", ListOf(Item::Str)),
        ("file_hints", ListOf(Item::Map)),
        ("goal_id", Str),
        ("max_retries", Int),
        ("max_verification_retries", Int),
        ("metadata", Ty::Map),
        ("needed_capabilities", ListOf(Item::Str)),
        ("priority", Str),
        ("repo", Str),
        ("skip_verification", Bool),
        ("success_criteria", ListOf(Item::Str)),
        ("verification_steps", ListOf(Item::Map)),
        ("verification_timeout_ms", Int),
    ],
};
const PUSH_TASK: Schema = Schema {
    required: &[("agent_id", Str), ("description", Str)],
    optional: &[("metadata", Ty::Map)],
};
const REGISTER: Schema = Schema {
    required: &[("agent_id", Str)],
    optional: &[],
};

/// String length limits by field name, in characters, whatever the schema.
fn length_limit(field: &str) -> Option<usize> {
    Some(match field {
        "agent_id" => 128,
        "description" => 10_000,
        "status" | "token" | "name" => 256,
        "channel" => 64,
        "error" | "reason" => 2_000,
        "repo" | "ollama_url" => 512,
        _ => return None,
    })
}

/// Every WebSocket `type` with a schema, sorted.
pub(crate) fn known_types() -> Vec<&'static str> {
    WS_SCHEMAS.iter().map(|(name, _)| *name).collect()
}

fn ws_schema(frame_type: &str) -> Option<&'static Schema> {
    WS_SCHEMAS
        .binary_search_by(|(name, _)| name.cmp(&frame_type))
        .ok()
        .map(|i| &WS_SCHEMAS[i].1)
}

/// What validating a frame found.
#[derive(Debug, PartialEq)]
pub(crate) enum Invalid {
    /// Not a JSON object at all: the hub's failure handling then crashes the socket's process
    /// (`Map.get/3` on a non-map) and the connection ends with 1011.
    NotAnObject(Value),
    /// The errors, as the hub formats them for `validation_failed`.
    Errors(Vec<Value>),
}

/// Checks one parsed WebSocket frame against the schema of its `type`.
pub(crate) fn validate_ws(frame: &Value) -> Result<(), Invalid> {
    let Value::Object(fields) = frame else {
        let error =
            json!({"field": "message", "error": "wrong_type", "detail": "expected JSON object"});
        return Err(Invalid::NotAnObject(error));
    };
    match fields.get("type") {
        Some(Value::String(kind)) => match ws_schema(kind) {
            Some(schema) => check(fields, schema),
            None => Err(Invalid::Errors(vec![json!({
                "field": "type", "error": "unknown_message_type",
                "detail": format!("unknown message type '{kind}'"),
                "known_types": known_types(),
            })])),
        },
        Some(other) => Err(Invalid::Errors(vec![wrong_type("type", "string", other)])),
        None => Err(Invalid::Errors(vec![required("type")])),
    }
}

/// Checks an HTTP body (already a JSON object) against its schema: the errors for a 422.
pub(crate) fn validate_http(body: &Map<String, Value>, which: HttpBody) -> Result<(), Vec<Value>> {
    let schema = match which {
        HttpBody::PostTask => &POST_TASK,
        HttpBody::PushTask => &PUSH_TASK,
        HttpBody::Register => &REGISTER,
    };
    check(body, schema).map_err(|invalid| match invalid {
        Invalid::Errors(errors) => errors,
        Invalid::NotAnObject(error) => vec![error],
    })
}

/// The extra checks of `POST /api/tasks`: file hints and verification steps are objects with
/// the hub's required keys; `complexity_tier` is one it knows.
pub(crate) fn validate_enrichment(body: &Map<String, Value>) -> Result<(), Vec<Value>> {
    let mut errors = Vec::new();
    if let Some(Value::Array(hints)) = body.get("file_hints") {
        for (i, hint) in hints.iter().enumerate() {
            let field = format!("file_hints[{i}]");
            let Value::Object(hint) = hint else {
                errors.push(json!({"field": field, "error": "wrong_type",
                    "detail": format!("expected object, got {}", type_name(hint))}));
                continue;
            };
            if !non_empty_string(hint.get("path")) {
                errors.push(
                    json!({"field": format!("{field}.path"), "error": "required",
                    "detail": "file hint must have a non-empty string 'path'"}),
                );
            } else if let Some(reason) = hint.get("reason").filter(|r| !r.is_string()) {
                errors.push(
                    json!({"field": format!("{field}.reason"), "error": "wrong_type",
                    "detail": format!("expected string, got {}", type_name(reason))}),
                );
            }
        }
    }
    if let Some(Value::Array(steps)) = body.get("verification_steps") {
        for (i, step) in steps.iter().enumerate() {
            let field = format!("verification_steps[{i}]");
            let Value::Object(step) = step else {
                errors.push(json!({"field": field, "error": "wrong_type",
                    "detail": format!("expected object, got {}", type_name(step))}));
                continue;
            };
            if !non_empty_string(step.get("type")) {
                errors.push(
                    json!({"field": format!("{field}.type"), "error": "required",
                    "detail": "verification step must have a non-empty string 'type'"}),
                );
            } else if !non_empty_string(step.get("target")) {
                errors.push(
                    json!({"field": format!("{field}.target"), "error": "required",
                    "detail": "verification step must have a non-empty string 'target'"}),
                );
            } else if let Some(d) = step.get("description").filter(|d| !d.is_string()) {
                errors.push(
                    json!({"field": format!("{field}.description"), "error": "wrong_type",
                    "detail": format!("expected string, got {}", type_name(d))}),
                );
            }
        }
    }
    if let Some(Value::String(tier)) = body.get("complexity_tier") {
        if !["trivial", "standard", "complex", "unknown"].contains(&tier.as_str()) {
            errors.push(json!({"field": "complexity_tier", "error": "invalid_value",
                "detail": "must be one of: trivial, standard, complex, unknown", "value": tier}));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn non_empty_string(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::String(s)) if !s.is_empty())
}

fn check(fields: &Map<String, Value>, schema: &Schema) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    for (name, ty) in schema.required {
        match fields.get(*name) {
            None | Some(Value::Null) => errors.push(required(name)),
            Some(value) => check_field(&mut errors, name, value, *ty),
        }
    }
    for (name, ty) in schema.optional {
        match fields.get(*name) {
            None | Some(Value::Null) => {}
            Some(value) => check_field(&mut errors, name, value, *ty),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid::Errors(errors))
    }
}

/// The type check, then (for strings) the length check, as the hub chains them.
fn check_field(errors: &mut Vec<Value>, name: &str, value: &Value, ty: Ty) {
    match ty {
        Ty::ListOf(item) => match value {
            Value::Array(items) => {
                if let Some((i, bad)) = items.iter().enumerate().find(|(_, v)| !item_ok(v, item)) {
                    let expected = match item {
                        Item::Str => "string",
                        Item::Map => "object",
                    };
                    errors.push(wrong_type(&format!("{name}[{i}]"), expected, bad));
                }
            }
            other => errors.push(wrong_type(name, "array", other)),
        },
        _ if !type_ok(value, ty) => errors.push(wrong_type(name, expected_name(ty), value)),
        _ => {}
    }
    if let (Value::String(text), Some(max)) = (value, length_limit(name)) {
        if text.chars().count() > max {
            let head: String = text.chars().take(50).collect();
            errors.push(json!({"field": name, "error": "too_long",
                "detail": format!("exceeds maximum length of {max} characters"),
                "value": format!("{head}...")}));
        }
    }
}

fn type_ok(value: &Value, ty: Ty) -> bool {
    match ty {
        Ty::Str => value.is_string(),
        Ty::Int => is_integer(value),
        Ty::Number => value.is_number(),
        Ty::Map => value.is_object(),
        Ty::Bool => value.is_boolean(),
        Ty::ListOf(_) => value.is_array(),
    }
}

fn item_ok(value: &Value, item: Item) -> bool {
    match item {
        Item::Str => value.is_string(),
        Item::Map => value.is_object(),
    }
}

/// An integer as Jason decodes one: a JSON number without fraction or exponent.
pub(crate) fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64()
}

fn expected_name(ty: Ty) -> &'static str {
    match ty {
        Ty::Str => "string",
        Ty::Int => "integer",
        Ty::Number => "number",
        Ty::Map => "object",
        Ty::Bool => "boolean",
        Ty::ListOf(_) => "array",
    }
}

/// The hub's name for a value's type in error details.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(_) if is_integer(value) => "integer",
        Value::Number(_) => "float",
        Value::Bool(_) => "boolean",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

fn required(field: &str) -> Value {
    json!({"field": field, "error": "required", "detail": "field is required"})
}

fn wrong_type(field: &str, expected: &str, value: &Value) -> Value {
    json!({"field": field, "error": "wrong_type",
        "detail": format!("expected {expected}, got {}", type_name(value)), "value": value})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(frame: Value) -> Vec<Value> {
        match validate_ws(&frame) {
            Err(Invalid::Errors(errors)) => errors,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn schemas_are_sorted_and_fields_in_the_hubs_order() {
        let names = known_types();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        assert_eq!(names.len(), 19);
        for (_, schema) in WS_SCHEMAS {
            for list in [schema.required, schema.optional] {
                assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
            }
        }
    }

    mod report_fields {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1000i32..1000).prop_map(|n| Value::from(f64::from(n) + 0.5)),
                "[a-z]{0,5}".prop_map(Value::from),
                Just(json!({"status": "pass"})),
                Just(json!([])),
                Just(json!([{"status": "fail"}, {"status": "pass"}])),
                Just(json!([{"status": "pass"}, 3])),
            ]
        }

        proptest! {
            /// Whatever an agent's result holds in the three fields, either the sidecar
            /// refuses it as invalid, or the `task_complete` it sends passes the hub's schema
            /// with every field the result had of the right type at the top level.
            #[test]
            fn a_result_is_refused_or_its_task_complete_passes_the_hubs_schema(
                tokens in value(), report in value(), history in value(), absent in 0u8..8
            ) {
                let mut result = serde_json::Map::new();
                result.insert("status".into(), json!("success"));
                for (bit, key, v) in [(1, "tokens_used", tokens), (2, "verification_report", report),
                    (4, "verification_history", history)] {
                    if absent & bit == 0 {
                        result.insert(key.into(), v);
                    }
                }
                let frame = crate::protocol::Outgoing::task_complete("t".into(), 1, result.clone());
                let wire: Value = serde_json::from_str(&frame.encode().unwrap()).unwrap();
                match crate::result_file::report_fields(&result) {
                    Ok(()) => {
                        prop_assert!(validate_ws(&wire).is_ok(), "{wire}");
                        for key in ["tokens_used", "verification_report", "verification_history"] {
                            let v = result.get(key).filter(|v| !v.is_null());
                            prop_assert_eq!(wire.get(key), v, "{}", key);
                        }
                    }
                    Err(why) => prop_assert!(why.contains("result field"), "{why}"),
                }
                prop_assert_eq!(&wire["result"], &Value::Object(result));
            }
        }
    }

    #[test]
    fn sidecar_frames_pass() {
        for frame in [
            json!({"type": "identify", "agent_id": "a", "token": "t", "capabilities": ["x"],
                "client_type": "sidecar", "protocol_version": 1, "ollama_url": "http://h:1"}),
            json!({"type": "ping", "protocol_version": 1}),
            json!({"type": "task_complete", "task_id": "t", "generation": 2, "result": {}}),
            json!({"type": "task_failed", "task_id": "t", "generation": 0, "error": "e"}),
            json!({"type": "task_progress", "task_id": "t", "progress": 5, "execution_event": {}}),
            json!({"type": "state_report", "task_id": "t", "assigned_at": 1.5, "generation": null}),
            json!({"type": "resource_report", "cpu_percent": 12.5, "ram_used_bytes": 1}),
            json!({"type": "wake_result", "task_id": "t", "status": "success", "attempt": 1}),
        ] {
            assert_eq!(validate_ws(&frame), Ok(()), "{frame}");
        }
    }

    #[test]
    fn errors_have_the_hubs_shape_and_order() {
        let found = errors(
            json!({"type": "task_complete", "generation": "1", "result": [],
            "tokens_used": 1.5}),
        );
        assert_eq!(
            found,
            [
                json!({"field": "generation", "error": "wrong_type",
                    "detail": "expected integer, got string", "value": "1"}),
                json!({"field": "task_id", "error": "required", "detail": "field is required"}),
                json!({"field": "result", "error": "wrong_type",
                    "detail": "expected object, got array", "value": []}),
                json!({"field": "tokens_used", "error": "wrong_type",
                    "detail": "expected integer, got float", "value": 1.5}),
            ]
        );
        let found = errors(json!({"type": "identify", "agent_id": "a", "token": null,
            "capabilities": ["ok", 3]}));
        assert_eq!(found[0]["field"], "token");
        assert_eq!(
            found[1],
            json!({"field": "capabilities[1]", "error": "wrong_type",
            "detail": "expected string, got integer", "value": 3})
        );
    }

    #[test]
    fn unknown_and_odd_types() {
        let found = errors(json!({"type": "task_rejected", "task_id": "t", "reason": "busy"}));
        assert_eq!(found[0]["error"], "unknown_message_type");
        assert_eq!(found[0]["detail"], "unknown message type 'task_rejected'");
        assert_eq!(found[0]["known_types"].as_array().map(Vec::len), Some(19));
        assert_eq!(
            errors(json!({"type": 5}))[0]["detail"],
            "expected string, got integer"
        );
        assert_eq!(errors(json!({}))[0], required("type"));
        assert!(matches!(
            validate_ws(&json!([1])),
            Err(Invalid::NotAnObject(_))
        ));
        assert!(matches!(
            validate_ws(&Value::Null),
            Err(Invalid::NotAnObject(_))
        ));
    }

    #[test]
    fn lengths_are_counted_in_characters() {
        let ok = json!({"type": "task_failed", "task_id": "t", "generation": 1,
            "error": "é".repeat(2000)});
        assert_eq!(validate_ws(&ok), Ok(()));
        let long = json!({"type": "task_failed", "task_id": "t", "generation": 1,
            "reason": "x".repeat(2001)});
        let found = errors(long);
        assert_eq!(found[0]["error"], "too_long");
        assert_eq!(
            found[0]["detail"],
            "exceeds maximum length of 2000 characters"
        );
        assert_eq!(found[0]["value"], format!("{}...", "x".repeat(50)));
        let id = json!({"type": "identify", "agent_id": "a".repeat(129), "token": "t"});
        assert_eq!(errors(id)[0]["field"], "agent_id");
    }

    #[test]
    fn http_bodies() {
        let body = json!({"description": 5, "priority": "high", "skip_verification": "yes"});
        let found = validate_http(body.as_object().unwrap(), HttpBody::PostTask).unwrap_err();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1]["field"], "skip_verification");
        let body = json!({"agent_id": "a"});
        assert!(validate_http(body.as_object().unwrap(), HttpBody::Register).is_ok());
        let body = json!({"file_hints": [{"path": ""}, 3], "verification_steps": [{"type": "t"}],
            "complexity_tier": "huge"});
        let found = validate_enrichment(body.as_object().unwrap()).unwrap_err();
        let fields: Vec<&str> = found.iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "file_hints[0].path",
                "file_hints[1]",
                "verification_steps[0].target",
                "complexity_tier"
            ]
        );
    }
}
