//! Linux isolation of the instance process: the pod's namespaces, a private
//! mount namespace whose `/` is the container rootfs with the spec's mounts,
//! and the hostname.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, sethostname};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

/// Joins the namespaces the spec names by path (network first, so sockets
/// live in the pod's network), creates the ones it asks for without a path,
/// and always creates a mount namespace of our own.
pub fn enter_namespaces(spec: &Spec) -> Result<()> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    let order = [LinuxNamespaceType::Network, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts];
    let mut fresh = CloneFlags::CLONE_NEWNS;
    for kind in order {
        let Some(ns) = namespaces.iter().find(|ns| ns.typ() == kind) else { continue };
        let flag = clone_flag(kind);
        match ns.path() {
            Some(path) => {
                let file = File::open(path).with_context(|| format!("open {kind:?} namespace {}", path.display()))?;
                setns(&file, flag).with_context(|| format!("join {kind:?} namespace {}", path.display()))?;
            }
            None => fresh |= flag,
        }
    }
    if namespaces.iter().any(|ns| ns.typ() == LinuxNamespaceType::User) {
        bail!("user namespaces are not supported for wasm containers");
    }
    unshare(fresh).context("create the container's namespaces")?;
    if fresh.contains(CloneFlags::CLONE_NEWNET) {
        // As runc does: a new network namespace gets its loopback up.
        loopback_up().context("bring up lo in the new network namespace")?;
    }
    if fresh.contains(CloneFlags::CLONE_NEWUTS) {
        if let Some(name) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            sethostname(name).with_context(|| format!("set hostname {name}"))?;
        }
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

fn clone_flag(kind: LinuxNamespaceType) -> CloneFlags {
    match kind {
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        _ => CloneFlags::CLONE_NEWUTS,
    }
}

/// Makes `rootfs` the process's `/`, with the spec's bind and tmpfs mounts
/// in it, read-only where the spec says. Kernel filesystems (proc, sysfs,
/// devpts, mqueue, cgroup) are left out: a WASI guest has no use for them.
pub fn enter_rootfs(spec: &Spec, rootfs: &Path) -> Result<()> {
    // Nothing we mount may propagate back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>).context("make / a slave mount")?;
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind the rootfs {}", rootfs.display()))?;
    let root = Dir::open_ambient_dir(rootfs, ambient_authority()).with_context(|| format!("open rootfs {}", rootfs.display()))?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(&root, rootfs, m).with_context(|| format!("mount {}", m.destination().display()))?;
    }
    let readonly_root = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
    if readonly_root {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, rootfs, None::<&str>, flags, None::<&str>).context("make the rootfs read-only")?;
    }
    chdir(rootfs).context("enter the rootfs")?;
    pivot_root(".", ".").context("pivot_root into the rootfs")?;
    umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

/// How one spec mount is made.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Bind { recursive: bool, flags: MsFlags },
    Tmpfs { flags: MsFlags, data: String },
    Skip,
}

fn plan(m: &Mount) -> Plan {
    let options = m.options().as_deref().unwrap_or_default();
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = None;
    for opt in options {
        match opt.as_str() {
            "bind" => bind = Some(false),
            "rbind" => bind = Some(true),
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "rw" | "suid" | "dev" | "exec" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared"
            | "relatime" | "norelatime" | "strictatime" => {}
            other => data.push(other),
        }
    }
    let kind = m.typ().as_deref().unwrap_or("");
    match (bind, kind) {
        (Some(recursive), _) => Plan::Bind { recursive, flags },
        (None, "bind") => Plan::Bind { recursive: false, flags },
        (None, "tmpfs") => Plan::Tmpfs { flags, data: data.join(",") },
        _ => Plan::Skip,
    }
}

fn mount_one(root: &Dir, rootfs: &Path, m: &Mount) -> Result<()> {
    let plan = plan(m);
    if plan == Plan::Skip {
        return Ok(());
    }
    let source = m.source().clone().unwrap_or_default();
    let source_is_dir = matches!(plan, Plan::Tmpfs { .. }) || source.is_dir();
    let target = make_target(root, rootfs, m.destination(), source_is_dir)?;
    match plan {
        Plan::Bind { recursive, flags } => {
            if !source.exists() {
                bail!("bind source {} does not exist", source.display());
            }
            let bind = if recursive { MsFlags::MS_BIND | MsFlags::MS_REC } else { MsFlags::MS_BIND };
            mount(Some(&source), &target, None::<&str>, bind, None::<&str>)?;
            if !flags.is_empty() {
                // Bind mounts take ro/nosuid/... only on a remount.
                let again = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
                mount(None::<&str>, &target, None::<&str>, again, None::<&str>).context("apply mount options")?;
            }
        }
        Plan::Tmpfs { flags, data } => {
            mount(Some("tmpfs"), &target, Some("tmpfs"), flags, Some(data.as_str()))?;
        }
        Plan::Skip => {}
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
    use oci_spec::runtime::MountBuilder;

    fn mount_with(typ: &str, options: &[&str]) -> Mount {
        MountBuilder::default()
            .destination("/data")
            .typ(typ)
            .source("/src")
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn read_only_bind_is_planned_with_rdonly() {
        let plan = plan(&mount_with("bind", &["rbind", "ro"]));
        assert_eq!(plan, Plan::Bind { recursive: true, flags: MsFlags::MS_RDONLY });
    }

    #[test]
    fn tmpfs_keeps_its_data_options() {
        let plan = plan(&mount_with("tmpfs", &["nosuid", "mode=755", "size=65536k"]));
        assert_eq!(plan, Plan::Tmpfs { flags: MsFlags::MS_NOSUID, data: "mode=755,size=65536k".into() });
    }

    #[test]
    fn kernel_filesystems_are_skipped() {
        for typ in ["proc", "sysfs", "devpts", "mqueue", "cgroup"] {
            assert_eq!(plan(&mount_with(typ, &["nosuid"])), Plan::Skip, "{typ}");
        }
    }

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
