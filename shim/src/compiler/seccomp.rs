//! The compiler's seccomp filter: memory (never executable), threads for
//! parallel compilation, its pipes, clocks and randomness. No open, no
//! socket, no signal to anyone, no new process.

use anyhow::Result;
use seccompiler::BpfProgram;

use crate::shared::sandbox::{self, any_of};

pub fn filters() -> Result<Vec<BpfProgram>> {
    let mut conditional = vec![
        (libc::SYS_clone, sandbox::threads_only()?),
        // Thread names.
        (libc::SYS_prctl, any_of(0, &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64])?),
        // Its own limits only (libc's getrlimit).
        (libc::SYS_prlimit64, any_of(0, &[0])?),
    ];
    conditional.extend(sandbox::never_executable()?);
    sandbox::filters(ALLOWED, conditional)
}

#[rustfmt::skip]
const ALLOWED: &[i64] = &[
    // its pipes
    libc::SYS_read, libc::SYS_write, libc::SYS_close, libc::SYS_fstat, libc::SYS_statx,
    // memory (mmap and mprotect: without PROT_EXEC, above)
    libc::SYS_munmap, libc::SYS_madvise, libc::SYS_mremap, libc::SYS_brk,
    // threads, signals, exit
    libc::SYS_futex, libc::SYS_set_robust_list, libc::SYS_rseq, libc::SYS_exit, libc::SYS_exit_group,
    libc::SYS_gettid, libc::SYS_getpid, libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn, libc::SYS_sigaltstack, libc::SYS_sched_yield, libc::SYS_sched_getaffinity,
    libc::SYS_getrlimit,
    // clocks and randomness
    libc::SYS_clock_gettime, libc::SYS_clock_nanosleep, libc::SYS_nanosleep, libc::SYS_getrandom,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiler_reaches_no_file_socket_or_process() {
        for nr in [libc::SYS_openat, libc::SYS_socket, libc::SYS_kill, libc::SYS_tgkill, libc::SYS_execve, libc::SYS_ptrace, libc::SYS_mmap] {
            assert!(!ALLOWED.contains(&nr), "{nr}");
        }
        assert_eq!(filters().unwrap().len(), 2);
    }
}
