use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime::{Config, Store};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!(
            "burrow-cache-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TestDir(path)
    }

    fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The empty component `(component)` plus a custom section, so each `tag` is a
/// distinct, valid component with its own sha256.
fn component(tag: &str) -> (Vec<u8>, [u8; 32]) {
    assert!(tag.len() < 100, "single-byte LEB128 sizes below");
    let name = b"burrow-test";
    let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
    wasm.push(0); // custom section
    wasm.push((1 + name.len() + tag.len()) as u8);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(tag.as_bytes());
    let sha = Sha256::digest(&wasm).into();
    (wasm, sha)
}

fn engine() -> Engine {
    Engine::new(&Config::new()).unwrap()
}

/// The component is real: it instantiates.
fn instantiate(engine: &Engine, component: &Component) {
    let mut store = Store::new(engine, ());
    Linker::<()>::new(engine).instantiate(&mut store, component).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn entry_path(cache: &ArtifactCache, engine: &Engine, sha: &[u8; 32]) -> PathBuf {
    cache.dir().join(format!("{}.cwasm", ArtifactCache::key(engine, sha)))
}

#[test]
fn miss_then_hit_across_instances() {
    let tmp = TestDir::new();
    let engine = engine();
    let (wasm, sha) = component("a");
    let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();

    let (c, outcome) = cache.load_or_compile(&engine, &sha, &wasm).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    instantiate(&engine, &c);
    let path = entry_path(&cache, &engine, &sha);
    assert_eq!(entries(cache.dir()), [path.file_name().unwrap().to_str().unwrap()]);

    let (c, outcome) = cache.load_or_compile(&engine, &sha, &wasm).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    instantiate(&engine, &c);

    // A restart: new engine with the same config, new cache handle.
    let engine2 = self::engine();
    let cache2 = ArtifactCache::open(&tmp.cache(), 8).unwrap();
    let (c, outcome) = cache2.load_or_compile(&engine2, &sha, &wasm).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    instantiate(&engine2, &c);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn key_is_stable_and_covers_engine_config() {
    let (_, sha) = component("a");
    let key = ArtifactCache::key(&engine(), &sha);
    assert_eq!(key, ArtifactCache::key(&engine(), &sha));
    let (wasm_hex, engine_hex) = key.split_once('-').unwrap();
    assert_eq!(wasm_hex, hex::encode(sha));
    assert_eq!(engine_hex.len(), 2 * ENGINE_HASH_LEN);

    let mut fuel = Config::new();
    fuel.consume_fuel(true);
    let fuel_engine = Engine::new(&fuel).unwrap();
    assert_ne!(key, ArtifactCache::key(&fuel_engine, &sha));

    // So an engine with another config compiles its own entry beside ours.
    let tmp = TestDir::new();
    let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();
    let (wasm, sha) = component("a");
    assert_eq!(cache.load_or_compile(&engine(), &sha, &wasm).unwrap().1, CacheOutcome::Miss);
    let (c, outcome) = cache.load_or_compile(&fuel_engine, &sha, &wasm).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    instantiate(&fuel_engine, &c);
    assert_eq!(entries(cache.dir()).len(), 2);
}

#[test]
fn bad_entries_are_replaced() {
    let tmp = TestDir::new();
    let engine = engine();
    let (wasm, sha) = component("a");
    let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();
    assert_eq!(cache.load_or_compile(&engine, &sha, &wasm).unwrap().1, CacheOutcome::Miss);
    let path = entry_path(&cache, &engine, &sha);
    let good = fs::read(&path).unwrap();

    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0xff;
    let mut wrong_wasm = good.clone();
    wrong_wasm[16] ^= 1;
    let mut wrong_engine = good.clone();
    wrong_engine[48] ^= 1;
    let mut wrong_format = good.clone();
    wrong_format[8] = 9;
    // Our header (as if written by a build whose engine hash collided) around an
    // artifact compiled with another config: wasmtime's own check refuses it.
    let mut fuel = Config::new();
    fuel.consume_fuel(true);
    let foreign_artifact = Engine::new(&fuel).unwrap().precompile_component(&wasm).unwrap();
    let mut forged = header(&sha, &engine_hash(&engine), &foreign_artifact);
    forged.extend_from_slice(&foreign_artifact);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bit flip", flipped, "checksum mismatch"),
        ("truncated artifact", good[..good.len() - 100].to_vec(), "truncated: the header promises"),
        ("truncated header", good[..50].to_vec(), "truncated: 50 bytes"),
        ("empty", vec![], "truncated: 0 bytes"),
        (
            "foreign",
            b"#!/bin/sh\necho hello, this is not an artifact at all, not even close to one\n".repeat(3),
            "bad magic",
        ),
        ("raw wasmtime artifact", good[HEADER_LEN..].to_vec(), "bad magic"),
        ("other wasm", wrong_wasm, "other wasm"),
        ("other engine", wrong_engine, "another engine configuration"),
        ("other format", wrong_format, "entry format 9"),
        ("refused by wasmtime", forged, "wasmtime refused the cached artifact"),
    ];
    for (case, bytes, expected) in cases {
        fs::write(&path, &bytes).unwrap();
        let (c, outcome) = cache.load_or_compile(&engine, &sha, &wasm).unwrap();
        match outcome {
            CacheOutcome::Replaced { reason } => assert!(reason.contains(expected), "{case}: {reason}"),
            other => panic!("{case}: {other:?}"),
        }
        instantiate(&engine, &c);
        assert_eq!(fs::read(&path).unwrap().len(), good.len(), "{case}: rewritten whole");
        assert_eq!(cache.load_or_compile(&engine, &sha, &wasm).unwrap().1, CacheOutcome::Hit, "{case}");
    }

    // An entry that is a directory cannot be read or replaced: compiled, not cached.
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let (c, outcome) = cache.load_or_compile(&engine, &sha, &wasm).unwrap();
    assert!(matches!(outcome, CacheOutcome::Uncached { .. }), "{outcome:?}");
    instantiate(&engine, &c);
}

#[test]
fn evicts_least_recently_used() {
    let tmp = TestDir::new();
    let engine = engine();
    let cache = ArtifactCache::open(&tmp.cache(), 2).unwrap();
    let (a, sha_a) = component("a");
    let (b, sha_b) = component("b");
    let (c, sha_c) = component("c");
    assert_eq!(cache.load_or_compile(&engine, &sha_a, &a).unwrap().1, CacheOutcome::Miss);
    assert_eq!(cache.load_or_compile(&engine, &sha_b, &b).unwrap().1, CacheOutcome::Miss);

    // Pin the clock: a was stored first, b second; then a is used again.
    let set_mtime = |sha: &[u8; 32], ago: u64| {
        let file = OpenOptions::new().write(true).open(entry_path(&cache, &engine, sha)).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(ago)).unwrap();
    };
    set_mtime(&sha_a, 300);
    set_mtime(&sha_b, 200);
    assert_eq!(cache.load_or_compile(&engine, &sha_a, &a).unwrap().1, CacheOutcome::Hit);

    // Debris of a writer that died long ago goes; a live writer's temp file stays.
    let stale = cache.dir().join(".dead.1.0.tmp");
    let live = cache.dir().join(".live.2.0.tmp");
    fs::write(&stale, b"partial").unwrap();
    fs::write(&live, b"partial").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - 2 * STALE_TEMP_AGE)
        .unwrap();

    assert_eq!(cache.load_or_compile(&engine, &sha_c, &c).unwrap().1, CacheOutcome::Miss);
    let mut expected = vec![
        ".live.2.0.tmp".to_string(),
        format!("{}.cwasm", ArtifactCache::key(&engine, &sha_a)),
        format!("{}.cwasm", ArtifactCache::key(&engine, &sha_c)),
    ];
    expected.sort();
    assert_eq!(entries(cache.dir()), expected, "b, the least recently used, was evicted");
    assert_eq!(cache.load_or_compile(&engine, &sha_b, &b).unwrap().1, CacheOutcome::Miss);
}

