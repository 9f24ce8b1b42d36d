//! raw.csv (every measurement) and summary.md (medians over runs, ratios, added
//! latency) in the results directory.

use std::fmt::Write as _;
use std::path::Path;

use super::measure::Row;
use super::Settings;
use crate::median;

/// The raw figures so far, one row per run × path × connections (and per run × path for
/// the download). Written after every run, so a failure later keeps what was measured.
pub(super) fn write_csv(file: &Path, rows: &[Row], settings: &Settings) -> anyhow::Result<()> {
    let mut csv = String::from(
        "run,path,kind,connections,threads,duration_s,requests,req_per_s,p50_us,p75_us,p90_us,p99_us,avg_us,max_us,\
         non_2xx,connect_errors,read_errors,write_errors,timeouts,host_cpu_s,agent_cpu_s,host_cpu_us_per_req,\
         agent_cpu_us_per_req,download_bytes,download_mib_s,wall_s\n",
    );
    for r in rows {
        let w = &r.wrk;
        let (threads, duration) = if r.kind == "wrk" {
            (r.connections.min(2).to_string(), settings.secs.to_string())
        } else {
            Default::default()
        };
        let per_req = r.cpu_us_per_request(settings.has_processes(r.path));
        let (host_us, agent_us) =
            per_req.map_or((String::new(), String::new()), |(h, a)| (format!("{h:.3}"), format!("{a:.3}")));
        let _ = writeln!(
            csv,
            "{},{},{},{},{threads},{duration},{},{:.2},{},{},{},{},{},{},{},{},{},{},{},{:.2},{:.2},{host_us},{agent_us},{},{:.1},{:.3}",
            r.run,
            r.path,
            r.kind,
            r.connections,
            w.requests,
            w.req_per_s,
            w.p50_us,
            w.p75_us,
            w.p90_us,
            w.p99_us,
            w.avg_us,
            w.max_us,
            w.non_2xx,
            w.connect_errors,
            w.read_errors,
            w.write_errors,
            w.timeouts,
            r.cpu.host,
            r.cpu.agent,
            r.download_bytes,
            r.download_mib_s,
            r.wall_s,
        );
    }
    std::fs::write(file, csv)?;
    Ok(())
}

/// Median over runs of `f` for one path's wrk rows at `connections`.
pub(super) fn wrk_median(
    rows: &[Row],
    path: &str,
    connections: u32,
    f: impl Fn(&Row) -> Option<f64>,
) -> Option<f64> {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.kind == "wrk" && r.path == path && r.connections == connections)
        .filter_map(f)
        .collect();
    (!v.is_empty()).then(|| median(v))
}

/// Total tunnel CPU (host + agent side) per request, µs.
pub(super) fn cpu_total(r: &Row, settings: &Settings) -> Option<f64> {
    r.cpu_us_per_request(settings.has_processes(r.path)).map(|(h, a)| h + a)
}

/// Median over runs of the CPU seconds per GiB moved in the download, (host side, agent
/// side); `None` for a path without tunnel processes.
fn download_cpu_per_gib(rows: &[Row], path: &str, settings: &Settings) -> Option<(f64, f64)> {
    if !settings.has_processes(path) {
        return None;
    }
    let per_gib = |cpu: f64, r: &Row| cpu * (1u64 << 30) as f64 / r.download_bytes.max(1) as f64;
    let downloads: Vec<&Row> = rows.iter().filter(|r| r.kind == "download" && r.path == path).collect();
    (!downloads.is_empty()).then(|| {
        (
            median(downloads.iter().map(|r| per_gib(r.cpu.host, r)).collect()),
            median(downloads.iter().map(|r| per_gib(r.cpu.agent, r)).collect()),
        )
    })
}

fn download_median(rows: &[Row], path: &str) -> Option<f64> {
    let v: Vec<f64> =
        rows.iter().filter(|r| r.kind == "download" && r.path == path).map(|r| r.download_mib_s).collect();
    (!v.is_empty()).then(|| median(v))
}

/// Median over runs of (path − direct in the same run) of `f` at one connection.
fn added(rows: &[Row], path: &str, f: impl Fn(&Row) -> f64) -> Option<f64> {
    let find = |p: &str, run: usize| {
        rows.iter().find(|r| r.kind == "wrk" && r.path == p && r.connections == 1 && r.run == run)
    };
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.kind == "wrk" && r.path == path && r.connections == 1)
        .filter_map(|r| find("direct", r.run).map(|d| f(r) - f(d)))
        .collect();
    (!v.is_empty()).then(|| median(v))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// summary.md: the settings, the sweep per path, ratios of Burrow's paths to rathole,
