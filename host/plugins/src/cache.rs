//! On-disk cache of compiled components, so a restart deserializes (milliseconds) instead
//! of compiling with Cranelift (seconds for a large plugin).
//!
//! Entries are `<wasm sha256>-<engine hash>.cwasm` in one directory. The engine hash
//! covers everything that makes an artifact loadable (target, compiler flags, tunables,
//! wasm features, wasmtime version), so a host with another config or wasmtime compiles
//! its own entry instead of tripping over ours. Each file is an integrity header followed
//! by `Engine::precompile_component`'s output:
//!
//! ```text
//! magic "BRWCWASM" | format u32 LE | reserved u32 | wasm sha256 [32] | engine hash [16]
//!   | artifact length u64 LE | artifact sha256 [32] | artifact ...
//! ```
//!
//! Writers write a private temp file in the same directory, fsync it and rename it over
//! the entry, so readers (other threads, other host processes sharing the directory) see
//! a whole entry or none. A bad entry (truncated, corrupt, foreign, refused by wasmtime)
//! is deleted and recompiled; cache I/O failures never fail a load (`Uncached`).

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

const MAGIC: [u8; 8] = *b"BRWCWASM";
const FORMAT: u32 = 1;
const ENGINE_HASH_LEN: usize = 16;
const HEADER_LEN: usize = 8 + 4 + 4 + 32 + ENGINE_HASH_LEN + 8 + 32;
const EXTENSION: &str = "cwasm";
/// A temp file this old was left by a process that died mid-write; live writers finish
/// in seconds.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Unique temp-file names across the threads of one process (the pid covers processes).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    max_entries: usize,
}

/// How [`ArtifactCache::load_or_compile`] got the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheOutcome {
    /// Deserialized from the cache; nothing was compiled.
    Hit,
    /// Compiled and stored.
    Miss,
    /// The entry was unusable (`reason`): deleted, compiled again and stored.
    Replaced { reason: String },
    /// Compiled, but the cache could not store it (`reason`); the next load compiles again.
    Uncached { reason: String },
    /// Compiled without a cache (none is configured, or it could not be opened). Never
    /// returned by [`ArtifactCache::load_or_compile`]; for callers that have no cache.
    Disabled,
}

/// Why the cache cannot be opened, or the component cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("plugin cache: max_entries must be at least 1")]
    NoCapacity,
    #[error("plugin cache {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// Another user could plant an artifact there, and artifacts are native code.
    #[error("plugin cache {}: refusing an insecure directory: {reason}", path.display())]
    Insecure { path: PathBuf, reason: String },
    /// The wasm is not a valid component for this engine; nothing was cached.
    #[error("compiling the component: {error:#}")]
    Compile { error: wasmtime::Error },
}

