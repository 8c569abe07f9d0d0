//! The queue file on disk: loading it (a file that does not parse is moved aside, never
//! deleted), what the results directory says about known tasks at start-up, and the one
//! durable write step. Blocking: run on the blocking pool.
//!
//! A [`Fence`] is shared by every incarnation of the QueueActor: the write steps of one
//! incarnation and the load of the next never overlap, and a write queued by an incarnation
//! that has since been replaced is skipped, so a restarted actor can never be overwritten by
//! its predecessor's late write.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::effects::{FileOp, Persist};
use super::machine::DiskFacts;
use super::model::QueueState;
use crate::fsx::{self, Untrusted};

/// What reading `queue_file` found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a first start.
    Missing,
    Found(QueueState),
    /// The file did not parse; it was moved to `moved_to`.
    Corrupt {
        moved_to: PathBuf,
        error: String,
    },
}

/// Serialises writes and loads across incarnations of the queue's owner.
#[derive(Debug, Default, Clone)]
pub struct Fence(Arc<Mutex<u64>>);

impl Fence {
    /// A new incarnation: waits for a write of the previous one in flight, then makes every
    /// later write of earlier incarnations a no-op. Returns this incarnation's epoch.
    pub fn enter(&self) -> u64 {
        let mut epoch = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *epoch += 1;
        *epoch
    }

    /// Runs `f` unless `epoch` has been replaced; `None` if it was.
    fn run<R>(&self, epoch: u64, f: impl FnOnce() -> R) -> Option<R> {
        let current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (*current == epoch).then(f)
    }
}

/// Reads the queue file; a file that does not parse is renamed `<name>.corrupt-<unix
/// seconds>` and reported.
pub fn load(path: &Path) -> io::Result<Loaded> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    match QueueState::from_json(&bytes) {
        Ok(state) => Ok(Loaded::Found(state)),
        Err(error) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".corrupt-{stamp}"));
            let moved_to = path.with_file_name(name);
            std::fs::rename(path, &moved_to)?;
            if let Some(dir) = path.parent() {
                let _ = fsx::sync_dir(dir);
            }
            Ok(Loaded::Corrupt { moved_to, error })
        }
    }
}

/// What `results_dir` holds for each task in `state`: `.started`, and a result (read as the
/// watcher reads it: untrusted, bounded).
pub fn disk_facts(
    state: &QueueState,
    results_dir: &Path,
    max_result_bytes: u64,
) -> BTreeMap<String, DiskFacts> {
    let mut facts = BTreeMap::new();
    for task in &state.tasks {
        let id = &task.task_id;
        let started = std::fs::symlink_metadata(results_dir.join(format!("{id}.started")))
            .is_ok_and(|m| m.is_file());
        // A read that failed for want of descriptors or memory says nothing yet: the
        // results watcher reads the file again.
        let result = read_result(&results_dir.join(format!("{id}.json")), max_result_bytes)
            .filter(|r| !matches!(r, ResultRead::Transient(_)))
            .map(ResultRead::into_result);
        if started || result.is_some() {
            facts.insert(id.clone(), DiskFacts { started, result });
        }
    }
    facts
}

/// What reading a result file found.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultRead {
    /// A JSON object: the result.
    Object(serde_json::Map<String, serde_json::Value>),
    /// Not (yet) a JSON object: maybe still being written.
    Partial(String),
    /// Never a result, however long one waits (a link, a FIFO, too large, unreadable).
    Invalid(String),
    /// Not read this time for a passing reason of the sidecar's own (out of descriptors or
    /// memory, interrupted): read again later, never the task's outcome.
    Transient(String),
}

impl ResultRead {
    /// The result, or why it is not one.
    pub fn into_result(self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        match self {
            ResultRead::Object(o) => Ok(o),
            ResultRead::Partial(why) | ResultRead::Invalid(why) | ResultRead::Transient(why) => {
                Err(why)
            }
        }
    }
}

/// A result file as the sidecar reads it: `None` if there is none (or none yet: empty).
pub fn read_result(path: &Path, max: u64) -> Option<ResultRead> {
    match fsx::read_untrusted(path, max) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) if fsx::is_transient(&e) => Some(ResultRead::Transient(format!(
            "result file cannot be read now: {e}"
        ))),
        Err(e) => Some(ResultRead::Invalid(format!(
            "result file cannot be read: {e}"
        ))),
        Ok(Untrusted::NotRegular) => Some(ResultRead::Invalid(
            "result path is not a regular file (symlinks are refused, as are FIFOs and devices)"
                .into(),
        )),
        Ok(Untrusted::TooLarge(n)) => Some(ResultRead::Invalid(format!(
            "result file is {n} bytes or more; max_result_bytes is {max}"
        ))),
        Ok(Untrusted::Bytes(bytes)) => parse_result(&bytes),
    }
}

