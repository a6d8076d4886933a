//! The node's cache of compiled wasm. An entry is keyed by the sha256 of the
//! wasm and the engine's compatibility hash, so an engine upgrade simply
//! misses. Entries are written atomically with a checksum beside them; an
//! entry whose checksum does not match is rebuilt, never loaded.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;

/// Where compiled code lives unless `WASMLET_CACHE_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmlet/cache";

/// What happened to a lookup, for the shim log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// The entry failed its checksum (truncated, corrupt) and was rebuilt.
    Rebuilt,
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    pub fn from_env() -> Self {
        Cache::new(std::env::var_os("WASMLET_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_DIR.into()))
    }

    /// Returns the path of a verified compiled artifact for `wasm`, compiling
    /// it with `compile` when the cache has no sound entry.
    pub fn artifact(
        &self,
        engine: &Engine,
        wasm: &[u8],
        compile: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<(PathBuf, Outcome)> {
        let dir = self.dir.join(engine_key(engine));
        let name = hex::encode(Sha256::digest(wasm));
        let artifact = dir.join(format!("{name}.cwasm"));
        let checksum = dir.join(format!("{name}.sha256"));
        let outcome = match verify(&artifact, &checksum) {
            Ok(true) => return Ok((artifact, Outcome::Hit)),
            Ok(false) => Outcome::Rebuilt,
            Err(_) => Outcome::Miss,
        };
        let compiled = compile()?;
        fs::create_dir_all(&dir).with_context(|| format!("create cache directory {}", dir.display()))?;
        write_atomically(&dir, &artifact, &compiled)?;
        write_atomically(&dir, &checksum, hex::encode(Sha256::digest(&compiled)).as_bytes())?;
        Ok((artifact, outcome))
    }
}

/// A short, stable name for the engine's compatibility hash.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Ok(true): sound entry; Ok(false): present but corrupt; Err: absent or unreadable.
fn verify(artifact: &Path, checksum: &Path) -> std::io::Result<bool> {
    let expected = fs::read_to_string(checksum)?;
    let actual = hex::encode(Sha256::digest(fs::read(artifact)?));
    Ok(expected.trim() == actual)
}

/// Writes through a temporary file in the same directory and renames it into
/// place, so that a reader never sees a half-written entry.
fn write_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("create a file in {}", dir.display()))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).with_context(|| format!("write {}", target.display()))?;
    tmp.persist(target).with_context(|| format!("rename into {}", target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "_start")))"#;

    fn compile(engine: &Engine, wasm: &[u8]) -> Result<Vec<u8>> {
        Ok(engine.precompile_module(wasm)?)
    }

    #[test]
    fn second_lookup_compiles_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let engine = Engine::default();
        let wasm = wat::parse_str(WAT).unwrap();
        let (path, first) = cache.artifact(&engine, &wasm, || compile(&engine, &wasm)).unwrap();
        assert_eq!(first, Outcome::Miss);
        let (again, second) = cache.artifact(&engine, &wasm, || panic!("compiled twice")).unwrap();
        assert_eq!((again, second), (path.clone(), Outcome::Hit));
        unsafe { wasmtime::Module::deserialize_file(&engine, &path) }.unwrap();
    }

    #[test]
    fn truncated_or_corrupt_entries_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let engine = Engine::default();
        let wasm = wat::parse_str(WAT).unwrap();
        let (path, _) = cache.artifact(&engine, &wasm, || compile(&engine, &wasm)).unwrap();
        let good = fs::read(&path).unwrap();

        fs::write(&path, &good[..good.len() / 2]).unwrap();
        let (_, outcome) = cache.artifact(&engine, &wasm, || compile(&engine, &wasm)).unwrap();
        assert_eq!(outcome, Outcome::Rebuilt);

        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        fs::write(&path, &flipped).unwrap();
        let (_, outcome) = cache.artifact(&engine, &wasm, || compile(&engine, &wasm)).unwrap();
        assert_eq!(outcome, Outcome::Rebuilt);
        assert_eq!(fs::read(&path).unwrap(), good);
    }

    #[test]
    fn other_engine_settings_use_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let wasm = wat::parse_str(WAT).unwrap();
        let plain = Engine::default();
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&config).unwrap();
        let (a, _) = cache.artifact(&plain, &wasm, || compile(&plain, &wasm)).unwrap();
        let (b, outcome) = cache.artifact(&other, &wasm, || compile(&other, &wasm)).unwrap();
        assert_ne!(a, b);
        assert_eq!(outcome, Outcome::Miss);
    }
}
