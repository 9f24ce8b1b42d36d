//! `--suite agents`: agents at scale against the real release `burrow-host` process
//! (issue 14). Two figures:
//!
//! 1. **Host memory per idle connected agent.** One host process per run, default config
//!    except listen addresses, the static agent list (`[plugins.agents]`, one identity
//!    and token per agent, the slot's limits at their defaults) and the per-address caps
//!    N agents on one address
//!    need ([`host::agent_port_overrides`]). Its VmRSS (and RssAnon) once settled with no
//!    agent, then with `--agents-small` and with `--agents` agents connected, each agent a
//!    `burrow_agent::spawn` in this process at the library's defaults (2 connections, 4
//!    parked tunnels each; `--agent-connections`, `--agent-min-idle` change them), offering
//!    one service on a tiny local HTTP workload. Agents start `--agents-batch` at a time; a
//!    batch is done when the host's metrics show every agent, session and parked tunnel
//!    and every agent's status says it is fully up. RSS is read once it stops changing.
//!    Per agent: the slope between the two steps, and each step against the baseline.
//! 2. **Reconnect after a replica restart.** With the N agents connected, the host gets
//!    SIGTERM (graceful) or SIGKILL; once it has exited a new one starts on the same
//!    ports. From its agent port accepting, `/metrics` is polled every 50 ms until it
//!    holds all N agents (and every agent's status says it is back: a connection up with
//!    a parked tunnel), then 1000 more requests. Meanwhile four clients send `GET /hello`
//!    through the new ingress, paced at 200/s in all, each to an agent seen back. Also:
//!    the CPU the host and the bench used, the agents' dials, the kernel's listen-queue
//!    counters, and the new host's RSS once settled (the same agents, arrived at once).
//!
//! Every figure is the median over `--runs` runs (default 3). Files go to
//! `bench/results/<date>-agents/` (or `--out`). The bench and each host need a file
//! descriptor per agent connection: the suite raises its soft limit to the hard one, and
//! stops with what to change when that is not enough.

mod fleet;
mod host;
mod memory;
mod metrics;
mod reconnect;
mod record;
mod report;
mod run;
mod summary;
mod traffic;

use std::path::PathBuf;

use anyhow::{bail, Context};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::Args;

/// Open files the bench and the host each need for `agents` agents of `connections`
/// connections: one socket per connection (an agent re-dials only after closing, and
/// its duplicate-replica dials take the place of the connection they would become),
/// 5% for diversify probes, two per agent the clients ask (its pooled connection to
/// the workload, both ends in the bench), and 1024 for everything else.
fn files_needed(agents: usize, connections: usize) -> u64 {
    (agents * connections + agents / 20 + 2 * traffic::TARGETS.min(agents) + 1024) as u64
}

/// Raises this process's open-files limit: the soft limit to the hard one, and the hard
/// one too when it is below what the agents need (possible with CAP_SYS_RESOURCE, up to
/// `fs.nr_open`). Returns the limit the host children get, and a line for the report.
fn raise_nofile(agents: usize, connections: usize) -> anyhow::Result<(u64, String)> {
    let before = getrlimit(Resource::Nofile);
    let need = files_needed(agents, connections);
    let hard = before.maximum.unwrap_or(u64::MAX);
    let soft_to_hard = Rlimit { current: Some(hard), maximum: Some(hard) };
    setrlimit(Resource::Nofile, soft_to_hard)
        .context("raising the open-files soft limit to the hard limit")?;
    if hard < need {
        if let Err(e) = setrlimit(Resource::Nofile, Rlimit { current: Some(need), maximum: Some(need) }) {
            let fixed = 1024 + 2 * traffic::TARGETS as u64;
            let fits = (hard.saturating_sub(fixed) as usize * 20) / (20 * connections + 1);
            bail!(
                "--suite agents with {agents} agents of {connections} connection(s) needs {need} open files in \
                 the bench and in the host (a socket per connection on each side); the hard limit is {hard} and \
                 raising it failed ({e}). Raise it (`ulimit -Hn {need}` with CAP_SYS_RESOURCE, LimitNOFILE= in \
                 a unit, /etc/security/limits.conf, `docker run --ulimit nofile={need}`), or pass --agents {fits} \
                 or --agent-connections {}",
                connections.saturating_sub(1).max(1)
            );
        }
    }
    let after = getrlimit(Resource::Nofile);
    let show = |l: Rlimit| {
        let f = |v: Option<u64>| v.map_or("unlimited".to_owned(), |v| v.to_string());
        format!("{}/{}", f(l.current), f(l.maximum))
    };
    let note = format!(
        "open files (soft/hard): {} at start, {} now for the bench and each host ({need} needed)",
        show(before),
        show(after)
    );
    Ok((after.current.unwrap_or(need).min(1 << 20), note))
}

/// The host binary: `--host-bin`, else the workspace's `target/release/burrow-host`.
fn host_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let bin = args.host_bin.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/burrow-host"))
    });
    let bin = bin.canonicalize().with_context(|| {
        format!(
            "{}: not found; build it with `cargo build --release -p burrow-host` or pass --host-bin",
            bin.display()
        )
    })?;
    Ok(bin)
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let n = args.agents;
    anyhow::ensure!(n > 0, "--agents must be at least 1");
    let small = args.agents_small.min(n);
    let runs = if args.runs_given { args.runs } else { 3 };
    let mut variants = Vec::new();
    for v in args.restarts.iter().filter(|v| *v != "none") {
        variants.push(reconnect::Variant::parse(v).with_context(|| format!("--restarts: {v:?}"))?);
    }
    anyhow::ensure!(
        args.agent_min_idle != Some(0),
        "--agent-min-idle: at least 1 (an agent with no parked tunnel is never back)"
    );
    anyhow::ensure!(matches!(args.transport.as_str(), "grpc" | "ws"), "--transport: grpc or ws");
    anyhow::ensure!(
        args.agent_connections.is_none_or(|c| (1..=burrow_agent::MAX_CONNECTIONS).contains(&c)),
        "--agent-connections: 1 to {}",
        burrow_agent::MAX_CONNECTIONS
    );
    let connections = args.agent_connections.unwrap_or(burrow_agent::DEFAULT_CONNECTIONS);
    let (nofile, nofile_note) = raise_nofile(n, connections)?;
    let bin = host_bin(args)?;
    run::Suite { args, n, small, runs, variants, connections, nofile, nofile_note, bin }.run().await
}
