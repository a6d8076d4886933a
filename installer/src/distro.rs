//! Where each Kubernetes distribution keeps containerd: its config (and how
//! one adds to it), its socket, the systemd unit that restarts it, and a
//! directory on its PATH for the shim's link.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{self, Layout};
use crate::host::Host;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// containerd as a systemd service of its own (kubeadm, most clouds).
    Containerd,
    K3s,
    Rke2,
    Microk8s,
    K0s,
}

const ALL: [Distribution; 5] = [Distribution::K3s, Distribution::Rke2, Distribution::Microk8s, Distribution::K0s, Distribution::Containerd];

/// How the wasmlet handler gets into a distribution's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigKind {
    /// A TOML file edited in place.
    Toml,
    /// A template the distribution renders: the handler is appended as a
    /// block; a template that does not exist yet starts with `preamble`.
    Template { layout: Layout, preamble: &'static str },
    /// A file of wasmlet's own in a directory containerd imports.
    DropIn { layout: Layout },
}

/// Everything the installer needs to know about this node's containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub distribution: Distribution,
    /// The file the handler goes into (a host path).
    pub config: String,
    pub kind: ConfigKind,
    /// containerd's gRPC socket, to see it serving again after a restart.
    pub socket: &'static str,
    pub restart: Restart,
    /// The config containerd runs with, as the distribution renders it.
    pub running_config: String,
}

/// How containerd comes to read a changed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// `systemctl restart` of this unit.
    Unit(String),
    /// The distribution watches the file and restarts containerd itself.
    ByDistribution,
}

/// k3s and rke2 render their config from the distribution's own template
/// ("base") plus whatever a user template adds.
const K3S_PREAMBLE: &str = "{{ template \"base\" . }}\n\n";

impl Distribution {
    /// The distribution `host` runs: the first whose containerd config
    /// directory exists (k3s and rke2 also ship a containerd binary, so
    /// they are looked for before plain containerd).
    pub fn detect(host: &Host) -> Result<Self> {
        ALL.into_iter().find(|d| host.exists(d.marker())).with_context(|| {
            let looked = ALL.iter().map(|d| format!("{} ({d})", d.marker())).collect::<Vec<_>>().join(", ");
            format!("found no containerd on this node: looked for {looked}; set the distribution if it is elsewhere")
        })
    }

    fn marker(self) -> &'static str {
        match self {
            Distribution::Containerd => "/etc/containerd",
            Distribution::K3s => "/var/lib/rancher/k3s/agent/etc/containerd",
            Distribution::Rke2 => "/var/lib/rancher/rke2/agent/etc/containerd",
            Distribution::Microk8s => "/var/snap/microk8s/current/args",
            Distribution::K0s => "/etc/k0s",
        }
    }

    /// This node's containerd, as `self` lays it out.
    pub fn node(self, host: &Host) -> Result<Node> {
        let node = match self {
            Distribution::Containerd => {
                const MAIN: &str = "/etc/containerd/config.toml";
                let (config, kind) = match containerd_drop_in(host, MAIN)? {
                    Some((file, layout)) => (file, ConfigKind::DropIn { layout }),
                    None => (MAIN.to_string(), ConfigKind::Toml),
                };
                Node {
                    distribution: self,
                    config,
                    kind,
                    socket: "/run/containerd/containerd.sock",
                    restart: Restart::Unit(unit(host, &["containerd"])?),
                    running_config: MAIN.into(),
                }
            }
            Distribution::K3s | Distribution::Rke2 => {
                let dir = self.marker();
                let units = if self == Distribution::K3s { ["k3s", "k3s-agent"] } else { ["rke2-server", "rke2-agent"] };
                let (template, layout) = k3s_template(host, dir)?;
                Node {
                    distribution: self,
                    config: format!("{dir}/{template}"),
                    kind: ConfigKind::Template { layout, preamble: K3S_PREAMBLE },
                    socket: "/run/k3s/containerd/containerd.sock",
                    restart: Restart::Unit(unit(host, &units)?),
                    running_config: format!("{dir}/config.toml"),
                }
            }
            Distribution::Microk8s => Node {
                distribution: self,
                config: "/var/snap/microk8s/current/args/containerd-template.toml".into(),
                kind: ConfigKind::Template { layout: Layout::V2, preamble: "" },
                socket: "/var/snap/microk8s/common/run/containerd.sock",
                restart: Restart::Unit(unit(host, &["snap.microk8s.daemon-containerd"])?),
                running_config: "/var/snap/microk8s/current/args/containerd.toml".into(),
            },
            Distribution::K0s => Node {
                distribution: self,
                config: "/etc/k0s/containerd.d/wasmlet.toml".into(),
                kind: ConfigKind::DropIn { layout: k0s_layout(host)? },
                socket: "/run/k0s/containerd.sock",
                restart: Restart::ByDistribution,
                running_config: "/run/k0s/containerd-cri.toml".into(),
            },
        };
        Ok(node)
    }
}

