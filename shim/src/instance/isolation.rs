//! Linux isolation of the instance process, as its plan says: the pod's
//! namespaces, a private mount namespace whose `/` is the container rootfs
//! with its mounts, and the hostname.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, sethostname};

use crate::shared::launch_plan::{MountFlags, MountKind, MountPlan, NamespaceKind, NamespacePlan};

/// Joins the namespaces the plan names by path, in its order, creates the
/// ones it asks for, and always creates a mount namespace of our own.
pub fn enter_namespaces(plan: &NamespacePlan, hostname: Option<&str>) -> Result<()> {
    for (kind, path) in &plan.join {
        let file = File::open(path).with_context(|| format!("open {kind:?} namespace {}", path.display()))?;
        setns(&file, clone_flag(*kind)).with_context(|| format!("join {kind:?} namespace {}", path.display()))?;
    }
    let fresh = plan.create.iter().fold(CloneFlags::CLONE_NEWNS, |flags, kind| flags | clone_flag(*kind));
    unshare(fresh).context("create the container's namespaces")?;
    if fresh.contains(CloneFlags::CLONE_NEWNET) {
        // As runc does: a new network namespace gets its loopback up.
        loopback_up().context("bring up lo in the new network namespace")?;
    }
    if let Some(name) = hostname {
        sethostname(name).with_context(|| format!("set hostname {name}"))?;
    }
    Ok(())
}

fn loopback_up() -> Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // Safety: ifreq is plain data; the ioctls read and write only within it.
    // (The request's C type differs between glibc and musl, hence `as _`.)
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

fn clone_flag(kind: NamespaceKind) -> CloneFlags {
    match kind {
        NamespaceKind::Network => CloneFlags::CLONE_NEWNET,
        NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
    }
}

/// Makes `rootfs` the process's `/`, with the plan's bind and tmpfs mounts
/// in it, read-only where the plan says.
pub fn enter_rootfs(rootfs: &Path, readonly: bool, mounts: &[MountPlan]) -> Result<()> {
    // Nothing we mount may propagate back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>).context("make / a slave mount")?;
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind the rootfs {}", rootfs.display()))?;
    let root = Dir::open_ambient_dir(rootfs, ambient_authority()).with_context(|| format!("open rootfs {}", rootfs.display()))?;
    for m in mounts {
        mount_one(&root, rootfs, m).with_context(|| format!("mount {}", m.destination.display()))?;
    }
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, rootfs, None::<&str>, flags, None::<&str>).context("make the rootfs read-only")?;
    }
    chdir(rootfs).context("enter the rootfs")?;
    pivot_root(".", ".").context("pivot_root into the rootfs")?;
    umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

fn ms_flags(flags: MountFlags) -> MsFlags {
    let mut ms = MsFlags::empty();
    ms.set(MsFlags::MS_RDONLY, flags.readonly);
    ms.set(MsFlags::MS_NOSUID, flags.nosuid);
    ms.set(MsFlags::MS_NODEV, flags.nodev);
    ms.set(MsFlags::MS_NOEXEC, flags.noexec);
    ms
}

fn mount_one(root: &Dir, rootfs: &Path, m: &MountPlan) -> Result<()> {
    let flags = ms_flags(m.flags);
    match &m.kind {
        MountKind::Bind { source, recursive } => {
            if !source.exists() {
                bail!("bind source {} does not exist", source.display());
            }
            let target = make_target(root, rootfs, &m.destination, source.is_dir())?;
            let bind = if *recursive { MsFlags::MS_BIND | MsFlags::MS_REC } else { MsFlags::MS_BIND };
            mount(Some(source), &target, None::<&str>, bind, None::<&str>)?;
            if !flags.is_empty() {
                // Bind mounts take ro/nosuid/... only on a remount.
                let again = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
                mount(None::<&str>, &target, None::<&str>, again, None::<&str>).context("apply mount options")?;
            }
        }
        MountKind::Tmpfs { data } => {
            let target = make_target(root, rootfs, &m.destination, true)?;
            mount(Some("tmpfs"), &target, Some("tmpfs"), flags, Some(data.as_str()))?;
        }
    }
    Ok(())
}

/// Creates the mount point inside the rootfs (a directory, or a file for a
/// file mount) and returns its host path; symlinks resolve inside the rootfs.
fn make_target(root: &Dir, rootfs: &Path, destination: &Path, is_dir: bool) -> Result<PathBuf> {
    let relative = destination.strip_prefix("/").unwrap_or(destination);
    if is_dir {
        root.create_dir_all(relative)?;
    } else {
        if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)?;
        }
        if !root.exists(relative) {
            root.create(relative)?;
        }
    }
    let resolved = root.canonicalize(relative)?;
    Ok(rootfs.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_targets_stay_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        let root = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
        assert!(make_target(&root, dir.path(), Path::new("/link/x"), true).is_err());
        let file = make_target(&root, dir.path(), Path::new("/etc/hosts"), false).unwrap();
        assert_eq!(file, dir.path().join("etc/hosts"));
        assert!(file.is_file());
    }
}
