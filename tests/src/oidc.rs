//! A real OpenID Connect provider for sign-in tests: panva's `oidc-provider` (npm, pinned
//! in `tests/oidc-provider/package.json`) run by Node as a child process, configured
//! with the clients and accounts a test needs. See `tests/oidc-provider/provider.mjs`
//! for what it serves (its own login page: field `login`, button `#submit`; no consent
//! screen; RP-initiated logout with a `#logout` button).
//!
//! ```no_run
//! # use burrow_tests::oidc::{Account, Client, OidcProvider, ProviderConfig};
//! let provider = OidcProvider::start(
//!     &ProviderConfig::new()
//!         .client(Client::confidential("burrow", "secret").redirect_uri("http://127.0.0.1:8080/cb"))
//!         .account(Account::new("u-alice", "alice").groups(["admins"])),
//! );
//! let issuer = provider.issuer(); // http://127.0.0.1:<port>
//! ```
//!
//! Node and npm must be installed (`.ci/run` installs Debian's `nodejs npm` if missing);
//! `npm ci` runs on first use when `tests/oidc-provider/node_modules` is missing or holds
//! another version.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::process::ChildLog;

/// How long Node may take to load the provider and print its `listening` line.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The provider's configuration, written to the JSON file `provider.mjs` reads (the
/// field names are its keys). Durations are whole seconds; `None` keeps the provider's
/// default (ID and access tokens 300 s, codes 60 s, sessions and grants 1 h).
#[derive(Debug, Clone, Serialize)]
pub struct ProviderConfig {
    /// A fixed port on 127.0.0.1 (to restart on the same issuer); `None` takes a free one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The keys that sign the provider's cookies (the first signs, all verify).
    pub cookie_keys: Vec<String>,
    pub clients: Vec<Client>,
    pub accounts: Vec<Account>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token_ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_code_ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction_ttl_secs: Option<u64>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            port: None,
            // Fixed, so a provider restarted on the same port still accepts its cookies.
            cookie_keys: vec!["burrow-test-oidc-provider-cookie-key-0123456789".into()],
            clients: Vec::new(),
            accounts: Vec::new(),
            id_token_ttl_secs: None,
            access_token_ttl_secs: None,
            authorization_code_ttl_secs: None,
            session_ttl_secs: None,
            grant_ttl_secs: None,
            interaction_ttl_secs: None,
        }
    }
}

impl ProviderConfig {
    /// No clients, no accounts, default lifetimes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client.
    pub fn client(mut self, client: Client) -> Self {
        self.clients.push(client);
        self
    }

    /// Adds an account.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// How long ID tokens are valid.
    pub fn id_token_ttl(mut self, ttl: Duration) -> Self {
        self.id_token_ttl_secs = Some(ttl.as_secs());
        self
    }

    /// How long access tokens are valid.
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl_secs = Some(ttl.as_secs());
        self
    }

    /// How long the provider's own sign-in session lasts (after which it asks again).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl_secs = Some(ttl.as_secs());
        self
    }
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuthMethod {
    /// HTTP Basic with id and secret (what OpenID Connect clients do by default).
    ClientSecretBasic,
    /// Id and secret in the form body.
    ClientSecretPost,
    /// A public client (no secret; PKCE is its only proof).
    None,
}

/// A registered relying party. Always the authorization-code flow (`response_type=code`)
/// with PKCE S256 required, whatever the authentication method.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Exact-match redirect URIs; `http://127.0.0.1:<port>/...` and
    /// `http://*.localhost:<port>/...` are accepted (see provider.mjs).
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: TokenAuthMethod,
}

impl Client {
    /// A confidential client authenticating with HTTP Basic.
    pub fn confidential(client_id: &str, client_secret: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: Some(client_secret.to_owned()),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            token_endpoint_auth_method: TokenAuthMethod::ClientSecretBasic,
        }
    }

    /// A public client (no secret).
    pub fn public(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: None,
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            token_endpoint_auth_method: TokenAuthMethod::None,
        }
    }

    /// Adds a redirect URI.
    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.to_owned());
        self
    }

    /// Adds a post-logout redirect URI.
    pub fn post_logout_redirect_uri(mut self, uri: &str) -> Self {
        self.post_logout_redirect_uris.push(uri.to_owned());
        self
    }

    /// Sets the token endpoint authentication method.
    pub fn auth_method(mut self, method: TokenAuthMethod) -> Self {
        self.token_endpoint_auth_method = method;
        self
    }
}

/// A user who can sign in (by typing `preferred_username` on the login page). Scope
/// `profile` releases `name` and `preferred_username`, `email` releases `email` (and
/// `email_verified`, always true), `groups` releases `groups`; in the ID token and at
/// the userinfo endpoint alike.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub sub: String,
    pub preferred_username: String,
    pub name: String,
    pub email: String,
    pub groups: Vec<String>,
}

impl Account {
    /// An account named after its user name, with `<username>@example.test` and no
    /// groups.
    pub fn new(sub: &str, preferred_username: &str) -> Self {
        Self {
            sub: sub.to_owned(),
            preferred_username: preferred_username.to_owned(),
            name: preferred_username.to_owned(),
            email: format!("{preferred_username}@example.test"),
            groups: Vec::new(),
        }
    }

    /// Sets the display name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Sets the email address.
    pub fn email(mut self, email: &str) -> Self {
        self.email = email.to_owned();
        self
    }

    /// Sets the groups.
    pub fn groups<const N: usize>(mut self, groups: [&str; N]) -> Self {
        self.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        self
    }
}

