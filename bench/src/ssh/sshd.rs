//! The baseline: OpenSSH's `sshd` on loopback with the bench's own config, host key and
//! authorized key, started for the run and killed at its end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::PATIENCE;

pub(super) const SSHD: &str = "/usr/sbin/sshd";
/// sshd refuses to start without its privilege-separation directory, which only the
/// distribution's service unit creates.
const PRIVSEP_DIR: &str = "/run/sshd";

pub(super) struct Sshd {
    pub(super) addr: SocketAddr,
    /// For reading its CPU time.
    pub(super) pid: u32,
    child: Child,
    log: PathBuf,
}

impl Sshd {
    /// Starts sshd in `dir` accepting `client_pub` (an OpenSSH public key file) for any
    /// user, with an empty HOME for its sessions, serving sftp with `sftp_server` (the
    /// program Burrow's agent runs, so scp runs the same server side on both paths), and
    /// waits until it greets a client.
    pub(super) async fn start(dir: &Path, client_pub: &Path, sftp_server: &Path) -> anyhow::Result<Sshd> {
        if !Path::new(PRIVSEP_DIR).is_dir() {
            std::fs::create_dir_all(PRIVSEP_DIR).with_context(|| format!("creating {PRIVSEP_DIR}"))?;
            println!("  (created sshd's privilege-separation directory {PRIVSEP_DIR})");
        }
        let host_key = dir.join("sshd_host_key");
        super::keygen(&host_key)?;
        // The key's sessions get an empty HOME. bash run by sshd reads `~/.bashrc` even
        // for `bash -c` (Debian builds it so; it looks for SSH_CLIENT), and this machine's
        // root `.bashrc` starts pyenv: 100+ ms per session that Burrow's agent, whose
        // shells have no SSH_CLIENT, never runs. Without it both paths start the same
        // `bash -c`.
        let home = dir.join("sshd_home");
        std::fs::create_dir_all(&home)?;
        let key = std::fs::read_to_string(client_pub).context("reading the client key")?;
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("environment=\"HOME={}\" {key}", home.display()))
            .context("writing authorized_keys")?;
        // A free port: bind, read it, release it for sshd (nothing else here binds ports
        // between the two steps).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n\
                 StrictModes no\nUsePAM no\nPidFile none\nPermitRootLogin prohibit-password\n\
                 PermitUserEnvironment HOME\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitUserRC no\n\
                 PrintMotd no\nPrintLastLog no\nX11Forwarding no\nSubsystem sftp {sftp}\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
                sftp = sftp_server.display(),
            ),
        )?;
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        let pid = child.id().context("sshd's pid")?;
        let mut sshd = Sshd { addr, pid, child, log };
        sshd.wait_greeting().await?;
        Ok(sshd)
    }

    /// Waits until a TCP connection gets sshd's `SSH-2.0` banner.
    async fn wait_greeting(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("sshd exited ({status}): {}", self.log_text());
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
                let mut banner = [0u8; 7];
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut banner)).await;
                if matches!(read, Ok(Ok(_))) && &banner == b"SSH-2.0" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("sshd not accepting on {} after {PATIENCE:?}: {}", self.addr, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills sshd (the listener; sessions have ended by now) and reaps it.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing sshd")?;
        Ok(())
    }
}
