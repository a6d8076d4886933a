//! One task as the shim tracks it: its init process (a wasm instance or a
//! runc container), its phase, its exit with a condition variable for Wait,
//! and the exec processes of a native container.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::exec::Exec;
use crate::launch::{Launched, StartPipe};
use crate::runc::Runc;
use crate::stdio::IoPaths;

#[derive(Debug, Clone)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

/// What runs the task.
#[derive(Debug)]
pub enum Runtime {
    /// An instance process of this shim.
    Wasm,
    /// runc, for anything that is not wasm.
    Native(Arc<Runc>),
}

#[derive(Debug)]
enum Phase {
    /// Set up and waiting for Start (a wasm instance holds its start pipe).
    Created(Option<StartPipe>),
    Running,
    Stopped(Exit),
}

#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub io: IoPaths,
    pub pid: u32,
    /// The task's cgroup, read for Stats and removed on Delete.
    pub cgroup: Option<String>,
    pub runtime: Runtime,
    /// Exec processes by exec id (native containers only).
    pub execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// A wasm instance's status pipe, which may say `oom` before exit;
    /// taken when the exit is handled.
    late_report: Mutex<Option<std::fs::File>>,
    phase: Mutex<Phase>,
    exited: Condvar,
}

#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("task {0} was already started")]
    AlreadyStarted(String),
    #[error("task {0} has already exited")]
    Exited(String),
    #[error("task {0} is still running")]
    Running(String),
}

impl Task {
    pub fn wasm(id: String, bundle: PathBuf, io: IoPaths, cgroup: Option<String>, launched: Launched) -> Self {
        let Launched { pid, start, late_report } = launched;
        let late_report = Mutex::new(Some(late_report));
        let phase = Mutex::new(Phase::Created(Some(start)));
        Task { id, bundle, io, pid, cgroup, runtime: Runtime::Wasm, execs: Mutex::default(), late_report, phase, exited: Condvar::new() }
    }

    pub fn native(id: String, bundle: PathBuf, io: IoPaths, cgroup: Option<String>, pid: u32, runc: Arc<Runc>) -> Self {
        let phase = Mutex::new(Phase::Created(None));
        let late_report = Mutex::default();
        Task { id, bundle, io, pid, cgroup, runtime: Runtime::Native(runc), execs: Mutex::default(), late_report, phase, exited: Condvar::new() }
    }

    /// Moves Created -> Running and lets the process go. The phase stays
    /// locked meanwhile, so an immediate exit is recorded after the start.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut phase = self.phase.lock().unwrap();
        match std::mem::replace(&mut *phase, Phase::Running) {
            Phase::Created(Some(pipe)) => pipe.start(),
            Phase::Created(None) => match &self.runtime {
                Runtime::Native(runc) => runc.start(&self.id, &self.bundle),
                Runtime::Wasm => anyhow::bail!("task {} has no instance to start", self.id),
            },
            other => {
                let err = match &other {
                    Phase::Stopped(_) => PhaseError::Exited(self.id.clone()),
                    _ => PhaseError::AlreadyStarted(self.id.clone()),
                };
                *phase = other;
                Err(err.into())
            }
        }
    }

    /// Records the instance's exit and wakes every waiter.
    pub fn exited(&self, exit: Exit) {
        *self.phase.lock().unwrap() = Phase::Stopped(exit);
        self.exited.notify_all();
    }

    pub fn status(&self) -> (Status, Option<Exit>) {
        match &*self.phase.lock().unwrap() {
            Phase::Created(_) => (Status::CREATED, None),
            Phase::Running => (Status::RUNNING, None),
            Phase::Stopped(exit) => (Status::STOPPED, Some(exit.clone())),
        }
    }

    /// Blocks until the task has exited, or until `timeout` when one is given.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Exit> {
        let running = |phase: &mut Phase| !matches!(phase, Phase::Stopped(_));
        let phase = self.phase.lock().unwrap();
        let phase = match timeout {
            None => self.exited.wait_while(phase, running).unwrap(),
            Some(t) => self.exited.wait_timeout_while(phase, t, running).unwrap().0,
        };
        match &*phase {
            Phase::Stopped(exit) => Some(exit.clone()),
            _ => None,
        }
    }

    /// A running task cannot be deleted; a created one can (it is killed).
    pub fn check_deletable(&self) -> Result<(), PhaseError> {
        match &*self.phase.lock().unwrap() {
            Phase::Running => Err(PhaseError::Running(self.id.clone())),
            _ => Ok(()),
        }
    }

    /// Whether the task ran out of memory: its instance said so, or the
    /// kernel's OOM killer acted in its cgroup. Asked once, after the exit.
    pub fn ran_out_of_memory(&self) -> bool {
        let mut said = String::new();
        if let Some(mut report) = self.late_report.lock().unwrap().take() {
            let _ = std::io::Read::read_to_string(&mut report, &mut said);
        }
        said.lines().any(|l| l == crate::handshake::OUT_OF_MEMORY) || self.cgroup.as_deref().is_some_and(crate::cgroup::oom_killed)
    }

    pub fn exec(&self, exec_id: &str) -> Option<Arc<Exec>> {
        self.execs.lock().unwrap().get(exec_id).cloned()
    }

    /// The exec process with this pid, if any.
    pub fn exec_by_pid(&self, pid: u32) -> Option<Arc<Exec>> {
        self.execs.lock().unwrap().values().find(|e| e.pid() == Some(pid)).cloned()
    }

    pub fn is_stopped(&self) -> bool {
        matches!(&*self.phase.lock().unwrap(), Phase::Stopped(_))
    }
}
