//! The instance process: one per wasm container, started by the shim as
//! `containerd-shim-wasmlet-v1 instance BUNDLE EXPORT SOURCE...` with the
//! container's stdio. It isolates itself, loads the module, reports on the
//! status pipe, waits for Start, then runs the guest and exits with its code.

mod isolation;
mod privileges;
mod termination;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};

use crate::cache::{Cache, Outcome};
use crate::engine::{self, Guest, Kind, Prepared, Program};
use crate::handshake::{self, START_FD, STATUS_FD};
use crate::workload::ModuleSource;
use crate::{cgroup, rootfs, workload};

pub fn main(args: &[String]) -> ! {
    // Safety: the shim hands these descriptors over and nothing else owns them.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    let (prepared, termination_log) = match setup(args, &mut status) {
        Ok(ready) => ready,
        Err(err) => {
            let _ = write!(status, "error {err:#}");
            std::process::exit(1);
        }
    };
    release_free_heap();
    // The status pipe stays open until exit, for a late `oom`.
    let _ = writeln!(status, "ok");
    if !start_requested() {
        std::process::exit(0);
    }
    let ended = engine::run(prepared);
    if ended.out_of_memory {
        let _ = writeln!(status, "{}", handshake::OUT_OF_MEMORY);
    }
    if let (Some(path), Some(error)) = (&termination_log, &ended.error) {
        termination::write(path, error);
    }
    let _ = std::io::stdout().flush();
    std::process::exit(ended.code);
}

/// The program from the node cache, compiled by the engine for its kind:
/// a layer is found by its digest alone, a module in the rootfs by the
/// sha256 of its bytes. Those are hashed on every start: an image's file
/// attributes cannot vouch for its content.
fn load(source: &ModuleSource, name: &str, rootfs: &Path, env: &[String]) -> Result<(Program, Outcome)> {
    let cache = Cache::from_env()?;
    match source {
        ModuleSource::Rootfs(path) => {
            let wasm = workload::read_module(rootfs, path).with_context(|| format!("read {name}"))?;
            let key = hex::encode(Sha256::digest(&wasm));
            engine::load(Kind::of(&wasm), &cache, &key, || Ok(wasm), name, env)
        }
        ModuleSource::Layer { sha256, file, .. } => {
            let read = || std::fs::read(file).with_context(|| format!("read {}", file.display()));
            engine::load(Kind::of(&preamble(file)?), &cache, sha256, read, name, env)
        }
    }
}

/// The first bytes of a wasm file, enough to tell its kind.
fn preamble(file: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(8);
    File::open(file).and_then(|f| f.take(8).read_to_end(&mut bytes)).with_context(|| format!("read {}", file.display()))?;
    Ok(bytes)
}

fn start_requested() -> bool {
    // Safety: as for the status pipe.
    let mut start = unsafe { File::from_raw_fd(START_FD) };
    let mut byte = [0u8; 1];
    matches!(start.read(&mut byte), Ok(1))
}

/// Sets everything up; returns the guest ready to run and the file kubelet
/// reads the termination message from, if the container has one.
fn setup(args: &[String], status: &mut File) -> Result<(Prepared, Option<PathBuf>)> {
    let usage = "usage: instance BUNDLE EXPORT (rootfs PATH | layer IMAGE SHA256 FILE)";
    let [bundle, export, source @ ..] = args else { bail!(usage) };
    let source = ModuleSource::from_args(source).context(usage)?;
    let bundle = Path::new(bundle);
    let spec = Spec::load(bundle.join("config.json")).context("read the OCI spec")?;
    let process = spec.process().as_ref().context("the spec has no process")?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());

    // The cgroup first, so that everything below is accounted to the container.
    let cgroup_path = cgroup::path_of(&spec)?;
    if let Some(path) = &cgroup_path {
        cgroup::create_and_join(path, resources, std::process::id())?;
    }
    isolation::enter_namespaces(&spec)?;

    let rootfs = rootfs::path_of(&spec, bundle);
    let name = source.name();
    let env = process.env().as_deref().unwrap_or_default();
    let (program, outcome) = load(&source, &name, &rootfs, env)?;
    let _ = writeln!(status, "log compiled code for {name}: cache {outcome:?}");

    privileges::ensure_single_thread()?;
    isolation::enter_rootfs(&spec, &rootfs)?;
    let mut argv = process.args().clone().unwrap_or_default();
    if let Some(first) = argv.first_mut() {
        *first = workload::split_export(first).0.to_string();
    }
    let guest = Guest {
        args: &argv,
        env,
        cwd: process.cwd().to_str().unwrap_or("/"),
        memory_limit: cgroup::memory_limit(resources).map(|limit| {
            let used = cgroup_path.as_deref().and_then(cgroup::memory_usage).unwrap_or(0);
            cgroup::guest_memory_cap(limit, used)
        }),
    };
    let prepared = engine::prepare(&program, &name, export, &guest)?;
    privileges::drop_all(process.user())?;
    Ok((prepared, termination::path_of(&spec)))
}

/// Setup's temporary buffers (module bytes, cache checks) go back to the
/// kernel: an idle instance keeps only what the guest needs.
#[cfg(target_env = "gnu")]
fn release_free_heap() {
    // Safety: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// musl's allocator returns freed memory to the kernel by itself.
#[cfg(not(target_env = "gnu"))]
fn release_free_heap() {}
