//! The Windows rules for wake commands: how a string command is handed to `cmd.exe`, and
//! which commands are refused at config load because cmd.exe would parse task data as
//! commands. Pure rules (plus one bounded read of a batch file), compiled and unit-tested on
//! every platform; only a Windows build applies them ([`refuse`] from `config`, [`cmd_arguments`]
//! from the wake step). It does not start anything.
//!
//! Why: cmd.exe substitutes `%NAME%` into the command line *before* it parses `&`, `|`, `<`,
//! `>`, `(`, `^` and quotes, so the value of a variable named in the text becomes part of the
//! command. A description holding `" & del /q C:\data & "` pasted by `%TASK_DESCRIPTION%` would
//! run, and no quoting can protect a value that is pasted before quotes are read. Delayed
//! expansion (`!NAME!`) is switched off (`/v:off`) whatever the registry says, and `/d` skips
//! AutoRun commands; but `call`, a nested `cmd /c` or a `for` loop re-expand a line, and a caret
//! can hide a name from a first pass (`%^TASK_JSON%`). So the rule is not about `%` signs: text
//! that cmd.exe parses — a string `wake_command`, or a batch file a wake command names — must
//! not name a variable that carries task data ([`TASK_DATA_VARIABLES`]) at all. The variables
//! whose values the sidecar controls ([`SAFE_VARIABLES`]: a validated task id, paths from the
//! config, a number) may be used as `%NAME%`. The argument-list form never goes through
//! cmd.exe unless its program is a batch file, and is always safe.

use std::path::{Path, PathBuf};

use crate::config::WakeCommand;

/// Variables whose values come from the hub (task data, and room chat for a
/// `room_wake_command`): never named in text cmd.exe parses.
pub const TASK_DATA_VARIABLES: &[&str] = &[
    "TASK_JSON",
    "TASK_DESCRIPTION",
    "TASK_TARGET_TYPE",
    "TASK_MODEL",
    "ROOM_TEXT",
    "ROOM_FROM",
    "ROOM_MESSAGE_TYPE",
];

/// Variables whose values the sidecar controls: safe as `%NAME%` in a string command. A task id
/// is `[A-Za-z0-9._-]` only; the paths come from the operator's config.
pub const SAFE_VARIABLES: &[&str] = &[
    "TASK_ID",
    "TASK_FILE",
    "RESULTS_DIR",
    "WAKE_ATTEMPT",
    "ROOM_SEQ",
    "ROOM_TIMESTAMP",
    "ROOM_MESSAGE_FILE",
];

/// What the config error asks for instead.
pub const EXPECTED: &str =
    "on Windows, a command whose text cmd.exe can parse without task data in it: \
     use the argument list form, e.g. [\"C:\\\\agents\\\\agent.exe\", \"--once\"], \
     and let the agent read TASK_FILE or its environment (TASK_ID, TASK_FILE, RESULTS_DIR and \
     WAKE_ATTEMPT may appear as %NAME% in a string; see docs/usage/windows.md)";

/// The largest batch file read to look for task variables.
const SCRIPT_MAX: u64 = 1024 * 1024;

/// The arguments after `cmd.exe` for a string command, appended as they are (not quoted again):
/// no AutoRun (`/d`), command extensions on (`/e:on`), delayed expansion off (`/v:off`), and
/// `/s /c "…"`: cmd.exe removes the outer quotes and runs the text unchanged.
pub fn cmd_arguments(text: &str) -> String {
    format!("/d /e:on /v:off /s /c \"{text}\"")
}

/// Whether Windows runs `program` through cmd.exe: a `.bat` or `.cmd` file (trailing dots and
/// spaces are dropped by Windows, so `x.bat.` is one too).
pub fn is_batch_file(program: &str) -> bool {
    let name = program.trim_end_matches(['.', ' ']).to_ascii_lowercase();
    name.ends_with(".bat") || name.ends_with(".cmd")
}

/// Why `command` must not run on Windows, if it must not: one line for the config error.
/// `base` is the config's directory (a relative batch file is looked for there), `path` the
/// directories of `PATH` (a bare batch file name is looked for there).
pub fn refuse(command: &WakeCommand, base: &Path, path: &[PathBuf]) -> Option<String> {
    let batch = match command {
        WakeCommand::Shell(text) => {
            if let Some(why) = refuse_string(text) {
                return Some(why);
            }
            string_program(text).filter(|p| is_batch_file(p))
        }
        WakeCommand::Argv(argv) => {
            let program = argv.first()?;
            if !is_batch_file(program) {
                return None;
            }
            if argv[1..].iter().any(|a| a.contains(['\r', '\n'])) {
                return Some(format!(
                    "an argument with a line break for the batch file {program} (Windows cannot \
                     pass one to a .bat or .cmd file; the wake command would never start)"
                ));
            }
            Some(program.as_str())
        }
    }?;
    let script = locate(batch, base, path, |p| p.is_file())?;
    let text = match read_script(&script) {
        Ok(text) => text,
        // Not checked is not accepted.
        Err(why) => {
            return Some(format!(
                "the batch file {} {why}, so it cannot be checked for task-data variables",
                script.display()
            ))
        }
    };
    task_data_named(&text).map(|name| {
        format!(
            "the batch file {} naming {name} (cmd.exe pastes %{name}% into its lines before \
             parsing them, so the task's text would run as commands)",
            script.display()
        )
    })
}

