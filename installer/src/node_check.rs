//! What the node offers wasm pods: the cgroup driver its runc (or else its
//! kubelet) uses, which wasmlet then uses too for the runc containers of
//! wasm pods, and whether a wasm pod can run here at all. The installer
//! labels a node only then, and says why not otherwise.

use std::fmt;

use crate::distro::Node;
use crate::host::Host;

/// kubelet's config, where kubeadm and most installers put it.
const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// The oldest kernel with what wasmlet's isolation uses: openat2 (5.6) and
/// mount_setattr (5.12).
const OLDEST_KERNEL: (u32, u32) = (5, 12);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        })
    }
}

/// The node's cgroup driver and where that was read.
pub fn cgroup_driver(host: &Host, node: &Node) -> (CgroupDriver, String) {
    let driver = |systemd| if systemd { CgroupDriver::Systemd } else { CgroupDriver::Cgroupfs };
    if let Some(systemd) = node.runc_systemd_cgroup(host) {
        return (driver(systemd), format!("containerd's runc options in {}", node.running_config));
    }
    let kubelet = host.read(KUBELET_CONFIG).ok().flatten().unwrap_or_default();
    if let Some(value) = kubelet.lines().find_map(|line| line.trim().strip_prefix("cgroupDriver:")) {
        return (driver(value.trim().trim_matches('"') == "systemd"), format!("kubelet's {KUBELET_CONFIG}"));
    }
    (CgroupDriver::Cgroupfs, "neither containerd's runc options nor kubelet's config say: runc's default".into())
}

/// Why a wasm pod cannot run on this node, if it cannot.
pub fn why_not_ready(host: &Host, driver: CgroupDriver, kernel_release: &str) -> Option<String> {
    let version: Vec<u32> = kernel_release.split(|c: char| !c.is_ascii_digit()).take(2).filter_map(|n| n.parse().ok()).collect();
    if version.len() < 2 || (version[0], version[1]) < OLDEST_KERNEL {
        return Some(format!(
            "its kernel {kernel_release} is older than {}.{}, which wasmlet's isolation needs (openat2, mount_setattr)",
            OLDEST_KERNEL.0, OLDEST_KERNEL.1
        ));
    }
    if !host.exists("/sys/fs/cgroup/cgroup.controllers") && !host.exists("/sys/fs/cgroup/memory") {
        return Some("no cgroup hierarchy is mounted at /sys/fs/cgroup".into());
    }
    if driver == CgroupDriver::Systemd {
        if !host.exists("/run/systemd/system") {
            return Some("it uses the systemd cgroup driver but systemd is not its init".into());
        }
        if !host.exists("/run/dbus/system_bus_socket") {
            return Some("it uses the systemd cgroup driver but has no D-Bus system bus (/run/dbus/system_bus_socket)".into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with(files: &[&str]) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        for file in files {
            let path = dir.path().join(file.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        let host = Host::new(dir.path()).unwrap();
        (dir, host)
    }

    #[test]
    fn a_node_is_ready_only_with_what_wasm_pods_need() {
        let (_dir, host) = host_with(&["/sys/fs/cgroup/cgroup.controllers", "/run/systemd/system/x", "/run/dbus/system_bus_socket"]);
        assert_eq!(why_not_ready(&host, CgroupDriver::Systemd, "6.1.0-57-amd64"), None);
        assert!(why_not_ready(&host, CgroupDriver::Systemd, "5.10.0").unwrap().contains("older than 5.12"));
        let (_dir, bare) = host_with(&["/sys/fs/cgroup/cgroup.controllers"]);
        assert!(why_not_ready(&bare, CgroupDriver::Systemd, "6.1").unwrap().contains("systemd is not its init"));
        assert_eq!(why_not_ready(&bare, CgroupDriver::Cgroupfs, "6.1"), None);
    }
}
