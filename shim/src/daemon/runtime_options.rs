//! The runtime options containerd passes with each Create, in whichever of
//! its two forms they come:
//! - runc's `containerd.runc.v1.Options`, from API clients that treat us
//!   like the runc shim;
//! - the generic `runtimeoptions.v1.Options`, which CRI sends for any runtime
//!   it does not know: the handler's `options` TOML table inline (containerd
//!   1.7 and later) or a TOML file named by `ConfigPath` (1.6, and
//!   `ctr run --runtime-config-path`).
//!
//! The TOML keys are runc's names, so a user can copy the runc handler's
//! options table: `BinaryName`, `Root`, `SystemdCgroup`; and wasmlet's own:
//! `CacheDir`, `CacheMaxBytes`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::protobuf::{Message, UnknownValueRef};
use containerd_shim::protos::shim::oci::Options as RuncOptions;
use serde::Deserialize;
use tracing::warn;

use crate::shared::node_cache::{NodeCache, DEFAULT_DIR, DEFAULT_MAX_BYTES};

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
/// The daemon's environment (containerd's, passed down) may name the cache
/// for runtimes configured without CacheDir / CacheMaxBytes.
const CACHE_DIR_ENV: &str = "WASMLET_CACHE_DIR";
const CACHE_MAX_BYTES_ENV: &str = "WASMLET_CACHE_MAX_BYTES";
const GENERIC_OPTIONS: &str = "runtimeoptions.v1.Options";

/// Keys containerd itself puts in the generic options table.
const CONTAINERD_KEYS: [&str; 2] = ["TypeUrl", "ConfigPath"];

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RuntimeOptions {
    /// The runc binary for native containers; empty means `runc` on PATH.
    pub binary_name: String,
    /// runc's state root; empty means runc's default under containerd.
    pub root: String,
    /// Native containers use runc's systemd cgroup driver.
    pub systemd_cgroup: bool,
    /// The node cache's directory; empty means $WASMLET_CACHE_DIR or the default.
    pub cache_dir: String,
    /// The node cache's size limit; 0 means $WASMLET_CACHE_MAX_BYTES or the default.
    pub cache_max_bytes: u64,
    /// Keys wasmlet does not use (runc's other options, typos): logged.
    #[serde(flatten)]
    unused: BTreeMap<String, toml::Value>,
}

impl RuntimeOptions {
    /// Reads the options of a Create request; none means the defaults.
    pub fn from_request(options: Option<&Any>) -> Result<Self> {
        let Some(any) = options.filter(|any| !any.type_url.is_empty()) else {
            return Ok(Self::default());
        };
        if any.type_url.ends_with(RUNC_OPTIONS) {
            let runc = RuncOptions::parse_from_bytes(&any.value).context("decode the runc options")?;
            return Ok(Self { binary_name: runc.binary_name, root: runc.root, systemd_cgroup: runc.systemd_cgroup, ..Self::default() });
        }
        if any.type_url.ends_with(GENERIC_OPTIONS) {
            return Self::from_generic(&any.value);
        }
        bail!("runtime options of type {} are not understood (expected {RUNC_OPTIONS} or {GENERIC_OPTIONS})", any.type_url)
    }

    /// The node cache these options choose, else the daemon's environment,
    /// else the defaults.
    pub fn cache(&self) -> Result<NodeCache> {
        let dir = match self.cache_dir.as_str() {
            "" => std::env::var_os(CACHE_DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from),
            dir => PathBuf::from(dir),
        };
        let max_bytes = match (self.cache_max_bytes, std::env::var(CACHE_MAX_BYTES_ENV)) {
            (0, Ok(text)) => text.parse().with_context(|| format!("{CACHE_MAX_BYTES_ENV}={text} is not a number of bytes"))?,
            (0, Err(_)) => DEFAULT_MAX_BYTES,
            (max, _) => max,
        };
        Ok(NodeCache::new(dir, max_bytes))
    }

