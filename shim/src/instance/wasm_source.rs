//! The plan's program, compiled: its bytes come from the rootfs (read
//! through cap-std, so symlinks resolve inside it) or from the layer file
//! in the node cache, and its cache key is the sha256 of the wasm.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};

use super::compiled_code::Outcome;
use super::engine::{self, Kind, Program};
use crate::shared::launch_plan::{LaunchPlan, ProgramSource};

/// A layer is found by its digest alone, a module in the rootfs by the
/// sha256 of its bytes, hashed on every start: an image's file attributes
/// cannot vouch for its content.
pub fn load(plan: &LaunchPlan, name: &str) -> Result<(Program, Outcome)> {
    match &plan.program {
        ProgramSource::Rootfs { path } => {
            let wasm = read_in_rootfs(&plan.rootfs, path).with_context(|| format!("read {name}"))?;
            let key = hex::encode(Sha256::digest(&wasm));
            engine::load(Kind::of(&wasm), &plan.cache, &key, || Ok(wasm), name, &plan.env)
        }
        ProgramSource::Layer { sha256, file, .. } => {
            let read = || std::fs::read(file).with_context(|| format!("read {}", file.display()));
            engine::load(Kind::of(&preamble(file)?), &plan.cache, sha256, read, name, &plan.env)
        }
    }
}

/// Reads the whole module at `path` inside the container's `rootfs`.
fn read_in_rootfs(rootfs: &Path, path: &Path) -> std::io::Result<Vec<u8>> {
    Dir::open_ambient_dir(rootfs, ambient_authority())?.read(path.strip_prefix("/").unwrap_or(path))
}

/// The first bytes of a wasm file, enough to tell its kind.
fn preamble(file: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(8);
    File::open(file).and_then(|f| f.take(8).read_to_end(&mut bytes)).with_context(|| format!("read {}", file.display()))?;
    Ok(bytes)
}