#[test]
fn refuses_insecure_directories() {
    assert!(matches!(ArtifactCache::open(Path::new("/nonexistent-ok"), 0), Err(CacheError::NoCapacity)));

    let tmp = TestDir::new();
    fs::create_dir_all(tmp.cache()).unwrap();
    let file = tmp.0.join("file");
    fs::write(&file, b"x").unwrap();
    let err = ArtifactCache::open(&file, 8).unwrap_err();
    assert!(matches!(err, CacheError::Io { .. } | CacheError::Insecure { .. }), "{err}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp.cache();
        for mode in [0o777, 0o770, 0o702] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = ArtifactCache::open(&dir, 8).unwrap_err();
            assert!(matches!(err, CacheError::Insecure { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("group or others may write"), "{err}");
        }
        // Readable by others is the admin's choice; writable is not.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ArtifactCache::open(&dir, 8).unwrap();
        assert_eq!(entries(&dir), Vec::<String>::new(), "the owner probe is cleaned up");

        // Another user's directory: only root can set that up, so only root checks it.
        match std::os::unix::fs::chown(&dir, Some(65534), Some(65534)) {
            Ok(()) => {
                let err = ArtifactCache::open(&dir, 8).unwrap_err();
                assert!(err.to_string().contains("owned by uid 65534"), "{err}");
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
    }
}

#[test]
fn cache_failures_do_not_fail_loads() {
    let tmp = TestDir::new();
    let engine = engine();
    let (wasm, sha) = component("a");
    let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();
    fs::remove_dir_all(cache.dir()).unwrap();
    let (c, outcome) = cache.load_or_compile(&engine, &sha, &wasm).unwrap();
    match outcome {
        CacheOutcome::Uncached { reason } => assert!(reason.contains("storing"), "{reason}"),
        other => panic!("{other:?}"),
    }
    instantiate(&engine, &c);

    // Invalid wasm is the one real error, and leaves nothing behind.
    let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();
    let junk = b"\0asm\x0d\0\x01\0\xff\xff".to_vec();
    let junk_sha: [u8; 32] = Sha256::digest(&junk).into();
    let err = cache.load_or_compile(&engine, &junk_sha, &junk).unwrap_err();
    assert!(matches!(err, CacheError::Compile { .. }), "{err}");
    assert!(err.to_string().starts_with("compiling the component: "), "{err}");
    assert_eq!(entries(cache.dir()), Vec::<String>::new());
}

#[test]
fn concurrent_writers_of_one_key() {
    let tmp = TestDir::new();
    let engine = engine();
    let (wasm, sha) = component("shared");
    let wasm = Arc::new(wasm);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            // Separate handles, as separate processes would have.
            let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();
            let (engine, wasm) = (engine.clone(), wasm.clone());
            std::thread::spawn(move || {
                let (c, outcome) = cache.load_or_compile(&engine, &sha, &wasm).unwrap();
                instantiate(&engine, &c);
                outcome
            })
        })
        .collect();
    for t in threads {
        let outcome = t.join().unwrap();
        assert!(matches!(outcome, CacheOutcome::Miss | CacheOutcome::Hit), "{outcome:?}");
    }
    let cache = ArtifactCache::open(&tmp.cache(), 8).unwrap();
    assert_eq!(entries(cache.dir()), [format!("{}.cwasm", ArtifactCache::key(&engine, &sha))]);
    assert_eq!(cache.load_or_compile(&engine, &sha, &wasm).unwrap().1, CacheOutcome::Hit);
}
