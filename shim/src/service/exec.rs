//! The Task API calls for exec processes (requests with an exec id). Only a
//! native container has them: a wasm guest is one module, with nothing to
//! exec into.

use std::sync::Arc;

use containerd_shim::api::*;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::Code;
use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;
use tracing::info;

use super::{rpc_error, state_response, unsupported, Service, TtrpcResult};
use crate::events::Publisher;
use crate::exec::Exec;
use crate::stdio::IoPaths;
use crate::task::{Exit, Runtime, Task};

impl Service {
    pub(super) fn exec_add(&self, task: &Task, req: &ExecProcessRequest) -> TtrpcResult<()> {
        if !matches!(task.runtime, Runtime::Native(_)) {
            return Err(unsupported("exec"));
        }
        if req.terminal {
            return Err(rpc_error(Code::UNIMPLEMENTED, "a terminal (tty) for exec is not supported yet"));
        }
        let mut execs = task.execs.lock().unwrap();
        if execs.contains_key(&req.exec_id) {
            return Err(rpc_error(Code::ALREADY_EXISTS, format!("exec {} already exists", req.exec_id)));
        }
        let io = IoPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let process = req.spec.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        let exec = Exec::new(&task.bundle, &req.exec_id, io, process).map_err(|e| rpc_error(Code::INTERNAL, format!("{e:#}")))?;
        execs.insert(req.exec_id.clone(), Arc::new(exec));
        drop(execs);
        self.publisher.publish(TaskExecAdded { container_id: task.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() });
        Ok(())
    }

    pub(super) fn exec_start(&self, task: &Task, exec_id: &str) -> TtrpcResult<u32> {
        let Runtime::Native(runc) = &task.runtime else { return Err(unsupported("exec")) };
        let exec = find(task, exec_id)?;
        let pid = exec.start(runc, &task.id, &task.bundle).map_err(|e| rpc_error(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        // A quick process may already be reaped, its exit parked as unclaimed.
        let early_exit = {
            let mut tasks = self.state.lock().unwrap();
            exec.set_pid(pid);
            tasks.unclaimed.remove(&pid)
        };
        info!(task = %task.id, exec = exec_id, pid, "exec started");
        self.publisher.publish(TaskExecStarted { container_id: task.id.clone(), exec_id: exec_id.to_string(), pid, ..Default::default() });
        if let Some(exit) = early_exit {
            exited(&self.publisher, task, &exec, exit);
        }
        Ok(pid)
    }
}

pub(super) fn find(task: &Task, exec_id: &str) -> TtrpcResult<Arc<Exec>> {
    task.exec(exec_id).ok_or_else(|| rpc_error(Code::NOT_FOUND, format!("exec {exec_id} of task {} not found", task.id)))
}

/// Records an exec's exit and tells containerd.
pub(super) fn exited(publisher: &Publisher, task: &Task, exec: &Exec, exit: Exit) {
    info!(task = %task.id, exec = %exec.id, code = exit.code, "exec exited");
    exec.exited(exit.clone());
    publisher.publish(TaskExit {
        container_id: task.id.clone(),
        id: exec.id.clone(),
        pid: exec.pid().unwrap_or_default(),
        exit_status: exit.code,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    });
}

pub(super) fn kill(exec: &Exec, signal: u32) -> TtrpcResult<()> {
    let (status, pid, _) = exec.status();
    if status != Status::RUNNING {
        return Err(rpc_error(Code::NOT_FOUND, format!("exec {} is not running", exec.id)));
    }
    let signal = Signal::try_from(signal as i32).map_err(|_| rpc_error(Code::INVALID_ARGUMENT, format!("invalid signal {signal}")))?;
    send_signal(Pid::from_raw(pid as i32), signal).map_err(|e| rpc_error(Code::INTERNAL, format!("kill {pid}: {e}")))
}

pub(super) fn delete(task: &Task, exec_id: &str) -> TtrpcResult<DeleteResponse> {
    let exec = find(task, exec_id)?;
    let (status, pid, exit) = exec.status();
    if status == Status::RUNNING {
        return Err(rpc_error(Code::FAILED_PRECONDITION, format!("exec {exec_id} is still running")));
    }
    task.execs.lock().unwrap().remove(exec_id);
    exec.remove_files(&task.bundle);
    let exit = exit.unwrap_or(Exit { code: 0, at: Default::default() });
    Ok(DeleteResponse { pid, exit_status: exit.code, exited_at: MessageField::some(exit.at), ..Default::default() })
}

pub(super) fn state(task: &Task, exec_id: &str) -> TtrpcResult<StateResponse> {
    let exec = find(task, exec_id)?;
    let (status, pid, exit) = exec.status();
    Ok(state_response(task, Some(exec_id), pid, status, &exec.io, exit))
}
