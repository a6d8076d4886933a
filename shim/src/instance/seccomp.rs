//! The instance's seccomp filter: the syscalls the engine, WASI and tokio
//! need, and for the dangerous ones only the arguments they need. Signals
//! and rlimits reach only the instance itself, clone makes threads but no
//! namespaces (clone3, whose flags a filter cannot read, says ENOSYS so
//! libc falls back to clone), sockets are IPv4 and IPv6 only (and unnamed
//! pairs within the process), ioctl knows
//! and fcntl a handful of requests each, and no memory becomes executable: compiled code
//! was mapped before the filter, so nothing loaded after it can run (a
//! library the guest's image ships, say, that libc's resolver would load).
//! Everything else fails with EPERM.

use anyhow::Result;
use seccompiler::{BpfProgram, SeccompRule};

use crate::shared::sandbox::{self, any_of};

/// ioctl requests: non-blocking and close-on-exec on descriptors, terminal
/// checks of the stdio, bytes readable, and PAGEMAP_SCAN, with which the
/// HTTP pool resets its instance slots.
const IOCTLS: [u64; 9] = [
    libc::FIONBIO as u64,
    libc::FIOCLEX as u64,
    libc::FIONCLEX as u64,
    libc::FIONREAD as u64,
    libc::TCGETS as u64,
    0x802C_542A, // TCGETS2
    libc::TIOCGWINSZ as u64,
    0xC060_6610, // PAGEMAP_SCAN: _IOWR('f', 16, struct pm_scan_arg)
    0x8008_6601, // FS_IOC_GETFLAGS
];

/// fcntl commands: descriptor and status flags, duplicates, record locks.
/// Not F_SETOWN, F_SETOWN_EX or F_SETSIG, which direct a descriptor's
/// signals at another process (in a shared PID namespace, a sidecar), nor
/// leases or directory notifications, which signal too.
const FCNTLS: [u64; 12] = [
    libc::F_DUPFD as u64,
    libc::F_DUPFD_CLOEXEC as u64,
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_GETLK as u64,
    libc::F_SETLK as u64,
    libc::F_SETLKW as u64,
    libc::F_OFD_GETLK as u64,
    libc::F_OFD_SETLK as u64,
    libc::F_OFD_SETLKW as u64,
];

/// prctl operations: thread names (tokio's workers) and anonymous mapping names.
const PRCTLS: [u64; 3] = [libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64, libc::PR_SET_VMA as u64];

/// The filters for the process `own_pid` (as its PID namespace numbers it).
pub fn filters(own_pid: u32) -> Result<Vec<BpfProgram>> {
    sandbox::filters(ALLOWED, conditional(own_pid)?)
}

/// Syscalls allowed with some arguments only: each rule is one allowed case.
fn conditional(own_pid: u32) -> Result<Vec<(i64, Vec<SeccompRule>)>> {
    let own = own_pid as u64;
    let mut rules = vec![
        (libc::SYS_kill, any_of(0, &[own])?),
        (libc::SYS_tgkill, any_of(0, &[own])?),
        (libc::SYS_prlimit64, any_of(0, &[0, own])?),
        (libc::SYS_clone, sandbox::threads_only()?),
        (libc::SYS_socket, any_of(0, &[libc::AF_INET as u64, libc::AF_INET6 as u64])?),
        // tokio's signal driver wakes itself through an unnamed pair.
        (libc::SYS_socketpair, any_of(0, &[libc::AF_UNIX as u64])?),
        (libc::SYS_ioctl, any_of(1, &IOCTLS)?),
        (libc::SYS_fcntl, any_of(1, &FCNTLS)?),
        (libc::SYS_prctl, any_of(0, &PRCTLS)?),
    ];
    rules.extend(sandbox::never_executable()?);
    Ok(rules)
}

