//! The node's filesystem as the installer sees it: the host's root mounted
//! at some directory (/host in the installer pod). Paths inside it are
//! written as the host sees them ("/etc/containerd/config.toml") and mapped
//! here, so every message names the path a node's admin knows.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// PATH for commands run on the host: systemd's default for services.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.join("etc").is_dir() {
            bail!("{} does not look like the host's root (it has no etc/): mount the host's / there", root.display());
        }
        Ok(Self { root })
    }

    /// Where a host path is in our view.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    pub fn exists(&self, host_path: &str) -> bool {
        self.path(host_path).exists()
    }

    /// The file's text, or None when it does not exist.
    pub fn read(&self, host_path: &str) -> Result<Option<String>> {
        match fs::read_to_string(self.path(host_path)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("read {host_path} on the host")),
        }
    }

    /// Replaces the file atomically (a temp file renamed over it), so a
    /// reader never sees half a config and a full disk leaves the old one.
    /// A new file gets `mode`; an existing one keeps its own.
    pub fn write(&self, host_path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        self.replace(host_path, mode, |file| file.write_all(bytes))
    }

    /// `write`, with the content streamed from `source`.
    pub fn copy_in(&self, source: &mut impl Read, host_path: &str, mode: u32) -> Result<()> {
        self.replace(host_path, mode, |file| io::copy(source, file).map(drop))
    }

    fn replace(&self, host_path: &str, mode: u32, fill: impl FnOnce(&mut fs::File) -> io::Result<()>) -> Result<()> {
        let target = self.path(host_path);
        let dir = target.parent().context("a file path has a parent")?;
        fs::create_dir_all(dir).with_context(|| format!("create {} on the host", parent(host_path)))?;
        let mode = fs::metadata(&target).map(|m| m.permissions().mode()).unwrap_or(mode);
        let temp = dir.join(format!(".{}.wasmlet-tmp", target.file_name().unwrap_or_default().to_string_lossy()));
        let written = (|| {
            let mut file = fs::File::create(&temp)?;
            fill(&mut file)?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            fs::rename(&temp, &target)
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(err).with_context(|| format!("write {host_path} on the host"));
        }
        Ok(())
    }

    pub fn remove_file(&self, host_path: &str) -> Result<()> {
        match fs::remove_file(self.path(host_path)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err).with_context(|| format!("remove {host_path} on the host")),
            _ => Ok(()),
        }
    }

    pub fn remove_dir_all(&self, host_path: &str) -> Result<()> {
        match fs::remove_dir_all(self.path(host_path)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err).with_context(|| format!("remove {host_path} on the host")),
            _ => Ok(()),
        }
    }

    /// The sha256 of a host file, or None when it does not exist.
    pub fn file_digest(&self, host_path: &str) -> Result<Option<String>> {
        let digest = match fs::File::open(self.path(host_path)) {
            Ok(file) => file_digest(file).map(Some),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        };
        digest.with_context(|| format!("read {host_path} on the host"))
    }

    /// A symlink at `link` to `target`, both host paths. The link is
    /// relative, so it resolves the same on the host and in our view.
    pub fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let relative = relative_path(parent(link), target);
        let at = self.path(link);
        fs::create_dir_all(at.parent().context("a link has a parent")?).with_context(|| format!("create {} on the host", parent(link)))?;
        std::os::unix::fs::symlink(&relative, &at).with_context(|| format!("link {link} to {target} on the host"))
    }

    /// Whether `link` is the symlink `symlink` makes to the host path `target`.
    pub fn links_to(&self, link: &str, target: &str) -> bool {
        fs::read_link(self.path(link)).is_ok_and(|written| written == relative_path(parent(link), target))
    }

    /// Runs a host command as the host would: chrooted into the host's root,
    /// with the host's PATH. With the pod's hostPID, systemctl in there sees
    /// that its root is PID 1's and talks to the host's systemd.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let root = self.root.clone();
        let mut command = Command::new(program);
        command.args(args).env_clear().env("PATH", HOST_PATH);
        // Safety: between fork and exec this calls only chroot, chdir and
        // sigprocmask, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                std::os::unix::fs::chroot(&root)?;
                std::env::set_current_dir("/")?;
                // The installer holds SIGTERM back; the host's command must not.
                nix::sys::signal::SigSet::empty().thread_set_mask().map_err(std::io::Error::from)
            });
        }
        let shown = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        command.output().with_context(|| format!("run `{shown}` on the host"))
    }
}

pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sha256 of what `reader` holds, read in pieces.
pub fn file_digest(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn parent(host_path: &str) -> &str {
    host_path.rsplit_once('/').map(|(dir, _)| if dir.is_empty() { "/" } else { dir }).unwrap_or("/")
}

/// `target` relative to the directory `from`, both absolute.
fn relative_path(from: &str, target: &str) -> PathBuf {
    let parts = |path: &str| -> Vec<String> {
        Path::new(path).components().filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        }).collect()
    };
    let (from, target) = (parts(from), parts(target));
    let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..from.len() {
        relative.push("..");
    }
    for part in &target[common..] {
        relative.push(part);
    }
    relative
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        let host = Host::new(dir.path()).unwrap();
        (dir, host)
    }

    #[test]
    fn a_root_without_etc_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Host::new(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not look like the host's root"), "{err}");
    }

    #[test]
    fn relative_links_climb_to_the_common_root() {
        assert_eq!(relative_path("/usr/local/bin", "/opt/wasmlet/bin/shim"), PathBuf::from("../../../opt/wasmlet/bin/shim"));
        assert_eq!(relative_path("/opt/wasmlet", "/opt/wasmlet/bin/shim"), PathBuf::from("bin/shim"));
    }

    #[test]
    fn a_link_resolves_inside_the_view() {
        let (_dir, host) = host();
        host.write("/opt/wasmlet/bin/shim", b"binary", 0o755).unwrap();
        host.symlink("/opt/wasmlet/bin/shim", "/usr/local/bin/shim").unwrap();
        assert_eq!(fs::read(host.path("/usr/local/bin/shim")).unwrap(), b"binary");
        assert!(host.links_to("/usr/local/bin/shim", "/opt/wasmlet/bin/shim"));
        assert!(!host.links_to("/usr/local/bin/shim", "/opt/other"));
    }

    #[test]
    fn writes_keep_an_existing_files_mode() {
        let (_dir, host) = host();
        host.write("/etc/a.toml", b"one", 0o600).unwrap();
        host.write("/etc/a.toml", b"two", 0o644).unwrap();
        let meta = fs::metadata(host.path("/etc/a.toml")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(host.read("/etc/a.toml").unwrap().as_deref(), Some("two"));
        assert_eq!(host.read("/etc/missing").unwrap(), None);
    }
}
