//! Linux isolation of the instance process, as its plan says: the pod's
//! namespaces, a private mount namespace whose `/` is the container rootfs
//! with its mounts, and the hostname.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, sethostname};

use super::mounts::{self, Root, TargetKind};
use crate::shared::launch_plan::{MountKind, MountPlan, NamespaceKind, NamespacePlan, PidNamespace};

/// Enters the planned PID namespace and goes on in it as a child: a PID
/// namespace holds only the children of whoever enters it. Returns true in
/// the first process, which must then leave, and false in the child, once
/// it is the daemon's child (the daemon is a subreaper), so that its
/// parent-death signal follows the daemon.
pub fn enter_pid_namespace(pid: &PidNamespace) -> Result<bool> {
    let (daemon, first) = (nix::unistd::getppid().as_raw() as u32, host_pid()?);
    match pid {
        PidNamespace::Join(path) => {
            let file = File::open(path).with_context(|| format!("open the pod's PID namespace {}", path.display()))?;
            setns(&file, CloneFlags::CLONE_NEWPID).with_context(|| format!("join the pod's PID namespace {}", path.display()))?;
        }
        PidNamespace::New => unshare(CloneFlags::CLONE_NEWPID).context("create a PID namespace")?,
    }
    // Safety: the instance has one thread here (nothing before setup starts
    // one), so the child may go on running Rust after fork.
    match unsafe { nix::unistd::fork() }.context("fork into the PID namespace")? {
        nix::unistd::ForkResult::Parent { .. } => Ok(true),
        nix::unistd::ForkResult::Child => {
            wait_for_parent(daemon, first)?;
            Ok(false)
        }
    }
}

/// Waits until the first process has left and this one's parent is the
/// daemon. Its pid in this namespace says nothing (0): the host's /proc does.
fn wait_for_parent(daemon: u32, first: u32) -> Result<()> {
    let status = format!("/proc/{}/status", host_pid()?);
    for _ in 0..5000 {
        let text = std::fs::read_to_string(&status).with_context(|| format!("read {status}"))?;
        let parent = text.lines().find_map(|line| line.strip_prefix("PPid:")).map(str::trim);
        match parent.and_then(|p| p.parse::<u32>().ok()) {
            Some(p) if p == daemon => return Ok(()),
            // Reparented elsewhere: the daemon is gone.
            Some(p) if p == first => std::thread::sleep(std::time::Duration::from_millis(1)),
            _ => bail!("the shim daemon {daemon} is gone"),
        }
    }
    bail!("still not the shim daemon's child after 5 s")
}


/// This process's pid as the daemon sees it: the host's /proc (still
/// mounted here) numbers processes in the host's PID namespace.
pub fn host_pid() -> Result<u32> {
    let link = std::fs::read_link("/proc/self").context("read /proc/self")?;
    link.to_string_lossy().parse().context("parse /proc/self")
}

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
/// in it (see mounts.rs), read-only where the plan says, and no device
/// node openable anywhere in it.
pub fn enter_rootfs(rootfs: &Path, readonly: bool, mounts: &[MountPlan]) -> Result<()> {
    // Nothing we mount may propagate back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>).context("make / a slave mount")?;
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind the rootfs {}", rootfs.display()))?;
    mounts::without_devices(rootfs)?;
    let root = Root::open(rootfs)?;
    for m in mounts {
        mount_one(&root, m).with_context(|| format!("mount {}", m.destination.display()))?;
    }
    if readonly {
        mounts::read_only(rootfs)?;
    }
    chdir(rootfs).context("enter the rootfs")?;
    pivot_root(".", ".").context("pivot_root into the rootfs")?;
    umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

fn mount_one(root: &Root, m: &MountPlan) -> Result<()> {
    match &m.kind {
        MountKind::Bind { source, recursive } => {
            let is_dir = std::fs::metadata(source).with_context(|| format!("bind source {}", source.display()))?.is_dir();
            let target = root.target(&m.destination, if is_dir { TargetKind::Dir } else { TargetKind::File })?;
            mounts::bind(source, &target, *recursive, m.flags)
        }
        MountKind::Tmpfs { data } => mounts::tmpfs(data, &root.target(&m.destination, TargetKind::Dir)?, m.flags),
    }
}
