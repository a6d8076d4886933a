//! Starts an instance process for a wasm container (a fresh exec of this
//! binary, never a bare fork of the multi-threaded shim) and collects its
//! setup report.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use nix::fcntl::OFlag;

use crate::cache::Cache;
use crate::handshake::{self, START_FD, STATUS_FD};
use crate::stdio::IoPaths;
use crate::workload::WasmEntry;

/// A set-up instance process waiting for Start.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    pub start: StartPipe,
    /// The status pipe after `ok`: read once the instance has exited.
    pub late_report: File,
}

/// The shim's end of an instance's start pipe.
#[derive(Debug)]
pub struct StartPipe(File);

impl StartPipe {
    /// Lets the guest run.
    pub fn start(mut self) -> Result<()> {
        self.0.write_all(b"s").context("signal the instance process to start")
    }
}

/// Spawns the instance for `entry` (with `cache`) and waits for its report. `on_log`
/// receives the instance's log lines; an `Err` carries its setup error, and
/// the pid of the failed process for the caller to account for.
pub fn launch(bundle: &Path, entry: &WasmEntry, cache: &Cache, io: &IoPaths, on_log: impl Fn(&str)) -> Result<Launched, (Option<u32>, anyhow::Error)> {
    let (command, pipes) = prepare_command(bundle, entry, cache, io).map_err(|e| (None, e))?;
    let pid = spawn(command, pipes.child_ends).map_err(|e| (None, e))?;
    let mut status = File::from(pipes.status_read);
    let stream = read_report(&mut status).map_err(|e| (Some(pid), e))?;
    let report = handshake::parse(&stream);
    report.logs.iter().for_each(|l| on_log(l));
    match report.result {
        Ok(()) => Ok(Launched { pid, start: StartPipe(File::from(pipes.start_write)), late_report: status }),
        Err(msg) => Err((Some(pid), anyhow::anyhow!(msg))),
    }
}

/// Reads the status pipe until the setup report is whole or the pipe ends.
fn read_report(status: &mut File) -> Result<String> {
    let mut stream = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = status.read(&mut chunk).context("read the instance report")?;
        stream.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&stream);
        if n == 0 || handshake::is_complete(&text) {
            return Ok(text.into_owned());
        }
    }
}

/// The shim's ends of the two pipes, and the child's ends until it is spawned.
struct Pipes {
    status_read: OwnedFd,
    start_write: OwnedFd,
    child_ends: (OwnedFd, OwnedFd),
}

/// Spawns and then closes the parent's copies of everything the child got
/// (pipe ends and stdio FIFOs), so that end-of-file arrives when the child
/// is done with them.
fn spawn(mut command: Command, child_ends: (OwnedFd, OwnedFd)) -> Result<u32> {
    let child = command.spawn().context("spawn the instance process")?;
    drop(command);
    drop(child_ends);
    Ok(child.id())
}

fn prepare_command(bundle: &Path, entry: &WasmEntry, cache: &Cache, io: &IoPaths) -> Result<(Command, Pipes)> {
    let (status_read, status_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create status pipe")?;
    let (start_read, start_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create start pipe")?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("instance")
        .arg(bundle)
        .arg(&entry.export)
        .args(entry.module.to_args())
        .envs(cache.env())
        .stdin(io.stdin()?)
        .stdout(io.stdout()?)
        .stderr(io.stderr()?);
    let (status_fd, start_fd) = (status_write.as_raw_fd(), start_read.as_raw_fd());
    // Safety: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Move both ends above the target numbers first so neither
            // overwrites the other, then place them; dup2 clears CLOEXEC.
            let status_high = libc::fcntl(status_fd, libc::F_DUPFD_CLOEXEC, 10);
            let start_high = libc::fcntl(start_fd, libc::F_DUPFD_CLOEXEC, 10);
            if status_high < 0 || start_high < 0 || libc::dup2(status_high, STATUS_FD) < 0 || libc::dup2(start_high, START_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok((command, Pipes { status_read, start_write, child_ends: (status_write, start_read) }))
}
