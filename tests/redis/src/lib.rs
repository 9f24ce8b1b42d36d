//! A real `redis-server` for cluster tests, on a free loopback port, with no persistence.
//! `.ci/run` installs it from apt; locally, `apt-get install redis-server`.
//!
//! Ports are picked by binding `127.0.0.1:0` and releasing, so another process can take
//! one before the server binds it. A Redis Cluster node also binds a second port for its
//! bus (by default port + 10000, which may be anybody's ephemeral port): we pick that one
//! the same way and pass it as `--cluster-port`. Every server writes its log to a file in
//! its directory; a start that fails shows that log, and a start that lost a port race
//! ("Address already in use") is retried on fresh ports.
//!
//! TLS servers ([`RedisServer::start_tls`], [`RedisSentinel::start_tls`],
//! [`RedisCluster::start_tls`]) listen on a TLS port only (`--port 0`), with certificates
//! from [`TlsFiles`]; Debian's `redis-server` is built with TLS.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many fresh ports a start tries before it gives up.
const START_ATTEMPTS: usize = 5;

/// A running `redis-server` child process; killed on drop.
pub struct RedisServer {
    port: u16,
    /// The cluster bus port, for cluster-enabled nodes.
    bus_port: Option<u16>,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
    /// Set for a server that speaks TLS only (on `port`).
    tls: Option<Arc<TlsFiles>>,
}

/// A throw-away CA and a certificate it signed for `localhost` and `127.0.0.1`, as PEM
/// files in a temporary directory (removed on drop). The certificate has no extended key
/// usage, so it serves as a server's and as a client's.
pub struct TlsFiles {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate (what a client's `ca_file` names).
    pub ca_cert: PathBuf,
    /// The certificate signed by the CA.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA and certificate.
    pub fn generate() -> Arc<TlsFiles> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("burrow-redis-tls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("Burrow Redis test CA {n}"));
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).unwrap();
        let files = TlsFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&files.ca_cert, ca.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        Arc::new(files)
    }

