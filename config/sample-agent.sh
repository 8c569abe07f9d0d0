#!/bin/sh
# A sample agent for the demo and for trying a wake command by hand.
#
# The sidecar runs its wake command with the task in environment variables:
#   TASK_ID, TASK_JSON, TASK_DESCRIPTION, TASK_FILE, RESULTS_DIR
# A real wake command starts the agent in the background and returns at once; the agent
# then confirms with "$RESULTS_DIR/$TASK_ID.started" and reports with
# "$RESULTS_DIR/$TASK_ID.json", written to a temporary name first and renamed into place
# so the sidecar never reads half a file.
#
#   wake_command: "sh /path/to/sample-agent.sh"
set -eu

(
    touch "$RESULTS_DIR/$TASK_ID.started"
    # The "work": count the words of the description (read from the environment, never
    # pasted into shell code).
    words=$(printf '%s' "$TASK_DESCRIPTION" | wc -w | tr -d ' ')
    sleep 1
    tmp="$RESULTS_DIR/.$TASK_ID.json.tmp"
    printf '{"status":"success","output":{"summary":"sample agent finished %s","description_words":%s}}\n' \
        "$TASK_ID" "$words" > "$tmp"
    mv "$tmp" "$RESULTS_DIR/$TASK_ID.json"
) </dev/null >/dev/null 2>&1 &
