//! sha256 of the cache's own files, remembered for the rest of the boot by
//! file identity, so that a start does not hash again the megabytes of
//! compiled code that an earlier start checked. A file's identity is its
//! device, inode, size, mtime and ctime: writing to it or setting its times
//! changes the ctime, and a rewritten cache entry is a new inode. Only files
//! the shim wrote itself on a local filesystem qualify: an image's files
//! never do, as some snapshotters take every one of those fields from the
//! image. The memo lives in a directory named after the boot, as inodes and
//! contents are trusted only within one; the first start of a boot removes
//! the memos of earlier ones.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::shared::node_cache::CacheDir;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

pub struct Digests {
    /// The cache's memo directory of this boot: one file per identity,
    /// holding the hex digest; None when the boot cannot be told (every
    /// file is hashed).
    memo: Option<CacheDir>,
}

impl Digests {
    /// The memo of this boot in `cache`; one that remembers nothing (hash
    /// every time) when the boot cannot be told. The first start of a boot
    /// removes the memos of earlier ones.
    pub fn of_this_boot(cache: &CacheDir) -> Self {
        let boot = match fs::read_to_string(BOOT_ID) {
            Ok(boot) => boot.trim().to_string(),
            Err(err) => {
                warn!("read {BOOT_ID}: {err}: compiled code is hashed on every start");
                return Digests { memo: None };
            }
        };
        for earlier in cache.other_memos(&boot) {
            let _ = fs::remove_dir_all(cache.path_of(&earlier));
        }
        match cache.memo(&boot) {
            Ok(memo) => Digests { memo: Some(memo) },
            Err(err) => {
                warn!("{err:#}: compiled code is hashed on every start");
                Digests { memo: None }
            }
        }
    }

    /// The hex sha256 of the whole file, read from its start unless this
    /// boot has hashed the file before. Leaves the file's offset anywhere.
    pub fn sha256(&self, file: &File) -> io::Result<String> {
        let Some(memo) = &self.memo else { return sha256(file) };
        let identity = identity(file)?;
        let mut known = String::new();
        if memo.open(&identity).and_then(|mut f| f.read_to_string(&mut known)).is_ok() && known.len() == 64 {
            return Ok(known);
        }
        let digest = sha256(file)?;
        self.remember_identity(&identity, &digest);
        Ok(digest)
    }

    /// Records that `file`, as it is now, has this digest (its writer just
    /// computed it).
    pub fn remember(&self, file: &File, digest: &str) {
        match identity(file) {
            Ok(identity) => self.remember_identity(&identity, digest),
            Err(err) => warn!("remember a digest: {err}"),
        }
    }

    /// A memo that cannot be written only costs a hash on the next start.
    /// Not synced: a crash is a new boot, which does not read this memo.
    fn remember_identity(&self, identity: &str, digest: &str) {
        let Some(memo) = &self.memo else { return };
        if let Err(err) = memo.write_atomically(identity, |f| f.write_all(digest.as_bytes())) {
            warn!("remember a digest: {err:#}");
        }
    }
}

/// The hex sha256 of the whole file, read from its start.
fn sha256(file: &File) -> io::Result<String> {
    let mut reader = file;
    reader.rewind()?;
    let mut hasher = Sha256::new();
    // Streamed: compiled code can be tens of MB.
    io::copy(&mut reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn identity(file: &File) -> io::Result<String> {
    let meta = file.metadata()?;
    Ok(format!(
        "{}-{}-{}-{}.{:09}-{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::node_cache::NodeCache;
    use std::path::{Path, PathBuf};

    fn memo(dir: &Path, boot: &str) -> Digests {
        let cache = NodeCache::new(dir.join("cache"), 0).open().unwrap();
        Digests { memo: Some(cache.memo(boot).unwrap()) }
    }

    fn file_with(dir: &Path, name: &str, content: &[u8]) -> (PathBuf, File) {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn hashes_a_file_and_then_remembers_it() {
        let dir = tempfile::tempdir().unwrap();
        let digests = memo(dir.path(), "boot-a");
        let (_, file) = file_with(dir.path(), "f", b"abc");
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digests.sha256(&file).unwrap(), expected);
        // A planted memo answers for the same identity: no second hash.
        digests.remember(&file, &"0".repeat(64));
        assert_eq!(digests.sha256(&file).unwrap(), "0".repeat(64));
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let digests = memo(dir.path(), "boot-a");
        let (path, file) = file_with(dir.path(), "f", b"abc");
        digests.remember(&file, &"0".repeat(64));
        // Same size, new content: the write moves mtime and ctime.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&path, b"abd").unwrap();
        let file = File::open(&path).unwrap();
        let abd = "a52d159f262b2c6ddb724a61840befc36eb30c88877a4030b65cbe86298449c9";
        assert_eq!(digests.sha256(&file).unwrap(), abd);
    }

    #[test]
    fn a_new_boot_forgets_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = file_with(dir.path(), "f", b"abc");
        memo(dir.path(), "boot-a").remember(&file, &"0".repeat(64));
        let cache = NodeCache::new(dir.path().join("cache"), 0).open().unwrap();
        assert_eq!(cache.other_memos("boot-b"), vec!["digests-boot-a"]);
        for earlier in cache.other_memos("boot-b") {
            fs::remove_dir_all(cache.path_of(&earlier)).unwrap();
        }
        assert_ne!(memo(dir.path(), "boot-b").sha256(&file).unwrap(), "0".repeat(64));
    }
}