impl ArtifactCache {
    /// Opens (creating it, mode 0700) the cache directory. Refuses a directory that is
    /// not ours or that group or others may write to: whoever can write there can make
    /// the host run their native code.
    pub(crate) fn open(dir: &Path, max_entries: usize) -> Result<ArtifactCache, CacheError> {
        if max_entries == 0 {
            return Err(CacheError::NoCapacity);
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            action: "creating the directory",
            source,
        })?;
        let cache = ArtifactCache { dir: dir.to_path_buf(), max_entries };
        cache.check_directory()?;
        Ok(cache)
    }

    #[cfg(test)]
    fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry name (without extension) of `wasm_sha256` compiled by `engine`: hex
    /// sha256 of the wasm, `-`, hex of a hash of the engine's compatibility-relevant
    /// settings. Stable across runs (the hash is SHA-256, not a seeded hasher).
    #[cfg(test)]
    fn key(engine: &Engine, wasm_sha256: &[u8; 32]) -> String {
        entry_key(wasm_sha256, &engine_hash(engine))
    }

    /// The compiled component for `wasm`, whose SHA-256 is `sha256`: from the cache when
    /// a valid entry exists, otherwise compiled (on this thread; it can take seconds, so
    /// call it off the request path) and stored. Only a compile failure is an error.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &[u8; 32],
        wasm: &[u8],
    ) -> Result<(Component, CacheOutcome), CacheError> {
        debug_assert_eq!(<[u8; 32]>::from(Sha256::digest(wasm)), *sha256, "sha256 is not the wasm's digest");
        let engine_hash = engine_hash(engine);
        let key = entry_key(sha256, &engine_hash);
        let path = self.dir.join(format!("{key}.{EXTENSION}"));

        let bad_entry = match fs::read(&path) {
            Ok(bytes) => match verify(&bytes, sha256, &engine_hash) {
                // SAFETY: `Component::deserialize` runs the artifact's native code, so the
                // bytes must be an unmodified output of `precompile_component`. They are:
                // the directory is ours and closed to other users (checked at `open`),
                // entries are only written whole (temp file + rename) by this code, and
                // `verify` checked the length and SHA-256 we recorded when we wrote it,
                // catching truncation and bit rot. An artifact from another wasmtime
                // version or config is refused by wasmtime's own header check with an
                // error (documented behaviour), which we treat as a bad entry.
                Ok(artifact) => match unsafe { Component::deserialize(engine, artifact) } {
                    Ok(component) => {
                        touch(&path);
                        return Ok((component, CacheOutcome::Hit));
                    }
                    Err(err) => Some(format!("wasmtime refused the cached artifact: {err}")),
                },
                Err(reason) => Some(reason),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => Some(format!("reading it failed: {err}")),
        };
        if bad_entry.is_some() {
            // Failure to delete surfaces as the store's failure below.
            let _ = fs::remove_file(&path);
        }

        let artifact = engine.precompile_component(wasm).map_err(|error| CacheError::Compile { error })?;
        // SAFETY: the bytes were produced by `precompile_component` on this engine a moment
        // ago and never left this process's memory.
        let component = unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|error| CacheError::Compile { error })?;

        let outcome = match self.store(&path, &key, sha256, &engine_hash, &artifact) {
            Ok(()) => {
                self.evict(&path);
                match bad_entry {
                    None => CacheOutcome::Miss,
                    Some(reason) => CacheOutcome::Replaced { reason },
                }
            }
            Err(err) => CacheOutcome::Uncached {
                reason: match bad_entry {
                    None => format!("storing {}: {err}", path.display()),
                    Some(reason) => {
                        format!("storing {} (replacing a bad entry: {reason}): {err}", path.display())
                    }
                },
            },
        };
        Ok((component, outcome))
    }

    #[cfg(unix)]
    fn check_directory(&self) -> Result<(), CacheError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

        let insecure = |reason: String| CacheError::Insecure { path: self.dir.clone(), reason };
        let io_error = |action, source| CacheError::Io { path: self.dir.clone(), action, source };
        let meta = fs::metadata(&self.dir).map_err(|e| io_error("reading its metadata", e))?;
        if !meta.is_dir() {
            return Err(insecure("not a directory".into()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(insecure(format!(
                "group or others may write to it (mode {:o}); chmod 700 it",
                meta.mode() & 0o7777
            )));
        }
        // std has no geteuid(); a file this process creates is owned by its effective
        // uid, and creating one also proves the directory is writable.
        let probe = self.temp_path("owner-probe");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(|e| io_error("writing to it", e))?;
        let ours = file.metadata().map(|m| m.uid());
        drop(file);
        let _ = fs::remove_file(&probe);
        let ours = ours.map_err(|e| io_error("reading a probe file's metadata", e))?;
        if meta.uid() != ours {
            return Err(insecure(format!("owned by uid {}, this process runs as uid {ours}", meta.uid())));
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn check_directory(&self) -> Result<(), CacheError> {
        let meta = fs::metadata(&self.dir).map_err(|source| CacheError::Io {
            path: self.dir.clone(),
            action: "reading its metadata",
            source,
        })?;
        if !meta.is_dir() {
            return Err(CacheError::Insecure { path: self.dir.clone(), reason: "not a directory".into() });
        }
        Ok(())
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".{what}.{}.{n}.tmp", std::process::id()))
    }

    fn store(
        &self,
        path: &Path,
        key: &str,
        sha256: &[u8; 32],
        engine_hash: &[u8; ENGINE_HASH_LEN],
        artifact: &[u8],
    ) -> io::Result<()> {
        let temp = self.temp_path(key);
        let written = (|| {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temp)?;
            file.write_all(&header(sha256, engine_hash, artifact))?;
            file.write_all(artifact)?;
            // Durable before it becomes visible: a crash must not leave a named entry
            // whose blocks never reached the disk.
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        // Makes the rename itself durable; the entry is already usable if this fails.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Deletes the least recently used entries (by mtime; hits touch it) beyond
    /// `max_entries`, never `keep`, and temp files abandoned by dead writers. Best
    /// effort: another process may be evicting the same files.
    fn evict(&self, keep: &Path) {
        let Ok(dir) = fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                if now.duration_since(modified).is_ok_and(|age| age > STALE_TEMP_AGE) {
                    let _ = fs::remove_file(entry.path());
                }
            } else if name.ends_with(&format!(".{EXTENSION}")) {
                entries.push((modified, entry.path()));
            }
        }
        if entries.len() <= self.max_entries {
            return;
        }
        entries.sort();
        let excess = entries.len() - self.max_entries;
        for (_, path) in entries.iter().filter(|(_, path)| path != keep).take(excess) {
            let _ = fs::remove_file(path);
        }
    }
}

