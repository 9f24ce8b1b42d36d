//! The plugin author's guide, `plugins/sdk/README.md`, followed word for word from an
//! empty directory: its `sh run` blocks are run as written (with this build's
//! `burrow-host` first on the PATH), its `file=` blocks are written where it says, and its
//! `sh serve` block is played against the real binary: `burrow-host run` with the guide's
//! `host.toml`, an agent with the guide's token and service, and the guide's `curl`s with
//! the statuses their comments promise.
//!
//! Two things differ from a reader's run, each for a reason:
//! - the SDK dependency takes the guide's own "from a checkout" form pointing at this
//!   checkout (the test must build this SDK, offline), and
//! - `host.toml`'s listen addresses become `127.0.0.1:0` (tests never take fixed ports);
//!   the host's start-up line says where it listens.
//!
//! It builds a wasm crate and its native tests, so its first run takes minutes. The
//! crate's `target/` is a link to `<target dir>/guide-plugin`, kept between runs, so later
//! runs only rebuild the guide's crate itself. Cargo runs offline first (the host's build
//! already fetched every crate the guide uses) and online only if that fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GUIDE: &str = include_str!("../../plugins/sdk/README.md");
const GUIDE_PATH: &str = "plugins/sdk/README.md";
const WORKLOAD_BODY: &str = "hello from the guide's workload";

/// A fenced code block of the guide: its info string (`sh run`, `toml file=host.toml`)
/// and its text.
struct Block {
    info: String,
    body: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else { continue };
        let indent = line.len() - line.trim_start().len();
        let mut body = String::new();
        for line in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                break;
            }
            body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            body.push('\n');
        }
        out.push(Block { info: info.trim().to_owned(), body });
    }
    out
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the repository").to_path_buf()
}

/// Where cargo keeps this workspace's builds: the guide's crate gets a directory there.
fn target_root() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target"),
    }
}

/// A scratch directory, removed when the test passes and kept (and named) when it fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the guide's directory is kept for a look: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs the guide's shell commands as a reader would: one `sh -c` per line, `cd` moving
/// the working directory, this build's `burrow-host` first on the PATH.
struct Shell {
    cwd: PathBuf,
    path: std::ffi::OsString,
    /// Every command run and what it printed, for the failure message.
    transcript: String,
}

/// What cargo sets for a test (or a user for this build) that would misdirect the
/// guide's own cargo: another target, other flags, this build's target directory.
const STRIPPED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
];

impl Shell {
    fn new(cwd: &Path) -> Shell {
        let bin = Path::new(env!("CARGO_BIN_EXE_burrow-host")).parent().unwrap().to_path_buf();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        Shell {
            cwd: cwd.to_path_buf(),
            path: std::env::join_paths(paths).unwrap(),
            transcript: String::new(),
        }
    }

    fn command(&self, line: &str, offline: bool) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(line).current_dir(&self.cwd).env("PATH", &self.path);
        for var in STRIPPED_ENV {
            cmd.env_remove(var);
        }
        if offline {
            cmd.env("CARGO_NET_OFFLINE", "true");
        }
        cmd
    }

    /// Runs one line of the guide; panics with everything it printed if it fails.
    fn run(&mut self, line: &str) -> String {
        if let Some(dir) = line.strip_prefix("cd ") {
            self.cwd = self.cwd.join(dir.trim());
            self.transcript.push_str(&format!("$ {line}\n"));
            return String::new();
        }
        let mut output = self.command(line, true).output().expect("sh runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && line.starts_with("cargo") && stderr.contains("offline") {
            // A crate the host's build did not fetch: let cargo fetch it.
            output = self.command(line, false).output().expect("sh runs");
        }
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        self.transcript.push_str(&format!("$ {line}\n{stdout}{stderr}"));
        assert!(
            output.status.success(),
            "the guide's command failed: {line}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n--- transcript:\n{}",
            self.transcript
        );
        stdout + &stderr
    }
}

