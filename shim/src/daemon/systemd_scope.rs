//! The systemd cgroup driver for wasm containers. A cgroupsPath
//! `slice:prefix:name` (what kubelet and containerd give when they use the
//! systemd driver) is the transient scope `prefix-name.scope` in that
//! slice, made over systemd's D-Bus API (cgroups-rs's client, on zbus) as
//! runc makes it: the instance's pid in it, Delegate, accounting, and the
//! resources as systemd's properties (runc's conversions), so that systemd
//! keeps them across a daemon-reload. It is stopped at Delete.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cgroups_rs::systemd::props::PropertiesBuilder;
use cgroups_rs::systemd::utils::expand_slice;
use cgroups_rs::systemd::{
    cpuset, Property, SystemdClient, ALLOWED_CPUS, ALLOWED_MEMORY_NODES, CPU_QUOTA_PERIOD_US, CPU_QUOTA_PER_SEC_US, CPU_SHARES,
    CPU_WEIGHT, MEMORY_LIMIT, MEMORY_LOW, MEMORY_MAX, MEMORY_SWAP_MAX, TASKS_MAX,
};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use zbus::zvariant::Value;

use crate::shared::cgroup;

/// systemd's "no limit".
const INFINITY: u64 = u64::MAX;
/// How long systemd may take to move the instance into its scope.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A transient scope in a slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdScope {
    pub slice: String,
    pub unit: String,
}

impl SystemdScope {
    /// The scope a cgroupsPath of the systemd driver names; None for a
    /// cgroupfs path.
    pub fn of(cgroups_path: &str) -> Option<Result<SystemdScope>> {
        let [slice, prefix, name] = cgroups_path.split(':').collect::<Vec<_>>()[..] else {
            return (cgroups_path.contains(':')).then(|| Err(anyhow::anyhow!("cgroup path {cgroups_path} is neither a cgroupfs path nor slice:prefix:name")));
        };
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        let unit = match (prefix, name) {
            (_, name) if name.ends_with(".slice") => {
                return Some(Err(anyhow::anyhow!("cgroup path {cgroups_path} names a slice, not a scope for one container")))
            }
            ("", name) => format!("{name}.scope"),
            (prefix, name) => format!("{prefix}-{name}.scope"),
        };
        Some(Ok(SystemdScope { slice: slice.to_string(), unit }))
    }

    /// The scope's cgroup below the hierarchy root: the slice expanded as
    /// systemd does (`a-b.slice` lives in `a.slice/a-b.slice`), then the unit.
    pub fn cgroup_path(&self) -> Result<String> {
        let slice = expand_slice(&self.slice).map_err(|e| anyhow::anyhow!("slice {}: {e}", self.slice))?;
        Ok(format!("{slice}/{}", self.unit).trim_start_matches('/').to_string())
    }

    /// Starts the scope with `pid` in it and `resources` as its properties,
    /// and waits until the process is there.
    pub fn start(&self, pid: u32, resources: Option<&LinuxResources>, v2: bool) -> Result<()> {
        let mut properties = PropertiesBuilder::default_cgroup(&self.slice, &self.unit)
            .description(format!("wasmlet container {}", self.unit))
            .pids(vec![pid])
            .build();
        properties.extend(resource_properties(resources, v2)?);
        let client = SystemdClient::new(&self.unit, properties).map_err(|e| anyhow::anyhow!("{e}"))?;
        client.start().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("start systemd scope {} in {}", self.unit, self.slice))?;
        // systemd moves the process when it runs the start job, not before it answers.
        let deadline = Instant::now() + PLACEMENT_TIMEOUT;
        let cgroup = self.cgroup_path()?;
        loop {
            let placed = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| text.lines().any(|l| l.ends_with(&cgroup)));
            if placed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("systemd did not move process {pid} into scope {} within {PLACEMENT_TIMEOUT:?}", self.unit);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the scope (its processes are killed) and forgets a failed one.
    pub fn stop(&self) -> Result<()> {
        let client = SystemdClient::new(&self.unit, Vec::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
        client.stop().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("stop systemd scope {}", self.unit))
    }
}

