//! HTTP requests per second straight to the workload and through a real host with
//! fresh and with per-user (default) plugin instances.

use std::time::Instant;

use anyhow::bail;
use burrow_host::plugins::InstancePolicy;
use burrow_tests::clients::{self, Client, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, wait_connected, ConfigParts, TestHost, TOKEN};

use super::{plugins_config, rotated, HTTP_WARM_UP, USER_TOKEN};
use crate::{median, Args, HOST};

pub(super) struct HttpFigures {
    pub(super) direct: f64,
    pub(super) fresh: f64,
    pub(super) warm: f64,
}

/// `clients` connections share `n` requests; requests per second.
pub(super) async fn http_run(conns: Vec<Client>, n: usize) -> anyhow::Result<(f64, Vec<Client>)> {
    let per_client = n / conns.len();
    let auth = format!("Bearer {USER_TOKEN}");
    let started = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut client| {
            let auth = auth.clone();
            tokio::spawn(async move {
                for _ in 0..per_client {
                    let resp = client
                        .request("GET", HOST, "/hello", &[("authorization", &auth)], clients::empty())
                        .await;
                    let (status, _, body) = clients::collect(resp).await;
                    if !status.is_success() {
                        bail!("GET http://{HOST}/hello: {status} {}", String::from_utf8_lossy(&body));
                    }
                }
                anyhow::Ok(client)
            })
        })
        .collect();
    let mut back = Vec::with_capacity(handles.len());
    for handle in handles {
        back.push(handle.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(((per_client * back.len()) as f64 / wall, back))
}

pub(super) async fn connect_all(addr: std::net::SocketAddr, n: usize) -> Vec<Client> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(clients::connect(addr, &Mode::h1()).await);
    }
    conns
}

pub(super) async fn http_requests_per_second(args: &Args) -> anyhow::Result<HttpFigures> {
    let workload = Workload::start("bench").await;
    let mut hosts = Vec::new();
    for instances in [InstancePolicy::Fresh, InstancePolicy::PerUser] {
        let mut config = ConfigParts::default().build();
        config.plugins = plugins_config(instances)?;
        let host = TestHost::start(config).await;
        let agent =
            burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
        wait_connected(&agent).await;
        hosts.push((host, agent));
    }
    let mut conns = vec![
        connect_all(workload.addr, args.clients).await,
        connect_all(hosts[0].0.ingress_addr, args.clients).await,
        connect_all(hosts[1].0.ingress_addr, args.clients).await,
    ];
    for c in conns.iter_mut() {
        let (_, back) = http_run(std::mem::take(c), HTTP_WARM_UP.max(args.clients)).await?;
        *c = back;
    }
    let mut rates: [Vec<f64>; 3] = Default::default();
    for run in 0..args.runs {
        for i in rotated(&[0, 1, 2], run) {
            let (rate, back) = http_run(std::mem::take(&mut conns[i]), args.http_requests).await?;
            conns[i] = back;
            rates[i].push(rate);
        }
    }
    drop(conns);
    for (host, agent) in hosts {
        agent.shutdown().await;
        host.stop().await?;
    }
    let [direct, fresh, warm] = rates.map(median);
    Ok(HttpFigures { direct, fresh, warm })
}
