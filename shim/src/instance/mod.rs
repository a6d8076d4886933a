//! The instance process: one per wasm container, started by the daemon as
//! `containerd-shim-wasmlet-v1 instance BUNDLE` with the container's stdio,
//! an empty environment and three pipes (status, start, plan). It reads its
//! launch plan, sets itself up as the plan says (setup.rs), reports on the
//! status pipe, waits for Start, then runs the guest and exits with its code.

mod compile;
mod compiled_code;
mod engine;
mod own_proc;
mod isolation;
mod mounts;
mod privileges;
mod seccomp;
mod setup;
mod signals;
mod termination;
mod wasm_source;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

use crate::shared::allocator;
use crate::shared::launch_plan::LaunchPlan;
use crate::shared::sandbox;
use crate::shared::status_pipe::{OUT_OF_MEMORY, START_FD, STATUS_FD};

pub fn main() -> ! {
    // Safety: the daemon hands these descriptors over and nothing else owns them.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    // Before anything: no process of the pod may reach into this one's
    // descriptors or memory through /proc while it holds privileges; and
    // the compiler process it may run must not hold its pipes (with the
    // status pipe it could name any pid as the task's).
    let set_up = sandbox::undumpable()
        .and_then(|()| close_on_exec(&[STATUS_FD, START_FD]))
        .and_then(|()| LaunchPlan::receive())
        .and_then(|plan| Ok((setup::setup(&plan, &mut status)?, plan.termination_message)));
    let (ready, termination_message) = match set_up {
        Ok(ready) => ready,
        Err(err) => {
            let _ = write!(status, "error {err:#}");
            std::process::exit(1);
        }
    };
    allocator::release_free_heap();
    // The status pipe stays open until exit, for a late `oom`.
    let _ = writeln!(status, "ok");
    if !start_requested() {
        std::process::exit(0);
    }
    let ended = engine::run(ready);
    if ended.out_of_memory {
        let _ = writeln!(status, "{OUT_OF_MEMORY}");
    }
    if let (Some(path), Some(error)) = (&termination_message, &ended.error) {
        termination::write(path, error);
    }
    let _ = std::io::stdout().flush();
    std::process::exit(ended.code);
}

fn close_on_exec(fds: &[i32]) -> anyhow::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    for fd in fds {
        // Safety: the daemon handed these descriptors over; they stay open.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| anyhow::anyhow!("mark descriptor {fd:?} close-on-exec: {e}"))?;
    }
    Ok(())
}

/// One byte on the start pipe runs the guest; end-of-file means the task
/// was deleted before it started.
fn start_requested() -> bool {
    // Safety: as for the status pipe.
    let mut start = unsafe { File::from_raw_fd(START_FD) };
    let mut byte = [0u8; 1];
    matches!(start.read(&mut byte), Ok(1))
}
