//! What `shim delete` needs to clean up after a daemon that died, written
//! into the bundle at Create before anything is made: the delete command
//! then acts on what Create decided instead of reading the spec again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::runc::RuncRecord;
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
    /// A wasm task's instance, to kill when it has no cgroup.
    #[serde(default)]
    pub instance: Option<ProcessRecord>,
    /// How runc was run for a native task, to `runc delete` it.
    #[serde(default)]
    pub runc: Option<RuncRecord>,
}

/// A process by pid and start time, so that a later process that got the
/// same pid is never taken for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot).
    pub start_time: u64,
}

impl ProcessRecord {
    pub fn of(pid: u32) -> Option<Self> {
        Some(ProcessRecord { pid, start_time: start_time(pid)? })
    }

    /// Whether the process still runs (and is the same one).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

impl TaskRecord {
    /// Writes the record whole or not at all (a temporary file renamed over
    /// it): a daemon that dies meanwhile leaves the last one readable.
    pub fn write(&self, bundle: &Path) -> Result<()> {
        let (path, temporary) = (bundle.join(FILE), bundle.join(format!(".{FILE}.tmp")));
        std::fs::write(&temporary, serde_json::to_vec(self)?).with_context(|| format!("write {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("rename {} to {}", temporary.display(), path.display()))
    }

    /// The record of the task in `bundle`; None if Create never wrote one.
    pub fn read(bundle: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(bundle.join(FILE)).ok()?).ok()
    }

    /// A record with nothing made yet but the rootfs mount.
    pub fn new(rootfs: PathBuf, cgroup: Option<String>, scope: Option<SystemdScope>) -> Self {
        TaskRecord { rootfs, cgroup, scope, instance: None, runc: None }
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
        let mut record = TaskRecord::new(dir.path().join("rootfs"), Some("default/t1".into()), scope);
        record.instance = ProcessRecord::of(std::process::id());
        record.write(dir.path()).unwrap();
        assert_eq!(TaskRecord::read(dir.path()), Some(record));
        TaskRecord::remove(dir.path());
        assert_eq!(TaskRecord::read(dir.path()), None);
    }

    #[test]
    fn a_record_of_an_older_shim_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), r#"{"rootfs":"/r","cgroup":null,"scope":null}"#).unwrap();
        assert_eq!(TaskRecord::read(dir.path()), Some(TaskRecord::new("/r".into(), None, None)));
    }

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = ProcessRecord::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!ProcessRecord { start_time: me.start_time + 1, ..me }.is_alive());
    }
}
