//! Uninstall must not pull the shim from under the wasm pods that still
//! run it: a shim that crashes later is cleaned up by running its binary
//! again (`shim delete`). So uninstall first waits until no process runs
//! the installed shim, and removes nothing if some still do at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tracing::info;

use crate::host::Host;
use crate::state::SHIM_PATH;

/// How often the wait says what it waits for.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Waits up to `timeout` until no process runs this install's shim (its
/// daemons, and their instances, which run the same binary).
pub fn wait_for_shims(host: &Host, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut reported = None::<Instant>;
    loop {
        let running = running_shims(host);
        if running.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "wasm pods still run on this node after {timeout:?} (processes {running:?} run the wasmlet shim): they need \
                 the shim to be cleaned up, so nothing was removed; delete or drain those pods and uninstall again"
            );
        }
        if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            info!(pids = ?running, "waiting for the wasm pods on this node to end before removing the shim");
            reported = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The processes whose executable is the installed shim (or was: an
/// upgrade replaced the file they run, which /proc marks as deleted).
pub fn running_shims(host: &Host) -> Vec<u32> {
    let installed = [PathBuf::from(SHIM_PATH), host.path(SHIM_PATH)];
    let Ok(processes) = std::fs::read_dir("/proc") else { return vec![] };
    processes
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| runs_installed(&exe, &installed)))
        .collect()
}

fn runs_installed(exe: &Path, installed: &[PathBuf]) -> bool {
    let exe = exe.to_string_lossy();
    let exe = Path::new(exe.strip_suffix(" (deleted)").unwrap_or(&exe));
    installed.iter().any(|path| path == exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_binary_still_counts() {
        let installed = [PathBuf::from(SHIM_PATH)];
        assert!(runs_installed(Path::new(SHIM_PATH), &installed));
        assert!(runs_installed(Path::new(&format!("{SHIM_PATH} (deleted)")), &installed));
        assert!(!runs_installed(Path::new("/usr/bin/containerd-shim-runc-v2"), &installed));
    }

    #[test]
    fn no_shim_no_wait() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        wait_for_shims(&Host::new(root.path()).unwrap(), Duration::ZERO).unwrap();
    }
}
