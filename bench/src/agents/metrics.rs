//! The host's admin `/metrics` (Prometheus text), scraped over a plain HTTP/1.1 GET,
//! and the few samples the suite waits on and reports.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the suite reads from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct HostGauges {
    /// `burrow_agents_connected`: agent identities with a session on the host.
    pub(super) agents: f64,
    /// `burrow_agent_sessions`: control sessions (an agent holds one per connection).
    pub(super) sessions: f64,
    /// `burrow_tunnels_idle`: parked tunnels.
    pub(super) tunnels_idle: f64,
    /// `burrow_agent_connections_total{result="accepted"}`: handshakes accepted.
    pub(super) accepted: f64,
    /// Every other `burrow_agent_connections_total` result (rate_limited, rejected,
    /// address_limited, port_limited, unavailable), summed.
    pub(super) refused: f64,
    /// `burrow_limit_refusals_total`, all limits summed (parked-tunnel and stream caps).
    pub(super) limit_refusals: f64,
    /// Plugin calls `authenticate-agent` (every agent handshake asks the agent
    /// authenticator) and the seconds they took, from `burrow_plugin_call_duration_seconds`.
    pub(super) auth_calls: f64,
    pub(super) auth_seconds: f64,
}

impl HostGauges {
    pub(super) fn parse(text: &str) -> HostGauges {
        let connects = family(text, "burrow_agent_connections_total");
        // Folds from 0.0: an empty f64 `sum()` is -0.0, which prints as "-0".
        let sum = |values: &mut dyn Iterator<Item = f64>| values.fold(0.0, |a, v| a + v);
        let accepted = sum(&mut connects
            .iter()
            .filter(|(l, _)| label(l, "result") == Some("accepted"))
            .map(|(_, v)| *v));
        let all = sum(&mut connects.iter().map(|(_, v)| *v));
        let auth = |name: &str| {
            family(text, name)
                .into_iter()
                .filter(|(l, _)| label(l, "op") == Some("authenticate-agent"))
                .map(|(_, v)| v)
        };
        HostGauges {
            agents: sample(text, "burrow_agents_connected").unwrap_or(0.0),
            sessions: sample(text, "burrow_agent_sessions").unwrap_or(0.0),
            tunnels_idle: sample(text, "burrow_tunnels_idle").unwrap_or(0.0),
            accepted,
            refused: all - accepted,
            limit_refusals: sum(&mut family(text, "burrow_limit_refusals_total").into_iter().map(|(_, v)| v)),
            auth_calls: sum(&mut auth("burrow_plugin_call_duration_seconds_count")),
            auth_seconds: sum(&mut auth("burrow_plugin_call_duration_seconds_sum")),
        }
    }
}

