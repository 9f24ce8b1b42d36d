//! Readings from `/proc` that both suites print next to their figures: this process's
//! CPU time and, before each phase, how busy the machine is.

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
