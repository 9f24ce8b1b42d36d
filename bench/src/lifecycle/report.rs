//! Samples, per-run figures and the summary: the files under
//! `bench/results/<date>-lifecycle/` and the printed tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::median;

/// A reported series: its key in the files, its label, and the paths it is taken on.
pub(super) struct Figure {
    pub(super) key: &'static str,
    pub(super) label: &'static str,
    pub(super) paths: &'static [&'static str],
}

/// The paths by name (see `Setup`), and the hook measured without an agent.
pub(super) const SINGLE: &str = "single";
pub(super) const CLUSTER: &str = "cluster";
pub(super) const ALONE: &str = "bench";
const BOTH: &[&str] = &[SINGLE, CLUSTER];

pub(super) const CREATE_FIGURES: &[Figure] = &[
    Figure { key: "create_rpc_ms", label: "`CreateWorkload` call (sent → token back)", paths: BOTH },
    Figure {
        key: "create_to_agent_connected_ms",
        label: "create sent → agent's status `Connected`",
        paths: BOTH,
    },
    Figure {
        key: "create_to_api_connected_ms",
        label: "**create sent → `GetWorkload` shows CONNECTED**",
        paths: BOTH,
    },
    Figure {
        key: "agent_connected_to_api_connected_ms",
        label: "agent `Connected` → `GetWorkload` shows CONNECTED",
        paths: BOTH,
    },
    Figure {
        key: "create_to_host_since_ms",
        label: "create sent → the replica's `connections[].since_ms` (host clock, whole ms)",
        paths: BOTH,
    },
];

pub(super) const WORK_FIGURES: &[Figure] = &[
    Figure { key: "enqueue_rpc_ms", label: "`EnqueueWork` call", paths: BOTH },
    Figure {
        key: "enqueue_to_hook_ms",
        label: "**`EnqueueWork` returned → hook started (its `$EPOCHREALTIME`)**",
        paths: BOTH,
    },
    Figure {
        key: "enqueue_to_succeeded_ms",
        label: "`EnqueueWork` returned → `ListWork` shows SUCCEEDED",
        paths: BOTH,
    },
    Figure {
        key: "list_work_call_ms",
        label: "the `ListWork` call that showed SUCCEEDED (sent → answered)",
        paths: BOTH,
    },
    Figure {
        key: "enqueue_to_host_succeeded_ms",
        label: "`EnqueueWork` returned → the item's `updated_at_ms` at SUCCEEDED (host clock, whole ms)",
        paths: BOTH,
    },
    Figure {
        key: "hook_alone_ms",
        label: "the same hook started by the bench itself: spawn → its `$EPOCHREALTIME`",
        paths: &[ALONE],
    },
];

/// p50, p90, p99 and max of one run's samples (nearest rank, rounded: with 100 samples
/// p99 is the second largest).
#[derive(Clone, Copy)]
pub(super) struct Stats {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        Stats { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: v[v.len() - 1] }
    }

    fn json(&self) -> Value {
        json!({ "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max })
    }
}

/// What a run measured besides the samples.
pub(super) struct Machine {
    pub(super) loadavg_before: String,
    pub(super) loadavg_after: String,
    pub(super) cpu_busy_pct: f64,
    pub(super) cpu_others_pct: f64,
    /// The single host's state file after the run.
    pub(super) state_file_bytes: u64,
}

/// Everything measured so far, and where it goes.
pub(super) struct Report {
    /// `run path sample figure value`, one line per sample value.
    samples_tsv: String,
    /// Per run: (figure, path) → samples.
    runs: Vec<BTreeMap<(&'static str, &'static str), Vec<f64>>>,
    machines: Vec<Machine>,
    pub(super) samples_path: PathBuf,
    pub(super) runs_path: PathBuf,
    pub(super) json_path: PathBuf,
    pub(super) md_path: PathBuf,
}

fn all_figures() -> impl Iterator<Item = &'static Figure> {
    CREATE_FIGURES.iter().chain(WORK_FIGURES)
}

impl Report {
    pub(super) fn new(dir: PathBuf, time: &str) -> Report {
        Report {
            samples_tsv: "run\tpath\tsample\tfigure\tvalue\n".into(),
            runs: Vec::new(),
            machines: Vec::new(),
            samples_path: dir.join(format!("samples-{time}.tsv")),
            runs_path: dir.join(format!("runs-{time}.tsv")),
            json_path: dir.join(format!("summary-{time}.json")),
            md_path: dir.join(format!("summary-{time}.md")),
        }
    }

    pub(super) fn start_run(&mut self) {
        self.runs.push(BTreeMap::new());
    }

    /// Adds one value of sample `sample` to the current run. Figures the tables do not
    /// show (poll counts, flags) go to the samples file only.
    pub(super) fn push(&mut self, path: &'static str, sample: usize, figure: &'static str, value: f64) {
        let run = self.runs.len();
        let _ = writeln!(self.samples_tsv, "{run}\t{path}\t{sample}\t{figure}\t{value}");
        if all_figures().any(|f| f.key == figure) {
            self.runs.last_mut().expect("a run started").entry((figure, path)).or_default().push(value);
        }
    }

