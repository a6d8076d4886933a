//! One task (a container) as the shim tracks it: its init process and what
//! runs it (a wasm instance or runc), its rootfs and cgroup, and the exec
//! processes of a native container. The Task API asks it; it knows which
//! runtime does what.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::util::timestamp;
use nix::sys::signal::Signal;
use tracing::warn;

use super::exec::Exec;
use super::launch::{Launched, StartPipe};
use super::oom_watch::WatchId;
use super::process::{Exit, Process, StartError};
use super::rootfs;
use super::runc::{self, Runc};
use super::stdio::IoPaths;
use super::systemd_scope::SystemdScope;
use super::task_record::TaskRecord;
use crate::shared::cgroup;
use crate::shared::status_pipe::OUT_OF_MEMORY;

/// The exit code of a process that could not be started, as runc's shim gives.
const NOT_STARTED: u32 = 255;

/// What runs the task.
#[derive(Debug)]
enum Runtime {
    /// An instance process of this shim, waiting on its start pipe until
    /// Start; its status pipe may say `oom` before it exits.
    Wasm { start: Mutex<Option<StartPipe>>, late_report: Mutex<Option<File>> },
    /// runc, for anything that is not wasm.
    Native(Arc<Runc>),
}

/// Where a task's processes are: a cgroup (below the hierarchy root), in a
/// systemd scope when the daemon made one for a wasm task.
#[derive(Debug, Default)]
pub struct TaskCgroup {
    pub path: Option<String>,
    pub scope: Option<SystemdScope>,
}

impl TaskCgroup {
    /// Stops the scope, or removes the cgroup; what cannot be is logged.
    pub fn remove(&self) {
        let removed = match (&self.scope, &self.path) {
            (Some(scope), _) => scope.stop(),
            (None, Some(path)) => cgroup::remove_when_empty(path),
            (None, None) => Ok(()),
        };
        if let Err(err) = removed {
            warn!("{err:#}");
        }
    }
}

#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    /// Where containerd's rootfs is mounted, unmounted on Delete.
    pub rootfs: PathBuf,
    /// The task's cgroup, read for Stats and removed on Delete.
    pub cgroup: TaskCgroup,
    pub init: Arc<Process>,
    runtime: Runtime,
    /// Exec processes by exec id (native containers only).
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// Frozen by Pause (native containers only), until Resume.
    paused: AtomicBool,
    /// Whether containerd was told of an OOM kill (/tasks/oom).
    pub oom_told: AtomicBool,
    /// The watch on its cgroup's OOM kills, ended on Delete.
    pub oom_watch: Mutex<Option<WatchId>>,
}

