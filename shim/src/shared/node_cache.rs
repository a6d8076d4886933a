//! The node's cache directory, shared by every pod on the node: compiled
//! code (written by instances, see `instance::compiled_code`) and the wasm
//! layers of images read from containerd (written by the daemon). Native
//! code is mapped from it, so it is trusted only as far as only root can
//! change it: the directory and every one above it must be root's and not
//! writable by others (a sticky directory such as /tmp may be above it),
//! and everything inside is reached through the directory's descriptor,
//! never through a symlink. Entries are written atomically; a lock file per
//! compiled entry makes concurrent first starts compile once; the least
//! recently used entries go when the cache outgrows its size limit.
//!
//! Layout: `layers/<sha256>.wasm`, `<engine hash>/<sha256>.{cwasm,sha256,lock}`,
//! and `digests-<boot id>/` (the instance's memo of verified files).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, AtFlags, Flock, FlockArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::mount_api::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// Where the cache lives unless configured otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmlet/cache";
/// How big the cache may grow unless configured otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// The largest wasm the node stores or compiles.
pub const MAX_WASM_BYTES: u64 = 128 << 20;

/// Wasm layers live in this subdirectory; compiled code in one per engine.
const LAYERS: &str = "layers";
/// Memo directories of verified digests, one per boot.
const MEMO_PREFIX: &str = "digests-";
/// Files being written, before their rename into place.
const TEMPORARY_PREFIX: &str = ".tmp-";

/// Where the cache is and how big it may grow, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl NodeCache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        NodeCache { dir: dir.into(), max_bytes }
    }

    /// The cache directory, made if missing, once it is shown that only
    /// root can change it.
    pub fn open(&self) -> Result<CacheDir> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("create cache directory {}", self.dir.display()))?;
        let dir = self.dir.canonicalize().with_context(|| format!("resolve cache directory {}", self.dir.display()))?;
        for (depth, ancestor) in dir.ancestors().enumerate() {
            only_root_can_change(ancestor, depth == 0)?;
        }
        let fd = nix::fcntl::open(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("open cache directory {}", dir.display()))?;
        let (checked, opened) = (std::fs::metadata(&dir)?, File::from(fd.try_clone()?).metadata()?);
        if (checked.dev(), checked.ino()) != (opened.dev(), opened.ino()) {
            bail!("cache directory {} changed while it was checked", dir.display());
        }
        Ok(CacheDir { fd, path: dir, max_bytes: self.max_bytes })
    }
}

/// Refuses a directory that someone but root could write to (or replace an
/// entry of): the cache directory itself must not be writable by group or
/// others; a directory above it may be, if it is sticky.
fn only_root_can_change(path: &Path, is_cache: bool) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("check {}", path.display()))?;
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if meta.uid() != 0 {
        bail!("{} belongs to uid {}, not root: compiled code is loaded only from a cache only root can change", path.display(), meta.uid());
    }
    if mode & 0o022 != 0 && (is_cache || !sticky) {
        bail!("{} is writable by others (mode {:o}): compiled code is loaded only from a cache only root can change", path.display(), mode & 0o7777);
    }
    Ok(())
}

/// An open directory of the cache: everything in it is opened relative to
/// its descriptor, and a symlink anywhere on the way is refused.
pub struct CacheDir {
    fd: OwnedFd,
    path: PathBuf,
    max_bytes: u64,
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

impl CacheDir {
    /// The same directory through a read-only, detached copy of its mount
    /// (needs CAP_SYS_ADMIN). A file opened through it cannot be reopened
    /// for writing, nor truncated, through `/proc/PID/fd` or
    /// `/proc/PID/map_files` of whoever holds it: the kernel answers EROFS
    /// whatever the caller's uid or capabilities, so a process that can see
    /// an instance cannot change the compiled code it maps, which every pod
    /// of that module on the node shares.
    pub fn read_only_view(&self) -> Result<CacheDir> {
        let view = || -> nix::Result<OwnedFd> {
            let tree = mount_api::clone_tree(self.fd.as_raw_fd(), c"", false)?;
            mount_api::set_attributes(&tree, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, false)?;
            Ok(tree)
        };
        let fd = view().with_context(|| format!("make a read-only view of {}", self.path.display()))?;
        Ok(CacheDir { fd, path: self.path.clone(), max_bytes: self.max_bytes })
    }