/// A drop-in file of wasmlet's own, where the main config imports a
/// directory of them and is a version 3 config, which only containerd 2.x
/// reads and whose imported plugin tables it merges key by key. containerd
/// 1.x lets an imported plugin table replace the main file's whole table,
/// which would lose every other CRI setting: a version 2 file is edited.
fn containerd_drop_in(host: &Host, main: &str) -> Result<Option<(String, Layout)>> {
    let text = host.read(main)?.unwrap_or_default();
    let Some(dir) = config::drop_in_dir(&text) else { return Ok(None) };
    let doc = text.parse().with_context(|| format!("{main} is not valid TOML"))?;
    match Layout::of(&doc)? {
        Layout::V3 => Ok(Some((format!("{dir}/wasmlet.toml"), Layout::V3))),
        _ => {
            tracing::info!(main, dir, "a containerd 1.x config: a drop-in's CRI table would replace the main file's, so the main file is edited");
            Ok(None)
        }
    }
}

/// The user template k3s or rke2 reads, and the layout of the base it is
/// rendered with. With containerd 2 they read config-v3.toml.tmpl, and
/// config.toml.tmpl (rendered against the version 2 base) when there is
/// only that one, so a user's existing template keeps working.
fn k3s_template(host: &Host, dir: &str) -> Result<(&'static str, Layout)> {
    let rendered = host.read(&format!("{dir}/config.toml"))?.unwrap_or_default();
    let containerd2 = rendered.lines().any(|line| line.replace(' ', "") == "version=3");
    let v2_template = host.exists(&format!("{dir}/config.toml.tmpl"));
    let v3_template = host.exists(&format!("{dir}/config-v3.toml.tmpl"));
    Ok(if containerd2 && (v3_template || !v2_template) {
        ("config-v3.toml.tmpl", Layout::V3)
    } else {
        ("config.toml.tmpl", Layout::V2)
    })
}

/// k0s reads drop-ins only while it manages its containerd config, and
/// containerd refuses a drop-in of a newer version than that config.
fn k0s_layout(host: &Host) -> Result<Layout> {
    const MAIN: &str = "/etc/k0s/containerd.toml";
    let text = host.read(MAIN)?.unwrap_or_default();
    if !text.starts_with("# k0s_managed=true") {
        bail!("{MAIN} is not managed by k0s (its first line is not `# k0s_managed=true`), so k0s ignores /etc/k0s/containerd.d: add the wasmlet runtime to {MAIN} yourself");
    }
    let doc = text.parse().with_context(|| format!("{MAIN} is not valid TOML"))?;
    Ok(match Layout::of(&doc)? {
        Layout::V3 => Layout::V3,
        _ => Layout::V2,
    })
}

