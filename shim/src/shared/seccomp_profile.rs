//! The pod's own seccomp profile (the spec's `linux.seccomp`: a Localhost
//! profile, or the runtime's default), applied to a wasm instance on top of
//! the instance's own allowlist. Filters stack and the kernel takes the
//! strictest answer of all, so the pod's profile can only take away.
//!
//! The daemon turns the spec's profile into a [`SeccompProfile`] at Create
//! (refusing what cannot apply, such as a user-space notifier) and builds
//! its filters once to find every error there; the instance builds them
//! again and installs them before its own.
//!
//! An OCI profile gives each rule its own action; a classic filter has one
//! action for its matches. So the profile becomes one filter for its
//! default (every rule's syscalls are let through it) and one per other
//! action (matching that action's rules, letting everything else
//! through). Syscall names this table does not know are syscalls the
//! instance's allowlist never lets through, so rules naming them are left
//! out (as libseccomp leaves out names another architecture has), and
//! `seccomp` itself is left to the instance's allowlist, installed last,
//! which refuses it.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};
use serde::{Deserialize, Serialize};

/// The pod's profile, as the instance installs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProfile {
    default: Action,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Action {
    Allow,
    Log,
    Errno(u32),
    Trace(u32),
    Trap,
    KillThread,
    KillProcess,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rule {
    syscalls: Vec<i64>,
    action: Action,
    /// All must hold; none means the rule matches whatever the arguments.
    args: Vec<ArgCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ArgCheck {
    index: u8,
    op: Op,
    value: u64,
    /// For `MaskedEq`: `value` is the mask, this the value compared.
    value_two: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

/// What the instance itself does once the filters are on: tell the daemon
/// it is ready (write), wait for Start (read) and exit. A profile that
/// refuses one of these could only leave an instance that never reports
/// nor ends, so it is refused at Create.
const NEEDED: [&str; 3] = ["read", "write", "exit_group"];

/// runc's errno for an ERRNO action that names none.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

impl SeccompProfile {
    /// The spec's profile, or an error naming what cannot apply to a wasm
    /// instance.
    pub fn from_oci(seccomp: &LinuxSeccomp) -> Result<SeccompProfile> {
        if seccomp.listener_path().is_some() {
            bail!("the seccomp profile sends syscalls to a user-space notifier (listenerPath), which wasm containers do not support");
        }
        let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
        let mut rules = Vec::new();
        for syscall in seccomp.syscalls().iter().flatten() {
            let args = syscall.args().iter().flatten().map(arg_check).collect::<Result<Vec<_>>>()?;
            let syscalls: Vec<i64> = syscall.names().iter().filter_map(|name| number(name)).collect();
            if !syscalls.is_empty() {
                rules.push(Rule { syscalls, action: action(syscall.action(), syscall.errno_ret())?, args });
            }
        }
        let profile = SeccompProfile { default, rules };
        profile.filters().context("build the pod's seccomp profile")?;
        let refused: Vec<&str> = NEEDED.iter().copied().filter(|name| number(name).is_some_and(|nr| profile.refuses(nr))).collect();
        if !refused.is_empty() {
            bail!(
                "the seccomp profile refuses {}, which a wasm instance needs to report that it is ready, to run and to exit",
                refused.join(", ")
            );
        }
        Ok(profile)
    }

    /// Whether the profile refuses syscall `nr` whatever its arguments: no
    /// rule lets it through (a conditional one might), and either a rule
    /// that takes no arguments or the default refuses it.
    fn refuses(&self, nr: i64) -> bool {
        let lets_through = |action: Action| matches!(action, Action::Allow | Action::Log);
        let naming: Vec<&Rule> = self.rules.iter().filter(|rule| rule.syscalls.contains(&nr)).collect();
        if naming.iter().any(|rule| lets_through(rule.action)) {
            return false;
        }
        naming.iter().any(|rule| rule.args.is_empty()) || !lets_through(self.default)
    }

    /// The filters to install, in any order (each decides alone), before
    /// a filter of the caller's that refuses `seccomp` itself: they let
    /// `seccomp` through, so that filter can still be installed after them.
    pub fn filters(&self) -> Result<Vec<BpfProgram>> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).context("seccomp target architecture")?;
        let mut filters = Vec::new();
        if self.default != Action::Allow {
            let mut every_rule = rule_map(self.rules.iter())?;
            every_rule.insert(libc::SYS_seccomp, Vec::new());
            filters.push(SeccompFilter::new(every_rule, self.default.into(), SeccompAction::Allow, arch)?.try_into()?);
        }
        let mut actions: Vec<Action> = self.rules.iter().map(|rule| rule.action).filter(|a| *a != Action::Allow).collect();
        actions.sort();
        actions.dedup();
        for action in actions {
            let mut matching = rule_map(self.rules.iter().filter(|rule| rule.action == action))?;
            matching.remove(&libc::SYS_seccomp);
            filters.push(SeccompFilter::new(matching, SeccompAction::Allow, action.into(), arch)?.try_into()?);
        }
        Ok(filters)
    }
}

/// The rules by syscall; a syscall that one rule matches whatever its
/// arguments gets no conditions (seccompiler's empty chain).
fn rule_map<'a>(rules: impl Iterator<Item = &'a Rule>) -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        for nr in &rule.syscalls {
            let chain = map.entry(*nr).or_insert_with(|| Some(Vec::new()));
            match (chain, rule.args.is_empty()) {
                (chain @ Some(_), true) => *chain = None,
                (Some(chain), false) => chain.push(SeccompRule::new(rule.args.iter().map(condition).collect::<Result<_>>()?)?),
                (None, _) => {}
            }
        }
    }
    Ok(map.into_iter().map(|(nr, chain)| (nr, chain.unwrap_or_default())).collect())
}

