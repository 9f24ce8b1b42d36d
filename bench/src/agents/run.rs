//! The suite's course: per run one host, the memory steps, the restarts; then the
//! tables and files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use burrow_tests::workload::Workload;

use super::fleet::{Fleet, Identity, Shape};
use super::host::{self, HostProc, Launch, Ports};
use super::memory;
use super::reconnect::{self, Variant};
use super::report::{Figures, Files};
use crate::procfs::{idle_check, loadavg};
use crate::Args;

/// Milestones of the reconnect curve, seconds after the new agent port accepted.
pub(super) const MILESTONES: [u64; 4] = [1, 2, 5, 10];

pub(super) struct Suite<'a> {
    pub(super) args: &'a Args,
    pub(super) n: usize,
    pub(super) small: usize,
    pub(super) runs: usize,
    pub(super) variants: Vec<Variant>,
    /// Connections per agent (`--agent-connections`, else the library's default).
    pub(super) connections: usize,
    pub(super) nofile: u64,
    pub(super) nofile_note: String,
    pub(super) bin: PathBuf,
}

/// A directory under the system temp dir (host configs and logs), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("burrow-bench-agents-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn today() -> anyhow::Result<String> {
    let out = std::process::Command::new("date").arg("+%F").output().context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until this process uses under 10% of a core over 250 ms (at most 30 s).
async fn wait_quiet() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let before = crate::procfs::cpu_seconds()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let busy = (crate::procfs::cpu_seconds()? - before) / 0.25;
        if busy < 0.1 || start.elapsed() > Duration::from_secs(30) {
            return Ok(());
        }
    }
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