/// Allowed whatever their arguments.
#[rustfmt::skip]
const ALLOWED: &[i64] = &[
    // files and directories
    libc::SYS_read, libc::SYS_write, libc::SYS_readv, libc::SYS_writev, libc::SYS_pread64,
    libc::SYS_pwrite64, libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_preadv2, libc::SYS_pwritev2,
    libc::SYS_lseek, libc::SYS_close, libc::SYS_openat, libc::SYS_newfstatat, libc::SYS_fstat,
    libc::SYS_statx, libc::SYS_fstatfs, libc::SYS_statfs, libc::SYS_getdents64,
    libc::SYS_dup, libc::SYS_dup3, libc::SYS_pipe2, libc::SYS_mkdirat,
    libc::SYS_unlinkat, libc::SYS_renameat, libc::SYS_renameat2, libc::SYS_linkat,
    libc::SYS_symlinkat, libc::SYS_readlinkat, libc::SYS_faccessat, libc::SYS_faccessat2,
    libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchown, libc::SYS_fchownat,
    libc::SYS_utimensat, libc::SYS_ftruncate, libc::SYS_fallocate, libc::SYS_fsync,
    libc::SYS_fdatasync, libc::SYS_fadvise64, libc::SYS_flock, libc::SYS_getcwd, libc::SYS_fchdir,
    libc::SYS_chdir,
    // memory (mmap and mprotect: without PROT_EXEC, below)
    libc::SYS_munmap, libc::SYS_madvise, libc::SYS_mremap, libc::SYS_brk, libc::SYS_membarrier,
    // threads, signals, exit (clone, kill, tgkill, prlimit64, prctl: below)
    libc::SYS_futex, libc::SYS_set_robust_list, libc::SYS_get_robust_list, libc::SYS_rseq,
    libc::SYS_exit, libc::SYS_exit_group, libc::SYS_gettid,
    libc::SYS_getpid, libc::SYS_getppid, libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_sigaltstack,
    libc::SYS_restart_syscall, libc::SYS_sched_yield, libc::SYS_sched_getaffinity,
    libc::SYS_getrlimit, libc::SYS_uname, libc::SYS_sysinfo,
    libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid, libc::SYS_getgroups,
    libc::SYS_getresuid, libc::SYS_getresgid,
    // clocks and randomness
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep, libc::SYS_gettimeofday, libc::SYS_getrandom,
    // polling
    libc::SYS_ppoll, libc::SYS_pselect6, libc::SYS_epoll_create1, libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2, libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // sockets (WASI sockets, in the pod's network namespace; socket: below)
    libc::SYS_bind, libc::SYS_listen, libc::SYS_accept, libc::SYS_accept4,
    libc::SYS_connect, libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_getsockopt,
    libc::SYS_setsockopt, libc::SYS_sendto, libc::SYS_recvfrom, libc::SYS_sendmsg,
    libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg, libc::SYS_shutdown,
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
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use crate::instance::privileges;
    use crate::shared::launch_plan::UserPlan;

    /// fcntl's F_SETSIG (linux/fcntl.h), which the libc crate lacks.
    const F_SETSIG: libc::c_int = 10;
    /// Set in the child process that performs the attacks.
    const ATTACKER: &str = "WASMLET_TEST_ATTACKER";
    /// The uid the child drops to, shared with a process it then attacks,
    /// so that only the filter (not the kernel's permission checks) stands
    /// between them.
    const NOBODY: u32 = 65534;

    #[test]
    fn what_is_dangerous_is_never_allowed_whatever_its_arguments() {
        let dangerous = [
            libc::SYS_mount, libc::SYS_ptrace, libc::SYS_setns, libc::SYS_unshare, libc::SYS_bpf, libc::SYS_setuid,
            libc::SYS_kill, libc::SYS_tgkill, libc::SYS_tkill, libc::SYS_clone, libc::SYS_clone3, libc::SYS_socket,
            libc::SYS_socketpair, libc::SYS_ioctl, libc::SYS_prlimit64, libc::SYS_mmap, libc::SYS_mprotect,
            libc::SYS_pkey_mprotect, libc::SYS_process_vm_readv, libc::SYS_execve, libc::SYS_prctl, libc::SYS_keyctl,
            libc::SYS_fcntl,
        ];
        for nr in dangerous {
            assert!(!ALLOWED.contains(&nr), "syscall {nr} is allowed unconditionally");
        }
        assert_eq!(filters(1).unwrap().len(), 2);
    }

    #[test]
    fn the_pods_profile_knows_every_syscall_the_allowlist_mentions() {
        let known: Vec<i64> = crate::shared::seccomp_profile::known().collect();
        let mentioned = ALLOWED.iter().copied().chain(conditional(1).unwrap().into_iter().map(|(nr, _)| nr)).chain([libc::SYS_clone3]);
        for nr in mentioned {
            assert!(known.contains(&nr), "syscall {nr} is missing from shared/seccomp_profile.rs");
        }
    }

    #[test]
    fn after_the_drop_the_instance_reaches_nothing_but_itself() {
        let neighbour = Command::new("sleep").arg("30").uid(NOBODY).gid(NOBODY).spawn().expect("start a neighbour as nobody");
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "instance::seccomp::tests::attacks_after_the_drop", "--ignored", "--nocapture", "--test-threads=1"])
            .env(ATTACKER, neighbour.id().to_string())
            .output()
            .unwrap();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(neighbour.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && stdout.contains("every attack refused"), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    }

    /// Run only by the test above, in a process of its own: privileges,
    /// once dropped, do not come back.
    #[test]
    #[ignore = "runs in the child of after_the_drop_the_instance_reaches_nothing_but_itself"]
    fn attacks_after_the_drop() {
        let neighbour: i32 = std::env::var(ATTACKER).expect("run by its parent test").parse().unwrap();
        let filters = privileges::filters(None).unwrap();
        privileges::become_user(&UserPlan { uid: NOBODY, gid: NOBODY, additional_gids: vec![] }).unwrap();
        // Undumpable after the change of user too (which may reset it).
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        privileges::confine(&filters).unwrap();
        // The errno of a failed call, read before the next call.
        let errno = |result: i64| if result == -1 { std::io::Error::last_os_error().raw_os_error() } else { None };
        // Safety for each call: plain syscalls with no memory passed but
        // constants; each is expected to fail.
        let attacks: [(&str, i32, Option<i32>); 11] = [
            ("signal another process", libc::EPERM, errno(unsafe { libc::kill(neighbour, 0) } as i64)),
            ("set another process's rlimits", libc::EPERM, errno(unsafe { libc::syscall(libc::SYS_prlimit64, neighbour, libc::RLIMIT_NOFILE, 0, 0) })),
            ("create a user namespace", libc::EPERM, errno(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as i64)),
            ("clone into a user namespace", libc::EPERM, errno(unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_NEWUSER | libc::SIGCHLD, 0, 0, 0, 0) })),
            ("clone3, whose flags the filter cannot read", libc::ENOSYS, errno(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) })),
            ("open a netlink socket", libc::EPERM, errno(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) } as i64)),
            ("map executable memory", libc::EPERM, errno(unsafe {
                libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
            } as i64)),
            ("push input into a terminal", libc::EPERM, errno(unsafe { libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) } as i64)),
            ("direct a descriptor's signals at another process", libc::EPERM, errno(unsafe { libc::fcntl(0, libc::F_SETOWN, neighbour) } as i64)),
            ("choose the signal a descriptor sends", libc::EPERM, errno(unsafe { libc::fcntl(0, F_SETSIG, libc::SIGKILL) } as i64)),
            ("take a lease, which signals its holder", libc::EPERM, errno(unsafe { libc::fcntl(0, libc::F_SETLEASE, libc::F_RDLCK) } as i64)),
        ];
        for (attack, expected, got) in attacks {
            assert_eq!(got, Some(expected), "{attack}");
        }
        // What the engine needs still works: itself, threads, IP sockets.
        assert_eq!(unsafe { libc::kill(std::process::id() as i32, 0) }, 0);
        assert!(std::thread::spawn(|| 7).join().is_ok());
        assert!(unsafe { libc::fcntl(0, libc::F_GETFL) } >= 0, "read status flags: {}", std::io::Error::last_os_error());
        let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(socket >= 0, "an IPv4 socket: {}", std::io::Error::last_os_error());
        println!("every attack refused");
    }
}