fn condition(check: &ArgCheck) -> Result<SeccompCondition> {
    let op = match check.op {
        Op::Ne => SeccompCmpOp::Ne,
        Op::Lt => SeccompCmpOp::Lt,
        Op::Le => SeccompCmpOp::Le,
        Op::Eq => SeccompCmpOp::Eq,
        Op::Ge => SeccompCmpOp::Ge,
        Op::Gt => SeccompCmpOp::Gt,
        Op::MaskedEq => SeccompCmpOp::MaskedEq(check.value),
    };
    let value = if check.op == Op::MaskedEq { check.value_two } else { check.value };
    Ok(SeccompCondition::new(check.index, SeccompCmpArgLen::Qword, op, value)?)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<Action> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActErrno => Action::Errno(errno.unwrap_or(DEFAULT_ERRNO)),
        LinuxSeccompAction::ScmpActTrace => Action::Trace(errno.unwrap_or(DEFAULT_ERRNO)),
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => Action::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActNotify => {
            bail!("the seccomp profile's action SCMP_ACT_NOTIFY needs a user-space notifier, which wasm containers do not support")
        }
    })
}

fn arg_check(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<ArgCheck> {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => Op::Ne,
        LinuxSeccompOperator::ScmpCmpLt => Op::Lt,
        LinuxSeccompOperator::ScmpCmpLe => Op::Le,
        LinuxSeccompOperator::ScmpCmpEq => Op::Eq,
        LinuxSeccompOperator::ScmpCmpGe => Op::Ge,
        LinuxSeccompOperator::ScmpCmpGt => Op::Gt,
        LinuxSeccompOperator::ScmpCmpMaskedEq => Op::MaskedEq,
    };
    let index = u8::try_from(arg.index()).ok().filter(|i| *i < 6).with_context(|| format!("seccomp argument index {} is not 0 to 5", arg.index()))?;
    Ok(ArgCheck { index, op, value: arg.value(), value_two: arg.value_two().unwrap_or(0) })
}

impl From<Action> for SeccompAction {
    fn from(action: Action) -> SeccompAction {
        match action {
            Action::Allow => SeccompAction::Allow,
            Action::Log => SeccompAction::Log,
            Action::Errno(errno) => SeccompAction::Errno(errno),
            Action::Trace(data) => SeccompAction::Trace(data),
            Action::Trap => SeccompAction::Trap,
            Action::KillThread => SeccompAction::KillThread,
            Action::KillProcess => SeccompAction::KillProcess,
        }
    }
}

/// (libc's constant's name, its number), for a list of SYS_* constants.
macro_rules! syscalls {
    ($($constant:ident),* $(,)?) => { &[$((stringify!($constant), libc::$constant)),*] };
}

