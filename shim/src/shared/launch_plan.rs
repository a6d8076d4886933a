//! The launch plan: everything the daemon decided about one wasm container
//! at Create, handed to its instance process as one JSON value on
//! [`PLAN_FD`]. The instance acts on it and re-derives nothing: it reads no
//! config.json and no setting from its own environment.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::node_cache::NodeCache;
use super::seccomp_profile::SeccompProfile;

/// The shim binary's subcommand that runs an instance.
pub const INSTANCE_COMMAND: &str = "instance";
/// Descriptor of the plan pipe's read end in the instance process.
pub const PLAN_FD: i32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub program: ProgramSource,
    /// The export a core module runs: `_start` unless argv[0] said `#name`.
    pub export: String,
    /// The guest's argv (argv[0] without its `#export`).
    pub args: Vec<String>,
    /// The guest's environment, `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    /// The container's `/` on the host, where the daemon mounted containerd's rootfs.
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    /// The spec's mounts the guest gets, in order.
    pub mounts: Vec<MountPlan>,
    pub namespaces: NamespacePlan,
    /// Set when the container gets a UTS namespace of its own.
    pub hostname: Option<String>,
    pub cgroup: Option<CgroupPlan>,
    pub user: UserPlan,
    /// The spec's rlimits, applied before the drop of privileges.
    pub rlimits: Vec<RlimitPlan>,
    /// Written to /proc/self/oom_score_adj: the node's OOM killer weighs
    /// the instance as the spec says, not as containerd's own score.
    pub oom_score_adj: Option<i32>,
    /// The container's memory limit in bytes, which also caps linear memory.
    pub memory_limit: Option<u64>,
    pub cache: NodeCache,
    /// kubelet's termination-message file, when one is mounted.
    pub termination_message: Option<PathBuf>,
    /// The pod's seccomp profile, installed beside the instance's own.
    pub seccomp: Option<SeccompProfile>,
    /// The pod's AppArmor profile, taken before the guest runs.
    pub apparmor_profile: Option<String>,
}

/// Where the wasm comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgramSource {
    /// A file in the container's rootfs, by its absolute path there.
    Rootfs { path: PathBuf },
    /// A wasm layer of the container's image, copied into the node cache.
    Layer { image: String, sha256: String },
}

impl ProgramSource {
    /// How errors and logs name the program.
    pub fn name(&self) -> String {
        match self {
            ProgramSource::Rootfs { path } => path.display().to_string(),
            ProgramSource::Layer { image, sha256, .. } => format!("layer sha256:{sha256} of image {image}"),
        }
    }
}

/// One mount of the container, as the instance performs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// The mount point inside the container.
    pub destination: PathBuf,
    pub kind: MountKind,
    pub flags: MountFlags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path bound into the container (`rbind`: with its submounts).
    Bind { source: PathBuf, recursive: bool },
    /// A fresh tmpfs with these data options (`size=...,mode=...`).
    Tmpfs { data: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFlags {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// The namespaces to join (by path, in this order) and to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePlan {
    pub join: Vec<(NamespaceKind, PathBuf)>,
    pub create: Vec<NamespaceKind>,
    pub pid: PidNamespace,
}

/// The instance's PID namespace: never the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    /// The pod's (`shareProcessNamespace`), by path.
    Join(PathBuf),
    /// One of its own, whose first process the instance is.
    #[default]
    New,
}

/// One resource limit: `resource` is the kernel's number (RLIMIT_*), `name` its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitPlan {
    pub name: String,
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The namespaces an instance can be placed in besides its own mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceKind {
    Network,
    Ipc,
    Uts,
}

/// The container's cgroup: its path below the hierarchy root and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    pub path: String,
    pub resources: Option<LinuxResources>,
    /// The systemd driver's scope, which the daemon makes with the
    /// instance in it and its limits set; otherwise the instance makes the
    /// cgroup and joins it (cgroupfs).
    pub made_by_systemd: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPlan {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl LaunchPlan {
    /// Writes the plan to the instance and closes the pipe.
    pub fn send(&self, mut pipe: File) -> Result<()> {
        let bytes = serde_json::to_vec(self).context("serialize the launch plan")?;
        pipe.write_all(&bytes).context("send the launch plan to the instance")
    }

    /// Reads the plan the daemon sent on [`PLAN_FD`].
    pub fn receive() -> Result<Self> {
        // Safety: the daemon hands this descriptor over and nothing else owns it.
        let mut pipe = unsafe { File::from_raw_fd(PLAN_FD) };
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).context("read the launch plan")?;
        serde_json::from_slice(&bytes).context("parse the launch plan")
    }
}

/// The value of `name` in a list of `NAME=value` entries (the guest's env).
pub fn env_value<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_found_by_exact_name() {
        let env = vec!["WASMLET_HTTP_ADDRESS=x".to_string(), "WASMLET_HTTP_ADDR=127.0.0.1:9000".to_string()];
        assert_eq!(env_value(&env, "WASMLET_HTTP_ADDR"), Some("127.0.0.1:9000"));
        assert_eq!(env_value(&env, "PATH"), None);
    }
}
