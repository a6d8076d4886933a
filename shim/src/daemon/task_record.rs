//! What `shim delete` needs to clean up after a daemon that died, written
//! into the bundle at Create before anything is made: the delete command
//! then acts on what Create decided instead of reading the spec again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::systemd_scope::SystemdScope;

const FILE: &str = "wasmlet-task.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where containerd's rootfs is mounted.
    pub rootfs: PathBuf,
    /// The task's cgroup, whose processes outlive a dead daemon.
    pub cgroup: Option<String>,
    /// The systemd scope the daemon made for a wasm task, to stop.
    pub scope: Option<SystemdScope>,
}

impl TaskRecord {
    pub fn write(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(FILE);
        std::fs::write(&path, serde_json::to_vec(self)?).with_context(|| format!("write {}", path.display()))
    }

    /// The record of the task in `bundle`; None if Create never wrote one.
    pub fn read(bundle: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(bundle.join(FILE)).ok()?).ok()
    }

    pub fn remove(bundle: &Path) {
        let _ = std::fs::remove_file(bundle.join(FILE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TaskRecord::read(dir.path()), None);
        let scope = Some(SystemdScope { slice: "a.slice".into(), unit: "b-c.scope".into() });
        let record = TaskRecord { rootfs: dir.path().join("rootfs"), cgroup: Some("default/t1".into()), scope };
        record.write(dir.path()).unwrap();
        assert_eq!(TaskRecord::read(dir.path()), Some(record));
        TaskRecord::remove(dir.path());
        assert_eq!(TaskRecord::read(dir.path()), None);
    }
}
