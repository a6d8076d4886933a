//! The shim's life, as the containerd-shim crate drives it: `start` (spawn
//! or reuse the pod's daemon), `delete` (clean up after a daemon that
//! died), and the daemon's own start, logging and end.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::{timestamp, write_address};
use containerd_shim::{socket_address, spawn, Config, ExitSignal, Flags, StartOpts};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use tracing_subscriber::EnvFilter;

use super::events::Publisher;
use super::rootfs;
use super::runc::Runc;
use super::service::Service;
use super::task_record::TaskRecord;
use crate::shared::cgroup;

/// Containers carrying the same sandbox id share one shim (one per pod).
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// How long the ttrpc server may take to close once the daemon is done:
/// no task is left and the requests in flight were answered, so a
/// connection handler still running then is one that never returns (under
/// load, seen holding a daemon alive past RemovePodSandbox; its cause is not
/// found yet). Short, as a shim that outlives its pod is a leftover.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long events still queued at the end may wait for containerd.
const EVENTS_GRACE: Duration = Duration::from_secs(10);

pub struct WasmletShim {
    namespace: String,
    /// containerd's address and the task id, which name the daemon's socket.
    address: String,
    id: String,
    /// The daemon's socket (`unix://PATH`), removed when the daemon ends.
    socket: String,
    exit: Arc<ExitSignal>,
    /// Set once the daemon serves; flushed before it exits.
    publisher: OnceLock<Arc<Publisher>>,
}

impl containerd_shim::Shim for WasmletShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        config.no_setup_logger = true;
        if args.action.is_empty() {
            init_logging(args.debug);
        }
        WasmletShim {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            exit: Arc::default(),
            publisher: OnceLock::new(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = grouping_of(&opts.id);
        let (_pid, address) = spawn(opts, &grouping, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    /// Called by containerd in the bundle directory when the shim is gone:
    /// undo what Create made so that nothing is left behind.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        // Without a record Create never got as far as mounting: containerd's
        // default place is unmounted in case.
        let record = TaskRecord::read(&bundle).unwrap_or_else(|| TaskRecord::new(bundle.join("rootfs"), None, None));
        if let Some(runc) = &record.runc {
            if let Err(err) = Runc::of_record(runc).delete(&self.id, &bundle) {
                eprintln!("wasmlet: {err:#}");
            }
        }
        // The instance outlives its shim only for the moment its parent-death
        // signal takes: it is killed by pid, and through its cgroup.
        if let Some(instance) = record.instance.as_ref().filter(|instance| instance.is_alive()) {
            let _ = kill(Pid::from_raw(instance.pid as i32), Signal::SIGKILL);
        }
        if let Some(path) = &record.cgroup {
            cgroup::kill_all(path);
            let removed = match &record.scope {
                Some(scope) => scope.stop(),
                None => cgroup::remove_when_empty(path),
            };
            if let Err(err) = removed {
                eprintln!("wasmlet: {err:#}");
            }
        }
        rootfs::unmount(&record.rootfs);
        TaskRecord::remove(&bundle);
        remove_stale_socket(&socket_address(&self.address, &self.namespace, &grouping_of(&self.id)));
        Ok(DeleteResponse { exit_status: 137, exited_at: MessageField::some(timestamp()?), ..Default::default() })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The last events (TaskDelete) must reach containerd before we go.
        if let Some(publisher) = self.publisher.get() {
            if !publisher.flush(EVENTS_GRACE) {
                tracing::warn!("events not delivered {EVENTS_GRACE:?} after the last task: shim exits without them");
            }
        }
        // The crate removes the socket through the bundle's `address` file,
        // which containerd may already have deleted with the bundle.
        let path = self.socket.trim_start_matches("unix://");
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!("remove shim socket {path}: {err}");
        }
        // The ttrpc server then joins every connection's handler: one that
        // never returns must not keep a daemon with no tasks alive.
        std::thread::spawn(|| {
            std::thread::sleep(SHUTDOWN_GRACE);
            tracing::warn!("ttrpc server still open {SHUTDOWN_GRACE:?} after the last task: shim exits");
            std::process::exit(0);
        });
    }

    fn create_task_service(&self, _publisher: RemotePublisher) -> Service {
        // Our own publisher packs events without protobuf reflection.
        let publisher = Arc::new(Publisher::start(&self.namespace).expect("start the events thread"));
        let _ = self.publisher.set(publisher.clone());
        Service::new(self.namespace.clone(), self.address.clone(), publisher, self.exit.clone())
    }
}

/// The shim daemon serving a container: its pod's, or its own outside a pod.
/// Read from `config.json` in the working directory (the bundle): `start`
/// has nothing else to go by.
fn grouping_of(id: &str) -> String {
    Spec::load("config.json")
        .ok()
        .and_then(|spec| spec.annotations().as_ref().and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned()))
        .unwrap_or_else(|| id.to_string())
}

/// Removes a dead daemon's socket; one that still answers belongs to a live
/// daemon (another container of the pod) and stays.
fn remove_stale_socket(address: &str) {
    let path = address.trim_start_matches("unix://");
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// Logs go to the `log` FIFO containerd reads in the bundle directory (our
/// working directory); `-debug` or WASMLET_LOG raise the level.
fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("WASMLET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    // Opened without blocking so a missing reader cannot hang the shim,
    // then switched to blocking so no log line is dropped.
    let fifo = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(Path::new("log"));
    let _ = match fifo {
        Ok(file) => {
            let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
            let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags));
            builder.with_writer(std::sync::Mutex::new(file)).try_init()
        }
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
}
