//! Unit tests of the compiled-code cache: hits, rebuilds, symlinks, the
//! lock, stores that fail, and the two guards around mapping.

use super::*;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

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
        Fixture { cache: NodeCache::new(dir.path().join("cache"), u64::MAX), _dir: dir, engine: Engine::default(), wasm, key }
    }

    /// Looks the module up, compiling it if the cache has no sound entry.
    fn lookup(&self) -> (PathBuf, Outcome) {
        let (verified, outcome) = self.verified();
        (verified.shown, outcome)
    }

    fn verified(&self) -> (Verified, Outcome) {
        lookup(&self.cache, &self.engine, &self.key, || compile(&self.engine, &self.wasm)).unwrap()
    }

    /// Looks the module up, failing the test if it compiles.
    fn hit(&self) -> (PathBuf, Outcome) {
        let (verified, outcome) = lookup(&self.cache, &self.engine, &self.key, || panic!("compiled twice")).unwrap();
        (verified.shown, outcome)
    }
}

/// Maps as the instance does, with no capability: in a thread of its
/// own that dropped them (capabilities are per thread).
fn map_module(verified: &Verified, engine: &Engine) -> Result<Module> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                caps::clear(None, caps::CapSet::Effective)?;
                caps::clear(None, caps::CapSet::Permitted)?;
                verified.module(engine, "m", &OwnProc::open()?)
            })
            .join()
            .unwrap()
    })
}

#[test]
fn second_lookup_compiles_nothing_and_maps() {
    let f = Fixture::new();
    let (path, first) = f.lookup();
    assert_eq!(first, Outcome::Miss);
    assert_eq!(f.hit(), (path.clone(), Outcome::Hit));
    map_module(&f.verified().0, &f.engine).unwrap();
}

#[test]
fn nothing_is_mapped_while_a_capability_is_held() {
    let f = Fixture::new();
    assert!(!caps::read(None, caps::CapSet::Permitted).unwrap().is_empty(), "the unit tests run as root");
    let err = f.verified().0.module(&f.engine, "m", &OwnProc::open().unwrap()).unwrap_err();
    assert!(format!("{err:#}").contains("mapped only once every capability is dropped"), "{err:#}");
}

#[test]
fn the_mapped_file_cannot_be_reopened_for_writing_through_proc() {
    let f = Fixture::new();
    let (verified, _) = f.verified();
    let before = fs::read(&verified.shown).unwrap();
    // What a root process beside the instance tries through /proc/PID/fd.
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&verified.file));
    for options in [fs::OpenOptions::new().append(true).clone(), fs::OpenOptions::new().write(true).truncate(true).clone()] {
        let err = options.open(&link).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    let err = nix::unistd::truncate(link.as_str(), 0).unwrap_err();
    assert_eq!(err, nix::errno::Errno::EROFS);
    assert_eq!(fs::read(&verified.shown).unwrap(), before);
    // The entry itself stays writable by the cache (root, by its name).
    assert!(fs::OpenOptions::new().append(true).open(&verified.shown).is_ok());
}

#[test]
fn the_bytes_mapped_are_those_verified_whatever_replaced_the_entry_since() {
    let f = Fixture::new();
    let (verified, _) = f.verified();
    // Another module, valid compiled code of the same engine, renamed over the entry.
    let other = compile(&f.engine, &wat::parse_str(r#"(module (func (export "other")))"#).unwrap()).unwrap();
    let swap = verified.shown.with_extension("swap");
    fs::write(&swap, other).unwrap();
    fs::rename(&swap, &verified.shown).unwrap();
    let module = map_module(&verified, &f.engine).unwrap();
    assert!(module.get_export("_start").is_some() && module.get_export("other").is_none());
}

#[test]
fn a_symlinked_entry_is_rebuilt_not_followed() {
    let f = Fixture::new();
    let (path, _) = f.lookup();
    let target = path.with_file_name("elsewhere.cwasm");
    fs::rename(&path, &target).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert_eq!(f.lookup().1, Outcome::Rebuilt);
    assert!(!fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
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
fn code_that_cannot_be_stored_runs_from_memory_and_leaves_no_entry() {
    let f = Fixture::new();
    let dir = f.cache.open().unwrap().compiled(&engine_hash(&f.engine)).unwrap();
    // A directory where the artifact goes makes the rename fail, as a full disk would the write.
    fs::create_dir(dir.path_of(&format!("{}.cwasm", f.key))).unwrap();
    let (verified, outcome) = f.verified();
    assert!(matches!(&outcome, Outcome::Uncached(why) if why.contains("could not store")), "{outcome:?}");
    map_module(&verified, &f.engine).unwrap();
    assert!(fs::read_dir(dir.path_of(".")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".sha256")));
}

#[test]
fn other_engine_settings_use_other_entries() {
    let f = Fixture::new();
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let other = Engine::new(&config).unwrap();
    let (a, _) = f.lookup();
    let (b, outcome) = lookup(&f.cache, &other, &f.key, || compile(&other, &f.wasm)).unwrap();
    assert_ne!(a, b.shown);
    assert_eq!(outcome, Outcome::Miss);
}

#[test]
fn another_feature_set_uses_other_entries() {
    use crate::shared::engine_config::{engine_config, Kind};
    let ours = Engine::new(&engine_config(Kind::Module)).unwrap();
    let mut config = engine_config(Kind::Module);
    config.wasm_exceptions(false);
    let without_exceptions = Engine::new(&config).unwrap();
    assert_ne!(engine_hash(&ours), engine_hash(&without_exceptions));
}
