//! Create: the one decision about a container. Its rootfs is mounted and
//! its entrypoint found (in the rootfs, or as a wasm layer of its image); a
//! native one goes to runc with its full spec, a wasm one gets its launch
//! plan and an instance process. Whatever fails is undone.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cgroups_rs::fs::hierarchies;
use containerd_shim::api::CreateTaskRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use tracing::{info, warn};

use super::console::{Console, ConsoleSocket};
use super::content_store::ContentStore;
use super::entrypoint::{self, EntryError, Entrypoint, Found};
use super::exits::Exits;
use super::runc::Runc;
use super::runtime_options::RuntimeOptions;
use super::stdio::IoPaths;
use super::task::{Task, TaskCgroup};
use super::task_record::{ProcessRecord, TaskRecord};
use super::{launch, planning, rootfs};
use crate::shared::launch_plan::ProgramSource;
use crate::shared::node_cache::NodeCache;

/// What Create needs of the daemon.
pub struct Creator {
    pub namespace: String,
    /// containerd's API socket, where wasm artifacts' images are read.
    pub containerd_address: String,
    pub exits: Arc<Exits>,
}

/// The container as Create sees it.
struct Container<'a> {
    req: &'a CreateTaskRequest,
    bundle: &'a Path,
    spec: &'a Spec,
    rootfs: &'a Path,
    io: IoPaths,
    /// What is made so far, for `shim delete` should the daemon die.
    record: TaskRecord,
}

impl Creator {
    /// Makes the task of `req`, not yet registered anywhere.
    pub fn create(&self, req: &CreateTaskRequest) -> Result<Task> {
        let bundle = Path::new(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).context("read the OCI spec")?;
        let rootfs = planning::rootfs_dir(&spec, bundle);
        let cgroup = planning::cgroup_of(&spec).ok().flatten();
        let (cgroup, scope) = (cgroup.as_ref().map(|c| c.path.clone()), cgroup.and_then(|c| c.scope));
        let record = TaskRecord::new(rootfs.clone(), cgroup, scope);
        record.write(bundle)?;
        rootfs::mount(&rootfs, &req.rootfs)?;
        let io = IoPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let created = self.create_in(&Container { req, bundle, spec: &spec, rootfs: &rootfs, io, record });
        if created.is_err() {
            rootfs::unmount(&rootfs);
            TaskRecord::remove(bundle);
        }
        created
    }

    fn create_in(&self, c: &Container) -> Result<Task> {
        let options = RuntimeOptions::from_request(c.req.options.as_ref())?;
        let cache = options.cache()?;
        let process = c.spec.process().as_ref().context("the OCI spec has no process")?;
        let args = process.args().as_deref().unwrap_or_default();
        let entry = Entrypoint::of(args);
        let found = match entry {
            Some(entry) => {
                entrypoint::resolve(c.rootfs, entry.name, process.env().as_deref().unwrap_or_default(), process.cwd().to_str().unwrap_or("/"))
            }
            None => Err(EntryError::NoArgs),
        };
        let program = match found {
            Ok(Found::Native) => return self.create_native(c, &options),
            Ok(Found::Wasm(path)) => ProgramSource::Rootfs { path },
            // The rootfs of a wasm artifact is empty: its module is a layer.
            Err(err @ (EntryError::NotFound(_) | EntryError::NoArgs)) => self.artifact_layer(&c.req.id, entry, &cache)?.ok_or(err)?,
            Err(err) => return Err(err.into()),
        };
        if c.req.terminal {
            bail!("a terminal (tty) is not supported for wasm containers");
        }
        let plan = planning::launch_plan(c.spec, c.rootfs, program, entry.unwrap_or_default(), cache)?;
        let id = &c.req.id;
        let cgroup = plan.cgroup.as_ref().map(|group| group.path.clone());
        let scope = planning::cgroup_of(c.spec)?.and_then(|location| location.scope);
        let resources = plan.cgroup.as_ref().and_then(|group| group.resources.as_ref());
        // With the systemd driver the instance waits for its plan in its scope.
        let place = |pid| match &scope {
            Some(scope) => scope.start(pid, resources, hierarchies::is_cgroup2_unified_mode()),
            None => Ok(()),
        };
        match launch::launch(c.bundle, &plan, &c.io, &self.exits, place, |line| info!(task = %id, "{line}")) {
            Ok(launched) => {
                let record = TaskRecord { instance: ProcessRecord::of(launched.pid), ..c.record.clone() };
                if let Err(err) = record.write(c.bundle) {
                    warn!(task = %id, "{err:#}");
                }
                let task_cgroup = TaskCgroup { path: cgroup, scope };
                Ok(Task::wasm(id.clone(), c.bundle.to_path_buf(), c.rootfs.to_path_buf(), c.io.clone(), task_cgroup, launched))
            }
            Err((pid, err)) => {
                if let Some(pid) = pid {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    self.exits.discard(pid);
                }
                TaskCgroup { path: cgroup, scope }.remove();
                Err(err)
            }
        }
    }

    /// The wasm layer of the container's image, when the image is a wasm
    /// artifact: copied into the node cache, named by the command if it has
    /// several.
    fn artifact_layer(&self, container_id: &str, entry: Option<Entrypoint>, cache: &NodeCache) -> Result<Option<ProgramSource>> {
        let store = ContentStore::connect(&self.containerd_address, &self.namespace)?;
        let Some(layer) = store.wasm_layer(container_id, entry.map(|e| e.name))? else {
            return Ok(None);
        };
        cache.open()?.layer(layer.hex(), |file| store.copy_layer(&layer, file))?;
        Ok(Some(ProgramSource::Layer { sha256: layer.hex().to_string(), image: layer.image }))
    }

    /// Hands a non-wasm container to runc with its full spec.
    fn create_native(&self, c: &Container, options: &RuntimeOptions) -> Result<Task> {
        let runc = Arc::new(Runc::new(options, &self.namespace, self.exits.clone()));
        let id = &c.req.id;
        TaskRecord { runc: Some(runc.record()), ..c.record.clone() }.write(c.bundle)?;
        let socket = c.req.terminal.then(ConsoleSocket::new).transpose()?;
        let created = runc.create(id, c.bundle, &c.io, socket.as_ref().map(|s| s.path()).as_deref()).and_then(|pid| {
            let console = socket.map(|socket| Console::attach(socket.receive()?, &c.io)).transpose()?;
            Ok((pid, console))
        });
        // runc may have kept state for the half-made container.
        let (pid, console) = created.inspect_err(|_| {
            let _ = runc.delete(id, c.bundle);
        })?;
        // runc owns this cgroup (and its scope); the path is kept for Stats.
        let cgroup = TaskCgroup { path: planning::cgroup_of(c.spec).ok().flatten().map(|c| c.path), scope: None };
        let task = Task::native(id.clone(), c.bundle.to_path_buf(), c.rootfs.to_path_buf(), c.io.clone(), cgroup, pid, runc);
        if let Some(console) = console {
            task.init.set_console(console);
        }
        Ok(task)
    }
}
