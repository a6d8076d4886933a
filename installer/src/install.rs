//! Installing wasmlet on one node and removing it again: the shim under
//! /opt/wasmlet, the `wasmlet` runtime in containerd's config naming it by
//! that path (and, for containerd 1.6 alone, a link on its PATH), and a
//! restart of containerd only when one of them changed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tracing::{error, info, warn};

use crate::config::{self, Entry, Layout};
use crate::containerd;
use crate::distro::{ConfigKind, Distribution, Node};
use crate::drain;
use crate::host::{digest, file_digest, Host};
use crate::node_check::{self, CgroupDriver};
use crate::restart_slots::RestartSlots;
use crate::state::{State, INSTALL_DIR, SHIM_NAME, SHIM_PATH};
use crate::template;

const OPTIONS_PATH: &str = "/opt/wasmlet/options.toml";
/// The shim's link on containerd's PATH (/usr/local/bin is on it under
/// systemd): made for containerd 1.6, which ignores runtime_path when it
/// starts a pod's sandbox (and, where it can be, for a containerd whose
/// version the host's PATH does not tell); removed where a containerd of
/// 1.7 or later needs none.
const LINK: &str = "/usr/local/bin/containerd-shim-wasmlet-v1";

pub struct Settings {
    /// None: find out which distribution the node runs.
    pub distribution: Option<Distribution>,
    /// The handler's runtime options (runc's keys and wasmlet's own).
    pub options: toml::Table,
    /// The shim binary to install.
    pub shim: PathBuf,
    /// How long containerd may take to serve again after a restart.
    pub restart_timeout: Duration,
    /// The cluster's restart slots: None restarts at once.
    pub restart_slots: Option<RestartSlots>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was already as asked: nothing written, nothing restarted.
    Unchanged,
    /// Only the shim changed: new pods run the new one, running pods keep
    /// theirs, and containerd (which runs the binary anew for each pod)
    /// was not restarted.
    ShimUpdated,
    /// Files changed and containerd was restarted (once).
    Restarted,
}

/// Installs wasmlet, or brings an install up to date. On failure, whatever
/// was installed is removed again and containerd runs with its config as
/// it was before wasmlet, so the node keeps working; unless wasm pods still
/// run here (a failed upgrade), whose shim must stay.
pub fn install(host: &Host, settings: &Settings) -> Result<Outcome> {
    let previous = State::load(host)?;
    let distribution = match (settings.distribution, &previous) {
        (Some(distribution), _) => distribution,
        (None, Some(state)) => state.distribution,
        (None, None) => Distribution::detect(host)?,
    };
    if let Some(state) = previous.as_ref().filter(|state| state.distribution != distribution) {
        bail!("wasmlet is installed here for {}; uninstall it before installing for {distribution}", state.distribution);
    }
    let node = distribution.node(host)?;
    let result = apply(host, settings, &node, previous.as_ref());
    if let Err(err) = &result {
        let running = drain::running_shims(host);
        if !running.is_empty() {
            // Their shims are needed to clean them up: the last install stays.
            bail!("{err:#}; wasm pods still run on this node (processes {running:?} run the wasmlet shim), so nothing was undone");
        }
        error!("install failed, removing wasmlet from this node again: {err:#}");
        if let Err(undo) = uninstall(host, settings) {
            bail!("{err:#}; removing wasmlet again failed too: {undo:#}");
        }
    }
    result
}

fn apply(host: &Host, settings: &Settings, node: &Node, previous: Option<&State>) -> Result<Outcome> {
    let distribution = node.distribution;
    info!(%distribution, config = node.config, "installing wasmlet");
    let options = options_for_the_node(host, node, &settings.options);

    // A config the last install wrote elsewhere (the distribution moved to
    // another template) is put back first.
    let mut config_changed = match previous.filter(|state| state.config != node.config) {
        Some(state) => restore_config(host, state)?,
        None => false,
    };
    let previous = previous.filter(|state| state.config == node.config);
    let entry = Entry { shim: SHIM_PATH.to_string(), options_file: (!options.is_empty()).then(|| OPTIONS_PATH.to_string()) };
    let current = host.read(&node.config)?;
    let desired = desired_config(host, node, current.as_deref(), &entry, previous.is_some())?;
    let state = State {
        distribution,
        config: node.config.clone(),
        original: original_text(node, previous, current.as_deref()),
        written: digest(desired.as_bytes()),
    };
    // Recorded before anything is written, so a failure halfway is undone.
    if previous != Some(&state) {
        state.save(host)?;
    }

    let shim_changed = install_shim(host, settings)?;
    install_options(host, &options)?;
    match containerd::version(host) {
        Ok(version) if version >= (1, 7) => remove_link(host),
        Ok(_) => install_link(host)?,
        // A containerd the distribution bundles, off the host's PATH: a
        // 1.6 among them would need the link, a newer one not.
        Err(_) => {
            if let Err(err) = install_link(host) {
                warn!("no link on containerd's PATH (containerd 1.7 or later needs none): {err:#}");
            }
        }
    }
    if current.as_deref() != Some(desired.as_str()) {
        host.write(&node.config, desired.as_bytes(), 0o644)?;
        config_changed = true;
    }
    match (shim_changed, config_changed) {
        (false, false) => {
            info!("wasmlet is installed and up to date: nothing changed");
            return Ok(Outcome::Unchanged);
        }
        (true, false) => {
            info!("the shim was updated: new pods use it, running pods keep theirs; containerd needs no restart");
            return Ok(Outcome::ShimUpdated);
        }
        _ => {}
    }
    restart_containerd(host, node, settings)?;
    info!("wasmlet installed; containerd serves with the wasmlet runtime");
    Ok(Outcome::Restarted)
}

