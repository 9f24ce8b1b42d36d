//! `burrow-host`: a thin command line over the `burrow_host` library.

use std::path::PathBuf;

use anyhow::Context as _;
use burrow_host::config::{Config, LogConfig, LogFormat};
use clap::{Parser, Subcommand};

/// Burrow host: reach workloads behind NAT through reverse tunnels their agents open.
#[derive(Debug, Parser)]
#[command(name = "burrow-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a host from a TOML config file (see examples/host.toml for every option and its default).
    Run {
        /// Path to the config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 if valid, 1 with the offending key otherwise.
    CheckConfig {
        /// Path to the config file.
        file: PathBuf,
    },
    /// Quickstart: a host, an agent and a demo workload (web page, WebSocket echo, SSE
    /// clock) in one process, with embedded defaults and no Redis.
    Demo {
        /// Port for the user-facing HTTP ingress on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port for the agent listener on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 0)]
        agent_port: u16,
        /// Agent transport the demo agent uses: grpc or ws.
        #[arg(long, default_value = "grpc")]
        transport: String,
    },
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::from_file(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        Command::Run { config } => {
            let config = Config::from_file(&config)?;
            init_logging(&config.log);
            let listeners = burrow_host::Listeners::bind(&config).await?;
            burrow_host::run(config, listeners, shutdown_signal()).await.context("host failed")
        }
        Command::Demo { port, agent_port, transport } => {
            init_logging(&LogConfig::default());
            let options = burrow_host::demo::DemoOptions { port, agent_port, transport };
            burrow_host::demo::run(options, shutdown_signal()).await.context("demo failed")
        }
    }
}
