//! The containerd Task API (shim v2 over ttrpc) for the tasks of one shim:
//! requests in, instance processes (or runc) out, events back to containerd.

mod exec;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api::*;
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskStart};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim::util::timestamp;
use containerd_shim::{ExitSignal, Task as TaskApi};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use tracing::{info, warn};

use crate::cache::Cache;
use crate::events::Publisher;
use crate::exec::Exec;
use crate::image::ContentStore;
use crate::launch;
use crate::options::RuntimeOptions;
use crate::runc::{ForgetPid, Runc};
use crate::stdio::IoPaths;
use crate::task::{Exit, Runtime, Task};
use crate::workload::{EntryError, ModuleSource, WasmEntry, Workload};
use crate::{cgroup, rootfs, workload};

pub struct Service {
    namespace: String,
    /// containerd's API socket, where wasm artifacts' images are read.
    containerd_address: String,
    publisher: Arc<Publisher>,
    state: Arc<Mutex<Tasks>>,
    shutdown: Arc<ExitSignal>,
}

#[derive(Default)]
struct Tasks {
    by_id: HashMap<String, Arc<Task>>,
    /// Exits of pids not (yet) registered: a fast guest can exit before its
    /// task is recorded.
    unclaimed: HashMap<u32, Exit>,
    /// Pids of instances whose setup failed: their exits are dropped.
    discarded: HashSet<u32>,
    /// Requests in flight (Create, Start, Kill, Delete), so that Shutdown
    /// never ends the daemon before it has answered them.
    in_flight: usize,
    /// Shutdown came while requests were in flight: the last one ends the daemon.
    shutdown_requested: bool,
}

struct InFlight<'a> {
    state: &'a Mutex<Tasks>,
    shutdown: &'a ExitSignal,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut tasks = self.state.lock().unwrap();
        tasks.in_flight -= 1;
        if tasks.shutdown_requested && tasks.in_flight == 0 && tasks.by_id.is_empty() {
            info!("last request answered: shim exits");
            self.shutdown.signal();
        }
    }
}

impl Tasks {
    fn exec_by_pid(&self, pid: u32) -> Option<(Arc<Task>, Arc<Exec>)> {
        self.by_id.values().find_map(|t| t.exec_by_pid(pid).map(|e| (t.clone(), e)))
    }

