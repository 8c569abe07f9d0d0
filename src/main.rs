//! The `agentcom-sidecar` binary: command line, then one of the library's entry points.
//!
//! Exit codes: 0 clean shutdown; 1 configuration or start-up error; 70 the Supervisor gave up
//! (restart intensity exceeded); 75 the hub asked for a restart; 128 + N a second signal N
//! during shutdown. `status` exits 0 while the sidecar runs and 3 when it does not (as
//! `systemctl status` does). `register` exits 0 once the agent is registered and its config
//! written, 1 on any failure (no file written then). `agent` exits 0 once it has written a
//! result (a failed one too), 1 when the result could not be written, 2 when the environment
//! does not name a valid TASK_ID and RESULTS_DIR.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use std::io::Write;

use agentcom_sidecar::config::{self, Config};
use agentcom_sidecar::status::Liveness;
use agentcom_sidecar::{agent, check, demo, devhub, register};

#[derive(Parser)]
#[command(
    name = "agentcom-sidecar",
    version,
    about = "Keeps an AI agent connected to an AgentCom hub: one WebSocket session, tasks on disk, wake command, results reported."
)]
struct Cli {
    /// Config file (default: $SIDECAR_CONFIG, else ./config.json)
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The `dev-hub` subcommand's flags. Timings default to the real hub's.
#[derive(clap::Args)]
struct DevHubArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// JSON file {"agent_id": "token", …}; without it any token is accepted
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Allow --listen on an address other than loopback without --tokens (an open hub:
    /// anyone who can reach it can push tasks to its agents)
    #[arg(long)]
    open: bool,
    /// PEM certificate chain: serve wss:// (needs --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// `default_repo` handed out by POST /api/onboard/register
    #[arg(long, value_name = "URL")]
    default_repo: Option<String>,
    /// An assignment without task_accepted within this is taken back [default: 60000]
    #[arg(long, value_name = "MS")]
    acceptance_timeout_ms: Option<u64>,
    /// An assigned task silent for this long is taken back (twice that while working)
    /// [default: 600000]
    #[arg(long, value_name = "MS")]
    stuck_threshold_ms: Option<u64>,
    /// How often stuck and overdue tasks are looked for [default: 30000]
    #[arg(long, value_name = "MS")]
    sweep_interval_ms: Option<u64>,
    /// A session that receives nothing for this long is closed [default: 60000]
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// An agent without a ping for this long is stale for the reaper [default: 60000]
    #[arg(long, value_name = "MS")]
    presence_ttl_ms: Option<u64>,
    /// A task queued this long (unless trivial) is dead-lettered [default: 600000]
    #[arg(long, value_name = "MS")]
    task_ttl_ms: Option<u64>,
    /// Validation failures on one connection within a minute that close it [default: 10]
    #[arg(long, value_name = "N")]
    violation_threshold: Option<u32>,
    /// Identify cooldowns after the 1st, 2nd and later lockouts [default: 30000,60000,300000]
    #[arg(long, value_name = "MS,MS,MS", value_delimiter = ',')]
    cooldowns_ms: Option<Vec<u64>>,
    /// Frames per minute and agent: ping and listings [default: 120]
    #[arg(long, value_name = "N")]
    rate_light: Option<u32>,
    /// Frames per minute and agent: task frames and the rest [default: 60]
    #[arg(long, value_name = "N")]
    rate_normal: Option<u32>,
    /// Frames per minute and agent: identify on an identified session [default: 10]
    #[arg(long, value_name = "N")]
    rate_heavy: Option<u32>,
}

impl DevHubArgs {
    /// The options these flags ask for, or the error message.
    fn options(self) -> Result<devhub::DevHubOptions, String> {
        if !self.listen.ip().is_loopback() && self.tokens.is_none() && !self.open {
            return Err(format!(
                "--listen {} is reachable from other machines, and without --tokens the dev hub accepts any token: anyone who reaches it can push tasks to its agents. Pass --tokens FILE, listen on 127.0.0.1, or pass --open if an open hub is meant",
                self.listen
            ));
        }
        let tokens = self.tokens.map(|p| devhub::load_tokens(&p)).transpose()?;
        let ms = std::time::Duration::from_millis;
        let mut timings = devhub::HubTimings::default();
        let mut limits = devhub::HubLimits::default();
        let set = |slot: &mut std::time::Duration, value: Option<u64>| {
            if let Some(value) = value {
                *slot = ms(value);
            }
        };
        set(&mut timings.acceptance_timeout, self.acceptance_timeout_ms);
        set(&mut timings.stuck_threshold, self.stuck_threshold_ms);
        set(&mut timings.stuck_sweep_interval, self.sweep_interval_ms);
        set(&mut timings.overdue_sweep_interval, self.sweep_interval_ms);
        set(&mut timings.idle_timeout, self.idle_timeout_ms);
        set(&mut timings.presence_ttl, self.presence_ttl_ms);
        set(&mut timings.task_ttl, self.task_ttl_ms);
        if let Some(n) = self.violation_threshold {
            limits.violation_threshold = n.max(1);
        }
        match self.cooldowns_ms.as_deref() {
            None => {}
            Some([a, b, c]) => limits.cooldowns = [ms(*a), ms(*b), ms(*c)],
            Some(_) => return Err("--cooldowns-ms takes three values: 1st,2nd,3rd".into()),
        }
        let per_minute = devhub::RateTier::per_minute;
        if let Some(n) = self.rate_light {
            limits.light = per_minute(n);
        }
        if let Some(n) = self.rate_normal {
            limits.normal = per_minute(n);
        }
        if let Some(n) = self.rate_heavy {
            limits.heavy = per_minute(n);
        }
        Ok(devhub::DevHubOptions {
            listen: self.listen,
            tokens,
            tls: self.tls_cert.zip(self.tls_key),
            print_presence: true,
            default_repo: self.default_repo,
            timings,
            limits,
        })
    }
}

/// The bundled agents.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AgentKind {
    /// A chat with an Ollama server (target type `ollama`)
    Ollama,
    /// The `claude` command-line tool (target type `claude`)
    Claude,
    /// The hub's `metadata.shell_command`, if the config allows it (target type `sidecar`)
    Shell,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default)
    Run,
    /// Run a development hub that models the AgentCom hub deployed today
    DevHub(Box<DevHubArgs>),
    /// Start the dev hub and a sidecar against it, and show what happens
    Demo,
    /// Check the config and what it points to; print the effective config (token redacted)
    CheckConfig,
    /// Show what the running sidecar is doing (from its state file)
    Status {
        /// Print the state as JSON
        #[arg(long)]
        json: bool,
    },
    /// Register a new agent with the hub and write its config (--config, default ./config.json)
    Register {
        /// The hub's HTTP address, e.g. http://hub-host:4000 (or its ws:// URL)
        #[arg(long, value_name = "URL")]
        hub: String,
        /// The new agent's id
        #[arg(long, value_name = "ID")]
        agent_id: String,
        /// Overwrite an existing config and token file
        #[arg(long)]
        force: bool,
        /// Put the token in a file of its own, mode 600 (without PATH: beside the config,
        /// named after it, e.g. my-agent.json -> my-agent.token)
        #[arg(long, value_name = "PATH", num_args = 0..=1)]
        token_file: Option<Option<PathBuf>>,
        /// Absolute paths under DIR for the log, queue, results and status files
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// PEM file of extra CA certificates for an https:// hub (also written as ca_file)
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Serve /healthz, /readyz and /metrics on this loopback address
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Then send the new agent a test task through the hub and wait for it to be
        /// completed (start its sidecar meanwhile)
        #[arg(long)]
        test_task: bool,
        /// How long --test-task waits, in seconds
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        test_timeout: u64,
    },
    /// Submit a task through the hub's API (POST /api/tasks) and print its id
    Submit {
        /// The task's description
        description: String,
        /// The hub's HTTP address (default: from the config's hub_url)
        #[arg(long, value_name = "URL")]
        hub: Option<String>,
        /// The agent it is meant for (assign_to; the hub honours it for trivial and complex
        /// tasks, see --complexity)
        #[arg(long, value_name = "AGENT")]
        to: Option<String>,
        /// urgent, high, normal or low
        #[arg(long, value_name = "P")]
        priority: Option<String>,
        /// A JSON object for the task's metadata
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// complexity_tier: trivial, standard, complex
        #[arg(long, value_name = "TIER")]
        complexity: Option<String>,
        /// Push it straight to the --to agent (POST /api/admin/push-task): not routed, its
        /// sidecar runs its wake_command; the hub keeps no record of it
        #[arg(long)]
        push: bool,
        /// Follow the task (GET /api/tasks/:id) to its end and print how it ended
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
        /// A file holding the token (instead of the config's; needs --hub)
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// PEM file of extra CA certificates for an https:// hub (default: the config's)
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Revoke the agent's token at the hub (DELETE /admin/tokens/:agent_id) and say what to
    /// remove on this machine
    Unregister {
        /// The hub's HTTP address (default: from the config's hub_url)
        #[arg(long, value_name = "URL")]
        hub: Option<String>,
        /// PEM file of extra CA certificates for an https:// hub (default: the config's)
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Do one task as a bundled agent (started by the sidecar as a wake command: the task in
    /// TASK_FILE, the answer in RESULTS_DIR)
    Agent {
        #[arg(value_enum)]
        kind: AgentKind,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::DevHub(args) => dev_hub(args),
        Command::Demo => demo::run(),
        Command::Agent { kind } => agent::run(match kind {
            AgentKind::Ollama => agent::Kind::Ollama,
            AgentKind::Claude => agent::Kind::Claude,
            AgentKind::Shell => agent::Kind::Shell,
        }),
        Command::CheckConfig => check_config(cli.config),
        Command::Status { json } => status(cli.config, json),
        Command::Register {
            hub,
            agent_id,
            force,
            token_file,
            state_dir,
            ca_file,
            metrics_listen,
            test_task,
            test_timeout,
        } => {
            let config = config::locate(cli.config.as_deref());
            // `--token-file` without a path: beside the config, named after it.
            let token_file =
                token_file.map(|p| p.unwrap_or_else(|| config.with_extension("token")));
            register::run(register::Options {
                hub,
                agent_id,
                config,
                force,
                token_file,
                state_dir: state_dir.map(|d| std::path::absolute(&d).unwrap_or(d)),
                ca_file: ca_file.map(|f| std::path::absolute(&f).unwrap_or(f)),
                metrics_listen,
                test_task: test_task.then(|| std::time::Duration::from_secs(test_timeout)),
            })
        }
        Command::Submit {
            description,
            hub,
            to,
            priority,
            metadata,
            complexity,
            push,
            wait,
            timeout,
            token_file,
            ca_file,
        } => register::ops::run_submit(register::ops::SubmitOptions {
            hub,
            description,
            to,
            priority,
            metadata,
            complexity,
            push,
            wait,
            timeout: std::time::Duration::from_secs(timeout),
            token_file,
            config: config::locate(cli.config.as_deref()),
            ca_file,
        }),
        Command::Unregister { hub, ca_file } => {
            register::ops::run_unregister(register::ops::UnregisterOptions {
                hub,
                config: config::locate(cli.config.as_deref()),
                ca_file,
            })
        }
    };
    std::process::exit(code);
}

fn run(config: Option<PathBuf>) -> i32 {
    match load(config) {
        Ok(config) => agentcom_sidecar::runtime::run(config),
        Err(code) => code,
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, i32> {
    let path = config::locate(config.as_deref());
    Config::load(&path).map_err(|e| {
        eprintln!("{}: error: {e}", env!("CARGO_PKG_NAME"));
        1
    })
}

fn check_config(config: Option<PathBuf>) -> i32 {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&config.effective()).unwrap_or_default()
    );
    // Which command each routing target runs (bundled agents as this very program).
    let own = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(env!("CARGO_PKG_NAME")));
    let _ = writeln!(out, "routing (routing_decision.target_type -> what runs):");
    for (target, command, how) in config.routing_table(&own) {
        let shown = command.map_or_else(|| "nothing".to_string(), |c| c.to_json().to_string());
        let _ = writeln!(out, "  {target:<10} -> {shown} {how}");
    }
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    for note in check::notes(&config) {
        eprintln!("note: {note}");
    }
    let problems = check::check(&config);
    for p in &problems {
        eprintln!(
            "error: {}: \"{}\": {}",
            config.path.display(),
            p.key,
            p.message
        );
    }
    if problems.is_empty() {
        let _ = writeln!(out, "config OK: {}", config.path.display());
        0
    } else {
        1
    }
}

fn status(config: Option<PathBuf>, json: bool) -> i32 {
    // Only the state file's name: the token (perhaps in a file only the service's user can
    // read) is not needed to say how the sidecar is doing.
    let path = config::locate(config.as_deref());
    let status_file = match Config::status_file_of(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: error: {e}", env!("CARGO_PKG_NAME"));
            return 1;
        }
    };
    let state = match agentcom_sidecar::status::read(&status_file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", env!("CARGO_PKG_NAME"));
            return 3;
        }
    };
    let liveness = state.liveness();
    let mut out = std::io::stdout().lock();
    if json {
        let mut value = serde_json::to_value(&state).unwrap_or_default();
        value["liveness"] = format!("{liveness:?}").to_lowercase().into();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", state.report(&liveness));
    }
    match liveness {
        Liveness::Running => 0,
        Liveness::Stopped | Liveness::Stale => 3,
    }
}

fn dev_hub(args: Box<DevHubArgs>) -> i32 {
    let options = match args.options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{}: error: {e}", env!("CARGO_PKG_NAME"));
            return 1;
        }
    };
    match devhub::run_until_signal(options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: dev hub: {e}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}
