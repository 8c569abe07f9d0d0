//! The agent's result file, `<task_id>.json`: its bytes parsed into the result object, or a
//! precise reason why they are not one.
//!
//! A pure rule, apart from the ResultsActor that watches the directory and decides when a
//! file is complete (`actors/results.rs`): this module does no I/O and never panics, whatever
//! the bytes (it is fuzzed: `fuzz/fuzz_targets/result_file.rs`). It does not decide what a
//! result means (success or failure): the task queue does.
//!
//! What the caller needs to tell apart:
//! - an object: the result;
//! - [`is_blank`] bytes (empty, or JSON whitespace only): *not a result yet* — the agent has
//!   created the file and not written it; the caller waits for the next change and never
//!   declares such a file invalid;
//! - anything else: not a valid result, with the reason ([`parse`]'s `Err`), which the caller
//!   reports (`invalid_result`) once the file is complete.

use serde_json::{Map, Value};

/// The deepest nesting a result may have: the result object itself is level 1, an object or
/// list inside it level 2, and so on. The result is stored in `queue_file` four levels down
/// (`{"tasks":[{"outcome":{"result":…}}]}`, and the same under `refused`) and sent one level
/// down (`{"type":"task_complete","result":…}`), and every reader of those (the next start's
/// queue load, the hub's frame parser) refuses JSON nested 128 levels or more. A result
/// deeper than this is `invalid_result` at once, so that whatever an agent writes, the
/// queue file loads again and the frame parses. The headroom (100 + 4 against 127) leaves
/// room for wrapping a later format may add.
pub const MAX_DEPTH: usize = 100;

/// How deeply a JSON value nests: a scalar is 0, an empty object or list 1, and each
/// object or list inside adds one.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The UTF-8 byte order mark some editors and Windows tools put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Whether the file holds nothing yet: no bytes, or only JSON whitespace (and perhaps a
/// byte order mark).
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes
        .strip_prefix(BOM)
        .unwrap_or(bytes)
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Parses a result file: the JSON object it holds, or why it is not one. A leading UTF-8 byte
/// order mark is ignored (RFC 8259 allows a parser to). Blank input is an error here too
/// ("empty"); see [`is_blank`] for why a caller checks it first.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if is_blank(bytes) {
        return Err(if bytes.is_empty() {
            "result file is empty".to_string()
        } else {
            "result file holds only whitespace".to_string()
        });
    }
    let text = bytes.strip_prefix(BOM).unwrap_or(bytes);
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(object)) => {
            let levels = 1 + object.values().map(depth).max().unwrap_or(0);
            if levels > MAX_DEPTH {
                return Err(format!(
                    "result file nests {levels} levels deep; at most {MAX_DEPTH} are accepted \
                     (the queue file and the hub's frame parser must be able to read it back)"
                ));
            }
            Ok(object)
        }
        Ok(other) => Err(format!(
            "result file is JSON but not an object: it holds {}",
            crate::config::kind_of(&other)
        )),
        Err(e) => Err(format!("result file is not valid JSON: {e}")),
    }
}

