//! Running wrk and reading its report.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// What one wrk run reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct WrkReport {
    pub(super) requests: u64,
    /// wrk's own figure: requests over its measured run time.
    pub(super) req_per_s: f64,
    /// Latency distribution (`--latency`), µs.
    pub(super) p50_us: f64,
    pub(super) p75_us: f64,
    pub(super) p90_us: f64,
    pub(super) p99_us: f64,
    pub(super) avg_us: f64,
    pub(super) max_us: f64,
    /// Responses with a status other than 2xx or 3xx.
    pub(super) non_2xx: u64,
    /// Socket errors: connect, read, write, timeout.
    pub(super) connect_errors: u64,
    pub(super) read_errors: u64,
    pub(super) write_errors: u64,
    pub(super) timeouts: u64,
}

impl WrkReport {
    pub(super) fn errors(&self) -> u64 {
        self.non_2xx + self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }
}

/// `wrk -t min(2, c) -c c -d <secs>s --latency -H 'Host: host' url`.
pub(super) fn run(
    wrk: &Path,
    url: &str,
    host: &str,
    connections: u32,
    secs: u64,
) -> anyhow::Result<WrkReport> {
    let threads = connections.min(2);
    let out = Command::new(wrk)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url} -c{connections} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("reading wrk's report:\n{text}"))
}

/// A wrk duration (`851.00us`, `1.20ms`, `2.00s`, `1.00m`) in µs.
fn duration_us(text: &str) -> anyhow::Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).context("duration without unit")?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(number.parse::<f64>()? * scale)
}

/// The number after `label` in `line`, up to a comma or the end.
fn count_after(line: &str, label: &str) -> Option<u64> {
    let rest = &line[line.find(label)? + label.len()..];
    rest.trim_start().split(|c: char| c == ',' || c.is_whitespace()).next()?.parse().ok()
}

pub(super) fn parse(text: &str) -> anyhow::Result<WrkReport> {
    let mut r = WrkReport::default();
    let (mut saw_requests, mut saw_rate, mut saw_p50) = (false, false, false);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", avg, _stdev, max, ..] => {
                r.avg_us = duration_us(avg)?;
                r.max_us = duration_us(max)?;
            }
            [pct, value] if pct.ends_with('%') => {
                let v = duration_us(value)?;
                match *pct {
                    "50%" => {
                        r.p50_us = v;
                        saw_p50 = true;
                    }
                    "75%" => r.p75_us = v,
                    "90%" => r.p90_us = v,
                    "99%" => r.p99_us = v,
                    _ => {}
                }
            }
            [n, "requests", "in", ..] => {
                r.requests = n.parse()?;
                saw_requests = true;
            }
            ["Requests/sec:", rate] => {
                r.req_per_s = rate.parse()?;
                saw_rate = true;
            }
            ["Socket", "errors:", ..] => {
                r.connect_errors = count_after(line, "connect").unwrap_or(0);
                r.read_errors = count_after(line, "read").unwrap_or(0);
                r.write_errors = count_after(line, "write").unwrap_or(0);
                r.timeouts = count_after(line, "timeout").unwrap_or(0);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse()?,
            _ => {}
        }
    }
    if !(saw_requests && saw_rate && saw_p50) {
        bail!("no request count, rate or latency distribution");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_report_with_errors() {
        let text = "Running 5s test @ http://127.0.0.1:1234/13b.txt
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  500.00us  32.10ms   90.00%
    Req/Sec    25.00k     1.00k   28.00k    70.00%
  Latency Distribution
     50%  851.00us
     75%    1.10ms
     90%    1.50ms
     99%    3.00ms
  250000 requests in 5.00s, 60.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  49990.50
Transfer/sec:     12.00MB
";
        let r = parse(text).unwrap();
        assert_eq!(r.requests, 250_000);
        assert_eq!(r.req_per_s, 49_990.5);
        assert_eq!(r.p50_us, 851.0);
        assert_eq!(r.p75_us, 1100.0);
        assert_eq!(r.p99_us, 3000.0);
        assert_eq!(r.avg_us, 1200.0);
        assert_eq!(r.max_us, 32_100.0);
        assert_eq!((r.connect_errors, r.read_errors, r.write_errors, r.timeouts, r.non_2xx), (1, 2, 3, 4, 5));
        assert_eq!(r.errors(), 15);
    }

    #[test]
    fn refuses_a_report_without_latency_distribution() {
        assert!(parse("  10 requests in 1.00s, 1.00KB read\nRequests/sec: 10.00\n").is_err());
    }
}