/// bore and direct, the download, and the latency added at one connection.
pub(super) fn summary(rows: &[Row], settings: &Settings, header: &str) -> String {
    let mut md = String::from(header);
    let paths = &settings.paths;
    let burrow: Vec<&str> = paths.iter().copied().filter(|p| p.starts_with("burrow")).collect();
    let rate = |r: &Row| Some(r.wrk.req_per_s);
    let p50 = |r: &Row| Some(r.wrk.p50_us);
    let p99 = |r: &Row| Some(r.wrk.p99_us);

    let _ = writeln!(md, "\n## Sweep: wrk against the 13-byte file (median of {} run(s))\n", settings.runs);
    let _ = writeln!(
        md,
        "CPU µs/request: utime + stime of the path's processes during the wrk run ÷ requests completed; host side \
         = Burrow host(s) (for burrow-2rep both replicas and redis-server), rathole server, bore server; agent side = \
         burrow-agent, rathole client, bore local. Errors: non-2xx responses and socket errors, summed over runs.\n"
    );
    for path in paths {
        let _ = writeln!(md, "### {path}\n");
        let _ = writeln!(
            md,
            "| connections | req/s | p50 µs | p99 µs | host CPU µs/req | agent CPU µs/req | errors |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
        for &c in &settings.connections {
            let has = settings.has_processes(path);
            let host = wrk_median(rows, path, c, |r| r.cpu_us_per_request(has).map(|x| x.0));
            let agent = wrk_median(rows, path, c, |r| r.cpu_us_per_request(has).map(|x| x.1));
            let errors: u64 = rows
                .iter()
                .filter(|r| r.kind == "wrk" && r.path == *path && r.connections == c)
                .map(|r| r.wrk.errors())
                .sum();
            let _ = writeln!(
                md,
                "| {c} | {} | {} | {} | {} | {} | {errors} |",
                num(wrk_median(rows, path, c, rate), 0),
                num(wrk_median(rows, path, c, p50), 0),
                num(wrk_median(rows, path, c, p99), 0),
                num(host, 1),
                num(agent, 1),
            );
        }
        md.push('\n');
    }

    if !burrow.is_empty() {
        let _ = writeln!(md, "## Burrow vs the others at each connection count\n");
        let _ = writeln!(
            md,
            "Ratios of medians from this run. req/s: Burrow's ÷ the other's (above 1× Burrow serves more). p99 and \
             CPU µs/request (host + agent side): Burrow's ÷ the other's (above 1× Burrow is slower or costs more).\n"
        );
        let _ = writeln!(
            md,
            "| connections | path | req/s vs direct | req/s vs rathole | req/s vs bore | p99 vs direct | p99 vs rathole | \
             p99 vs bore | CPU/req vs rathole | CPU/req vs bore |"
        );
        let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let cpu = |r: &Row| cpu_total(r, settings);
        for &c in &settings.connections {
            for path in &burrow {
                let m = |p: &str, f: &dyn Fn(&Row) -> Option<f64>| wrk_median(rows, p, c, f);
                let _ = writeln!(
                    md,
                    "| {c} | {path} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    ratio(m(path, &rate), m("direct", &rate)),
                    ratio(m(path, &rate), m("rathole", &rate)),
                    ratio(m(path, &rate), m("bore", &rate)),
                    ratio(m(path, &p99), m("direct", &p99)),
                    ratio(m(path, &p99), m("rathole", &p99)),
                    ratio(m(path, &p99), m("bore", &p99)),
                    ratio(m(path, &cpu), m("rathole", &cpu)),
                    ratio(m(path, &cpu), m("bore", &cpu)),
                );
            }
        }
        md.push('\n');
    }

    let _ = writeln!(
        md,
        "## Single-stream download ({} MiB, curl, median of {} run(s))\n",
        settings.download_bytes >> 20,
        settings.runs
    );
    let _ = writeln!(md, "CPU s/GiB: the path's processes' CPU during the download per GiB moved.\n");
    let _ = writeln!(
        md,
        "| path | MiB/s | vs direct | vs rathole | vs bore | host CPU s/GiB | agent CPU s/GiB |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for path in paths {
        let d = download_median(rows, path);
        let cpu = download_cpu_per_gib(rows, path, settings);
        let _ = writeln!(
            md,
            "| {path} | {} | {} | {} | {} | {} | {} |",
            num(d, 0),
            ratio(d, download_median(rows, "direct")),
            ratio(d, download_median(rows, "rathole")),
            ratio(d, download_median(rows, "bore")),
            num(cpu.map(|c| c.0), 2),
            num(cpu.map(|c| c.1), 2),
        );
    }

    if settings.connections.contains(&1) {
        let _ = writeln!(md, "\n## One connection: latency added to direct (wrk -c1, µs)\n");
        let _ = writeln!(md, "Added = the path's figure minus direct's in the same run; median over runs.\n");
        let _ = writeln!(md, "| path | p50 | p99 | added p50 | added p99 |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for path in paths {
            let _ = writeln!(
                md,
                "| {path} | {} | {} | {} | {} |",
                num(wrk_median(rows, path, 1, p50), 0),
                num(wrk_median(rows, path, 1, p99), 0),
                num(added(rows, path, |r| r.wrk.p50_us), 0),
                num(added(rows, path, |r| r.wrk.p99_us), 0),
            );
        }
    }
    md
}
