//! A Burrow host replica in its own process, so a test can SIGKILL it like a crash.
//!
//! `burrow-replica CONFIG.toml`: runs `burrow_host::run` exactly as `burrow-host run`
//! does, but binds every listener on `127.0.0.1:0` and prints the bound addresses as
//! one JSON line on stdout first. SIGTERM drains gracefully; SIGHUP reloads the plugins
//! from the (re-read) file.

use std::path::PathBuf;

use anyhow::Context as _;
use burrow_host::{Config, Listeners};
use tokio::net::TcpListener;

async fn bind() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os().nth(1).context("usage: burrow-replica CONFIG.toml")?.into();
    let config = Config::from_file(&path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let listeners = Listeners {
        agents: bind().await?,
        ingress: bind().await?,
        admin: Some(bind().await?),
        cluster: if config.cluster.is_some() { Some(bind().await?) } else { None },
        ssh: if config.ssh.is_some() { Some(bind().await?) } else { None },
        control: if config.control.is_some() { Some(bind().await?) } else { None },
    };
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let line = serde_json::json!({
        "agents": addr(&listeners.agents),
        "ingress": addr(&listeners.ingress),
        "admin": listeners.admin.as_ref().map(addr),
        "cluster": listeners.cluster.as_ref().map(addr),
        "ssh": listeners.ssh.as_ref().map(addr),
    });
    println!("{line}");
    let term = async {
        let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        s.recv().await;
    };
    // SIGHUP re-reads the file and reloads the plugins, as `burrow-host run` does.
    let (control, requests) = burrow_host::control_channel();
    burrow_host::reload_on_sighup(path, control.clone());
    let result = burrow_host::run_with_control(config, listeners, term, requests).await;
    drop(control);
    result.context("host failed")
}
