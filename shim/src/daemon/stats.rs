//! Stats of a task: its cgroup's cpu, memory and pids counters, in the
//! metrics message containerd expects for the node's cgroup version.

use anyhow::{bail, Result};
use cgroups_rs::fs::{hierarchies, Cgroup, MaxValue};
use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use super::events::pack;
use crate::shared::cgroup::stat_field;

/// The metrics of the cgroup at `path`.
pub fn metrics(path: &str) -> Result<Any> {
    let hierarchy = hierarchies::auto();
    let is_v2 = hierarchy.v2();
    let cgroup = Cgroup::load(hierarchy, path);
    if !cgroup.exists() {
        bail!("cgroup {path} does not exist");
    }
    let memory = cgroup.controller_of::<cgroups_rs::fs::memory::MemController>().map(|m| m.memory_stat());
    let pids = cgroup.controller_of::<cgroups_rs::fs::pid::PidController>();
    let pids_current = pids.and_then(|p| p.get_pid_current().ok()).unwrap_or(0);
    let pids_limit = match pids.and_then(|p| p.get_pid_max().ok()) {
        Some(MaxValue::Value(v)) => v as u64,
        _ => 0,
    };
    if is_v2 {
        let mut m = v2::Metrics::new();
        if let Some(mem) = memory {
            m.mut_memory().usage = mem.usage_in_bytes;
            m.mut_memory().usage_limit = mem.limit_in_bytes.max(0) as u64;
            m.mut_memory().max_usage = mem.max_usage_in_bytes;
        }
        if let Some(cpu) = cgroup.controller_of::<cgroups_rs::fs::cpu::CpuController>() {
            let stat = cpu.cpu().stat;
            let field = |name: &str| stat_field(&stat, name);
            m.mut_cpu().usage_usec = field("usage_usec");
            m.mut_cpu().user_usec = field("user_usec");
            m.mut_cpu().system_usec = field("system_usec");
        }
        m.mut_pids().current = pids_current;
        m.mut_pids().limit = pids_limit;
        return pack("io.containerd.cgroups.v2.Metrics", &m);
    }
    let mut m = v1::Metrics::new();
    if let Some(mem) = memory {
        let usage = m.mut_memory().mut_usage();
        usage.usage = mem.usage_in_bytes;
        usage.limit = mem.limit_in_bytes.max(0) as u64;
        usage.max = mem.max_usage_in_bytes;
        usage.failcnt = mem.fail_cnt;
        m.mut_memory().total_inactive_file = mem.stat.total_inactive_file;
    }
    if let Some(acct) = cgroup.controller_of::<cgroups_rs::fs::cpuacct::CpuAcctController>() {
        let acct = acct.cpuacct();
        // cpuacct.stat counts in USER_HZ ticks (1/100 s); containerd wants ns.
        m.mut_cpu().mut_usage().total = acct.usage;
        m.mut_cpu().mut_usage().user = stat_field(&acct.stat, "user") * 10_000_000;
        m.mut_cpu().mut_usage().kernel = stat_field(&acct.stat, "system") * 10_000_000;
    }
    m.mut_pids().current = pids_current;
    m.mut_pids().limit = pids_limit;
    pack("io.containerd.cgroups.v1.Metrics", &m)
}
