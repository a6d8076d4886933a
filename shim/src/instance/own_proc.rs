//! The instance's own /proc/PID directory, held across pivot_root, which
//! takes the host's /proc away: the compiled code is mapped and the pod's
//! AppArmor profile taken after the pivot, and both need it. wasmtime maps
//! a component's compiled code only by path, so a descriptor is named by
//! its number relative to `fd/`, with the working directory moved there
//! for the call only. Dropped before the guest runs: it reaches the host's
//! /proc.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::fchdir;

pub struct OwnProc {
    dir: OwnedFd,
}

impl OwnProc {
    /// Opens /proc/self, which must still be the host's.
    pub fn open() -> Result<OwnProc> {
        let dir = nix::fcntl::open("/proc/self", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).context("open /proc/self")?;
        Ok(OwnProc { dir })
    }

    /// Calls `with` with a path that opens `fd`'s file, relative to the
    /// working directory, which is restored afterwards.
    pub fn with_fd_path<T>(&self, fd: &impl AsRawFd, with: impl FnOnce(&Path) -> T) -> Result<T> {
        let back = nix::fcntl::open(".", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).context("open the working directory")?;
        fchdir(&self.dir).context("enter /proc/self")?;
        let result = with(&Path::new("fd").join(fd.as_raw_fd().to_string()));
        fchdir(&back).context("return to the working directory")?;
        Ok(result)
    }

    /// Confines this process to the loaded AppArmor profile `profile` from
    /// now on (a profile is a thread's: call it while there is one).
    pub fn change_apparmor_profile(&self, profile: &str) -> Result<()> {
        if self.threads()? != 1 {
            bail!("the AppArmor profile is taken by one thread, and the instance has more");
        }
        // attr/apparmor/current where the kernel stacks LSMs, else attr/current.
        let fd = ["attr/apparmor/current", "attr/current"]
            .iter()
            .find_map(|path| openat(&self.dir, *path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()).ok())
            .context("open this process's AppArmor attribute")?;
        std::fs::File::from(fd)
            .write_all(format!("changeprofile {profile}").as_bytes())
            .with_context(|| format!("change to the AppArmor profile {profile} (is it loaded on this node?)"))
    }

    fn threads(&self) -> Result<usize> {
        let task = openat(&self.dir, "task", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).context("open /proc/self/task")?;
        let entries = nix::dir::Dir::from_fd(task).context("list /proc/self/task")?;
        Ok(entries.into_iter().flatten().filter(|e| !matches!(e.file_name().to_bytes(), b"." | b"..")).count())
    }
}
