//! What a container's entrypoint is: a wasm program to run in an instance,
//! or something runc runs. Pure logic over the spec's args and the rootfs,
//! so it is tested without containerd.

use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::shared::launch_plan::env_value;

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// `args[0]`, split once into the program's name and the export to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entrypoint<'a> {
    /// The path or bare name, as the spec gives it.
    pub name: &'a str,
    /// `_start` unless `args[0]` carries `#name`.
    pub export: &'a str,
}

/// No args at all (a wasm artifact may still name its program): `_start`.
impl Default for Entrypoint<'_> {
    fn default() -> Self {
        Entrypoint { name: "", export: "_start" }
    }
}

impl<'a> Entrypoint<'a> {
    /// None when the spec has no args.
    pub fn of(args: &'a [String]) -> Option<Self> {
        let arg0 = args.first()?;
        let (name, export) = match arg0.rsplit_once('#') {
            Some((path, export)) if !export.is_empty() => (path, export),
            _ => (arg0.trim_end_matches('#'), "_start"),
        };
        Some(Entrypoint { name, export })
    }
}

/// What the entrypoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A wasm module or component at this absolute path in the rootfs.
    Wasm(PathBuf),
    /// A native executable or a script: runc runs it.
    Native,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("the container has no process args: nothing to run")]
    NoArgs,
    #[error("entrypoint {0} not found in the container rootfs")]
    NotFound(String),
    #[error("entrypoint {0} is neither a wasm module nor a native executable")]
    Unknown(String),
    #[error("cannot read entrypoint {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// Finds the entrypoint `name` inside `rootfs` and tells wasm (`\0asm`)
/// from native (ELF, or a `#!` script). A bare name is looked up in `PATH`
/// from the spec's env, like a shell would. Symlinks resolve inside the
/// rootfs, never on the host.
pub fn resolve(rootfs: &Path, name: &str, env: &[String], cwd: &str) -> Result<Found, EntryError> {
    let root = Dir::open_ambient_dir(rootfs, ambient_authority()).map_err(|e| EntryError::Unreadable {
        path: rootfs.display().to_string(),
        reason: e.to_string(),
    })?;
    let path = candidates(name, env, cwd)
        .into_iter()
        .find(|p| root.is_file(relative(p)))
        .ok_or_else(|| EntryError::NotFound(name.to_string()))?;
    let shown = path.display().to_string();
    let mut magic = [0u8; 4];
    let read = root
        .open(relative(&path))
        .and_then(|mut f| read_up_to(&mut f, &mut magic))
        .map_err(|e| EntryError::Unreadable { path: shown.clone(), reason: e.to_string() })?;
    match &magic[..read] {
        m if m == WASM_MAGIC => Ok(Found::Wasm(path)),
        m if m == ELF_MAGIC || m.starts_with(b"#!") => Ok(Found::Native),
        _ => Err(EntryError::Unknown(shown)),
    }
}

fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Paths to try for `name`, absolute as the container sees them.
fn candidates(name: &str, env: &[String], cwd: &str) -> Vec<PathBuf> {
    if name.starts_with('/') {
        return vec![PathBuf::from(name)];
    }
    if name.contains('/') {
        return vec![Path::new(cwd_or_root(cwd)).join(name)];
    }
    let path_var = env_value(env, "PATH").unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let mut found: Vec<PathBuf> = path_var.split(':').filter(|d| d.starts_with('/')).map(|d| Path::new(d).join(name)).collect();
    found.push(Path::new(cwd_or_root(cwd)).join(name));
    found
}

fn cwd_or_root(cwd: &str) -> &str {
    if cwd.starts_with('/') { cwd } else { "/" }
}

/// Strips the leading `/` so cap-std resolves the path inside its directory.
fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn rootfs_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = dir.path().join(name.trim_start_matches('/'));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn export_suffix_is_split_off() {
        let entry = |arg0: &str| Entrypoint::of(&args(&[arg0])).map(|e| (e.name.to_string(), e.export.to_string())).unwrap();
        assert_eq!(entry("/app.wasm#greet"), ("/app.wasm".into(), "greet".into()));
        assert_eq!(entry("/app.wasm"), ("/app.wasm".into(), "_start".into()));
        assert_eq!(entry("/app.wasm#"), ("/app.wasm".into(), "_start".into()));
        assert_eq!(Entrypoint::of(&[]), None);
    }

    #[test]
    fn wasm_entrypoint_is_found_by_absolute_path() {
        let root = rootfs_with(&[("/app.wasm", b"\0asm\x01\0\0\0")]);
        assert_eq!(resolve(root.path(), "/app.wasm", &[], "/").unwrap(), Found::Wasm("/app.wasm".into()));
    }

    #[test]
    fn bare_name_is_looked_up_in_path() {
        let root = rootfs_with(&[("/opt/bin/tool.wasm", b"\0asm\x01\0\0\0")]);
        let env = args(&["PATH=/usr/bin:/opt/bin"]);
        assert_eq!(resolve(root.path(), "tool.wasm", &env, "/").unwrap(), Found::Wasm("/opt/bin/tool.wasm".into()));
    }

    #[test]
    fn native_executables_and_scripts_go_to_runc() {
        let root = rootfs_with(&[("/elf", b"\x7fELF\x02\x01"), ("/run.sh", b"#!/bin/sh\necho")]);
        assert_eq!(resolve(root.path(), "/elf", &[], "/").unwrap(), Found::Native);
        assert_eq!(resolve(root.path(), "/run.sh", &[], "/").unwrap(), Found::Native);
    }

    #[test]
    fn each_bad_entrypoint_has_its_own_error() {
        let root = rootfs_with(&[("/text", b"hello"), ("/empty", b"")]);
        let run = |a: &str| resolve(root.path(), a, &[], "/").unwrap_err();
        assert_eq!(run("/missing.wasm"), EntryError::NotFound("/missing.wasm".into()));
        assert_eq!(run("/text"), EntryError::Unknown("/text".into()));
        assert_eq!(run("/empty"), EntryError::Unknown("/empty".into()));
    }

    #[test]
    fn symlinks_cannot_leave_the_rootfs() {
        let root = rootfs_with(&[]);
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("escape")).unwrap();
        assert_eq!(resolve(root.path(), "/escape", &[], "/").unwrap_err(), EntryError::NotFound("/escape".into()));
    }
}
