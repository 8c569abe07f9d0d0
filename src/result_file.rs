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
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "result file is JSON but not an object: it holds {}",
            crate::config::kind_of(&other)
        )),
        Err(e) => Err(format!("result file is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