fn entry_key(wasm_sha256: &[u8; 32], engine_hash: &[u8; ENGINE_HASH_LEN]) -> String {
    format!("{}-{}", hex::encode(wasm_sha256), hex::encode(engine_hash))
}

/// SHA-256 of the engine's compatibility hash, truncated: `precompile_compatibility_hash`
/// only offers `Hash`, and std's hashers are not promised stable across builds.
fn engine_hash(engine: &Engine) -> [u8; ENGINE_HASH_LEN] {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    let mut out = [0; ENGINE_HASH_LEN];
    out.copy_from_slice(&digest[..ENGINE_HASH_LEN]);
    out
}

/// Feeds `Hash` output into SHA-256.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

fn header(sha256: &[u8; 32], engine_hash: &[u8; ENGINE_HASH_LEN], artifact: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(sha256);
    h.extend_from_slice(engine_hash);
    h.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
    h.extend_from_slice(&Sha256::digest(artifact));
    debug_assert_eq!(h.len(), HEADER_LEN);
    h
}

/// The artifact of a cache file, if its header is ours, matches the key and checks out.
fn verify<'a>(
    bytes: &'a [u8],
    sha256: &[u8; 32],
    engine_hash: &[u8; ENGINE_HASH_LEN],
) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("truncated: {} bytes, shorter than the header", bytes.len()));
    }
    let (header, artifact) = bytes.split_at(HEADER_LEN);
    let (magic, rest) = header.split_at(8);
    if magic != MAGIC {
        return Err("not a burrow cache entry (bad magic)".into());
    }
    let (format, rest) = rest.split_at(4);
    let format = u32::from_le_bytes(format.try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(format!("entry format {format}, expected {FORMAT}"));
    }
    let (_reserved, rest) = rest.split_at(4);
    let (wasm_hash, rest) = rest.split_at(32);
    if wasm_hash != sha256 {
        return Err("the entry was compiled from other wasm".into());
    }
    let (entry_engine, rest) = rest.split_at(ENGINE_HASH_LEN);
    if entry_engine != engine_hash {
        return Err("the entry was compiled for another engine configuration".into());
    }
    let (len, digest) = rest.split_at(8);
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if len != artifact.len() as u64 {
        return Err(format!("truncated: the header promises {len} artifact bytes, found {}", artifact.len()));
    }
    if Sha256::digest(artifact).as_slice() != digest {
        return Err("checksum mismatch: the artifact is corrupt".into());
    }
    Ok(artifact)
}

/// Marks an entry recently used for eviction. Failure only makes eviction less accurate.
fn touch(path: &Path) {
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests;
