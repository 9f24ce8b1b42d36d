//! The bench's own SSH client (russh): keystroke echo and session setup at the protocol
//! level, without an OpenSSH process in the measurement.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use russh::client::{self, Handle};
use russh::keys::{load_secret_key, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, Disconnect};

use super::{Target, PATIENCE};

/// Trusts any host key: both servers are the bench's own, on loopback, with keys it made.
struct TrustAll;

impl client::Handler for TrustAll {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// The client key and config every measurement shares.
pub(super) struct SshClient {
    key: Arc<PrivateKey>,
    config: Arc<client::Config>,
}

/// The remote program of the keystroke runs: a non-canonical terminal without the
/// kernel's echo, so each byte reaches `cat` at once and comes back from it, as a
/// readline shell or an editor echoes a key (a canonical terminal would echo in the
/// kernel and buffer the line). Signals stay on so ^C ends `cat`, and with it the
/// session. `ready` (no newline, so nothing trails it) says the terminal is set before
/// any keystroke is sent.
const ECHO_PROGRAM: &str = "stty -icanon -echo min 1 time 0; printf ready; exec cat";

impl SshClient {
    pub(super) fn new(key_path: &Path) -> anyhow::Result<SshClient> {
        let key =
            load_secret_key(key_path, None).with_context(|| format!("loading {}", key_path.display()))?;
        let config = client::Config {
            // Without it, Nagle's algorithm holds each one-byte keystroke packet until the
            // previous one is acknowledged: about 40 ms per round trip, whatever the server.
            nodelay: true,
            inactivity_timeout: Some(PATIENCE),
            ..Default::default()
        };
        Ok(SshClient { key: Arc::new(key), config: Arc::new(config) })
    }

    /// TCP connect, key exchange and public-key login as `user`.
    async fn login(&self, addr: SocketAddr, user: &str) -> anyhow::Result<Handle<TrustAll>> {
        let mut session = client::connect(self.config.clone(), addr, TrustAll)
            .await
            .with_context(|| format!("SSH connection to {addr}"))?;
        let auth = session
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(self.key.clone(), None))
            .await
            .with_context(|| format!("login as {user} at {addr}"))?;
        anyhow::ensure!(auth.success(), "{addr} refused the bench's key for {user}: {auth:?}");
        Ok(session)
    }

    /// One keystroke run: a session with a terminal running [`ECHO_PROGRAM`], then
    /// `keystrokes` single bytes, each sent after the echo of the previous one arrived.
    /// Returns the round trips, sorted.
    pub(super) async fn keystrokes(
        &self,
        target: &Target,
        keystrokes: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        let session = self.login(target.addr, &target.user).await?;
        let mut channel = session.channel_open_session().await.context("opening a session channel")?;
        channel.request_pty(true, "xterm", 80, 24, 0, 0, &[]).await?;
        channel.exec(true, ECHO_PROGRAM).await?;
        read_until(&mut channel, b"ready", &format!("{} shell start", target.name)).await?;
        let mut samples = Vec::with_capacity(keystrokes);
        for i in 0..keystrokes {
            let key = b'a' + (i % 26) as u8;
            let start = Instant::now();
            channel.data(&[key][..]).await.context("sending a keystroke")?;
            let echo =
                read_until(&mut channel, &[key], &format!("{} echo of keystroke {i}", target.name)).await?;
            samples.push(start.elapsed());
            // One byte out, one byte back: anything else means the run measured something else.
            anyhow::ensure!(echo == [key], "{}: keystroke {key:?} came back as {echo:?}", target.name);
        }
        // ^C: the terminal interrupts `cat`, the session ends from the server's side.
        channel.data(&[3u8][..]).await?;
        close(session, channel).await?;
        samples.sort();
        Ok(samples)
    }

    /// One new session, timed from before the TCP connect to the first bytes of
    /// `echo ready`'s output (no terminal). The session is then closed, untimed.
    pub(super) async fn setup(&self, target: &Target) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let session = self.login(target.addr, &target.user).await?;
        let mut channel = session.channel_open_session().await.context("opening a session channel")?;
        channel.exec(true, "echo ready").await?;
        read_until(&mut channel, b"ready", &format!("{} session output", target.name)).await?;
        let took = start.elapsed();
        close(session, channel).await?;
        Ok(took)
    }
}

/// Reads channel data until what arrived ends with `needle`; returns all of it. Fails on
/// the channel's end, a refused request or [`PATIENCE`] without it.
async fn read_until(
    channel: &mut Channel<client::Msg>,
    needle: &[u8],
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let msg = tokio::time::timeout_at(deadline, channel.wait()).await.with_context(|| {
            format!("{what}: nothing after {PATIENCE:?}; saw {:?}", String::from_utf8_lossy(&seen))
        })?;
        match msg {
            Some(ChannelMsg::Data { data }) => seen.extend_from_slice(&data),
            Some(ChannelMsg::Failure) => bail!("{what}: the server refused a request"),
            Some(ChannelMsg::ExtendedData { data, .. }) => {
                bail!("{what}: error output {:?}", String::from_utf8_lossy(&data))
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close | ChannelMsg::ExitStatus { .. }) | None => {
                bail!("{what}: the session ended; saw {:?}", String::from_utf8_lossy(&seen))
            }
            Some(_) => {}
        }
    }
    Ok(seen)
}

/// Waits for the remote program's exit or the channel's close (so the server's teardown
/// does not overlap the next measurement), then disconnects.
async fn close(session: Handle<TrustAll>, mut channel: Channel<client::Msg>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, channel.wait()).await.context("session did not end")? {
            Some(ChannelMsg::ExitStatus { .. } | ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    session.disconnect(Disconnect::ByApplication, "", "en").await.context("disconnect")?;
    Ok(())
}
