//! What a session may run, decided before anything is spawned: pure, so every rule is
//! unit-tested. The host already checked the request, but the agent trusts only itself:
//! it is the last line between a user and the workload.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use burrow_proto::pb::{self, session_start::Command};

use super::SessionConfig;

use burrow_proto::session::{MAX_COMMAND, MAX_ENV, MAX_ENV_VALUE};

/// Variables a client may never set, whatever the patterns say: they would change which
/// program runs, how the shell starts, or leak the agent's own settings.
const RESERVED: &[&str] = &["PATH", "HOME", "SHELL", "USER", "LOGNAME", "BASH_ENV", "ENV", "IFS", "TERM"];
const RESERVED_PREFIXES: &[&str] = &["LD_", "BURROW_", "DYLD_"];

/// The process to start for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The program (the configured shell or sftp server).
    pub program: PathBuf,
    /// `argv[0]`: `-sh` for a login shell, else the program's path.
    pub arg0: Option<OsString>,
    pub args: Vec<OsString>,
    /// The whole environment; nothing is inherited.
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// A terminal, or plain pipes.
    pub pty: Option<pb::Pty>,
    /// The sftp server's stderr is its log, never part of the protocol stream.
    pub stderr_to_log: bool,
}

/// Why a session request was refused; the text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(message: impl Into<String>) -> Refused {
    Refused(message.into())
}

/// The environment the agent runs with, the parts a session inherits.
#[derive(Debug, Clone, Default)]
pub struct AgentEnv {
    pub home: Option<String>,
    pub user: Option<String>,
    pub path: Option<String>,
    pub lang: Option<String>,
}

impl AgentEnv {
    /// Read from this process.
    pub fn current() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            home: var("HOME"),
            user: var("USER").or_else(|| var("LOGNAME")),
            path: var("PATH"),
            lang: var("LANG"),
        }
    }
}

/// Decides what `start` runs for `principal`, under `config`.
pub fn plan(
    config: &SessionConfig,
    agent: &AgentEnv,
    start: &pb::SessionStart,
    principal: &str,
) -> Result<Plan, Refused> {
    if let Some(pty) = &start.pty {
        check_pty(pty)?;
    }
    if start.env.len() > MAX_ENV {
        return Err(refused(format!(
            "too many environment variables ({}; at most {MAX_ENV})",
            start.env.len()
        )));
    }
    let shell = config.shell.clone();
    let (program, arg0, args, stderr_to_log) = match &start.command {
        None | Some(Command::Shell(_)) => {
            let name =
                shell.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "sh".into());
            (shell.clone(), Some(OsString::from(format!("-{name}"))), Vec::new(), false)
        }
        Some(Command::Exec(command)) => {
            if command.is_empty() {
                return Err(refused("empty command"));
            }
            if command.len() > MAX_COMMAND {
                return Err(refused(format!(
                    "command too long ({} bytes; at most {MAX_COMMAND})",
                    command.len()
                )));
            }
            if command.contains(&0) {
                return Err(refused("command contains a NUL byte"));
            }
            (shell.clone(), None, vec![OsString::from("-c"), OsString::from_vec(command.to_vec())], false)
        }
        Some(Command::Subsystem(name)) if name == "sftp" => match &config.sftp_server {
            Some(server) => (server.clone(), None, vec!["-e".into(), "-l".into(), "ERROR".into()], true),
            None => {
                return Err(refused("sftp is not available on this workload (no sftp-server configured)"))
            }
        },
        Some(Command::Subsystem(name)) => {
            return Err(refused(format!(
                "subsystem {:?} is not offered by this workload",
                truncate(name, 64)
            )))
        }
    };
    let mut env = base_env(agent, &shell, start.pty.as_ref(), principal);
    for var in &start.env {
        check_var(var)?;
        if allowed(config, &var.name) {
            env.retain(|(k, _)| *k != var.name);
            env.push((var.name.clone(), var.value.clone()));
        }
    }
    Ok(Plan {
        program,
        arg0,
        args,
        env,
        dir: config
            .dir
            .clone()
            .or_else(|| agent.home.clone().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/")),
        pty: start.pty.clone(),
        stderr_to_log,
    })
}

