//! `burrow`: the user's command-line client for a Burrow host.
//!
//! `burrow forward URL` listens on a local port and carries each connection to the
//! workload service that URL names, over the host's HTTPS ingress (see
//! `burrow_agent::forward`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use burrow_agent::forward::{ForwardConfig, Forwarder};
use burrow_proto::Secret;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN_ENV: &str = "BURROW_TOKEN";

/// Burrow's user client.
///
/// Logging: RUST_LOG sets the filter (default "info").
#[derive(Debug, Parser)]
#[command(name = "burrow", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forward a local port to a workload's service through the host, like
    /// `kubectl port-forward`, over HTTPS (one WebSocket per connection).
    ///
    /// The URL is the service's address at the host, as for a browser: with the
    /// workspace kind, https://<service>-<workspace>.<domain> (https://db-ws1.example.com
    /// reaches service db of workspace ws1). Your token is read from BURROW_TOKEN or
    /// --token-file, never from the command line (it would show in `ps`).
    ///
    /// Example: BURROW_TOKEN=... burrow forward -l 5432 https://db-ws1.example.com
    #[command(verbatim_doc_comment)]
    Forward(ForwardArgs),
}

#[derive(Debug, clap::Args)]
struct ForwardArgs {
    /// The workload service's URL (http:// or https://).
    url: String,
    /// Where to listen: PORT or ADDRESS:PORT. Port 0 picks a free port (printed).
    #[arg(long, short = 'l', value_name = "[ADDRESS:]PORT", default_value = "127.0.0.1:0")]
    listen: String,
    /// A file holding your token (else BURROW_TOKEN is used).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM), for a host with a private CA.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Connections carried at once; more wait.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// Dial ADDRESS:PORT instead of resolving the URL's host name (which is still sent
    /// as Host and TLS server name), like curl's --connect-to.
    #[arg(long, value_name = "ADDRESS:PORT")]
    connect_to: Option<SocketAddr>,
    /// How long reaching the host and its answer may take, per connection.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Allow an http:// URL to a host that is not loopback: your token and the forwarded
    /// traffic then cross the network unencrypted. Without it such a URL is refused;
    /// http:// to a loopback address or a localhost / *.localhost name (or --connect-to a
    /// loopback address) is always allowed, with a warning.
    #[arg(long, verbatim_doc_comment)]
    insecure: bool,
}

fn listen_addr(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().with_context(|| format!("--listen {text:?}: expected PORT or ADDRESS:PORT"))
}

fn token(args: &ForwardArgs) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("--token-file {} is empty", path.display());
        }
        return Ok(Some(Secret::new(token)));
    }
    Ok(std::env::var(TOKEN_ENV).ok().filter(|t| !t.trim().is_empty()).map(|t| Secret::new(t.trim())))
}

async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let listen = listen_addr(&args.listen)?;
    let mut config = ForwardConfig::new(args.url.clone(), token(&args)?);
    config.ca_file = args.ca_file.clone();
    config.max_connections = args.max_connections;
    config.connect_timeout = args.connect_timeout;
    config.connect_to = args.connect_to;
    config.insecure = args.insecure;
    let forwarder = Arc::new(Forwarder::new(config)?);
    forwarder.check().await.with_context(|| format!("cannot forward to {}", args.url))?;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // On stdout, so scripts can read the port.
    println!("Forwarding from {local} -> {}", args.url);
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    forwarder.run(listener, shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Forward(args) => forward(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("burrow: {error:#}");
            ExitCode::FAILURE
        }
    }
}
