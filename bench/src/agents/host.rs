//! The `burrow-host` child process: its config file (default config, except listen
//! addresses, the static agent list and the per-address caps one address with N agents
//! needs), start, signals, exit, and its memory from `/proc`.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::fleet::Identity;
use super::metrics;

/// How long a host may take to exit after SIGTERM (its `[shutdown] grace` is 30 s by
/// default; an idle host needs about one second) or SIGKILL.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);
/// How long a host may take from spawn to serving `/metrics` (it compiles its plugins).
const START_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between polls of a port or of `/metrics` while a host starts.
const PROBE: Duration = Duration::from_millis(5);

/// Ports on 127.0.0.1, the same for every host process of the suite, so a restarted
/// host rebinds where the agents dial.
#[derive(Clone, Copy)]
pub(super) struct Ports {
    pub(super) agents: u16,
    pub(super) ingress: u16,
    pub(super) admin: u16,
}

impl Ports {
    /// Ports free right now. The config takes numbers, so each is released before the
    /// host binds it; a clash shows as the host failing to start (its log says so).
    pub(super) fn free() -> anyhow::Result<Ports> {
        let free = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
        };
        Ok(Ports { agents: free()?, ingress: free()?, admin: free()? })
    }

    pub(super) fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

/// The `[agents]` keys this suite changes from their defaults, with why, for
/// `max_agents` agents of `connections` connections each, all from 127.0.0.1; the config
/// file and the printed report both come from this list.
pub(super) fn agent_port_overrides(
    max_agents: usize,
    connections: usize,
) -> Vec<(&'static str, String, String)> {
    // One host: every connection of an agent lands on it. A connection past the first
    // finds the replica taken and re-dials (3 dials, the last kept); each dial is closed
    // at once but counted until the host sees the close, so one more per agent.
    let per_agent = connections + usize::from(connections > 1);
    let per_address = (per_agent * max_agents).max(256);
    let mut keys = vec![(
        "max_connections_per_address",
        per_address.to_string(),
        format!(
            "default 256: all {max_agents} agents dial from 127.0.0.1, like agents behind one NAT; each holds \
             {connections} connection(s){}, so {per_agent} per agent",
            if connections > 1 { " (+ a short-lived re-dial)" } else { "" }
        ),
    )];
    if per_address > 32_768 {
        keys.push((
            "max_connections",
            per_address.to_string(),
            "default 32768 is below max_connections_per_address, which the host refuses".into(),
        ));
    }
    // Handshakes per agent to come up: 1 for the first connection, 3 for each further
    // one (two dials closed as duplicates, the third kept); then up to 3 per duplicate
    // and diversify round (60 s ±20%).
    let handshakes = 1 + 3 * (connections - 1);
    let per_minute = (2 * handshakes + 3 * (connections - 1)).max(2);
    keys.push((
        "connect_rate_limit_per_address",
        (per_minute * max_agents).max(1200).to_string(),
        format!(
            "default 1200/min per source address: one address carries every agent; each makes {handshakes} \
             handshake(s) to come up (a reconnect storm repeats them){}; {per_minute} per agent per minute",
            if connections > 1 { ", plus 3 per diversify round for its duplicate connections" } else { "" }
        ),
    ));
    keys
}

/// The config file of host generation `gen` (its `replica_id` names the generation, so
/// an agent's status says which host process it is connected to).
pub(super) fn config(ports: Ports, gen: u32, agents: &[Identity], connections: usize) -> String {
    let mut text = format!(
        "replica_id = \"{}\"\n\n[agents]\nlisten = \"127.0.0.1:{}\"\n",
        replica_id(gen),
        ports.agents
    );
    for (key, value, _) in agent_port_overrides(agents.len(), connections) {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str(&format!(
        "\n[ingress]\nlisten = \"127.0.0.1:{}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n\
         [plugins.authorizer]\nsource = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"open\" }}\n\n\
         [[plugins.workload]]\nsource = \"builtin:workload-workspace\"\nconfig = {{ root_domains = [\"localhost\"] }}\n\n\
         # Who may connect as an agent: the built-in static list, one identity and token per agent.\n\
         [plugins.agents]\nsource = \"builtin:authorizer-static\"\nname = \"agent-list\"\n",
        ports.ingress, ports.admin
    ));
    for agent in agents {
        text.push_str(&format!(
            "\n[[plugins.agents.config.agents]]\nid = \"{}\"\ntoken_sha256 = \"{}\"\n",
            agent.id, agent.token_sha256
        ));
    }
    text
}

/// The replica id of host generation `gen`.
pub(super) fn replica_id(gen: u32) -> String {
    format!("agents-bench-{gen}")
}

/// The generation of a replica id made by [`replica_id`].
pub(super) fn generation_of(replica_id: &str) -> Option<u32> {
    replica_id.strip_prefix("agents-bench-")?.parse().ok()
}

/// `VmRSS`, `RssAnon` and `VmHWM` of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    pub(super) rss_kib: f64,
    pub(super) anon_kib: f64,
    pub(super) hwm_kib: f64,
}

