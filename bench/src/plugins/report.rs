//! The plugin suite's tables.

use super::http_rate::HttpFigures;
use super::latency::{Column, Latencies};
use super::swap::SwapSeries;
use super::throughput::{ThroughputSeries, MIN_CPU_SECONDS};
use super::{FRESH, NATIVE, PATH_NAMES, WARM};
use crate::{median, Args};

pub(super) fn ratio(a: f64, b: f64) -> String {
    format!("{:.1}×", a / b)
}

pub(super) fn print_report(
    args: &Args,
    lat: &[Latencies; 3],
    (policy_parse, scheme_parse): (f64, f64),
    (task_counts, throughput): (&[usize], &[ThroughputSeries]),
    uncached: &SwapSeries,
    cached: &SwapSeries,
    http: &HttpFigures,
) {
    println!();
    println!(
        "Call latency, µs: per run and path {} sequential decisions, then as many calls of each export alone",
        args.calls
    );
    println!();
    println!("| call | percentile | native | per-user | fresh | per-user / native | fresh / native |");
    println!("|---|---|---|---|---|---|---|");
    let rows: [(&str, Column); 6] = [
        ("`resolve` (workload-workspace)", |l| &l.resolve),
        ("`authorize_user` (authorizer-static: authenticate-user + authorize in one instance)", |l| {
            &l.authorize_user
        }),
        ("decision = `resolve` + `authorize_user`", |l| &l.decision),
        ("`authenticate_user` alone (one instance, one guest call)", |l| &l.authenticate_alone),
        ("`authorize` alone (one instance, one guest call)", |l| &l.authorize_alone),
        ("`try_route` (router-prefer-local, 3 candidates)", |l| &l.route),
    ];
    for (name, dist) in rows {
        let [n, w, f] =
            [dist(&lat[NATIVE]).medians(), dist(&lat[WARM]).medians(), dist(&lat[FRESH]).medians()];
        for (i, p) in ["p50", "p90", "p99"].iter().enumerate() {
            let label = if i == 0 { name } else { "" };
            println!(
                "| {label} | {p} | {:.2} | {:.2} | {:.2} | {} | {} |",
                n[i],
                w[i],
                f[i],
                ratio(w[i], n[i]),
                ratio(f[i], n[i])
            );
        }
    }
    println!();
    println!(
        "Native config parse (what `init` does; a fresh instance repeats it in wasm on every call), p50 µs: \
         authorizer-static {policy_parse:.2}, workload-workspace {scheme_parse:.2}"
    );
    println!();
    println!(
        "Decision throughput: {} decisions per run, shared by the tasks (2-worker tokio runtime)",
        args.decisions
    );
    println!();
    println!("| path | tasks | decisions/s | CPU µs per decision | vs native, same tasks |");
    println!("|---|---|---|---|---|");
    for path in [NATIVE, WARM, FRESH] {
        for (series, tasks) in throughput.iter().zip(task_counts) {
            let native_rate = median(series[NATIVE].0.clone());
            let rate = median(series[path].0.clone());
            // A CPU figure only when every run was long enough to measure one.
            let cpu = match series[path].1.iter().copied().collect::<Option<Vec<f64>>>() {
                Some(cpu) => format!("{:.2}", median(cpu)),
                None => format!("– (under {MIN_CPU_SECONDS} s of CPU per run)"),
            };
            println!("| {} | {tasks} | {rate:.0} | {cpu} | {:.3}× |", PATH_NAMES[path], rate / native_rate);
        }
    }
    println!();
    println!(
        "Swap test_swap_v1 ⇄ v2, ms from trigger (`Plugins::reload`) to: reload returned / first request decision \
         with the new version's answer; {} swaps per run and variant",
        args.swaps
    );
    println!();
    println!("| variant | swaps | reload returned p50 | serving p50 | serving max |");
    println!("|---|---|---|---|---|");
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let rows = [
        ("no `cache_dir`: compile every swap", &uncached.compiled_reload, &uncached.compiled_serving),
        (
            "`cache_dir`, first sight of the sha256: compile + store",
            &cached.compiled_reload,
            &cached.compiled_serving,
        ),
        ("`cache_dir`, cache hit", &cached.hit_reload, &cached.hit_serving),
    ];
    for (name, reload, serving) in rows {
        if serving.is_empty() {
            println!("| {name} | 0 | – | – | – |");
            continue;
        }
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            serving.len(),
            median(reload.clone()),
            median(serving.clone()),
            max(serving)
        );
    }
    println!();
    println!(
        "HTTP: {} keep-alive HTTP/1.1 connections share {} `GET /hello` per run (bearer token; agent over grpc)",
        args.clients, args.http_requests
    );
    println!();
    println!("| path | requests/s | vs direct |");
    println!("|---|---|---|");
    println!("| direct to the workload | {:.0} | 1.00× |", http.direct);
    println!("| through the host, plugins fresh | {:.0} | {:.2}× |", http.fresh, http.fresh / http.direct);
    println!(
        "| through the host, plugins per-user (default) | {:.0} | {:.2}× |",
        http.warm,
        http.warm / http.direct
    );
}
