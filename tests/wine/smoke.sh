#!/usr/bin/env bash
# Runs the Windows build of the sidecar under Wine against the Linux dev hub, and checks what
# Wine can show of the Windows code paths: the wake command's argument list and string forms
# (cmd.exe), hostile task data reaching the agent as bytes, the config refusal, Ctrl-C, the Job
# Object kill at wake_timeout_ms, and an agent outliving its wake command and the sidecar.
#
# Wine is not Windows: this is a smoke test, not part of CI. Needs Debian's wine64,
# gcc-mingw-w64-x86-64, the x86_64-pc-windows-gnu target, curl and python3.
# Prints one line per check, then "N passed, N failed"; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
WINE=${WINE:-/usr/lib/wine/wine64}
for tool in "$WINE" x86_64-w64-mingw32-gcc curl python3; do
    command -v "$tool" >/dev/null || { echo "wine smoke: $tool is missing" >&2; exit 2; }
done

work=$(mktemp -d)
export WINEPREFIX=$work/prefix WINEDEBUG=-all
hub_pid=
cleanup() {
    "$(dirname "$WINE")/wineserver" -k 2>/dev/null
    [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null
    [ -n "${KEEP:-}" ] && echo "wine smoke: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --target x86_64-pc-windows-gnu --bin agentcom-sidecar || exit 2
cargo build -q --bin agentcom-sidecar || exit 2
mkdir -p "$work/bin"
cp target/x86_64-pc-windows-gnu/debug/agentcom-sidecar.exe "$work/bin/"
x86_64-w64-mingw32-gcc -shared -o "$work/bin/bcryptprimitives.dll" \
    tests/wine/bcryptprimitives.c tests/wine/bcryptprimitives.def -ladvapi32 || exit 2
x86_64-w64-mingw32-gcc -municode -O1 -o "$work/bin/agent.exe" tests/wine/agent.c || exit 2
sidecar_exe=$work/bin/agentcom-sidecar.exe

passed=0
failed=0
check() { # check NAME COMMAND...
    local name=$1
    shift
    if "$@"; then
        echo "ok   $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        failed=$((failed + 1))
    fi
}
winpath() { local p=${1//\//\\}; echo "Z:$p"; }
# wait_for FILE PATTERN: up to 60 s (Wine starts slowly).
wait_for() {
    local i
    for i in $(seq 600); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

"$repo/target/debug/agentcom-sidecar" dev-hub --listen 127.0.0.1:0 >"$work/hub.log" 2>&1 &
hub_pid=$!
wait_for "$work/hub.log" "listening on" || { echo "wine smoke: the dev hub did not start" >&2; exit 2; }
port=$(sed -n 's/.*listening on ws:\/\/127.0.0.1:\([0-9]*\)\/ws.*/\1/p' "$work/hub.log" | head -1)
hub=http://127.0.0.1:$port

# config DIR WAKE_COMMAND_JSON [EXTRA_JSON]: writes DIR/config.json.
config() {
    mkdir -p "$1"
    python3 - "$1/config.json" "$port" "$2" "${3:-{\}}" <<'EOF'
import json, sys
path, port, wake, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cfg = {"agent_id": "win-agent", "token": "t0ken", "hub_url": f"ws://127.0.0.1:{port}/ws",
       "wake_command": json.loads(wake), "wake_retry_delays_ms": [],
       "confirmation_timeout_ms": 30000, "result_settle_ms": 300}
cfg.update(json.loads(extra))
json.dump(cfg, open(path, "w"))
EOF
}
start() { # start DIR: runs the sidecar under Wine in DIR; waits for identify.
    (cd "$1" && "$WINE" "$sidecar_exe" --config config.json >stdout.txt 2>stderr.txt &)
    wait_for "$1/stdout.txt" "identified"
}
stop() { # stop DIR: SIGINT, which Wine delivers as CTRL_C_EVENT; waits for the clean exit.
    pkill -INT -f "agentcom-sidecar.exe --config config.json" || return 1
    wait_for "$1/stdout.txt" "shutdown phase=complete exit_code=0"
}
submit() { # submit JSON_FILE_OR_TEXT
    curl -s -X POST "$hub/api/tasks" -H 'Authorization: Bearer t0ken' \
        -H 'Content-Type: application/json' --data-binary "$1" >/dev/null
}
push() { # push JSON: a task_assign the hub's queue never knows (so a failure is not retried)
    curl -s -X POST "$hub/api/admin/push-task" -H 'Authorization: Bearer t0ken' \
        -H 'Content-Type: application/json' --data-binary "$1" >/dev/null
}
beats() { cat "$1"/seen-*/beat 2>/dev/null | wc -l; }
grows() { local a b; a=$(beats "$1"); sleep 1; b=$(beats "$1"); [ "$b" -gt "$a" ]; }
still() { local a b; a=$(beats "$1"); sleep 1; b=$(beats "$1"); [ "$a" -gt 0 ] && [ "$b" -eq "$a" ]; }

agent=$(winpath "$work/bin/agent.exe")

# 1. It starts.
check "--version" bash -c "'$WINE' '$sidecar_exe' --version | grep -q '^agentcom-sidecar '"

# 2. A string naming task data is refused at load, naming the key.
config "$work/refused" "$(python3 -c 'import json; print(json.dumps("agent.exe --message \"%TASK_JSON%\""))')"
(cd "$work/refused" && "$WINE" "$sidecar_exe" check-config --config config.json >out.txt 2>&1)
rc=$?
check "check-config refuses %TASK_JSON% in a string (exit 1)" \
    bash -c "[ $rc -eq 1 ] && grep -q 'key \"wake_command\".*naming TASK_JSON' '$work/refused/out.txt'"

# 3. The argument list: hostile data and shell syntax arrive as bytes; nothing runs.
python3 - "$work" >"$work/task.json" <<'EOF'
import json, sys
w = "Z:" + sys.argv[1].replace("/", "\\")
d = (f'" & echo pwned > {w}\\pwned1.txt & " %PATH% !PATH! ^& `x` $(touch {sys.argv[1]}/pwned2) '
     f'; rm -rf / \n| del /q {w}\\bin\\agent.exe\r\nlast \u00e9\U0001F600 line')
print(json.dumps({"description": d, "metadata": {"note": f"& echo x > {w}\\pwned3.txt"}}))
EOF
args='["$(touch pwned4)", "%TASK_JSON%", "a & b", "quote\"d", "", "back\\slash\\"]'
config "$work/argv" "$(python3 -c "import json,sys; print(json.dumps([sys.argv[1]] + json.loads(sys.argv[2])))" "$agent" "$args")"
start "$work/argv"
submit @"$work/task.json"
wait_for "$work/argv/stdout.txt" "task_complete"
check "argument list: the agent gets every variable and argument byte for byte" python3 - "$work" "$args" <<'EOF'
import glob, json, os, sys
work, args = sys.argv[1], json.loads(sys.argv[2])
seen = glob.glob(os.path.join(work, "argv", "seen-*"))[0]
read = lambda n: open(os.path.join(seen, n), "rb").read()
d = json.load(open(os.path.join(work, "task.json")))["description"]
ok = read("TASK_DESCRIPTION") == d.encode() and json.loads(read("TASK_JSON"))["description"] == d
ok = ok and read("argc") == str(len(args)).encode()
ok = ok and all(read(f"arg{i}") == a.encode() for i, a in enumerate(args, 1))
sys.exit(0 if ok else 1)
EOF
check "argument list: nothing in the task or the arguments ran" \
    bash -c "! ls '$work'/pwned* '$work'/argv/pwned* >/dev/null 2>&1 && [ -f '$work/bin/agent.exe' ]"

# 4. Ctrl-C stops it in order.
stop "$work/argv"
check "Ctrl-C: orderly stop, exit code 0" grep -q "shutdown signal=CTRL_C phase=begin" "$work/argv/stdout.txt"

# 5. A string under cmd.exe, with the variables the sidecar controls.
config "$work/string" "$(python3 -c "import json,sys; print(json.dumps('\"' + sys.argv[1] + '\" from-string %TASK_ID% \"%TASK_FILE%\" & echo after-the-agent'))" "$agent")"
start "$work/string"
submit @"$work/task.json"
wait_for "$work/string/stdout.txt" "task_complete"
check "string: cmd.exe runs it with %TASK_ID% and %TASK_FILE% expanded" bash -c "
    grep -q 'wake_success.*output=after-the-agent' '$work/string/stdout.txt' &&
    [ \"\$(cat '$work'/string/seen-*/arg2)\" = \"\$(cat '$work'/string/seen-*/TASK_ID)\" ]"
stop "$work/string"

# 6. wake_timeout_ms kills the whole tree (the Job Object).
config "$work/tree" "[\"$(echo "$agent" | sed 's/\\/\\\\/g')\", \"tree\"]" '{"wake_timeout_ms": 1500}'
start "$work/tree"
push '{"agent_id": "win-agent", "description": "tree"}'
wait_for "$work/tree/stdout.txt" "job (process tree) killed"
check "timeout: the wake command and its child are killed" still "$work/tree"
stop "$work/tree"

# 7. The agent a wake command starts outlives the attempt and the sidecar.
config "$work/spawn" "[\"$(echo "$agent" | sed 's/\\/\\\\/g')\", \"spawn\"]"
start "$work/spawn"
submit '{"description": "spawn"}'
wait_for "$work/spawn/stdout.txt" "wake_success"
check "the agent runs on after its wake command returned" grows "$work/spawn"
stop "$work/spawn"
check "the agent runs on after the sidecar stopped" grows "$work/spawn"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
