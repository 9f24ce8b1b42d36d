//! Child processes and what the suite waits on: a temp dir removed on drop, children
//! killed on drop (and by the kernel if the bench dies first), free ports, a port that
//! accepts, an HTTP 200 through a path.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// How long a process may take to listen, or a path to answer its first 200 (a host
/// compiles its plugins at start: seconds in a debug build).
pub(super) const PATIENCE: Duration = Duration::from_secs(60);
/// The pause between two polls of observable state (a connect, a GET).
const POLL: Duration = Duration::from_millis(20);

/// A directory under the system temp dir, removed with everything in it on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running child, killed and reaped on drop: every exit path of the suite, errors and
/// panics included, ends the processes it started.
pub(super) struct Proc {
    pub(super) name: String,
    child: Child,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output in `dir/<name>.log`. The child gets SIGKILL when the
    /// thread that started it dies, so a bench killed with SIGKILL leaves nothing behind
    /// either (Drop cannot run then).
    pub(super) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // SAFETY: the closure runs between fork and exec and only makes one syscall
        // (prctl), which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc { name: name.to_owned(), child, log })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited, with the end of its log.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); end of {}:\n{}", self.name, self.log.display(), log_tail(&self.log));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, for error messages.
pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A port on 127.0.0.1 free right now. The configs of nginx, rathole and bore take port
/// numbers, not sockets, so the port is released before the child binds it; a clash
/// shows as the child failing to listen, which [`wait_listening`] reports.
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Waits until `port` on 127.0.0.1 accepts a connection, failing early if `proc` exits.
pub(super) fn wait_listening(proc: &mut Proc, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    loop {
        proc.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "{} is not listening on {addr} after {PATIENCE:?}; end of its log:\n{}",
                proc.name,
                log_tail(&proc.log)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// One `GET path` with `Connection: close`: the status code and the body length.
fn get_once(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, usize)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.find("\r\n\r\n").map_or(0, |i| response.len() - i - 4);
    Ok((status, body))
}

/// Waits until `GET path` through `addr` answers 200 with a body of `len` bytes: the
/// path's processes are up and connected (for Burrow: the agent registered, on the
/// replica the request lands on or, across replicas, in Redis). `procs` are checked for
/// an early exit between tries.
pub(super) fn wait_http_ok(
    procs: &mut [Proc],
    addr: SocketAddr,
    host: &str,
    path: &str,
    len: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let last = match get_once(addr, host, path) {
            Ok((200, n)) if n == len => return Ok(()),
            Ok((status, n)) => format!("status {status}, {n} body bytes"),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > PATIENCE {
            bail!("GET http://{addr}{path} (Host: {host}) did not answer 200 within {PATIENCE:?}: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// A program on PATH (or at the usual Debian place for sbin programs, which a non-root
/// PATH may lack).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The first line a program prints for `args` that contains `needle` (its version), or
/// "?".
pub(super) fn version_of(program: &Path, args: &[&str], needle: &str) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            // nginx prints its version on stderr.
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().find(|l| l.contains(needle)).map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}
