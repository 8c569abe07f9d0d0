//! Any bytes as an agent's result file: `result_file::parse` must give the object or a
//! reason, never panic; blank input is never a result.
#![no_main]

use agentcom_sidecar::result_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = result_file::parse(data);
    if result_file::is_blank(data) {
        assert!(parsed.is_err(), "blank input parsed as a result");
    }
    if let Ok(object) = parsed {
        // What the queue does with a result: it goes into a `task_complete` frame.
        assert!(serde_json::to_vec(&object).is_ok());
    }
});
