//! The plan's program, compiled (not yet mapped): its bytes come from the rootfs (read
//! through cap-std, so symlinks resolve inside it) or from the layer file
//! in the node cache, and its cache key is the sha256 of the wasm.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use anyhow::{Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};

use super::compiled_code::Outcome;
use super::engine::{self, Compiled, Kind};
use crate::shared::launch_plan::{LaunchPlan, ProgramSource};

/// A layer is found by its digest alone, a module in the rootfs by the
/// sha256 of its bytes, hashed on every start: an image's file attributes
/// cannot vouch for its content.
pub fn fetch(plan: &LaunchPlan, name: &str) -> Result<(Compiled, Outcome)> {
    match &plan.program {
        ProgramSource::Rootfs { path } => {
            let wasm = read_in_rootfs(&plan.rootfs, path).with_context(|| format!("read {name}"))?;
            let key = hex::encode(Sha256::digest(&wasm));
            engine::fetch(Kind::of(&wasm), &plan.cache, &key, || Ok(wasm), name)
        }
        ProgramSource::Layer { sha256, .. } => {
            let mut layer = plan.cache.open()?.open_layer(sha256)?;
            let kind = Kind::of(&preamble(&mut layer).with_context(|| format!("read {name}"))?);
            let read = || {
                let mut wasm = Vec::new();
                layer.rewind().and_then(|()| layer.read_to_end(&mut wasm)).with_context(|| format!("read {name}"))?;
                Ok(wasm)
            };
            engine::fetch(kind, &plan.cache, sha256, read, name)
        }
    }
}

/// Reads the whole module at `path` inside the container's `rootfs`.
fn read_in_rootfs(rootfs: &Path, path: &Path) -> std::io::Result<Vec<u8>> {
    Dir::open_ambient_dir(rootfs, ambient_authority())?.read(path.strip_prefix("/").unwrap_or(path))
}

/// The first bytes of a wasm file, enough to tell its kind.
fn preamble(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(8);
    file.take(8).read_to_end(&mut bytes)?;
    Ok(bytes)
}
