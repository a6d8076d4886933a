//! The container's cgroup (cgroupfs driver, v1 or v2, whichever the node
//! runs, through cgroups-rs): the instance creates it with the spec's limits
//! and joins it; the daemon reads it (Stats, OOM kills, processes) and
//! removes it on Delete.

use std::path::Path;

use anyhow::{Context, Result};
use cgroups_rs::fs::{hierarchies, Cgroup, MaxValue, Resources};
use cgroups_rs::CgroupPid;
use oci_spec::runtime::LinuxResources;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Creates the cgroup with the spec's limits and moves `pid` into it.
pub fn create_and_join(path: &str, resources: Option<&LinuxResources>, pid: u32) -> Result<()> {
    let hierarchy = hierarchies::auto();
    let v2 = hierarchy.v2();
    let cgroup = Cgroup::new(hierarchy, path).with_context(|| format!("create cgroup {path}"))?;
    let limits = resources.map(|r| to_limits(r, v2)).unwrap_or_default();
    cgroup.apply(&limits).with_context(|| format!("set limits on cgroup {path}"))?;
    cgroup
        .add_task_by_tgid(CgroupPid::from(pid as u64))
        .with_context(|| format!("join cgroup {path}"))
}

/// Applies the spec's cpu part (shares, quota and period, cpuset) to an
/// existing cgroup: an in-place update of a wasm container. Memory is not
/// changed here (see `memory_limit_now`).
pub fn update_cpu(path: &str, resources: &LinuxResources) -> Result<()> {
    let hierarchy = hierarchies::auto();
    let v2 = hierarchy.v2();
    let cgroup = Cgroup::load(hierarchy, path);
    if !cgroup.exists() {
        anyhow::bail!("cgroup {path} is gone");
    }
    let cpu_only = Resources { cpu: to_limits(resources, v2).cpu, ..Resources::default() };
    cgroup.apply(&cpu_only).with_context(|| format!("update the cpu limits of cgroup {path}"))
}

/// A memory limit as the kernel keeps it: rounded down to whole pages.
pub fn page_aligned(limit: u64) -> u64 {
    // Safety: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    limit / page * page
}

/// The memory limit the cgroup has now, in bytes; None for no limit.
pub fn memory_limit_now(path: &str) -> Option<u64> {
    let root = Path::new(CGROUP_ROOT);
    let files = [root.join(path).join("memory.max"), root.join("memory").join(path).join("memory.limit_in_bytes")];
    let text = files.iter().find_map(|file| std::fs::read_to_string(file).ok())?;
    // v1 says "no limit" with the largest page-aligned i64.
    text.trim().parse::<u64>().ok().filter(|limit| *limit < 1 << 62)
}

/// Whether the kernel's OOM killer has killed a process in the cgroup
/// (the `oom_kill` count of memory.oom_control on v1, memory.events on v2).
pub fn oom_killed(path: &str) -> bool {
    let root = Path::new(CGROUP_ROOT);
    let counters = [root.join("memory").join(path).join("memory.oom_control"), root.join(path).join("memory.events")];
    counters.iter().any(|file| std::fs::read_to_string(file).is_ok_and(|text| stat_field(&text, "oom_kill") > 0))
}

/// The processes in the cgroup.
pub fn pids(path: &str) -> Vec<u32> {
    Cgroup::load(hierarchies::auto(), path).procs().iter().map(|p| p.pid as u32).collect()
}

