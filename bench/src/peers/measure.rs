//! One measurement on one path: a wrk run or a curl download, with the CPU time the
//! path's processes used meanwhile.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use super::paths::{Cpu, Tunnel, BIG, HOST_HEADER, SMALL};
use super::wrk::{self, WrkReport};

/// What one row of raw.csv holds.
#[derive(Clone, Debug)]
pub(super) struct Row {
    pub(super) run: usize,
    pub(super) path: &'static str,
    /// `wrk` or `download`.
    pub(super) kind: &'static str,
    /// wrk's connections; 1 for the download.
    pub(super) connections: u32,
    pub(super) wrk: WrkReport,
    /// CPU seconds the path's processes used during the measurement.
    pub(super) cpu: Cpu,
    /// Download: bytes received and curl's average speed.
    pub(super) download_bytes: u64,
    pub(super) download_mib_s: f64,
    /// Wall-clock seconds of the measurement.
    pub(super) wall_s: f64,
}

impl Row {
    /// CPU µs per completed request, (host side, agent side); None without requests or
    /// for a path without tunnel processes.
    pub(super) fn cpu_us_per_request(&self, tunnel_processes: bool) -> Option<(f64, f64)> {
        (tunnel_processes && self.wrk.requests > 0).then(|| {
            let n = self.wrk.requests as f64;
            (self.cpu.host * 1e6 / n, self.cpu.agent * 1e6 / n)
        })
    }
}

fn cpu_delta(before: Cpu, after: Cpu) -> Cpu {
    Cpu { host: after.host - before.host, agent: after.agent - before.agent }
}

/// One wrk run of `secs` seconds with `connections` against the path's small file.
pub(super) fn wrk_point(
    wrk_bin: &Path,
    tunnel: &mut Tunnel,
    run: usize,
    connections: u32,
    secs: u64,
) -> anyhow::Result<Row> {
    tunnel.check_alive()?;
    let before = tunnel.cpu()?;
    let start = Instant::now();
    let report = wrk::run(wrk_bin, &tunnel.url(SMALL), HOST_HEADER, connections, secs)
        .with_context(|| format!("{} at {connections} connections", tunnel.name))?;
    let wall_s = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(before, tunnel.cpu()?);
    tunnel.check_alive()?;
    Ok(Row {
        run,
        path: tunnel.name,
        kind: "wrk",
        connections,
        wrk: report,
        cpu,
        download_bytes: 0,
        download_mib_s: 0.0,
        wall_s,
    })
}

/// One `curl` download of the large file through the path: curl's average speed.
pub(super) fn download(curl: &Path, tunnel: &mut Tunnel, run: usize, bytes: u64) -> anyhow::Result<Row> {
    tunnel.check_alive()?;
    let before = tunnel.cpu()?;
    let start = Instant::now();
    let out = Command::new(curl)
        .args(["-sS", "-o", "/dev/null", "--max-time", "300", "-H"])
        .arg(format!("Host: {HOST_HEADER}"))
        .args(["-w", "%{http_code} %{size_download} %{speed_download}"])
        .arg(tunnel.url(BIG))
        .output()
        .context("running curl")?;
    let wall_s = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(before, tunnel.cpu()?);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "curl through {} failed ({}): {}",
            tunnel.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [status, size, speed] = fields.as_slice() else { bail!("curl -w printed {text:?}") };
    let size: u64 = size.parse()?;
    if *status != "200" || size != bytes {
        bail!("download through {}: status {status}, {size} of {bytes} bytes", tunnel.name);
    }
    let speed: f64 = speed.parse()?;
    Ok(Row {
        run,
        path: tunnel.name,
        kind: "download",
        connections: 1,
        wrk: WrkReport::default(),
        cpu,
        download_bytes: size,
        download_mib_s: speed / (1024.0 * 1024.0),
        wall_s,
    })
}
