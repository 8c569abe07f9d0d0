//! The `agentcom-sidecar` binary: command line, then one of the library's entry points.
//!
//! Exit codes: 0 clean shutdown; 1 configuration or start-up error; 70 the Supervisor gave up
//! (restart intensity exceeded); 75 the hub asked for a restart; 128 + N a second signal N
//! during shutdown. `status` exits 0 while the sidecar runs and 3 when it does not (as
//! `systemctl status` does).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use std::io::Write;

use agentcom_sidecar::config::{self, Config};
use agentcom_sidecar::status::Liveness;
use agentcom_sidecar::{check, demo, devhub, register};

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

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default)
    Run,
    /// Run a development hub that speaks the AgentCom protocol
    DevHub {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: SocketAddr,
        /// JSON file {"agent_id": "token", …}; without it any token is accepted
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// PEM certificate chain: serve wss:// (needs --tls-key)
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
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
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::DevHub {
            listen,
            tokens,
            tls_cert,
            tls_key,
        } => dev_hub(listen, tokens, tls_cert.zip(tls_key)),
        Command::Demo => demo::run(),
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
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
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
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let state = match agentcom_sidecar::status::read(&config.status_file) {
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

fn dev_hub(listen: SocketAddr, tokens: Option<PathBuf>, tls: Option<(PathBuf, PathBuf)>) -> i32 {
    let tokens = match tokens.map(|p| devhub::load_tokens(&p)).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: error: {e}", env!("CARGO_PKG_NAME"));
            return 1;
        }
    };
    let options = devhub::DevHubOptions {
        listen,
        tokens,
        tls,
        print_presence: true,
        ..devhub::DevHubOptions::default()
    };
    match devhub::run_until_signal(options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: dev hub: {e}", env!("CARGO_PKG_NAME"));
            1
        }
    }
}
