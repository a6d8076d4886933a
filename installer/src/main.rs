//! wasmlet-node-installer: installs the wasmlet shim on a Kubernetes node
//! and adds its runtime to containerd, from a privileged pod that has the
//! host's root mounted; removes both again on uninstall. See ARCHITECTURE.md.

mod cleanup;
mod config;
mod containerd;
mod distro;
mod drain;
mod host;
mod install;
mod kube;
mod node_check;
mod restart_slots;
mod state;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::host::Host;
use crate::install::Settings;
use crate::restart_slots::RestartSlots;
use crate::state::SHIM_NAME;
use crate::kube::Kube;

/// The label's value on a node ready for wasm pods (the RuntimeClass's
/// nodeSelector), and while an uninstall is under way.
const READY: &str = "true";
const UNINSTALLING: &str = "uninstalling";

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("WASMLET_COMMIT"), ")");

#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install or update wasmlet on this node, then label the node.
    Install(NodeArgs),
    /// Unlabel this node, then remove wasmlet from it.
    Uninstall(NodeArgs),
    /// The chart's uninstall hook: switch the installer DaemonSet to
    /// uninstall and wait until no node has the label.
    Cleanup(CleanupArgs),
}

#[derive(Args)]
struct NodeArgs {
    /// Where the host's root is mounted.
    #[arg(long, env = "WASMLET_HOST_ROOT", default_value = "/host")]
    host_root: PathBuf,
    /// auto, containerd, k3s, rke2, microk8s or k0s.
    #[arg(long, env = "WASMLET_DISTRIBUTION", default_value = "auto")]
    distribution: String,
    /// The runtime options as a JSON object, e.g. {"SystemdCgroup": false}.
    #[arg(long, env = "WASMLET_RUNTIME_OPTIONS", default_value = "{}")]
    runtime_options: String,
    /// The shim to install; by default the one next to this binary.
    #[arg(long, env = "WASMLET_SHIM")]
    shim: Option<PathBuf>,
    /// Seconds containerd may take to serve again after a restart.
    #[arg(long, env = "WASMLET_RESTART_TIMEOUT", default_value_t = 120)]
    restart_timeout: u64,
    /// Seconds uninstall waits for the wasm pods still running on the node
    /// to end; after that it removes nothing and fails.
    #[arg(long, env = "WASMLET_DRAIN_TIMEOUT", default_value_t = 240)]
    drain_timeout: u64,
    /// This node's name, to label it (the chart sets it); without it the
    /// node is not labelled.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The label that marks a node ready for wasm pods.
    #[arg(long, env = "WASMLET_NODE_LABEL", default_value = "wasmlet.dev/installed")]
    label: String,
    /// The Leases that bound how many nodes restart containerd at once are
    /// named PREFIX-0, PREFIX-1...; without a prefix (or a node name) this
    /// node restarts whenever it needs to.
    #[arg(long, env = "WASMLET_RESTART_LEASES")]
    restart_leases: Option<String>,
    /// How many nodes of the cluster may restart containerd at once.
    #[arg(long, env = "WASMLET_MAX_CONCURRENT_RESTARTS", default_value_t = 1)]
    max_concurrent_restarts: u32,
    /// The namespace of the Leases: the installer pod's.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// After the work, wait for SIGTERM: a DaemonSet's container must keep running.
    #[arg(long)]
    stay: bool,
}

