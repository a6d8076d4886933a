//! The node's cache: compiled wasm, and the wasm layers of images read from
//! containerd. A compiled entry is keyed by the sha256 of the wasm (for a
//! wasm layer, its digest) and the engine's compatibility hash, so an engine
//! upgrade simply misses. Entries are written atomically with a checksum
//! beside them; one whose checksum does not match is rebuilt, never loaded.
//! The check reads the whole entry once per boot (see digests.rs), so the
//! cache must be on a local filesystem. A lock
//! file per entry makes concurrent first starts compile once, and the least
//! recently used entries go when the cache outgrows its size limit.

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmtime::Engine;

use crate::digests::{self, Digests};

/// Where the cache lives unless `WASMLET_CACHE_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmlet/cache";
/// How big the cache may grow unless `WASMLET_CACHE_MAX_BYTES` says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
pub const DIR_ENV: &str = "WASMLET_CACHE_DIR";
pub const MAX_BYTES_ENV: &str = "WASMLET_CACHE_MAX_BYTES";

/// Wasm layers live in this subdirectory; compiled code in one per engine.
const LAYERS: &str = "layers";

/// What happened to a lookup, for the shim log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// The entry failed its checksum (truncated, corrupt) and was rebuilt.
    Rebuilt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Cache { dir: dir.into(), max_bytes }
    }

    /// The cache the environment names (containerd's, passed down).
    pub fn from_env() -> Result<Self> {
        Cache::configured(None, None)
    }

    /// The cache with this directory and limit, each from the environment
    /// (then the default) where not given.
    pub fn configured(dir: Option<PathBuf>, max_bytes: Option<u64>) -> Result<Self> {
        let dir = dir.or_else(|| std::env::var_os(DIR_ENV).map(PathBuf::from)).unwrap_or_else(|| DEFAULT_DIR.into());
        let max_bytes = match (max_bytes, std::env::var(MAX_BYTES_ENV)) {
            (Some(max), _) => max,
            (None, Ok(text)) => text.parse().with_context(|| format!("{MAX_BYTES_ENV}={text} is not a number of bytes"))?,
            (None, Err(_)) => DEFAULT_MAX_BYTES,
        };
        Ok(Cache::new(dir, max_bytes))
    }

    /// The environment that hands this cache to an instance process.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [(DIR_ENV, self.dir.display().to_string()), (MAX_BYTES_ENV, self.max_bytes.to_string())]
    }

    /// Returns the path of a verified compiled artifact for the wasm whose
    /// sha256 is `key`, compiling it with `compile` when the cache has no
    /// sound entry.
    pub fn artifact(&self, engine: &Engine, key: &str, compile: impl FnOnce() -> Result<Vec<u8>>) -> Result<(PathBuf, Outcome)> {
        let dir = self.dir.join(engine_key(engine));
        let artifact = dir.join(format!("{key}.cwasm"));
        let checksum = dir.join(format!("{key}.sha256"));
        let digests = Digests::of_this_boot(&self.dir);
        if verify(&artifact, &checksum, &digests).unwrap_or(false) {
            // The checksum file keeps the time of use: touching the
            // artifact would change its identity and cost a hash.
            touch(&checksum);
            return Ok((artifact, Outcome::Hit));
        }
        fs::create_dir_all(&dir).with_context(|| format!("create cache directory {}", dir.display()))?;
        // Whoever holds the lock compiles; the others wait and then load.
        let _lock = lock(&dir.join(format!("{key}.lock")))?;
        let outcome = match verify(&artifact, &checksum, &digests) {
            Ok(true) => {
                touch(&checksum);
                return Ok((artifact, Outcome::Hit));
            }
            Ok(false) => Outcome::Rebuilt,
            Err(_) => Outcome::Miss,
        };
        let compiled = compile()?;
        let digest = hex::encode(Sha256::digest(&compiled));
        write_atomically(&artifact, |file| file.write_all(&compiled))?;
        write_atomically(&checksum, |file| file.write_all(digest.as_bytes()))?;
        if let Ok(file) = File::open(&artifact) {
            digests.remember(&file, &digest);
        }
        self.evict(&artifact);
        Ok((artifact, outcome))
    }

    /// The node's copy of the wasm layer whose sha256 is `key`, written by
    /// `write` unless it is there already.
    pub fn layer(&self, key: &str, write: impl FnOnce(&mut File) -> Result<()>) -> Result<PathBuf> {
        let path = self.dir.join(LAYERS).join(format!("{key}.wasm"));
        if path.is_file() {
            touch(&path);
            return Ok(path);
        }
        fs::create_dir_all(self.dir.join(LAYERS)).with_context(|| format!("create cache directory {}", self.dir.display()))?;
        write_atomically(&path, write)?;
        self.evict(&path);
        Ok(path)
    }

    /// Removes the least recently used entries until the cache fits its
    /// limit, never `keep` (the entry just made). Running instances keep
    /// the code they mapped: unlinking a file does not unmap it.
    fn evict(&self, keep: &Path) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        entries.sort_by_key(|e| e.used);
        for entry in entries {
            if total <= self.max_bytes {
                break;
            }
            if entry.files[0] == keep {
                continue;
            }
            for file in &entry.files {
                let _ = fs::remove_file(file);
            }
            total -= entry.bytes;
            info!(entry = %entry.files[0].display(), "cache over {} bytes: removed its least recently used entry", self.max_bytes);
        }
    }

    /// Every entry: a layer, or a compiled artifact with its checksum and lock.
    fn entries(&self) -> Vec<Entry> {
        let Ok(subdirs) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut entries = Vec::new();
        for subdir in subdirs.flatten().map(|d| d.path()).filter(|d| !digests::is_memo(d)) {
            let Ok(files) = fs::read_dir(&subdir) else { continue };
            for main in files.flatten().map(|f| f.path()) {
                let extension = main.extension().and_then(|e| e.to_str());
                let companions: &[&str] = match extension {
                    Some("wasm") => &[],
                    Some("cwasm") => &["sha256", "lock"],
                    _ => continue,
                };
                let files: Vec<PathBuf> =
                    std::iter::once(main.clone()).chain(companions.iter().map(|ext| main.with_extension(ext))).collect();
                let metas: Vec<fs::Metadata> = files.iter().filter_map(|f| fs::metadata(f).ok()).collect();
                let bytes = metas.iter().map(|m| m.len()).sum();
                // Use touches a compiled entry's checksum, a layer itself.
                let used = metas.iter().filter_map(|m| m.modified().ok()).max().unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push(Entry { files, bytes, used });
            }
        }
        entries
    }
}

