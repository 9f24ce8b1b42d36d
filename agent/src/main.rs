//! `burrow-agent`: command-line front end for the `burrow_agent` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use burrow_agent::{AgentConfig, AgentError, HostUrl, ServiceSpec, WorkHook};
use clap::{Parser, ValueEnum};
use tracing::{info, warn};

// mimalloc instead of glibc malloc, as in the host: every tunnelled request allocates
// (frames, buffers), and glibc's malloc/free showed in the agent's profile too
// (BENCHMARKS.md, "Peers").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN_ENV: &str = "BURROW_AGENT_TOKEN";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Burrow agent: runs beside a workload, dials out to a Burrow host and serves the
/// reverse tunnels the host hands user connections to.
///
/// The agent token is read from the BURROW_AGENT_TOKEN environment variable or from
/// --token-file, never from a command-line argument (those show in `ps`).
///
/// Pool defaults differ from GitLab KAS (2 idle, +10 per step, 500 max): 4 idle streams
/// absorb small bursts with no round trip, a claim that empties the pool doubles the idle
/// target instead of ramping 10 at a time, and the ceiling is 1000 because users with
/// more than 500 parallel watches hit KAS's limit. KAS also keeps one connection per
/// agent; this agent keeps --connections (2) on distinct host replicas, so a replica that
/// dies or drains shifts new requests to the other connection with no error.
///
/// Workload agents (a bwt1. token from the control plane) renew their token on every
/// connection before it expires, and exit for good when the host says the workload is
/// over or the token is dead. With --work-hook they also run the work items the host
/// queues for them, one at a time: the hook gets the payload on stdin and
/// BURROW_WORK_ITEM_ID, BURROW_WORK_DELIVERY in its environment (no other BURROW_*
/// variable); exit status 0 is success, and the last 4 KiB of its output is reported.
///
/// Exit codes:
///   0  stopped by SIGTERM or ctrl-c
///   1  any other error (configuration, TLS setup, ...)
///   2  command-line usage error
///   3  the workload was terminated
///   4  the workload ended (expired)
///   5  the agent token expired
///   6  the agent token was revoked or is not valid
///
/// Logging: RUST_LOG sets the filter (default "info").
#[derive(Debug, Parser)]
#[command(name = "burrow-agent", version, verbatim_doc_comment)]
struct Cli {
    /// Host agent endpoint: grpc://, grpcs://, ws:// or wss://HOST[:PORT].
    /// grpc = cleartext HTTP/2, grpcs = TLS (ALPN h2), ws/wss = the same gRPC inside one
    /// WebSocket for proxies that pass only HTTP/1.1. Default port 80, or 443 with TLS.
    /// Repeat the flag or separate URLs with commas to list host replicas (at most 16;
    /// schemes may differ); one load-balanced URL works too.
    #[arg(long = "host", value_name = "URL", required = true, value_delimiter = ',', value_parser = parse_host, verbatim_doc_comment)]
    hosts: Vec<HostUrl>,

    /// Simultaneous connections, each to a different host replica when there are that
    /// many (1 to 16). With two, losing a replica shifts traffic to the other connection
    /// with no failed request.
    #[arg(long, value_name = "N", default_value_t = burrow_agent::DEFAULT_CONNECTIONS, verbatim_doc_comment)]
    connections: usize,

    /// When there were fewer replicas than --connections, a connection kept on an
    /// already used replica tries to move to a distinct one after this long (±20%);
    /// each round that finds none doubles the wait, up to 30 minutes.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, verbatim_doc_comment)]
    diversify_interval: Duration,

    /// A service the agent may dial, as NAME=HOST:PORT (repeat for more). The agent
    /// dials these and nothing else. NAME: [a-z0-9][a-z0-9_]*, at most 63 characters.
    #[arg(long = "service", value_name = "NAME=HOST:PORT", required_unless_present = "sessions", value_parser = parse_service, verbatim_doc_comment)]
    services: Vec<ServiceSpec>,

    /// A session service (repeat for more): the host may open interactive sessions
    /// under this name (SSH sessions, web terminals), served by the agent itself with
    /// the configured shell in a terminal. Shares the namespace of --service names.
    #[arg(long = "session", value_name = "NAME", verbatim_doc_comment)]
    sessions: Vec<String>,