/// The handler's options: as given, and `SystemdCgroup` where the node uses
/// the systemd driver unless given (the runc containers of wasm pods then
/// get their cgroup paths in that driver's form; wasm containers follow the
/// path's form by themselves).
fn options_for_the_node(host: &Host, node: &Node, given: &toml::Table) -> toml::Table {
    let mut options = given.clone();
    let (driver, from) = node_check::cgroup_driver(host, node);
    info!("cgroup driver {driver} (from {from})");
    if driver == CgroupDriver::Systemd {
        options.entry("SystemdCgroup").or_insert(toml::Value::Boolean(true));
    }
    options
}

/// Why wasm pods cannot run on this node, if they cannot.
pub fn why_not_ready(host: &Host, settings: &Settings) -> Result<Option<String>> {
    let distribution = match (settings.distribution, State::load(host)?) {
        (Some(distribution), _) => distribution,
        (None, Some(state)) => state.distribution,
        (None, None) => Distribution::detect(host)?,
    };
    let (driver, _) = node_check::cgroup_driver(host, &distribution.node(host)?);
    let release = nix::sys::utsname::uname().context("uname")?.release().to_string_lossy().into_owned();
    Ok(node_check::why_not_ready(host, driver, &release))
}

/// What uninstall gives back: the text before the first install; but if
/// someone edited the file since the last install, the text as it is now
/// without wasmlet's part, so their edit survives.
fn original_text(node: &Node, previous: Option<&State>, current: Option<&str>) -> Option<String> {
    let Some(state) = previous else { return current.map(String::from) };
    let edited = current.map(|text| digest(text.as_bytes())).as_deref() != Some(state.written.as_str());
    if !edited || matches!(node.kind, ConfigKind::DropIn { .. }) {
        return state.original.clone();
    }
    warn!("{} changed since wasmlet wrote it: uninstall will give back that text without wasmlet's part", node.config);
    current.map(|text| without_wasmlet(text, &node.config))
}

/// The text with wasmlet's block or handler taken out (as it is, when it
/// has neither or cannot be read as TOML).
fn without_wasmlet(text: &str, source: &str) -> String {
    if let Some(rest) = template::remove_block(text) {
        return rest;
    }
    match config::remove_from(text, source) {
        Ok(rest) => rest.unwrap_or_else(|| text.to_string()),
        Err(err) => {
            warn!("{err:#}: left as it is");
            text.to_string()
        }
    }
}

/// Whether wasmlet is installed on the node (its record is there).
pub fn installed(host: &Host) -> bool {
    State::load(host).ok().flatten().is_some()
}

/// The config's text with the wasmlet runtime in it.
fn desired_config(host: &Host, node: &Node, current: Option<&str>, entry: &Entry, ours: bool) -> Result<String> {
    match node.kind {
        ConfigKind::Toml => {
            let text = current.unwrap_or_default();
            if !config::is_blank(text, &node.config)? {
                return entry.add_to(text, &node.config);
            }
            // Nothing in it says which config version this containerd reads.
            let layout = Layout::for_containerd_major(containerd::version(host)?.0);
            let separator = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
            Ok(format!("{text}{separator}{}", entry.text(layout, true)))
        }
        ConfigKind::Template { layout, preamble } => Ok(template::add_block(current, preamble, &entry.text(layout, false))),
        ConfigKind::DropIn { layout } => {
            if current.is_some() && !ours {
                bail!("{} exists and was not written by wasmlet: remove it or pick another distribution", node.config);
            }
            Ok(entry.text(layout, true))
        }
    }
}

