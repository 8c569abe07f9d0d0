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
use agentcom_sidecar::{check, demo, devhub};

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