    /// The login shell sessions run; a command runs as SHELL -c COMMAND. Nothing else
    /// is ever started. [default: $SHELL, else /bin/sh]
    #[arg(long, value_name = "PATH", requires = "sessions", verbatim_doc_comment)]
    shell: Option<PathBuf>,

    /// The program serving the sftp subsystem (scp, sftp). "none" refuses sftp.
    /// [default: OpenSSH's sftp-server where the system installs it]
    #[arg(long, value_name = "PATH|none", requires = "sessions", verbatim_doc_comment)]
    sftp_server: Option<String>,

    /// A client environment variable sessions may set, as NAME or PREFIX* (repeat for
    /// more). PATH, HOME, SHELL, USER, LD_* and BURROW_* never pass.
    /// [default: LANG LC_* COLORTERM]
    #[arg(long = "session-env", value_name = "PATTERN", requires = "sessions", verbatim_doc_comment)]
    session_env: Vec<String>,

    /// Sessions at once; more are refused.
    #[arg(long, value_name = "N", default_value_t = burrow_agent::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,

    /// Working directory of sessions. [default: $HOME, else /]
    #[arg(long, value_name = "DIR", requires = "sessions", verbatim_doc_comment)]
    session_dir: Option<PathBuf>,

    /// File holding the agent token (surrounding whitespace is trimmed). Without it the
    /// token comes from the BURROW_AGENT_TOKEN environment variable.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    token_file: Option<PathBuf>,

    /// PEM file of extra CA certificates to trust for grpcs:// and wss://, in addition to
    /// the built-in web PKI roots.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    ca_file: Option<PathBuf>,

    /// Allow grpc:// and ws:// to a host that is not loopback: the agent token and the
    /// tunnels then cross the network unencrypted. Without it such a URL is refused;
    /// cleartext to a literal loopback address (127.0.0.0/8, ::1) or a localhost /
    /// *.localhost name is always allowed. Any cleartext URL logs a warning at start.
    #[arg(long, verbatim_doc_comment)]
    insecure: bool,

    /// Identifies this process among agents sharing one token.
    /// [default: $HOSTNAME, else a random id]
    #[arg(long, value_name = "ID", verbatim_doc_comment)]
    replica_id: Option<String>,

    /// Parked tunnel streams kept ready at the host, per connection.
    #[arg(long, value_name = "N", default_value_t = burrow_agent::DEFAULT_MIN_IDLE)]
    min_idle: usize,

    /// Ceiling on tunnel streams, parked plus active, per connection.
    #[arg(long, value_name = "N", default_value_t = burrow_agent::DEFAULT_MAX_STREAMS)]
    max_streams: usize,

    /// Parked streams above --min-idle close after this long unused.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,

    /// Time allowed to connect to a service.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    dial_timeout: Duration,

    /// Time allowed to reach the host and finish the handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// On SIGTERM or ctrl-c, how long active tunnels may finish before they are reset.
    /// A second signal stops at once.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, verbatim_doc_comment)]
    shutdown_grace: Duration,

    /// Program that runs each work item the host queues for this agent, run directly
    /// (no shell) with the payload on stdin. Without it the agent asks for no work.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    work_hook: Option<PathBuf>,

    /// An argument for --work-hook (repeat for more, in order), e.g.
    /// --work-hook /bin/sh --work-hook-arg -c --work-hook-arg 'run-job "$BURROW_WORK_ITEM_ID"'
    #[arg(
        long = "work-hook-arg",
        value_name = "ARG",
        requires = "work_hook",
        allow_hyphen_values = true,
        verbatim_doc_comment
    )]
    work_hook_args: Vec<String>,

    /// A work item's hook running longer is killed (with everything it started) and the
    /// item reported as failed.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, verbatim_doc_comment)]
    work_hook_timeout: Duration,

    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn parse_host(s: &str) -> Result<HostUrl, String> {
    HostUrl::parse(s).map_err(|e| e.to_string())
}