    /// `redis-server` options for a TLS-only server on `port` with these files.
    fn server_args(&self, port: u16) -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            self.cert.to_str().unwrap(),
            "--tls-key-file",
            self.key.to_str().unwrap(),
            "--tls-ca-cert-file",
            self.ca_cert.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `redis-cli` options to reach a server using these files (client certificate
    /// included, for servers that ask for one).
    fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["--tls".to_string()];
        for (option, path) in [("--cacert", &self.ca_cert), ("--cert", &self.cert), ("--key", &self.key)] {
            args.extend([option.to_string(), path.to_str().unwrap().to_string()]);
        }
        args
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` distinct ports that were free a moment ago (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn free_port() -> u16 {
    free_ports(1)[0]
}

fn redis_binary() -> String {
    std::env::var("BURROW_TEST_REDIS").unwrap_or_else(|_| "redis-server".into())
}

/// Whether `redis-server` can be run here. Tests that may skip without it (unit tests a
/// developer runs without Redis installed) ask first; CI installs it, and there a missing
/// server must fail rather than skip.
pub fn available() -> bool {
    let found = Command::new(redis_binary()).arg("--version").stdout(Stdio::null()).status().is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!(
            "redis-server is not installed, and CI must run every Redis test (apt-get install redis-server)"
        );
    }
    found
}

/// Why a server did not come up.
enum StartError {
    /// It lost a port race: try again on other ports.
    PortTaken(String),
    /// Anything else: the log says what.
    Failed(String),
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

fn read_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    // The tail is where the reason is; a long log would bury the panic message.
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Spawns `redis-server` with its stdout and stderr appended to the log in `dir`.
fn spawn_logged(dir: &Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(dir)).unwrap();
    Command::new(redis_binary())
        .args(args)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (apt-get install redis-server) or set BURROW_TEST_REDIS")
        })
}

/// Waits until `port` answers PING (over TLS with `tls`) from `child` (not from some other
/// process that took the port), or says why not.
fn wait_ready(child: &mut Child, port: u16, dir: &Path, tls: Option<&TlsFiles>) -> Result<(), StartError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = read_log(dir);
            return Err(if log.contains("Address already in use") {
                StartError::PortTaken(log)
            } else {
                StartError::Failed(format!("redis-server on port {port} exited ({status}); its log:\n{log}"))
            });
        }
        if ping(port, tls) {
            // Still ours? A server that lost the bind race exits; whoever answered is
            // then someone else.
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::Failed(format!(
                "redis-server on port {port} did not answer within 10 s; its log:\n{}",
                read_log(dir)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when something on `port` answers PING (over TLS with `tls`, through `redis-cli`).
fn ping(port: u16, tls: Option<&TlsFiles>) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    if let Some(tls) = tls {
        drop(s);
        return tls_ping(port, tls);
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// PING over TLS through `redis-cli`, which is given 2 s (it has no timeout of its own, and
/// whoever took the port may never answer a handshake).
fn tls_ping(port: u16, tls: &TlsFiles) -> bool {
    let Ok(mut child) = Command::new("redis-cli")
        .args(tls.cli_args())
        .args(["-p", &port.to_string(), "PING"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(None) = child.try_wait() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line options (e.g. cluster mode).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_inner(extra, None)
    }

    /// Starts a TLS-only server (`--port 0`) with the certificate of `tls`, not asking
    /// clients for certificates, and waits until it answers PING over TLS.
    pub fn start_tls(tls: &Arc<TlsFiles>) -> RedisServer {
        Self::start_tls_with(tls, &[])
    }

    /// [`start_tls`](Self::start_tls) with extra options, such as `--tls-auth-clients yes`
    /// (clients must present a certificate signed by the CA of `tls`) or cluster mode
    /// (the cluster bus and replication then use TLS too).
    pub fn start_tls_with(tls: &Arc<TlsFiles>, extra: &[&str]) -> RedisServer {
        Self::start_inner(extra, Some(tls.clone()))
    }

    fn start_inner(extra: &[&str], tls: Option<Arc<TlsFiles>>) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let cluster = extra.windows(2).any(|w| w[0] == "--cluster-enabled" && w[1] == "yes");
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(if cluster { 2 } else { 1 });
            let port = ports[0];
            let dir = std::env::temp_dir().join(format!("burrow-redis-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = RedisServer {
                port,
                bus_port: ports.get(1).copied(),
                child: None,
                dir,
                extra: extra.clone(),
                tls: tls.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("redis-server lost the race for a free port {START_ATTEMPTS} times; last log:\n{last}")
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = match &self.tls {
            Some(tls) => {
                let mut args = tls.server_args(self.port);
                if !self.extra.iter().any(|a| a == "--tls-auth-clients") {
                    args.extend(["--tls-auth-clients".to_string(), "no".to_string()]);
                }
                if self.bus_port.is_some() {
                    for option in ["--tls-cluster", "--tls-replication"] {
                        args.extend([option.to_string(), "yes".to_string()]);
                    }
                }
                args
            }
            None => vec!["--port".to_string(), self.port.to_string()],
        };
        args.extend(
            ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
                .iter()
                .map(|s| s.to_string()),
        );
        args.extend(["--dir".to_string(), self.dir.to_str().unwrap().to_string()]);
        if let Some(bus) = self.bus_port {
            args.extend(["--cluster-port".to_string(), bus.to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let mut child = spawn_logged(&self.dir, &self.args());
        match wait_ready(&mut child, self.port, &self.dir, self.tls.as_deref()) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The tail of the server's log (for failure messages).
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// True when the server answers PING.
    pub fn ping(&self) -> bool {
        ping(self.port, self.tls.as_deref())
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The certificates of a TLS server.
    pub fn tls(&self) -> Option<&Arc<TlsFiles>> {
        self.tls.as_ref()
    }

    /// `redis-cli` options that reach this server (TLS ones for a TLS server), port included.
    fn cli_args(&self) -> Vec<String> {
        let mut args = self.tls.as_ref().map(|t| t.cli_args()).unwrap_or_default();
        args.extend(["-p".to_string(), self.port.to_string()]);
        args
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILLs the server (all data is lost: there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        // Tests rely on the same port (clients reconnect to it); a collision here would
        // mean another process grabbed it in the instant since the kill.
        for _ in 0..START_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(StartError::PortTaken(_)) => std::thread::sleep(Duration::from_millis(100)),
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("redis-server could not take its port {} back; its log:\n{}", self.port, read_log(&self.dir))
    }

    /// Runs `redis-cli` against this server and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").args(self.cli_args()).args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One Redis Sentinel watching a master under the name `burrow-master`.
pub struct RedisSentinel {
    server: RedisServer,
}

impl RedisSentinel {
    /// The name the sentinel monitors the master under.
    pub const MASTER_NAME: &'static str = "burrow-master";

    /// Starts a sentinel monitoring the master on `master_port` and waits until it knows it.
    pub fn start(master_port: u16) -> RedisSentinel {
        Self::start_inner(master_port, None)
    }

    /// Starts a TLS-only sentinel (certificates of `tls`) monitoring the TLS master on
    /// `master_port` (over TLS: `tls-replication yes`), and waits until it knows it.
    pub fn start_tls(master_port: u16, tls: &Arc<TlsFiles>) -> RedisSentinel {
        Self::start_inner(master_port, Some(tls.clone()))
    }

    fn start_inner(master_port: u16, tls: Option<Arc<TlsFiles>>) -> RedisSentinel {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(master_port, tls.clone()) {
                Ok(sentinel) => return sentinel,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("redis sentinel lost the race for a free port {START_ATTEMPTS} times; last log:\n{last}")
    }

    fn try_start(master_port: u16, tls: Option<Arc<TlsFiles>>) -> Result<RedisSentinel, StartError> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("burrow-sentinel-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Sentinel rewrites its config file, so it must be a real, writable file.
        let conf = dir.join("sentinel.conf");
        let listen = match &tls {
            Some(tls) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\n",
                tls.cert.display(),
                tls.key.display(),
                tls.ca_cert.display()
            ),
            None => format!("port {port}\n"),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor {} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {} 1000\n",
                dir.display(),
                Self::MASTER_NAME,
                Self::MASTER_NAME
            ),
        )
        .unwrap();
        let mut child = spawn_logged(&dir, &[conf.to_str().unwrap().to_string(), "--sentinel".to_string()]);
        if let Err(e) = wait_ready(&mut child, port, &dir, tls.as_deref()) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let server = RedisServer { port, bus_port: None, child: Some(child), dir, extra: Vec::new(), tls };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server
            .cli(&["SENTINEL", "get-master-addr-by-name", Self::MASTER_NAME])
            .contains(&master_port.to_string())
        {
            assert!(
                Instant::now() < deadline,
                "sentinel never saw its master; its log:\n{}",
                read_log(&server.dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(RedisSentinel { server })
    }

    /// `redis://127.0.0.1:<sentinel port>` (`rediss://` for a TLS sentinel).
    pub fn url(&self) -> String {
        self.server.url()
    }
}

/// A Redis Cluster of `n` masters (no replicas), slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) cluster-enabled servers and joins them.
    pub fn start(n: usize) -> RedisCluster {
        Self::start_inner(n, None)
    }

