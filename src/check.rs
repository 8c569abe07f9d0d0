//! `agentcom-sidecar check-config`: everything the daemon would need, checked without
//! starting it — the config itself (as [`Config::load`] validates it), the directories it
//! writes to, and the wake command's program on `PATH` (looked up as Windows would on
//! Windows).

use std::path::{Path, PathBuf};

use crate::config::{Config, WakeCommand};

/// One thing that would stop the sidecar from doing its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

/// Checks what a valid config cannot promise by itself. Nothing is created or changed: a
/// missing directory is reported as one the sidecar will create (see [`notes`]).
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, dir) in state_dirs(config) {
        if let Err(message) = dir_usable(dir) {
            problems.push(Problem { key, message });
        }
    }
    let commands = config
        .wake_command
        .iter()
        .map(|c| ("wake_command", c))
        .chain(config.wake_commands.values().map(|c| ("wake_commands", c)))
        .chain(
            config
                .room_wake_command
                .iter()
                .map(|c| ("room_wake_command", c)),
        );
    for (key, command) in commands {
        let found = match command {
            WakeCommand::Shell(text) if cfg!(windows) => {
                windows_program_found(crate::wincmd::string_program(text), true, &windows_dirs())
            }
            WakeCommand::Argv(argv) if cfg!(windows) => {
                windows_program_found(Some(&argv[0]), false, &windows_dirs())
            }
            WakeCommand::Shell(text) => program_found(text),
            WakeCommand::Argv(argv) => argv_program_found(&argv[0]),
        };
        if let Err(message) = found {
            problems.push(Problem { key, message });
        }
    }
    problems
}

/// The directories the sidecar writes to, by the key that names them.
pub fn state_dirs(config: &Config) -> Vec<(&'static str, &Path)> {
    let mut dirs = vec![("results_dir", config.results_dir.as_path())];
    for (key, file) in [
        ("log_file", &config.log_file),
        ("queue_file", &config.queue_file),
        ("status_file", &config.status_file),
    ] {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            dirs.push((key, dir));
        }
    }
    dirs
}

/// What an operator should know about the state directories that is no error: the ones
/// that do not exist yet (the sidecar creates them, mode 700, at start) and whether their
/// nearest existing parent lets this user create them, and the ones others can write to.
pub fn notes(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    notes.extend(wake_note(config));
    let claude_found = if cfg!(windows) {
        windows_program_found(Some(&config.claude_command), false, &windows_dirs())
    } else {
        argv_program_found(&config.claude_command)
    };
    if matches!(
        config.route(Some("claude")),
        crate::config::Route::Bundled { .. }
    ) && claude_found.is_err()
    {
        notes.push(format!(
            "claude_command: \"{}\" is not found: tasks routed to claude (the bundled claude agent) will fail until it is installed",
            config.claude_command
        ));
    }
    let mut seen: Vec<&Path> = Vec::new();
    for (key, dir) in state_dirs(config) {
        if seen.contains(&dir) {
            continue;
        }
        seen.push(dir);
        if dir.is_dir() {
            notes.extend(crate::fsx::writable_by_others(dir).map(|w| format!("{key}: {w}")));
            continue;
        }
        let Some(parent) = dir.ancestors().skip(1).find(|a| a.is_dir()) else {
            continue;
        };
        let who = if is_root() {
            " (this check runs as root: the service's own user must be able to write there, or the directory must be created for it, e.g. by systemd's StateDirectory=)"
        } else {
            ""
        };
        let can = if may_write(parent) {
            "this user can create it there"
        } else {
            "this user cannot create it there"
        };
        notes.push(format!(
            "{key}: {} does not exist yet; the sidecar creates it (mode 700) when it starts, under {} ({}){who}",
            dir.display(),
            parent.display(),
            can
        ));
    }
    notes
}

