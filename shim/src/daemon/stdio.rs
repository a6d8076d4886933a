//! A container's stdio as containerd hands it to the shim: FIFO paths,
//! opened for the process that writes and reads them directly.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use anyhow::{Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// FIFO paths, each possibly empty (then the process gets /dev/null).
#[derive(Debug, Clone, Default)]
pub struct IoPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

impl IoPaths {
    pub fn stdin(&self) -> Result<Stdio> {
        open_fifo(&self.stdin, false)
    }

    pub fn stdout(&self) -> Result<Stdio> {
        open_fifo(&self.stdout, true)
    }

    pub fn stderr(&self) -> Result<Stdio> {
        open_fifo(&self.stderr, true)
    }
}

/// Opens one of containerd's stdio FIFOs, or /dev/null when none is given.
fn open_fifo(path: &str, write: bool) -> Result<Stdio> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    // Output FIFOs are opened read-write: the guest then holds a reader too,
    // so a client that detaches (`ctr run -d`) leaves the guest's writes
    // buffered instead of failing with EPIPE, as with runc tasks. Stdin is
    // opened without blocking, as containerd may not have a writer yet.
    let mut options = OpenOptions::new();
    options.read(true);
    if write {
        options.write(true);
    } else {
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).with_context(|| format!("open stdio {path}"))?;
    if !write {
        let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
        fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    }
    Ok(Stdio::from(file))
}
