//! The one Redis connection behind [`Store`], whatever the deployment mode: connecting
//! (lazily, once at a time), TLS, sentinel failover, and the deadline around every operation.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult,
    TlsCertificates, TlsMode, Value,
};

use super::{Store, StoreError};
use crate::config::RedisMode;

/// One live connection of whichever kind the deployment uses.
#[derive(Clone)]
pub(super) enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Store {
    fn connection_infos(&self) -> RedisResult<Vec<redis::ConnectionInfo>> {
        self.config
            .urls
            .iter()
            .map(|url| {
                let mut info = url.as_str().into_connection_info()?;
                if let (Some(pw), None) = (&self.config.password, info.redis_settings().password()) {
                    let settings = info.redis_settings().clone().set_password(pw.expose());
                    info = info.set_redis_settings(settings);
                }
                Ok(info)
            })
            .collect()
    }

    /// The configured CA and client certificate (read from their files), if any.
    fn tls_certificates(&self) -> Result<Option<TlsCertificates>, StoreError> {
        self.config.tls_certificates().map_err(StoreError::Redis)
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        // Few, quick retries: a request must fail fast while Redis is away; the heartbeat
        // keeps probing and the manager reconnects on the next use.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// A plain client for the node pub/sub should use (single: the server; sentinel: the
    /// current master; cluster: the first seed that answers, since PUBLISH reaches every node).
    pub async fn pubsub_client(&self) -> Result<redis::Client, StoreError> {
        let infos = self.connection_infos()?;
        let tls = self.tls_certificates()?;
        match self.config.mode {
            RedisMode::Single => Ok(client(infos[0].clone(), &tls)?),
            RedisMode::Sentinel => self.sentinel_master().await,
            RedisMode::Cluster => {
                let mut last = None;
                for info in infos {
                    let client = client(info, &tls)?;
                    match tokio::time::timeout(self.config.timeout, client.get_multiplexed_async_connection())
                        .await
                    {
                        Ok(Ok(_)) => return Ok(client),
                        Ok(Err(e)) => last = Some(StoreError::from(e)),
                        Err(_) => last = Some(StoreError::Timeout(self.config.timeout)),
                    }
                }
                Err(last.unwrap_or_else(|| StoreError::Redis("no cluster seed reachable".into())))
            }
        }
    }

    async fn sentinel_master(&self) -> Result<redis::Client, StoreError> {
        let infos = self.connection_infos()?;
        let tls = self.tls_certificates()?;
        let master = self.config.master_name.clone().unwrap_or_default();
        // The builder, not `SentinelClient::build`: only it hands the CA and client
        // certificate to the master's connection (which the sentinel client opens itself,
        // to check the master's role). It takes one set of sentinel credentials, so
        // `validate` makes every sentinel URL carry the same.
        let first = infos[0].redis_settings().clone();
        let sentinels = infos.iter().map(|info| info.addr().clone());
        let mut builder = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
            .set_client_to_sentinel_protocol(first.protocol());
        if let Some(user) = first.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(pw) = first.password() {
            builder = builder.set_client_to_sentinel_password(pw);
        }
        if let Some(pw) = &self.config.password {
            builder = builder.set_client_to_redis_password(pw.expose());
        }
        if self.config.uses_tls() {
            // The master is reached the way the sentinels are.
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certs) = tls {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let mut sentinel = builder.build()?;
        let client = tokio::time::timeout(self.config.timeout * 3, sentinel.async_get_client())
            .await
            .map_err(|_| StoreError::Timeout(self.config.timeout * 3))??;
        Ok(client)
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let infos = self.connection_infos()?;
        let tls = self.tls_certificates()?;
        let conn = match self.config.mode {
            RedisMode::Single => {
                let client = client(infos[0].clone(), &tls)?;
                Conn::Manager(ConnectionManager::new_lazy_with_config(client, self.manager_config())?)
            }
            RedisMode::Sentinel => {
                let client = self.sentinel_master().await?;
                Conn::Manager(ConnectionManager::new_lazy_with_config(client, self.manager_config())?)
            }
            RedisMode::Cluster => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(self.config.timeout)
                    .response_timeout(self.config.timeout)
                    .retries(1);
                // The nodes the seeds announce are reached with the seeds' scheme; the
                // certificates apply to every one of them.
                if let Some(certs) = tls {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                let conn = tokio::time::timeout(self.config.timeout * 3, client.get_async_connection())
                    .await
                    .map_err(|_| StoreError::Timeout(self.config.timeout * 3))??;
                Conn::Cluster(conn)
            }
        };
        Ok(conn)
    }

    fn current(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.connect().await?;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one operation under the deadline. In sentinel mode a connection error, a
    /// timeout or a READONLY answer (the master moved) drops the connection so the next
    /// operation asks the sentinels again.
    pub(super) async fn run<T, F>(&self, op: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = RedisResult<T>>,
    {
        let deadline = self.config.timeout;
        let result = tokio::time::timeout(deadline, async {
            let conn = self.conn().await?;
            op(conn).await.map_err(|e| {
                let master_lost = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if master_lost {
                    self.invalidate();
                }
                StoreError::from(e)
            })
        })
        .await;
        result.unwrap_or_else(|_| {
            self.invalidate();
            Err(StoreError::Timeout(deadline))
        })
    }

    fn invalidate(&self) {
        // Single and cluster connections heal themselves; only a sentinel-resolved master
        // can be the wrong server after a failover.
        if self.config.mode == RedisMode::Sentinel {
            *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    pub(super) async fn conn_checked(&self) -> Result<Conn, StoreError> {
        tokio::time::timeout(self.config.timeout, self.conn())
            .await
            .map_err(|_| StoreError::Timeout(self.config.timeout))?
    }
}

/// A client for `info`: with the configured CA and client certificate when it is a TLS
/// address, else as the URL says.
fn client(info: ConnectionInfo, tls: &Option<TlsCertificates>) -> RedisResult<Client> {
    match (tls, info.addr()) {
        (Some(certs), ConnectionAddr::TcpTls { .. }) => Client::build_with_tls(info, certs.clone()),
        _ => Client::open(info),
    }
}
