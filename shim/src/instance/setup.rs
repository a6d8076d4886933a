//! The instance's setup, in its fixed order: cgroup and OOM score, the
//! compiled code found (or compiled), PID namespace, the other namespaces,
//! rootfs, rlimits, the drop to the pod's user, the compiled code mapped
//! and linked, the pod's AppArmor profile, and the seccomp filters (the
//! pod's profile and the instance's own). Every step acts on the launch
//! plan; each one's error ends the instance with `error ...` on the status pipe.

use std::fs::File;
use std::io::Write;

use anyhow::Result;

use super::engine::{self, Guest, ReadyGuest};
use super::own_proc::OwnProc;
use super::{isolation, privileges, signals, wasm_source};
use crate::shared::cgroup;
use crate::shared::launch_plan::LaunchPlan;

/// Sets everything up and returns the guest ready to run.
pub fn setup(plan: &LaunchPlan, status: &mut File) -> Result<ReadyGuest> {
    // The cgroup first, so that everything below is accounted to the container.
    // (With the systemd driver the daemon put it in its scope already.)
    if let Some(group) = plan.cgroup.as_ref().filter(|group| !group.made_by_systemd) {
        cgroup::create_and_join(&group.path, group.resources.as_ref(), std::process::id())?;
    }
    if let Some(score) = plan.oom_score_adj {
        privileges::set_oom_score_adj(score)?;
    }
    // Outside the pod's PID namespace still: a compiler process started
    // here is none the pod's processes can see. (One thread: the compiler
    // is forked, and so is the PID namespace's process below.)
    privileges::ensure_single_thread()?;
    let name = plan.program.name();
    let (compiled, outcome) = wasm_source::fetch(plan, &name)?;
    privileges::ensure_single_thread()?;
    if isolation::enter_pid_namespace(&plan.namespaces.pid)? {
        // Safety: _exit ends this process at once; its child goes on.
        unsafe { libc::_exit(0) };
    }
    // Before anything else the daemon reads: the task's pid is this one.
    writeln!(status, "pid {}", isolation::host_pid()?)?;
    let _ = writeln!(status, "log compiled code for {name}: cache {outcome:?}");
    // The first process of a PID namespace ignores signals it has no
    // handler for: the guest must still end on SIGTERM.
    signals::end_on_termination_signals()?;
    isolation::enter_namespaces(&plan.namespaces, plan.hostname.as_deref())?;
    let pool = compiled.serving_pool(&plan.env);
    let proc = OwnProc::open()?;

    privileges::ensure_single_thread()?;
    isolation::enter_rootfs(&plan.rootfs, plan.readonly_rootfs, &plan.mounts)?;
    let guest = Guest {
        args: &plan.args,
        env: &plan.env,
        cwd: &plan.cwd,
        memory_limit: plan.memory_limit.map(|limit| {
            let used = plan.cgroup.as_ref().and_then(|group| cgroup::memory_usage(&group.path)).unwrap_or(0);
            cgroup::guest_memory_cap(limit, used)
        }),
    };
    privileges::set_rlimits(&plan.rlimits)?;
    let filters = privileges::filters(plan.seccomp.as_ref())?;
    privileges::become_user(&plan.user)?;
    // Untrusted compiled code is mapped and linked with no privilege left.
    let program = compiled.load(pool, &name, &proc)?;
    let ready = engine::prepare(&program, &name, &plan.export, &guest)?;
    if let Some(profile) = &plan.apparmor_profile {
        proc.change_apparmor_profile(profile)?;
    }
    drop(proc);
    privileges::confine(&filters)?;
    Ok(ready)
}
