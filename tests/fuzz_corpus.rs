//! The fuzzing seed corpus (`fuzz/corpus/<target>/seed-*`) through the same parsers as the
//! fuzz targets, on stable, in the normal test suite: an input that once crashed a parser
//! and was kept as a seed stays fixed. See docs/development/fuzzing.md.

use std::path::{Path, PathBuf};

use agentcom_sidecar::config::Config;
use agentcom_sidecar::protocol::Incoming;
use agentcom_sidecar::result_file;

/// The seed files of one target, sorted; fails if there are none (a moved folder must not
/// turn this test into a no-op).
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_hub_frame_seed_is_parsed_or_refused() {
    let mut parsed = 0;
    for (path, bytes) in seeds("hub_frame") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match Incoming::parse(text) {
            Ok(frame) => {
                parsed += 1;
                let _ = format!("{frame:?}");
            }
            Err(e) => assert!(!e.to_string().is_empty(), "{}", path.display()),
        }
    }
    assert!(
        parsed > 0,
        "no seed parses: the corpus lost its valid frames"
    );
}

#[test]
fn every_config_seed_loads_or_is_a_config_error() {
    let mut loaded = 0;
    for (_, bytes) in seeds("config") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match Config::from_json(text, Path::new("/nonexistent/fuzz/config.json")) {
            Ok(config) => {
                loaded += 1;
                let _ = (format!("{config:?}"), config.effective().to_string());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    assert!(
        loaded > 0,
        "no seed loads: the corpus lost its valid configs"
    );
}

#[test]
fn every_result_file_seed_is_an_object_or_a_reason() {
    let mut objects = 0;
    for (path, bytes) in seeds("result_file") {
        let parsed = result_file::parse(&bytes);
        if result_file::is_blank(&bytes) {
            assert!(parsed.is_err(), "{}", path.display());
        }
        match parsed {
            Ok(object) => {
                objects += 1;
                serde_json::to_vec(&object).unwrap();
                queue_file_loads_with(object);
            }
            Err(reason) => assert!(reason.starts_with("result file "), "{reason}"),
        }
    }
    assert!(
        objects > 0,
        "no seed parses: the corpus lost its valid results"
    );
}

/// What the queue does with a result: kept in `queue_file` as a task's outcome and in the
/// refused list. Whatever an agent wrote, that file must load again.
fn queue_file_loads_with(result: serde_json::Map<String, serde_json::Value>) {
    use agentcom_sidecar::tasks::model::{
        Agent, Outcome, QueueState, RefusedReport, ReportKind, Role, TaskRecord,
    };
    let outcome = Outcome::Complete { result };
    let mut state = QueueState::default();
    state.tasks.push(TaskRecord {
        task_id: "t".into(),
        generation: 1,
        raw: "{}".into(),
        role: Role::Held,
        released: None,
        agent: Agent::Confirmed,
        outcome: Some(outcome.clone()),
        target_type: None,
        model: None,
        accepted_at_ms: 0,
        changed_at_ms: 0,
        lease_at_ms: 0,
    });
    state.refused.push(RefusedReport {
        task_id: "t".into(),
        kind: ReportKind::Complete,
        generation: 1,
        error: "e".into(),
        details: None,
        outcome,
        at_ms: 0,
    });
    let text = serde_json::to_vec(&state).unwrap();
    assert_eq!(QueueState::from_json(&text).unwrap(), state);
}
