//! containerd-shim-wasmlet-v1: a containerd shim v2 that runs WASI
//! workloads with wasmtime. See ARCHITECTURE.md for the map.

mod cache;
mod cgroup;
mod digests;
mod engine;
mod events;
mod exec;
mod handshake;
mod image;
mod instance;
mod launch;
mod options;
mod rootfs;
mod runc;
mod service;
mod shim;
mod stdio;
mod task;
mod workload;

/// The runtime type containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.wasmlet.v1";

fn main() {
    limit_malloc_arenas();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("instance") => instance::main(&args[2..]),
        Some("--version") | Some("-v") => {
            println!("containerd-shim-wasmlet-v1 {} (commit {})", env!("CARGO_PKG_VERSION"), env!("WASMLET_COMMIT"));
            println!("runtime {RUNTIME_ID}");
            println!("wasmtime {}", env!("WASMTIME_VERSION"));
        }
        _ => containerd_shim::run::<shim::WasmletShim>(RUNTIME_ID, Some(config_for(&args))),
    }
}

/// `start` spawns (or finds) the daemon and returns; it must not reap. Its
/// spawned daemon may exit at once (the pod's daemon already runs), and a
/// SIGCHLD caught while the crate tears its signal handling down loops
/// forever on SIGPIPE (seen as a `start` spinning until containerd kills it).
fn config_for(args: &[String]) -> containerd_shim::Config {
    let start = args.last().is_some_and(|action| action == "start");
    containerd_shim::Config { no_reaper: start, ..Default::default() }
}

/// glibc gives each thread that allocates an arena of its own; for a shim
/// and an instance, which allocate little, one arena saves memory per task.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // Safety: mallopt only sets an allocator tunable, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// musl's allocator has no per-thread arenas.
#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}