    /// Ends the current run and writes the samples and per-run files (after every run,
    /// so a later failure keeps what was measured).
    pub(super) fn end_run(&mut self, machine: Machine) -> anyhow::Result<()> {
        self.machines.push(machine);
        std::fs::write(&self.samples_path, &self.samples_tsv)?;
        let mut tsv = String::from("run\tpath\tfigure\tstat\tvalue\n");
        for (i, (run, m)) in self.runs.iter().zip(&self.machines).enumerate() {
            for ((figure, path), samples) in run {
                let s = Stats::of(samples);
                for (stat, v) in [
                    ("n", samples.len() as f64),
                    ("p50", s.p50),
                    ("p90", s.p90),
                    ("p99", s.p99),
                    ("max", s.max),
                ] {
                    let _ = writeln!(tsv, "{}\t{path}\t{figure}\t{stat}\t{v}", i + 1);
                }
            }
            let _ = writeln!(tsv, "{}\tmachine\tloadavg_before_run\t-\t{}", i + 1, m.loadavg_before);
            let _ = writeln!(tsv, "{}\tmachine\tloadavg_after_run\t-\t{}", i + 1, m.loadavg_after);
            let _ = writeln!(tsv, "{}\tmachine\tcpu_busy_pct_during_run\t-\t{:.1}", i + 1, m.cpu_busy_pct);
            let _ =
                writeln!(tsv, "{}\tmachine\tcpu_others_pct_during_run\t-\t{:.1}", i + 1, m.cpu_others_pct);
        }
        std::fs::write(&self.runs_path, tsv)?;
        Ok(())
    }

    /// Per-run figures of one series.
    fn per_run(&self, figure: &str, path: &str) -> Vec<Stats> {
        self.runs.iter().filter_map(|r| r.get(&(figure, path)).map(|s| Stats::of(s))).collect()
    }

    /// Medians over runs of each per-run statistic, and the range of the per-run p50s.
    fn medians(&self, figure: &str, path: &str) -> Option<(Stats, f64, f64)> {
        let runs = self.per_run(figure, path);
        if runs.is_empty() {
            return None;
        }
        let pick = |f: fn(&Stats) -> f64| median(runs.iter().map(f).collect());
        let p50s: Vec<f64> = runs.iter().map(|s| s.p50).collect();
        let lo = p50s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p50s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((
            Stats { p50: pick(|s| s.p50), p90: pick(|s| s.p90), p99: pick(|s| s.p99), max: pick(|s| s.max) },
            lo,
            hi,
        ))
    }

    /// A markdown table of `figures`: medians over runs of the per-run figures.
    pub(super) fn table(&self, figures: &[Figure], path_labels: &[(&str, &str)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| measurement (ms) | path | p50 | p90 | p99 | max | per-run p50, min–max |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for f in figures {
            for path in f.paths {
                let Some((m, lo, hi)) = self.medians(f.key, path) else { continue };
                let label = path_labels.iter().find(|(p, _)| p == path).map_or(*path, |(_, l)| l);
                let _ = writeln!(
                    out,
                    "| {} | {label} | {:.2} | {:.2} | {:.2} | {:.2} | {lo:.2}–{hi:.2} |",
                    f.label, m.p50, m.p90, m.p99, m.max
                );
            }
        }
        out
    }

    /// A markdown table of every run's figures of `figure`, per path.
    pub(super) fn per_run_table(&self, figure: &Figure, path_labels: &[(&str, &str)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} | run | samples | p50 | p90 | p99 | max |", figure.label);
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for path in figure.paths {
            let label = path_labels.iter().find(|(p, _)| p == path).map_or(*path, |(_, l)| l);
            for (i, run) in self.runs.iter().enumerate() {
                let Some(samples) = run.get(&(figure.key, *path)) else { continue };
                let s = Stats::of(samples);
                let _ = writeln!(
                    out,
                    "| {label} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    i + 1,
                    samples.len(),
                    s.p50,
                    s.p90,
                    s.p99,
                    s.max
                );
            }
        }
        out
    }

    /// The summary file: settings, per-run figures with the machine's state, medians.
    pub(super) fn json(&self, settings: Value) -> Value {
        let mut runs = Vec::new();
        for (i, m) in self.machines.iter().enumerate() {
            let mut figures = serde_json::Map::new();
            for ((figure, path), samples) in &self.runs[i] {
                let mut s = Stats::of(samples).json();
                s["n"] = json!(samples.len());
                figures.entry(path.to_string()).or_insert_with(|| json!({}))[*figure] = s;
            }
            runs.push(json!({
                "run": i + 1,
                "loadavg_before": m.loadavg_before,
                "loadavg_after": m.loadavg_after,
                "cpu_busy_pct_of_both_cores": (m.cpu_busy_pct * 10.0).round() / 10.0,
                "cpu_others_pct_of_both_cores": (m.cpu_others_pct * 10.0).round() / 10.0,
                "single_state_file_bytes_after_run": m.state_file_bytes,
                "figures": figures,
            }));
        }
        let mut medians = serde_json::Map::new();
        for f in all_figures() {
            for path in f.paths {
                if let Some((m, lo, hi)) = self.medians(f.key, path) {
                    let mut s = m.json();
                    s["per_run_p50_min"] = json!(lo);
                    s["per_run_p50_max"] = json!(hi);
                    medians.entry(path.to_string()).or_insert_with(|| json!({}))[f.key] = s;
                }
            }
        }
        json!({
            "suite": "lifecycle",
            "unit": "ms",
            "settings": settings,
            "medians_over_runs": medians,
            "runs": runs,
        })
    }
}
