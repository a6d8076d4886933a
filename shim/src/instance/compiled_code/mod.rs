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
//!   every pod of the module maps stay as verified;
//! - it is mapped only with no capability held (`map` refuses otherwise):
//!   a subverted compiler's code would run as the guest's user at most;
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
mod tests;
