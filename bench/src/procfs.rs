//! Readings from `/proc` that the suites print next to their figures: this process's
//! CPU time and, before each phase, how busy the machine is; over a run, the machine's
//! CPU use split into the bench's and everyone else's.

use std::time::Duration;

use anyhow::Context;

/// CPU time this process used (user + system), from `/proc/self/stat`, in seconds.
pub(crate) fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the `(comm)`; utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("/proc/self/stat");
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Prints this process's CPU use while it should be idle and the load average, so
/// leftover work or another build on the machine shows next to the figures.
pub(crate) async fn idle_check(phase: &str) -> anyhow::Result<()> {
    let before = cpu_seconds()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = (cpu_seconds()? - before) / 0.5 * 100.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    println!("  (before {phase}: CPU use of this process while idle {busy:.0}% of a core; 1-min load average {load})");
    Ok(())
}

/// Busy and total jiffies of the whole machine (all cores), from `/proc/stat`.
fn machine_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    anyhow::ensure!(fields.len() >= 5, "/proc/stat: {cpu}");
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th.
    Ok((total - fields[3] - fields[4], total))
}

/// CPU jiffies of process `pid` and of its children it has reaped (utime, stime, cutime,
/// cstime). For this process that covers the host, agent and clients in it and the
/// processes it started and waited for (`scp`, `ssh`, the agent's shells, sftp-servers
/// and work hooks); for sshd, its sessions.
fn process_jiffies(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    // After `(comm)`: utime is the 12th field, then stime, cutime, cstime.
    fields.get(11..15).context("/proc/PID/stat too short")?.iter().map(|v| Ok(v.parse::<u64>()?)).sum()
}

/// CPU time process `pid` itself used, all its threads (utime + stime, without reaped
/// children), in seconds. The peers suite reads it for each tunnel process around a run.
pub(crate) fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat (has the process exited?)"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("/proc/PID/stat too short")?
        .iter()
        .map(|v| Ok(v.parse::<u64>()?))
        .sum::<anyhow::Result<u64>>()?;
    // USER_HZ, fixed at 100 for user space.
    Ok(ticks as f64 / 100.0)
}

/// Machine-wide CPU use over a run, split into the bench's (itself, its children, and the
/// servers it started: sshd, redis-server) and everyone else's, in % of both cores.
pub(crate) struct CpuMeter {
    servers: Vec<u32>,
    machine: (u64, u64),
    ours: u64,
}

impl CpuMeter {
    /// `servers`: processes the bench started whose CPU counts as its own.
    pub(crate) fn start(servers: &[u32]) -> anyhow::Result<CpuMeter> {
        let servers = servers.to_vec();
        let ours = Self::ours(&servers)?;
        Ok(CpuMeter { servers, machine: machine_jiffies()?, ours })
    }

    fn ours(servers: &[u32]) -> anyhow::Result<u64> {
        let mut sum = process_jiffies(std::process::id())?;
        for pid in servers {
            sum += process_jiffies(*pid)?;
        }
        Ok(sum)
    }

    /// (busy %, of which others' %) since `start`.
    pub(crate) fn read(&self) -> anyhow::Result<(f64, f64)> {
        let (busy, total) = machine_jiffies()?;
        let ours = Self::ours(&self.servers)?;
        let total = (total - self.machine.1).max(1) as f64;
        let busy = (busy - self.machine.0) as f64;
        let others = (busy - (ours - self.ours) as f64).max(0.0);
        Ok((busy / total * 100.0, others / total * 100.0))
    }
}

/// The 1-, 5- and 15-minute load averages.
pub(crate) fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