/// SIGKILLs every process in the cgroup: what a dead shim's instance leaves.
pub fn kill_all(path: &str) {
    let cgroup = Cgroup::load(hierarchies::auto(), path);
    for pid in cgroup.procs() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Removes the cgroup, retrying for a second: the kernel refuses rmdir for a
/// moment after the last process has been reaped.
pub fn remove_when_empty(path: &str) -> Result<()> {
    for _ in 0..50 {
        if remove(path).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    remove(path)
}

/// Removes the cgroup; a cgroup that is already gone is fine.
pub fn remove(path: &str) -> Result<()> {
    let cgroup = Cgroup::load(hierarchies::auto(), path);
    if cgroup.exists() {
        cgroup.delete().with_context(|| format!("remove cgroup {path}"))?;
    }
    Ok(())
}

/// The value of `name` in a cgroup stat file (`name value` lines); 0 if absent.
pub fn stat_field(stat: &str, name: &str) -> u64 {
    stat.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Maps the spec's memory, cpu and pids limits onto cgroups-rs resources.
fn to_limits(spec: &LinuxResources, v2: bool) -> Resources {
    let mut res = Resources::default();
    if let Some(mem) = spec.memory() {
        res.memory.memory_hard_limit = mem.limit();
        res.memory.memory_soft_limit = mem.reservation();
        res.memory.memory_swap_limit = match (mem.swap(), mem.limit()) {
            // OCI swap is memory plus swap; cgroup v2's swap.max is swap alone.
            (Some(swap), Some(limit)) if v2 && swap > 0 && limit > 0 => Some((swap - limit).max(0)),
            (swap, _) => swap,
        };
    }
    if let Some(cpu) = spec.cpu() {
        // cgroups-rs writes `shares` as is into cpu.weight on v2.
        res.cpu.shares = cpu.shares().filter(|s| *s > 0).map(|s| if v2 { cpu_weight(s) } else { s });
        res.cpu.quota = cpu.quota();
        res.cpu.period = cpu.period();
        res.cpu.cpus = cpu.cpus().clone();
        res.cpu.mems = cpu.mems().clone();
    }
    if let Some(pids) = spec.pids() {
        // OCI: zero or less means no limit.
        let max = if pids.limit() > 0 { MaxValue::Value(pids.limit()) } else { MaxValue::Max };
        res.pid.maximum_number_of_processes = Some(max);
    }
    res
}

/// cgroup v1 cpu shares [2, 262144] as v2's weight [1, 10000], as runc maps
/// them (so `requests.cpu: 500m`, 512 shares, is weight 20, as in a runc
/// container beside it).
pub fn cpu_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The memory limit in bytes, if the spec sets one.
pub fn memory_limit(resources: Option<&LinuxResources>) -> Option<u64> {
    resources?.memory().as_ref()?.limit().filter(|l| *l > 0).map(|l| l as u64)
}

/// The memory the cgroup's processes use now, in bytes.
pub fn memory_usage(path: &str) -> Option<u64> {
    let cgroup = Cgroup::load(hierarchies::auto(), path);
    Some(cgroup.controller_of::<cgroups_rs::fs::memory::MemController>()?.memory_stat().usage_in_bytes)
}

/// Room the engine keeps beside the guest's linear memory within the limit.
const ENGINE_HEADROOM: u64 = 4 << 20;

/// How far the guest's linear memory may grow: what the limit leaves after
/// the instance's own use, so that the guest meets its cap (and fails
/// cleanly) before the kernel's OOM killer would end the whole process.
pub fn guest_memory_cap(limit: u64, used: u64) -> u64 {
    limit.saturating_sub(used).saturating_sub(ENGINE_HEADROOM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

    #[test]
    fn memory_limit_comes_from_the_spec() {
        let mem = LinuxMemoryBuilder::default().limit(64 << 20).build().unwrap();
        let res = LinuxResourcesBuilder::default().memory(mem).build().unwrap();
        assert_eq!(memory_limit(Some(&res)), Some(64 << 20));
        assert_eq!(to_limits(&res, false).memory.memory_hard_limit, Some(64 << 20));
        assert_eq!(memory_limit(None), None);
    }

    #[test]
    fn swap_is_converted_for_v2_and_unlimited_pids_is_max() {
        let mem = LinuxMemoryBuilder::default().limit(64 << 20).swap(96 << 20).build().unwrap();
        let pids = oci_spec::runtime::LinuxPidsBuilder::default().limit(-1).build().unwrap();
        let res = LinuxResourcesBuilder::default().memory(mem).pids(pids).build().unwrap();
        assert_eq!(to_limits(&res, true).memory.memory_swap_limit, Some(32 << 20));
        assert_eq!(to_limits(&res, false).memory.memory_swap_limit, Some(96 << 20));
        assert_eq!(to_limits(&res, false).pid.maximum_number_of_processes, Some(MaxValue::Max));
    }

    #[test]
    fn cpu_shares_become_runcs_weight_on_v2_only() {
        let cpu = |shares: u64| {
            let cpu = oci_spec::runtime::LinuxCpuBuilder::default().shares(shares).build().unwrap();
            LinuxResourcesBuilder::default().cpu(cpu).build().unwrap()
        };
        // requests.cpu 500m and 10: within cpu.weight's range on v2.
        assert_eq!(to_limits(&cpu(512), true).cpu.shares, Some(20));
        assert_eq!(to_limits(&cpu(10_240), true).cpu.shares, Some(391));
        assert_eq!(to_limits(&cpu(512), false).cpu.shares, Some(512));
        assert_eq!(to_limits(&cpu(262_144), true).cpu.shares, Some(10_000));
    }

    #[test]
    fn limits_are_compared_as_the_kernel_keeps_them() {
        // Safety: sysconf only reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        assert_eq!(page_aligned(1_000_000_000), 1_000_000_000 / page * page);
        assert_eq!(page_aligned(64 << 20), 64 << 20);
    }

    #[test]
    fn guest_cap_leaves_room_for_the_engine() {
        assert_eq!(guest_memory_cap(64 << 20, 10 << 20), 50 << 20);
        assert_eq!(guest_memory_cap(4 << 20, 10 << 20), 0);
    }

    #[test]
    fn stat_fields_are_parsed() {
        assert_eq!(stat_field("user 12\nsystem 3\n", "system"), 3);
        assert_eq!(stat_field("usage_usec 99", "usage_usec"), 99);
        assert_eq!(stat_field("", "x"), 0);
    }
}
