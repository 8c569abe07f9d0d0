//! Any bytes as an incoming hub frame: `Incoming::parse` must answer, never panic.
#![no_main]

use agentcom_sidecar::protocol::Incoming;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer hands over text frames only: invalid UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Incoming::parse(text) {
        // Formatting is what the hub actor does with every outcome (log lines).
        Ok(frame) => drop(format!("{frame:?}")),
        Err(e) => drop(e.to_string()),
    }
});
