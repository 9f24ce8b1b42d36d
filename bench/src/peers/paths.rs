//! The paths a request can take to the same nginx: nginx itself, and the tunnels (each a
//! set of processes) in front of it. What every path shares: the nginx, its files, the
//! Host header, the programs.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::procs::{free_port, wait_http_ok, wait_listening, Proc};
use crate::procfs::process_cpu_seconds;

/// The Host header every request carries. Burrow's workspace plugin routes it to service
/// `web` of agent `bench`; nginx, rathole and bore ignore it.
pub(super) const HOST_HEADER: &str = "web-bench.localhost";
/// The small file wrk requests, and its contents (13 bytes).
pub(super) const SMALL: &str = "/13b.txt";
const SMALL_BODY: &[u8] = b"Hello, world\n";
/// The large file curl downloads (sparse: zeros nginx reads from no disk).
pub(super) const BIG: &str = "/big.bin";

/// Programs and files every path is started with.
pub(super) struct Setup {
    /// Where configs, certificates, logs and nginx's files go.
    pub(super) dir: PathBuf,
    pub(super) host_bin: PathBuf,
    pub(super) agent_bin: PathBuf,
    /// `cargo install --root` folder of rathole and bore.
    pub(super) tools: PathBuf,
    pub(super) redis_server: Option<PathBuf>,
    /// nginx's port on 127.0.0.1.
    pub(super) nginx_port: u16,
}

impl Setup {
    pub(super) fn tool(&self, name: &str) -> anyhow::Result<PathBuf> {
        tool(&self.tools, name)
    }
}

/// `rathole` or `bore` in the `cargo install --root` folder `tools`.
pub(super) fn tool(tools: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = tools.join("bin").join(name);
    if !path.is_file() {
        bail!(
            "{} not found: install it with `cargo install --root {} {}` (bench/peers.sh does), or point \
             --tools / BURROW_BENCH_TOOLS at a folder holding bin/{name}",
            path.display(),
            tools.display(),
            if name == "bore" { "bore-cli" } else { name }
        );
    }
    Ok(path)
}

/// One path: where wrk and curl connect, and the processes whose CPU it costs.
pub(super) struct Tunnel {
    pub(super) name: &'static str,
    pub(super) addr: SocketAddr,
    /// The server side: Burrow host(s) (and, across replicas, redis-server), rathole
    /// server, bore server.
    host_side: Vec<u32>,
    /// The side beside the workload: Burrow's agent, rathole client, `bore local`.
    agent_side: Vec<u32>,
    procs: Vec<Proc>,
}

/// CPU seconds a path's processes have used so far: (host side, agent side).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cpu {
    pub(super) host: f64,
    pub(super) agent: f64,
}

impl Tunnel {
    pub(super) fn url(&self, file: &str) -> String {
        format!("http://{}{file}", self.addr)
    }

    /// Whether the path has any tunnel process (not `direct`).
    pub(super) fn has_processes(&self) -> bool {
        !self.procs.is_empty()
    }

    pub(super) fn cpu(&self) -> anyhow::Result<Cpu> {
        let sum =
            |pids: &[u32]| -> anyhow::Result<f64> { pids.iter().map(|p| process_cpu_seconds(*p)).sum() };
        Ok(Cpu { host: sum(&self.host_side)?, agent: sum(&self.agent_side)? })
    }

    /// An error naming the process if one of the path's processes has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }

    /// A path of `procs` (host side first, `hosts` of them, then the agent side),
    /// reachable at 127.0.0.1:`port` once a GET of the small file answers 200 there.
    pub(super) fn ready(
        name: &'static str,
        port: u16,
        mut procs: Vec<Proc>,
        hosts: usize,
    ) -> anyhow::Result<Tunnel> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_http_ok(&mut procs, addr, HOST_HEADER, SMALL, SMALL_BODY.len())
            .with_context(|| format!("path {name}"))?;
        let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
        Ok(Tunnel {
            name,
            addr,
            host_side: pids[..hosts].to_vec(),
            agent_side: pids[hosts..].to_vec(),
            procs,
        })
    }
}

