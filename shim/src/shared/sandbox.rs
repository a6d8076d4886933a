//! Giving up privileges for good, as the instance does before its guest
//! runs and the compiler before it parses untrusted wasm: a user and
//! groups, no capability in any set, no new privileges, and seccomp
//! filters. Also the filter pieces both allowlists share.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::launch_plan::UserPlan;

/// Namespace flags of clone(2); its low byte is the exit signal, not flags.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Becomes `user` with no capability in any set. (A parent-death signal
/// set before this is cleared by the kernel: set it after.)
pub fn become_user(user: &UserPlan) -> Result<()> {
    // The bounding set can only shrink while CAP_SETPCAP is still held.
    caps::clear(None, CapSet::Bounding).context("clear the capability bounding set")?;
    caps::clear(None, CapSet::Ambient).context("clear ambient capabilities")?;
    let groups: Vec<Gid> = user.additional_gids.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).context("set supplementary groups")?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).with_context(|| format!("set gid {gid}"))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid).with_context(|| format!("set uid {uid}"))?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).with_context(|| format!("clear {set:?} capabilities"))?;
    }
    Ok(())
}

/// Not dumpable: /proc/PID/fd, mem, environ, root and ptrace of this
/// process are then open only to holders of CAP_SYS_PTRACE, not to every
/// process of its user in its PID namespace (a root sidecar, a debug
/// container). A change of user resets it, and execve sets it again, so
/// call it after either.
pub fn undumpable() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).context("make the process undumpable")
}

/// no_new_privs, then `filters` in order on every thread.
pub fn confine(filters: &[BpfProgram]) -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("set no_new_privs")?;
    for filter in filters {
        seccompiler::apply_filter_all_threads(filter).context("install the seccomp filter")?;
    }
    Ok(())
}

/// The filters of an allowlist, in the order to install them: clone3 says
/// ENOSYS first (its flags are in memory a filter cannot read, and libc then
/// falls back to clone, whose flags it can), then the allowlist: `allowed`
/// whatever their arguments, `conditional` only as their rules say, and
/// EPERM for anything else. The allowlist lets clone3 through to the first
/// filter's answer, as an errno beats an allow whatever the order; the
/// allowlist itself forbids installing filters, so it comes last.
pub fn filters(allowed: &[i64], conditional: Vec<(i64, Vec<SeccompRule>)>) -> Result<Vec<BpfProgram>> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).context("seccomp target architecture")?;
    let clone3 = SeccompFilter::new([(libc::SYS_clone3, vec![])].into(), SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed.iter().map(|nr| (*nr, vec![])).collect();
    rules.insert(libc::SYS_clone3, vec![]);
    rules.extend(conditional);
    let allowlist = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch)?;
    Ok(vec![clone3.try_into()?, allowlist.try_into()?])
}

/// One rule per value: argument `arg` (32 bits) equals one of `values`.
pub fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values.iter().map(|value| rule(Cond::new(arg, Len::Dword, Op::Eq, *value))).collect()
}

/// clone for threads: no namespace flags.
pub fn threads_only() -> Result<Vec<SeccompRule>> {
    Ok(vec![rule(Cond::new(0, Len::Qword, Op::MaskedEq(NAMESPACE_FLAGS), 0))?])
}

/// mmap and mprotect without PROT_EXEC: no memory becomes executable.
pub fn never_executable() -> Result<Vec<(i64, Vec<SeccompRule>)>> {
    let no_exec = || -> Result<Vec<SeccompRule>> { Ok(vec![rule(Cond::new(2, Len::Qword, Op::MaskedEq(libc::PROT_EXEC as u64), 0))?]) };
    Ok(vec![(libc::SYS_mmap, no_exec()?), (libc::SYS_mprotect, no_exec()?)])
}

fn rule(condition: std::result::Result<Cond, BackendError>) -> Result<SeccompRule> {
    Ok(SeccompRule::new(vec![condition?])?)
}
