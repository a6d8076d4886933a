//! Mounts made through descriptors. Every target is resolved once, inside
//! the rootfs, to an `O_PATH` descriptor, and the mount is made on that
//! descriptor: nothing can swap a path component for a symlink between the
//! check and the mount. Binds are cloned with `open_tree` and given their
//! flags with `mount_setattr`, recursively (a read-only volume has no
//! writable submount, and no submount has devices), before `move_mount`
//! puts them on the target.
//!
//! How a target is resolved: a path that stays on the rootfs's own mount
//! may follow the image's symlinks, always within the rootfs
//! (`RESOLVE_IN_ROOT`); a path that crosses into a mount made here (a
//! volume, which another container may be writing to) may follow none.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

use crate::shared::launch_plan::MountFlags;
use crate::shared::mount_api::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// What the target of a mount must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Dir,
    File,
}

/// The container's rootfs, open as the root every target resolves in.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(rootfs: &Path) -> Result<Root> {
        Ok(Root { fd: open_dir(rootfs)? })
    }

    /// The mount point `destination` inside the rootfs, made if missing
    /// (directories as needed, then a directory or an empty file).
    pub fn target(&self, destination: &Path, kind: TargetKind) -> Result<OwnedFd> {
        let relative = destination.strip_prefix("/").unwrap_or(destination);
        let fd = self.resolve_or_make(relative, kind)?;
        let is_dir = SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        match (kind, is_dir) {
            (TargetKind::Dir, false) => bail!("{} is not a directory in the rootfs", destination.display()),
            (TargetKind::File, true) => bail!("{} is a directory in the rootfs, the mount is a file", destination.display()),
            _ => Ok(fd),
        }
    }

    fn resolve_or_make(&self, relative: &Path, kind: TargetKind) -> Result<OwnedFd> {
        match self.resolve(relative) {
            Err(Errno::ENOENT) => {}
            found => return found.map_err(|errno| refused(relative, errno)),
        }
        let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
            bail!("cannot make the mount point {}", relative.display());
        };
        let parent = match parent.as_os_str().is_empty() {
            true => self.fd.try_clone()?,
            false => self.resolve_or_make(parent, TargetKind::Dir)?,
        };
        let made = match kind {
            TargetKind::Dir => mkdirat(&parent, name, Mode::from_bits_truncate(0o755)),
            TargetKind::File => {
                let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
                nix::fcntl::openat(&parent, name, flags, Mode::from_bits_truncate(0o644)).map(drop)
            }
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno).with_context(|| format!("make the mount point /{}", relative.display())),
        }
        self.resolve(relative).map_err(|errno| refused(relative, errno))
    }

    /// Resolves `relative` as the module says: the image's symlinks are
    /// followed only while the path stays on the rootfs's own mount.
    fn resolve(&self, relative: &Path) -> nix::Result<OwnedFd> {
        let how = |resolve| OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(resolve);
        let in_root = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        match openat2(&self.fd, relative, how(in_root | ResolveFlag::RESOLVE_NO_XDEV)) {
            Err(Errno::EXDEV) => openat2(&self.fd, relative, how(in_root | ResolveFlag::RESOLVE_NO_SYMLINKS)),
            resolved => resolved,
        }
    }
}

fn refused(relative: &Path, errno: Errno) -> anyhow::Error {
    match errno {
        Errno::ELOOP => anyhow::anyhow!("mount point /{} goes through a symlink inside a volume", relative.display()),
        errno => anyhow::anyhow!("resolve the mount point /{}: {errno}", relative.display()),
    }
}

/// Binds the host path `source` (with its submounts if `recursive`) onto
/// `target`, with `flags` and nodev on every mount of the bind.
pub fn bind(source: &Path, target: &OwnedFd, recursive: bool, flags: MountFlags) -> Result<()> {
    let path = CString::new(source.as_os_str().as_bytes())?;
    let tree = mount_api::clone_tree(libc::AT_FDCWD, &path, recursive).with_context(|| format!("bind source {}", source.display()))?;
    set_attributes(&tree, flags, true).context("apply mount options")?;
    move_onto(&tree, target)
}

/// Mounts a fresh tmpfs with these data options onto `target`, nodev.
pub fn tmpfs(data: &str, target: &OwnedFd, flags: MountFlags) -> Result<()> {
    let flags = ms_flags(flags) | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), fd_path(target).as_str(), Some("tmpfs"), flags, Some(data)).map_err(Into::into)
}

/// Sets nodev and nosuid on the rootfs and every mount below it.
pub fn without_devices(rootfs: &Path) -> Result<()> {
    let root = open_dir(rootfs)?;
    set_attributes(&root, MountFlags { nosuid: true, ..MountFlags::default() }, true).context("make the rootfs nodev")
}

/// Makes the rootfs's own mount read-only (not the volumes on it).
pub fn read_only(rootfs: &Path) -> Result<()> {
    let root = open_dir(rootfs)?;
    set_attributes(&root, MountFlags { readonly: true, nosuid: true, ..MountFlags::default() }, false).context("make the rootfs read-only")
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).with_context(|| format!("open {}", path.display()))
}

/// `flags` plus nodev on the mount at `fd` (and below it if `recursive`).
fn set_attributes(fd: &impl AsFd, flags: MountFlags, recursive: bool) -> Result<()> {
    let mut attr_set = MOUNT_ATTR_NODEV;
    for (on, bit) in [(flags.readonly, MOUNT_ATTR_RDONLY), (flags.nosuid, MOUNT_ATTR_NOSUID), (flags.noexec, MOUNT_ATTR_NOEXEC)] {
        if on {
            attr_set |= bit;
        }
    }
    mount_api::set_attributes(fd, attr_set, recursive).map_err(Into::into)
}

fn move_onto(tree: &OwnedFd, target: &OwnedFd) -> Result<()> {
    // Safety: move_mount takes two descriptors and two empty paths.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(moved).map(drop).context("move the mount onto its target")
}

fn ms_flags(flags: MountFlags) -> MsFlags {
    let mut ms = MsFlags::empty();
    ms.set(MsFlags::MS_RDONLY, flags.readonly);
    ms.set(MsFlags::MS_NOSUID, flags.nosuid);
    ms.set(MsFlags::MS_NODEV, flags.nodev);
    ms.set(MsFlags::MS_NOEXEC, flags.noexec);
    ms
}

/// The magic link that names an open descriptor, for the classic mount(2).
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_made_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.target(Path::new("/etc/hosts"), TargetKind::File).unwrap();
        root.target(Path::new("/var/data"), TargetKind::Dir).unwrap();
        assert!(dir.path().join("etc/hosts").is_file() && dir.path().join("var/data").is_dir());
        let wrong = root.target(Path::new("/etc/hosts"), TargetKind::Dir).unwrap_err();
        assert!(wrong.to_string().contains("not a directory"), "{wrong}");
    }

    #[test]
    fn the_images_symlinks_resolve_within_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        std::os::unix::fs::symlink("/run", dir.path().join("var-run")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("escape")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        root.target(Path::new("/var-run/secrets"), TargetKind::Dir).unwrap();
        assert!(dir.path().join("run/secrets").is_dir());
        // An absolute symlink to the host's / is the rootfs's / here.
        root.target(Path::new("/escape/made-here"), TargetKind::Dir).unwrap();
        assert!(dir.path().join("made-here").is_dir());
    }
}
