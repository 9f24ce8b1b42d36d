//! One restart's figures: into the per-run figures, the CSV files and a few progress
//! lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::reconnect::{connected_at, Restart, Variant};
use super::report::{percentile, Figures, Files};
use super::run::{Suite, MILESTONES};
use super::traffic::Sample;

/// Count, success %, p50 and p99 latency (ms) of some requests.
fn request_stats(samples: &[(f64, Sample)]) -> (f64, f64, f64, f64) {
    let ok: Vec<f64> =
        samples.iter().filter(|(_, s)| s.ok()).map(|(_, s)| s.latency.as_secs_f64() * 1e3).collect();
    let mut all: Vec<f64> = samples.iter().map(|(_, s)| s.latency.as_secs_f64() * 1e3).collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len() as f64;
    let pct = if samples.is_empty() { f64::NAN } else { ok.len() as f64 / n * 100.0 };
    (n, pct, percentile(&all, 0.5), percentile(&all, 0.99))
}

/// "200: 950, 502: 3, error: 1".
fn status_counts(samples: &[(f64, Sample)]) -> String {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, s) in samples {
        *counts.entry(s.status).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(status, n)| if *status == 0 { format!("error: {n}") } else { format!("{status}: {n}") })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

impl Suite<'_> {
    pub(super) fn record_restart(
        &self,
        run: usize,
        variant: Variant,
        r: &Restart,
        figures: &mut Figures,
        files: &mut Files,
        notes: &mut Vec<String>,
    ) {
        let v = variant.name();
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        figures.push("signal_to_exit", v, r.signal_to_exit.as_secs_f64() * 1e3);
        figures.push("exit_to_listening", v, r.exit_to_listening.as_secs_f64() * 1e3);
        figures.push("listening_to_serving", v, r.listening_to_serving.as_secs_f64() * 1e3);
        figures.push("all_host", v, secs(r.all_host));
        figures.push("all_bench", v, secs(r.all_bench));
        let mut times = r.back_times.clone();
        times.sort_by(|a, b| a.total_cmp(b));
        figures.push("back_p50", v, percentile(&times, 0.5));
        figures.push("back_p90", v, percentile(&times, 0.9));
        for m in MILESTONES {
            figures.push(&format!("host_at_{m}"), v, connected_at(&r.curve, Duration::from_secs(m)));
            figures.push(
                &format!("bench_at_{m}"),
                v,
                times.iter().filter(|t| **t <= m as f64).count() as f64,
            );
        }
        let last = r.curve.last().map(|p| p.gauges).unwrap_or_default();
        figures.push("storm_wall", v, r.storm_wall.as_secs_f64());
        figures.push("host_cpu", v, r.host_cpu);
        figures.push("bench_cpu", v, r.bench_cpu);
        figures.push("listen_overflows", v, r.listen.overflows as f64);
        figures.push("syncookies", v, r.listen.syncookies as f64);
        figures.push("machine_busy", v, r.machine_busy);
        figures.push("others", v, r.others);
        let mut dials: Vec<f64> = r.dials.iter().map(|d| *d as f64).collect();
        dials.sort_by(|a, b| a.total_cmp(b));
        figures.push("dials_mean", v, dials.iter().sum::<f64>() / dials.len().max(1) as f64);
        figures.push("dials_p99", v, percentile(&dials, 0.99));
        figures.push("dials_max", v, dials.last().copied().unwrap_or(f64::NAN));
        figures.push("accepted", v, last.accepted);
        figures.push("auth_seconds", v, last.auth_seconds);
        figures.push("auth_per_call", v, last.auth_seconds / last.auth_calls.max(1.0) * 1e3);
        figures.push("refused", v, last.refused);
        for (phase, samples) in [("storm", &r.storm), ("settled", &r.settled)] {
            let (count, ok, p50, p99) = request_stats(samples);
            figures.push(&format!("{phase}_count"), v, count);
            figures.push(&format!("{phase}_ok"), v, ok);
            figures.push(&format!("{phase}_p50"), v, p50);
            figures.push(&format!("{phase}_p99"), v, p99);
            for (at, s) in samples.iter() {
                let _ = writeln!(
                    files.requests,
                    "{run},{v},{phase},{at:.1},{:.3},{},{}",
                    s.latency.as_secs_f64() * 1e3,
                    s.status,
                    s.agent
                );
            }
        }
        for p in &r.curve {
            let g = p.gauges;
            let _ = writeln!(
                files.curve,
                "{run},{v},{:.0},{},{},{},{},{},{}",
                p.since_listening.as_secs_f64() * 1e3,
                g.agents,
                g.sessions,
                g.tunnels_idle,
                g.accepted,
                g.refused,
                p.bench_back
            );
        }
        println!(
            "    old host: {} after {:.0} ms; new agent port accepting {:.0} ms after the exit, serving /metrics {:.0} ms \
             later; all back (host) {:.2} s, (bench) {:.2} s after accepting; connected at 1/2/5/10 s: {}",
            r.old_exit,
            r.signal_to_exit.as_secs_f64() * 1e3,
            r.exit_to_listening.as_secs_f64() * 1e3,
            r.listening_to_serving.as_secs_f64() * 1e3,
            secs(r.all_host),
            secs(r.all_bench),
            MILESTONES.map(|m| connected_at(&r.curve, Duration::from_secs(m)).to_string()).join("/")
        );
        println!(
            "    signal → all back {:.1} s: CPU {:.1} s in the new host, {:.1} s in the bench, machine {:.0}% busy \
             ({:.0}% by others); kernel: {} listen overflows, {} SYN cookies",
            r.storm_wall.as_secs_f64(),
            r.host_cpu,
            r.bench_cpu,
            r.machine_busy,
            r.others,
            r.listen.overflows,
            r.listen.syncookies
        );
        println!(
            "    handshakes on the new host: {} accepted, {} refused; requests during the storm: {}; after: {}",
            last.accepted,
            last.refused,
            status_counts(&r.storm),
            status_counts(&r.settled)
        );
        for f in &r.failures {
            println!("    failed request: {}", f.replace('\n', " "));
        }
        if r.all_host.is_none() || r.all_bench.is_none() {
            notes.push(format!(
                "run {run}, SIG{}: not every agent came back within the bound",
                v.to_uppercase()
            ));
        }
    }
}
