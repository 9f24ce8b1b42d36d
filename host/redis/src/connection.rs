//! The one Redis connection behind [`Store`], whatever the deployment mode: connecting
//! (lazily, once at a time), sentinel failover, and the deadline around every operation.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

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
        match self.config.mode {
            RedisMode::Single => Ok(redis::Client::open(infos[0].clone())?),
            RedisMode::Sentinel => self.sentinel_master().await,
            RedisMode::Cluster => {
                let mut last = None;
                for info in infos {
                    let client = redis::Client::open(info)?;
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
        let master = self.config.master_name.clone().unwrap_or_default();
        let mut node = redis::sentinel::SentinelNodeConnectionInfo::default();
        if let Some(pw) = &self.config.password {
            node = node
                .set_redis_connection_info(redis::RedisConnectionInfo::default().set_password(pw.expose()));
        }
        let mut sentinel = redis::sentinel::SentinelClient::build(
            infos,
            master,
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )?;
        let client = tokio::time::timeout(self.config.timeout * 3, sentinel.async_get_client())
            .await
            .map_err(|_| StoreError::Timeout(self.config.timeout * 3))??;
        Ok(client)
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let infos = self.connection_infos()?;
        let conn = match self.config.mode {
            RedisMode::Single => {
                let client = redis::Client::open(infos[0].clone())?;
                Conn::Manager(ConnectionManager::new_lazy_with_config(client, self.manager_config())?)
            }
            RedisMode::Sentinel => {
                let client = self.sentinel_master().await?;
                Conn::Manager(ConnectionManager::new_lazy_with_config(client, self.manager_config())?)
            }
            RedisMode::Cluster => {
                let client = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(self.config.timeout)
                    .response_timeout(self.config.timeout)
                    .retries(1)
                    .build()?;
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
