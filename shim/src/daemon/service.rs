//! The shim daemon's state: its tasks, the requests in flight (Shutdown
//! never ends the daemon before they are answered), and what an exit means
//! for a task (it is recorded, then containerd hears of it).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::events::task::{TaskExecStarted, TaskExit, TaskOOM, TaskStart};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::ExitSignal;
use tracing::{info, warn};

use super::create::Creator;
use super::events::Publisher;
use super::exits::{Exits, Window};
use super::oom_watch::OomWatch;
use super::process::{Exit, Process};
use super::task::{Task, TaskError};

/// How long an exit waits for containerd to take the /tasks/oom before it.
const OOM_DELIVERY: Duration = Duration::from_secs(2);

pub struct Service {
    pub publisher: Arc<Publisher>,
    creator: Creator,
    exits: Arc<Exits>,
    /// None if it could not start: OOM kills are then seen only at the exit.
    oom_watch: Option<OomWatch>,
    table: Mutex<Table>,
    shutdown: Arc<ExitSignal>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Task>>,
    /// Requests in flight (Create, Start, Kill, Delete).
    in_flight: usize,
    /// Shutdown came while requests were in flight: the last one ends the daemon.
    shutdown_requested: bool,
}

/// A request in flight, until dropped.
pub struct InFlight<'a> {
    service: &'a Service,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut table = self.service.table.lock().unwrap();
        table.in_flight -= 1;
        if table.shutdown_requested && table.in_flight == 0 && table.by_id.is_empty() {
            info!("last request answered: shim exits");
            self.service.shutdown.signal();
        }
    }
}

impl Service {
    pub fn new(namespace: String, containerd_address: String, publisher: Arc<Publisher>, shutdown: Arc<ExitSignal>) -> Self {
        let exits = Arc::new(Exits::default());
        exits.watch_reaper().expect("subscribe to process exits");
        let creator = Creator { namespace, containerd_address, exits: exits.clone() };
        let oom_watch = OomWatch::start(cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode())
            .inspect_err(|err| warn!("{err:#}: OOM kills are seen only when a task exits"))
            .ok();
        Service { publisher, creator, exits, oom_watch, table: Mutex::default(), shutdown }
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn busy(&self) -> InFlight<'_> {
        self.table.lock().unwrap().in_flight += 1;
        InFlight { service: self }
    }

    pub fn task(&self, id: &str) -> Result<Arc<Task>, TaskError> {
        self.table.lock().unwrap().by_id.get(id).cloned().ok_or_else(|| TaskError::NoSuchTask(id.to_string()))
    }

    /// Creates the task and watches its init for its exit.
    pub fn create(&self, req: &CreateTaskRequest) -> anyhow::Result<Arc<Task>> {
        if self.task(&req.id).is_ok() {
            anyhow::bail!("task {} already exists", req.id);
        }
        // The init may exit before it is watched below.
        let window = self.exits.window();
        let task = Arc::new(self.creator.create(req)?);
        let mut table = self.table.lock().unwrap();
        table.shutdown_requested = false;
        table.by_id.insert(task.id.clone(), task.clone());
        drop(table);
        self.watch(&window, &task, &task.init);
        self.watch_oom(&task);
        Ok(task)
    }

    /// Tells containerd of the task's first OOM kill as it happens.
    fn watch_oom(&self, task: &Arc<Task>) {
        let (Some(oom_watch), Some(path)) = (&self.oom_watch, &task.cgroup.path) else { return };
        let (publisher, weak) = (self.publisher.clone(), Arc::downgrade(task));
        let on_kill = Box::new(move || {
            if let Some(task) = weak.upgrade() {
                tell_oom(&publisher, &task);
            }
        });
        match oom_watch.watch(path, on_kill) {
            Ok(id) => *task.oom_watch.lock().unwrap() = Some(id),
            Err(err) => warn!(task = %task.id, "{err:#}: its OOM kills are seen only when it exits"),
        }
    }

    /// Lets the task's init run; containerd hears TaskStart before any exit.
    pub fn start(&self, task: &Task) -> Result<u32, TaskError> {
        task.start(|pid| self.publisher.publish(TaskStart { container_id: task.id.clone(), pid, ..Default::default() }))
    }

    /// Runs an exec and watches it; TaskExecStarted comes before its exit.
    pub fn start_exec(&self, task: &Arc<Task>, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        let window = self.exits.window();
        let announce = |pid| {
            let event = TaskExecStarted { container_id: task.id.clone(), exec_id: exec_id.to_string(), pid, ..Default::default() };
            self.publisher.publish(event)
        };
        let process = task.start_exec(exec_id, announce)?;
        self.watch(&window, task, &process);
        Ok(process)
    }

    /// Records `process`'s exit when it comes and tells containerd, after
    /// any Start in progress has told it of the start. A task that ran out
    /// of memory gets /tasks/oom first, delivered before its Wait returns:
    /// CRI learns of the exit from Wait and says OOMKilled only if it knew.
    fn watch(&self, window: &Window, task: &Arc<Task>, process: &Arc<Process>) {
        let (publisher, task, process) = (self.publisher.clone(), task.clone(), process.clone());
        let pid = process.pid();
        window.watch(pid, Box::new(move |exit: Exit| {
            process.wait_for_start();
            if Arc::ptr_eq(&process, &task.init) {
                info!(task = %task.id, pid, code = exit.code, "task exited");
                if task.ran_out_of_memory() {
                    tell_oom(&publisher, &task);
                }
                if task.oom_told.load(Ordering::SeqCst) {
                    if !publisher.flush(OOM_DELIVERY) {
                        warn!(task = %task.id, "containerd has not taken /tasks/oom after {OOM_DELIVERY:?}: the exit goes first");
                    }
                }
            } else {
                info!(task = %task.id, exec = %process.id, code = exit.code, "exec exited");
            }
            if let Some(console) = process.console() {
                console.drain();
            }
            process.exited(exit.clone());
            publisher.publish(TaskExit {
                container_id: task.id.clone(),
                id: process.id.clone(),
                pid,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }));
    }

    /// Cleans up after the task and forgets it.
    pub fn remove(&self, task: &Task) {
        if let (Some(oom_watch), Some(id)) = (&self.oom_watch, task.oom_watch.lock().unwrap().take()) {
            oom_watch.unwatch(id);
        }
        task.clean_up();
        self.table.lock().unwrap().by_id.remove(&task.id);
    }

    /// Ends the daemon once no task is left and no request is in flight.
    pub fn shut_down(&self) {
        let mut table = self.table.lock().unwrap();
        if table.by_id.is_empty() && table.in_flight == 0 {
            info!("last task gone: shim exits");
            self.shutdown.signal();
        } else if table.by_id.is_empty() {
            table.shutdown_requested = true;
        }
    }
}

/// Publishes /tasks/oom for the task, once: its cgroup's watch and its exit
/// may both see the kill.
fn tell_oom(publisher: &Publisher, task: &Task) {
    if !task.oom_told.swap(true, Ordering::SeqCst) {
        info!(task = %task.id, "task ran out of memory");
        publisher.publish(TaskOOM { container_id: task.id.clone(), ..Default::default() });
    }
}
