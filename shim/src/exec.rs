//! An exec process in a native container (`kubectl exec`, CRI ExecSync):
//! added by Exec, run by `runc exec` on Start, reaped like any child.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use anyhow::{Context, Result};
use containerd_shim::api::Status;

use crate::runc::Runc;
use crate::stdio::IoPaths;
use crate::task::Exit;

#[derive(Debug, Default)]
struct State {
    pid: Option<u32>,
    exit: Option<Exit>,
}

#[derive(Debug)]
pub struct Exec {
    pub id: String,
    pub io: IoPaths,
    /// The OCI process spec containerd sent, as runc's `--process` file.
    process_file: PathBuf,
    state: Mutex<State>,
    exited: Condvar,
}

impl Exec {
    /// Records the exec; `process_json` is the OCI process spec.
    pub fn new(bundle: &Path, id: &str, io: IoPaths, process_json: &[u8]) -> Result<Self> {
        let process_file = bundle.join(format!("exec-{id}.json"));
        std::fs::write(&process_file, process_json).with_context(|| format!("write {}", process_file.display()))?;
        Ok(Exec { id: id.to_string(), io, process_file, state: Mutex::default(), exited: Condvar::new() })
    }

    /// Runs the process in the container; returns its pid.
    pub fn start(&self, runc: &Runc, container: &str, bundle: &Path) -> Result<u32> {
        let pid_file = bundle.join(format!("exec-{}.pid", self.id));
        runc.exec(container, bundle, &self.process_file, &pid_file, &self.io)
    }

    pub fn set_pid(&self, pid: u32) {
        self.state.lock().unwrap().pid = Some(pid);
    }

    pub fn pid(&self) -> Option<u32> {
        self.state.lock().unwrap().pid
    }

    pub fn exited(&self, exit: Exit) {
        self.state.lock().unwrap().exit = Some(exit);
        self.exited.notify_all();
    }

    pub fn status(&self) -> (Status, u32, Option<Exit>) {
        let state = self.state.lock().unwrap();
        let status = match (&state.pid, &state.exit) {
            (_, Some(_)) => Status::STOPPED,
            (Some(_), None) => Status::RUNNING,
            (None, None) => Status::CREATED,
        };
        (status, state.pid.unwrap_or(0), state.exit.clone())
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let state = self.exited.wait_while(self.state.lock().unwrap(), |s| s.exit.is_none()).unwrap();
        state.exit.clone().expect("waited for an exit")
    }

    /// Removes the files this exec left in the bundle.
    pub fn remove_files(&self, bundle: &Path) {
        let _ = std::fs::remove_file(&self.process_file);
        let _ = std::fs::remove_file(bundle.join(format!("exec-{}.pid", self.id)));
    }
}
