//! The shim daemon, and the short-lived `start`/`delete` commands that
//! containerd runs: everything the shim process does itself. It serves the
//! Task API, runs native containers with runc, decides each wasm
//! container's launch plan at Create and starts its instance, and reports
//! every exit to containerd. It never runs guest code.

mod console;
mod content_store;
mod create;
mod entrypoint;
mod events;
mod exec;
mod exits;
mod launch;
mod lifecycle;
mod oom_watch;
mod planning;
mod process;
mod rootfs;
mod runc;
mod runtime_options;
mod service;
mod stats;
mod stdio;
mod systemd_scope;
mod task;
mod task_api;
mod task_record;

/// The runtime type containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.wasmlet.v1";

/// Runs the shim command containerd gave (`start`, `delete`, or none: the daemon).
pub fn run(args: &[String]) {
    // `start` spawns (or finds) the daemon and returns; it must not reap.
    // Its spawned daemon may exit at once (the pod's daemon already runs),
    // and a SIGCHLD caught while the crate tears its signal handling down
    // loops forever on SIGPIPE (seen as a `start` spinning until containerd
    // kills it).
    let start = args.last().is_some_and(|action| action == "start");
    let config = containerd_shim::Config { no_reaper: start, ..Default::default() };
    containerd_shim::run::<lifecycle::WasmletShim>(RUNTIME_ID, Some(config));
}

pub fn print_version() {
    println!("containerd-shim-wasmlet-v1 {} (commit {})", env!("CARGO_PKG_VERSION"), env!("WASMLET_COMMIT"));
    println!("runtime {RUNTIME_ID}");
    println!("wasmtime {}", env!("WASMTIME_VERSION"));
}
