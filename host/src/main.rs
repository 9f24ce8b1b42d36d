//! `burrow-host`: a thin command line over the `burrow_host` library.

use std::path::PathBuf;

use anyhow::Context as _;
use burrow_host::config::{Config, LogConfig, LogFormat};
use burrow_host::plugins::{PluginKind, PluginSlotConfig};
use clap::{Parser, Subcommand};

// mimalloc instead of glibc malloc: the request path allocates per request and glibc's
// malloc/free were 12% of the host's CPU at 64 connections (BENCHMARKS.md, "Peers").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Validate a config file as `run` would load it, plugins included (compiled,
    /// initialised with their config, their manifests' test vectors run) and exit: 0 if
    /// it would run, 1 with FILE:LINE: the offending key and why otherwise.
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
    /// Drive the workload lifecycle through the control API of the host whose config is
    /// given (its `[control]` table names the address and the shared secret). `create`
    /// and `token` print the agent token alone (for BURROW_AGENT_TOKEN=$(...)) unless --json.
    Workload {
        /// The host's config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The control API URL (default: the config's control.listen).
        #[arg(long)]
        url: Option<String>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: WorkloadCommand,
    },
    /// Make a private CA and certificates for replicas' mutual TLS (`cluster.tls`), for a
    /// quick start. The CA is made once in DIR and reused: run again to add or renew
    /// replicas. Prints each replica's `tls = {...}` line for its `[cluster]` table.
    ClusterCerts {
        /// Directory for ca.pem, ca-key.pem and <replica>.pem / <replica>-key.pem.
        #[arg(long)]
        dir: PathBuf,
        /// How long the replica certificates are valid, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// A replica and the hosts other replicas dial it by: NAME=HOST[,HOST...], e.g.
        /// replica-a=10.0.0.5 or replica-b=b.internal,10.0.0.6. Repeatable.
        #[arg(required = true, value_name = "NAME=HOSTS")]
        replicas: Vec<String>,
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
enum WorkloadCommand {
    /// Create a workload; prints its agent's first token.
    Create {
        /// Workload kind (a kind a workload plugin serves: workspace, ci-job, terminal, ...).
        #[arg(long)]
        kind: String,
        /// Workload id, also its agent's id (a-z, 0-9, '-'; job-<n> for a CI job).
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        owner: String,
        /// A user allowed besides the owner (repeatable).
        #[arg(long = "user")]
        users: Vec<String>,
        /// A group allowed (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A service the agent may offer (repeatable; none: any).
        #[arg(long = "service")]
        services: Vec<String>,
        /// The workload ends by itself this long from now (e.g. 8h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Agent token lifetime (default: control.token_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        token_ttl: Option<std::time::Duration>,
    },
    /// Print a fresh agent token for a live workload.
    Token {
        id: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// End a workload: revoke its tokens, stop its agent, close its users' sessions.
    Terminate {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show one workload and where its agent is connected.
    Get { id: String },
    /// List live workloads (--all: ended ones too).
    List {
        #[arg(long, default_value = "")]
        kind: String,
        #[arg(long)]
        all: bool,
    },
    /// Queue a work item (read from --file, or standard input) for the workload's agent.
    Enqueue {
        id: String,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Show a workload's work items and their status.
    Work { id: String },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a plugin component offline, as the host would load it (world, imports,
    /// init with a config, probe, and its manifest's test vectors), and print its world
    /// and exports. Exit 0 if it would load, 1 otherwise.
    Check {
        /// The `.wasm` component. Optional with --host-config: the slot's own file.
        file: Option<PathBuf>,
        /// The kind to check it as (default: detect, or the slot's): authorizer,
        /// workload or router.
        #[arg(long)]
        kind: Option<String>,
        /// A TOML file holding the plugin's config as top-level keys: what goes inside
        /// the slot's `config = { ... }` (not a `[config]` table).
        #[arg(long, conflicts_with = "host_config")]
        config: Option<PathBuf>,
        /// A host config file: check the plugin in one of its slots (its config, limits
        /// and outbound HTTP allowlist), chosen by --slot.
        #[arg(long)]
        host_config: Option<PathBuf>,
        /// With --host-config: authorizer (default), agents, router, workload,
        /// workload[N], or a slot's name.
        #[arg(long, requires = "host_config")]
        slot: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `plugin check` was asked.
struct PluginCheck {
    file: Option<PathBuf>,
    kind: Option<String>,
    config: Option<PathBuf>,
    host_config: Option<PathBuf>,
    slot: Option<String>,
    json: bool,
}

async fn plugin_check(args: PluginCheck) -> anyhow::Result<()> {
    let mut kind = match args.kind.as_deref() {
        None => None,
        Some(kind) => Some(kind.parse::<PluginKind>().map_err(|e| anyhow::anyhow!("--kind {kind:?}: {e}"))?),
    };
    let mut file = args.file;
    let slot = match (&args.config, &args.host_config) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let config = toml::from_str::<toml::Table>(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {}",
                    path.display(),
                    burrow_host::plugins::config::toml_message(&text, &e)
                )
            })?;
            PluginSlotConfig { config, ..PluginSlotConfig::default() }
        }
        (None, Some(path)) => {
            let host = Config::from_file(path)?;
            let spec = host
                .plugins
                .find_slot(args.slot.as_deref().unwrap_or("authorizer"))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            kind = kind.or(Some(spec.kind));
            if file.is_none() {
                let source = spec.config.source_or_default(spec.kind).expect("validated");
                file = Some(host.plugins.resolve_file(&source).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} runs the embedded {source}: name a .wasm file to check in its place",
                        spec.key
                    )
                })?);
            }
            spec.config
        }
        (None, None) => PluginSlotConfig::default(),
    };
    let Some(file) = file else {
        anyhow::bail!("name the .wasm file to check (or give --host-config to check a slot's own file)");
    };
    let no_config = args.config.is_none() && args.host_config.is_none();
    match burrow_host::plugins::check::check_file(&file, kind, slot).await {
        Ok(report) if args.json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Ok(report) => {
            println!("{}: OK", report.file.display());
            println!("  name:     {}", report.name);
            if let Some(version) = &report.version {
                println!("  version:  {version}");
            }
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
            if no_config && e.is_init() {
                eprintln!(
                    "(checked with an empty config: give the plugin its config with --config FILE, the \
                     `config` table as top-level keys, or --host-config host.toml --slot NAME)"
                );
            }
            std::process::exit(1);
        }
    }
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    // Colour only for a terminal: escape codes in a redirected log file are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
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
        Command::CheckConfig { file } => {
            init_logging(&LogConfig { filter: "warn".into(), ..LogConfig::default() });
            match burrow_host::check::check_config_file(&file).await {
                Ok((_, slots)) => {
                    println!("{}: OK", file.display());
                    for slot in slots {
                        println!(
                            "  {}: {} (sha256 {}, {} test vector(s) passed)",
                            slot.key,
                            slot.name,
                            &slot.sha256[..12],
                            slot.tests_passed
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Run { config: path } => {
            let config = Config::from_file(&path)?;
            init_logging(&config.log);
            let listeners = burrow_host::Listeners::bind(&config).await?;
            let (control, requests) = burrow_host::control_channel();
            #[cfg(unix)]
            burrow_host::reload_on_sighup(path, control.clone());
            let result = burrow_host::run_with_control(config, listeners, shutdown_signal(), requests).await;
            drop(control);
            result.context("host failed")
        }
        Command::ClusterCerts { dir, days, replicas } => {
            for spec in replicas {
                let (name, hosts) = spec
                    .split_once('=')
                    .with_context(|| format!("{spec:?}: expected NAME=HOST[,HOST...]"))?;
                let hosts: Vec<String> =
                    hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect();
                let (files, created) = burrow_host::cluster::pki::issue(&dir, name, &hosts, days)?;
                if created {
                    eprintln!(
                        "created the CA {} (keep {} private: it issues replica certificates)",
                        files.ca.display(),
                        dir.join("ca-key.pem").display()
                    );
                }
                eprintln!("issued {} for {}", files.cert.display(), hosts.join(", "));
                println!("{name}: {}", files.tls_toml());
            }
            Ok(())
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
        Command::Plugin(PluginCommand::Check { file, kind, config, host_config, slot, json }) => {
            init_logging(&LogConfig { filter: "warn".into(), ..LogConfig::default() });
            plugin_check(PluginCheck { file, kind, config, host_config, slot, json }).await
        }
        Command::Workload { config: path, url, json, action } => {
            let config = Config::from_file(&path)?;
            use burrow_host::workload_cli::WorkloadAction as A;
            let action = match action {
                WorkloadCommand::Create {
                    kind,
                    id,
                    owner,
                    users,
                    groups,
                    services,
                    expires_in,
                    labels,
                    token_ttl,
                } => A::Create { kind, id, owner, users, groups, services, expires_in, labels, token_ttl },
                WorkloadCommand::Token { id, ttl } => A::Token { id, ttl },
                WorkloadCommand::Terminate { id, reason } => A::Terminate { id, reason },
                WorkloadCommand::Get { id } => A::Get { id },
                WorkloadCommand::List { kind, all } => A::List { kind, all },
                WorkloadCommand::Enqueue { id, file } => {
                    let payload = match file {
                        Some(f) => {
                            std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
                        }
                        None => {
                            let mut buf = Vec::new();
                            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                                .context("reading standard input")?;
                            buf
                        }
                    };
                    A::Enqueue { id, payload }
                }
                WorkloadCommand::Work { id } => A::Work { id },
            };
            match burrow_host::workload_cli::run(&config, url, action, json).await {
                Ok(out) => {
                    if !out.is_empty() {
                        println!("{out}");
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("burrow-host workload: {e}");
                    std::process::exit(1);
                }
            }
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
                    control: None,
                };
                burrow_host::run(config, listeners, demo.stop.cancelled_owned()).await
            })
            .await
            .context("demo failed")
        }
    }
}
