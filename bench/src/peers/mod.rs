//! `--suite peers` (issue 14's harness): Burrow next to the tunnels a user would pick
//! instead, side by side in one run, every path in front of the same nginx and driven by
//! the same clients (wrk, curl) as separate processes:
//!
//! - **direct**: nginx itself, the baseline;
//! - **burrow-grpc**, **burrow-ws**, **burrow-grpcs**: a `burrow-host` and a
//!   `burrow-agent` process, default config, the agent over `grpc://`, `ws://` or
//!   `grpcs://` (a CA made for the run);
//! - **burrow-2rep**: two replicas on a redis-server, the agent on replica A, requests to
//!   replica B, which forwards them to A over the replica API (mutual TLS);
//! - **rathole** (server + client, TCP transport) and **bore** (`bore server` + `bore
//!   local`), default configs.
//!
//! Per run, interleaved (each connection count, then every path, the path order rotating
//! from run to run, so drift hits all paths alike): a wrk run per connection count
//! against a 13-byte file (req/s, p50, p99, errors) with the CPU time (utime + stime) of
//! the path's processes around it, then a curl download of a large sparse file. Every
//! figure is the median over `--runs`; ratios are of medians from the same invocation.
//! `raw.csv`, `summary.md` and PNG plots go to `bench/results/<date>-peers/`.

mod burrow;
mod measure;
mod paths;
mod plots;
mod procs;
mod report;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::procfs::loadavg;
use crate::Args;
use burrow::Transport;
use measure::Row;
use paths::{Setup, Tunnel};
use procs::{find_program, version_of, Proc, TempDir};

/// What to measure, from the flags (`--quick` changes the defaults).
pub(super) struct Settings {
    pub(super) runs: usize,
    /// wrk's `-d`, seconds.
    pub(super) secs: u64,
    pub(super) connections: Vec<u32>,
    pub(super) download_bytes: u64,
    /// In the order they are started and reported; `direct` first.
    pub(super) paths: Vec<&'static str>,
}

impl Settings {
    fn from_args(args: &Args) -> anyhow::Result<Settings> {
        const ALL: [&str; 7] =
            ["direct", "burrow-grpc", "burrow-ws", "burrow-grpcs", "burrow-2rep", "rathole", "bore"];
        let paths =
            ALL.iter().copied().filter(|p| *p == "direct" || args.paths.iter().any(|a| a == p)).collect();
        let connections = match (&args.connections, args.quick) {
            (c, _) if !c.is_empty() => c.clone(),
            (_, true) => vec![1, 64, 256],
            (_, false) => vec![1, 8, 32, 64, 128, 256],
        };
        anyhow::ensure!(connections.iter().all(|c| *c > 0), "--connections must be positive");
        let settings = Settings {
            runs: if args.runs_given {
                args.runs
            } else if args.quick {
                1
            } else {
                3
            },
            secs: args.duration.unwrap_or(if args.quick { 2 } else { 5 }),
            connections,
            download_bytes: args.download_bytes.unwrap_or(if args.quick { 256 << 20 } else { 1 << 30 }),
            paths,
        };
        anyhow::ensure!(
            settings.secs > 0 && settings.download_bytes > 0,
            "--duration and --download-bytes must be positive"
        );
        Ok(settings)
    }

    pub(super) fn has_processes(&self, path: &str) -> bool {
        path != "direct"
    }
}

/// A program the suite needs, or an error naming it and its Debian package.
fn need(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    find_program(program).with_context(|| {
        format!("{program} not found: install it (apt-get install {package}; bench/peers.sh does)")
    })
}

fn shell_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The binary `name` next to this one (target/release with bench/peers.sh).
fn beside_me(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.parent().context("burrow-bench has no directory")?.join(name))
}