/// The first of `names` that is a systemd unit on the host.
fn unit(host: &Host, names: &[&str]) -> Result<String> {
    const DIRS: [&str; 5] =
        ["/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];
    for name in names {
        if DIRS.iter().any(|dir| host.exists(&format!("{dir}/{name}.service"))) {
            return Ok(name.to_string());
        }
    }
    let units = names.iter().map(|n| format!("{n}.service")).collect::<Vec<_>>().join(" or ");
    bail!("found no systemd unit {units} in {}: wasmlet restarts containerd through systemd", DIRS.join(", "))
}

impl Node {
    /// What the runc handler of the config containerd runs with says of the
    /// systemd cgroup driver, if anything.
    pub fn runc_systemd_cgroup(&self, host: &Host) -> Option<bool> {
        host.read(&self.running_config).ok().flatten().and_then(|text| config::runc_systemd_cgroup(&text))
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Distribution::Containerd => "containerd",
            Distribution::K3s => "k3s",
            Distribution::Rke2 => "rke2",
            Distribution::Microk8s => "microk8s",
            Distribution::K0s => "k0s",
        };
        f.write_str(name)
    }
}

impl FromStr for Distribution {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        ALL.into_iter().find(|d| d.to_string() == name).with_context(|| {
            let names = ALL.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            format!("unknown distribution {name:?}: expected auto, {names}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let host = Host::new(dir.path()).unwrap();
        for (path, text) in files {
            host.write(path, text.as_bytes(), 0o644).unwrap();
        }
        (dir, host)
    }

    #[test]
    fn k3s_is_found_before_plain_containerd_and_picks_its_template() {
        let (_dir, host) = host_with(&[
            ("/etc/containerd/config.toml", "version = 2\n"),
            ("/var/lib/rancher/k3s/agent/etc/containerd/config.toml", "version = 3\n"),
            ("/etc/systemd/system/k3s-agent.service", ""),
        ]);
        let node = Distribution::detect(&host).unwrap().node(&host).unwrap();
        assert_eq!(node.distribution, Distribution::K3s);
        assert_eq!(node.config, "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl");
        assert_eq!(node.kind, ConfigKind::Template { layout: Layout::V3, preamble: K3S_PREAMBLE });
        assert_eq!(node.restart, Restart::Unit("k3s-agent".into()));
    }

    #[test]
    fn k3s_with_containerd_2_keeps_a_users_version_2_template() {
        let (_dir, host) = host_with(&[
            ("/var/lib/rancher/k3s/agent/etc/containerd/config.toml", "version = 3\n"),
            ("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl", "{{ template \"base\" . }}\n"),
            ("/etc/systemd/system/k3s.service", ""),
        ]);
        let node = Distribution::K3s.node(&host).unwrap();
        assert_eq!(node.config, "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl");
        assert_eq!(node.kind, ConfigKind::Template { layout: Layout::V2, preamble: K3S_PREAMBLE });
    }

    #[test]
    fn k0s_needs_its_managed_config() {
        let (_dir, host) = host_with(&[("/etc/k0s/containerd.toml", "version = 2\n")]);
        let err = Distribution::K0s.node(&host).unwrap_err().to_string();
        assert!(err.contains("is not managed by k0s"), "{err}");
        host.write("/etc/k0s/containerd.toml", b"# k0s_managed=true\nversion = 3\n", 0o644).unwrap();
        let node = Distribution::K0s.node(&host).unwrap();
        assert_eq!((node.kind, node.restart), (ConfigKind::DropIn { layout: Layout::V3 }, Restart::ByDistribution));
    }

    #[test]
    fn plain_containerd_needs_its_unit() {
        let (_dir, host) = host_with(&[("/etc/containerd/config.toml", "")]);
        let err = Distribution::Containerd.node(&host).unwrap_err().to_string();
        assert!(err.contains("found no systemd unit containerd.service"), "{err}");
        host.write("/lib/systemd/system/containerd.service", b"", 0o644).unwrap();
        assert_eq!(Distribution::Containerd.node(&host).unwrap().kind, ConfigKind::Toml);
    }

    #[test]
    fn nothing_found_names_where_it_looked() {
        let (_dir, host) = host_with(&[]);
        let err = Distribution::detect(&host).unwrap_err().to_string();
        assert!(err.contains("/etc/containerd (containerd)") && err.contains("/etc/k0s (k0s)"), "{err}");
        assert!("k0s".parse::<Distribution>().is_ok());
        assert!("kind".parse::<Distribution>().unwrap_err().to_string().contains("expected auto, k3s"));
    }
}
