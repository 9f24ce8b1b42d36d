//! Per-run figures, their medians as markdown tables, and the files under
//! `bench/results/<date>-agents/`: the reconnect curve and requests (CSV), the memory
//! points (CSV) and `summary.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::median;

/// Figures by (row key, column), one value per run.
#[derive(Default)]
pub(super) struct Figures {
    values: BTreeMap<(String, String), Vec<f64>>,
}

impl Figures {
    pub(super) fn push(&mut self, key: &str, column: &str, value: f64) {
        self.values.entry((key.to_owned(), column.to_owned())).or_default().push(value);
    }

    /// The median over runs, if measured.
    pub(super) fn median(&self, key: &str, column: &str) -> Option<f64> {
        let v = self.values.get(&(key.to_owned(), column.to_owned()))?;
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        (!finite.is_empty()).then(|| median(finite))
    }

    /// Every run's value, for the per-run columns.
    pub(super) fn runs(&self, key: &str, column: &str) -> Vec<f64> {
        self.values.get(&(key.to_owned(), column.to_owned())).cloned().unwrap_or_default()
    }

    /// A markdown table: one row per `(key, label, decimals)`, one column per `columns`
    /// entry (its key and heading), the median over runs in each cell and, last, each
    /// run's value of the first column.
    pub(super) fn table(
        &self,
        corner: &str,
        rows: &[(&str, String, usize)],
        columns: &[(&str, &str)],
    ) -> String {
        let mut out = String::new();
        let _ = write!(out, "| {corner} |");
        for (_, heading) in columns {
            let _ = write!(out, " {heading} |");
        }
        out.push_str(" runs |\n|---|");
        for _ in columns {
            out.push_str("---|");
        }
        out.push_str("---|\n");
        for (key, label, decimals) in rows {
            let _ = write!(out, "| {label} |");
            for (column, _) in columns {
                match self.median(key, column) {
                    Some(v) => {
                        let _ = write!(out, " {v:.decimals$} |");
                    }
                    None => out.push_str(" – |"),
                }
            }
            let per_run: Vec<String> = columns
                .iter()
                .map(|(column, _)| {
                    let v = self.runs(key, column);
                    v.iter().map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(" / ")
                })
                .filter(|s| !s.is_empty())
                .collect();
            let _ = writeln!(out, " {} |", per_run.join(" ; "));
        }
        out
    }
}

/// Nearest-rank percentile of sorted values (`p` in 0..=1); NaN when empty.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The files of one suite run.
pub(super) struct Files {
    pub(super) dir: PathBuf,
    pub(super) curve: String,
    pub(super) requests: String,
    pub(super) memory: String,
}

impl Files {
    pub(super) fn new(dir: PathBuf) -> Files {
        Files {
            dir,
            curve:
                "run,variant,ms_since_listening,host_agents_connected,host_agent_sessions,host_tunnels_idle,\
                    host_handshakes_accepted,host_handshakes_refused,bench_agents_back\n"
                    .into(),
            requests: "run,variant,phase,sent_ms_since_listening,latency_ms,status,agent\n".into(),
            memory: "run,agents,host_vmrss_kib,host_rssanon_kib,host_vmhwm_kib,host_agents_connected,\
                     host_agent_sessions,host_tunnels_idle,connect_s,rss_settle_s,rss_settled\n"
                .into(),
        }
    }

    pub(super) fn write(&self, summary: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join("reconnect-curve.csv"), &self.curve)?;
        std::fs::write(self.dir.join("reconnect-requests.csv"), &self.requests)?;
        std::fs::write(self.dir.join("memory.csv"), &self.memory)?;
        std::fs::write(self.dir.join("summary.md"), summary)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_tables() {
        let mut f = Figures::default();
        for v in [3.0, 1.0, 2.0] {
            f.push("rss", "10000", v);
        }
        f.push("rss", "1000", f64::NAN);
        assert_eq!(f.median("rss", "10000"), Some(2.0));
        assert_eq!(f.median("rss", "1000"), None);
        let t =
            f.table("figure", &[("rss", "RSS".into(), 1)], &[("10000", "N = 10000"), ("1000", "N = 1000")]);
        assert!(t.contains("| RSS | 2.0 | – | 3.0 / 1.0 / 2.0 ; NaN |"), "{t}");
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
