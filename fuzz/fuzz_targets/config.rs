//! Any bytes as a config file: `Config::from_json` must give a config or a config error,
//! never panic, and never echo the token in an error.
#![no_main]

use std::path::Path;

use agentcom_sidecar::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file as UTF-8 and reports anything else as unreadable.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_json(text, Path::new("/nonexistent/fuzz/config.json")) {
        Ok(config) => {
            // What `check-config` and the `startup` line print.
            let effective = config.effective().to_string();
            drop(format!("{config:?}"));
            drop(effective);
        }
        Err(e) => drop(e.to_string()),
    }
});