impl Suite<'_> {
    /// What the agents run with that is not the library's default, for the header.
    fn shape_note(&self, defaults: &burrow_agent::AgentConfig) -> String {
        let mut changed = Vec::new();
        if self.connections != defaults.connections {
            changed.push(format!("{} connection(s) per agent (--agent-connections)", self.connections));
        }
        if let Some(m) = self.args.agent_min_idle.filter(|m| *m != defaults.min_idle) {
            changed.push(format!("{m} parked tunnel(s) per connection (--agent-min-idle)"));
        }
        if changed.is_empty() {
            String::new()
        } else {
            format!(", except {}", changed.join(" and "))
        }
    }

    fn header(&self, ports: Ports) -> String {
        let defaults = burrow_agent::AgentConfig::new("grpc://127.0.0.1:1", "x").expect("a valid URL");
        let b = defaults.backoff;
        let mut h = String::new();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(
            h,
            "burrow-bench --suite agents: {} and {} agents over {}, {} runs (medians of per-run figures), {cores} cores, \
             load average at start {}",
            self.small,
            self.n,
            self.args.transport,
            self.runs,
            loadavg()
        );
        let built = std::process::Command::new("date")
            .arg("-r")
            .arg(&self.bin)
            .arg("+%F %T")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "  host: {} (built {built}; a copy of it runs, one process per run, and restarts start a new one on the \
             same ports)",
            self.bin.display()
        );
        let _ = writeln!(
            h,
            "  agents: burrow_agent::spawn in the bench process, library defaults ({} connections, {} parked tunnels \
             each (min_idle), backoff {:?} ×{} to {:?} ±{:.0}%, reset after {:?} up){}; one service `web` on a local \
             HTTP workload",
            defaults.connections,
            defaults.min_idle,
            b.initial,
            b.multiplier,
            b.max,
            b.jitter * 100.0,
            b.reset_after,
            self.shape_note(&defaults)
        );
        let _ = writeln!(h, "  {}", self.nofile_note);
        let _ = writeln!(
            h,
            "  host config: defaults, except listen addresses (agents 127.0.0.1:{}, ingress :{}, admin :{}), \
             replica_id per process, the authorizer `builtin:authorizer-static` with default_access = \"open\", \
             workload-workspace for *.localhost, `[plugins.agents]` = the static agent list with {} entries (id \
             b<i>, its token's SHA-256), and in [agents]:",
            ports.agents, ports.ingress, ports.admin, self.n
        );
        for (key, value, why) in host::agent_port_overrides(self.n, self.connections) {
            let _ = writeln!(h, "    - {key} = {value}: {why}");
        }
        let _ = writeln!(
            h,
            "  and [plugins.agents] at its defaults (call_timeout, init_timeout, max_concurrent, warm_pool)"
        );
        h
    }

    pub(super) async fn run(self) -> anyhow::Result<()> {
        let args = self.args;
        let out = match &args.out {
            Some(dir) => dir.clone(),
            None => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join(format!("{}-agents", today()?))
            }
        };
        let workload = Workload::start("bench").await;
        let service = workload.addr.to_string();
        let salt = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let identities: Arc<Vec<Identity>> = Arc::new((0..self.n).map(|i| Identity::new(i, salt)).collect());
        let dir = TempDir::new()?;
        // Every host of the run starts from this copy: a build meanwhile (others share the
        // machine and the target directory) must not change the binary between restarts.
        let bin = dir.0.join("burrow-host");
        std::fs::copy(&self.bin, &bin).with_context(|| format!("copying {}", self.bin.display()))?;
        let ports = Ports::free()?;
        let url = format!("{}://127.0.0.1:{}", args.transport, ports.agents);
        let launch = Launch {
            bin,
            dir: dir.0.clone(),
            ports,
            agents: identities.clone(),
            connections: self.connections,
            nofile: self.nofile,
        };
        let shape = Shape { connections: args.agent_connections, min_idle: args.agent_min_idle };
        let header = self.header(ports);
        print!("{header}");

        let mut figures = Figures::default();
        let mut files = Files::new(out);
        let mut notes: Vec<String> = Vec::new();
        let mut gen = 0;
        let steps: Vec<usize> = if self.small < self.n { vec![self.small, self.n] } else { vec![self.n] };
        for run in 1..=self.runs {
            idle_check(&format!("run {run}/{}", self.runs)).await?;
            gen += 1;
            let mut host = HostProc::spawn(&launch, gen)?;
            host.wait_listening(ports.agents).await?;
            host.wait_serving(ports.admin).await?;
            if run == 1 {
                println!("  host open files (soft/hard, /proc/PID/limits): {}", host::nofile_of(host.pid));
            }
            let (base, settle, settled) = memory::settle_rss(&mut host).await?;
            println!(
                "  run {run}: host serving, RSS {:.1} MiB (RssAnon {:.1}) with no agent, settled in {:.1} s{}",
                mib(base.rss_kib),
                mib(base.anon_kib),
                settle.as_secs_f64(),
                if settled { "" } else { " (NOT settled: bound reached)" }
            );
            figures.push("rss", "0", mib(base.rss_kib));
            figures.push("anon", "0", mib(base.anon_kib));
            let _ = writeln!(
                files.memory,
                "{run},0,{},{},{},0,0,0,0,{:.3},{settled}",
                base.rss_kib,
                base.anon_kib,
                base.hwm_kib,
                settle.as_secs_f64()
            );

            let mut fleet = Fleet::new(self.n);
            fleet.board.set_current(gen);
            let mut points = Vec::new();
            for &upto in &steps {
                println!("  run {run}: connecting agents {}..{upto}", fleet.len());
                let p = memory::step(
                    &mut fleet,
                    &mut host,
                    upto,
                    args.agents_batch,
                    &launch,
                    &url,
                    &service,
                    shape,
                )
                .await?;
                println!(
                    "  run {run}: {upto} agents {} in {:.1} s; host: {} sessions, {} parked tunnels, {} handshakes \
                     accepted, {} refused, {} limit refusals; RSS {:.1} MiB (RssAnon {:.1}), settled in {:.1} s{}",
                    if p.complete { "fully up" } else { "NOT all up" },
                    p.connect.as_secs_f64(),
                    p.gauges.sessions,
                    p.gauges.tunnels_idle,
                    p.gauges.accepted,
                    p.gauges.refused,
                    p.gauges.limit_refusals,
                    mib(p.memory.rss_kib),
                    mib(p.memory.anon_kib),
                    p.settle.as_secs_f64(),
                    if p.settled { "" } else { " (NOT settled: bound reached)" }
                );
                let col = if upto == self.n { "n" } else { "small" };
                figures.push("rss", col, mib(p.memory.rss_kib));
                figures.push("anon", col, mib(p.memory.anon_kib));
                figures.push("sessions", col, p.gauges.sessions);
                figures.push("tunnels", col, p.gauges.tunnels_idle);
                figures.push("connect_s", col, p.connect.as_secs_f64());
                figures.push("connect_cpu", col, p.host_cpu);
                figures.push("cpu_per_handshake", col, p.host_cpu / p.handshakes.max(1.0) * 1e3);
                figures.push("auth_per_handshake", col, p.auth_seconds / p.handshakes.max(1.0) * 1e3);
                figures.push("per_agent_base", col, (p.memory.rss_kib - base.rss_kib) / upto as f64);
                figures.push("per_agent_base_anon", col, (p.memory.anon_kib - base.anon_kib) / upto as f64);
                let _ = writeln!(
                    files.memory,
                    "{run},{upto},{},{},{},{},{},{},{:.3},{:.3},{}",
                    p.memory.rss_kib,
                    p.memory.anon_kib,
                    p.memory.hwm_kib,
                    p.gauges.agents,
                    p.gauges.sessions,
                    p.gauges.tunnels_idle,
                    p.connect.as_secs_f64(),
                    p.settle.as_secs_f64(),
                    p.settled
                );
                if !p.complete || !p.settled {
                    notes.push(format!(
                        "run {run}, {upto} agents: complete = {}, RSS settled = {}",
                        p.complete, p.settled
                    ));
                }
                points.push(p);
            }
            if let [a, b] = &points[..] {
                let d = (b.agents - a.agents) as f64;
                let slope = (b.memory.rss_kib - a.memory.rss_kib) / d;
                figures.push("slope", "n", slope);
                figures.push("slope_anon", "n", (b.memory.anon_kib - a.memory.anon_kib) / d);
                let tunnels = (b.gauges.tunnels_idle - a.gauges.tunnels_idle) / d;
                figures.push("tunnels_per_agent", "n", tunnels);
                figures.push("per_tunnel_bound", "n", slope / tunnels.max(1.0));
                println!(
                    "  run {run}: slope {slope:.2} KiB RSS per agent between {} and {} agents",
                    a.agents, b.agents
                );
            }

            for &variant in &self.variants {
                println!("  run {run}: restart with SIG{}", variant.name().to_uppercase());
                let (new_host, r) = reconnect::restart(host, variant, &fleet, &launch).await?;
                host = new_host;
                self.record_restart(run, variant, &r, &mut figures, &mut files, &mut notes);
                // The same agents, arrived all at once instead of in batches.
                let (after, _, settled) = memory::settle_rss(&mut host).await?;
                let v = variant.name();
                figures.push("storm_rss", v, mib(after.rss_kib));
                figures.push("storm_per_agent", v, (after.rss_kib - base.rss_kib) / self.n as f64);
                println!(
                    "    new host once RSS settled{}: VmRSS {:.1} MiB, {:.2} KiB per agent over the no-agent baseline",
                    if settled { "" } else { " (NOT settled: bound reached)" },
                    mib(after.rss_kib),
                    (after.rss_kib - base.rss_kib) / self.n as f64
                );
            }
            fleet.abort();
            drop(host);
            // Tearing down N agents keeps this process busy for a moment; the next run's
            // baseline and connect times should not share the cores with it.
            wait_quiet().await?;
        }
        drop(workload);

        let summary = self.summary(&header, &figures, &notes);
        println!("{}", &summary[header.len()..]);
        files.write(&summary)?;
        println!(
            "files: {}/{{summary.md,memory.csv,reconnect-curve.csv,reconnect-requests.csv}}",
            files.dir.display()
        );
        Ok(())
    }
}
