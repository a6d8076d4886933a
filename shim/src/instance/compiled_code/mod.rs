//! The one place that trusts compiled code: looking up a `.cwasm` in the
//! node cache, verifying it, compiling it on a miss, and mapping it.
//!
//! # The unsafe contract
//! wasmtime's `deserialize` maps a file as native code and runs it with no
//! check of its own beyond a header; it is sound only for bytes that the
//! same wasmtime compiled with compatible settings and that nobody changed
//! since. Here that holds because:
//! - the cache is trusted only when root alone can change it, and every
//!   entry is reached through its directory's descriptor, never through a
//!   symlink (shared/node_cache.rs);
//! - entries are written only by [`lookup`], compiled for the engine whose
//!   compatibility hash names their directory, through a temporary file
//!   renamed into place (never rewritten in place), with their sha256 in a
//!   checksum file beside them;
//! - an entry is mapped only after the sha256 of the very file it was
//!   opened as matched that checksum (this boot's memo in digests.rs spares
//!   hashing a file whose identity did not change), and mapped from that
//!   open file, not by its name again; one that does not match is rebuilt;
//! - that file is opened through a read-only view of the cache's mount, so
//!   nobody who can see the instance reopens it for writing through
//!   `/proc/PID/fd` (EROFS, whatever their uid or capabilities): the pages
//!   every pod of the module maps stay as verified (what CAP_SYS_PTRACE in
//!   the pod reaches during setup is docs/security.md's known limit);
//! - it is mapped only by a process that holds no capability (`map`
//!   refuses otherwise): were the compiler subverted, its code would run
//!   with no more than the guest's own user;
//! - [`Verified`] is the proof of all this: only [`lookup`] makes one, and
//!   only it deserializes, into an engine of the same compilation settings
//!   (wasmtime refuses others by their header).

mod digests;

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::own_proc::OwnProc;
use crate::shared::node_cache::{CacheDir, NodeCache};
use digests::Digests;

/// How long a start waits for another's compile of the same wasm (a pod
/// with little CPU may take minutes) before it compiles for itself.
const COMPILE_LOCK_WAIT: Duration = Duration::from_secs(20);

/// What happened to a lookup, for the shim log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// The entry was unsound (truncated, corrupt, a symlink, not root's)
    /// and was rebuilt.
    Rebuilt,
    /// Compiled, but not stored (the disk full, the lock held too long):
    /// it runs from memory and the next start compiles again.
    Uncached(String),
}

/// A compiled entry that passed its checksum this boot, held open.
#[derive(Debug)]
pub struct Verified {
    file: File,
    shown: PathBuf,
}

/// The verified compiled code for the wasm whose sha256 is `key`, compiled
/// by `compile` (under the entry's lock, so concurrent first starts compile
/// once) when the cache has no sound entry.
pub fn lookup(cache: &NodeCache, engine: &Engine, key: &str, compile: impl FnOnce() -> Result<Vec<u8>>) -> Result<(Verified, Outcome)> {
    let root = cache.open()?;
    let dir = root.compiled(&engine_hash(engine))?;
    let view = dir.read_only_view()?;
    let (artifact, checksum) = (format!("{key}.cwasm"), format!("{key}.sha256"));
    let digests = Digests::of_this_boot(&root);
    if let Ok(Some(file)) = verify(&view, &artifact, &checksum, &digests) {
        return Ok(hit(&dir, file, &artifact, &checksum));
    }
    // Whoever holds the lock compiles; the others wait and then load.
    let Some(_lock) = dir.lock_within(&format!("{key}.lock"), COMPILE_LOCK_WAIT)? else {
        let why = format!("another start held the compile lock for {COMPILE_LOCK_WAIT:?}");
        return Ok((Verified::in_memory(&compile()?, dir.path_of(&artifact))?, Outcome::Uncached(why)));
    };
    let outcome = match verify(&view, &artifact, &checksum, &digests) {
        Ok(Some(file)) => return Ok(hit(&dir, file, &artifact, &checksum)),
        Ok(None) => Outcome::Rebuilt,
        Err(_) => Outcome::Miss,
    };
    if outcome == Outcome::Rebuilt {
        // Whatever is there (a symlink included) goes; the rename replaces it.
        dir.remove(&artifact);
    }
    let compiled = compile()?;
    let digest = hex::encode(Sha256::digest(&compiled));
    let stored = dir
        .write_atomically(&artifact, |file| file.write_all(&compiled))
        .and_then(|()| dir.write_atomically(&checksum, |file| file.write_all(digest.as_bytes())))
        .and_then(|()| view.open(&artifact).with_context(|| format!("open {}", dir.path_of(&artifact).display())));
    match stored {
        Ok(file) => {
            digests.remember(&file, &digest);
            root.evict(&dir.path_of(&artifact));
            Ok((Verified { file, shown: dir.path_of(&artifact) }, outcome))
        }
        Err(err) => {
            // No half entry stays: without its checksum an artifact is a miss anyway.
            dir.remove(&artifact);
            let why = format!("could not store it: {err:#}");
            Ok((Verified::in_memory(&compiled, dir.path_of(&artifact))?, Outcome::Uncached(why)))
        }
    }
}

