//! Create's decisions for a wasm container, made once: the OCI spec, with
//! what Create found (the program, the node cache), becomes the launch plan
//! its instance acts on. Also the two facts of a spec that native
//! containers need too: where the rootfs is and which cgroup is theirs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Mount, PosixRlimit, PosixRlimitType, Process, Spec, User};

use super::entrypoint::Entrypoint;
use super::systemd_scope::SystemdScope;
use crate::shared::cgroup;
use crate::shared::launch_plan::{
    CgroupPlan, LaunchPlan, MountFlags, MountKind, MountPlan, NamespaceKind, NamespacePlan, PidNamespace, ProgramSource,
    RlimitPlan, UserPlan,
};
use crate::shared::node_cache::NodeCache;
use crate::shared::seccomp_profile::SeccompProfile;

/// kubelet names the termination-message file in this container annotation.
const TERMINATION_PATH_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";
/// Where the kernel says whether AppArmor is on, and whether SELinux is.
const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const SELINUX_ENFORCE: &str = "/sys/fs/selinux/enforce";
/// kubelet's default termination-message path.
const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

/// The plan for running `program` as the container of `spec`, whose rootfs
/// is mounted at `rootfs`.
pub fn launch_plan(spec: &Spec, rootfs: &Path, program: ProgramSource, entry: Entrypoint, cache: NodeCache) -> Result<LaunchPlan> {
    let process = spec.process().as_ref().context("the OCI spec has no process")?;
    let mut args = process.args().clone().unwrap_or_default();
    if let Some(first) = args.first_mut() {
        *first = entry.name.to_string();
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cgroup = cgroup_of(spec)?.map(|c| CgroupPlan { path: c.path, resources: resources.cloned(), made_by_systemd: c.scope.is_some() });
    let namespaces = namespace_plan(spec)?;
    // The hostname is the container's only in a UTS namespace of its own.
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty() && namespaces.create.contains(&NamespaceKind::Uts));
    Ok(LaunchPlan {
        program,
        export: entry.export.to_string(),
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().to_str().unwrap_or("/").to_string(),
        rootfs: rootfs.to_path_buf(),
        readonly_rootfs: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
        mounts: spec.mounts().iter().flatten().filter_map(mount_plan).collect(),
        namespaces,
        hostname,
        cgroup,
        user: user_plan(process.user()),
        rlimits: process.rlimits().iter().flatten().map(rlimit_plan).collect(),
        oom_score_adj: process.oom_score_adj(),
        memory_limit: cgroup::memory_limit(resources),
        cache,
        termination_message: termination_message_path(spec),
        seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(SeccompProfile::from_oci).transpose().context("the pod's seccomp profile")?,
        apparmor_profile: apparmor_profile(process)?,
    })
}

/// The spec's AppArmor profile; none for `unconfined`. As runc, a profile
/// on a node without AppArmor is an error. So is an SELinux label on a node
/// that enforces SELinux (where it is off, runc ignores labels too): the
/// instance does not exec, so it cannot take a label's exec transition.
fn apparmor_profile(process: &Process) -> Result<Option<String>> {
    if let Some(label) = process.selinux_label().as_ref().filter(|l| !l.is_empty()) {
        if std::path::Path::new(SELINUX_ENFORCE).exists() {
            bail!("the pod asks for the SELinux label {label}, which wasm containers do not support on a node with SELinux");
        }
    }
    let Some(profile) = process.apparmor_profile().as_ref().filter(|p| !p.is_empty() && *p != "unconfined") else {
        return Ok(None);
    };
    let enabled = std::fs::read_to_string(APPARMOR_ENABLED).map(|v| v.trim() == "Y").unwrap_or(false);
    if !enabled {
        bail!("the pod asks for the AppArmor profile {profile}, but AppArmor is not enabled on this node");
    }
    Ok(Some(profile.clone()))
}

/// Where the container's `/` is on the host: the spec's root path, relative
/// to the bundle unless absolute (containerd uses `BUNDLE/rootfs`).
pub fn rootfs_dir(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| "rootfs".into());
    bundle.join(root)
}

