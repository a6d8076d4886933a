//! What an install changed on the node, kept on the node
//! (/opt/wasmlet/state.json) so that uninstall can undo exactly that.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::distro::Distribution;
use crate::host::Host;

/// wasmlet's directory on the host: the shim, its options, this record.
pub const INSTALL_DIR: &str = "/opt/wasmlet";
/// The shim's name, and where it is installed: containerd's config names
/// it by this path.
pub const SHIM_NAME: &str = "containerd-shim-wasmlet-v1";
pub const SHIM_PATH: &str = "/opt/wasmlet/bin/containerd-shim-wasmlet-v1";
const STATE_FILE: &str = "/opt/wasmlet/state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub distribution: Distribution,
    /// The config file the runtime went into (a host path).
    pub config: String,
    /// Its text before the first install; None when there was no file.
    pub original: Option<String>,
    /// The sha256 of the text the last install wrote.
    pub written: String,
}

impl State {
    pub fn load(host: &Host) -> Result<Option<Self>> {
        let Some(text) = host.read(STATE_FILE)? else { return Ok(None) };
        serde_json::from_str(&text).map(Some).with_context(|| format!("{STATE_FILE} is damaged; remove wasmlet by hand (see the chart's README)"))
    }

    pub fn save(&self, host: &Host) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("serialise the install record")?;
        host.write(STATE_FILE, json.as_bytes(), 0o600)
    }
}