/// The value of the unlabelled sample `name` (the line `name value`).
pub(super) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Every sample of `name` with labels: (the text between the braces, value).
pub(super) fn family<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once('}')?;
            Some((labels, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The value of label `key` in a label set `a="x",b="y"` (values without escapes, as
/// the host's labels are).
pub(super) fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// `GET /metrics` on the admin port, `Connection: close`; the body.
pub(super) async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = TcpStream::connect(admin).await?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    // A scrape should take milliseconds; a hung one must not stall the poll loop.
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("GET /metrics took over 10 s")??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers in the /metrics response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// One scrape, parsed.
pub(super) async fn gauges(admin: SocketAddr) -> anyhow::Result<HostGauges> {
    Ok(HostGauges::parse(&scrape(admin).await?))
}

/// Kernel TCP counters (`TcpExt` in `/proc/net/netstat`) that show a listen queue
/// overflowing: connections the kernel dropped or answered with a SYN cookie because
/// the host did not accept fast enough. Machine-wide (the network namespace's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct ListenQueue {
    pub(super) overflows: u64,
    pub(super) drops: u64,
    pub(super) syncookies: u64,
}

impl ListenQueue {
    pub(super) fn read() -> ListenQueue {
        Self::parse(&std::fs::read_to_string("/proc/net/netstat").unwrap_or_default())
    }

    /// The `TcpExt:` header line names the values of the `TcpExt:` line after it.
    pub(super) fn parse(text: &str) -> ListenQueue {
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return ListenQueue::default() };
        let get = |name: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        ListenQueue {
            overflows: get("ListenOverflows"),
            drops: get("ListenDrops"),
            syncookies: get("SyncookiesSent"),
        }
    }

    /// Counts since `before`.
    pub(super) fn since(self, before: ListenQueue) -> ListenQueue {
        ListenQueue {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
            syncookies: self.syncookies.saturating_sub(before.syncookies),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_queue_counters() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\n\
                    TcpExt: 7 1 505 506\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let q = ListenQueue::parse(text);
        assert_eq!(q, ListenQueue { overflows: 505, drops: 506, syncookies: 7 });
        let later = ListenQueue { overflows: 510, drops: 512, syncookies: 7 };
        assert_eq!(later.since(q), ListenQueue { overflows: 5, drops: 6, syncookies: 0 });
        assert_eq!(ListenQueue::parse(""), ListenQueue::default());
    }

    const TEXT: &str = "\
# HELP burrow_agents_connected Agent identities with a session on this replica.
# TYPE burrow_agents_connected gauge
burrow_agents_connected 10000
# HELP burrow_agent_sessions Agent control sessions on this replica.
# TYPE burrow_agent_sessions gauge
burrow_agent_sessions 20000
burrow_tunnels_idle 80000
burrow_tunnels_active 0
# TYPE burrow_agent_connections counter
burrow_agent_connections_total{result=\"accepted\"} 40012
burrow_agent_connections_total{result=\"rate_limited\"} 3
burrow_agent_connections_total{result=\"address_limited\"} 2
burrow_limit_refusals_total{limit=\"agent_parked_tunnels\"} 5
burrow_limit_refusals_total{limit=\"agent_streams\"} 1
burrow_plugin_call_duration_seconds_sum{plugin=\"agent-list\",kind=\"authorizer\",op=\"authenticate-agent\"} 8.5
burrow_plugin_call_duration_seconds_count{plugin=\"agent-list\",kind=\"authorizer\",op=\"authenticate-agent\"} 10000
burrow_plugin_call_duration_seconds_sum{plugin=\"workload-workspace\",kind=\"workload\",op=\"expired\"} 0.5
burrow_agents_connected_extra 7
# EOF
";

    #[test]
    fn parses_gauges_and_families() {
        let g = HostGauges::parse(TEXT);
        assert_eq!(g.agents, 10000.0);
        assert_eq!(g.sessions, 20000.0);
        assert_eq!(g.tunnels_idle, 80000.0);
        assert_eq!(g.accepted, 40012.0);
        assert_eq!(g.refused, 5.0);
        assert_eq!(g.limit_refusals, 6.0);
        assert_eq!((g.auth_calls, g.auth_seconds), (10000.0, 8.5));
    }

    #[test]
    fn a_name_is_matched_whole() {
        // `burrow_agents_connected_extra` must not be read as `burrow_agents_connected`,
        // nor a labelled sample as an unlabelled one.
        let text = "burrow_agents_connected_extra 7\nburrow_tunnels_idle{x=\"1\"} 3\nburrow_agents_connected 2.5e3\n";
        assert_eq!(sample(text, "burrow_agents_connected"), Some(2500.0));
        assert_eq!(sample(text, "burrow_tunnels_idle"), None);
        assert_eq!(sample("", "burrow_agent_sessions"), None);
        assert_eq!(HostGauges::parse(""), HostGauges::default());
    }

    #[test]
    fn labels() {
        assert_eq!(label("result=\"accepted\"", "result"), Some("accepted"));
        assert_eq!(label("a=\"x\",result=\"rejected\"", "result"), Some("rejected"));
        assert_eq!(label("a=\"x\"", "result"), None);
        let f = family("m_total{a=\"1\"} 2\nm_total{a=\"2\"} 3 1700000000\nm_totalx{a=\"3\"} 9\n", "m_total");
        assert_eq!(f, vec![("a=\"1\"", 2.0), ("a=\"2\"", 3.0)]);
    }
}
