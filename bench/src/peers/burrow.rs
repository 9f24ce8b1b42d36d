//! Burrow's paths: release `burrow-host` and `burrow-agent` processes with the default
//! config, except what running needs (listen addresses, the agent's static token, the
//! service and its routing, and for the variants the agent port's TLS or the cluster).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::paths::{Setup, Tunnel};
use super::procs::{free_port, wait_listening, Proc};

/// The agent's static token; its id is `bench`, so `web-bench.localhost` reaches `web`.
const TOKEN: &str = "burrow-bench-peers-agent-token";

/// How the agent reaches its host.
#[derive(Clone, Copy)]
pub(super) enum Transport {
    Grpc,
    Ws,
    /// gRPC over TLS, the agent trusting a CA made for the run.
    Grpcs,
}

/// Ports of one host process on 127.0.0.1.
struct Ports {
    agents: u16,
    ingress: u16,
    admin: u16,
}

impl Ports {
    fn new() -> anyhow::Result<Ports> {
        Ok(Ports { agents: free_port()?, ingress: free_port()?, admin: free_port()? })
    }
}

/// The host config: listen addresses (the admin port too, as several hosts run at once
/// and its default is a fixed port), the static authorizer knowing agent `bench` with open
/// access, the workspace plugin for `*.localhost`, and `extra` tables.
fn host_config(ports: &Ports, agents_extra: &str, extra: &str) -> String {
    let sha = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    format!(
        "[agents]\nlisten = \"127.0.0.1:{a}\"\n{agents_extra}\n\
         [ingress]\nlisten = \"127.0.0.1:{i}\"\n\n[admin]\nlisten = \"127.0.0.1:{m}\"\n\n\
         [plugins.authorizer]\nsource = \"builtin:authorizer-static\"\n\
         config = {{ default_access = \"open\", agents = [{{ id = \"bench\", token_sha256 = \"{sha}\" }}] }}\n\n\
         [[plugins.workload]]\nsource = \"builtin:workload-workspace\"\nconfig = {{ root_domains = [\"localhost\"] }}\n\
         {extra}\n",
        a = ports.agents,
        i = ports.ingress,
        m = ports.admin,
    )
}

/// Writes `config` to `dir/<name>.toml` and starts `burrow-host run` on it; returns when
/// its agent and user ports accept.
fn start_host(setup: &Setup, name: &str, ports: &Ports, config: String) -> anyhow::Result<Proc> {
    let path = setup.dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(&setup.host_bin);
    cmd.arg("run").arg("--config").arg(&path);
    let mut host = Proc::spawn(name, cmd, &setup.dir)?;
    wait_listening(&mut host, ports.agents)?;
    wait_listening(&mut host, ports.ingress)?;
    Ok(host)
}