/// Why a request about a task was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task {0} not found")]
    NoSuchTask(String),
    #[error("{0} is not supported for wasm tasks")]
    Unsupported(&'static str),
    #[error("in-place update of the memory limit is not supported for wasm containers: a wasm instance sets its memory cap when it starts (recreate the pod to resize its memory; cpu and cpuset update in place)")]
    WasmMemoryUpdate,
    #[error("exec {0} already exists")]
    ExecExists(String),
    #[error("exec {exec} of task {task} not found")]
    NoSuchExec { task: String, exec: String },
    #[error("process {0} already finished")]
    Finished(u32),
    #[error("exec {0} is not running")]
    NotRunning(String),
    #[error("invalid signal {0}")]
    InvalidSignal(u32),
    #[error("{0} is still running")]
    StillRunning(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl Task {
    pub fn wasm(id: String, bundle: PathBuf, rootfs: PathBuf, io: IoPaths, cgroup: TaskCgroup, launched: Launched) -> Self {
        let Launched { pid, start, late_report } = launched;
        let runtime = Runtime::Wasm { start: Mutex::new(Some(start)), late_report: Mutex::new(Some(late_report)) };
        Task::new(id, bundle, rootfs, io, cgroup, pid, runtime)
    }

    pub fn native(id: String, bundle: PathBuf, rootfs: PathBuf, io: IoPaths, cgroup: TaskCgroup, pid: u32, runc: Arc<Runc>) -> Self {
        Task::new(id, bundle, rootfs, io, cgroup, pid, Runtime::Native(runc))
    }

    fn new(id: String, bundle: PathBuf, rootfs: PathBuf, io: IoPaths, cgroup: TaskCgroup, pid: u32, runtime: Runtime) -> Self {
        let init = Arc::new(Process::new(&id, format!("task {id}"), io, pid));
        Task { id, bundle, rootfs, cgroup, init, runtime, execs: Mutex::default(), paused: AtomicBool::new(false), oom_told: AtomicBool::new(false), oom_watch: Mutex::default() }
    }

    pub fn is_wasm(&self) -> bool {
        matches!(self.runtime, Runtime::Wasm { .. })
    }

    /// The init for an empty exec id, else that exec's process.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        Ok(self.exec(exec_id)?.process.clone())
    }

    /// Lets the init run: one byte on the instance's start pipe, or `runc
    /// start`; `announce` tells containerd before any exit can. A runc init
    /// that could not start is killed, so that its exit comes, Wait returns
    /// and Delete goes ahead, as with runc's shim. (An instance whose start
    /// pipe fails is gone already, its pid maybe reaped: it is not signalled.)
    pub fn start(&self, announce: impl FnOnce(u32)) -> Result<u32, TaskError> {
        let pid = self.init.pid();
        let started = self.init.start(
            || {
                match &self.runtime {
                    Runtime::Wasm { start, .. } => match start.lock().unwrap().take() {
                        Some(pipe) => pipe.start()?,
                        None => anyhow::bail!("task {} has no instance to start", self.id),
                    },
                    Runtime::Native(runc) => runc.start(&self.id, &self.bundle)?,
                }
                Ok(pid)
            },
            announce,
        );
        if let (Err(StartError::Failed(_)), Runtime::Native(_)) = (&started, &self.runtime) {
            let _ = self.init.signal(Signal::SIGKILL);
        }
        Ok(started?)
    }

    /// Records an exec of a native container; `process_json` is its OCI process.
    pub fn add_exec(&self, exec_id: &str, io: IoPaths, terminal: bool, process_json: &[u8]) -> Result<(), TaskError> {
        if self.is_wasm() {
            return Err(TaskError::Unsupported("exec"));
        }
        let mut execs = self.execs.lock().unwrap();
        if execs.contains_key(exec_id) {
            return Err(TaskError::ExecExists(exec_id.to_string()));
        }
        let exec = Exec::new(&self.bundle, &self.id, exec_id, io, terminal, process_json)?;
        execs.insert(exec_id.to_string(), Arc::new(exec));
        Ok(())
    }

    /// Runs an exec through `runc exec`; returns its process. One that
    /// could not start has exited (code 255), so its Wait returns.
    pub fn start_exec(&self, exec_id: &str, announce: impl FnOnce(u32)) -> Result<Arc<Process>, TaskError> {
        let Runtime::Native(runc) = &self.runtime else { return Err(TaskError::Unsupported("exec")) };
        let exec = self.exec(exec_id)?;
        let started = exec.process.start(|| exec.run(runc, &self.id, &self.bundle), announce);
        if let Err(StartError::Failed(_)) = &started {
            exec.process.exited(Exit { code: NOT_STARTED, at: timestamp().unwrap_or_default() });
        }
        started?;
        Ok(exec.process.clone())
    }

    /// Forgets a finished exec and removes its files.
    pub fn remove_exec(&self, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        let exec = self.exec(exec_id)?;
        // One never started ends now: its waiters must not wait for ever.
        if !exec.process.end_unless_started(Exit { code: NOT_STARTED, at: timestamp().unwrap_or_default() }) {
            return Err(TaskError::StillRunning(exec.process.name.clone()));
        }
        self.execs.lock().unwrap().remove(exec_id);
        exec.remove_files();
        Ok(exec.process.clone())
    }

    /// Sends `signal` to the init (through runc for a native container, to
    /// all its processes with `all`) or to an exec.
    pub fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let process = self.process(exec_id)?;
        if !exec_id.is_empty() && !process.is_running() {
            return Err(TaskError::NotRunning(exec_id.to_string()));
        }
        if exec_id.is_empty() && process.is_stopped() {
            return Err(TaskError::Finished(process.pid()));
        }
        let signal = Signal::try_from(signal as i32).map_err(|_| TaskError::InvalidSignal(signal))?;
        // A process that ended while the request was on its way is reported
        // as finished (NOT_FOUND), which containerd takes as done.
        let pid = process.pid();
        match &self.runtime {
            Runtime::Native(runc) if exec_id.is_empty() => match runc.kill(&self.id, &self.bundle, signal as i32, all) {
                Err(err) if process.is_stopped() || runc::is_not_running(&err) => return Err(TaskError::Finished(pid)),
                killed => killed?,
            },
            _ => match process.signal(signal) {
                Err(nix::errno::Errno::ESRCH) => return Err(TaskError::Finished(pid)),
                killed => killed.map_err(|e| anyhow::anyhow!("kill {pid}: {e}"))?,
            },
        }
        Ok(())
    }

    /// Freezes (Pause) or thaws (Resume) a running native container, all
    /// its processes, through runc.
    pub fn freeze(&self, frozen: bool) -> Result<(), TaskError> {
        let operation = if frozen { "pause" } else { "resume" };
        let Runtime::Native(runc) = &self.runtime else { return Err(TaskError::Unsupported(operation)) };
        if !self.init.is_running() {
            return Err(TaskError::NotRunning(self.id.clone()));
        }
        runc.freeze(&self.id, &self.bundle, frozen)?;
        self.paused.store(frozen, Ordering::SeqCst);
        Ok(())
    }

    /// Whether Pause froze it (a frozen process that is killed still ends).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// New resource limits (in-place resize, the CPU manager's cpusets):
    /// through `runc update` for a native container. A wasm container's
    /// cpu and cpuset change in its cgroup; its memory limit cannot, as the
    /// instance sized its guest's memory cap from it at start, so a request
    /// that changes it is refused whole.
    pub fn update(&self, resources_json: &[u8]) -> Result<(), TaskError> {
        let Runtime::Native(runc) = &self.runtime else { return self.update_wasm(resources_json) };
        Ok(runc.update(&self.id, &self.bundle, resources_json)?)
    }

    fn update_wasm(&self, resources_json: &[u8]) -> Result<(), TaskError> {
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json).map_err(|e| anyhow::anyhow!("read the resources of the update: {e}"))?;
        let Some(path) = &self.cgroup.path else {
            return Err(anyhow::anyhow!("task {} has no cgroup to update", self.id).into());
        };
        // The kernel keeps a limit in whole pages (`1G` is not one).
        let wanted = cgroup::memory_limit(Some(&resources)).map(cgroup::page_aligned);
        if wanted != cgroup::memory_limit_now(path) {
            return Err(TaskError::WasmMemoryUpdate);
        }
        Ok(cgroup::update_cpu(path, &resources)?)
    }

    /// The task's processes: a native container's whole cgroup (it may
    /// have forked); a wasm task is its instance.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = match (&self.runtime, &self.cgroup.path) {
            (Runtime::Native(_), Some(path)) => cgroup::pids(path),
            _ => vec![],
        };
        if pids.is_empty() {
            pids.push(self.init.pid());
        }
        pids
    }

    /// Whether the task ran out of memory: its instance said so, or the
    /// kernel's OOM killer acted in its cgroup. Asked once, after the exit.
    pub fn ran_out_of_memory(&self) -> bool {
        let mut said = String::new();
        if let Runtime::Wasm { late_report, .. } = &self.runtime {
            if let Some(mut report) = late_report.lock().unwrap().take() {
                let _ = report.read_to_string(&mut said);
            }
        }
        said.lines().any(|l| l == OUT_OF_MEMORY) || self.cgroup.path.as_deref().is_some_and(cgroup::oom_killed)
    }

    /// Refuses a running task; a created or stopped one may be deleted.
    pub fn check_deletable(&self) -> Result<(), TaskError> {
        match self.init.is_running() {
            true => Err(TaskError::StillRunning(self.init.name.clone())),
            false => Ok(()),
        }
    }

    /// Removes what the task made: runc's container, a process that never
    /// started (killed), the cgroup, the rootfs mount and the task record.
    pub fn clean_up(&self) {
        if let Runtime::Native(runc) = &self.runtime {
            if let Err(err) = runc.delete(&self.id, &self.bundle) {
                warn!(task = %self.id, "{err:#}");
            }
        }
        if !self.init.is_stopped() {
            let _ = self.init.signal(Signal::SIGKILL);
            if self.init.wait(Some(Duration::from_secs(10))).is_none() {
                warn!(task = %self.id, "init process did not exit after SIGKILL");
            }
        }
        self.cgroup.remove();
        rootfs::unmount(&self.rootfs);
        TaskRecord::remove(&self.bundle);
    }

    fn exec(&self, exec_id: &str) -> Result<Arc<Exec>, TaskError> {
        let missing = || TaskError::NoSuchExec { task: self.id.clone(), exec: exec_id.to_string() };
        self.execs.lock().unwrap().get(exec_id).cloned().ok_or_else(missing)
    }
}