/// The fields of a successful result that the hub reads at the top level of
/// `task_complete`, checked against the types its schema accepts there: `tokens_used` an
/// integer, `verification_report` an object, `verification_history` a list of objects. Each
/// may be absent (or `null`). A value of another type would make the hub refuse the whole
/// report (`validation_failed`), so the result is not valid: the reason names the field.
pub fn report_fields(result: &Map<String, Value>) -> Result<(), String> {
    let wrong = |key: &str, expected: &str, v: &Value| {
        Err(format!(
            "result field \"{key}\" must be {expected} (the hub refuses anything else), got {}",
            crate::config::kind_of(v)
        ))
    };
    match result.get("tokens_used") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_i64().is_some() => {}
        Some(v) => return wrong("tokens_used", "a whole number", v),
    }
    match result.get("verification_report") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(v) => return wrong("verification_report", "an object", v),
    }
    match result.get("verification_history") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
                return Err(format!(
                    "result field \"verification_history\" must be a list of objects (the hub \
                     refuses anything else); item {i} is {}",
                    crate::config::kind_of(item)
                ));
            }
        }
        Some(v) => return wrong("verification_history", "a list of objects", v),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_fields_of_the_types_the_hub_accepts_pass() {
        let ok = |v: Value| report_fields(v.as_object().unwrap());
        assert!(ok(serde_json::json!({})).is_ok());
        assert!(ok(
            serde_json::json!({"tokens_used": 12, "verification_report": {"status": "pass"},
            "verification_history": [{"status": "fail"}, {"status": "pass"}]})
        )
        .is_ok());
        assert!(ok(
            serde_json::json!({"tokens_used": null, "verification_report": null,
            "verification_history": []})
        )
        .is_ok());
        for (bad, field) in [
            (serde_json::json!({"tokens_used": 1.5}), "tokens_used"),
            (serde_json::json!({"tokens_used": "12"}), "tokens_used"),
            (serde_json::json!({"tokens_used": u64::MAX}), "tokens_used"),
            (
                serde_json::json!({"verification_report": [1]}),
                "verification_report",
            ),
            (
                serde_json::json!({"verification_report": "pass"}),
                "verification_report",
            ),
            (
                serde_json::json!({"verification_history": {"a": 1}}),
                "verification_history",
            ),
            (
                serde_json::json!({"verification_history": [{}, 3]}),
                "verification_history",
            ),
        ] {
            let why = ok(bad.clone()).unwrap_err();
            assert!(why.contains(field), "{bad}: {why}");
        }
        assert!(ok(serde_json::json!({"verification_history": [{}, 3]}))
            .unwrap_err()
            .contains("item 1 is a number"));
    }

    #[test]
    fn an_object_is_the_result() {
        let map = parse(br#"{"status":"success","output":{"n":1}}"#).unwrap();
        assert_eq!(map["status"], "success");
        assert_eq!(map["output"]["n"], 1);
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let map = parse(b"\xEF\xBB\xBF{\"status\":\"success\"}\n").unwrap();
        assert_eq!(map["status"], "success");
    }

    #[test]
    fn blank_is_not_a_result_yet() {
        for bytes in [
            &b""[..],
            b" ",
            b"\n\r\t ",
            b"\xEF\xBB\xBF",
            b"\xEF\xBB\xBF  \n",
        ] {
            assert!(is_blank(bytes), "{bytes:?}");
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
        assert_eq!(parse(b"").unwrap_err(), "result file is empty");
        assert!(!is_blank(b" {"));
        assert!(!is_blank(b"\x00"));
    }

    #[test]
    fn every_other_input_has_a_precise_reason() {
        let reason = |b: &[u8]| parse(b).unwrap_err();
        assert_eq!(
            reason(b"[1,2]"),
            "result file is JSON but not an object: it holds a list"
        );
        assert_eq!(
            reason(b"\"done\""),
            "result file is JSON but not an object: it holds a string"
        );
        assert_eq!(
            reason(br#"{"status":"succ"#),
            "result file is not valid JSON: EOF while parsing a string at line 1 column 15"
        );
        assert!(reason(b"{\"a\":\"\xff\"}").contains("invalid unicode"));
        assert!(reason(b"{} {}").contains("trailing characters"));
        // Nesting deeper than serde_json's recursion limit is an error, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(reason(deep.as_bytes()).contains("recursion limit"));
    }

    /// `{"d":{"d":…{"status":"success"}}}`: an object nested `levels` deep.
    fn nested(levels: usize) -> String {
        format!(
            "{}{{\"status\":\"success\"}}{}",
            "{\"d\":".repeat(levels - 1),
            "}".repeat(levels - 1)
        )
    }

    #[test]
    fn a_result_deeper_than_max_depth_is_refused_with_its_depth() {
        let at_limit = parse(nested(MAX_DEPTH).as_bytes()).unwrap();
        assert_eq!(depth(&Value::Object(at_limit)), MAX_DEPTH);
        // Deeper, but still within what serde_json reads: refused by the rule, not the parser.
        for levels in [MAX_DEPTH + 1, 124, 126] {
            let why = parse(nested(levels).as_bytes()).unwrap_err();
            assert!(
                why.starts_with(&format!("result file nests {levels} levels deep")),
                "{why}"
            );
        }
        // Lists count as levels too.
        let list = format!(
            "{{\"l\":{}1{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(parse(list.as_bytes())
            .unwrap_err()
            .contains("nests 101 levels"));
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!([])), 1);
        assert_eq!(depth(&serde_json::json!({"a": [{}]})), 3);
    }
}
