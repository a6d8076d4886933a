//! containerd-shim-wasmlet-v1: a containerd shim v2 that runs WASI
//! workloads with wasmtime. One binary, two processes: the shim daemon
//! (`daemon/`) and, per wasm container, its instance (`instance/`); what
//! both use is in `shared/`. See ARCHITECTURE.md for the map.

mod daemon;
mod instance;
mod shared;

fn main() {
    shared::allocator::limit_arenas();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(shared::launch_plan::INSTANCE_COMMAND) => instance::main(),
        Some("--version") | Some("-v") => daemon::print_version(),
        _ => daemon::run(&args),
    }
}
