//! The peers harness (`burrow-bench --suite peers`) end to end at tiny sizes, on Burrow
//! alone: real nginx, real `burrow-host` and `burrow-agent` processes (this package's
//! copies of their `main.rs`), real wrk and curl. Nothing about speed is asserted; the
//! suite itself is run with release builds by bench/peers.sh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Fails with the tool's name and package when it is missing (.ci/run installs them).
fn require(program: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .any(|dir| dir.join(program).is_file());
    assert!(found, "the peers smoke test needs `{program}`: apt-get install {package} (.ci/run installs it)");
}

/// raw.csv as one map of column → value per row.
fn read_csv(file: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("raw.csv has a header").split(',').collect();
    lines
        .map(|line| {
            let values: Vec<&str> = line.split(',').collect();
            assert_eq!(values.len(), header.len(), "raw.csv row {line:?}");
            header.iter().zip(values).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        })
        .collect()
}

fn number(row: &HashMap<String, String>, column: &str) -> f64 {
    row[column].parse().unwrap_or_else(|e| panic!("{column} = {:?}: {e}", row[column]))
}

#[test]
fn peers_suite_on_direct_and_burrow_grpc_writes_raw_csv_summary_and_three_pngs_with_nonzero_rates_and_no_errors(
) {
    require("wrk", "wrk");
    require("nginx", "nginx");
    require("curl", "curl");
    assert!(
        Path::new(FONT).is_file(),
        "the peers smoke test needs {FONT}: apt-get install fonts-dejavu-core"
    );

    let out = std::env::temp_dir().join(format!("burrow-bench-peers-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // Output captured, shown only if the suite fails (its progress lines are long).
    let run = Command::new(env!("CARGO_BIN_EXE_burrow-bench"))
        .args(["--suite", "peers", "--paths", "burrow-grpc", "--connections", "1,4", "--duration", "1"])
        .args(["--runs", "1", "--download-bytes", "1048576"])
        .arg("--host-bin")
        .arg(env!("CARGO_BIN_EXE_burrow-host-bin"))
        .arg("--agent-bin")
        .arg(env!("CARGO_BIN_EXE_burrow-agent-bin"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running burrow-bench");
    assert!(
        run.status.success(),
        "burrow-bench --suite peers: {}\n{}{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let rows = read_csv(&out.join("raw.csv"));
    let wrk: Vec<_> = rows.iter().filter(|r| r["kind"] == "wrk").collect();
    let mut seen: Vec<(String, String)> =
        wrk.iter().map(|r| (r["path"].clone(), r["connections"].clone())).collect();
    seen.sort();
    let expected = [("burrow-grpc", "1"), ("burrow-grpc", "4"), ("direct", "1"), ("direct", "4")];
    assert_eq!(seen, expected.map(|(p, c)| (p.to_owned(), c.to_owned())), "wrk rows of raw.csv");
    for r in &wrk {
        assert!(number(r, "requests") > 0.0 && number(r, "req_per_s") > 0.0, "no requests: {r:?}");
        assert!(number(r, "p50_us") > 0.0 && number(r, "p99_us") >= number(r, "p50_us"), "latencies: {r:?}");
        for errors in ["non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts"] {
            assert_eq!(number(r, errors), 0.0, "{errors}: {r:?}");
        }
        // Only the tunnel has processes whose CPU is counted.
        assert_eq!(r["host_cpu_us_per_req"].is_empty(), r["path"] == "direct", "{r:?}");
    }
    let downloads: Vec<_> = rows.iter().filter(|r| r["kind"] == "download").collect();
    assert_eq!(downloads.len(), 2, "one download per path: {downloads:?}");
    for r in downloads {
        assert_eq!(number(r, "download_bytes"), 1_048_576.0, "{r:?}");
        assert!(number(r, "download_mib_s") > 0.0, "{r:?}");
    }

    let summary = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    for heading in [
        "### direct",
        "### burrow-grpc",
        "## Burrow vs the others",
        "## Single-stream download",
        "## One connection",
    ] {
        assert!(summary.contains(heading), "summary.md lacks {heading:?}:\n{summary}");
    }
    for png in ["req_per_s.png", "p99_latency.png", "cpu_per_request.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{png}: not a drawn PNG");
        assert!(summary.contains(png), "summary.md does not show {png}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
