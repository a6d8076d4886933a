//! Decides what a container's entrypoint is: a wasm module to run here, or
//! something else. Pure logic over the spec and the rootfs, so it is tested
//! without containerd.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// What a container's entrypoint asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    Wasm(WasmEntry),
    /// A native executable or a script: runc runs it.
    Native,
}

/// A wasm entrypoint: where the module is and what to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmEntry {
    pub module: ModuleSource,
    /// The export to run; `_start` unless `args[0]` carries `#name`.
    pub export: String,
}

/// Where a wasm module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A file in the container's rootfs, by its absolute path there.
    Rootfs(PathBuf),
    /// A wasm layer of the container's image, copied to the node's cache.
    Layer { image: String, sha256: String, file: PathBuf },
}

impl ModuleSource {
    /// How errors and logs name the module.
    pub fn name(&self) -> String {
        match self {
            ModuleSource::Rootfs(path) => path.display().to_string(),
            ModuleSource::Layer { image, sha256, .. } => format!("layer sha256:{sha256} of image {image}"),
        }
    }

    /// The instance process's arguments that carry this source.
    pub fn to_args(&self) -> Vec<OsString> {
        match self {
            ModuleSource::Rootfs(path) => vec!["rootfs".into(), path.into()],
            ModuleSource::Layer { image, sha256, file } => vec!["layer".into(), image.into(), sha256.into(), file.into()],
        }
    }

    pub fn from_args(args: &[String]) -> Option<Self> {
        match args {
            [kind, path] if kind == "rootfs" => Some(ModuleSource::Rootfs(path.into())),
            [kind, image, sha256, file] if kind == "layer" => {
                Some(ModuleSource::Layer { image: image.clone(), sha256: sha256.clone(), file: file.into() })
            }
            _ => None,
        }
    }
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

/// Splits `args[0]` into the module path and the export to call.
pub fn split_export(arg0: &str) -> (&str, &str) {
    match arg0.rsplit_once('#') {
        Some((path, export)) if !export.is_empty() => (path, export),
        _ => (arg0.trim_end_matches('#'), "_start"),
    }
}

/// Finds the entrypoint of `args` inside `rootfs` and tells wasm (`\0asm`)
/// from native (ELF, or a `#!` script). A bare name is looked up in `PATH`
/// from the spec's env, like a shell would.
pub fn resolve(rootfs: &Path, args: &[String], env: &[String], cwd: &str) -> Result<Workload, EntryError> {
    let arg0 = args.first().ok_or(EntryError::NoArgs)?;
    let (name, export) = split_export(arg0);
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
        m if m == WASM_MAGIC => Ok(Workload::Wasm(WasmEntry { module: ModuleSource::Rootfs(path), export: export.to_string() })),
        m if m == ELF_MAGIC || m.starts_with(b"#!") => Ok(Workload::Native),
        _ => Err(EntryError::Unknown(shown)),
    }
}

/// Reads the whole module; symlinks resolve inside the rootfs, never on the host.
pub fn read_module(rootfs: &Path, module: &Path) -> std::io::Result<Vec<u8>> {
    Dir::open_ambient_dir(rootfs, ambient_authority())?.read(relative(module))
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

/// The value of `name` in a list of `NAME=value` entries.
pub fn env_value<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
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

    #[test]
    fn env_values_are_found_by_exact_name() {
        let env = vec!["WASMLET_HTTP_ADDRESS=x".to_string(), "WASMLET_HTTP_ADDR=127.0.0.1:9000".to_string()];
        assert_eq!(env_value(&env, "WASMLET_HTTP_ADDR"), Some("127.0.0.1:9000"));
        assert_eq!(env_value(&env, "PATH"), None);
    }

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
        assert_eq!(split_export("/app.wasm#greet"), ("/app.wasm", "greet"));
        assert_eq!(split_export("/app.wasm"), ("/app.wasm", "_start"));
        assert_eq!(split_export("/app.wasm#"), ("/app.wasm", "_start"));
    }

    #[test]
    fn wasm_entrypoint_is_found_by_absolute_path_and_export() {
        let root = rootfs_with(&[("/app.wasm", b"\0asm\x01\0\0\0")]);
        let entry = resolve(root.path(), &args(&["/app.wasm#greet"]), &[], "/").unwrap();
        assert_eq!(entry, Workload::Wasm(WasmEntry { module: ModuleSource::Rootfs("/app.wasm".into()), export: "greet".into() }));
    }

    #[test]
    fn bare_name_is_looked_up_in_path() {
        let root = rootfs_with(&[("/opt/bin/tool.wasm", b"\0asm\x01\0\0\0")]);
        let env = args(&["PATH=/usr/bin:/opt/bin"]);
        let entry = resolve(root.path(), &args(&["tool.wasm"]), &env, "/").unwrap();
        let Workload::Wasm(entry) = entry else { panic!("not wasm: {entry:?}") };
        assert_eq!(entry.module, ModuleSource::Rootfs("/opt/bin/tool.wasm".into()));
    }

    #[test]
    fn native_executables_and_scripts_go_to_runc() {
        let root = rootfs_with(&[("/elf", b"\x7fELF\x02\x01"), ("/run.sh", b"#!/bin/sh\necho")]);
        assert_eq!(resolve(root.path(), &args(&["/elf"]), &[], "/").unwrap(), Workload::Native);
        assert_eq!(resolve(root.path(), &args(&["/run.sh"]), &[], "/").unwrap(), Workload::Native);
    }

    #[test]
    fn each_bad_entrypoint_has_its_own_error() {
        let root = rootfs_with(&[("/text", b"hello"), ("/empty", b"")]);
        let run = |a: &str| resolve(root.path(), &args(&[a]), &[], "/").unwrap_err();
        assert_eq!(run("/missing.wasm"), EntryError::NotFound("/missing.wasm".into()));
        assert_eq!(run("/text"), EntryError::Unknown("/text".into()));
        assert_eq!(run("/empty"), EntryError::Unknown("/empty".into()));
        assert_eq!(resolve(root.path(), &[], &[], "/").unwrap_err(), EntryError::NoArgs);
    }

    #[test]
    fn module_sources_travel_as_arguments() {
        let layer = ModuleSource::Layer { image: "example.com/app:1".into(), sha256: "ab".into(), file: "/cache/layers/ab.wasm".into() };
        for source in [ModuleSource::Rootfs("/app.wasm".into()), layer] {
            let args: Vec<String> = source.to_args().into_iter().map(|a| a.into_string().unwrap()).collect();
            assert_eq!(ModuleSource::from_args(&args), Some(source));
        }
        assert_eq!(ModuleSource::from_args(&args(&["elsewhere", "/x"])), None);
    }

    #[test]
    fn symlinks_cannot_leave_the_rootfs() {
        let root = rootfs_with(&[]);
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("escape")).unwrap();
        let err = resolve(root.path(), &args(&["/escape"]), &[], "/").unwrap_err();
        assert_eq!(err, EntryError::NotFound("/escape".into()));
    }
}