/// Where a container's cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLocation {
    /// Below the hierarchy root.
    pub path: String,
    /// The systemd driver's scope, for a `slice:prefix:name` cgroupsPath.
    pub scope: Option<SystemdScope>,
}

/// The spec's cgroup; `None` when the spec names none (the task then stays
/// in the shim's cgroup).
pub fn cgroup_of(spec: &Spec) -> Result<Option<CgroupLocation>> {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(None);
    };
    let path = path.to_string_lossy().to_string();
    match SystemdScope::of(&path).transpose()? {
        Some(scope) => Ok(Some(CgroupLocation { path: scope.cgroup_path()?, scope: Some(scope) })),
        None => Ok(Some(CgroupLocation { path: path.trim_start_matches('/').to_string(), scope: None })),
    }
}

/// The termination-message file, when one is mounted into the container.
fn termination_message_path(spec: &Spec) -> Option<PathBuf> {
    let annotated = spec.annotations().as_ref().and_then(|a| a.get(TERMINATION_PATH_ANNOTATION).cloned());
    let path = PathBuf::from(annotated.unwrap_or_else(|| DEFAULT_TERMINATION_PATH.into()));
    let mounted = spec.mounts().iter().flatten().any(|m| m.destination() == &path);
    mounted.then_some(path)
}

/// The namespaces the spec names by path are joined (network first, so
/// sockets live in the pod's network), those without a path are created.
fn namespace_plan(spec: &Spec) -> Result<NamespacePlan> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    if namespaces.iter().any(|ns| ns.typ() == LinuxNamespaceType::User) {
        bail!("user namespaces are not supported for wasm containers");
    }
    let order = [
        (LinuxNamespaceType::Network, NamespaceKind::Network),
        (LinuxNamespaceType::Ipc, NamespaceKind::Ipc),
        (LinuxNamespaceType::Uts, NamespaceKind::Uts),
    ];
    let pid = match namespaces.iter().find(|ns| ns.typ() == LinuxNamespaceType::Pid).and_then(|ns| ns.path().clone()) {
        Some(path) => PidNamespace::Join(path),
        // Also for a spec that shares the host's (hostPID): a wasm guest
        // has no use for it, and an engine escape would get every process.
        None => PidNamespace::New,
    };
    let mut plan = NamespacePlan { pid, ..NamespacePlan::default() };
    for (typ, kind) in order {
        let Some(ns) = namespaces.iter().find(|ns| ns.typ() == typ) else { continue };
        match ns.path() {
            Some(path) => plan.join.push((kind, path.clone())),
            None => plan.create.push(kind),
        }
    }
    Ok(plan)
}

/// How one spec mount is made, or None for what a WASI guest has no use for
/// (kernel filesystems: proc, sysfs, devpts, mqueue, cgroup).
fn mount_plan(m: &Mount) -> Option<MountPlan> {
    let mut flags = MountFlags::default();
    let mut data = Vec::new();
    let mut bind = None;
    for opt in m.options().iter().flatten() {
        match opt.as_str() {
            "bind" => bind = Some(false),
            "rbind" => bind = Some(true),
            "ro" => flags.readonly = true,
            "nosuid" => flags.nosuid = true,
            "nodev" => flags.nodev = true,
            "noexec" => flags.noexec = true,
            "rw" | "suid" | "dev" | "exec" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared"
            | "relatime" | "norelatime" | "strictatime" => {}
            other => data.push(other),
        }
    }
    let source = || m.source().clone().unwrap_or_default();
    let kind = match (bind, m.typ().as_deref().unwrap_or("")) {
        (Some(recursive), _) => MountKind::Bind { source: source(), recursive },
        (None, "bind") => MountKind::Bind { source: source(), recursive: false },
        (None, "tmpfs") => MountKind::Tmpfs { data: data.join(",") },
        _ => return None,
    };
    Some(MountPlan { destination: m.destination().clone(), kind, flags })
}

