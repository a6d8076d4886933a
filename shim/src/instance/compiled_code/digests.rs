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
use std::io::{self, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::shared::node_cache::{is_memo_dir, NodeCache};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

pub struct Digests {
    /// The cache's memo directory of this boot: one file per identity,
    /// holding the hex digest; None when the boot cannot be told (every
    /// file is hashed).
    dir: Option<PathBuf>,
}

impl Digests {
    /// The memo of this boot in `cache`; one that remembers nothing (hash
    /// every time) when the boot cannot be told.
    pub fn of_this_boot(cache: &NodeCache) -> Self {
        match fs::read_to_string(BOOT_ID) {
            Ok(boot) => Digests { dir: Some(cache.memo_dir(boot.trim())) },
            Err(err) => {
                warn!("read {BOOT_ID}: {err}: compiled code is hashed on every start");
                Digests { dir: None }
            }
        }
    }

    /// The hex sha256 of the whole file, read from its start unless this
    /// boot has hashed the file before. Leaves the file's offset anywhere.
    pub fn sha256(&self, file: &File) -> io::Result<String> {
        let Some(dir) = &self.dir else { return sha256(file) };
        let identity = identity(file)?;
        if let Ok(known) = fs::read_to_string(dir.join(&identity)) {
            if known.len() == 64 {
                return Ok(known);
            }
        }
        let digest = sha256(file)?;
        remember_identity(dir, &identity, &digest);
        Ok(digest)
    }

    /// Records that `file`, as it is now, has this digest (its writer just
    /// computed it).
    pub fn remember(&self, file: &File, digest: &str) {
        let Some(dir) = &self.dir else { return };
        match identity(file) {
            Ok(identity) => remember_identity(dir, &identity, digest),
            Err(err) => warn!("remember a digest: {err}"),
        }
    }
}

/// A memo that cannot be written only costs a hash on the next start.
fn remember_identity(dir: &Path, identity: &str, digest: &str) {
    if let Err(err) = write(dir, identity, digest) {
        warn!("remember the digest of a file in {}: {err}", dir.display());
    }
}

fn write(dir: &Path, identity: &str, digest: &str) -> io::Result<()> {
    if fs::create_dir(dir).is_ok() {
        forget_earlier_boots(dir);
    }
    // Not synced: a crash is a new boot, which does not read this memo.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(digest.as_bytes())?;
    tmp.persist(dir.join(identity)).map_err(|e| e.error)?;
    Ok(())
}

fn forget_earlier_boots(ours: &Path) {
    let (Some(parent), Some(ours)) = (ours.parent(), ours.file_name()) else { return };
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name != ours && is_memo_dir(&entry.path()) {
            let _ = fs::remove_dir_all(entry.path());
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

    fn memo(dir: &Path, boot: &str) -> Digests {
        Digests { dir: Some(NodeCache::new(dir, 0).memo_dir(boot)) }
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
        let earlier = memo(dir.path(), "boot-a");
        earlier.remember(&file, &"0".repeat(64));
        let now = memo(dir.path(), "boot-b");
        assert_ne!(now.sha256(&file).unwrap(), "0".repeat(64));
        assert!(!dir.path().join("digests-boot-a").exists());
    }
}
