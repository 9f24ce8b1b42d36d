//! One `direct-tcpip` channel (`ssh -L`, `ssh -W`): admitted as a `port-forward` on
//! its own (the login admitted a session, not every service), then carried over an
//! ordinary TCP tunnel with half-close both ways.
//!
//! The destination names a service of the workload the login user names: `-L
//! 8080:web:80` reaches service `web`; `localhost` (or any name the workload plugins do
//! not take for a service) reaches the service the SSH user itself routes to.

use std::net::SocketAddr;
use std::sync::Arc;

use burrow_host_core::admission::AdmissionRequest;
use burrow_host_core::context::HostContext;
use burrow_host_plugins::types::Action;
use burrow_proto::pb::DialKind;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::channel::OpenCount;
use crate::config::SshConfig;
use crate::handler::{refusal_text, Login};

pub(crate) struct ForwardTask {
    pub ctx: Arc<HostContext>,
    pub config: Arc<SshConfig>,
    pub login: Login,
    pub peer: SocketAddr,
    pub id: String,
    pub host: String,
    pub port: u16,
    pub closing: watch::Receiver<Option<String>>,
    pub open: OpenCount,
}

impl ForwardTask {
    pub(crate) async fn run(self, channel: Channel<Msg>, reply: ChannelOpenHandle) {
        let request = AdmissionRequest {
            action: Action::PortForward,
            host: self.host.clone(),
            ssh_user: self.login.user.clone(),
            method: String::new(),
            path: String::new(),
            port: self.port,
            credential: self.login.credential.clone(),
            signed_in: None,
            peer: self.peer,
            request_id: self.id.clone(),
        };
        let admitted = match self.ctx.admission.admit(request).await {
            Ok(a) => a,
            Err(refusal) => {
                info!(channel = %self.id, host = %self.host, port = self.port, %refusal, "SSH forward refused");
                let reason = refusal_text(&refusal);
                reply.reject(ChannelOpenFailure::Other { code: 1, reason }).await;
                self.ctx.metrics.ssh_channel("forward", "refused");
                return;
            }
        };
        let dial = admitted.dial(&self.id, self.config.stream_wait, DialKind::Tcp);
        let mut tunnel = match self.ctx.dial(dial).await {
            Ok(t) => t,
            Err(e) => {
                info!(channel = %self.id, service = %admitted.target.service, error = %e, "SSH forward could not reach the service");
                reply.reject(ChannelOpenFailure::Other { code: 2, reason: e.to_string() }).await;
                self.ctx.metrics.ssh_channel("forward", "refused");
                return;
            }
        };
        reply.accept().await;
        self.ctx.metrics.ssh_channel("forward", "opened");
        debug!(channel = %self.id, service = %admitted.target.service, "forward open");
        let mut stream = channel.into_stream();
        let mut closing = self.closing.clone();
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut stream, &mut tunnel) => match r {
                Ok((up, down)) => debug!(channel = %self.id, up, down, "forward finished"),
                Err(e) => debug!(channel = %self.id, error = %e, "forward ended"),
            },
            _ = closing.wait_for(Option::is_some) => debug!(channel = %self.id, "forward closed with its connection"),
        }
        drop(self.open);
    }
}
