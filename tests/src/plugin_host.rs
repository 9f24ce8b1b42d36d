//! A host whose plugins tests swap: scratch directories for plugin files, the admin
//! API, and the hot-swap test plugins (`test-swap-v1` allows, `test-swap-v2` denies with
//! 403 naming v2).

use std::path::{Path, PathBuf};

use http::StatusCode;

use crate::workload::Workload;
use crate::*;

/// The workspace of agent a1's service `web`.
pub const HOST: &str = "web-a1.localhost";
/// The admin API's bearer token in every [`Scratch`].
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// A plugin component this build made (`test_swap_v1.wasm`, `office_hours.wasm`, ...).
pub fn artifact(name: &str) -> PathBuf {
    let path = Path::new(burrow_host::plugins::ARTIFACTS_DIR).join(name);
    assert!(path.is_file(), "plugin not built: {}", path.display());
    path
}

/// A scratch directory for plugin files and the admin token.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("burrow-plugins-{tag}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin-token"), ADMIN_TOKEN).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Replaces `name` atomically (write + rename), as an admin's deploy would.
    pub fn install(&self, name: &str, from: &Path) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unique enough for a scratch directory's name.
pub fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A host whose authorizer is the file `authz.wasm` in `scratch` (the swap test plugins'
/// config: agent a1 with TOKEN), the admin API on with ADMIN_TOKEN, and `plugins_extra`
/// inside `[plugins]`.
pub fn swap_host_config(
    scratch: &Scratch,
    plugins_extra: &str,
    authorizer_extra: &str,
) -> burrow_host::Config {
    swap_host_parts(scratch, plugins_extra, authorizer_extra).build()
}

/// The parts behind [`swap_host_config`] (for a host process with its own config file),
/// with the authorizer at `authz_file` in `scratch`.
pub fn swap_host_parts(scratch: &Scratch, plugins_extra: &str, authorizer_extra: &str) -> ConfigParts {
    swap_host_parts_with(scratch, "authz.wasm", plugins_extra, authorizer_extra)
}

/// [`swap_host_parts`] with the authorizer in file `authz_file` of `scratch`.
pub fn swap_host_parts_with(
    scratch: &Scratch,
    authz_file: &str,
    plugins_extra: &str,
    authorizer_extra: &str,
) -> ConfigParts {
    let authorizer = format!(
        "source = {:?}\ncall_timeout = \"500ms\"\n{authorizer_extra}\nconfig = {{ agent_id = \"{AGENT}\", agent_token_sha256 = \"{}\" }}",
        scratch.path(authz_file).display().to_string(),
        sha256_hex(TOKEN)
    );
    ConfigParts {
        authorizer,
        extra: format!(
            "[plugins]\n{plugins_extra}\n[admin]\ntoken_file = {:?}\n",
            scratch.path("admin-token").display().to_string()
        ),
        ..Default::default()
    }
}

/// One admin API call, with `token` as the bearer token; the status and the JSON body.
pub async fn admin(
    host: &TestHost,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        bearer.as_deref().map(|b| vec![("authorization", b)]).unwrap_or_default();
    let mut client = clients::connect(host.admin_addr, &clients::Mode::h1()).await;
    let response = client.request(method, "admin", path, &headers, clients::empty()).await;
    let (status, _, body) = clients::collect(response).await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// `POST /plugins/<plugin>/reload`.
pub async fn reload(host: &TestHost, plugin: &str) -> (StatusCode, serde_json::Value) {
    admin(host, "POST", &format!("/plugins/{plugin}/reload"), Some(ADMIN_TOKEN)).await
}

/// `plugin`'s entry in `GET /plugins`.
pub async fn plugin_status(host: &TestHost, plugin: &str) -> serde_json::Value {
    let (status, json) = admin(host, "GET", "/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plugin)
        .cloned()
        .unwrap_or_else(|| panic!("no plugin {plugin} in {json}"))
}

/// Agent a1 offering `workload`'s `web`, connected with 8 idle streams.
pub async fn connected_agent(host: &TestHost, workload: &Workload) -> burrow_agent::AgentHandle {
    let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]);
    config.min_idle = 8;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    agent
}

/// The v1 swap plugin allows everyone; v2 denies with a reason naming v2.
pub async fn expect_version(host: &TestHost, version: u8) {
    expect_version_at(host.ingress_addr, version).await
}

/// [`expect_version`] for the host whose ingress is `ingress`.
pub async fn expect_version_at(ingress: std::net::SocketAddr, version: u8) {
    let (status, _, body) = clients::get(ingress, HOST, "/hello").await;
    let body = String::from_utf8_lossy(&body);
    match version {
        1 => assert_eq!((status, body.as_ref()), (StatusCode::OK, "hello from swap")),
        _ => {
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert!(body.contains("v2"), "the v2 reason reaches the user: {body}");
        }
    }
}
