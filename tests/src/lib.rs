//! Harness for Burrow's end-to-end tests: a real host (`burrow_host::run`) on
//! `127.0.0.1:0`, real agents (`burrow_agent::spawn`) over real sockets, a real workload
//! server, and real HTTP / WebSocket clients. Nothing is mocked.

pub mod browser;
pub mod clients;
pub mod fault;
pub mod lifecycle;
pub mod oidc;
pub mod plugin_host;
pub mod process;
pub mod redis;
pub mod replica;
pub mod tls;
pub mod workload;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use burrow_host::{Config, HostError, Listeners};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Logs go to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// Hex SHA-256, as the static authorizer's config stores tokens.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The agent id / token pair most tests use.
pub const AGENT: &str = "a1";
/// Its token.
pub const TOKEN: &str = "token-for-a1-0123456789";

/// The pieces of a test host config. Each string is TOML placed inside its table
/// (`authorizer` inside `[plugins.authorizer]`, `agents` inside `[agents]`, `ingress`
/// inside `[ingress]`); `extra` holds whole further tables.
#[derive(Debug, Clone)]
pub struct ConfigParts {
    /// Top-level keys (such as `replica_id = "r1"`).
    pub top: String,
    pub authorizer: String,
    pub agents: String,
    pub ingress: String,
    pub extra: String,
}

impl Default for ConfigParts {
    fn default() -> Self {
        Self {
            top: String::new(),
            authorizer: static_authorizer("open", ""),
            agents: String::new(),
            // Short enough that failure paths finish quickly.
            ingress: "stream_wait = \"3s\"".into(),
            extra: String::new(),
        }
    }
}

impl ConfigParts {
    /// Agent `a1` with [`TOKEN`], `*.localhost` names, short waits so failure paths finish
    /// quickly, plus the parts.
    pub fn build(&self) -> Config {
        let text = self.to_toml();
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        config.validate().unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        config
    }

    /// The config file text.
    pub fn to_toml(&self) -> String {
        format!(
            r#"
{top}
[agents]
listen = "127.0.0.1:0"
preface_timeout = "2s"
{agents}
[ingress]
listen = "127.0.0.1:0"
{ingress}
[shutdown]
grace = "5s"
[plugins.authorizer]
{authorizer}
[[plugins.workload]]
source = "builtin:workload-workspace"
config = {{ root_domains = ["localhost"] }}
{extra}
"#,
            top = self.top,
            agents = self.agents,
            ingress = self.ingress,
            authorizer = self.authorizer,
            extra = self.extra,
        )
    }
}

/// The static authorizer with agent `a1`, a default access (`open` or `deny`) and extra
/// fields for its config table.
pub fn static_authorizer(default_access: &str, extra_fields: &str) -> String {
    let sep = if extra_fields.is_empty() { "" } else { ", " };
    format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\" }}], default_access = \"{default_access}\"{sep}{extra_fields} }}",
        sha256_hex(TOKEN)
    )
}

/// A user allowed on the workloads of [`alice_and_bob`], and one who is known but not.
pub const ALICE_TOKEN: &str = "alice-token-0123456789";
/// See [`ALICE_TOKEN`].
pub const BOB_TOKEN: &str = "bob-token-0123456789";

/// Static authorizer fields: users alice and bob (by [`ALICE_TOKEN`], [`BOB_TOKEN`]),
/// and each of `agents` open to alice alone, every service, with a token.
pub fn alice_and_bob(agents: &[&str]) -> String {
    let workloads: Vec<String> = agents
        .iter()
        .map(|agent| {
            format!("{{ agent = \"{agent}\", service = \"*\", access = \"token\", users = [\"alice\"] }}")
        })
        .collect();
    format!(
        "users = [{{ name = \"alice\", token_sha256 = \"{}\" }}, {{ name = \"bob\", token_sha256 = \"{}\" }}], workloads = [{}]",
        sha256_hex(ALICE_TOKEN),
        sha256_hex(BOB_TOKEN),
        workloads.join(", ")
    )
}

/// The token agent `agent` connects with in tests of several agents ([`agents_authorizer`]).
pub fn agent_token_of(agent: &str) -> String {
    format!("token-for-{agent}-0123456789")
}

/// A static authorizer slot knowing `agents` by [`agent_token_of`], with open access.
pub fn agents_authorizer(agents: &[&str]) -> String {
    let agents: Vec<String> = agents
        .iter()
        .map(|a| format!("{{ id = \"{a}\", token_sha256 = \"{}\" }}", sha256_hex(&agent_token_of(a))))
        .collect();
    format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{}], default_access = \"open\" }}",
        agents.join(", ")
    )
}

