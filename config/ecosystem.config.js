// pm2 ecosystem file: one agentcom-sidecar per agent on this machine.
//
// Each agent has its own config (agent_id, token_file, hub_url, wake_command, and its own
// log_file, results_dir, queue_file, status_file and metrics_listen port), written for
// example by:
//   agentcom-sidecar register --hub http://hub-host:4000 --agent-id agent-1 \
//     --config /srv/agentcom/agent-1/config.json --token-file --metrics-listen 127.0.0.1:9465
// With every path left relative, each agent's files stay beside its config.
//
//   pm2 start config/ecosystem.config.js      # start (or add) every agent listed
//   pm2 reload config/ecosystem.config.js     # after an upgrade of the binary
//   pm2 save                                  # remember them across pm2 restarts
//
// See docs/usage/running-a-fleet.md.

const BINARY = "/usr/local/bin/agentcom-sidecar";
const AGENTS = ["agent-1", "agent-2", "agent-3"];

module.exports = {
  apps: AGENTS.map((id) => ({
    name: `agentcom-sidecar-${id}`,
    script: BINARY,
    args: ["--config", `/srv/agentcom/${id}/config.json`],
    // A native binary: no Node.js interpreter in between.
    interpreter: "none",
    cwd: `/srv/agentcom/${id}`,
    // Stop and restart signal only the sidecar, never the agents its wake command started.
    treekill: false,
    // pm2 sends SIGINT, then SIGKILL after this: time to close the hub session and flush
    // the log (an orderly stop takes milliseconds, at most about a second).
    kill_timeout: 10000,
    autorestart: true,
    // A config error exits 1 at once: back off instead of restarting in a tight loop.
    exp_backoff_restart_delay: 1000,
  })),
};