    /// The subdirectory `name`, made if missing.
    pub fn subdir(&self, name: &str) -> Result<CacheDir> {
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno).with_context(|| format!("create {}", self.path_of(name).display())),
        }
        let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(beneath());
        let fd = openat2(&self.fd, name, how).with_context(|| format!("open {}", self.path_of(name).display()))?;
        Ok(CacheDir { fd, path: self.path_of(name), max_bytes: self.max_bytes })
    }

    /// The directory of compiled code for the engine with this hash.
    pub fn compiled(&self, engine_hash: &str) -> Result<CacheDir> {
        self.subdir(engine_hash)
    }

    /// The memo directory of this boot.
    pub fn memo(&self, boot_id: &str) -> Result<CacheDir> {
        self.subdir(&format!("{MEMO_PREFIX}{boot_id}"))
    }

    /// Memo directories of other boots, by name.
    pub fn other_memos(&self, boot_id: &str) -> Vec<String> {
        let ours = format!("{MEMO_PREFIX}{boot_id}");
        self.names().into_iter().filter(|name| name.starts_with(MEMO_PREFIX) && *name != ours).collect()
    }

    /// Opens the file `name` for reading; a symlink is refused (ELOOP).
    pub fn open(&self, name: &str) -> std::io::Result<File> {
        self.open_with(name, OFlag::O_RDONLY)
    }

    fn open_with(&self, name: &str, flags: OFlag) -> std::io::Result<File> {
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).resolve(beneath());
        Ok(File::from(openat2(&self.fd, name, how)?))
    }

    /// How messages name an entry.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `name` through a temporary file renamed into place, so that a
    /// reader never sees a half-written entry; a failed write leaves nothing.
    pub fn write_atomically<E: Into<anyhow::Error>>(&self, name: &str, write: impl FnOnce(&mut File) -> std::result::Result<(), E>) -> Result<()> {
        let temporary = format!("{TEMPORARY_PREFIX}{name}-{}-{:x}", std::process::id(), random());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, temporary.as_str(), flags, Mode::from_bits_truncate(0o644))
            .with_context(|| format!("create a file in {}", self.path.display()))?;
        let mut file = File::from(fd);
        let written = write(&mut file)
            .map_err(Into::into)
            .and_then(|()| file.sync_all().map_err(Into::into))
            .and_then(|()| renameat(&self.fd, temporary.as_str(), &self.fd, name).map_err(Into::into));
        if written.is_err() {
            let _ = unlinkat(&self.fd, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written.with_context(|| format!("write {}", self.path_of(name).display()))
    }

    /// Holds an exclusive lock on `name` until the guard is dropped, or
    /// None if another holder kept it for `wait`.
    pub fn lock_within(&self, name: &str, wait: Duration) -> Result<Option<Flock<File>>> {
        let mut file = self.open_with(name, OFlag::O_WRONLY | OFlag::O_CREAT).with_context(|| format!("open {}", self.path_of(name).display()))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(lock)),
                Err((_, Errno::EWOULDBLOCK)) if std::time::Instant::now() >= deadline => return Ok(None),
                Err((again, Errno::EWOULDBLOCK)) => {
                    file = again;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, errno)) => return Err(errno).with_context(|| format!("lock {}", self.path_of(name).display())),
            }
        }
    }

    /// Marks an entry as used now, for least-recently-used eviction.
    pub fn touch(&self, name: &str) {
        if let Err(err) = self.open_with(name, OFlag::O_WRONLY).and_then(|f| f.set_modified(SystemTime::now())) {
            warn!("mark {} as used: {err}", self.path_of(name).display());
        }
    }

    pub fn remove(&self, name: &str) {
        let _ = unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir);
    }

    /// The node's copy of the wasm layer whose sha256 is `key`, written by
    /// `write` unless it is there already.
    pub fn layer(&self, key: &str, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
        let layers = self.subdir(LAYERS)?;
        let name = format!("{key}.wasm");
        if layers.open(&name).is_ok() {
            layers.touch(&name);
            return Ok(());
        }
        layers.write_atomically(&name, write)?;
        self.evict(&layers.path_of(&name));
        Ok(())
    }

    /// The stored wasm layer whose sha256 is `key`.
    pub fn open_layer(&self, key: &str) -> Result<File> {
        let name = format!("{key}.wasm");
        let layers = self.subdir(LAYERS)?;
        layers.open(&name).with_context(|| format!("open {}", layers.path_of(&name).display()))
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
            if entry.dir.path_of(&entry.files[0]) == keep {
                continue;
            }
            for file in &entry.files {
                entry.dir.remove(file);
            }
            total -= entry.bytes;
            info!(entry = %entry.dir.path_of(&entry.files[0]).display(), "cache over {} bytes: removed its least recently used entry", self.max_bytes);
        }
    }

    /// Every entry: a layer, or a compiled artifact with its checksum and lock.
    fn entries(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for subdir in self.names().into_iter().filter(|name| !name.starts_with(MEMO_PREFIX) && !name.starts_with('.')) {
            let Ok(dir) = self.subdir(&subdir) else { continue };
            let dir = std::rc::Rc::new(dir);
            for main in dir.names() {
                let companions: &[&str] = match Path::new(&main).extension().and_then(|e| e.to_str()) {
                    Some("wasm") => &[],
                    Some("cwasm") => &["sha256", "lock"],
                    _ => continue,
                };
                let stem = main.rsplit_once('.').map_or(main.as_str(), |(stem, _)| stem).to_string();
                let files: Vec<String> = std::iter::once(main.clone()).chain(companions.iter().map(|ext| format!("{stem}.{ext}"))).collect();
                let stats: Vec<_> = files.iter().filter_map(|f| fstatat(&dir.fd, f.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()).collect();
                let bytes = stats.iter().map(|s| s.st_size as u64).sum();
                // Use touches a compiled entry's checksum, a layer itself.
                let used = stats.iter().map(|s| (s.st_mtime, s.st_mtime_nsec)).max().unwrap_or((0, 0));
                entries.push(Entry { dir: dir.clone(), files, bytes, used });
            }
        }
        entries
    }

    /// The names in this directory.
    fn names(&self) -> Vec<String> {
        let Ok(listing) = Dir::openat(&self.fd, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()) else {
            return Vec::new();
        };
        listing
            .into_iter()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "." && name != "..")
            .collect()
    }
}