/// `burrow-agent` offering nginx as service `web`, connected to `url`.
fn start_agent(setup: &Setup, name: &str, url: &str, ca: Option<&Path>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&setup.agent_bin);
    cmd.arg("--host").arg(url).arg("--service").arg(format!("web=127.0.0.1:{}", setup.nginx_port));
    if let Some(ca) = ca {
        cmd.arg("--ca-file").arg(ca);
    }
    // The token goes through the environment, as the agent requires.
    cmd.env("BURROW_AGENT_TOKEN", TOKEN);
    Proc::spawn(name, cmd, &setup.dir)
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, for the agent port.
/// Returns (CA file, `tls = {...}` line for `[agents]`).
fn agent_port_tls(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "burrow-bench peers CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca)?;
    let (ca_path, cert_path, key_path) =
        (dir.join("agent-port-ca.pem"), dir.join("agent-port.pem"), dir.join("agent-port-key.pem"));
    std::fs::write(&ca_path, ca.pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let line = format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    Ok((ca_path, line))
}

/// One host and one agent over `transport`.
pub(super) fn start_single(
    setup: &Setup,
    name: &'static str,
    transport: Transport,
) -> anyhow::Result<Tunnel> {
    let ports = Ports::new()?;
    let (agents_tls, ca, scheme) = match transport {
        Transport::Grpc => (String::new(), None, "grpc"),
        Transport::Ws => (String::new(), None, "ws"),
        Transport::Grpcs => {
            let (ca, line) = agent_port_tls(&setup.dir)?;
            (line, Some(ca), "grpcs")
        }
    };
    let host = start_host(setup, &format!("{name}-host"), &ports, host_config(&ports, &agents_tls, ""))?;
    // A literal IP (in the certificate too): `localhost` may resolve to ::1 first, where
    // nothing listens.
    let url = format!("{scheme}://127.0.0.1:{}", ports.agents);
    let agent = start_agent(setup, &format!("{name}-agent"), &url, ca.as_deref())?;
    Tunnel::ready(name, ports.ingress, vec![host, agent], 1)
}

/// Two replicas in cluster mode on a real redis-server (memory only), replica API over
/// mutual TLS with certificates from `burrow-host cluster-certs`; the agent connects to
/// replica A only, requests go to replica B's ingress, which forwards them to A.
pub(super) fn start_two_replicas(setup: &Setup, name: &'static str) -> anyhow::Result<Tunnel> {
    let redis_server = setup
        .redis_server
        .as_ref()
        .context("redis-server is not installed (apt-get install redis-server)")?;
    let redis_port = free_port()?;
    let mut cmd = Command::new(redis_server);
    cmd.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&setup.dir);
    let mut redis = Proc::spawn(&format!("{name}-redis"), cmd, &setup.dir)?;
    wait_listening(&mut redis, redis_port)?;

    let certs = setup.dir.join("cluster-certs");
    let out = Command::new(&setup.host_bin)
        .arg("cluster-certs")
        .arg("--dir")
        .arg(&certs)
        .args(["replica-a=127.0.0.1", "replica-b=127.0.0.1"])
        .output()
        .context("running burrow-host cluster-certs")?;
    if !out.status.success() {
        bail!("burrow-host cluster-certs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let secret = setup.dir.join("cluster.secret");
    // 64 bytes; what matters is that both replicas share it.
    std::fs::write(&secret, "burrow-bench-peers-cluster-secret-0123456789abcdef0123456789abcd")?;

    let mut hosts = Vec::new();
    let mut ingress = Vec::new();
    let mut agents_port = 0;
    for replica in ["replica-a", "replica-b"] {
        let ports = Ports::new()?;
        let cluster_port = free_port()?;
        let file = |suffix: &str| certs.join(format!("{replica}{suffix}")).display().to_string();
        let extra = format!(
            "[cluster]\nlisten = \"127.0.0.1:{cluster_port}\"\nsecret_file = {:?}\n\
             tls = {{ cert = {:?}, key = {:?}, ca = {:?} }}\n\n[cluster.redis]\nurls = [\"redis://127.0.0.1:{redis_port}\"]\n",
            secret.display().to_string(),
            file(".pem"),
            file("-key.pem"),
            certs.join("ca.pem").display().to_string(),
        );
        let config = format!("replica_id = \"{replica}\"\n{}", host_config(&ports, "", &extra));
        let mut host = start_host(setup, &format!("{name}-{replica}"), &ports, config)?;
        wait_listening(&mut host, cluster_port)?;
        if agents_port == 0 {
            agents_port = ports.agents;
        }
        ingress.push(ports.ingress);
        hosts.push(host);
    }
    let agent =
        start_agent(setup, &format!("{name}-agent"), &format!("grpc://127.0.0.1:{agents_port}"), None)?;
    let mut procs = hosts;
    procs.push(redis);
    procs.push(agent);
    // Host side: both replicas and redis-server; agent side: the agent.
    Tunnel::ready(name, ingress[1], procs, 3)
}