    /// The generic form: the TOML inline, or in the file at ConfigPath.
    fn from_generic(bytes: &[u8]) -> Result<Self> {
        // containerd-shim-protos has no type for runtimeoptions.v1.Options
        // (1: type_url, 2: config_path, 3: config_body), so its fields are
        // read by number from a message that keeps unknown fields.
        let message = Empty::parse_from_bytes(bytes).context("decode the runtime options")?;
        let field = |number| match message.special_fields.unknown_fields().get(number) {
            Some(UnknownValueRef::LengthDelimited(bytes)) => bytes.to_vec(),
            _ => Vec::new(),
        };
        let (config_path, config_body) = (String::from_utf8(field(2)).context("decode ConfigPath")?, field(3));
        if !config_path.is_empty() {
            let text = std::fs::read_to_string(&config_path).with_context(|| format!("read the runtime options file {config_path}"))?;
            return Self::from_toml(&text, Path::new(&config_path).display());
        }
        let text = String::from_utf8(config_body).context("runtime options are not UTF-8")?;
        Self::from_toml(&text, "in containerd's config")
    }

    fn from_toml(text: &str, source: impl std::fmt::Display) -> Result<Self> {
        let options: Self = toml::from_str(text).with_context(|| format!("parse the runtime options {source}"))?;
        let unused: Vec<&str> = options.unused.keys().map(String::as_str).filter(|key| !CONTAINERD_KEYS.contains(key)).collect();
        if !unused.is_empty() {
            warn!("runtime options {source}: wasmlet does not use {}", unused.join(", "));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::UnknownFields;

    fn generic(config_path: &str, config_body: &str) -> Any {
        let mut fields = UnknownFields::new();
        fields.add_length_delimited(1, b"wasmlet".to_vec());
        fields.add_length_delimited(2, config_path.as_bytes().to_vec());
        fields.add_length_delimited(3, config_body.as_bytes().to_vec());
        let mut message = Empty::new();
        *message.special_fields.mut_unknown_fields() = fields;
        Any { type_url: format!("type.googleapis.com/{GENERIC_OPTIONS}"), value: message.write_to_bytes().unwrap(), ..Default::default() }
    }

    fn expected(binary_name: &str, root: &str, systemd_cgroup: bool) -> (String, String, bool) {
        (binary_name.into(), root.into(), systemd_cgroup)
    }

    fn fields(options: RuntimeOptions) -> (String, String, bool) {
        (options.binary_name, options.root, options.systemd_cgroup)
    }

    #[test]
    fn none_gives_the_defaults() {
        assert_eq!(RuntimeOptions::from_request(None).unwrap(), RuntimeOptions::default());
    }

    #[test]
    fn runc_options_are_read() {
        let mut runc = RuncOptions::new();
        runc.binary_name = "/usr/sbin/runc".into();
        runc.root = "/run/custom".into();
        runc.systemd_cgroup = true;
        let any = Any { type_url: RUNC_OPTIONS.into(), value: runc.write_to_bytes().unwrap(), ..Default::default() };
        let options = RuntimeOptions::from_request(Some(&any)).unwrap();
        assert_eq!(fields(options), expected("/usr/sbin/runc", "/run/custom", true));
    }

    #[test]
    fn inline_toml_is_read_and_other_runc_keys_ignored() {
        let any = generic("", "BinaryName = \"/opt/runc\"\nRoot = \"/run/r\"\nSystemdCgroup = true\nNoPivotRoot = false\nTypeUrl = \"x\"\n");
        let options = RuntimeOptions::from_request(Some(&any)).unwrap();
        assert_eq!(fields(options), expected("/opt/runc", "/run/r", true));
    }

    #[test]
    fn config_path_is_read_before_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wasmlet.toml");
        std::fs::write(&path, "Root = \"/run/from-file\"\n").unwrap();
        let options = RuntimeOptions::from_request(Some(&generic(path.to_str().unwrap(), "Root = \"/run/inline\""))).unwrap();
        assert_eq!(fields(options), expected("", "/run/from-file", false));
    }

    #[test]
    fn errors_name_the_problem_and_the_file() {
        let missing = RuntimeOptions::from_request(Some(&generic("/nonexistent/wasmlet.toml", ""))).unwrap_err();
        assert!(format!("{missing:#}").contains("read the runtime options file /nonexistent/wasmlet.toml"), "{missing:#}");
        let wrong_type = RuntimeOptions::from_request(Some(&generic("", "SystemdCgroup = \"yes\""))).unwrap_err();
        assert!(format!("{wrong_type:#}").contains("parse the runtime options in containerd's config"), "{wrong_type:#}");
        let unknown = Any { type_url: "example.Options".into(), ..Default::default() };
        let err = RuntimeOptions::from_request(Some(&unknown)).unwrap_err();
        assert!(err.to_string().contains("example.Options are not understood"), "{err}");
    }
}
