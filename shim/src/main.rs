//! containerd-shim-wasmlet-v1: a containerd shim v2 that runs WASI
//! workloads with wasmtime. One binary, three processes: the shim daemon
//! (`daemon/`), per wasm container its instance (`instance/`), and per
//! cache miss the unprivileged compiler (`compiler/`); what more than one
//! of them uses is in `shared/`. See ARCHITECTURE.md for the map.

mod compiler;
mod daemon;
mod instance;
mod shared;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The compiler keeps glibc's arena per thread (builds for glibc; musl
    // has none): it lives for one compile, whose threads all allocate at
    // once, and one arena made Yosys's compile a third slower.
    if args.get(1).map(String::as_str) == Some(shared::compile_protocol::COMPILE_COMMAND) {
        compiler::main(&args[2..]);
    }
    shared::allocator::limit_arenas();
    match args.get(1).map(String::as_str) {
        Some(shared::launch_plan::INSTANCE_COMMAND) => instance::main(),
        Some("--version") | Some("-v") => daemon::print_version(),
        _ => daemon::run(&args),
    }
}
