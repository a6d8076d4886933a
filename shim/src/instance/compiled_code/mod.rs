//! The one place that trusts compiled code: looking up a `.cwasm` in the
//! node cache, verifying it, compiling it on a miss, and mapping it.
//!
//! # The unsafe contract
//! wasmtime's `deserialize` maps a file as native code and runs it with no
//! check of its own beyond a header; it is sound only for bytes that the
//! same wasmtime compiled with compatible settings and that nobody changed
//! since. Here that holds because:
//! - entries are written only by [`lookup`], compiled by the engine whose
//!   compatibility hash names their directory, through a temporary file
//!   renamed into place (never rewritten in place), with their sha256 in a
//!   checksum file beside them;
//! - an entry is mapped only after its sha256 matched that checksum (this
//!   boot's memo in digests.rs spares hashing a file whose identity did not
//!   change), and one that does not match is rebuilt, never loaded;
//! - [`Verified`] is the proof of both: only [`lookup`] makes one, and only
//!   it deserializes, into an engine of the same compilation settings
//!   (wasmtime refuses others by their header).

mod digests;

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::shared::node_cache::{self, NodeCache};
use digests::Digests;

/// What happened to a lookup, for the shim log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// The entry failed its checksum (truncated, corrupt) and was rebuilt.
    Rebuilt,
}

/// A compiled entry that passed its checksum this boot.
#[derive(Debug)]
pub struct Verified {
    path: PathBuf,
}

/// The verified compiled code for the wasm whose sha256 is `key`, compiled
/// by `compile` (under the entry's lock, so concurrent first starts compile
/// once) when the cache has no sound entry.
pub fn lookup(cache: &NodeCache, engine: &Engine, key: &str, compile: impl FnOnce() -> Result<Vec<u8>>) -> Result<(Verified, Outcome)> {
    let dir = cache.compiled_dir(&engine_hash(engine));
    let artifact = dir.join(format!("{key}.cwasm"));
    let checksum = dir.join(format!("{key}.sha256"));
    let digests = Digests::of_this_boot(cache);
    let hit = |path: PathBuf| {
        // The checksum file keeps the time of use: touching the artifact
        // would change its identity and cost a hash.
        node_cache::touch(&checksum);
        Ok((Verified { path }, Outcome::Hit))
    };
    if verify(&artifact, &checksum, &digests).unwrap_or(false) {
        return hit(artifact);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create cache directory {}", dir.display()))?;
    // Whoever holds the lock compiles; the others wait and then load.
    let _lock = node_cache::lock(&dir.join(format!("{key}.lock")))?;
    let outcome = match verify(&artifact, &checksum, &digests) {
        Ok(true) => return hit(artifact),
        Ok(false) => Outcome::Rebuilt,
        Err(_) => Outcome::Miss,
    };
    let compiled = compile()?;
    let digest = hex::encode(Sha256::digest(&compiled));
    node_cache::write_atomically(&artifact, |file| file.write_all(&compiled))?;
    node_cache::write_atomically(&checksum, |file| file.write_all(digest.as_bytes()))?;
    if let Ok(file) = File::open(&artifact) {
        digests.remember(&file, &digest);
    }
    cache.evict(&artifact);
    Ok((Verified { path: artifact }, outcome))
}

impl Verified {
    /// Maps the entry as a core module of `engine` (`name` for errors).
    pub fn module(&self, engine: &Engine, name: &str) -> Result<Module> {
        // Safety: see the module's contract; `self` proves the entry sound.
        self.map(name, |path| unsafe { Module::deserialize_file(engine, path) })
    }

    /// Maps the entry as a component of `engine` (`name` for errors).
    pub fn component(&self, engine: &Engine, name: &str) -> Result<Component> {
        // Safety: as for `module`.
        self.map(name, |path| unsafe { Component::deserialize_file(engine, path) })
    }

    fn map<T>(&self, name: &str, deserialize: impl FnOnce(&Path) -> wasmtime::Result<T>) -> Result<T> {
        deserialize(&self.path).map_err(anyhow::Error::from).with_context(|| format!("load compiled {name} from {}", self.path.display()))
    }
}

/// A short, stable name for the engine's compatibility hash.
fn engine_hash(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Ok(true): sound entry; Ok(false): present but corrupt; Err: absent or unreadable.
fn verify(artifact: &Path, checksum: &Path, digests: &Digests) -> std::io::Result<bool> {
    let expected = std::fs::read_to_string(checksum)?;
    let actual = digests.sha256(&File::open(artifact)?)?;
    Ok(expected.trim() == actual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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

    /// A fresh unbounded cache, the default engine and a small module.
    struct Fixture {
        _dir: tempfile::TempDir,
        cache: NodeCache,
        engine: Engine,
        wasm: Vec<u8>,
        key: String,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (wasm, key) = wasm();
            Fixture { cache: NodeCache::new(dir.path(), u64::MAX), _dir: dir, engine: Engine::default(), wasm, key }
        }

        /// Looks the module up, compiling it if the cache has no sound entry.
        fn lookup(&self) -> (PathBuf, Outcome) {
            let (verified, outcome) = lookup(&self.cache, &self.engine, &self.key, || compile(&self.engine, &self.wasm)).unwrap();
            (verified.path, outcome)
        }

        /// Looks the module up, failing the test if it compiles.
        fn hit(&self) -> (PathBuf, Outcome) {
            let (verified, outcome) = lookup(&self.cache, &self.engine, &self.key, || panic!("compiled twice")).unwrap();
            (verified.path, outcome)
        }
    }

    #[test]
    fn second_lookup_compiles_nothing_and_maps() {
        let f = Fixture::new();
        let (path, first) = f.lookup();
        assert_eq!(first, Outcome::Miss);
        assert_eq!(f.hit(), (path.clone(), Outcome::Hit));
        Verified { path }.module(&f.engine, "m").unwrap();
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
                    lookup(&f.cache, &f.engine, &f.key, || {
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
        let f = Fixture::new();
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&config).unwrap();
        let (a, _) = f.lookup();
        let (b, outcome) = lookup(&f.cache, &other, &f.key, || compile(&other, &f.wasm)).unwrap();
        assert_ne!(a, b.path);
        assert_eq!(outcome, Outcome::Miss);
    }
}
