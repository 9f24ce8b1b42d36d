//! The printed tables and `summary.md`.

use std::fmt::Write as _;

use super::report::Figures;
use super::run::Suite;
use super::traffic::{CLIENTS, PACE, TARGETS};

/// The targets.
const TARGET_KIB_PER_AGENT: f64 = 16.0;
const TARGET_RECONNECT_S: f64 = 10.0;

impl Suite<'_> {
    pub(super) fn summary(&self, header: &str, f: &Figures, notes: &[String]) -> String {
        let (n, small) = (self.n, self.small);
        let mut md = header.to_owned();
        let head_n = format!("{n} agents");
        let head_small = format!("{small} agents");
        let columns: Vec<(&str, &str)> = if small < n {
            vec![("0", "no agent"), ("small", head_small.as_str()), ("n", head_n.as_str())]
        } else {
            vec![("0", "no agent"), ("n", head_n.as_str())]
        };
        let _ = writeln!(md, "\n### Host memory with idle connected agents\n");
        let batch = self.args.agents_batch;
        let _ = writeln!(
            md,
            "Agents started {}, each batch fully up (host metrics and the agents' status) before the next; RSS read \
             once it stops changing. The reconnect table below has the same agents arriving all at once.\n",
            if batch == 0 { "all of a step at once".to_owned() } else { format!("{batch} at a time") }
        );
        md.push_str(&f.table(
            "host process",
            &[
                ("rss", "VmRSS (MiB)".into(), 1),
                ("anon", "RssAnon (MiB)".into(), 1),
                ("sessions", "agent sessions (`burrow_agent_sessions`)".into(), 0),
                ("tunnels", "parked tunnels (`burrow_tunnels_idle`)".into(), 0),
                ("per_agent_base", "(VmRSS − no-agent VmRSS) / agents, KiB".into(), 2),
                ("per_agent_base_anon", "(RssAnon − no-agent RssAnon) / agents, KiB".into(), 2),
                ("connect_s", "spawn → every agent of the step fully up (s)".into(), 1),
                ("connect_cpu", "… host CPU meanwhile (s)".into(), 2),
                ("cpu_per_handshake", "… host CPU per accepted handshake (ms)".into(), 2),
                (
                    "auth_per_handshake",
                    "… `authenticate-agent` plugin call per handshake, wall (ms)".into(),
                    2,
                ),
            ],
            &columns,
        ));
        if small < n {
            let _ = writeln!(
                md,
                "\n| per idle agent, slope between {small} and {n} agents | median | runs |\n|---|---|---|"
            );
            let rows = [
                ("slope", "**VmRSS KiB per agent**".to_owned(), 2),
                ("slope_anon", "RssAnon KiB per agent".to_owned(), 2),
                ("tunnels_per_agent", "parked tunnels per agent (host metrics)".to_owned(), 1),
                (
                    "per_tunnel_bound",
                    "VmRSS KiB per parked tunnel, if tunnels were all of it (upper bound)".to_owned(),
                    2,
                ),
            ];
            for (key, label, d) in rows {
                let median = f.median(key, "n").map_or("–".into(), |v| format!("{v:.d$}"));
                let runs: Vec<String> = f.runs(key, "n").iter().map(|v| format!("{v:.d$}")).collect();
                let _ = writeln!(md, "| {label} | {median} | {} |", runs.join(" / "));
            }
            if let Some(slope) = f.median("slope", "n") {
                let _ = writeln!(
                    md,
                    "\nTarget ≤ {TARGET_KIB_PER_AGENT} KiB per idle agent: **{}** ({slope:.2} KiB; each agent holds {} \
                     connection(s) with {} parked tunnels in all).",
                    if slope <= TARGET_KIB_PER_AGENT { "met" } else { "missed" },
                    self.connections_per_agent(f),
                    f.median("tunnels_per_agent", "n").map_or("?".into(), |v| format!("{v:.0}")),
                );
            }
        }

        let vcols: Vec<(&str, String)> =
            self.variants.iter().map(|v| (v.name(), format!("SIG{}", v.name().to_uppercase()))).collect();
        let vcols: Vec<(&str, &str)> = vcols.iter().map(|(k, h)| (*k, h.as_str())).collect();
        if !vcols.is_empty() {
            let _ = writeln!(
                md,
                "\n### {n} agents reconnecting after a host restart\n\n\
                 t = 0 when the new process's agent port accepts TCP (it binds every port before loading its \
                 plugins; \"serving\" is its first `/metrics` answer). Connected = `burrow_agents_connected` of the \
                 new host (polled every 50 ms); back = the agent's own status shows a connection to the new host \
                 with a parked tunnel. Requests: {CLIENTS} keep-alive HTTP/1.1 clients, one `GET /hello` each \
                 every {PACE:?}, each to one of the first {TARGETS} agents back; \"during\" = sent before all {n} were \
                 back, \"after\" = the next 1000.\n"
            );
            let mut rows: Vec<(String, String, usize)> = vec![
                ("signal_to_exit".into(), "signal → old process exited (ms)".into(), 0),
                (
                    "exit_to_listening".into(),
                    "exited → new agent port accepting (ms; spawn + config)".into(),
                    0,
                ),
                ("listening_to_serving".into(), "accepting → serving (ms; plugins compiled)".into(), 0),
                ("all_host".into(), format!("**accepting → all {n} connected, host metric (s)**"), 2),
                ("all_bench".into(), format!("accepting → all {n} back, agents' status (s)"), 2),
                ("back_p50".into(), "accepting → median agent back (s)".into(), 2),
                ("back_p90".into(), "accepting → 90th percentile agent back (s)".into(), 2),
            ];
            for m in [1, 2, 5, 10] {
                rows.push((format!("host_at_{m}"), format!("connected at {m} s (host)"), 0));
            }
            for m in [1, 2, 5, 10] {
                rows.push((format!("bench_at_{m}"), format!("back at {m} s (agents)"), 0));
            }
            rows.extend([
                ("storm_wall".into(), "signal → all back (s)".into(), 2),
                ("host_cpu".into(), "… CPU of the new host (s; 2 cores = 2 s per s)".into(), 2),
                ("bench_cpu".into(), "… CPU of the bench: agents, clients, polls (s)".into(), 2),
                ("machine_busy".into(), "… machine CPU busy (% of all cores)".into(), 0),
                ("others".into(), "… of which neither bench nor new host (% of all cores)".into(), 0),
                ("listen_overflows".into(), "… kernel ListenOverflows (machine-wide)".into(), 0),
                ("syncookies".into(), "… kernel SyncookiesSent (machine-wide)".into(), 0),
                ("storm_rss".into(), format!("new host's VmRSS with the {n} agents, once settled (MiB)"), 1),
                ("storm_per_agent".into(), "… over the no-agent VmRSS, per agent (KiB)".into(), 2),
                ("dials_mean".into(), "… dials per agent, mean (agents' `connect_attempts`)".into(), 2),
                ("dials_p99".into(), "… dials per agent, p99".into(), 0),
                ("dials_max".into(), "… dials per agent, max".into(), 0),
                ("accepted".into(), "handshakes accepted by the new host (until the end)".into(), 0),
                ("auth_seconds".into(), "… `authenticate-agent` plugin calls, total wall (s)".into(), 2),
                ("auth_per_call".into(), "… per call (ms; wall, includes waiting for a CPU)".into(), 2),
                ("refused".into(), "handshakes refused (rate limit, caps, shutting down)".into(), 0),
                ("storm_count".into(), "requests during the storm".into(), 0),
                ("storm_ok".into(), "… answered 200 (%)".into(), 2),
                ("storm_p50".into(), "… latency p50 (ms)".into(), 2),
                ("storm_p99".into(), "… latency p99 (ms)".into(), 2),
                ("settled_count".into(), "requests after all were back".into(), 0),
                ("settled_ok".into(), "… answered 200 (%)".into(), 2),
                ("settled_p50".into(), "… latency p50 (ms)".into(), 2),
                ("settled_p99".into(), "… latency p99 (ms)".into(), 2),
            ]);
            let rows: Vec<(&str, String, usize)> =
                rows.iter().map(|(k, l, d)| (k.as_str(), l.clone(), *d)).collect();
            md.push_str(&f.table("restart", &rows, &vcols));
            for (key, head) in &vcols {
                if let Some(s) = f.median("all_host", key) {
                    let _ = writeln!(
                        md,
                        "\n{head}: target all back within {TARGET_RECONNECT_S} s: **{}** ({s:.2} s from accepting).",
                        if s <= TARGET_RECONNECT_S { "met" } else { "missed" }
                    );
                }
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(md, "\nNotes:");
            for note in notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        md
    }

    fn connections_per_agent(&self, f: &Figures) -> String {
        match (f.median("sessions", "n"), self.n) {
            (Some(s), n) if n > 0 => format!("{:.0}", s / n as f64),
            _ => "?".into(),
        }
    }
}