    /// Forgets a failed instance, whether or not its exit has arrived yet.
    fn discard(&mut self, pid: u32) {
        if self.unclaimed.remove(&pid).is_none() {
            self.discarded.insert(pid);
        }
    }
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn rpc_error(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn unsupported(operation: &str) -> ttrpc::Error {
    rpc_error(Code::UNIMPLEMENTED, format!("{operation} is not supported for wasm tasks"))
}

impl Service {
    pub fn new(namespace: String, containerd_address: String, publisher: Publisher, shutdown: Arc<ExitSignal>) -> Self {
        let service = Service { namespace, containerd_address, publisher: Arc::new(publisher), state: Arc::default(), shutdown };
        service.watch_exits();
        service
    }

    /// Turns the shim's reaper notifications into task exits and exit events.
    fn watch_exits(&self) {
        let subscription = monitor_subscribe(Topic::Pid).expect("subscribe to process exits");
        let state = self.state.clone();
        let publisher = self.publisher.clone();
        std::thread::spawn(move || {
            for event in subscription.rx.iter() {
                let Subject::Pid(pid) = event.subject else { continue };
                let exit = Exit { code: event.exit_code as u32, at: timestamp().unwrap_or_default() };
                let mut tasks = state.lock().unwrap();
                let pid = pid as u32;
                if let Some((task, exec)) = tasks.exec_by_pid(pid) {
                    drop(tasks);
                    exec::exited(&publisher, &task, &exec, exit);
                    continue;
                }
                let Some(task) = tasks.by_id.values().find(|t| t.pid == pid).cloned() else {
                    if !tasks.discarded.remove(&pid) {
                        tasks.unclaimed.insert(pid, exit);
                    }
                    continue;
                };
                drop(tasks);
                info!(task = %task.id, pid, code = exit.code, "task exited");
                if task.ran_out_of_memory() {
                    // containerd's CRI reports OOMKilled for a task that had this event.
                    info!(task = %task.id, "task ran out of memory");
                    publisher.publish(TaskOOM { container_id: task.id.clone(), ..Default::default() });
                }
                task.exited(exit.clone());
                let event = TaskExit {
                    container_id: task.id.clone(),
                    id: task.id.clone(),
                    pid: task.pid,
                    exit_status: exit.code,
                    exited_at: MessageField::some(exit.at),
                    ..Default::default()
                };
                publisher.publish(event);
            }
        });
    }

    /// Marks a request in flight until the guard is dropped.
    fn busy(&self) -> InFlight<'_> {
        self.state.lock().unwrap().in_flight += 1;
        InFlight { state: &self.state, shutdown: &self.shutdown }
    }

    fn task(&self, id: &str) -> TtrpcResult<Arc<Task>> {
        self.state.lock().unwrap().by_id.get(id).cloned().ok_or_else(|| rpc_error(Code::NOT_FOUND, format!("task {id} not found")))
    }

    /// Everything Create does; on error, everything it made is undone.
    fn create_task(&self, req: &CreateTaskRequest) -> anyhow::Result<Arc<Task>> {
        use anyhow::Context as _;
        if req.terminal {
            anyhow::bail!("a terminal (tty) is not supported for wasm tasks");
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).context("read the OCI spec")?;
        if self.task(&req.id).is_ok() {
            anyhow::bail!("task {} already exists", req.id);
        }
        rootfs::mount(&bundle, &req.rootfs)?;
        let result = self.launch_in(&bundle, &rootfs::path_of(&spec, &bundle), &spec, req);
        if result.is_err() {
            rootfs::unmount(&bundle.join("rootfs"));
        }
        result
    }

    fn launch_in(&self, bundle: &Path, rootfs: &Path, spec: &Spec, req: &CreateTaskRequest) -> anyhow::Result<Arc<Task>> {
        let options = RuntimeOptions::from_request(req.options.as_ref())?;
        let cache = options.cache()?;
        let process = spec.process().as_ref().ok_or_else(|| anyhow::anyhow!("the OCI spec has no process"))?;
        let args = process.args().as_deref().unwrap_or_default();
        let resolved = workload::resolve(rootfs, args, process.env().as_deref().unwrap_or_default(), process.cwd().to_str().unwrap_or("/"));
        let workload = match resolved {
            // The rootfs of a wasm artifact is empty: its module is a layer.
            Err(err @ (EntryError::NotFound(_) | EntryError::NoArgs)) => self.artifact_entry(&req.id, args, &cache)?.ok_or(err)?,
            resolved => resolved?,
        };
        let io = IoPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let entry = match workload {
            Workload::Wasm(entry) => entry,
            Workload::Native => return self.create_native(bundle, spec, req, &options, io),
        };
        let cgroup_path = cgroup::path_of(spec)?;
        let id = req.id.clone();
        let launched = launch::launch(bundle, &entry, &cache, &io, |line| info!(task = %id, "{line}"));
        let launched = match launched {
            Ok(launched) => launched,
            Err((pid, err)) => {
                if let Some(pid) = pid {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    self.state.lock().unwrap().discard(pid);
                }
                if let Some(path) = &cgroup_path {
                    remove_cgroup_when_empty(path);
                }
                return Err(err);
            }
        };
        self.register(Task::wasm(req.id.clone(), bundle.to_path_buf(), io, cgroup_path, launched))
    }

    /// The wasm layer of the container's image, when the image is a wasm
    /// artifact: copied into the node cache, named by the command if it has
    /// several.
    fn artifact_entry(&self, container_id: &str, args: &[String], cache: &Cache) -> anyhow::Result<Option<Workload>> {
        let (name, export) = args.first().map(|arg0| workload::split_export(arg0)).map_or((None, "_start"), |(n, e)| (Some(n), e));
        let store = ContentStore::connect(&self.containerd_address, &self.namespace)?;
        let Some(layer) = store.wasm_layer(container_id, name)? else {
            return Ok(None);
        };
        let file = cache.layer(layer.hex(), |file| store.copy_layer(&layer, file))?;
        let module = ModuleSource::Layer { sha256: layer.hex().to_string(), image: layer.image, file };
        Ok(Some(Workload::Wasm(WasmEntry { module, export: export.to_string() })))
    }

    /// Hands a non-wasm container to runc with its full spec.
    fn create_native(&self, bundle: &Path, spec: &Spec, req: &CreateTaskRequest, options: &RuntimeOptions, io: IoPaths) -> anyhow::Result<Arc<Task>> {
        let state = self.state.clone();
        let forget: ForgetPid = Arc::new(move |pid| state.lock().unwrap().discard(pid));
        let runc = Arc::new(Runc::new(options, &self.namespace, forget));
        let pid = runc.create(&req.id, bundle, &io).inspect_err(|_| {
            // runc may have kept state for the half-made container.
            let _ = runc.delete(&req.id, bundle);
        })?;
        // runc owns this cgroup; the path is kept for Stats.
        let cgroup_path = cgroup::path_of(spec).ok().flatten();
        self.register(Task::native(req.id.clone(), bundle.to_path_buf(), io, cgroup_path, pid, runc))
    }

    fn register(&self, task: Task) -> anyhow::Result<Arc<Task>> {
        let task = Arc::new(task);
        let mut tasks = self.state.lock().unwrap();
        tasks.shutdown_requested = false;
        if let Some(exit) = tasks.unclaimed.remove(&task.pid) {
            task.exited(exit);
        }
        tasks.by_id.insert(task.id.clone(), task.clone());
        Ok(task)
    }

    /// Kills a task that never started, then removes its cgroup and rootfs.
    fn remove_task(&self, task: &Task) {
        if let Runtime::Native(runc) = &task.runtime {
            if let Err(err) = runc.delete(&task.id, &task.bundle) {
                warn!(task = %task.id, "{err:#}");
            }
        }
        if !task.is_stopped() {
            let _ = kill(Pid::from_raw(task.pid as i32), Signal::SIGKILL);
            if task.wait(Some(Duration::from_secs(10))).is_none() {
                warn!(task = %task.id, "instance process did not exit after SIGKILL");
            }
        }
        if let Some(path) = &task.cgroup {
            remove_cgroup_when_empty(path);
        }
        rootfs::unmount(&task.bundle.join("rootfs"));
        self.state.lock().unwrap().by_id.remove(&task.id);
    }
}

/// The State of a task's init process, or of one of its execs.
fn state_response(task: &Task, exec_id: Option<&str>, pid: u32, status: Status, io: &IoPaths, exit: Option<Exit>) -> StateResponse {
    StateResponse {
        id: exec_id.unwrap_or(&task.id).to_string(),
        bundle: task.bundle.display().to_string(),
        pid,
        status: status.into(),
        stdin: io.stdin.clone(),
        stdout: io.stdout.clone(),
        stderr: io.stderr.clone(),
        exit_status: exit.as_ref().map(|e| e.code).unwrap_or_default(),
        exited_at: exit.map(|e| e.at).into(),
        exec_id: exec_id.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

fn remove_cgroup_when_empty(path: &str) {
    if let Err(err) = cgroup::remove_when_empty(path) {
        warn!("{err:#}");
    }
}

impl TaskApi for Service {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        info!(task = %req.id, bundle = %req.bundle, "create");
        let _busy = self.busy();
        let created = self.create_task(&req);
        let task = created.map_err(|err| {
            warn!(task = %req.id, "create failed: {err:#}");
            rpc_error(Code::FAILED_PRECONDITION, format!("wasmlet: {err:#}"))
        })?;
        self.publisher.publish(TaskCreate {
            container_id: task.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: task.pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse { pid: task.pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let pid = self.exec_start(&task, &req.exec_id)?;
            return Ok(StartResponse { pid, ..Default::default() });
        }
        task.start().map_err(|e| rpc_error(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        info!(task = %task.id, pid = task.pid, "started");
        self.publisher.publish(TaskStart { container_id: task.id.clone(), pid: task.pid, ..Default::default() });
        Ok(StartResponse { pid: task.pid, ..Default::default() })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            return exec::kill(&*exec::find(&task, &req.exec_id)?, req.signal).map(|()| Empty::new());
        }
        if task.is_stopped() {
            return Err(rpc_error(Code::NOT_FOUND, format!("process {} already finished", task.pid)));
        }
        let signal = Signal::try_from(req.signal as i32).map_err(|_| rpc_error(Code::INVALID_ARGUMENT, format!("invalid signal {}", req.signal)))?;
        info!(task = %task.id, ?signal, "kill");
        match &task.runtime {
            Runtime::Wasm => kill(Pid::from_raw(task.pid as i32), signal).map_err(|e| rpc_error(Code::INTERNAL, format!("kill {}: {e}", task.pid)))?,
            Runtime::Native(runc) => runc
                .kill(&task.id, &task.bundle, signal as i32, req.all)
                .map_err(|e| rpc_error(Code::INTERNAL, format!("{e:#}")))?,
        }
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            return exec::delete(&task, &req.exec_id);
        }
        task.check_deletable().map_err(|e| rpc_error(Code::FAILED_PRECONDITION, e))?;
        self.remove_task(&task);
        let exit = task.wait(Some(Duration::ZERO)).unwrap_or(Exit { code: 137, at: timestamp().unwrap_or_default() });
        info!(task = %task.id, code = exit.code, "deleted");
        self.publisher.publish(TaskDelete {
            container_id: task.id.clone(),
            pid: task.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(DeleteResponse { pid: task.pid, exit_status: exit.code, exited_at: MessageField::some(exit.at), ..Default::default() })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let task = self.task(&req.id)?;
        let exit = match req.exec_id.as_str() {
            "" => task.wait(None).expect("an unbounded wait returns an exit"),
            exec_id => exec::find(&task, exec_id)?.wait(),
        };
        Ok(WaitResponse { exit_status: exit.code, exited_at: MessageField::some(exit.at), ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            return exec::state(&task, &req.exec_id);
        }
        let (status, exit) = task.status();
        Ok(state_response(&task, None, task.pid, status, &task.io, exit))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let task = self.task(&req.id)?;
        // A native container may have forked; a wasm task is its instance.
        let mut pids = match (&task.runtime, &task.cgroup) {
            (Runtime::Native(_), Some(path)) => cgroup::pids(path),
            _ => vec![],
        };
        if pids.is_empty() {
            pids.push(task.pid);
        }
        let processes = pids
            .into_iter()
            .map(|pid| containerd_shim::protos::types::task::ProcessInfo { pid, ..Default::default() })
            .collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let task = self.task(&req.id)?;
        let path = task.cgroup.as_deref().ok_or_else(|| rpc_error(Code::NOT_FOUND, format!("task {} has no cgroup", task.id)))?;
        let any = cgroup::metrics(path).map_err(|e| rpc_error(Code::INTERNAL, format!("{e:#}")))?;
        Ok(StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task = self.task(&req.id)?;
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid: task.pid, ..Default::default() })
    }

    /// The guest reads containerd's stdin FIFO directly, so it sees
    /// end-of-file as soon as containerd closes its side: nothing to do here.
    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.task(&req.id)?;
        Ok(Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let mut tasks = self.state.lock().unwrap();
        if tasks.by_id.is_empty() && tasks.in_flight == 0 {
            info!("last task gone: shim exits");
            self.shutdown.signal();
        } else if tasks.by_id.is_empty() {
            tasks.shutdown_requested = true;
        }
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let task = self.task(&req.id)?;
        self.exec_add(&task, &req).map(|()| Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> TtrpcResult<Empty> {
        Err(unsupported("pause"))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> TtrpcResult<Empty> {
        Err(unsupported("resume"))
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(unsupported("checkpoint"))
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, _req: ResizePtyRequest) -> TtrpcResult<Empty> {
        Err(unsupported("resize pty"))
    }

    fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        Err(unsupported("update of resources"))
    }
}