struct Entry {
    /// The entry's main file first.
    files: Vec<PathBuf>,
    bytes: u64,
    used: SystemTime,
}

/// Marks an entry as used now, for least-recently-used eviction.
fn touch(path: &Path) {
    if let Err(err) = File::options().append(true).open(path).and_then(|f| f.set_modified(SystemTime::now())) {
        warn!("mark {} as used: {err}", path.display());
    }
}

/// Holds an exclusive lock on `path` until the returned guard is dropped.
fn lock(path: &Path) -> Result<Flock<File>> {
    let file = File::options().create(true).truncate(false).write(true).open(path).with_context(|| format!("open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno).with_context(|| format!("lock {}", path.display()))
}

/// A short, stable name for the engine's compatibility hash.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Ok(true): sound entry; Ok(false): present but corrupt; Err: absent or unreadable.
fn verify(artifact: &Path, checksum: &Path, digests: &Digests) -> std::io::Result<bool> {
    let expected = fs::read_to_string(checksum)?;
    let actual = digests.sha256(&File::open(artifact)?)?;
    Ok(expected.trim() == actual)
}

/// Writes through a temporary file in the same directory and renames it into
/// place, so that a reader never sees a half-written entry.
fn write_atomically<E: Into<anyhow::Error>>(target: &Path, write: impl FnOnce(&mut File) -> std::result::Result<(), E>) -> Result<()> {
    let dir = target.parent().context("a cache entry has a directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("create a file in {}", dir.display()))?;
    write(tmp.as_file_mut()).map_err(Into::into).with_context(|| format!("write {}", target.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("write {}", target.display()))?;
    tmp.persist(target).with_context(|| format!("rename into {}", target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const WAT: &str = r#"(module (func (export "_start")))"#;

    fn wasm() -> (Vec<u8>, String) {
        let wasm = wat::parse_str(WAT).unwrap();
        let key = hex::encode(Sha256::digest(&wasm));
        (wasm, key)
    }

    fn compile(engine: &Engine, wasm: &[u8]) -> Result<Vec<u8>> {
        Ok(engine.precompile_module(wasm)?)
    }

    fn unbounded(dir: &Path) -> Cache {
        Cache::new(dir, u64::MAX)
    }

    /// A fresh unbounded cache, the default engine and a small module.
    struct Fixture {
        _dir: tempfile::TempDir,
        cache: Cache,
        engine: Engine,
        wasm: Vec<u8>,
        key: String,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (wasm, key) = wasm();
            Fixture { cache: unbounded(dir.path()), _dir: dir, engine: Engine::default(), wasm, key }
        }

        /// Looks the module up, compiling it if the cache has no sound entry.
        fn lookup(&self) -> (PathBuf, Outcome) {
            self.cache.artifact(&self.engine, &self.key, || compile(&self.engine, &self.wasm)).unwrap()
        }

        /// Looks the module up, failing the test if it compiles.
        fn hit(&self) -> (PathBuf, Outcome) {
            self.cache.artifact(&self.engine, &self.key, || panic!("compiled twice")).unwrap()
        }
    }

    #[test]
    fn second_lookup_compiles_nothing() {
        let f = Fixture::new();
        let (path, first) = f.lookup();
        assert_eq!(first, Outcome::Miss);
        assert_eq!(f.hit(), (path.clone(), Outcome::Hit));
        unsafe { wasmtime::Module::deserialize_file(&f.engine, &path) }.unwrap();
    }

    #[test]
    fn a_hit_marks_the_checksum_not_the_artifact() {
        let f = Fixture::new();
        let (path, _) = f.lookup();
        let modified = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        let (artifact_before, checksum_before) = (modified(&path), modified(&path.with_extension("sha256")));
        std::thread::sleep(Duration::from_millis(20));
        f.hit();
        // The artifact keeps its identity, so the memo spares the next hash.
        assert_eq!(modified(&path), artifact_before);
        assert!(modified(&path.with_extension("sha256")) > checksum_before);
    }

    #[test]
    fn concurrent_first_lookups_compile_once() {
        let f = Fixture::new();
        let compiles = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    f.cache
                        .artifact(&f.engine, &f.key, || {
                            compiles.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            compile(&f.engine, &f.wasm)
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(compiles.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn truncated_or_corrupt_entries_are_rebuilt() {
        let f = Fixture::new();
        let (path, _) = f.lookup();
        let good = fs::read(&path).unwrap();

        fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert_eq!(f.lookup().1, Outcome::Rebuilt);

        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        fs::write(&path, &flipped).unwrap();
        assert_eq!(f.lookup().1, Outcome::Rebuilt);
        assert_eq!(fs::read(&path).unwrap(), good);
    }

    #[test]
    fn other_engine_settings_use_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = unbounded(dir.path());
        let (wasm, key) = wasm();
        let plain = Engine::default();
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&config).unwrap();
        let (a, _) = cache.artifact(&plain, &key, || compile(&plain, &wasm)).unwrap();
        let (b, outcome) = cache.artifact(&other, &key, || compile(&other, &wasm)).unwrap();
        assert_ne!(a, b);
        assert_eq!(outcome, Outcome::Miss);
    }

    #[test]
    fn a_layer_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = unbounded(dir.path());
        let path = cache.layer("abc", |file| Ok(file.write_all(b"\0asm")?)).unwrap();
        let again = cache.layer("abc", |_| panic!("written twice")).unwrap();
        assert_eq!((fs::read(&path).unwrap(), again), (b"\0asm".to_vec(), path));
        let failed = cache.layer("def", |_| anyhow::bail!("digest mismatch"));
        assert!(format!("{:#}", failed.unwrap_err()).contains("digest mismatch"));
        assert!(!dir.path().join(LAYERS).join("def.wasm").exists());
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 25);
        let write = |key: &str| cache.layer(key, |file| Ok(file.write_all(&[0; 10])?)).unwrap();
        let (a, b) = (write("a"), write("b"));
        // a is used after b, so b is the least recently used when c comes.
        std::thread::sleep(Duration::from_millis(20));
        write("a");
        let c = write("c");
        assert_eq!((a.exists(), b.exists(), c.exists()), (true, false, true));
    }
}
