//! What the instance gives up before the guest runs: the spec's OOM score
//! and rlimits, its user and groups, every capability, being dumpable, new
//! privileges, and all syscalls but those its seccomp filter allows
//! (seccomp.rs).

use anyhow::{bail, Context, Result};
use seccompiler::BpfProgram;

use super::seccomp;
use crate::shared::launch_plan::{RlimitPlan, UserPlan};
use crate::shared::sandbox;
use crate::shared::seccomp_profile::SeccompProfile;
use crate::shared::status_pipe::STATUS_FD;

/// Becomes the pod's user with no capability, undumpable again (the
/// change of user may have reset it), and dies with the daemon from then on.
pub fn become_user(user: &UserPlan) -> Result<()> {
    sandbox::become_user(user)?;
    sandbox::undumpable()?;
    die_with_daemon()
}

/// The seccomp filters to install: the pod's profile, if any, then the
/// instance's own (which forbids installing more), built while allocating
/// is still free of the filters' rules.
pub fn filters(pods: Option<&SeccompProfile>) -> Result<Vec<BpfProgram>> {
    let mut filters = match pods {
        Some(profile) => profile.filters()?,
        None => Vec::new(),
    };
    filters.extend(seccomp::filters(std::process::id())?);
    Ok(filters)
}

/// no_new_privs and the filters: the last step before the guest is ready.
pub fn confine(filters: &[BpfProgram]) -> Result<()> {
    sandbox::confine(filters)
}

/// SIGKILL when the daemon dies (the instance is the daemon's child, its
/// PID namespace's intermediate process gone). Set after the last change
/// of user, which would clear it. The daemon may have died before: its end
/// of the status pipe then is closed, and the instance ends.
fn die_with_daemon() -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("set the parent-death signal")?;
    let mut status = libc::pollfd { fd: STATUS_FD, events: libc::POLLOUT, revents: 0 };
    // Safety: poll reads and writes only the one pollfd given.
    let ready = unsafe { libc::poll(&mut status, 1, 0) };
    if ready < 0 || status.revents & libc::POLLERR != 0 {
        bail!("the shim daemon is gone");
    }
    Ok(())
}

/// The spec's rlimits; raising a hard limit needs the capabilities still held.
pub fn set_rlimits(rlimits: &[RlimitPlan]) -> Result<()> {
    for limit in rlimits {
        let value = libc::rlimit { rlim_cur: limit.soft, rlim_max: limit.hard };
        // Safety: setrlimit reads the struct passed.
        if unsafe { libc::setrlimit(limit.resource as _, &value) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!("set {} to {}:{}: {err}", limit.name, limit.soft, limit.hard);
        }
    }
    Ok(())
}

/// The spec's OOM score; /proc is the host's still.
pub fn set_oom_score_adj(score: i32) -> Result<()> {
    std::fs::write("/proc/self/oom_score_adj", score.to_string()).with_context(|| format!("set oom_score_adj {score}"))
}

/// Capabilities are per thread, so a thread started before `become_user`
/// would keep them, and a fork copies only its caller. Checked while /proc
/// is still reachable (before pivot_root).
pub fn ensure_single_thread() -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").context("list /proc/self/task")?.count();
    if threads != 1 {
        bail!("the instance has {threads} threads before dropping privileges; it must have one");
    }
    Ok(())
}
