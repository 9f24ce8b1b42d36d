//! Swap time: from a reload trigger to the first decision that comes back with the new
//! version's answer, with and without the artifact cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use burrow_host::plugins::types::Decision;
use burrow_host::plugins::{Plugins, PluginsConfig, PluginsOptions, ReloadOutcome, ARTIFACTS_DIR};
use burrow_tests::{sha256_hex, AGENT, TOKEN};

use super::decide::{authorize_request, user_request};

/// A private directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> anyhow::Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("burrow-bench-{tag}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Per-swap times in ms: trigger → `reload` returned, trigger → first new decision.
#[derive(Default)]
pub(super) struct SwapSeries {
    /// Swaps that compiled (every swap without a cache; the first one to v2 with one).
    pub(super) compiled_reload: Vec<f64>,
    pub(super) compiled_serving: Vec<f64>,
    /// Swaps served from the artifact cache.
    pub(super) hit_reload: Vec<f64>,
    pub(super) hit_serving: Vec<f64>,
}

/// Replaces `path` the way a deploy should: a new file renamed over the old one.
pub(super) fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("wasm.new");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The decision the authorizer slot gives now: v1 allows, v2 denies with 403.
pub(super) async fn swap_decision(plugins: &Plugins) -> anyhow::Result<Decision> {
    let verdict = plugins.authorize_user(&user_request(), authorize_request).await?;
    verdict.decision.context("the authorizer rejected the credential")
}

pub(super) fn is_version(decision: &Decision, version: u8) -> bool {
    match (version, decision) {
        (1, Decision::Allow { .. }) => true,
        (2, Decision::Deny { status: 403, reason }) => reason.contains("v2"),
        _ => false,
    }
}

pub(super) async fn swap_run(swaps: usize, with_cache: bool, into: &mut SwapSeries) -> anyhow::Result<()> {
    let v1 =
        std::fs::read(Path::new(ARTIFACTS_DIR).join("test_swap_v1.wasm")).context("test_swap_v1.wasm")?;
    let v2 =
        std::fs::read(Path::new(ARTIFACTS_DIR).join("test_swap_v2.wasm")).context("test_swap_v2.wasm")?;
    let dir = TempDir::new("swap")?;
    let file = dir.0.join("swap.wasm");
    std::fs::write(&file, &v1)?;
    let cache = match with_cache {
        true => format!("cache_dir = {:?}\n", dir.0.join("cache").display().to_string()),
        false => String::new(),
    };
    let text = format!(
        "watch = false\n{cache}[authorizer]\nsource = {:?}\n\
         config = {{ agent_id = \"{AGENT}\", agent_token_sha256 = \"{}\" }}\n",
        file.display().to_string(),
        sha256_hex(TOKEN),
    );
    let config: PluginsConfig = toml::from_str(&text).with_context(|| format!("swap config:\n{text}"))?;
    let plugins = Plugins::load(&config, PluginsOptions::default()).await?;
    ensure!(is_version(&swap_decision(&plugins).await?, 1), "v1 does not serve after the load");

    for i in 0..swaps {
        let (bytes, version) = if i % 2 == 0 { (&v2, 2) } else { (&v1, 1) };
        replace_file(&file, bytes)?;
        let trigger = Instant::now();
        let outcome = plugins.reload("swap").await?;
        let reloaded = trigger.elapsed();
        let decision = swap_decision(&plugins).await?;
        let serving = trigger.elapsed();
        ensure!(matches!(outcome, ReloadOutcome::Swapped { .. }), "reload did not swap: {outcome:?}");
        ensure!(is_version(&decision, version), "after the swap to v{version}: {decision:?}");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // With a cache, only the first swap (to v2, never seen by this cache) compiles.
        if with_cache && i > 0 {
            into.hit_reload.push(ms(reloaded));
            into.hit_serving.push(ms(serving));
        } else {
            into.compiled_reload.push(ms(reloaded));
            into.compiled_serving.push(ms(serving));
        }
    }
    Ok(())
}