/// The shared secret cluster tests use.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789abcdef";

/// Config of cluster replica `replica_id` using the Redis at `redis_url`, with short
/// intervals so failure handling shows within a test's patience. `cluster_extra` is TOML
/// inside `[cluster]`. Replicas use mutual TLS with the process's test cluster CA
/// ([`replica::cluster_pki`]) unless `cluster_extra` sets `tls` or `insecure_cleartext`.
pub fn cluster_config(replica_id: &str, redis_url: &str, cluster_extra: &str) -> Config {
    cluster_parts(replica_id, redis_url, cluster_extra).build()
}

/// The parts behind [`cluster_config`], to adjust before building.
pub fn cluster_parts(replica_id: &str, redis_url: &str, cluster_extra: &str) -> ConfigParts {
    let tls = if cluster_extra.contains("tls =") || cluster_extra.contains("insecure_cleartext") {
        String::new()
    } else {
        replica::cluster_pki().tls_toml()
    };
    ConfigParts {
        top: format!("replica_id = \"{replica_id}\""),
        extra: format!(
            r#"
[cluster]
listen = "127.0.0.1:0"
secret = "{CLUSTER_SECRET}"
heartbeat = "200ms"
replica_ttl = "1s"
sweep_interval = "500ms"
{tls}
{cluster_extra}
[cluster.redis]
urls = ["{redis_url}"]
timeout = "1s"
"#
        ),
        ..Default::default()
    }
}

/// The most common config: static authorizer, open access.
pub fn default_config() -> Config {
    ConfigParts::default().build()
}

/// A running host.
pub struct TestHost {
    /// Where agents connect.
    pub agent_addr: SocketAddr,
    /// Where users connect.
    pub ingress_addr: SocketAddr,
    /// Health, readiness and metrics.
    pub admin_addr: SocketAddr,
    /// The replica API (cluster mode only).
    pub cluster_addr: Option<SocketAddr>,
    /// The SSH port (with an `[ssh]` table only).
    pub ssh_addr: Option<SocketAddr>,
    /// The control API (with a `[control]` table only).
    pub control_addr: Option<SocketAddr>,
    /// What the binary sends on SIGHUP (plugin config reloads).
    pub control: burrow_host::ControlSender,
    /// What it runs with, for [`TestHost::restart`].
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HostError>>,
}

impl TestHost {
    /// Starts a host on fresh `127.0.0.1:0` ports.
    pub async fn start(config: Config) -> TestHost {
        let agents = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(config, agents, ingress).await
    }

    /// Starts a host on the given listeners (to restart on the same ports).
    pub async fn start_on(config: Config, agents: TcpListener, ingress: TcpListener) -> TestHost {
        let ssh = match config.ssh {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let control = match config.control {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        Self::start_with_ssh(config, agents, ingress, ssh, control).await
    }

    async fn start_with_ssh(
        config: Config,
        agents: TcpListener,
        ingress: TcpListener,
        ssh: Option<TcpListener>,
        control: Option<TcpListener>,
    ) -> TestHost {
        init_tracing();
        let agent_addr = agents.local_addr().unwrap();
        let ingress_addr = ingress.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let cluster = match config.cluster {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let cluster_addr = cluster.as_ref().map(|l| l.local_addr().unwrap());
        let ssh_addr = ssh.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let control_addr = control.as_ref().map(|l| l.local_addr().unwrap());
        let listeners = Listeners { agents, ingress, admin: Some(admin), cluster, ssh, control };
        let (control, requests) = burrow_host::control_channel();
        let task = tokio::spawn(burrow_host::run_with_control(
            config.clone(),
            listeners,
            async move {
                let _ = stopped.await;
            },
            requests,
        ));
        let mut host = TestHost {
            agent_addr,
            ingress_addr,
            admin_addr,
            cluster_addr,
            ssh_addr,
            control_addr,
            control,
            config,
            stop: Some(stop),
            task,
        };
        host.wait_started().await;
        host
    }

    /// Waits until the host serves its admin port, which it does once everything that
    /// can fail at start-up (config checks, plugin loading, keys, Redis clients) is done.
    /// A host that stops instead fails the test here, with its error, rather than later
    /// as a timeout or a refused connection somewhere else.
    async fn wait_started(&mut self) {
        // The admin listener is bound already, so the probe's request waits in its
        // backlog until the host serves it, or fails when the host drops the listener.
        let mut probe = tokio::spawn(clients::get(self.admin_addr, "localhost", "/healthz"));
        let host_result = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                biased;
                result = &mut self.task => Some(result),
                answered = &mut probe => match answered {
                    Ok(_) => None,
                    // The probe failed: the listener went away, so the host stopped.
                    Err(_) => Some(
                        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
                            .await
                            .expect("the admin port closed but the host is still running"),
                    ),
                },
            }
        })
        .await
        .expect("the host did not serve its admin port within 60 s of starting");
        probe.abort();
        if let Some(result) = host_result {
            match result {
                Ok(Ok(())) => panic!("the host stopped while starting, without an error"),
                Ok(Err(e)) => panic!("the host failed to start: {e}"),
                Err(e) => panic!("the host's task failed while starting: {e}"),
            }
        }
    }

