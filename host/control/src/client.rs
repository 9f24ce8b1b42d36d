//! A control API client that signs its own control tokens: what `burrow-host workload`
//! uses, and what a control plane written in Rust (or a test) can use.

use std::time::Duration;

use burrow_host_cluster::token::TokenKey;
use burrow_proto::control_pb::workload_control_client::WorkloadControlClient;
use tonic::transport::Channel;

use crate::{AUDIENCE, DOMAIN, TOKEN_LIFETIME};

/// The client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad control API URL {0}")]
    Url(String),
    #[error("cannot reach the control API at {0}")]
    Connect(String),
}

/// A connected client.
#[derive(Clone)]
pub struct ControlClient {
    inner: WorkloadControlClient<Channel>,
    key: TokenKey,
    issuer: String,
}

impl ControlClient {
    /// Connects to `url` (`http://127.0.0.1:9443`) with the shared `secret`; `issuer`
    /// names the caller in the host's logs.
    pub async fn connect(url: &str, secret: &[u8], issuer: &str) -> Result<Self, ClientError> {
        let channel = Channel::from_shared(url.to_owned())
            .map_err(|e| ClientError::Url(format!("{url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
        Ok(Self {
            inner: WorkloadControlClient::new(channel)
                .max_decoding_message_size(burrow_proto::MAX_WORK_PAYLOAD + 64 * 1024),
            key: TokenKey::with_domain(DOMAIN, secret, TOKEN_LIFETIME),
            issuer: issuer.to_owned(),
        })
    }

    /// `message` wrapped with a fresh control token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let token = self.key.mint(&self.issuer, AUDIENCE);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("ASCII token"));
        request
    }

    /// The generated client, for calls; wrap each message with [`ControlClient::request`].
    pub fn api(&mut self) -> &mut WorkloadControlClient<Channel> {
        &mut self.inner
    }
}