/// A result file's bytes: `None` while empty (nothing written yet), else the JSON object or
/// why it is not one.
pub fn parse_result(bytes: &[u8]) -> Option<ResultRead> {
    if crate::result_file::is_blank(bytes) {
        return None;
    }
    Some(match crate::result_file::parse(bytes) {
        Ok(object) => ResultRead::Object(object),
        Err(why) => ResultRead::Partial(why),
    })
}

/// Why a write step did not fully succeed.
#[derive(Debug)]
pub enum StepError {
    /// Nothing of the step is certain to be on disk: retry it.
    NotSaved(String),
    /// The state is durable; only the clean-up after it failed (logged, not retried).
    CleanupFailed(String),
    /// A newer incarnation owns the file: this write was skipped.
    Fenced,
}

/// One durable step: `before`, the queue file, `after`, then a directory fsync of every
/// directory whose entries `after` changed. [`write_state`] and [`clean_up`] are its two
/// halves, for a caller that lets what depends on the state go before the clean-up.
pub fn write_step(
    fence: &Fence,
    epoch: u64,
    queue_file: &Path,
    persist: &Persist,
) -> Result<(), StepError> {
    write_state(fence, epoch, queue_file, persist)?;
    clean_up(fence, epoch, &persist.after)
}

/// The durable half of a step: `before`, then the queue file. Once it returns `Ok`, the
/// state is on disk and anything that depends on it may go.
pub fn write_state(
    fence: &Fence,
    epoch: u64,
    queue_file: &Path,
    persist: &Persist,
) -> Result<(), StepError> {
    fence
        .run(epoch, || {
            let snapshot = serde_json::to_vec(&persist.state)
                .map_err(|e| StepError::NotSaved(e.to_string()))?;
            for op in &persist.before {
                run(op).map_err(|e| StepError::NotSaved(format!("{op:?}: {e}")))?;
            }
            fsx::write_atomic(queue_file, &snapshot)
                .map_err(|e| StepError::NotSaved(format!("{}: {e}", queue_file.display())))
        })
        .unwrap_or(Err(StepError::Fenced))
}

/// The clean-up half of a step, after its state is durable: `after` (removals and renames
/// of files the state no longer needs), then a directory fsync of every directory whose
/// entries it changed. A failure here loses nothing (logged, not retried).
pub fn clean_up(fence: &Fence, epoch: u64, after: &[FileOp]) -> Result<(), StepError> {
    fence
        .run(epoch, || {
            let mut failed: Vec<String> = Vec::new();
            let mut dirs: Vec<&Path> = Vec::new();
            for op in after {
                match run(op) {
                    Ok(()) => {
                        let path = match op {
                            FileOp::Write { path, .. } | FileOp::Remove(path) => path,
                            FileOp::Rename { to, .. } => to,
                        };
                        if let Some(dir) = path.parent() {
                            if !dirs.contains(&dir) {
                                dirs.push(dir);
                            }
                        }
                    }
                    Err(e) => failed.push(format!("{op:?}: {e}")),
                }
            }
            for dir in dirs {
                if let Err(e) = fsx::sync_dir(dir) {
                    failed.push(format!("fsync {}: {e}", dir.display()));
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(StepError::CleanupFailed(failed.join("; ")))
            }
        })
        .unwrap_or(Err(StepError::Fenced))
}

fn run(op: &FileOp) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    match op {
        FileOp::Write { path, bytes } => fsx::write_atomic(path, bytes),
        FileOp::Remove(path) => ignore_missing(std::fs::remove_file(path)),
        FileOp::Rename { from, to } => ignore_missing(keep_aside(from, to)),
    }
}

/// How many files of one name a task's results directory keeps aside (`ID.json.invalid`,
/// then `.1` to `.9`; likewise `.unreported`).
pub const KEPT_ASIDE: usize = 10;

