//! The instance's setup, in its fixed order: cgroup and OOM score, PID
//! namespace, the other namespaces, compiled code, rootfs, linking, rlimits
//! and privileges. Every step acts on the launch
//! plan; each one's error ends the instance with `error ...` on the status pipe.

use std::fs::File;
use std::io::Write;

use anyhow::Result;

use super::engine::{self, Guest, ReadyGuest};
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
    if isolation::enter_pid_namespace(&plan.namespaces.pid)? {
        // Safety: _exit ends this process at once; its child goes on.
        unsafe { libc::_exit(0) };
    }
    // Before anything else the daemon reads: the task's pid is this one.
    writeln!(status, "pid {}", isolation::host_pid()?)?;
    // The first process of a PID namespace ignores signals it has no
    // handler for: the guest must still end on SIGTERM.
    signals::end_on_termination_signals()?;
    isolation::enter_namespaces(&plan.namespaces, plan.hostname.as_deref())?;

    let name = plan.program.name();
    let (program, outcome) = wasm_source::load(plan, &name)?;
    let _ = writeln!(status, "log compiled code for {name}: cache {outcome:?}");

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
    let ready = engine::prepare(&program, &name, &plan.export, &guest)?;
    privileges::set_rlimits(&plan.rlimits)?;
    privileges::drop_all(&plan.user)?;
    Ok(ready)
}
