//! Host replicas as child processes (see `src/bin/replica.rs`), for crash tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::ConfigParts;

/// A replica process; SIGKILLed on drop.
pub struct ReplicaProcess {
    child: Child,
    /// Where agents connect.
    pub agent_addr: SocketAddr,
    /// Where users connect.
    pub ingress_addr: SocketAddr,
    /// Health and metrics.
    pub admin_addr: SocketAddr,
    _config: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file deleted on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl ReplicaProcess {
    /// Starts `binary` (pass `env!("CARGO_BIN_EXE_burrow-replica")`) with `parts`.
    pub fn start(binary: &str, parts: &ConfigParts) -> ReplicaProcess {
        let path = std::env::temp_dir().join(format!(
            "burrow-replica-{}-{}.toml",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&path, parts.to_toml()).unwrap();
        let mut child = Command::new(binary)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("replica binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("replica prints its addresses");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("replica output {line:?}: {e}"));
        let addr = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {line}")).parse().unwrap();
        ReplicaProcess {
            agent_addr: addr("agents"),
            ingress_addr: addr("ingress"),
            admin_addr: addr("admin"),
            child,
            _config: tempfile_path::TempPath(path),
        }
    }

    /// The agent URL (cleartext gRPC).
    pub fn agent_url(&self) -> String {
        format!("grpc://{}", self.agent_addr)
    }

    /// Replaces the config file (for a SIGHUP reload); the listen addresses stay bound.
    pub fn rewrite_config(&self, parts: &ConfigParts) {
        std::fs::write(&self._config.0, parts.to_toml()).unwrap();
    }

    /// Sends SIGHUP, as an operator reloading the config would.
    pub fn hangup(&self) {
        let status = Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -HUP");
    }

    /// SIGKILL: a crash, with no drain and nothing removed from Redis.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