/// The spec's resources as systemd's properties, converted as runc does.
fn resource_properties(resources: Option<&LinuxResources>, v2: bool) -> Result<Vec<Property<'static>>> {
    let mut properties: Vec<Property<'static>> = Vec::new();
    let Some(resources) = resources else { return Ok(properties) };
    let mut push = |name: &'static str, value: u64| properties.push((name, Value::U64(value)));
    if let Some(memory) = resources.memory() {
        let limit = memory.limit().unwrap_or(0);
        if limit != 0 {
            push(if v2 { MEMORY_MAX } else { MEMORY_LIMIT }, unlimited_or(limit));
        }
        match memory.reservation() {
            Some(low) if low > 0 && v2 => push(MEMORY_LOW, low as u64),
            _ => {}
        }
        match (memory.swap(), v2) {
            (Some(-1), true) => push(MEMORY_SWAP_MAX, INFINITY),
            // OCI swap is memory plus swap; systemd's is swap alone.
            (Some(swap), true) if swap > 0 && limit > 0 => push(MEMORY_SWAP_MAX, (swap - limit).max(0) as u64),
            _ => {}
        }
    }
    if let Some(cpu) = resources.cpu() {
        match cpu.shares() {
            Some(shares) if shares > 0 && v2 => push(CPU_WEIGHT, cgroup::cpu_weight(shares)),
            Some(shares) if shares > 0 => push(CPU_SHARES, shares),
            _ => {}
        }
        let period = cpu.period().unwrap_or(0);
        if period != 0 {
            push(CPU_QUOTA_PERIOD_US, period);
        }
        match cpu.quota() {
            Some(quota) if quota > 0 => push(CPU_QUOTA_PER_SEC_US, quota_per_second(quota as u64, period)),
            _ => {}
        }
    }
    if let Some(pids) = resources.pids() {
        if pids.limit() > 0 || pids.limit() == -1 {
            push(TASKS_MAX, unlimited_or(pids.limit()));
        }
    }
    if let Some(cpu) = resources.cpu() {
        for (name, list) in [(ALLOWED_CPUS, cpu.cpus()), (ALLOWED_MEMORY_NODES, cpu.mems())] {
            if let Some(list) = list.as_deref().filter(|l| !l.is_empty()) {
                let (_, mask) = if name == ALLOWED_CPUS { cpuset::cpus(list) } else { cpuset::mems(list) }
                    .map_err(|e| anyhow::anyhow!("cpuset {list}: {e}"))?;
                properties.push((name, Value::from(mask)));
            }
        }
    }
    Ok(properties)
}

fn unlimited_or(value: i64) -> u64 {
    if value < 0 { INFINITY } else { value as u64 }
}


/// A quota per `period` as microseconds per second, rounded up to 10 ms as
/// systemd keeps it in whole percent of a CPU.
fn quota_per_second(quota: u64, period: u64) -> u64 {
    let period = if period == 0 { 100_000 } else { period };
    let per_second = quota * 1_000_000 / period;
    per_second.div_ceil(10_000) * 10_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};

    #[test]
    fn a_kubelet_path_is_a_scope_in_its_pods_slice() {
        let scope = SystemdScope::of("kubepods-burstable-pod1234.slice:cri-containerd:abc").unwrap().unwrap();
        assert_eq!(scope.unit, "cri-containerd-abc.scope");
        assert_eq!(scope.cgroup_path().unwrap(), "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abc.scope");
        assert!(SystemdScope::of("/kubepods/burstable/pod1234/abc").is_none());
        assert_eq!(SystemdScope::of(":ctr:x").unwrap().unwrap().cgroup_path().unwrap(), "system.slice/ctr-x.scope");
        assert!(SystemdScope::of("a:b").unwrap().is_err());
    }

    #[test]
    fn resources_become_systemd_properties_as_runc_makes_them() {
        let resources = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(64 << 20).reservation(32 << 20).swap(96 << 20).build().unwrap())
            .cpu(LinuxCpuBuilder::default().shares(256u64).quota(25_000i64).period(100_000u64).cpus("0-1").build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
            .build()
            .unwrap();
        let properties: Vec<(String, String)> =
            resource_properties(Some(&resources), true).unwrap().into_iter().map(|(k, v)| (k.to_string(), format!("{v}").replace("uint64 ", ""))).collect();
        let get = |name: &str| properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(get("MemoryMax").as_deref(), Some("67108864"));
        assert_eq!(get("MemoryLow").as_deref(), Some("33554432"));
        assert_eq!(get("MemorySwapMax").as_deref(), Some("33554432"));
        assert_eq!(get("CPUWeight").as_deref(), Some("10"), "runc's 1 + (256-2)*9999/262142");
        assert_eq!(get("CPUQuotaPerSecUSec").as_deref(), Some("250000"));
        assert_eq!(get("CPUQuotaPeriodUSec").as_deref(), Some("100000"));
        assert_eq!(get("TasksMax").as_deref(), Some("100"));
        assert!(get("AllowedCPUs").is_some());
    }

    #[test]
    fn quotas_round_up_to_whole_percents() {
        assert_eq!(quota_per_second(12_345, 100_000), 130_000);
        assert_eq!(quota_per_second(50_000, 0), 500_000);
        assert_eq!(cgroup::cpu_weight(2), 1);
        assert_eq!(cgroup::cpu_weight(262_144), 10_000);
    }
}