impl AsFd for CacheDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

struct Entry {
    dir: std::rc::Rc<CacheDir>,
    /// The entry's main file first.
    files: Vec<String>,
    bytes: u64,
    /// The newest mtime of its files, seconds and nanoseconds.
    used: (i64, i64),
}

/// A name part no other writer picks at the same time.
fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // Safety: getrandom writes at most the buffer's length.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn cache(dir: &Path, max_bytes: u64) -> CacheDir {
        NodeCache::new(dir.join("cache"), max_bytes).open().unwrap()
    }

    #[test]
    fn a_layer_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), u64::MAX);
        cache.layer("abc", |file| Ok(file.write_all(b"\0asm")?)).unwrap();
        cache.layer("abc", |_| panic!("written twice")).unwrap();
        let mut content = Vec::new();
        cache.open_layer("abc").unwrap().read_to_end(&mut content).unwrap();
        assert_eq!(content, b"\0asm");
        let failed = cache.layer("def", |_| anyhow::bail!("digest mismatch"));
        assert!(format!("{:#}", failed.unwrap_err()).contains("digest mismatch"));
        assert_eq!(cache.subdir(LAYERS).unwrap().names(), vec!["abc.wasm"], "a failed write leaves nothing");
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 25);
        let write = |key: &str| cache.layer(key, |file| Ok(file.write_all(&[0; 10])?)).unwrap();
        write("a");
        write("b");
        // a is used after b, so b is the least recently used when c comes.
        std::thread::sleep(Duration::from_millis(20));
        write("a");
        write("c");
        let mut left = cache.subdir(LAYERS).unwrap().names();
        left.sort();
        assert_eq!(left, vec!["a.wasm", "c.wasm"]);
    }

    #[test]
    fn a_cache_others_could_write_is_refused_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let open = NodeCache::new(dir.path().join("cache"), 0);
        open.open().unwrap();
        std::fs::set_permissions(dir.path().join("cache"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = open.open().err().unwrap().to_string();
        assert!(err.contains("cache is writable by others (mode 777)"), "{err}");
        // A directory above it, writable by others and not sticky, is refused too.
        std::fs::set_permissions(dir.path().join("cache"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = open.open().err().unwrap().to_string();
        assert!(err.contains(&format!("{} is writable by others", dir.path().display())), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        open.open().unwrap();
    }

    #[test]
    fn nothing_inside_is_reached_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), u64::MAX);
        std::fs::write(dir.path().join("elsewhere"), b"not the cache's").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("cache/entry")).unwrap();
        assert_eq!(cache.open("entry").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        std::os::unix::fs::symlink(dir.path(), dir.path().join("cache/subdir")).unwrap();
        assert!(cache.subdir("subdir").is_err());
    }

    #[test]
    fn memo_directories_are_not_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 0);
        let memo = cache.memo("boot").unwrap();
        memo.write_atomically("x.wasm", |f| f.write_all(b"memo")).unwrap();
        cache.evict(Path::new("/none"));
        assert!(memo.open("x.wasm").is_ok());
        assert_eq!(cache.other_memos("other"), vec!["digests-boot"]);
    }
}