/// Moves `from` to `to`, or to the first of `to.1` … `to.9` that does not exist: a hard link
/// made under the new name (which fails rather than replace a file) and the old name
/// removed. When all are taken, `to.9` is replaced.
fn keep_aside(from: &Path, to: &Path) -> io::Result<()> {
    let name = |n: usize| -> std::path::PathBuf {
        if n == 0 {
            to.to_path_buf()
        } else {
            let mut s = to.as_os_str().to_os_string();
            s.push(format!(".{n}"));
            s.into()
        }
    };
    for n in 0..KEPT_ASIDE {
        match std::fs::hard_link(from, name(n)) {
            Ok(()) => return std::fs::remove_file(from),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // A file system without hard links: a plain rename into a free name.
            Err(e) if e.kind() != io::ErrorKind::NotFound && !name(n).exists() => {
                return std::fs::rename(from, name(n)).map_err(|_| e)
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::rename(from, name(KEPT_ASIDE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persist(state: QueueState, before: Vec<FileOp>, after: Vec<FileOp>) -> Persist {
        Persist {
            seq: 1,
            state,
            before,
            after,
        }
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_a_good_one_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        assert!(matches!(load(&path).unwrap(), Loaded::Missing));
        let fence = Fence::default();
        let epoch = fence.enter();
        let state = QueueState {
            next_wake_id: 9,
            ..Default::default()
        };
        write_step(
            &fence,
            epoch,
            &path,
            &persist(state.clone(), vec![], vec![]),
        )
        .unwrap();
        assert!(matches!(load(&path).unwrap(), Loaded::Found(s) if s == state));
        std::fs::write(&path, "{\"tasks\": tru").unwrap();
        let Loaded::Corrupt { moved_to, .. } = load(&path).unwrap() else {
            panic!()
        };
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_to_string(moved_to).unwrap(),
            "{\"tasks\": tru"
        );
    }

    #[test]
    fn a_replaced_incarnation_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        let fence = Fence::default();
        let old = fence.enter();
        let new = fence.enter();
        let stale = persist(QueueState::default(), vec![], vec![]);
        assert!(matches!(
            write_step(&fence, old, &path, &stale),
            Err(StepError::Fenced)
        ));
        assert!(!path.exists());
        write_step(&fence, new, &path, &stale).unwrap();
        assert!(path.exists());
    }

    #[test]
    fn file_work_runs_around_the_queue_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        let task_file = dir.path().join("tasks/t.json");
        let result = dir.path().join("results/t.json");
        std::fs::create_dir_all(result.parent().unwrap()).unwrap();
        std::fs::write(&result, "{}").unwrap();
        let fence = Fence::default();
        let epoch = fence.enter();
        let step = persist(
            QueueState::default(),
            vec![FileOp::Write {
                path: task_file.clone(),
                bytes: b"{\"task\":1}".to_vec(),
            }],
            vec![
                FileOp::Rename {
                    from: result.clone(),
                    to: result.with_extension("json.invalid"),
                },
                FileOp::Remove(dir.path().join("results/missing")),
            ],
        );
        write_step(&fence, epoch, &path, &step).unwrap();
        assert_eq!(std::fs::read(&task_file).unwrap(), b"{\"task\":1}");
        assert!(!result.exists());
        assert!(result.with_extension("json.invalid").exists());
    }

    #[test]
    fn result_files_parse_or_say_why_not() {
        assert!(parse_result(b"").is_none());
        assert!(parse_result(b" \n").is_none());
        assert!(matches!(
            parse_result(b"{\"status\":\"success\"}"),
            Some(ResultRead::Object(_))
        ));
        assert!(
            matches!(parse_result(b"[1]"), Some(ResultRead::Partial(e)) if e.contains("not an object"))
        );
        assert!(
            matches!(parse_result(b"{\"a\""), Some(ResultRead::Partial(e)) if e.contains("not valid JSON"))
        );
    }

    #[test]
    fn a_file_set_aside_never_replaces_one_kept_before() {
        let dir = tempfile::tempdir().unwrap();
        let result = dir.path().join("t.json");
        let kept = dir.path().join("t.json.invalid");
        for n in 0..KEPT_ASIDE + 2 {
            std::fs::write(&result, format!("{{\"n\":{n}}}")).unwrap();
            run(&FileOp::Rename {
                from: result.clone(),
                to: kept.clone(),
            })
            .unwrap();
            assert!(!result.exists());
        }
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "{\"n\":0}");
        for n in 1..KEPT_ASIDE - 1 {
            let path = dir.path().join(format!("t.json.invalid.{n}"));
            assert_eq!(
                std::fs::read_to_string(path).unwrap(),
                format!("{{\"n\":{n}}}")
            );
        }
        // The last name takes the newest once all are taken.
        let last = dir
            .path()
            .join(format!("t.json.invalid.{}", KEPT_ASIDE - 1));
        assert_eq!(
            std::fs::read_to_string(last).unwrap(),
            format!("{{\"n\":{}}}", KEPT_ASIDE + 1)
        );
        // Nothing to set aside: nothing happens.
        run(&FileOp::Rename {
            from: result.clone(),
            to: kept.clone(),
        })
        .unwrap();
    }
}
