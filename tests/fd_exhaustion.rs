//! A result file that cannot be read because the process is out of descriptors is read
//! again later, never declared invalid (one test in its own binary: it uses up the process's
//! descriptors).

use agentcom_sidecar::tasks::store::{read_result, ResultRead};

#[test]
fn a_result_unreadable_for_want_of_descriptors_is_transient_not_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t1.json");
    std::fs::write(&path, r#"{"status":"success","output":"ok"}"#).unwrap();
    let mut hoard = Vec::new();
    loop {
        match std::fs::File::open(dir.path()) {
            Ok(f) => hoard.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
        assert!(hoard.len() < 1_000_000, "no descriptor limit");
    }
    let starved = read_result(&path, 1024);
    drop(hoard);
    assert!(
        matches!(starved, Some(ResultRead::Transient(ref why)) if why.contains("Too many open files")),
        "{starved:?}"
    );
    assert!(matches!(
        read_result(&path, 1024),
        Some(ResultRead::Object(_))
    ));
}