fn parse_service(s: &str) -> Result<ServiceSpec, String> {
    s.parse().map_err(|e: burrow_agent::ConfigError| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn read_token(token_file: Option<&PathBuf>) -> anyhow::Result<String> {
    let from_env = std::env::var(TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
    let token = match token_file {
        Some(path) => {
            if from_env.is_some() {
                warn!("both --token-file and {TOKEN_ENV} are set; using --token-file");
            }
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the agent token from {}", path.display()))?
        }
        None => match from_env {
            Some(token) => token,
            None => bail!("no agent token: set {TOKEN_ENV} or pass --token-file PATH"),
        },
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("the agent token is empty");
    }
    Ok(token)
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the agent");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Print the cause chain on one line; a backtrace is noise for a configuration error.
    match runtime.block_on(agent_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<AgentError>() {
            Some(final_ @ AgentError::Final { .. }) => {
                eprintln!("burrow-agent: {final_}; exiting");
                ExitCode::from(final_.exit_code())
            }
            _ => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn agent_main(cli: Cli) -> anyhow::Result<()> {
    let token = read_token(cli.token_file.as_ref())?;

    let first = cli.hosts.first().context("no --host given")?;
    let mut config = AgentConfig::new(&first.to_string(), token)?;
    config.hosts = cli.hosts;
    config.connections = cli.connections;
    config.diversify_interval = cli.diversify_interval;
    config.services = cli.services;
    if !cli.sessions.is_empty() {
        let mut sessions = burrow_agent::SessionConfig::new(cli.sessions);
        if let Some(shell) = cli.shell {
            sessions.shell = shell;
        }
        match cli.sftp_server.as_deref() {
            Some("none") => sessions.sftp_server = None,
            Some(path) => sessions.sftp_server = Some(PathBuf::from(path)),
            None => {}
        }
        if !cli.session_env.is_empty() {
            sessions.env = cli.session_env;
        }
        sessions.max_sessions = cli.max_sessions;
        sessions.dir = cli.session_dir;
        config.sessions = Some(sessions);
    }
    config.ca_file = cli.ca_file;
    config.insecure = cli.insecure;
    if let Some(id) = cli.replica_id {
        config.replica_id = id;
    }
    config.min_idle = cli.min_idle;
    config.max_streams = cli.max_streams;
    config.idle_timeout = cli.idle_timeout;
    config.dial_timeout = cli.dial_timeout;
    config.connect_timeout = cli.connect_timeout;
    config.shutdown_grace = cli.shutdown_grace;
    config.work_hook = cli.work_hook.map(|program| WorkHook {
        program,
        args: cli.work_hook_args,
        timeout: cli.work_hook_timeout,
    });
    config.validate()?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = burrow_agent::run(config, async move {
        let _ = stop_rx.await;
    });
    tokio::pin!(agent);
    tokio::select! {
        result = &mut agent => return Ok(result?),
        _ = signal() => {
            info!("shutting down; signal again to stop at once");
            let _ = stop_tx.send(());
        }
    }
    tokio::select! {
        result = &mut agent => Ok(result?),
        _ = signal() => {
            warn!("second signal: stopping without waiting for active tunnels");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_has_documented_defaults() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["burrow-agent", "--host", "wss://h", "--service", "web=127.0.0.1:3000"])
                .unwrap();
        assert_eq!((cli.min_idle, cli.max_streams), (4, 1000));
        assert_eq!(cli.idle_timeout, Duration::from_secs(60));
        assert_eq!(cli.services.len(), 1);
        assert_eq!((cli.connections, cli.diversify_interval), (2, Duration::from_secs(60)));
        assert!(!cli.insecure);
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--host",
            "--service",
            "--token-file",
            "--ca-file",
            "--insecure",
            "--replica-id",
            "--min-idle",
            "--max-streams",
            "--idle-timeout",
            "--log-format",
            "--connections",
            "--diversify-interval",
            "--work-hook",
            "--work-hook-arg",
            "--work-hook-timeout",
            "BURROW_AGENT_TOKEN",
            "BURROW_WORK_ITEM_ID",
            "Exit codes",
            "6  the agent token was revoked",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn hosts_repeat_and_split_on_commas() {
        let cli = Cli::try_parse_from([
            "burrow-agent",
            "--host",
            "grpc://a:1,wss://b",
            "--host",
            "ws://c:3",
            "--connections",
            "3",
            "--diversify-interval",
            "5s",
            "--service",
            "web=127.0.0.1:3000",
        ])
        .unwrap();
        let hosts: Vec<String> = cli.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["grpc://a:1", "wss://b:443", "ws://c:3"]);
        assert_eq!((cli.connections, cli.diversify_interval), (3, Duration::from_secs(5)));
        let bad = Cli::try_parse_from(["burrow-agent", "--host", "grpc://a,https://b", "--service", "a=h:1"]);
        assert!(bad.unwrap_err().to_string().contains("use grpc://"));
        assert!(Cli::try_parse_from(["burrow-agent", "--service", "a=h:1"]).is_err(), "--host is required");
    }

    #[test]
    fn token_is_never_a_flag_and_a_service_is_required() {
        assert!(Cli::try_parse_from([
            "burrow-agent",
            "--host",
            "grpc://h",
            "--service",
            "a=h:1",
            "--token",
            "x"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["burrow-agent", "--host", "grpc://h"]).is_err());
    }

    #[test]
    fn insecure_flag_is_off_unless_given() {
        let base = ["burrow-agent", "--host", "grpc://example.com", "--service", "a=h:1"];
        assert!(!Cli::try_parse_from(base).unwrap().insecure);
        assert!(Cli::try_parse_from(base.iter().chain(&["--insecure"])).unwrap().insecure);
        assert!(Cli::try_parse_from(base.iter().chain(&["--insecure=yes"])).is_err(), "a plain switch");
    }

    #[test]
    fn work_hook_flags() {
        let base = ["burrow-agent", "--host", "grpc://h", "--service", "a=h:1"];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        let cli = parse(&[]).unwrap();
        assert_eq!((cli.work_hook, cli.work_hook_timeout), (None, Duration::from_secs(600)));
        assert!(cli.work_hook_args.is_empty());

        let cli = parse(&[
            "--work-hook",
            "/bin/sh",
            "--work-hook-arg",
            "-c",
            "--work-hook-arg",
            "cat; exit 3",
            "--work-hook-arg=--flag",
            "--work-hook-timeout",
            "90s",
        ])
        .unwrap();
        assert_eq!(cli.work_hook.as_deref(), Some(std::path::Path::new("/bin/sh")));
        assert_eq!(cli.work_hook_args, ["-c", "cat; exit 3", "--flag"]);
        assert_eq!(cli.work_hook_timeout, Duration::from_secs(90));

        assert!(parse(&["--work-hook-arg", "x"]).is_err(), "--work-hook-arg needs --work-hook");
        assert!(parse(&["--work-hook", "/bin/true", "--work-hook-timeout", "soon"]).is_err());
    }

    #[test]
    fn final_refusals_have_their_own_exit_codes() {
        use burrow_agent::FinalReason;
        let codes: Vec<u8> = FinalReason::ALL.iter().map(|r| r.exit_code()).collect();
        assert_eq!(codes, [3, 4, 5, 6]);
        let e = AgentError::Final { reason: FinalReason::WorkloadTerminated, message: "maintenance".into() };
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.to_string(), "the workload was terminated (reason: maintenance)");
        let e = AgentError::Final { reason: FinalReason::TokenRevoked, message: String::new() };
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (6, "the agent token was revoked or is not valid".to_owned())
        );
        assert_eq!(AgentError::Tls("x".into()).exit_code(), 1);
        // main finds it through anyhow.
        let any: anyhow::Error =
            AgentError::Final { reason: FinalReason::WorkloadEnded, message: "m".into() }.into();
        assert_eq!(any.downcast_ref::<AgentError>().map(AgentError::exit_code), Some(4));
    }

    #[test]
    fn token_file_is_trimmed() {
        let path = std::env::temp_dir().join(format!("burrow-agent-token-{}", std::process::id()));
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(read_token(Some(&path)).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(Some(&path)).unwrap_err().to_string().contains("empty"));
        std::fs::remove_file(&path).unwrap();
    }
}