/// The guide's `Cargo.toml`, with its git dependency on the SDK replaced by its own
/// "from a checkout" form, pointing at this checkout.
fn with_local_sdk(cargo_toml: &str) -> String {
    let checkout_form = "# burrow-plugin-sdk = { path = \"/path/to/burrow/plugins/sdk\" }";
    assert!(cargo_toml.contains(checkout_form), "the guide gives the SDK's form for a checkout");
    let sdk = repo_root().join("plugins/sdk");
    cargo_toml
        .lines()
        .map(|line| match line.starts_with("burrow-plugin-sdk = ") {
            true => format!("burrow-plugin-sdk = {{ path = {:?} }}", sdk.display().to_string()),
            false => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The guide's `host.toml` on ports the system picks (and the admin port off loopback's
/// fixed 8084).
fn on_free_ports(host_toml: &str) -> String {
    let mut table: toml::Table = toml::from_str(host_toml).expect("the guide's host.toml is TOML");
    for section in ["agents", "ingress", "admin"] {
        let entry = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        entry.as_table_mut().unwrap().insert("listen".into(), toml::Value::String("127.0.0.1:0".into()));
    }
    toml::to_string(&table).unwrap()
}

/// `burrow-host run`, its log collected as it comes.
struct HostProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl HostProcess {
    fn start(shell: &Shell, line: &str) -> HostProcess {
        let args: Vec<&str> = line.trim_end_matches('&').split_whitespace().collect();
        assert_eq!(args.first(), Some(&"burrow-host"), "the guide starts the host: {line}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_burrow-host"))
            .args(&args[1..])
            .current_dir(&shell.cwd)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("burrow-host starts");
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        HostProcess { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address the start-up line gives for `field` (`agents`, `ingress`).
    async fn address(&mut self, field: &str) -> std::net::SocketAddr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("burrow host running")) {
                let value = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix(&format!("{field}=")))
                    .unwrap_or_else(|| panic!("no {field}= in {line}"));
                return value.parse().unwrap_or_else(|e| panic!("{field}={value}: {e}"));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("burrow-host run exited ({status}):\n{log}");
            }
            assert!(tokio::time::Instant::now() < deadline, "the host did not start within 60 s:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workload answering every request with [`WORKLOAD_BODY`].
async fn workload() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{WORKLOAD_BODY}",
                    WORKLOAD_BODY.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 GET; the status and body.
async fn get(ingress: std::net::SocketAddr, host: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(ingress).await.unwrap();
    let auth = bearer.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The guide's `curl`: host name, path, bearer token and the status its comment promises.
struct Curl {
    host: String,
    path: String,
    bearer: Option<String>,
    status: u16,
}

fn parse_curl(line: &str) -> Curl {
    let (command, comment) = line.split_once('#').expect("each curl says what it answers");
    let status =
        comment.trim().get(..3).and_then(|s| s.parse().ok()).expect("the comment starts with a status");
    let bearer = command.split_once("Bearer ").map(|(_, rest)| rest.split('"').next().unwrap().to_owned());
    let url = command.split_whitespace().find(|w| w.starts_with("http://")).expect("a URL");
    let rest = url.trim_start_matches("http://");
    let (authority, path) =
        rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let host = authority.split(':').next().unwrap().to_owned();
    Curl { host, path, bearer, status }
}

fn flag<'a>(line: &'a str, name: &str) -> &'a str {
    let mut words = line.split_whitespace();
    words.find(|w| *w == name).and_then(|_| words.next()).unwrap_or_else(|| panic!("{name} in {line}"))
}

async fn wait_connected(agent: &burrow_agent::AgentHandle, host: &HostProcess) {
    let mut status = agent.status();
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            {
                let s = status.borrow_and_update();
                if matches!(s.state, burrow_agent::ConnState::Connected { .. }) && s.idle_streams > 0 {
                    return;
                }
            }
            status.changed().await.expect("the agent runs");
        }
    })
    .await;
    if connected.is_err() {
        panic!(
            "the guide's agent did not connect: {:?}\nhost log:\n{}",
            *agent.status().borrow(),
            host.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_guide_from_an_empty_directory_to_a_workload() {
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "burrow-guide-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let mut shell = Shell::new(&scratch.0);
    let mut written: Vec<PathBuf> = Vec::new();
    let mut outputs = Vec::new();
    let mut serve = None;
    for block in blocks(GUIDE) {
        let words: Vec<&str> = block.info.split_whitespace().collect();
        match words.as_slice() {
            ["sh", "run"] => {
                for line in block.body.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    outputs.push((line.to_owned(), shell.run(line)));
                    if line.starts_with("cargo new") {
                        // The crate's builds go to a directory kept between test runs.
                        let name = line.split_whitespace().last().unwrap();
                        let kept = target_root().join("guide-plugin");
                        std::fs::create_dir_all(&kept).unwrap();
                        std::os::unix::fs::symlink(&kept, shell.cwd.join(name).join("target")).unwrap();
                    }
                }
            }
            [_, file] if file.starts_with("file=") => {
                let path = shell.cwd.join(file.trim_start_matches("file="));
                let body = match path.ends_with("Cargo.toml") {
                    true => with_local_sdk(&block.body),
                    false => block.body.clone(),
                };
                if written.contains(&path) {
                    // A later block for the same file adds to it.
                    let mut text = std::fs::read_to_string(&path).unwrap();
                    text.push('\n');
                    text.push_str(&body);
                    std::fs::write(&path, text).unwrap();
                } else {
                    std::fs::write(&path, body).unwrap();
                    written.push(path);
                }
            }
            ["sh", "serve"] => serve = Some(block.body),
            _ => {}
        }
    }
    let ran = |prefix: &str| {
        outputs
            .iter()
            .find(|(line, _)| line.starts_with(prefix))
            .map(|(_, out)| out.clone())
            .unwrap_or_else(|| panic!("the guide runs `{prefix}`"))
    };

    // Built without warnings; native tests (unit tests and the manifest's vectors) pass.
    let build = ran("cargo build --target wasm32-wasip2 --release");
    assert!(
        !build.lines().any(|l| l.starts_with("warning")),
        "the guide's crate builds without warnings:\n{build}"
    );
    let test = ran("cargo test");
    assert!(
        test.contains("manifest_vectors_pass ... ok") && test.contains("a_team_token_logs_in ... ok"),
        "{test}"
    );
    // The guide's `plugin check` passes with the slot's config and runs the embedded vectors.
    let check = ran("burrow-host plugin check");
    for expected in
        ["team_token.wasm: OK", "name:     team-token", "version:  0.1.0", "4 manifest test vector(s) passed"]
    {
        assert!(check.contains(expected), "plugin check says {expected:?}:\n{check}");
    }

    // Section 7: the host, an agent, and the user's requests through the new plugin.
    let serve = serve.expect("the guide has a `sh serve` block");
    let host_toml = shell.cwd.join("host.toml");
    std::fs::write(&host_toml, on_free_ports(&std::fs::read_to_string(&host_toml).unwrap())).unwrap();
    let mut lines = serve.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut host = HostProcess::start(&shell, lines.next().unwrap());
    let agents = host.address("agents").await;
    let ingress = host.address("ingress").await;

    let agent_line = lines.next().unwrap();
    let token = agent_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("BURROW_AGENT_TOKEN="))
        .expect("the guide gives the agent's token");
    let service = flag(agent_line, "--service");
    let (name, _) = service.split_once('=').expect("--service NAME=ADDR");
    let workload = workload().await;
    let url = flag(agent_line, "--host").replace("127.0.0.1:8081", &agents.to_string());
    let mut config = burrow_agent::AgentConfig::new(&url, token.to_owned()).expect("the guide's agent URL");
    config.services = vec![burrow_agent::ServiceSpec::parse(&format!("{name}={workload}")).unwrap()];
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent, &host).await;

    let curls: Vec<Curl> = lines.filter(|l| l.starts_with("curl")).map(parse_curl).collect();
    assert!(curls.iter().any(|c| c.status == 200) && curls.iter().any(|c| c.status == 401));
    for curl in &curls {
        let (status, body) = get(ingress, &curl.host, &curl.path, curl.bearer.as_deref()).await;
        assert_eq!(
            status,
            curl.status,
            "{} with {:?}: {body}\nhost log:\n{}",
            curl.host,
            curl.bearer,
            host.log()
        );
        if status == 200 {
            assert_eq!(body, WORKLOAD_BODY);
        }
    }

    // What the guide says the log shows, and what it must not.
    let log = host.log();
    assert!(
        log.contains("plugin loaded") && log.contains("plugin=team-token") && log.contains("version=0.1.0"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in a redirected log:\n{log}");
    let vector_line = log
        .lines()
        .find(|l| l.contains("team infra logged in") && l.contains("check="))
        .unwrap_or_else(|| panic!("the canary's test vector logged, marked as such:\n{log}"));
    assert!(vector_line.contains("test vector"), "{vector_line}");
    assert!(
        log.lines().any(|l| l.contains("team infra logged in") && !l.contains("check=")),
        "the live request's line is not marked:\n{log}"
    );
    assert!(!log.contains("request refused"), "refusals are counted, not logged at INFO:\n{log}");
    agent.abort();
}

#[test]
fn the_guide_blocks_this_test_follows_are_all_there() {
    let infos: Vec<String> = blocks(GUIDE).into_iter().map(|b| b.info).collect();
    for wanted in [
        "sh run",
        "toml file=Cargo.toml",
        "rust file=src/lib.rs",
        "toml file=team-token.toml",
        "toml file=host.toml",
        "sh serve",
    ] {
        assert!(infos.iter().any(|i| i == wanted), "{GUIDE_PATH} has a ```{wanted} block");
    }
}
