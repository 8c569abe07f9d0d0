//! Any bytes as an agent's result file: `result_file::parse` must give the object or a
//! reason, never panic; blank input is never a result.
#![no_main]

use agentcom_sidecar::result_file;
use agentcom_sidecar::tasks::model::{Agent, Outcome, QueueState, Role, TaskRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = result_file::parse(data);
    if result_file::is_blank(data) {
        assert!(parsed.is_err(), "blank input parsed as a result");
    }
    if let Ok(object) = parsed {
        // What the queue does with a result: it goes into a `task_complete` frame, and into
        // the queue file, which must load again.
        assert!(serde_json::to_vec(&object).is_ok());
        let outcome = Outcome::Complete { result: object };
        let state = QueueState {
            tasks: vec![TaskRecord {
                task_id: "t".into(),
                generation: 1,
                raw: "{}".into(),
                role: Role::Held,
                released: None,
                agent: Agent::Confirmed,
                outcome: Some(outcome),
                target_type: None,
                model: None,
                accepted_at_ms: 0,
                changed_at_ms: 0,
                lease_at_ms: 0,
            }],
            ..QueueState::default()
        };
        let text = serde_json::to_vec(&state).expect("serialises");
        assert!(QueueState::from_json(&text).is_ok(), "queue file does not load");
    }
});