/// Why a string command must not run under cmd.exe, if it must not.
pub fn refuse_string(text: &str) -> Option<String> {
    if text.contains(['\r', '\n']) {
        return Some(
            "a string with a line break (cmd.exe stops reading the command there)".to_string(),
        );
    }
    if let Some(name) = task_data_named(text) {
        return Some(format!(
            "a string naming {name} (cmd.exe pastes %{name}% into the command line before \
             parsing it, so the task's text would run as commands)"
        ));
    }
    if let Some(name) = dollar_reference(text) {
        return Some(format!(
            "a string using ${name} (cmd.exe does not expand $-variables: the agent would get \
             the text itself; write %{name}%)"
        ));
    }
    None
}

/// The first task-data variable named anywhere in `text`, carets and quotes ignored (they
/// can split a name that a second expansion then joins), in any letter case.
fn task_data_named(text: &str) -> Option<&'static str> {
    let plain: String = text
        .chars()
        .filter(|c| !matches!(c, '^' | '"'))
        .collect::<String>()
        .to_ascii_uppercase();
    TASK_DATA_VARIABLES
        .iter()
        .find(|name| plain.contains(*name))
        .copied()
}

/// A Unix-style `$NAME` or `${NAME}` of one of the sidecar's variables (a config written for
/// `sh`), which cmd.exe would leave as text.
fn dollar_reference(text: &str) -> Option<&'static str> {
    text.match_indices('$').find_map(|(i, _)| {
        let rest = &text[i + 1..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        SAFE_VARIABLES.iter().copied().find(|name| {
            rest.starts_with(name)
                && !rest[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// The program a string command starts: its first word (a quoted first word may hold spaces),
/// after an optional `call`.
pub fn string_program(text: &str) -> Option<&str> {
    let text = text.trim_start().trim_start_matches('@');
    let text = match text.get(..5) {
        Some(word) if word.eq_ignore_ascii_case("call ") => text[5..].trim_start(),
        _ => text,
    };
    let word = match text.strip_prefix('"') {
        Some(rest) => rest.split('"').next(),
        None => text.split([' ', '\t', '&', '|', '<', '>', '(', ')']).next(),
    }?;
    (!word.is_empty()).then_some(word)
}

/// Where a program named in a wake command is: a name with a directory part is taken as it
/// is (relative to the working directory, as the wake step starts it), else relative to `base`
/// (the config's directory); a bare name is looked for in the `PATH` directories. `exists` is
/// the file test (a parameter, so the rule is tested without files).
pub fn locate(
    program: &str,
    base: &Path,
    path: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if program.contains(['\\', '/', ':']) {
        return [PathBuf::from(program), base.join(program)]
            .into_iter()
            .find(|candidate| exists(candidate));
    }
    path.iter()
        .map(|dir| dir.join(program))
        .find(|candidate| exists(candidate))
}

/// A batch file's text (lossy: batch files are often in an OEM code page; the names looked
/// for are ASCII), at most [`SCRIPT_MAX`] bytes; the error says why it was not read.
fn read_script(path: &Path) -> Result<String, String> {
    use crate::fsx::Untrusted;
    let unreadable = |e: std::io::Error| format!("cannot be read ({e})");
    let Some(file) = crate::fsx::open_regular(path).map_err(unreadable)? else {
        return Err("is not a regular file".into());
    };
    match crate::fsx::read_limited(file, SCRIPT_MAX).map_err(unreadable)? {
        Untrusted::Bytes(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Untrusted::TooLarge(n) => Err(format!("is {n} bytes, over {SCRIPT_MAX}")),
        Untrusted::NotRegular => Err("is not a regular file".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(text: &str) -> WakeCommand {
        WakeCommand::Shell(text.to_string())
    }

    fn argv(items: &[&str]) -> WakeCommand {
        WakeCommand::Argv(items.iter().map(|s| s.to_string()).collect())
    }

    fn refused(command: &WakeCommand) -> Option<String> {
        refuse(command, Path::new("/nonexistent-config-dir"), &[])
    }

    #[test]
    fn strings_naming_task_data_are_refused_however_the_name_is_written() {
        for text in [
            r#"agent.exe --message "Task: %TASK_JSON%""#,
            "agent.exe %task_description%",
            "agent.exe !TASK_JSON!",
            "agent.exe %TASK_DESCRIPTION:~0,100%",
            "agent.exe %TASK_JSON:\"=%",
            "call agent.exe %^TASK_JSON%",
            "cmd /c agent.exe %TASK_^JSON%",
            "agent.exe %TASK_\"JSON%",
            "agent.exe --model %TASK_MODEL% --type %TASK_TARGET_TYPE%",
            "agent.exe ${TASK_JSON}",
        ] {
            let why = refused(&shell(text)).unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(why.contains("would run as commands"), "{text}: {why}");
        }
    }

    #[test]
    fn strings_with_only_sidecar_controlled_variables_are_accepted() {
        for text in [
            "agent.exe --task-file %TASK_FILE% --id %TASK_ID%",
            r#""C:\Program Files\Agent\agent.exe" --results "%RESULTS_DIR%" --attempt %WAKE_ATTEMPT%"#,
            r#"start "" /b C:\agents\agent.exe"#,
            "%USERPROFILE%\\agent.exe 100% & echo done",
            "agent.exe --task-id-env TASK_ID",
        ] {
            assert_eq!(refused(&shell(text)), None, "{text}");
        }
    }

    #[test]
    fn line_breaks_and_sh_style_variables_are_refused_in_strings() {
        let why = refused(&shell("agent.exe\r\ndel x")).unwrap();
        assert!(why.contains("line break"), "{why}");
        for text in ["agent --id $TASK_ID", "agent --file ${TASK_FILE}"] {
            let why = refused(&shell(text)).unwrap();
            assert!(why.contains("does not expand $-variables"), "{text}: {why}");
        }
        // `$TASK_IDS` is another variable, and `$env:TASK_ID` is PowerShell's own syntax.
        assert_eq!(refused(&shell("agent $TASK_IDS")), None);
        assert_eq!(
            refused(&shell("powershell -Command agent $env:TASK_ID")),
            None
        );
    }

    #[test]
    fn the_argument_list_form_is_never_refused_for_its_arguments_unless_it_runs_a_batch_file() {
        // No shell parses these: they reach the program as they are.
        let hostile = ["agent.exe", "%TASK_JSON%", "a & b", "line\nbreak", "$(x)"];
        assert_eq!(refused(&argv(&hostile)), None);
        let why = refused(&argv(&["C:\\agents\\wake.cmd", "two\nlines"])).unwrap();
        assert!(
            why.contains("line break") && why.contains("wake.cmd"),
            "{why}"
        );
        assert_eq!(refused(&argv(&["C:\\agents\\wake.cmd", "%TASK_ID%"])), None);
    }

    #[test]
    fn a_batch_file_that_names_task_data_is_refused_in_either_form() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("wake.bat");
        std::fs::write(&bad, "@echo off\r\nagent.exe --message \"%TASK_JSON%\"\r\n").unwrap();
        let good = dir.path().join("safe.CMD");
        std::fs::write(
            &good,
            "@echo off\r\nstart \"\" agent.exe --file \"%TASK_FILE%\"\r\n",
        )
        .unwrap();
        let base = dir.path();
        let why = refuse(&argv(&["./wake.bat"]), base, &[]).unwrap();
        assert!(
            why.contains("wake.bat") && why.contains("TASK_JSON"),
            "{why}"
        );
        let why = refuse(&shell("call wake.bat --now"), base, &[]);
        assert_eq!(
            why, None,
            "a bare name is looked up on PATH, not beside the config"
        );
        let why = refuse(
            &shell("call wake.bat --now"),
            Path::new("/"),
            &[base.into()],
        )
        .unwrap();
        assert!(why.contains("TASK_JSON"), "{why}");
        let quoted = format!("\"{}\" --now", bad.display());
        assert!(refuse(&shell(&quoted), Path::new("/"), &[]).is_some());
        assert_eq!(refuse(&argv(&["./safe.CMD"]), base, &[]), None);
        assert_eq!(refuse(&argv(&["./missing.bat"]), base, &[]), None);
        // One too large to be checked whole is refused, not taken on trust.
        let mut big = "rem padding\r\n".repeat((SCRIPT_MAX / 13 + 1) as usize);
        big.push_str("agent.exe %TASK_JSON%\r\n");
        std::fs::write(dir.path().join("big.bat"), big).unwrap();
        let why = refuse(&argv(&["./big.bat"]), base, &[]).unwrap();
        assert!(
            why.contains("big.bat") && why.contains("cannot be checked"),
            "{why}"
        );
    }

    #[test]
    fn batch_files_are_recognised_as_windows_does() {
        for name in ["a.bat", "A.BAT", "x\\y.cmd", "a.bat.", "a.cmd. . "] {
            assert!(is_batch_file(name), "{name}");
        }
        for name in ["a.exe", "a.bat.exe", "bat", "a.ps1"] {
            assert!(!is_batch_file(name), "{name}");
        }
    }

    #[test]
    fn the_program_of_a_string_is_its_first_word() {
        assert_eq!(string_program("agent.exe --x"), Some("agent.exe"));
        assert_eq!(
            string_program(r#""C:\Program Files\a b.bat" --x"#),
            Some(r"C:\Program Files\a b.bat")
        );
        assert_eq!(string_program("@CALL  wake.cmd&echo"), Some("wake.cmd"));
        assert_eq!(string_program("   "), None);
    }

    #[test]
    fn the_command_line_keeps_the_text_as_it_is() {
        assert_eq!(
            cmd_arguments(r#""C:\a b\agent.exe" --x "y""#),
            r#"/d /e:on /v:off /s /c ""C:\a b\agent.exe" --x "y"""#
        );
    }
}
