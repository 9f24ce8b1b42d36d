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
    stderr: ChildLog,
    _config: tempfile_path::TempPath,
}

/// A child process's stderr, in a temporary file: printed (through the test harness, so
/// it shows with the failing test) when dropped during a panic, deleted either way.
pub struct ChildLog {
    what: String,
    path: std::path::PathBuf,
}

impl ChildLog {
    /// A fresh file for the stderr of a child described as `what`.
    pub fn create(what: &str) -> ChildLog {
        let path =
            std::env::temp_dir().join(format!("burrow-{what}-{}-{}.log", std::process::id(), rand_suffix()));
        std::fs::File::create(&path).expect("child log file");
        ChildLog { what: what.to_owned(), path }
    }

    /// The file, appended to, as a child's stderr (a restarted child appends).
    pub fn stdio(&self) -> Stdio {
        std::fs::OpenOptions::new().append(true).open(&self.path).expect("child log file").into()
    }

    /// Everything logged so far.
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- stderr of {} ({}) -----\n{}", self.what, self.path.display(), self.read());
        }
        let _ = std::fs::remove_file(&self.path);
    }
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
        // Its log goes to a file the test prints if it fails (see `Drop`): inherited, it
        // would bypass the test harness's capture and interleave with every other test.
        let stderr = ChildLog::create("replica");
        let mut child = Command::new(binary)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(stderr.stdio())
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
            stderr,
            _config: tempfile_path::TempPath(path),
        }
    }

    /// What the replica has logged so far.
    pub fn log(&self) -> String {
        self.stderr.read()
    }

    /// The process id (to read its resident memory from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
