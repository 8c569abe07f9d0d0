//! `agentcom-sidecar check-config`: everything the daemon would need, checked without
//! starting it — the config itself (as [`Config::load`] validates it), the directories it
//! writes to, and the wake command's program on `PATH`.

use std::path::Path;

use crate::config::{Config, WakeCommand};

/// One thing that would stop the sidecar from doing its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

/// Checks what a valid config cannot promise by itself.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut dir = |key: &'static str, dir: Option<&Path>| {
        if let Some(dir) = dir {
            if let Err(e) = writable_dir(dir) {
                problems.push(Problem {
                    key,
                    message: format!("{} is not a writable directory: {e}", dir.display()),
                });
            }
        }
    };
    dir("results_dir", Some(&config.results_dir));
    dir("log_file", config.log_file.parent());
    dir("queue_file", config.queue_file.parent());
    dir("status_file", config.status_file.parent());
    let commands = config
        .wake_command
        .iter()
        .map(|c| ("wake_command", c))
        .chain(config.wake_commands.values().map(|c| ("wake_commands", c)));
    for (key, command) in commands {
        let found = match command {
            WakeCommand::Shell(text) => program_found(text),
            WakeCommand::Argv(argv) => argv_program_found(&argv[0]),
        };
        if let Err(message) = found {
            problems.push(Problem { key, message });
        }
    }
    problems
}

/// Creates the directory if needed and proves a file can be created in it.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".agentcom-sidecar-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
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
