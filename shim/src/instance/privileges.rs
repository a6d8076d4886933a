//! What the instance gives up before the guest runs: the spec's OOM score
//! and rlimits, its user and groups, every capability, new privileges, and
//! all syscalls but those its seccomp filter allows (seccomp.rs).

use anyhow::{bail, Context, Result};
use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use super::seccomp;
use crate::shared::launch_plan::{RlimitPlan, UserPlan};

pub fn drop_all(user: &UserPlan) -> Result<()> {
    // The bounding set can only shrink while CAP_SETPCAP is still held.
    caps::clear(None, CapSet::Bounding).context("clear the capability bounding set")?;
    caps::clear(None, CapSet::Ambient).context("clear ambient capabilities")?;
    become_user(user)?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).with_context(|| format!("clear {set:?} capabilities"))?;
    }
    nix::sys::prctl::set_no_new_privs().context("set no_new_privs")?;
    for filter in seccomp::filters(std::process::id())? {
        seccompiler::apply_filter_all_threads(&filter).context("install the seccomp filter")?;
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

/// Capabilities are per thread, so a thread started before `drop_all` would
/// keep them. Checked while /proc is still reachable (before pivot_root);
/// nothing between here and `drop_all` starts a thread.
pub fn ensure_single_thread() -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").context("list /proc/self/task")?.count();
    if threads != 1 {
        bail!("the instance has {threads} threads before dropping privileges; it must have one");
    }
    Ok(())
}

fn become_user(user: &UserPlan) -> Result<()> {
    let groups: Vec<Gid> = user.additional_gids.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).context("set supplementary groups")?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).with_context(|| format!("set gid {gid}"))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid).with_context(|| format!("set uid {uid}"))?;
    Ok(())
}
