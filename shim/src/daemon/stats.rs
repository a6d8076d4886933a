//! Stats of a task: its cgroup's cpu, memory and pids counters, in the
//! metrics message containerd expects for the node's cgroup version.

use anyhow::{bail, Result};
use cgroups_rs::fs::{hierarchies, Cgroup, MaxValue};
use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

use std::path::Path;

use super::events::pack;
use crate::shared::cgroup::stat_field;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The metrics of the cgroup at `path`.
pub fn metrics(path: &str) -> Result<Any> {
    let hierarchy = hierarchies::auto();
    let is_v2 = hierarchy.v2();
    let cgroup = Cgroup::load(hierarchy, path);
    if !cgroup.exists() {
        bail!("cgroup {path} does not exist");
    }
    if is_v2 {
        return pack("io.containerd.cgroups.v2.Metrics", &v2_metrics(&Path::new(CGROUP_ROOT).join(path)));
    }
    let memory = cgroup.controller_of::<cgroups_rs::fs::memory::MemController>().map(|m| m.memory_stat());
    let pids = cgroup.controller_of::<cgroups_rs::fs::pid::PidController>();
    let pids_current = pids.and_then(|p| p.get_pid_current().ok()).unwrap_or(0);
    let pids_limit = match pids.and_then(|p| p.get_pid_max().ok()) {
        Some(MaxValue::Value(v)) => v as u64,
        _ => 0,
    };
    let mut m = v1::Metrics::new();
    if let Some(mem) = memory {
        let usage = m.mut_memory().mut_usage();
        usage.usage = mem.usage_in_bytes;
        usage.limit = mem.limit_in_bytes.max(0) as u64;
        usage.max = mem.max_usage_in_bytes;
        usage.failcnt = mem.fail_cnt;
        v1_memory_stat(m.mut_memory(), &mem.stat);
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

/// memory.stat on v1, field by field as containerd's runc shim passes it
/// (kubelet reads rss and page faults from the totals).
fn v1_memory_stat(m: &mut v1::MemoryStat, stat: &cgroups_rs::fs::memory::MemoryStat) {
    (m.cache, m.rss, m.rss_huge, m.mapped_file, m.dirty, m.writeback) =
        (stat.cache, stat.rss, stat.rss_huge, stat.mapped_file, stat.dirty, stat.writeback);
    (m.pg_pg_in, m.pg_pg_out, m.pg_fault, m.pg_maj_fault) = (stat.pgpgin, stat.pgpgout, stat.pgfault, stat.pgmajfault);
    (m.inactive_anon, m.active_anon, m.inactive_file, m.active_file, m.unevictable) =
        (stat.inactive_anon, stat.active_anon, stat.inactive_file, stat.active_file, stat.unevictable);
    (m.hierarchical_memory_limit, m.hierarchical_swap_limit) =
        (stat.hierarchical_memory_limit.max(0) as u64, stat.hierarchical_memsw_limit.max(0) as u64);
    (m.total_cache, m.total_rss, m.total_rss_huge, m.total_mapped_file, m.total_dirty, m.total_writeback) =
        (stat.total_cache, stat.total_rss, stat.total_rss_huge, stat.total_mapped_file, stat.total_dirty, stat.total_writeback);
    (m.total_pg_pg_in, m.total_pg_pg_out, m.total_pg_fault, m.total_pg_maj_fault) =
        (stat.total_pgpgin, stat.total_pgpgout, stat.total_pgfault, stat.total_pgmajfault);
    (m.total_inactive_anon, m.total_active_anon, m.total_inactive_file, m.total_active_file, m.total_unevictable) =
        (stat.total_inactive_anon, stat.total_active_anon, stat.total_inactive_file, stat.total_active_file, stat.total_unevictable);
}

/// cgroup v2's counters, read from the cgroup's files as kubelet's cadvisor
/// and containerd's own shim read them: memory.stat whole (kubelet's working
/// set is usage minus inactive_file), memory.current and .max, swap, the
/// memory events, cpu.stat and pids.
fn v2_metrics(dir: &Path) -> v2::Metrics {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let number = |file: &str| read(file).trim().parse::<u64>().unwrap_or(0);
    // A limit of "max" reads as u64::MAX, as containerd's own stats do.
    let limit = |file: &str| match read(file).trim() {
        "max" => u64::MAX,
        text => text.parse().unwrap_or(0),
    };
    let mut m = v2::Metrics::new();
    let stat = read("memory.stat");
    let field = |name: &str| stat_field(&stat, name);
    let memory = m.mut_memory();
    (memory.anon, memory.file, memory.kernel_stack, memory.slab, memory.sock, memory.shmem) =
        (field("anon"), field("file"), field("kernel_stack"), field("slab"), field("sock"), field("shmem"));
    (memory.file_mapped, memory.file_dirty, memory.file_writeback, memory.anon_thp) =
        (field("file_mapped"), field("file_dirty"), field("file_writeback"), field("anon_thp"));
    (memory.inactive_anon, memory.active_anon, memory.inactive_file, memory.active_file, memory.unevictable) =
        (field("inactive_anon"), field("active_anon"), field("inactive_file"), field("active_file"), field("unevictable"));
    (memory.slab_reclaimable, memory.slab_unreclaimable, memory.pgfault, memory.pgmajfault) =
        (field("slab_reclaimable"), field("slab_unreclaimable"), field("pgfault"), field("pgmajfault"));
    (memory.workingset_refault, memory.workingset_activate, memory.workingset_nodereclaim) =
        (field("workingset_refault"), field("workingset_activate"), field("workingset_nodereclaim"));
    memory.usage = number("memory.current");
    memory.usage_limit = limit("memory.max");
    memory.max_usage = number("memory.peak");
    memory.swap_usage = number("memory.swap.current");
    memory.swap_limit = limit("memory.swap.max");
    let events = read("memory.events");
    let events_field = |name: &str| stat_field(&events, name);
    let memory_events = m.mut_memory_events();
    (memory_events.low, memory_events.high, memory_events.max, memory_events.oom, memory_events.oom_kill) =
        (events_field("low"), events_field("high"), events_field("max"), events_field("oom"), events_field("oom_kill"));
    let cpu_stat = read("cpu.stat");
    let cpu_field = |name: &str| stat_field(&cpu_stat, name);
    let cpu = m.mut_cpu();
    (cpu.usage_usec, cpu.user_usec, cpu.system_usec) = (cpu_field("usage_usec"), cpu_field("user_usec"), cpu_field("system_usec"));
    (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec) = (cpu_field("nr_periods"), cpu_field("nr_throttled"), cpu_field("throttled_usec"));
    m.mut_pids().current = number("pids.current");
    // "max" reads as no number: 0, containerd's "no limit".
    m.mut_pids().limit = number("pids.max");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_files_become_containerds_metrics() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in [
            ("memory.stat", "anon 1000\nfile 500\ninactive_file 200\nactive_file 300\n"),
            ("memory.current", "1600\n"),
            ("memory.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("cpu.stat", "usage_usec 42\nuser_usec 30\nsystem_usec 12\n"),
            ("pids.current", "2\n"),
            ("pids.max", "100\n"),
        ] {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let m = v2_metrics(dir.path());
        let memory = m.memory.as_ref().unwrap();
        assert_eq!((memory.usage, memory.anon, memory.file, memory.inactive_file, memory.usage_limit), (1600, 1000, 500, 200, u64::MAX));
        assert_eq!(m.memory_events.as_ref().unwrap().oom_kill, 1);
        assert_eq!(m.cpu.as_ref().unwrap().usage_usec, 42);
        assert_eq!((m.pids.as_ref().unwrap().current, m.pids.as_ref().unwrap().limit), (2, 100));
    }
}
