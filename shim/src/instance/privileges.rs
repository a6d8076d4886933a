//! The last step before the guest runs: the spec's user and groups, no
//! capabilities, no_new_privs, and a seccomp allowlist of what the engine
//! and WASI need.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::shared::launch_plan::UserPlan;

pub fn drop_all(user: &UserPlan) -> Result<()> {
    // The bounding set can only shrink while CAP_SETPCAP is still held.
    caps::clear(None, CapSet::Bounding).context("clear the capability bounding set")?;
    caps::clear(None, CapSet::Ambient).context("clear ambient capabilities")?;
    become_user(user)?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).with_context(|| format!("clear {set:?} capabilities"))?;
    }
    nix::sys::prctl::set_no_new_privs().context("set no_new_privs")?;
    seccompiler::apply_filter_all_threads(&allowlist()?).context("install the seccomp filter")?;
    Ok(())
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

/// Any syscall not listed fails with EPERM: no mounts, namespaces, ptrace,
/// module loading, keyrings, bpf, new privileges or clock changes.
fn allowlist() -> Result<BpfProgram> {
    let rules = ALLOWED.iter().map(|nr| (*nr, vec![])).collect::<BTreeMap<_, _>>();
    let arch = TargetArch::try_from(std::env::consts::ARCH).context("seccomp target architecture")?;
    let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch)?;
    Ok(filter.try_into()?)
}

#[rustfmt::skip]
const ALLOWED: &[i64] = &[
    // files and directories
    libc::SYS_read, libc::SYS_write, libc::SYS_readv, libc::SYS_writev, libc::SYS_pread64,
    libc::SYS_pwrite64, libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_preadv2, libc::SYS_pwritev2,
    libc::SYS_lseek, libc::SYS_close, libc::SYS_openat, libc::SYS_newfstatat, libc::SYS_fstat,
    libc::SYS_statx, libc::SYS_fstatfs, libc::SYS_statfs, libc::SYS_getdents64, libc::SYS_fcntl,
    libc::SYS_ioctl, libc::SYS_dup, libc::SYS_dup3, libc::SYS_pipe2, libc::SYS_mkdirat,
    libc::SYS_unlinkat, libc::SYS_renameat, libc::SYS_renameat2, libc::SYS_linkat,
    libc::SYS_symlinkat, libc::SYS_readlinkat, libc::SYS_faccessat, libc::SYS_faccessat2,
    libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchown, libc::SYS_fchownat,
    libc::SYS_utimensat, libc::SYS_ftruncate, libc::SYS_fallocate, libc::SYS_fsync,
    libc::SYS_fdatasync, libc::SYS_fadvise64, libc::SYS_flock, libc::SYS_getcwd, libc::SYS_fchdir,
    libc::SYS_chdir,
    // memory
    libc::SYS_mmap, libc::SYS_munmap, libc::SYS_mprotect, libc::SYS_madvise, libc::SYS_mremap,
    libc::SYS_brk, libc::SYS_membarrier,
    // threads, signals, exit
    libc::SYS_futex, libc::SYS_set_robust_list, libc::SYS_get_robust_list, libc::SYS_rseq,
    libc::SYS_clone, libc::SYS_clone3, libc::SYS_exit, libc::SYS_exit_group, libc::SYS_gettid,
    libc::SYS_getpid, libc::SYS_getppid, libc::SYS_tgkill, libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_sigaltstack,
    libc::SYS_restart_syscall, libc::SYS_sched_yield, libc::SYS_sched_getaffinity,
    libc::SYS_prctl, libc::SYS_getrlimit, libc::SYS_prlimit64, libc::SYS_uname, libc::SYS_sysinfo,
    libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid, libc::SYS_getgroups,
    libc::SYS_getresuid, libc::SYS_getresgid,
    // clocks and randomness
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep, libc::SYS_gettimeofday, libc::SYS_getrandom,
    // polling
    libc::SYS_ppoll, libc::SYS_pselect6, libc::SYS_epoll_create1, libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2, libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // sockets (WASI sockets, in the pod's network namespace)
    libc::SYS_socket, libc::SYS_bind, libc::SYS_listen, libc::SYS_accept, libc::SYS_accept4,
    libc::SYS_connect, libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_getsockopt,
    libc::SYS_setsockopt, libc::SYS_sendto, libc::SYS_recvfrom, libc::SYS_sendmsg,
    libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg, libc::SYS_shutdown,
    libc::SYS_socketpair,
    // x86_64 only, still used by libc and the engine
    #[cfg(target_arch = "x86_64")] libc::SYS_poll,
    #[cfg(target_arch = "x86_64")] libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")] libc::SYS_open,
    #[cfg(target_arch = "x86_64")] libc::SYS_stat,
    #[cfg(target_arch = "x86_64")] libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")] libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")] libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")] libc::SYS_time,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_compiles_for_this_architecture() {
        assert!(!allowlist().unwrap().is_empty());
    }

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        for nr in [libc::SYS_mount, libc::SYS_ptrace, libc::SYS_setns, libc::SYS_unshare, libc::SYS_bpf, libc::SYS_setuid] {
            assert!(!ALLOWED.contains(&nr), "{nr}");
        }
    }
}