fn hit(dir: &CacheDir, file: File, artifact: &str, checksum: &str) -> (Verified, Outcome) {
    // The checksum file keeps the time of use: touching the artifact would
    // change its identity and cost a hash.
    dir.touch(checksum);
    (Verified { file, shown: dir.path_of(artifact) }, Outcome::Hit)
}

impl Verified {
    /// Code this instance compiled itself and could not store: held in a
    /// sealed memory file, which nobody else can reach or change.
    fn in_memory(compiled: &[u8], shown: PathBuf) -> Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create("wasmlet-compiled", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).context("create a memory file")?;
        let mut file = File::from(fd);
        file.write_all(compiled).context("write the compiled code to memory")?;
        let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).context("seal the memory file")?;
        Ok(Verified { file, shown })
    }

    /// Maps the entry as a core module of `engine` (`name` for errors).
    pub fn module(&self, engine: &Engine, name: &str, proc: &OwnProc) -> Result<Module> {
        // Safety: see the module's contract; `self` proves the entry sound,
        // and its descriptor's magic link reopens exactly the file hashed.
        self.map(name, proc, |path| unsafe { Module::deserialize_file(engine, path) })
    }

    /// Maps the entry as a component of `engine` (`name` for errors).
    pub fn component(&self, engine: &Engine, name: &str, proc: &OwnProc) -> Result<Component> {
        // Safety: as for `module`.
        self.map(name, proc, |path| unsafe { Component::deserialize_file(engine, path) })
    }

    fn map<T>(&self, name: &str, proc: &OwnProc, deserialize: impl FnOnce(&Path) -> wasmtime::Result<T>) -> Result<T> {
        let context = || format!("load compiled {name} from {}", self.shown.display());
        holds_no_capability().with_context(context)?;
        proc.with_fd_path(&self.file, deserialize)?.map_err(anyhow::Error::from).with_context(context)
    }
}

/// Compiled code is mapped only by a thread that holds no capability.
fn holds_no_capability() -> Result<()> {
    let held = caps::read(None, caps::CapSet::Permitted).context("read the capabilities held")?;
    if !held.is_empty() {
        anyhow::bail!("compiled code is mapped only once every capability is dropped, and {} are still held", held.len());
    }
    Ok(())
}

/// A short, stable name for the engine's compatibility hash.
fn engine_hash(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Ok(Some(file)): a sound entry, open; Ok(None): present but unsound;
/// Err: absent.
fn verify(dir: &CacheDir, artifact: &str, checksum: &str, digests: &Digests) -> std::io::Result<Option<File>> {
    let mut expected = String::new();
    dir.open(checksum)?.read_to_string(&mut expected)?;
    let file = match dir.open(artifact) {
        Ok(file) => file,
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    let only_root_writes = meta.is_file() && meta.uid() == 0 && meta.permissions().mode() & 0o022 == 0;
    Ok((only_root_writes && expected.trim() == digests.sha256(&file)?).then_some(file))
}

#[cfg(test)]
mod tests {
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
}
