//! The chart's uninstall hook: it switches the installer DaemonSet to
//! uninstall (each node's installer pod then removes wasmlet and its
//! label), and waits until no node has the label, so that `helm uninstall`
//! deletes the DaemonSet only after every node is back as it was.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tracing::info;

use crate::kube::Kube;

/// The pod template annotation the installer container reads its mode
/// (install or uninstall) from, through the downward API.
pub const MODE_ANNOTATION: &str = "wasmlet.dev/mode";

pub struct Cleanup {
    pub namespace: String,
    pub daemonset: String,
    pub label: String,
    pub timeout: Duration,
}

pub fn run(kube: &Kube, cleanup: &Cleanup) -> Result<()> {
    let Cleanup { namespace, daemonset, label, timeout } = cleanup;
    kube.annotate_pod_template(namespace, daemonset, MODE_ANNOTATION, "uninstall")?;
    info!("DaemonSet {namespace}/{daemonset} now uninstalls; waiting for the nodes to lose {label}");
    let deadline = Instant::now() + *timeout;
    loop {
        let nodes = kube.nodes_with_label(label)?;
        if nodes.is_empty() {
            info!("no node has {label} any more: wasmlet is removed from every node");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {}s these nodes still have {label}: {}; the logs of their pods of DaemonSet {namespace}/{daemonset} say why",
                timeout.as_secs(),
                nodes.join(", ")
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