/// What becomes of the tasks that no wake command starts, in words: which routing targets
/// they are, and whether they fail at once or wait for an agent that starts by itself.
pub fn wake_note(config: &Config) -> Vec<String> {
    use crate::config::Route;
    let mut named: Vec<String> = crate::config::BUNDLED_AGENTS
        .iter()
        .map(|(t, _)| t.to_string())
        .chain(config.wake_commands.keys().cloned())
        .chain(config.unwoken_targets.iter().cloned())
        .collect();
    named.sort();
    named.dedup();
    let listed = |route: &dyn Fn(&Route<'_>) -> bool| -> Vec<String> {
        named
            .iter()
            .filter(|t| route(&config.route(Some(t))))
            .map(|t| format!("\"{t}\""))
            .collect()
    };
    let rest = format!(
        "\"wake\", any target but {}, and tasks without a routing decision (such as POST /api/admin/push-task)",
        named
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ms = config.confirmation_timeout.as_millis();
    let mut out = Vec::new();
    match config.route(None) {
        Route::Missing => out.push(format!(
            "no wake command for {rest}: such a task fails at once with reason no_wake_command (the hub shows it). Set \"wake_command\" (or \"wake_commands\" per target), or \"agent_starts_itself\": true if the agent starts by itself"
        )),
        Route::Unwoken => out.push(format!(
            "agent_starts_itself: no command runs for {rest}; the agent must write <task_id>.started within confirmation_timeout_ms ({ms} ms) of the task's acceptance, or the task fails with reason confirmation_timeout"
        )),
        _ => {}
    }
    let unwoken = listed(&|r| matches!(r, Route::Unwoken));
    if !unwoken.is_empty() {
        out.push(format!(
            "wake_commands: empty entries for {}: no command runs for these tasks; the agent must write <task_id>.started within confirmation_timeout_ms ({ms} ms), or the task fails with reason confirmation_timeout",
            unwoken.join(", ")
        ));
    }
    out
}

/// An existing directory is usable if a file can be created in it (a probe created new,
/// never through a link, and removed at once); a missing one if its nearest existing parent
/// is a directory this user may write to. Nothing is created for a missing directory.
fn dir_usable(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) if dir.is_dir() => {
            probe(dir).map_err(|e| format!("{} is not a writable directory: {e}", dir.display()))
        }
        Ok(_) => Err(format!("{} exists and is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match dir.ancestors().skip(1).find(|a| a.exists()) {
                Some(parent) if !parent.is_dir() => Err(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    parent.display()
                )),
                Some(parent) if !may_write(parent) => Err(format!(
                    "{} cannot be created: {} is not writable by this user",
                    dir.display(),
                    parent.display()
                )),
                _ => Ok(()),
            }
        }
        Err(e) => Err(format!("{} cannot be examined: {e}", dir.display())),
    }
}

/// Creates the directory if needed (private, as every directory the sidecar makes) and
/// proves a file can be created in it (`register`, which writes there next).
pub(crate) fn writable_dir(dir: &Path) -> std::io::Result<()> {
    crate::fsx::create_private_dir(dir)?;
    probe(dir)
}

/// Creates a new empty file in `dir` and removes it: never an existing file, never through
/// a link planted at the probe's name.
fn probe(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(
        ".agentcom-sidecar-check-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    drop(crate::fsx::create_new_private(&probe)?);
    std::fs::remove_file(&probe)
}

/// Whether this process's user may create entries in `dir` (access(2): the real user).
fn may_write(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: access(2) with a valid NUL-terminated path.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly())
    }
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid(2) has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    false
}

/// Shell words that run the next word rather than being the program themselves.
const PREFIXES: &[&str] = &["exec", "nohup", "setsid", "env", "nice", "command"];
/// Builtins that need no program.
const BUILTINS: &[&str] = &[
    ":", "true", "false", "echo", "printf", "cd", "test", "[", "set", "export", "eval",
];

/// Whether the first program of a wake command can be found (as `sh -c` would find it).
fn program_found(command: &str) -> Result<(), String> {
    let program = command
        .split_whitespace()
        .find(|w| !is_assignment(w) && !PREFIXES.contains(w) && !is_prefix_argument(w))
        .ok_or_else(|| "the wake command is empty".to_string())?
        .trim_matches(|c| c == '"' || c == '\'');
    if BUILTINS.contains(&program) || program.contains('$') || program.starts_with('(') {
        // A builtin or something only the shell can resolve: nothing to look up.
        return Ok(());
    }
    argv_program_found(program)
}

