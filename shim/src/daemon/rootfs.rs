//! The container's rootfs as containerd hands it to a shim: a list of mounts
//! (usually one overlay) to assemble where the spec's root says (containerd
//! makes that `BUNDLE/rootfs`), undone on Delete.

use std::path::Path;

use anyhow::{Context, Result};
use containerd_shim::protos::types::mount::Mount;
use tracing::warn;

/// Mounts containerd's rootfs mounts at `target`.
pub fn mount(target: &Path, mounts: &[Mount]) -> Result<()> {
    for m in mounts {
        let fs_type = Some(m.type_.as_str()).filter(|t| !t.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, target)
            .with_context(|| format!("mount the container rootfs ({} {}) at {}", m.type_, m.source, target.display()))?;
    }
    Ok(())
}

/// Unmounts everything at and below `target`; errors are logged, not fatal,
/// so that a half-made task can always be cleaned up.
pub fn unmount(target: &Path) {
    let Some(path) = target.to_str() else { return };
    if let Err(err) = containerd_shim::mount::umount_recursive(Some(path), libc::MNT_DETACH) {
        warn!("unmount {path}: {err}");
    }
}