/// Copies the shim to /opt/wasmlet/bin unless the same one is there. Both
/// are streamed, not read whole: the pod's memory limit is small.
fn install_shim(host: &Host, settings: &Settings) -> Result<bool> {
    let source = &settings.shim;
    let open = || std::fs::File::open(source).with_context(|| format!("read the shim to install, {}", source.display()));
    let wanted = file_digest(open()?).with_context(|| format!("read the shim to install, {}", source.display()))?;
    if host.file_digest(SHIM_PATH)?.as_deref() == Some(wanted.as_str()) {
        return Ok(false);
    }
    info!(path = SHIM_PATH, "installing the shim");
    host.copy_in(&mut open()?, SHIM_PATH, 0o755)?;
    Ok(true)
}

/// Writes the runtime options file the config points the shim to.
fn install_options(host: &Host, options: &toml::Table) -> Result<()> {
    if options.is_empty() {
        return host.remove_file(OPTIONS_PATH);
    }
    let text = toml::to_string(options).context("write the runtime options as TOML")?;
    if host.read(OPTIONS_PATH)?.as_deref() != Some(text.as_str()) {
        host.write(OPTIONS_PATH, text.as_bytes(), 0o644)?;
    }
    Ok(())
}

fn install_link(host: &Host) -> Result<()> {
    if host.links_to(LINK, SHIM_PATH) {
        return Ok(());
    }
    if host.path(LINK).symlink_metadata().is_ok() {
        bail!("{LINK} exists and is not wasmlet's link to {SHIM_PATH}: remove it, or uninstall the other {SHIM_NAME}");
    }
    host.symlink(SHIM_PATH, LINK).with_context(|| {
        format!("containerd 1.6 ignores runtime_path when it starts a pod's sandbox, so it needs the shim on its PATH; upgrade containerd to 1.7 or later where {LINK} cannot be written")
    })
}

/// Removes the link where it is wasmlet's (an install for containerd 1.6,
/// or one from before runtime_path) and /usr can be written; where it
/// cannot, the link stays, harmless: it names the same shim.
fn remove_link(host: &Host) {
    if host.links_to(LINK, SHIM_PATH) {
        if let Err(err) = host.remove_file(LINK) {
            warn!("leaving wasmlet's {LINK} in place: {err:#}");
        }
    }
}

/// Restarts containerd once this node holds a restart slot, if the cluster
/// counts them, and gives the slot back when containerd serves again.
fn restart_containerd(host: &Host, node: &Node, settings: &Settings) -> Result<()> {
    let _slot = settings.restart_slots.as_ref().map(RestartSlots::acquire).transpose()?;
    containerd::restart(host, node, settings.restart_timeout)
}

/// Removes what the install added: the config returns to its text from
/// before the install, /opt/wasmlet goes (and an older install's link), and containerd is
/// restarted if its config changed.
pub fn uninstall(host: &Host, settings: &Settings) -> Result<Outcome> {
    let Some(state) = State::load(host)? else {
        info!("wasmlet is not installed on this node: nothing to remove");
        return Ok(Outcome::Unchanged);
    };
    info!(distribution = %state.distribution, config = state.config, "removing wasmlet");
    let config_changed = restore_config(host, &state)?;
    remove_link(host);
    if config_changed {
        let node = state.distribution.node(host).context("find how to restart containerd")?;
        restart_containerd(host, &node, settings)?;
    }
    host.remove_dir_all(INSTALL_DIR)?;
    info!("wasmlet removed");
    Ok(if config_changed { Outcome::Restarted } else { Outcome::Unchanged })
}

/// Puts the config back as it was before the install: byte for byte if
/// it is still what the install wrote, else (someone edited it since) by
/// taking out only wasmlet's runtime. Returns whether the file changed.
fn restore_config(host: &Host, state: &State) -> Result<bool> {
    let current = host.read(&state.config)?;
    let restored = match current.as_deref() {
        Some(text) if digest(text.as_bytes()) == state.written => state.original.clone(),
        None => return Ok(false),
        Some(text) => {
            warn!("{} changed since wasmlet wrote it: taking out only wasmlet's runtime", state.config);
            Some(without_wasmlet(text, &state.config))
        }
    };
    if restored == current {
        return Ok(false);
    }
    match &restored {
        Some(text) => host.write(&state.config, text.as_bytes(), 0o644)?,
        None => host.remove_file(&state.config)?,
    }
    Ok(true)
}