/// Whether the program of an argument-list wake command exists (looked up on `PATH`
/// unless it names a path).
fn argv_program_found(program: &str) -> Result<(), String> {
    if program.contains('/') {
        return executable(Path::new(program))
            .map_err(|e| format!("the wake command's program {program}: {e}"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate).is_ok())
        .map(|_| ())
        .ok_or_else(|| {
            format!(
                "the wake command's program \"{program}\" is not on PATH ({})",
                path.to_string_lossy()
            )
        })
}

/// cmd.exe's own commands: nothing to look up.
const CMD_BUILTINS: &[&str] = &[
    "start", "call", "echo", "set", "cd", "chdir", "if", "for", "type", "copy", "move", "del",
    "mkdir", "md", "rem", "exit", "pushd", "popd", "ver", "title",
];

/// Where Windows looks for a bare program name: `PATH`, then the system directory.
fn windows_dirs() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(root) = std::env::var_os("SystemRoot") {
        dirs.push(Path::new(&root).join("System32"));
    }
    dirs
}

/// Whether the program of a wake command can be found on Windows. A string's first word is
/// looked up as cmd.exe does (the extensions of `PATHEXT`'s usual list when it has none); a
/// list's program as the wake step starts it (`.exe` added when it has no extension).
fn windows_program_found(
    program: Option<&str>,
    string_form: bool,
    dirs: &[PathBuf],
) -> Result<(), String> {
    let program = program.ok_or_else(|| "the wake command is empty".to_string())?;
    if string_form
        && (program.contains('%') || CMD_BUILTINS.contains(&program.to_ascii_lowercase().as_str()))
    {
        return Ok(());
    }
    let has_extension = Path::new(program).extension().is_some();
    let extensions: &[&str] = match (has_extension, string_form) {
        (true, _) => &[""],
        (false, true) => &[".com", ".exe", ".bat", ".cmd"],
        (false, false) => &[".exe"],
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    extensions
        .iter()
        .find_map(|ext| {
            crate::wincmd::locate(&format!("{program}{ext}"), &cwd, dirs, |p| p.is_file())
        })
        .map(|_| ())
        .ok_or_else(|| {
            format!(
                "the wake command's program \"{program}\" was not found{}",
                if program.contains(['\\', '/', ':']) {
                    ""
                } else {
                    " on PATH"
                }
            )
        })
}

/// An option of a prefix word (`setsid -f`, `nice -n 10`): never the program itself.
fn is_prefix_argument(word: &str) -> bool {
    word.starts_with('-') || word.bytes().all(|b| b.is_ascii_digit())
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err("not executable".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_lookups_add_the_extensions_windows_would() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.exe"), b"").unwrap();
        std::fs::write(dir.path().join("wake.cmd"), b"").unwrap();
        let dirs = [dir.path().to_path_buf()];
        let found = |p: &str, string: bool| windows_program_found(Some(p), string, &dirs);
        assert!(found("agent", false).is_ok(), "the wake step adds .exe");
        assert!(found("agent.exe", false).is_ok());
        assert!(found("wake", true).is_ok(), "cmd.exe tries .bat and .cmd");
        let e = found("wake", false).unwrap_err();
        assert!(e.contains("\"wake\" was not found on PATH"), "{e}");
        assert!(found("wake.cmd", false).is_ok());
        assert!(found("START", true).is_ok(), "a cmd.exe builtin");
        assert!(found("%AGENT_HOME%\\agent.exe", true).is_ok());
        let full = dir.path().join("agent.exe");
        assert!(found(full.to_str().unwrap(), false).is_ok());
        assert!(windows_program_found(None, true, &dirs).is_err());
    }

    #[test]
    fn the_program_is_the_first_word_after_assignments_and_prefixes() {
        assert!(program_found("sh -c 'x'").is_ok());
        assert!(program_found("FOO=1 exec nohup sh run.sh").is_ok());
        assert!(program_found("setsid -f nice -n 10 sh -c 'agent'").is_ok());
        assert!(program_found("setsid -f no-such-agent-binary").is_err());
        assert!(program_found("echo \"Task: ${TASK_JSON}\"").is_ok());
        assert!(program_found("$AGENT_BIN --run").is_ok());
        let e = program_found("no-such-agent-binary --message x").unwrap_err();
        assert!(e.contains("\"no-such-agent-binary\" is not on PATH"), "{e}");
        assert!(program_found("/nonexistent/agent")
            .unwrap_err()
            .contains("/nonexistent/agent"));
    }
}