#[derive(Args)]
struct CleanupArgs {
    /// The installer DaemonSet's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The installer DaemonSet.
    #[arg(long)]
    daemonset: String,
    /// The label installed nodes have.
    #[arg(long, env = "WASMLET_NODE_LABEL", default_value = "wasmlet.dev/installed")]
    label: String,
    /// Seconds to wait for every node to be uninstalled.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    // SIGTERM must not cut an install or uninstall short (the pod shares the
    // host's PID namespace, so the process is no PID 1 that the kernel
    // shields): it is held until the work is done, and `--stay` waits for it.
    if let Err(err) = termination_signals().thread_block() {
        eprintln!("block SIGTERM: {err}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Read through kubectl logs, where colour codes are noise.
        .with_ansi(false)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Install(args) => {
            let (host, settings) = args.settings()?;
            let label = args.node_label()?;
            match install::install(&host, &settings) {
                Ok(outcome) => info!(?outcome, "install done"),
                Err(err) => {
                    // A node without wasmlet gets no wasm pods (an error that
                    // left an earlier install in place keeps its label).
                    if let Some(label) = label.as_ref().filter(|_| !install::installed(&host)) {
                        label.set(None).unwrap_or_else(|unlabel| warn!("{unlabel:#}"));
                    }
                    return Err(err);
                }
            }
            match install::why_not_ready(&host, &settings)? {
                None => {
                    if let Some(label) = &label {
                        label.set(Some(READY))?;
                    }
                }
                Some(why) => {
                    // Installed, but no wasm pod may come: the RuntimeClass selects the label.
                    warn!("not labelling this node for wasm pods: {why}");
                    if let Some(label) = &label {
                        label.set(None)?;
                    }
                }
            }
            args.stay_if_asked()
        }
        Command::Uninstall(args) => {
            let (host, settings) = args.settings()?;
            // First stop new wasm pods from coming to this node (the
            // RuntimeClass selects READY); the label goes only when the node
            // is back as it was, which is what the uninstall hook waits for.
            let label = args.node_label()?;
            if let Some(label) = &label {
                label.set(Some(UNINSTALLING))?;
            }
            drain::wait_for_shims(&host, Duration::from_secs(args.drain_timeout))?;
            let outcome = install::uninstall(&host, &settings)?;
            if let Some(label) = &label {
                label.set(None)?;
            }
            info!(?outcome, "uninstall done");
            args.stay_if_asked()
        }
        Command::Cleanup(args) => {
            let cleanup = cleanup::Cleanup {
                namespace: args.namespace,
                daemonset: args.daemonset,
                label: args.label,
                timeout: Duration::from_secs(args.timeout),
            };
            cleanup::run(&Kube::in_cluster()?, &cleanup)
        }
    }
}

/// The node's label, through the API server.
struct NodeLabel {
    kube: Kube,
    node: String,
    label: String,
}

impl NodeLabel {
    /// Sets the label to `value`, or removes it (None).
    fn set(&self, value: Option<&str>) -> Result<()> {
        self.kube.label_node(&self.node, &self.label, value)?;
        info!(node = self.node, label = self.label, value = value.unwrap_or("(removed)"), "node label set");
        Ok(())
    }
}

impl NodeArgs {
    fn settings(&self) -> Result<(Host, Settings)> {
        let host = Host::new(&self.host_root)?;
        let distribution = match self.distribution.as_str() {
            "auto" => None,
            name => Some(name.parse()?),
        };
        let options: toml::Table = serde_json::from_str(&self.runtime_options)
            .with_context(|| format!("the runtime options are not a JSON object of TOML values: {}", self.runtime_options))?;
        let shim = match &self.shim {
            Some(shim) => shim.clone(),
            None => std::env::current_exe().context("find this binary")?.with_file_name(SHIM_NAME),
        };
        let restart_timeout = Duration::from_secs(self.restart_timeout);
        let restart_slots = self.restart_slots(restart_timeout)?;
        Ok((host, Settings { distribution, options, shim, restart_timeout, restart_slots }))
    }

    /// The cluster's restart slots, when the chart names them.
    fn restart_slots(&self, restart_timeout: Duration) -> Result<Option<RestartSlots>> {
        let (Some(prefix), Some(node)) = (&self.restart_leases, &self.node_name) else { return Ok(None) };
        if self.max_concurrent_restarts == 0 {
            bail!("--max-concurrent-restarts must be at least 1");
        }
        let namespace = self.namespace.clone().context("the restart Leases need the pod's namespace (POD_NAMESPACE)")?;
        Ok(Some(RestartSlots {
            kube: Kube::in_cluster()?,
            namespace,
            prefix: prefix.clone(),
            slots: self.max_concurrent_restarts,
            holder: node.clone(),
            // A restart that takes longer has failed; the margin covers clocks.
            hold: restart_timeout + Duration::from_secs(60),
        }))
    }

    fn node_label(&self) -> Result<Option<NodeLabel>> {
        let Some(node) = &self.node_name else {
            warn!("no node name given: the node is not labelled");
            return Ok(None);
        };
        Ok(Some(NodeLabel { kube: Kube::in_cluster()?, node: node.clone(), label: self.label.clone() }))
    }

    /// Waits for SIGTERM or SIGINT (blocked since start) when asked to stay.
    fn stay_if_asked(&self) -> Result<()> {
        if !self.stay {
            return Ok(());
        }
        info!("done; waiting for SIGTERM");
        let signal = termination_signals().wait().context("wait for SIGTERM")?;
        info!(%signal, "stopping; the node keeps its install");
        Ok(())
    }
}

fn termination_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
}