    /// Waits until the admin port reports ready (in cluster mode: its first heartbeat
    /// reached Redis); fails the test after 10 s.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, _) = clients::get(self.admin_addr, "localhost", "/readyz").await;
            if status == http::StatusCode::OK {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the host never became ready ({status})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the host gracefully and starts it again with the same config on the same
    /// agent, ingress and SSH ports, as an operator's restart would.
    pub async fn restart(&mut self) {
        self.stop_in_place().await.expect("host stopped cleanly");
        // The listeners are closed now; tokio sets SO_REUSEADDR, so the ports rebind.
        let agents = TcpListener::bind(self.agent_addr).await.expect("agent port rebinds");
        let ingress = TcpListener::bind(self.ingress_addr).await.expect("ingress port rebinds");
        let ssh = match self.ssh_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.expect("SSH port rebinds")),
            None => None,
        };
        let control = match self.control_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.expect("control port rebinds")),
            None => None,
        };
        let config = self.config.clone();
        // The old value's Drop aborts a task that has already finished.
        *self = Self::start_with_ssh(config, agents, ingress, ssh, control).await;
    }

    /// The agent URL for a scheme (`grpc`, `ws`, `grpcs`, `wss`).
    pub fn agent_url(&self, scheme: &str) -> String {
        match scheme {
            "grpcs" | "wss" => format!("{scheme}://localhost:{}", self.agent_addr.port()),
            _ => format!("{scheme}://{}", self.agent_addr),
        }
    }

    /// Graceful stop; returns the host's result.
    pub async fn stop(mut self) -> Result<(), HostError> {
        self.stop_in_place().await
    }

    async fn stop_in_place(&mut self) -> Result<(), HostError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("host stops within 30 s")
            .expect("host task did not panic")
    }

    /// Whether the host task has ended (it must not, while serving).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Begins a graceful stop without waiting for it (drain tests watch what happens
    /// meanwhile); [`TestHost::stop`] or [`TestHost::wait`] then collects the result.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An agent config for `url` offering `services` (`name=addr`), with the test token.
pub fn agent_config(url: &str, token: &str, services: &[String]) -> burrow_agent::AgentConfig {
    let mut config = burrow_agent::AgentConfig::new(url, token.to_owned()).expect("agent URL");
    config.services =
        services.iter().map(|s| burrow_agent::ServiceSpec::parse(s).expect("service spec")).collect();
    config.replica_id = format!("test-{}", hex::encode(rand_bytes()));
    config
}

fn rand_bytes() -> [u8; 4] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    nanos.to_le_bytes()
}

/// Agent sessions on service `ssh`, run by `/bin/sh`, starting in `dir` if given.
pub fn shell_sessions(dir: Option<&std::path::Path>) -> burrow_agent::SessionConfig {
    let mut sessions = burrow_agent::SessionConfig::new(vec!["ssh".into()]);
    sessions.shell = std::path::PathBuf::from("/bin/sh");
    sessions.dir = dir.map(std::path::Path::to_path_buf);
    sessions
}

/// A sample's value in Prometheus text (the line `name value`); 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `check` holds, failing the test after `limit`. For readiness only (never to
/// assert speed).
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the agent reports a connected session with its idle pool filled.
/// An agent for `host` offering `workload`'s service `web`, with `connections` connections,
/// started and connected.
pub async fn agent_serving(
    host: &TestHost,
    token: &str,
    workload: &workload::Workload,
    connections: usize,
) -> burrow_agent::AgentHandle {
    let mut config = agent_config(&host.agent_url("grpc"), token, &[workload.service("web")]);
    config.connections = connections;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    agent
}

pub async fn wait_connected(agent: &burrow_agent::AgentHandle) {
    let mut status = agent.status();
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            {
                let s = status.borrow_and_update();
                if matches!(s.state, burrow_agent::ConnState::Connected { .. }) && s.idle_streams > 0 {
                    return;
                }
            }
            if status.changed().await.is_err() {
                panic!("agent stopped before connecting");
            }
        }
    })
    .await;
    if result.is_err() {
        panic!("agent did not connect within 20 s; last status: {:?}", *agent.status().borrow());
    }
}
