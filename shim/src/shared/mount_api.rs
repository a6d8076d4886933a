//! The new mount API's two calls both processes need: `open_tree` clones a
//! mount (a detached tree held only by its descriptor) and `mount_setattr`
//! flags it. The instance binds volumes with them; the node cache makes a
//! read-only view of itself, so that the compiled code an instance maps
//! cannot be reopened for writing through that instance's descriptors.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const OPEN_TREE_CLONE: libc::c_uint = 0x1;

/// `mount_setattr`'s argument (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount at `path` relative to `dir` (the mount of
/// `dir` itself for an empty path), with its submounts if `recursive`.
pub fn clone_tree(dir: libc::c_int, path: &std::ffi::CStr, recursive: bool) -> nix::Result<OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    // Safety: open_tree reads the path and returns a new descriptor or -1.
    let tree = Errno::result(unsafe { libc::syscall(libc::SYS_open_tree, dir, path.as_ptr(), flags) })?;
    // Safety: the descriptor was just returned to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// Sets the `MOUNT_ATTR_*` bits `attr_set` on the mount at `fd` (and on
/// every mount below it if `recursive`).
pub fn set_attributes(fd: &impl AsFd, attr_set: u64, recursive: bool) -> nix::Result<()> {
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let at = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // Safety: mount_setattr reads `attr`, of the size passed, and the empty path.
    let done = unsafe {
        libc::syscall(libc::SYS_mount_setattr, fd.as_fd().as_raw_fd(), c"".as_ptr(), at, &attr as *const MountAttr, std::mem::size_of::<MountAttr>())
    };
    Errno::result(done).map(drop)
}
