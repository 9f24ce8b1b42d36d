//! `--session` and its companions: which session services the agent offers and what
//! they may run.

use std::path::{Path, PathBuf};

/// Default cap on concurrent sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 16;
/// Most concurrent sessions that may be configured.
pub const MAX_SESSIONS: usize = 1024;
/// Client variables allowed by default: the locale and colour hints terminals send.
pub const DEFAULT_SESSION_ENV: &[&str] = &["LANG", "LC_*", "COLORTERM"];
/// Where Debian, Fedora and Arch install OpenSSH's sftp server.
pub const SFTP_SERVER_PATHS: &[&str] =
    &["/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server"];

/// Interactive sessions the agent serves itself (SSH sessions, web terminals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Session service names, as the host asks for them (e.g. `ssh`). They share one
    /// namespace with the TCP services.
    pub names: Vec<String>,
    /// The login shell a session runs; a command runs as `shell -c COMMAND`. Nothing
    /// else is ever started, whatever the user asks. Default `$SHELL`, else `/bin/sh`.
    pub shell: PathBuf,
    /// The program serving the `sftp` subsystem (OpenSSH's `sftp-server`); `None`
    /// refuses sftp and scp. Default: the first of [`SFTP_SERVER_PATHS`] that exists.
    pub sftp_server: Option<PathBuf>,
    /// Client variables a session may set: exact names, or prefixes ending in `*`.
    /// `PATH`, `HOME`, `SHELL`, `USER`, `LD_*`, `BURROW_*` and the like never pass.
    pub env: Vec<String>,
    /// Sessions at once; more are refused with `LIMIT` (default 16).
    pub max_sessions: usize,
    /// Working directory; default the agent's `$HOME`, else `/`.
    pub dir: Option<PathBuf>,
}

impl SessionConfig {
    /// Sessions named `names` with the defaults above.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            shell: default_shell(),
            sftp_server: default_sftp_server(),
            env: DEFAULT_SESSION_ENV.iter().map(|s| (*s).to_owned()).collect(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            dir: None,
        }
    }

    /// The rules `AgentConfig::validate` applies; `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.names.is_empty() {
            return Err(("session", "at least one session name is required".into()));
        }
        executable(&self.shell).map_err(|e| ("shell", e))?;
        if let Some(server) = &self.sftp_server {
            executable(server).map_err(|e| ("sftp-server", e))?;
        }
        if !(1..=MAX_SESSIONS).contains(&self.max_sessions) {
            return Err(("max-sessions", format!("{} is not in 1..={MAX_SESSIONS}", self.max_sessions)));
        }
        for pattern in &self.env {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(("session-env", format!("{pattern:?} is not a variable name or NAME_PREFIX*")));
            }
        }
        if let Some(dir) = &self.dir {
            if !dir.is_dir() {
                return Err(("session-dir", format!("{} is not a directory", dir.display())));
            }
        }
        Ok(())
    }
}

fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("{} is not an executable file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// `$SHELL` when it names an absolute path, else `/bin/sh`.
pub fn default_shell() -> PathBuf {
    std::env::var_os("SHELL")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

/// The first OpenSSH sftp server found in the usual places.
pub fn default_sftp_server() -> Option<PathBuf> {
    SFTP_SERVER_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}
