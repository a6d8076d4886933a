//! The containerd Task API (shim v2 over ttrpc): each request is mapped to
//! the service and its tasks, and their answers and refusals to ttrpc
//! responses, error codes and task events.

use containerd_shim::api::*;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskIO, TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::util::timestamp;
use containerd_shim::Task as TaskApi;
use tracing::{info, warn};

use super::process::{Exit, Process};
use super::service::Service;
use super::stats;
use super::stdio::IoPaths;
use super::task::{Task, TaskError};

type TtrpcResult<T> = ttrpc::Result<T>;

fn rpc_error(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

impl From<TaskError> for ttrpc::Error {
    fn from(err: TaskError) -> Self {
        let code = match &err {
            TaskError::Unsupported(_) | TaskError::WasmMemoryUpdate => Code::UNIMPLEMENTED,
            TaskError::ExecExists(_) => Code::ALREADY_EXISTS,
            TaskError::NoSuchTask(_) | TaskError::NoSuchExec { .. } | TaskError::Finished(_) | TaskError::NotRunning(_) => Code::NOT_FOUND,
            TaskError::InvalidSignal(_) => Code::INVALID_ARGUMENT,
            TaskError::StillRunning(_) | TaskError::Start(_) => Code::FAILED_PRECONDITION,
            TaskError::Failed(_) => Code::INTERNAL,
        };
        rpc_error(code, err)
    }
}

impl Service {
    /// Pause or Resume, and its event.
    fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let task = self.task(id)?;
        task.freeze(frozen)?;
        let container_id = task.id.clone();
        if frozen {
            info!(task = %task.id, "paused");
            self.publisher.publish(TaskPaused { container_id, ..Default::default() });
        } else {
            info!(task = %task.id, "resumed");
            self.publisher.publish(TaskResumed { container_id, ..Default::default() });
        }
        Ok(Empty::new())
    }
}

/// The State of a task's init process, or of one of its execs: a running
/// process of a paused task is PAUSED.
fn state_response(task: &Task, exec_id: &str, process: &Process) -> StateResponse {
    let (status, pid, exit) = process.status();
    let status = if status == Status::RUNNING && task.is_paused() { Status::PAUSED } else { status };
    StateResponse {
        id: process.id.clone(),
        bundle: task.bundle.display().to_string(),
        pid,
        status: status.into(),
        stdin: process.io.stdin.clone(),
        stdout: process.io.stdout.clone(),
        stderr: process.io.stderr.clone(),
        exit_status: exit.as_ref().map(|e| e.code).unwrap_or_default(),
        exited_at: exit.map(|e| e.at).into(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    }
}

impl TaskApi for Service {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        info!(task = %req.id, bundle = %req.bundle, "create");
        let _busy = self.busy();
        let task = Service::create(self, &req).map_err(|err| {
            warn!(task = %req.id, "create failed: {err:#}");
            rpc_error(Code::FAILED_PRECONDITION, format!("wasmlet: {err:#}"))
        })?;
        let pid = task.init.pid();
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
            pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let pid = Service::start_exec(self, &task, &req.exec_id)
                .inspect_err(|err| warn!(task = %task.id, exec = %req.exec_id, "exec start failed: {err}"))?
                .pid();
            info!(task = %task.id, exec = %req.exec_id, pid, "exec started");
            return Ok(StartResponse { pid, ..Default::default() });
        }
        let pid = Service::start(self, &task).inspect_err(|err| warn!(task = %task.id, "start failed: {err}"))?;
        info!(task = %task.id, pid, "started");
        Ok(StartResponse { pid, ..Default::default() })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        match req.exec_id.as_str() {
            "" => info!(task = %task.id, signal = req.signal, "kill"),
            exec => info!(task = %task.id, exec, signal = req.signal, "kill"),
        }
        task.kill(&req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let (_, pid, exit) = task.remove_exec(&req.exec_id)?.status();
            let exit = exit.unwrap_or(Exit { code: 0, at: Default::default() });
            return Ok(DeleteResponse { pid, exit_status: exit.code, exited_at: MessageField::some(exit.at), ..Default::default() });
        }
        task.check_deletable()?;
        self.remove(&task);
        let pid = task.init.pid();
        let exit = task.init.wait(Some(std::time::Duration::ZERO)).unwrap_or(Exit { code: 137, at: timestamp().unwrap_or_default() });
        info!(task = %task.id, code = exit.code, "deleted");
        self.publisher.publish(TaskDelete {
            container_id: task.id.clone(),
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(DeleteResponse { pid, exit_status: exit.code, exited_at: MessageField::some(exit.at), ..Default::default() })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let process = self.task(&req.id)?.process(&req.exec_id)?;
        let exit = process.wait(None).expect("an unbounded wait returns an exit");
        Ok(WaitResponse { exit_status: exit.code, exited_at: MessageField::some(exit.at), ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let task = self.task(&req.id)?;
        let process = task.process(&req.exec_id)?;
        Ok(state_response(&task, &req.exec_id, &process))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let task = self.task(&req.id)?;
        let processes = task.pids().into_iter().map(|pid| ProcessInfo { pid, ..Default::default() }).collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let task = self.task(&req.id)?;
        let path = task.cgroup.path.as_deref().ok_or_else(|| rpc_error(Code::NOT_FOUND, format!("task {} has no cgroup", task.id)))?;
        let any = stats::metrics(path).map_err(|e| rpc_error(Code::INTERNAL, format!("{e:#}")))?;
        Ok(StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task = self.task(&req.id)?;
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid: task.init.pid(), ..Default::default() })
    }

    /// A process reads containerd's stdin FIFO directly, or through its
    /// terminal's copy, so it sees end-of-file as soon as containerd closes
    /// its side: nothing to do here.
    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.task(&req.id)?;
        Ok(Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.shut_down();
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let task = self.task(&req.id)?;
        let io = IoPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let process = req.spec.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        task.add_exec(&req.exec_id, io, req.terminal, process)?;
        self.publisher.publish(TaskExecAdded { container_id: task.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() });
        Ok(Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, true)
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, false)
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        // For native containers too: runc's checkpoint (CRIU) is not wired up.
        Err(rpc_error(Code::UNIMPLEMENTED, "checkpoint is not supported by wasmlet, for wasm and native containers alike"))
    }

    /// Resizes a process's terminal; one without a terminal has nothing to
    /// resize, as with runc's shim.
    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let process = self.task(&req.id)?.process(&req.exec_id)?;
        if let Some(console) = process.console() {
            console.resize(req.width, req.height).map_err(|e| rpc_error(Code::INTERNAL, format!("{e:#}")))?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let task = self.task(&req.id)?;
        info!(task = %task.id, "update of resources");
        let resources = req.resources.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        task.update(resources)?;
        Ok(Empty::new())
    }
}