    /// [`start`](Self::start) with TLS-only nodes (certificates of `tls`); the cluster bus
    /// uses TLS too, and the nodes announce their TLS ports.
    pub fn start_tls(n: usize, tls: &Arc<TlsFiles>) -> RedisCluster {
        Self::start_inner(n, Some(tls))
    }

    fn start_inner(n: usize, tls: Option<&Arc<TlsFiles>>) -> RedisCluster {
        let options = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| match tls {
                Some(tls) => RedisServer::start_tls_with(tls, &options),
                None => RedisServer::start_with(&options),
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
        let out = Command::new("redis-cli")
            .args(tls.map(|t| t.cli_args()).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        let logs = |nodes: &[RedisServer]| {
            nodes
                .iter()
                .map(|n| format!("--- node {}:\n{}", n.port(), n.log()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            out.status.success(),
            "cluster create failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            logs(&nodes)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster never became ok\n{}", logs(&nodes));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// One `redis://` (TLS: `rediss://`) URL per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Runs `redis-cli -c` (follows redirections) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-c")
            .args(self.nodes[0].cli_args())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_on_a_taken_port_is_reported_as_a_lost_race_with_the_servers_log() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("burrow-redis-taken-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, bus_port: None, child: None, dir, extra: Vec::new(), tls: None };
        match server.spawn() {
            Err(StartError::PortTaken(log)) => assert!(log.contains("Address already in use"), "{log}"),
            Err(StartError::Failed(why)) => panic!("classified as a plain failure: {why}"),
            Ok(()) => panic!("redis-server started on a port somebody else listens on"),
        }
    }

    #[test]
    fn a_cluster_node_binds_the_bus_port_it_was_given() {
        let node = RedisServer::start_with(&["--cluster-enabled", "yes"]);
        let bus = node.bus_port.expect("cluster nodes get a bus port");
        assert_eq!(
            node.cli(&["CONFIG", "GET", "cluster-port"]).lines().nth(1),
            Some(bus.to_string().as_str())
        );
        // The bus is what it listens on, not port + 10000 (which may be anybody's).
        assert!(std::net::TcpStream::connect(("127.0.0.1", bus)).is_ok(), "nothing listens on the bus port");
    }
}