/// Every syscall an instance's allowlist mentions, on every architecture...
#[rustfmt::skip]
const COMMON: &[(&str, i64)] = syscalls![
    SYS_accept, SYS_accept4, SYS_bind, SYS_brk, SYS_chdir, SYS_clock_getres, SYS_clock_gettime,
    SYS_clock_nanosleep, SYS_clone, SYS_clone3, SYS_close, SYS_connect, SYS_dup, SYS_dup3,
    SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2, SYS_eventfd2, SYS_exit,
    SYS_exit_group, SYS_faccessat, SYS_faccessat2, SYS_fadvise64, SYS_fallocate, SYS_fchdir, SYS_fchmod,
    SYS_fchmodat, SYS_fchown, SYS_fchownat, SYS_fcntl, SYS_fdatasync, SYS_flock, SYS_fstat, SYS_fstatfs,
    SYS_fsync, SYS_ftruncate, SYS_futex, SYS_get_robust_list, SYS_getcwd, SYS_getdents64, SYS_getegid,
    SYS_geteuid, SYS_getgid, SYS_getgroups, SYS_getpeername, SYS_getpid, SYS_getppid, SYS_getrandom,
    SYS_getresgid, SYS_getresuid, SYS_getrlimit, SYS_getsockname, SYS_getsockopt, SYS_gettid,
    SYS_gettimeofday, SYS_getuid, SYS_ioctl, SYS_kill, SYS_linkat, SYS_listen, SYS_lseek, SYS_madvise,
    SYS_membarrier, SYS_mkdirat, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_munmap, SYS_nanosleep,
    SYS_newfstatat, SYS_openat, SYS_pipe2, SYS_ppoll, SYS_prctl, SYS_pread64, SYS_preadv, SYS_preadv2,
    SYS_prlimit64, SYS_pselect6, SYS_pwrite64, SYS_pwritev, SYS_pwritev2, SYS_read, SYS_readlinkat,
    SYS_readv, SYS_recvfrom, SYS_recvmmsg, SYS_recvmsg, SYS_renameat, SYS_renameat2, SYS_restart_syscall,
    SYS_rseq, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sched_getaffinity,
    SYS_sched_yield, SYS_sendmmsg, SYS_sendmsg, SYS_sendto, SYS_set_robust_list, SYS_setsockopt,
    SYS_shutdown, SYS_sigaltstack, SYS_socket, SYS_socketpair, SYS_statfs, SYS_statx, SYS_symlinkat,
    SYS_sysinfo, SYS_tgkill, SYS_timerfd_create, SYS_timerfd_settime, SYS_uname, SYS_unlinkat,
    SYS_utimensat, SYS_write, SYS_writev,
];

/// ...and those only some architectures have.
#[cfg(target_arch = "x86_64")]
const ARCH_ONLY: &[(&str, i64)] = syscalls![SYS_dup2, SYS_epoll_wait, SYS_lstat, SYS_open, SYS_poll, SYS_readlink, SYS_stat, SYS_time];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_ONLY: &[(&str, i64)] = &[];

/// This architecture's number of the syscall `name`, if an instance's
/// allowlist mentions it.
pub fn number(name: &str) -> Option<i64> {
    COMMON.iter().chain(ARCH_ONLY).find(|(constant, _)| constant.strip_prefix("SYS_") == Some(name)).map(|(_, nr)| *nr)
}

/// Every syscall number the table knows.
#[cfg(test)]
pub fn known() -> impl Iterator<Item = i64> {
    COMMON.iter().chain(ARCH_ONLY).map(|(_, nr)| *nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> Result<SeccompProfile> {
        SeccompProfile::from_oci(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn names_resolve_to_this_architectures_numbers() {
        assert_eq!(number("read"), Some(libc::SYS_read));
        assert_eq!(number("fcntl"), Some(libc::SYS_fcntl));
        assert_eq!(number("no_such_call"), None);
    }

    #[test]
    fn an_allow_list_is_one_filter() {
        let allow_list = profile(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}"#).unwrap();
        assert_eq!(allow_list.filters().unwrap().len(), 1);
    }

    #[test]
    fn a_profile_that_leaves_the_instance_no_way_to_report_or_exit_is_refused() {
        let deny_all = format!("{:#}", profile(r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#).unwrap_err());
        assert!(deny_all.contains("refuses read, write, exit_group, which a wasm instance needs"), "{deny_all}");
        let no_write = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["write"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#;
        assert!(format!("{:#}", profile(no_write).unwrap_err()).contains("refuses write,"));
        // Refused only for some arguments: it may still let the instance through.
        let some_writes = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["write"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 99, "op": "SCMP_CMP_EQ"}]}]}"#;
        assert!(profile(some_writes).is_ok());
    }

    #[test]
    fn each_other_action_gets_a_filter_of_its_own() {
        let json = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getdents64"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["socket"], "action": "SCMP_ACT_KILL_PROCESS", "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]},
            {"names": ["uselib", "mount"], "action": "SCMP_ACT_ERRNO"}]}"#;
        let profile = profile(json).unwrap();
        // EACCES, EPERM and kill; the rule of unknown names is left out.
        assert_eq!(profile.filters().unwrap().len(), 3);
        assert_eq!(profile.rules.len(), 3);
        assert_eq!(profile.rules[0].action, Action::Errno(13));
        assert_eq!(profile.rules[1].action, Action::Errno(libc::EPERM as u32));
    }

    #[test]
    fn what_cannot_apply_is_refused_by_name() {
        let notify = profile(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#);
        assert!(format!("{:#}", notify.unwrap_err()).contains("SCMP_ACT_NOTIFY"));
        let listener = profile(r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/notify.sock"}"#);
        assert!(format!("{:#}", listener.unwrap_err()).contains("listenerPath"));
        let index = profile(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#);
        assert!(format!("{:#}", index.unwrap_err()).contains("index 7"));
    }
}
