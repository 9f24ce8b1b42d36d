//! `burrow-host`: a thin command line over the `burrow_host` library.

use std::path::PathBuf;

use anyhow::Context as _;
use burrow_host::config::{Config, LogConfig, LogFormat};
use burrow_host::plugins::PluginKind;
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
    /// Plugin tools.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print the SSH host key's fingerprint and a known_hosts line for users, creating
    /// the key (as `run` would) if the config's ssh.host_key does not exist yet.
    SshHostKey {
        /// Path to the config file (its `[ssh]` table names the key).
        #[arg(long, short)]
        config: PathBuf,
        /// The host name users connect to, for the known_hosts line.
        #[arg(long, default_value = "localhost")]
        host: String,
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

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a plugin component offline, as the host would load it (world, imports,
    /// init, probe, and the test vectors of FILE's manifest FILE.toml if there is one),
    /// and print its world and exports. Exit 0 if it would load, 1 otherwise.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        /// The kind to check it as (default: detect): authorizer, workload or router.
        #[arg(long)]
        kind: Option<String>,
        /// A TOML file with the plugin's `config` table (what the host would pass).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

async fn plugin_check(
    file: PathBuf,
    kind: Option<String>,
    config: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let kind = match kind.as_deref() {
        None => None,
        Some(kind) => Some(kind.parse::<PluginKind>().map_err(|e| anyhow::anyhow!("--kind {kind:?}: {e}"))?),
    };
    let config = match config {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("{} is not a TOML table", path.display()))?
        }
        None => toml::Table::new(),
    };
    match burrow_host::plugins::check::check_file(&file, kind, config).await {
        Ok(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Ok(report) => {
            println!("{}: OK", report.file.display());
            println!("  world:    {}", report.world);
            println!("  sha256:   {}", report.sha256);
            println!("  size:     {} bytes", report.size_bytes);
            if let Some(kind) = &report.workload_kind {
                println!(
                    "  serves:   workload kind {kind:?} (lifecycle hooks: {})",
                    if report.lifecycle_hooks { "yes" } else { "no" }
                );
            }
            println!("  tests:    {} manifest test vector(s) passed", report.tests_passed);
            println!("  exports:");
            for e in &report.exports {
                println!("    {e}");
            }
            println!("  imports:");
            for i in &report.imports {
                println!("    {i}");
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// On SIGHUP, re-reads the config file and applies its `[plugins]` table.
#[cfg(unix)]
fn reload_on_sighup(path: PathBuf, control: burrow_host::ControlSender) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; plugin reloads only through the admin API");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the plugin configuration");
            match Config::from_file(&path) {
                Ok(config) => {
                    let _ = control
                        .send(burrow_host::ControlRequest::ReloadPlugins(Box::new(config.plugins), None))
                        .await;
                }
                Err(e) => tracing::error!("SIGHUP: the config file is invalid, nothing reloaded: {e}"),
            }
        }
    });
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
        Command::Run { config: path } => {
            let config = Config::from_file(&path)?;
            init_logging(&config.log);
            let listeners = burrow_host::Listeners::bind(&config).await?;
            let (control, requests) = burrow_host::control_channel();
            #[cfg(unix)]
            reload_on_sighup(path, control.clone());
            let result = burrow_host::run_with_control(config, listeners, shutdown_signal(), requests).await;
            drop(control);
            result.context("host failed")
        }
        Command::SshHostKey { config: path, host } => {
            let config = Config::from_file(&path)?;
            let ssh = config.ssh.context("the config has no [ssh] table")?;
            let (key, created) = burrow_host::ssh::host_key::load_or_create(&ssh.host_key)?;
            if created {
                eprintln!("created {}", ssh.host_key.display());
            }
            println!("{}", burrow_host::ssh::host_key::fingerprint(&key));
            println!("{}", burrow_host::ssh::host_key::known_hosts_line(&key, &host, ssh.listen.port()));
            Ok(())
        }
        Command::Plugin(PluginCommand::Check { file, kind, config, json }) => {
            init_logging(&LogConfig { filter: "warn".into(), ..LogConfig::default() });
            plugin_check(file, kind, config, json).await
        }
        Command::Demo { port, agent_port, transport } => {
            init_logging(&LogConfig::default());
            let options = burrow_demo::DemoOptions { port, agent_port, transport };
            // The demo crate runs the agent and the workload; the host is handed to it here,
            // so no host library depends on the agent.
            burrow_demo::run(options, shutdown_signal(), |demo| async move {
                let config = Config::from_toml(&demo.config_toml).expect("the demo config is valid TOML");
                let listeners = burrow_host::Listeners {
                    agents: demo.agents,
                    ingress: demo.ingress,
                    admin: None,
                    cluster: None,
                    ssh: None,
                };
                burrow_host::run(config, listeners, demo.stop.cancelled_owned()).await
            })
            .await
            .context("demo failed")
        }
    }
}