fn start(setup: &Setup, name: &'static str) -> anyhow::Result<Tunnel> {
    match name {
        "direct" => paths::direct(setup.nginx_port),
        "burrow-grpc" => burrow::start_single(setup, name, Transport::Grpc),
        "burrow-ws" => burrow::start_single(setup, name, Transport::Ws),
        "burrow-grpcs" => burrow::start_single(setup, name, Transport::Grpcs),
        "burrow-2rep" => burrow::start_two_replicas(setup, name),
        "rathole" => paths::start_rathole(setup),
        "bore" => paths::start_bore(setup),
        _ => bail!("unknown path {name}"),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let settings = Settings::from_args(args)?;
    let started = Instant::now();
    let wrk = need("wrk", "wrk")?;
    let curl = need("curl", "curl")?;
    let nginx = need("nginx", "nginx")?;
    let burrow_paths = settings.paths.iter().any(|p| p.starts_with("burrow"));
    let host_bin = args.host_bin.clone().map_or_else(|| beside_me("burrow-host"), Ok)?;
    let agent_bin = args.agent_bin.clone().map_or_else(|| beside_me("burrow-agent"), Ok)?;
    for bin in [&host_bin, &agent_bin].into_iter().filter(|_| burrow_paths) {
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: build it (cargo build --release -p burrow-host -p burrow-agent) or pass --host-bin / --agent-bin",
            bin.display()
        );
    }
    for name in ["rathole", "bore"].into_iter().filter(|t| settings.paths.contains(t)) {
        paths::tool(&args.tools, name)?;
    }
    let redis_server =
        settings.paths.contains(&"burrow-2rep").then(|| need("redis-server", "redis-server")).transpose()?;
    let date = shell_line("date", &["+%F"]);
    let suffix = if args.quick { "peers-quick" } else { "peers" };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results").join(format!("{date}-{suffix}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let tmp = TempDir::new("burrow-bench-peers")?;
    println!(
        "peers: starting nginx and {} paths (configs and logs in {})",
        settings.paths.len(),
        tmp.path().display()
    );
    let (nginx_proc, nginx_port) = paths::start_nginx(&nginx, tmp.path(), settings.download_bytes)?;
    let setup = Setup {
        dir: tmp.path().to_owned(),
        host_bin,
        agent_bin,
        tools: args.tools.clone(),
        redis_server,
        nginx_port,
    };
    let mut tunnels = Vec::new();
    for name in &settings.paths {
        let t = Instant::now();
        tunnels.push(start(&setup, name)?);
        println!("  {name}: ready, answering 200 ({:.1} s)", t.elapsed().as_secs_f64());
    }

    let header = header(&settings, &setup, &wrk, &curl, &nginx, args.quick);
    // Warm-up, not recorded: connection pools, idle tunnels, allocators.
    let warm = settings.connections.iter().copied().max().unwrap_or(1).min(64);
    for tunnel in tunnels.iter_mut() {
        measure::wrk_point(&wrk, tunnel, 0, warm, 1)?;
    }
    let points = settings.runs * settings.connections.len() * settings.paths.len();
    println!(
        "peers: {} run(s) × {} connection counts × {} paths, wrk -d {}s each (~{} s of wrk), then a {} MiB download per \
         path and run; results in {}",
        settings.runs,
        settings.connections.len(),
        settings.paths.len(),
        settings.secs,
        points as u64 * settings.secs,
        settings.download_bytes >> 20,
        out.display()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut done = 0;
    for run in 1..=settings.runs {
        println!("run {run}/{}: load average {}", settings.runs, loadavg());
        let n = tunnels.len();
        // The path order rotates from run to run.
        let order: Vec<usize> = (0..n).map(|i| (i + run - 1) % n).collect();
        for &c in &settings.connections {
            for &i in &order {
                let tunnel = &mut tunnels[i];
                let row = measure::wrk_point(&wrk, tunnel, run, c, settings.secs)?;
                done += 1;
                let cpu = row
                    .cpu_us_per_request(tunnel.has_processes())
                    .map_or(String::new(), |(h, a)| format!(", CPU/req host {h:.1} µs agent {a:.1} µs"));
                println!(
                    "  [{done}/{points}, {:.0} s] c={c:<3} {:<13} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  errors {}{cpu}",
                    started.elapsed().as_secs_f64(),
                    tunnel.name,
                    row.wrk.req_per_s,
                    row.wrk.p50_us,
                    row.wrk.p99_us,
                    row.wrk.errors(),
                );
                rows.push(row);
            }
        }
        for &i in &order {
            let tunnel = &mut tunnels[i];
            let row = measure::download(&curl, tunnel, run, settings.download_bytes)?;
            println!(
                "  [{:.0} s] download {:<13} {:>6.0} MiB/s",
                started.elapsed().as_secs_f64(),
                tunnel.name,
                row.download_mib_s
            );
            rows.push(row);
        }
        report::write_csv(&out.join("raw.csv"), &rows, &settings)?;
    }

    let mut header = header;
    header.push_str(&format!(
        "- load average at the end: {}; whole suite {:.0} s\n",
        loadavg(),
        started.elapsed().as_secs_f64()
    ));
    let mut md = report::summary(&rows, &settings, &header);
    let plots = plots::write(&out, &rows, &settings)?;
    md.push_str("\n## Plots\n\n");
    for p in &plots {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        md.push_str(&format!("![{name}]({name})\n"));
    }
    std::fs::write(out.join("summary.md"), &md)?;
    println!("\n{md}");
    println!("raw: {}\nsummary: {}", out.join("raw.csv").display(), out.join("summary.md").display());
    for p in &plots {
        println!("plot: {}", p.display());
    }
    drop(tunnels);
    drop::<Proc>(nginx_proc);
    Ok(())
}

/// The summary's opening: settings, versions, machine.
fn header(settings: &Settings, setup: &Setup, wrk: &Path, curl: &Path, nginx: &Path, quick: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The words of a version line that name the version.
    let words = |line: String, skip: usize, take: usize| {
        line.split_whitespace().skip(skip).take(take).collect::<Vec<_>>().join(" ")
    };
    let mut versions = vec![
        words(version_of(nginx, &["-v"], ""), 2, 1),
        words(version_of(wrk, &["-v"], ""), 0, 2),
        words(version_of(curl, &["--version"], ""), 0, 2),
    ];
    if settings.paths.iter().any(|p| p.starts_with("burrow")) {
        versions.push(version_of(&setup.host_bin, &["--version"], ""));
    }
    for tool in ["rathole", "bore"].into_iter().filter(|t| settings.paths.contains(t)) {
        if let Ok(bin) = setup.tool(tool) {
            // rathole's first line is its name alone.
            let needle = if tool == "rathole" { "Build Version" } else { "" };
            let version =
                words(version_of(&bin, &["--version"], needle), 0, 3).replace("Build Version:", "rathole");
            versions.push(version);
        }
    }
    if let Some(redis) = &setup.redis_server {
        versions.push(words(version_of(redis, &["--version"], ""), 0, 3));
    }
    let conns: Vec<String> = settings.connections.iter().map(u32::to_string).collect();
    format!(
        "# Peers: Burrow vs rathole vs bore{}\n\n\
         - `burrow-bench --suite peers`, {} UTC, commit {}\n\
         - {} run(s); in each, for each connection count every path (order rotating by run): `wrk -t min(2,c) -c c -d {}s \
         --latency` GET of a 13-byte file; then per path a `curl` download of a {} MiB file\n\
         - connections: {}; paths: {}\n\
         - machine: {cores} cores, {cpu}; everything (nginx, tunnels, wrk, curl) on 127.0.0.1 sharing them; load \
         average at the start: {}\n\
         - {}\n",
        if quick { " (--quick)" } else { "" },
        shell_line("date", &["-u", "+%F %H:%M"]),
        shell_line("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]),
        settings.runs,
        settings.secs,
        settings.download_bytes >> 20,
        conns.join(", "),
        settings.paths.join(", "),
        loadavg(),
        versions.join("; "),
    )
}
