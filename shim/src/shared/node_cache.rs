//! The node's cache directory, shared by every pod on the node: compiled
//! code (written by instances, see `instance::compiled_code`) and the wasm
//! layers of images read from containerd (written by the daemon). This
//! module owns the layout and the rules for writing into it: entries are
//! written atomically, a lock file per compiled entry makes concurrent
//! first starts compile once, and the least recently used entries go when
//! the cache outgrows its size limit.
//!
//! Layout: `<dir>/layers/<sha256>.wasm`, `<dir>/<engine hash>/<sha256>.{cwasm,sha256,lock}`,
//! and `<dir>/digests-<boot id>/` (the instance's memo of verified files).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Where the cache lives unless configured otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmlet/cache";
/// How big the cache may grow unless configured otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// Wasm layers live in this subdirectory; compiled code in one per engine.
const LAYERS: &str = "layers";
/// Memo directories of verified digests, one per boot.
const MEMO_PREFIX: &str = "digests-";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl NodeCache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        NodeCache { dir: dir.into(), max_bytes }
    }

    /// The directory of compiled code for the engine with this hash.
    pub fn compiled_dir(&self, engine_hash: &str) -> PathBuf {
        self.dir.join(engine_hash)
    }

    /// The memo directory of this boot.
    pub fn memo_dir(&self, boot_id: &str) -> PathBuf {
        self.dir.join(format!("{MEMO_PREFIX}{boot_id}"))
    }

    /// The node's copy of the wasm layer whose sha256 is `key`, written by
    /// `write` unless it is there already.
    pub fn layer(&self, key: &str, write: impl FnOnce(&mut File) -> Result<()>) -> Result<PathBuf> {
        let dir = self.dir.join(LAYERS);
        let path = dir.join(format!("{key}.wasm"));
        if path.is_file() {
            touch(&path);
            return Ok(path);
        }
        fs::create_dir_all(&dir).with_context(|| format!("create cache directory {}", dir.display()))?;
        write_atomically(&path, write)?;
        self.evict(&path);
        Ok(path)
    }

    /// Removes the least recently used entries until the cache fits its
    /// limit, never `keep` (the entry just made). Running instances keep
    /// the code they mapped: unlinking a file does not unmap it.
    pub fn evict(&self, keep: &Path) {
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
        for subdir in subdirs.flatten().map(|d| d.path()).filter(|d| !is_memo_dir(d)) {
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

/// Whether `path` is a memo directory (of any boot), not a cache entry.
pub fn is_memo_dir(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(MEMO_PREFIX))
}

/// Marks an entry as used now, for least-recently-used eviction.
pub fn touch(path: &Path) {
    if let Err(err) = File::options().append(true).open(path).and_then(|f| f.set_modified(SystemTime::now())) {
        warn!("mark {} as used: {err}", path.display());
    }
}

/// Holds an exclusive lock on `path` until the returned guard is dropped.
pub fn lock(path: &Path) -> Result<Flock<File>> {
    let file = File::options().create(true).truncate(false).write(true).open(path).with_context(|| format!("open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno).with_context(|| format!("lock {}", path.display()))
}

/// Writes through a temporary file in the same directory and renames it into
/// place, so that a reader never sees a half-written entry.
pub fn write_atomically<E: Into<anyhow::Error>>(target: &Path, write: impl FnOnce(&mut File) -> std::result::Result<(), E>) -> Result<()> {
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
    use std::io::Write;
    use std::time::Duration;

    fn unbounded(dir: &Path) -> NodeCache {
        NodeCache::new(dir, u64::MAX)
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
        let cache = NodeCache::new(dir.path(), 25);
        let write = |key: &str| cache.layer(key, |file| Ok(file.write_all(&[0; 10])?)).unwrap();
        let (a, b) = (write("a"), write("b"));
        // a is used after b, so b is the least recently used when c comes.
        std::thread::sleep(Duration::from_millis(20));
        write("a");
        let c = write("c");
        assert_eq!((a.exists(), b.exists(), c.exists()), (true, false, true));
    }

    #[test]
    fn memo_directories_are_not_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::new(dir.path(), 0);
        let memo = cache.memo_dir("boot");
        fs::create_dir_all(&memo).unwrap();
        fs::write(memo.join("x.wasm"), b"memo").unwrap();
        cache.evict(Path::new("/none"));
        assert!(memo.join("x.wasm").exists());
    }
}
