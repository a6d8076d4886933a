//! An exec process in a native container (`kubectl exec`, CRI ExecSync):
//! added by Exec with its OCI process spec, run by `runc exec` on Start,
//! reaped like any child.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::console::{Console, ConsoleSocket};
use super::process::Process;
use super::runc::Runc;
use super::stdio::IoPaths;

#[derive(Debug)]
pub struct Exec {
    pub process: Arc<Process>,
    /// The OCI process spec containerd sent, as runc's `--process` file.
    process_file: PathBuf,
    pid_file: PathBuf,
    /// On a terminal (`kubectl exec -it`).
    terminal: bool,
}

impl Exec {
    /// Records the exec `id` of `task`; `process_json` is the OCI process spec.
    pub fn new(bundle: &Path, task: &str, id: &str, io: IoPaths, terminal: bool, process_json: &[u8]) -> Result<Self> {
        let process_file = bundle.join(format!("exec-{id}.json"));
        std::fs::write(&process_file, process_json).with_context(|| format!("write {}", process_file.display()))?;
        let pid_file = bundle.join(format!("exec-{id}.pid"));
        let process = Arc::new(Process::new(id, format!("exec {id} of task {task}"), io, 0));
        Ok(Exec { process, process_file, pid_file, terminal })
    }

    /// Runs the process in `container`, with its terminal if it has one;
    /// returns its pid.
    pub fn run(&self, runc: &Runc, container: &str, bundle: &Path) -> Result<u32> {
        let io = &self.process.io;
        if !self.terminal {
            return runc.exec(container, bundle, &self.process_file, &self.pid_file, io, None);
        }
        let socket = ConsoleSocket::new()?;
        let pid = runc.exec(container, bundle, &self.process_file, &self.pid_file, io, Some(&socket.path()))?;
        self.process.set_console(Console::attach(socket.receive()?, io)?);
        Ok(pid)
    }

    /// Removes the files this exec left in the bundle.
    pub fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.process_file);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}
