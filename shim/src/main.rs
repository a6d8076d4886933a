//! containerd-shim-wasmlet-v1: a containerd shim v2 that runs WASI
//! workloads with wasmtime. See ARCHITECTURE.md for the map.

mod cache;
mod cgroup;
mod engine;
mod events;
mod exec;
mod handshake;
mod instance;
mod launch;
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
            println!("containerd-shim-wasmlet-v1 {}", env!("CARGO_PKG_VERSION"));
            println!("runtime {RUNTIME_ID}");
            println!("wasmtime {}", env!("WASMTIME_VERSION"));
        }
        _ => containerd_shim::run::<shim::WasmletShim>(RUNTIME_ID, None),
    }
}

/// glibc gives each thread that allocates an arena of its own; for a shim
/// and an instance, which allocate little, one arena saves memory per task.
fn limit_malloc_arenas() {
    // Safety: mallopt only sets an allocator tunable, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
