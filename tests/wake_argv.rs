//! The argument-list form of `wake_command` runs its program with no shell at all: hostile
//! task data in every variable, and shell syntax in the configured arguments themselves, reach
//! the agent as bytes and run nothing.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::json;

/// The agent: writes each argument and each task variable to its own file, byte for byte.
/// The script is a file `sh` reads; `sh` here is the program of the list, not a shell of the
/// sidecar's, and it expands every variable inside quotes, as data.
const RECORDER: &str = r#"
dir=$(dirname "$RESULTS_DIR")/seen
mkdir -p "$dir"
n=0
for arg in "$@"; do
  n=$((n + 1))
  printf '%s' "$arg" > "$dir/arg$n"
done
printf '%s' "$n" > "$dir/argc"
for name in TASK_ID TASK_JSON TASK_DESCRIPTION TASK_TARGET_TYPE TASK_MODEL; do
  eval "value=\${$name}"
  printf '%s' "$value" > "$dir/$name"
done
touch "$RESULTS_DIR/$TASK_ID.started"
"#;

#[test]
fn hostile_task_data_and_shell_syntax_in_the_list_reach_the_agent_as_bytes() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let marker = |n: u32| base.join(format!("pwned{n}"));
    let touch = |n: u32| format!("touch {}", marker(n).display());
    let description = format!(
        "$({}) `{}` \"; {}; echo \" '; {} #'\n; rm -rf {}/nothing-here ; %PATH% !PATH! ^& %TASK_ID% ${{HOME}} \\ \u{e9}\u{1F600}\r\nlast line",
        touch(1),
        touch(2),
        touch(3),
        touch(4),
        base.display()
    );
    let model = format!("m$({})", touch(5));
    let target = format!("t`{}`", touch(6));
    // Shell syntax in the configured arguments: no shell ever parses them either.
    let args = [
        format!("$({})", touch(7)),
        format!("; {}", touch(8)),
        "%TASK_JSON% ${TASK_JSON} \"quoted\" 'single'".to_string(),
        String::new(),
        "two\nlines".to_string(),
    ];
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, RECORDER).unwrap();
    let mut argv = vec!["sh".to_string(), script.display().to_string()];
    argv.extend(args.iter().cloned());
    let config = with(
        fast_config(&hub.ws_url()),
        json!({
            "wake_command": "false",
            "wake_commands": {target.clone(): argv},
            "confirmation_timeout_ms": 60000,
        }),
    );
    let path = dir.path().join("config.json");
    write_config(&path, &config);
    let seen = dir.path().join("seen");
    let markers: Vec<_> = (1..=8).map(marker).collect();
    let sidecar = Sidecar::start_in(dir, &["--config", path.to_str().unwrap()]);
    wait_identified(&hub, 1);

    let raw = json!({
        "type": "task_assign",
        "task_id": "t-argv",
        "description": description,
        "metadata": {"note": format!("$({})", touch(1)), "q": "`x`"},
        "routing_decision": {"target_type": target, "selected_model": model},
        "generation": 1,
    })
    .to_string();
    hub.send(AGENT, RawFrame::Text(raw.clone()));
    sidecar.wait_event("wake_success");
    sidecar.wait_event("confirmation_received");

    for m in &markers {
        assert!(
            !m.exists(),
            "{} was created: text ran as shell code",
            m.display()
        );
    }
    let read = |name: &str| std::fs::read(seen.join(name)).unwrap();
    assert_eq!(read("TASK_ID"), b"t-argv");
    assert_eq!(
        read("TASK_JSON"),
        raw.as_bytes(),
        "TASK_JSON: the frame as sent"
    );
    assert_eq!(read("TASK_DESCRIPTION"), description.as_bytes());
    assert_eq!(read("TASK_MODEL"), model.as_bytes());
    assert_eq!(read("TASK_TARGET_TYPE"), target.as_bytes());
    assert_eq!(read("argc"), args.len().to_string().as_bytes());
    for (i, arg) in args.iter().enumerate() {
        assert_eq!(
            read(&format!("arg{}", i + 1)),
            arg.as_bytes(),
            "argument {} as configured",
            i + 1
        );
    }
}