fn rlimit_plan(rlimit: &PosixRlimit) -> RlimitPlan {
    let resource = match rlimit.typ() {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    let name = serde_json::to_value(rlimit.typ()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    RlimitPlan { name, resource: resource as u32, soft: rlimit.soft(), hard: rlimit.hard() }
}

fn user_plan(user: &User) -> UserPlan {
    UserPlan { uid: user.uid(), gid: user.gid(), additional_gids: user.additional_gids().clone().unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, ProcessBuilder,
        SpecBuilder, UserBuilder,
    };

    fn mount(destination: &str, typ: &str, options: &[&str]) -> Mount {
        let options = options.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        MountBuilder::default().destination(destination).typ(typ).source("/src").options(options).build().unwrap()
    }

    fn namespace(typ: LinuxNamespaceType, path: Option<&str>) -> oci_spec::runtime::LinuxNamespace {
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(path) = path {
            ns = ns.path(path);
        }
        ns.build().unwrap()
    }

    /// A pod container's spec: args with an export, env, cwd, a user, a
    /// memory limit, the pod's network, a volume and a termination log.
    fn pod_spec(cgroups_path: &str, extra_namespace: Option<LinuxNamespaceType>) -> Spec {
        let user = UserBuilder::default().uid(1000u32).gid(3000u32).additional_gids(vec![4000u32]).build().unwrap();
        let nofile = PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).soft(1024u64).hard(4096u64).build().unwrap();
        let process = ProcessBuilder::default()
            .args(vec!["/app.wasm#serve".to_string(), "--port".into(), "80".into()])
            .env(vec!["PATH=/bin".to_string(), "MODE=fast".into()])
            .cwd("/work")
            .user(user)
            .rlimits(vec![nofile])
            .oom_score_adj(1000)
            .build()
            .unwrap();
        let memory = LinuxMemoryBuilder::default().limit(64 << 20).build().unwrap();
        let mut namespaces = vec![
            namespace(LinuxNamespaceType::Uts, None),
            namespace(LinuxNamespaceType::Network, Some("/var/run/netns/pod")),
            namespace(LinuxNamespaceType::Mount, None),
        ];
        namespaces.extend(extra_namespace.map(|typ| namespace(typ, None)));
        let linux = LinuxBuilder::default()
            .cgroups_path(cgroups_path)
            .resources(LinuxResourcesBuilder::default().memory(memory).build().unwrap())
            .namespaces(namespaces)
            .build()
            .unwrap();
        let mounts = vec![
            mount("/proc", "proc", &["nosuid"]),
            mount("/data", "bind", &["rbind", "ro"]),
            mount("/tmp", "tmpfs", &["nosuid", "mode=755", "size=65536k"]),
            mount("/dev/termination-log", "bind", &["bind"]),
        ];
        SpecBuilder::default().process(process).linux(linux).mounts(mounts).hostname("pod-a").build().unwrap()
    }

    fn plan_of(spec: &Spec) -> Result<LaunchPlan> {
        let entry = Entrypoint { name: "/app.wasm", export: "serve" };
        let program = ProgramSource::Rootfs { path: "/app.wasm".into() };
        launch_plan(spec, Path::new("/bundle/rootfs"), program, entry, NodeCache::new("/cache", 1 << 30))
    }

    #[test]
    fn a_pod_spec_becomes_a_plan() {
        let plan = plan_of(&pod_spec("/kubepods/pod1/c1", None)).unwrap();
        assert_eq!(plan.export, "serve");
        assert_eq!(plan.args, ["/app.wasm", "--port", "80"]);
        assert_eq!((plan.env.len(), plan.cwd.as_str(), plan.rootfs.as_path()), (2, "/work", Path::new("/bundle/rootfs")));
        assert_eq!(plan.user, UserPlan { uid: 1000, gid: 3000, additional_gids: vec![4000] });
        assert_eq!(plan.memory_limit, Some(64 << 20));
        assert_eq!(plan.cgroup.as_ref().map(|c| c.path.as_str()), Some("kubepods/pod1/c1"));
        assert_eq!(plan.namespaces.join, vec![(NamespaceKind::Network, PathBuf::from("/var/run/netns/pod"))]);
        assert_eq!(plan.namespaces.create, vec![NamespaceKind::Uts]);
        assert_eq!(plan.hostname.as_deref(), Some("pod-a"));
        assert_eq!(plan.termination_message, Some(PathBuf::from("/dev/termination-log")));
        assert_eq!(plan.cache, NodeCache::new("/cache", 1 << 30));
        assert_eq!(plan.rlimits, vec![RlimitPlan { name: "RLIMIT_NOFILE".into(), resource: libc::RLIMIT_NOFILE as u32, soft: 1024, hard: 4096 }]);
        assert_eq!(plan.oom_score_adj, Some(1000));
        assert_eq!(plan.namespaces.pid, PidNamespace::New);
    }

    #[test]
    fn the_pods_pid_namespace_is_joined_and_the_hosts_never() {
        let joined = plan_of(&pod_spec("/c1", Some(LinuxNamespaceType::Pid))).unwrap();
        assert_eq!(joined.namespaces.pid, PidNamespace::New, "a pid namespace without a path is a new one");
        let mut spec = pod_spec("/c1", None);
        let mut linux = spec.linux().clone().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap();
        namespaces.push(namespace(LinuxNamespaceType::Pid, Some("/proc/42/ns/pid")));
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
        assert_eq!(plan_of(&spec).unwrap().namespaces.pid, PidNamespace::Join("/proc/42/ns/pid".into()));
    }

    #[test]
    fn mounts_keep_their_options_and_kernel_filesystems_are_left_out() {
        let plan = plan_of(&pod_spec("/c1", None)).unwrap();
        let readonly = MountFlags { readonly: true, ..Default::default() };
        let nosuid = MountFlags { nosuid: true, ..Default::default() };
        assert_eq!(
            plan.mounts,
            vec![
                MountPlan { destination: "/data".into(), kind: MountKind::Bind { source: "/src".into(), recursive: true }, flags: readonly },
                MountPlan { destination: "/tmp".into(), kind: MountKind::Tmpfs { data: "mode=755,size=65536k".into() }, flags: nosuid },
                MountPlan {
                    destination: "/dev/termination-log".into(),
                    kind: MountKind::Bind { source: "/src".into(), recursive: false },
                    flags: MountFlags::default()
                },
            ]
        );
    }

    #[test]
    fn the_plan_survives_serialization() {
        let plan = plan_of(&pod_spec("/c1", None)).unwrap();
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<LaunchPlan>(&text).unwrap(), plan);
    }

    #[test]
    fn a_systemd_cgroup_path_is_a_scope_the_daemon_makes() {
        let plan = plan_of(&pod_spec("kubepods-besteffort-pod1.slice:cri-containerd:abc", None)).unwrap();
        let cgroup = plan.cgroup.unwrap();
        assert_eq!(cgroup.path, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope");
        assert!(cgroup.made_by_systemd);
        assert!(!plan_of(&pod_spec("/c1", None)).unwrap().cgroup.unwrap().made_by_systemd);
    }

    #[test]
    fn what_wasm_containers_cannot_have_is_refused_at_create() {
        let user_ns = plan_of(&pod_spec("/c1", Some(LinuxNamespaceType::User))).unwrap_err();
        assert!(user_ns.to_string().contains("user namespaces are not supported"), "{user_ns}");
    }

    #[test]
    fn termination_message_only_when_mounted() {
        let spec = SpecBuilder::default().mounts(vec![mount("/data", "bind", &["bind"])]).build().unwrap();
        assert_eq!(termination_message_path(&spec), None);
    }

    #[test]
    fn rootfs_is_the_specs_root_in_the_bundle() {
        let spec = SpecBuilder::default().build().unwrap();
        assert_eq!(rootfs_dir(&spec, Path::new("/b")), PathBuf::from("/b/rootfs"));
    }
}
