//! The example plugins (`examples/plugins/`) in the real host runtime: their manifests'
//! test vectors run at load, and the behaviour their READMEs promise holds.

use std::path::{Path, PathBuf};

use burrow_plugin_harness::types::*;
use burrow_plugin_harness::{Harness, PluginError};

fn artifact(name: &str) -> PathBuf {
    let path = Path::new(burrow_host_plugins::ARTIFACTS_DIR).join(name);
    assert!(path.is_file(), "plugin not built: {}", path.display());
    path
}

/// The component copied into a scratch dir under another name, the way an admin
/// installs it: its manifest is embedded, so it comes along whatever the file is called.
fn installed(component: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("burrow-harness-{}-{component}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join(format!("deployed-{component}"));
    std::fs::copy(artifact(component), &wasm).unwrap();
    (dir, wasm)
}

const OFFICE_CONFIG: &str = r#"
groups = ["staff"]
timezone_offset_minutes = 60
users = [
  { name = "alice", token_sha256 = "9c220f200955d76c0a38d308225e0ef10c5f971acaf2f8d1d8f732affa5bd1dc", groups = ["staff"] },
]
"#;

/// Tuesday 2025-11-25 08:30 UTC = 09:30 at UTC+1.
const TUESDAY_MORNING: u64 = 1_764_059_400_000;
/// Tuesday 2025-11-25 16:00 UTC = 17:00 at UTC+1.
const TUESDAY_EVENING: u64 = 1_764_086_400_000;

fn target() -> Target {
    Target {
        workload_kind: "workspace".into(),
        workload_id: "demo".into(),
        agent_id: "demo".into(),
        service: "web".into(),
    }
}

fn bearer(token: &str) -> UserAuthRequest {
    UserAuthRequest {
        credential: Credential::Bearer(token.into()),
        client_addr: "192.0.2.7:40000".into(),
        host: "web-demo.localhost".into(),
        action: Action::Http,
    }
}

#[tokio::test]
async fn office_hours_allows_staff_in_office_hours_only() {
    let (dir, wasm) = installed("office_hours.wasm");
    let plugin = Harness::authorizer(&wasm)
        .config_toml(OFFICE_CONFIG)
        .unwrap()
        .clock_ms(TUESDAY_MORNING)
        .load()
        .await
        .unwrap();
    let info = plugin.info();
    assert!(info.tests_passed >= 5, "the manifest's vectors ran at load: {info:?}");
    assert_eq!(info.name, "office-hours", "named by its manifest, not its file");
    assert_eq!(info.version.as_deref(), Some("0.1.0"));

    let verdict = plugin.authorize_user(&bearer("alice-token"), target(), Action::Http).await.unwrap();
    assert!(matches!(verdict.who, UserAuthOutcome::Authenticated(ref p) if p.id == "alice"), "{verdict:?}");
    assert!(matches!(verdict.decision, Some(Decision::Allow { .. })), "{verdict:?}");

    plugin.set_clock_ms(TUESDAY_EVENING);
    let verdict = plugin.authorize_user(&bearer("alice-token"), target(), Action::Http).await.unwrap();
    match verdict.decision {
        Some(Decision::Deny { status: 403, reason }) => {
            assert!(reason.contains("outside office hours"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // Unknown tokens are rejected before any rule applies.
    plugin.set_clock_ms(TUESDAY_MORNING);
    let verdict = plugin.authorize_user(&bearer("guess"), target(), Action::Http).await.unwrap();
    assert!(matches!(verdict.who, UserAuthOutcome::Rejected(_)), "{verdict:?}");
    assert_eq!(verdict.decision, None);

    // Anonymous users are denied everything.
    let anonymous = UserAuthRequest { credential: Credential::None, ..bearer("") };
    let verdict = plugin.authorize_user(&anonymous, target(), Action::Http).await.unwrap();
    assert!(matches!(verdict.decision, Some(Decision::Deny { status: 401, .. })), "{verdict:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn office_hours_refuses_a_broken_config() {
    let (dir, wasm) = installed("office_hours.wasm");
    let err = Harness::authorizer(&wasm)
        .config_toml("groups = [\"staff\"]\nstart = \"25:00\"")
        .unwrap()
        .load()
        .await
        .expect_err("an impossible start time is refused at load");
    assert!(matches!(err, burrow_plugin_harness::HarnessError::Plugin(ref e) if e.is_init()), "{err}");
    assert!(
        err.to_string().contains("init failed") && !err.to_string().contains("refused its config"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_component_with_an_embedded_manifest_and_one_beside_it_is_refused() {
    let (dir, wasm) = installed("office_hours.wasm");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(root.join("examples/plugins/office-hours/office-hours.toml"), wasm.with_extension("toml"))
        .unwrap();
    let err = Harness::authorizer(&wasm).config_toml(OFFICE_CONFIG).unwrap().load().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("embeds a manifest") && text.contains("second one"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

fn candidates() -> Vec<RouteCandidate> {
    let c = |id: &str, local: bool, load: u32| RouteCandidate {
        replica_id: id.into(),
        local,
        load,
        age_ms: 1000,
    };
    vec![c("r-a", true, 8), c("r-canary", false, 50), c("r-b", false, 3)]
}

#[tokio::test]
async fn canary_router_sends_its_share_to_the_canary() {
    let (dir, wasm) = installed("canary_router.wasm");
    let plugin = Harness::router(&wasm)
        .config_toml("canary_percent = 20\ncanary_replicas = [\"r-canary\"]")
        .unwrap()
        .warm(2)
        .load()
        .await
        .unwrap();
    assert!(plugin.info().tests_passed >= 3);
    let mut canary = 0;
    let sessions = 1000;
    for i in 0..sessions {
        let req =
            RouteRequest { target: target(), session_key: format!("user-{i}"), candidates: candidates() };
        let order = plugin.route(&req).await.unwrap();
        assert_eq!(order.len(), 3, "every candidate is listed once");
        if order[0] == 1 {
            canary += 1;
        } else {
            assert_eq!(order[0], 2, "non-canary sessions go to the least-loaded stable replica");
        }
        // Sticky: the same session always gets the same first choice.
        let again = plugin.route(&req).await.unwrap();
        assert_eq!(order, again);
    }
    // A stable hash splits 1000 sessions close to 20%; allow a wide band so the test
    // checks the share, not the hash's luck.
    assert!((120..=280).contains(&canary), "{canary} of {sessions} sessions went to the canary");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn builtin_workloads_and_router_load_with_their_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for component in ["workload_workspace.wasm", "workload_ci_job.wasm", "workload_terminal.wasm"] {
        let (dir, wasm) = installed(component);
        let plugin = Harness::workload(&wasm).load().await.unwrap_or_else(|e| panic!("{component}: {e}"));
        assert!(plugin.info().tests_passed > 0, "{component}");
        assert!(plugin.info().workload_kind.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
    let (dir, wasm) = installed("router_prefer_local.wasm");
    let router = Harness::router(&wasm).load().await.unwrap();
    let order = router
        .route(&RouteRequest { target: target(), session_key: "s".into(), candidates: candidates() })
        .await
        .unwrap();
    assert_eq!(order, [0, 2, 1], "local first, then least loaded");
    let _ = std::fs::remove_dir_all(dir);
    assert!(root.join("wit/README.md").is_file());
}

#[tokio::test]
async fn limits_apply_in_the_harness_as_in_the_host() {
    let wasm = artifact("test_misbehave.wasm");
    let plugin = Harness::authorizer(&wasm)
        .config_toml("mode = \"loop\"")
        .unwrap()
        .call_timeout(std::time::Duration::from_millis(30))
        .load()
        .await
        .unwrap();
    match plugin.authenticate_user(&bearer("x")).await {
        Err(PluginError::Timeout { .. }) => {}
        other => panic!("{other:?}"),
    }
}