fn base_env(agent: &AgentEnv, shell: &Path, pty: Option<&pb::Pty>, principal: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_owned(), agent.home.clone().unwrap_or_else(|| "/".into())),
        ("SHELL".to_owned(), shell.to_string_lossy().into_owned()),
        ("PATH".to_owned(), agent.path.clone().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())),
    ];
    if let Some(user) = &agent.user {
        env.push(("USER".to_owned(), user.clone()));
        env.push(("LOGNAME".to_owned(), user.clone()));
    }
    if let Some(lang) = &agent.lang {
        env.push(("LANG".to_owned(), lang.clone()));
    }
    if let Some(pty) = pty {
        env.push(("TERM".to_owned(), pty.term.clone()));
    }
    if !principal.is_empty() {
        env.push(("BURROW_USER".to_owned(), principal.to_owned()));
    }
    env
}

fn check_pty(pty: &pb::Pty) -> Result<(), Refused> {
    if !burrow_proto::session::valid_term(&pty.term) {
        return Err(refused(format!("invalid terminal type {:?}", truncate(&pty.term, 64))));
    }
    if let Some(size) = &pty.size {
        check_size(size)?;
    }
    Ok(())
}

/// A window size the agent accepts.
pub fn check_size(size: &pb::WindowSize) -> Result<(), Refused> {
    if !burrow_proto::session::valid_size(size.cols, size.rows) {
        return Err(refused(format!("terminal size {}x{} is too large", size.cols, size.rows)));
    }
    Ok(())
}

fn check_var(var: &pb::EnvVar) -> Result<(), Refused> {
    let mut chars = var.name.chars();
    let name_ok = var.name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(refused(format!("invalid environment variable name {:?}", truncate(&var.name, 64))));
    }
    if var.value.len() > MAX_ENV_VALUE || var.value.contains('\0') {
        return Err(refused(format!("environment variable {} has an invalid value", var.name)));
    }
    Ok(())
}