/// Starts nginx as a child with its own config in `dir`: one process (no master, no
/// daemon), files in `dir/www` (the 13-byte file and a sparse file of `big_bytes`),
/// logs and temp paths in `dir`, access log off, keepalive and everything else nginx's
/// defaults except `worker_connections`.
pub(super) fn start_nginx(nginx: &Path, dir: &Path, big_bytes: u64) -> anyhow::Result<(Proc, u16)> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join(&SMALL[1..]), SMALL_BODY)?;
    let big = std::fs::File::create(www.join(&BIG[1..]))?;
    big.set_len(big_bytes)?;
    let port = free_port()?;
    let d = dir.display();
    // worker_connections: the default 512 would cap the sweep, as the tunnels each hold a
    // connection to nginx per client connection on top of wrk's 256 to nginx directly.
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  default_type application/octet-stream;\n\
         \x20 client_body_temp_path {d}/nginx-client-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
         \x20 fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n  }}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new(nginx);
    // -e: the error log before the config is read (else nginx opens /var/log/nginx/error.log).
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf_path).arg("-e").arg(dir.join("nginx-error.log"));
    let mut proc = Proc::spawn("nginx", cmd, dir)?;
    wait_listening(&mut proc, port)?;
    Ok((proc, port))
}

/// rathole with its default transport (TCP): a server exposing one service on a free
/// port and a client forwarding it to nginx, defaults otherwise.
pub(super) fn start_rathole(setup: &Setup) -> anyhow::Result<Tunnel> {
    let bin = setup.tool("rathole")?;
    let (control, public) = (free_port()?, free_port()?);
    let token = "burrow-bench-rathole-token";
    let server = setup.dir.join("rathole-server.toml");
    std::fs::write(
        &server,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"{token}\"\n\n\
             [server.services.nginx]\nbind_addr = \"127.0.0.1:{public}\"\n"
        ),
    )?;
    let client = setup.dir.join("rathole-client.toml");
    std::fs::write(
        &client,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"{token}\"\n\n\
             [client.services.nginx]\nlocal_addr = \"127.0.0.1:{}\"\n",
            setup.nginx_port
        ),
    )?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--server").arg(&server);
    let mut server = Proc::spawn("rathole-server", cmd, &setup.dir)?;
    wait_listening(&mut server, control)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--client").arg(&client);
    let client = Proc::spawn("rathole-client", cmd, &setup.dir)?;
    Tunnel::ready("rathole", public, vec![server, client], 1)
}

/// bore: `bore server` (its control port is fixed at 7835) limited to one free public
/// port, and `bore local` forwarding nginx through it, defaults otherwise (no secret).
pub(super) fn start_bore(setup: &Setup) -> anyhow::Result<Tunnel> {
    const CONTROL: u16 = 7835;
    let bin = setup.tool("bore")?;
    if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, CONTROL)).is_ok() {
        bail!("port {CONTROL} (bore's fixed control port) is in use: is another bore server running?");
    }
    let public = free_port()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["server", "--bind-addr", "127.0.0.1", "--min-port"])
        .arg(public.to_string())
        .arg("--max-port")
        .arg(public.to_string());
    let mut server = Proc::spawn("bore-server", cmd, &setup.dir)?;
    wait_listening(&mut server, CONTROL)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["local", "--local-host", "127.0.0.1", "--to", "127.0.0.1", "--port"])
        .arg(public.to_string())
        .arg(setup.nginx_port.to_string());
    let local = Proc::spawn("bore-local", cmd, &setup.dir)?;
    Tunnel::ready("bore", public, vec![server, local], 1)
}

/// nginx itself: the baseline.
pub(super) fn direct(nginx_port: u16) -> anyhow::Result<Tunnel> {
    Tunnel::ready("direct", nginx_port, Vec::new(), 0)
}