/// A running provider; killed on drop.
pub struct OidcProvider {
    child: Child,
    issuer: String,
    log: ChildLog,
    config_path: PathBuf,
}

impl OidcProvider {
    /// Starts the provider with `config` and waits (at most 30 s) until it listens.
    /// Blocks the calling thread meanwhile (Node takes a few hundred milliseconds).
    pub fn start(config: &ProviderConfig) -> OidcProvider {
        let dir = ensure_installed();
        let config_path = std::env::temp_dir().join(format!(
            "burrow-oidc-provider-{}-{:08x}.json",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        // Printed if the test fails (ChildLog's drop), whether here or later.
        let log = ChildLog::create("oidc-provider");
        let mut child = Command::new(NODE)
            .arg(dir.join("provider.mjs"))
            .arg(&config_path)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.stdio())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `node provider.mjs`: {e}"));
        let stdout = child.stdout.take().unwrap();
        // A reader thread, so the wait has a deadline (a blocking read_line has none).
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = line_tx.send(line);
            // Keep the pipe drained so a stray write can never block the provider.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut provider = OidcProvider { child, issuer: String::new(), log, config_path };
        let line = match line_rx.recv_timeout(START_PATIENCE) {
            Ok(line) => line,
            Err(_) => panic!(
                "the OIDC provider printed no `listening` line within {START_PATIENCE:?}; its stderr follows"
            ),
        };
        let Some(issuer) = line.trim_end().strip_prefix("listening ") else {
            let status = provider.child.try_wait().ok().flatten();
            panic!("the OIDC provider did not start (first stdout line {line:?}, exit status {status:?}); its stderr follows");
        };
        provider.issuer = issuer.to_owned();
        provider
    }

    /// The issuer, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// What the provider has logged (its warnings and every failed request's reason).
    pub fn log(&self) -> String {
        self.log.read()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// `tests/oidc-provider`.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

/// Node, found on `PATH`; a missing one fails in [`ensure_installed`] saying what to install.
const NODE: &str = "node";

/// Runs `npm ci` in `tests/oidc-provider` unless its `node_modules` already holds the
/// pinned oidc-provider; once per test process (a lock, as tests run in parallel).
/// Returns the directory.
pub fn ensure_installed() -> PathBuf {
    static DONE: Mutex<bool> = Mutex::new(false);
    let dir = provider_dir();
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return dir;
    }
    let version = match Command::new(NODE).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!("`node --version` failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!(
            "the OIDC provider tests need Node.js (`node` on PATH: {e}); install Debian's `nodejs npm`, as .ci/run does"
        ),
    };
    // oidc-provider 9 calls URL.parse (Node 20.18): on an older Node it would start and
    // then fail the first request with a TypeError, far from the cause.
    let numbers: Vec<u32> =
        version.trim_start_matches('v').split('.').take(2).filter_map(|n| n.parse().ok()).collect();
    assert!(
        numbers.as_slice() >= [20, 18].as_slice(),
        "Node {version} is too old for oidc-provider 9 (needs >= 20.18; Debian 13's nodejs, or NodeSource on Debian 12)"
    );
    if installed_version(&dir) != pinned_version(&dir) {
        // Without a tty npm prints plain progress; it goes to the test's output only on
        // failure, with the command to rerun by hand.
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("running `npm ci` in {}: {e} (install Debian's `npm`, as .ci/run does)", dir.display())
            });
        if !out.status.success() {
            panic!(
                "`npm ci --no-audit --no-fund` in {} failed ({}); run it there by hand to see why.\nstdout:\n{}\nstderr:\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            installed_version(&dir),
            pinned_version(&dir),
            "after `npm ci` in {}, node_modules/oidc-provider is not the version package.json pins",
            dir.display()
        );
    }
    *done = true;
    dir
}

/// The oidc-provider version `package.json` pins.
fn pinned_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("package.json")).expect("tests/oidc-provider/package.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("package.json is JSON");
    Some(json["dependencies"]["oidc-provider"].as_str().expect("package.json pins oidc-provider").to_owned())
}

/// The oidc-provider version in `node_modules`, if any.
fn installed_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules/oidc-provider/package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_owned)
}

/// The client id a host's sign-in uses against a test provider.
pub const HOST_CLIENT_ID: &str = "burrow";
/// Its client secret.
pub const HOST_CLIENT_SECRET: &str = "burrow-client-secret-0123456789";

/// A provider for a host whose sign-in pages are at `sign_in_url` (its callback is the
/// one redirect URI), knowing `accounts`.
pub fn provider_for_host(sign_in_url: &str, accounts: Vec<Account>) -> OidcProvider {
    let mut config = ProviderConfig::new().client(
        Client::confidential(HOST_CLIENT_ID, HOST_CLIENT_SECRET)
            .redirect_uri(&format!("{sign_in_url}/_burrow/sign-in/callback")),
    );
    for account in accounts {
        config = config.account(account);
    }
    OidcProvider::start(&config)
}

/// The `[sign_in]` table of a host at `sign_in_url` against `provider`, sealing its
/// cookies with the secret in file `cookie_secret`, asking for `scopes`.
pub fn sign_in_table(
    provider: &OidcProvider,
    sign_in_url: &str,
    cookie_secret: &Path,
    scopes: &[&str],
) -> String {
    format!(
        "\n[sign_in]\nissuer = \"{}\"\nclient_id = \"{HOST_CLIENT_ID}\"\nclient_secret = \"{HOST_CLIENT_SECRET}\"\n\
         url = \"{sign_in_url}\"\ncookie_secret_files = [{:?}]\nscopes = {scopes:?}\n",
        provider.issuer(),
        cookie_secret.display().to_string()
    )
}
