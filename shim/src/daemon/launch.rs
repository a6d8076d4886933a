//! Starts an instance process for a wasm container (a fresh exec of this
//! binary, never a bare fork of the multi-threaded shim), hands it its
//! launch plan and collects its setup report.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use nix::fcntl::OFlag;

use super::exits::Exits;
use super::stdio::IoPaths;
use crate::shared::launch_plan::{LaunchPlan, INSTANCE_COMMAND, PLAN_FD};
use crate::shared::status_pipe::{self, START_FD, STATUS_FD};

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

/// Why an instance under a pod's seccomp profile may end without a word:
/// the profile is installed last, and the report is written after it.
const SECCOMP_HINT: &str = "the pod's seccomp profile may refuse what the instance needs to report and run \
(read, write, futex, mmap, exit_group and the guest's own calls)";

/// Spawns the instance of the container in `bundle`, lets `place` put the
/// process where it belongs (a systemd scope) while it waits for its plan,
/// sends it `plan` and waits for its report. The process spawned goes on as
/// a child in its PID namespace and leaves: its exit is discarded in
/// `exits`, and the child's pid is the task's. `on_log` receives the
/// instance's log lines; an `Err` carries its setup error, and the pid of
/// the failed process for the caller to account for.
pub fn launch(
    bundle: &Path,
    plan: &LaunchPlan,
    io: &IoPaths,
    exits: &Exits,
    place: impl FnOnce(u32) -> Result<()>,
    on_log: impl Fn(&str),
) -> Result<Launched, (Option<u32>, anyhow::Error)> {
    let (command, pipes) = prepare_command(bundle, io).map_err(|e| (None, e))?;
    let spawned = spawn(command, pipes.child_ends).map_err(|e| (None, e))?;
    place(spawned).map_err(|e| (Some(spawned), e))?;
    // An instance that dies before reading its plan reports nothing: the
    // status pipe's end-of-file says so below.
    let _ = plan.send(File::from(pipes.plan_write));
    let mut status = File::from(pipes.status_read);
    let report = read_report(&mut status).map(|stream| status_pipe::parse(&stream));
    let pid = match report.as_ref().ok().and_then(|r| r.pid) {
        Some(child) => {
            exits.discard(spawned);
            child
        }
        None => spawned,
    };
    let report = report.map_err(|e| (Some(pid), e))?;
    report.logs.iter().for_each(|l| on_log(l));
    match report.result {
        Ok(()) => Ok(Launched { pid, start: StartPipe(File::from(pipes.start_write)), late_report: status }),
        Err(msg) if msg == status_pipe::ENDED_SILENTLY && plan.seccomp.is_some() => Err((Some(pid), anyhow::anyhow!("{msg}: {SECCOMP_HINT}"))),
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
        if n == 0 || status_pipe::is_complete(&text) {
            return Ok(text.into_owned());
        }
    }
}

/// The shim's ends of the three pipes, and the child's ends until it is spawned.
struct Pipes {
    status_read: OwnedFd,
    start_write: OwnedFd,
    plan_write: OwnedFd,
    child_ends: [OwnedFd; 3],
}

/// Spawns and then closes the parent's copies of everything the child got
/// (pipe ends and stdio FIFOs), so that end-of-file arrives when the child
/// is done with them.
fn spawn(mut command: Command, child_ends: [OwnedFd; 3]) -> Result<u32> {
    let child = command.spawn().context("spawn the instance process")?;
    drop(command);
    drop(child_ends);
    Ok(child.id())
}

/// `instance BUNDLE`, with containerd's stdio and an empty environment:
/// the plan says everything. The bundle is there only so that `ps` tells
/// which container an instance serves.
fn prepare_command(bundle: &Path, io: &IoPaths) -> Result<(Command, Pipes)> {
    let (status_read, status_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create status pipe")?;
    let (start_read, start_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create start pipe")?;
    let (plan_read, plan_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create plan pipe")?;
    let mut command = Command::new("/proc/self/exe");
    command.arg(INSTANCE_COMMAND).arg(bundle).env_clear().stdin(io.stdin()?).stdout(io.stdout()?).stderr(io.stderr()?);
    let placed = [(status_write.as_raw_fd(), STATUS_FD), (start_read.as_raw_fd(), START_FD), (plan_read.as_raw_fd(), PLAN_FD)];
    // Safety: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Move every end above the target numbers first so none
            // overwrites another, then place them; dup2 clears CLOEXEC.
            let mut high = [0; 3];
            for (slot, (fd, _)) in high.iter_mut().zip(placed) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, (_, target)) in high.into_iter().zip(placed) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child_ends = [status_write, start_read, plan_read];
    Ok((command, Pipes { status_read, start_write, plan_write, child_ends }))
}