pub(super) fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status (has the host exited?)"))?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
    };
    Ok(Memory {
        rss_kib: field("VmRSS").context("no VmRSS in /proc/PID/status")?,
        // RssAnon appeared in Linux 4.5; 0 when absent.
        anon_kib: field("RssAnon").unwrap_or(0.0),
        hwm_kib: field("VmHWM").unwrap_or(0.0),
    })
}

/// The open-files limit of a process, from `/proc/PID/limits` ("soft/hard").
pub(super) fn nofile_of(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join("/"))
        .unwrap_or_else(|| "?".into())
}

/// A running `burrow-host run`: SIGKILLed on drop (and by the kernel when the bench
/// dies, through the parent-death signal), so no exit path leaves it behind.
pub(super) struct HostProc {
    pub(super) gen: u32,
    pub(super) pid: u32,
    child: Child,
    log: PathBuf,
}

/// What every host process of the suite is started with.
pub(super) struct Launch {
    /// The `burrow-host` binary.
    pub(super) bin: PathBuf,
    /// Where configs and logs go.
    pub(super) dir: PathBuf,
    pub(super) ports: Ports,
    /// The static agent list.
    pub(super) agents: Arc<Vec<Identity>>,
    /// Connections per agent (sizes the per-address caps).
    pub(super) connections: usize,
    /// The open-files limit (soft and hard) the host gets.
    pub(super) nofile: u64,
}

impl HostProc {
    /// Writes the config of generation `gen` and starts the host on it. Returns at once
    /// (see [`HostProc::wait_listening`]).
    pub(super) fn spawn(launch: &Launch, gen: u32) -> anyhow::Result<HostProc> {
        let Launch { bin, dir, ports, agents, connections, nofile } = launch;
        let nofile = *nofile;
        let path = dir.join(format!("host-{gen}.toml"));
        std::fs::write(&path, config(*ports, gen, agents, *connections))?;
        let log = dir.join(format!("host-{gen}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(&path);
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
        // SAFETY: between fork and exec only two syscalls run (prctl, setrlimit), both
        // async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                // The host would otherwise outlive a bench killed with SIGKILL. The signal
                // follows the spawning thread: a runtime worker, alive as long as the bench.
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                // Inherited anyway; set explicitly so the host's limit never depends on
                // how the bench was started.
                let limit = rustix::process::Rlimit { current: Some(nofile), maximum: Some(nofile) };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the host exited at once")?;
        Ok(HostProc { gen, pid, child, log })
    }

    /// An error with the end of the host's log if it has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "burrow-host (generation {}) exited: {status}; end of {}:\n{}",
                self.gen,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `port` accepts a TCP connection (the host binds every listener
    /// before it loads its plugins); the moment it did.
    pub(super) async fn wait_listening(&mut self, port: u16) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if tokio::net::TcpStream::connect(Ports::addr(port)).await.is_ok() {
                return Ok(Instant::now());
            }
            if start.elapsed() > START_PATIENCE {
                bail!(
                    "burrow-host is not listening on port {port} after {START_PATIENCE:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(PROBE).await;
        }
    }

    /// Waits until the admin port answers `/metrics` (plugins loaded, every server
    /// running); the moment it did and the first scrape.
    pub(super) async fn wait_serving(
        &mut self,
        admin: u16,
    ) -> anyhow::Result<(Instant, metrics::HostGauges)> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if let Ok(g) = metrics::gauges(Ports::addr(admin)).await {
                return Ok((Instant::now(), g));
            }
            if start.elapsed() > START_PATIENCE {
                bail!("burrow-host does not answer /metrics after {START_PATIENCE:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(PROBE).await;
        }
    }

    pub(super) fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid)
    }

    /// Sends `signal` and waits until the process has exited (so its ports are free);
    /// the moment the exit was seen and how it ended.
    pub(super) async fn stop(mut self, signal: rustix::process::Signal) -> anyhow::Result<(Instant, String)> {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).context("pid 0")?;
        rustix::process::kill_process(pid, signal).context("signalling the host")?;
        let status = tokio::time::timeout(EXIT_PATIENCE, self.child.wait())
            .await
            .with_context(|| format!("burrow-host did not exit within {EXIT_PATIENCE:?} of {signal:?}"))??;
        let at = Instant::now();
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => status.to_string(),
        };
        Ok((at, how))
    }
}