/// Whether the client may set `name`: it matches one of the configured patterns (exact,
/// or a prefix ending in `*`) and is not reserved.
pub fn allowed(config: &SessionConfig, name: &str) -> bool {
    if RESERVED.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    config.env.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SessionConfig {
        SessionConfig {
            names: vec!["ssh".into()],
            shell: "/bin/bash".into(),
            sftp_server: Some("/usr/lib/openssh/sftp-server".into()),
            env: vec!["LANG".into(), "LC_*".into(), "COLORTERM".into(), "PATH".into(), "BURROW_*".into()],
            max_sessions: 4,
            dir: None,
        }
    }

    fn agent() -> AgentEnv {
        AgentEnv {
            home: Some("/home/dev".into()),
            user: Some("dev".into()),
            path: Some("/usr/bin:/bin".into()),
            lang: Some("C.UTF-8".into()),
        }
    }

    fn start(command: Command, env: &[(&str, &str)], pty: bool) -> pb::SessionStart {
        pb::SessionStart {
            pty: pty.then(|| pb::Pty {
                term: "xterm-256color".into(),
                size: Some(pb::WindowSize { cols: 80, rows: 24, ..Default::default() }),
                modes: vec![],
            }),
            env: env.iter().map(|(k, v)| pb::EnvVar { name: (*k).into(), value: (*v).into() }).collect(),
            command: Some(command),
        }
    }

    fn get<'a>(plan: &'a Plan, key: &str) -> Option<&'a str> {
        plan.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_shell_is_the_configured_login_shell_in_home_with_a_clean_environment() {
        let plan =
            plan(&config(), &agent(), &start(Command::Shell(pb::Shell {}), &[], true), "alice").unwrap();
        assert_eq!(plan.program, PathBuf::from("/bin/bash"));
        assert_eq!(plan.arg0, Some(OsString::from("-bash")));
        assert!(plan.args.is_empty());
        assert_eq!(plan.dir, PathBuf::from("/home/dev"));
        assert_eq!(get(&plan, "TERM"), Some("xterm-256color"));
        assert_eq!(get(&plan, "BURROW_USER"), Some("alice"));
        assert_eq!(get(&plan, "HOME"), Some("/home/dev"));
        assert_eq!(get(&plan, "PATH"), Some("/usr/bin:/bin"));
        let keys: Vec<&str> = plan.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["HOME", "SHELL", "PATH", "USER", "LOGNAME", "LANG", "TERM", "BURROW_USER"]);
    }

    #[test]
    fn exec_runs_the_command_through_the_shell_and_nothing_else() {
        let cmd = Command::Exec(bytes::Bytes::from_static(b"echo hi; exit 3"));
        let plan = plan(&config(), &agent(), &start(cmd, &[], false), "").unwrap();
        assert_eq!(plan.program, PathBuf::from("/bin/bash"));
        assert_eq!(plan.args, [OsString::from("-c"), OsString::from("echo hi; exit 3")]);
        assert_eq!(get(&plan, "TERM"), None, "no terminal, no TERM");
        assert_eq!(get(&plan, "BURROW_USER"), None, "nobody signed in");
    }

    #[test]
    fn client_variables_pass_only_when_allowed_and_never_reserved_ones() {
        let env = [
            ("LANG", "de_DE.UTF-8"),
            ("LC_ALL", "C"),
            ("COLORTERM", "truecolor"),
            ("EDITOR", "vim"),
            ("PATH", "/tmp/evil"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("BURROW_AGENT_TOKEN", "x"),
        ];
        let plan = plan(&config(), &agent(), &start(Command::Shell(pb::Shell {}), &env, true), "").unwrap();
        assert_eq!(get(&plan, "LANG"), Some("de_DE.UTF-8"), "an allowed variable replaces the agent's");
        assert_eq!(get(&plan, "LC_ALL"), Some("C"));
        assert_eq!(get(&plan, "COLORTERM"), Some("truecolor"));
        assert_eq!(get(&plan, "EDITOR"), None, "not in the patterns");
        assert_eq!(get(&plan, "PATH"), Some("/usr/bin:/bin"), "reserved even when a pattern names it");
        assert_eq!(get(&plan, "LD_PRELOAD"), None);
        assert_eq!(get(&plan, "BURROW_AGENT_TOKEN"), None, "reserved even when a pattern names it");
    }

    #[test]
    fn sftp_runs_the_configured_server_with_its_log_off_the_channel() {
        let plan =
            plan(&config(), &agent(), &start(Command::Subsystem("sftp".into()), &[], false), "").unwrap();
        assert_eq!(plan.program, PathBuf::from("/usr/lib/openssh/sftp-server"));
        assert!(plan.stderr_to_log);
        let mut none = config();
        none.sftp_server = None;
        let err = super::plan(&none, &agent(), &start(Command::Subsystem("sftp".into()), &[], false), "")
            .unwrap_err();
        assert!(err.0.contains("sftp is not available"), "{err}");
        let err = super::plan(&config(), &agent(), &start(Command::Subsystem("x11".into()), &[], false), "")
            .unwrap_err();
        assert!(err.0.contains("\"x11\" is not offered"), "{err}");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cases: Vec<(pb::SessionStart, &str)> = vec![
            (start(Command::Exec(bytes::Bytes::from_static(b"a\0b")), &[], false), "NUL"),
            (start(Command::Exec(vec![b'x'; MAX_COMMAND + 1].into()), &[], false), "too long"),
            (start(Command::Exec(bytes::Bytes::new()), &[], false), "empty command"),
            (
                start(Command::Shell(pb::Shell {}), &[("1BAD", "x")], false),
                "invalid environment variable name",
            ),
            (start(Command::Shell(pb::Shell {}), &[("A", "x\0")], false), "invalid value"),
            (
                pb::SessionStart {
                    pty: Some(pb::Pty { term: "xterm; rm -rf".into(), size: None, modes: vec![] }),
                    ..start(Command::Shell(pb::Shell {}), &[], false)
                },
                "invalid terminal type",
            ),
            (
                pb::SessionStart {
                    pty: Some(pb::Pty {
                        term: "xterm".into(),
                        size: Some(pb::WindowSize { cols: 100_000, rows: 1, ..Default::default() }),
                        modes: vec![],
                    }),
                    ..start(Command::Shell(pb::Shell {}), &[], false)
                },
                "too large",
            ),
        ];
        for (request, expected) in cases {
            let err = plan(&config(), &agent(), &request, "").unwrap_err();
            assert!(err.0.contains(expected), "{err} should mention {expected}");
        }
        let many: Vec<(String, String)> = (0..=MAX_ENV).map(|i| (format!("LC_{i}"), "x".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let err =
            plan(&config(), &agent(), &start(Command::Shell(pb::Shell {}), &many, false), "").unwrap_err();
        assert!(err.0.contains("too many environment variables"), "{err}");
    }
}
