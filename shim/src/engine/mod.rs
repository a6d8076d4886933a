//! wasmtime: the engine, loading a program (a core module or a WASI 0.2
//! component) through the node cache, and running it, mapping the outcome
//! to an exit code.

mod component;
mod http;
mod module;

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::cache::{Cache, Outcome};

/// Exit code of a trapped module: 128 + SIGABRT, as for a native abort.
pub const TRAP_EXIT_CODE: i32 = 134;
/// Exit code of a guest that failed after reaching its memory limit:
/// 128 + SIGKILL, as if the kernel's OOM killer had ended it.
pub const OUT_OF_MEMORY_EXIT_CODE: i32 = 137;

/// What the guest is given: argv, environment, working directory, memory cap.
pub struct Guest<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub memory_limit: Option<u64>,
}

/// The store's limits, remembering whether a growth was refused by them.
pub(crate) struct MemoryCap {
    limits: StoreLimits,
    pub(crate) reached: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.reached |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

/// A compiled program: a core module, a command component, or a
/// component to serve as a wasi:http handler.
pub enum Program {
    Module(Module),
    Component(Component),
    Handler(http::Handler),
}

/// An instantiated program, ready to run.
pub enum Prepared {
    Module(module::Prepared),
    Component(component::Prepared),
    Http(http::Prepared),
}

/// What a wasm binary holds, which decides how it is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Module,
    Component,
}

impl Kind {
    /// From the preamble: `\0asm`, then version 0x0d and layer 1 for a
    /// component (a core module has version 1, layer 0).
    pub fn of(wasm: &[u8]) -> Kind {
        match wasm.get(4..8) {
            Some([0x0d, 0x00, 0x01, 0x00]) => Kind::Component,
            _ => Kind::Module,
        }
    }
}

fn new_engine(kind: Kind) -> Result<Engine> {
    Ok(Engine::new(&config(kind))?)
}

/// The settings compiled code depends on, for every engine of one kind.
fn config(kind: Kind) -> Config {
    // wasmtime is built without parallel compilation: compiling runs before
    // privileges are dropped, and capabilities are per thread, so no
    // compiler thread may outlive it.
    let mut config = Config::new();
    if kind == Kind::Component {
        // Checks in the code let an HTTP server cut a runaway request (only
        // components serve HTTP). Only the server advances the epoch: a
        // command component sets no deadline.
        config.epoch_interruption(true);
        // A component may be served over HTTP, from slots reset after every
        // request. With guard pages the reset changes page protections,
        // which in a multithreaded process stops every core to flush its
        // TLB, twice per request: explicit bounds checks cost far less
        // (about 1.5x the requests/s, measured with the JSON API). The
        // price: wasmtime then compiles no Spectre guard into those checks,
        // so a component's code could speculatively read past its memory,
        // within its own instance process (its own pod's data).
        config.signals_based_traps(false).memory_guard_size(0);
    }
    config
}

/// No epoch deadline: for guests that run to their end.
fn without_deadline<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(u64::MAX);
}

/// Loads the wasm of `kind` whose sha256 is `key` (shown as `name` in
/// errors) from the cache of its kind's engine; on a miss, `read` gives its
/// bytes to compile. A wasi:http handler is loaded for serving as the
/// guest's environment `env` configures it.
pub fn load(kind: Kind, cache: &Cache, key: &str, read: impl FnOnce() -> Result<Vec<u8>>, name: &str, env: &[String]) -> Result<(Program, Outcome)> {
    let engine = new_engine(kind)?;
    let (artifact, outcome) = cache.artifact(&engine, key, || {
        let wasm = read()?;
        let compiled = match kind {
            Kind::Component => engine.precompile_component(&wasm),
            Kind::Module => engine.precompile_module(&wasm),
        };
        compiled.map_err(|e| anyhow!("invalid wasm module {name}: {e:#}"))
    })?;
    let program = match kind {
        Kind::Component => {
            let component = deserialize(&artifact, name, |path| unsafe { Component::deserialize_file(&engine, path) })?;
            if http::exports_handler(&engine, &component) {
                // Its own engine, while the cache is still reachable.
                Program::Handler(http::Handler::load(&artifact, name, env)?)
            } else {
                Program::Component(component)
            }
        }
        Kind::Module => Program::Module(deserialize(&artifact, name, |path| unsafe { Module::deserialize_file(&engine, path) })?),
    };
    Ok((program, outcome))
}

/// Maps compiled code from the cache with `load`, which must be called only
/// on artifacts of `load`'s engine: the cache wrote them with this engine
/// and verified their checksum this boot, and never rewrites an entry in
/// place, which is what makes wasmtime's unsafe deserialize sound here.
fn deserialize<T>(artifact: &Path, name: &str, load: impl FnOnce(&Path) -> wasmtime::Result<T>) -> Result<T> {
    load(artifact).map_err(anyhow::Error::from).with_context(|| format!("load compiled {name} from {}", artifact.display()))
}

/// Instantiates the program with WASI; every linking problem surfaces here,
/// before the task is reported as created. A module runs `export`; a
/// component serves `wasi:http/incoming-handler` if it exports it, else
/// runs `wasi:cli/run`.
pub fn prepare(program: &Program, name: &str, export: &str, guest: &Guest) -> Result<Prepared> {
    match program {
        Program::Module(module) => Ok(Prepared::Module(module::prepare(module, name, export, guest)?)),
        Program::Component(_) | Program::Handler(_) if export != "_start" => {
            bail!("{name} is a component, which runs wasi:cli/run or serves wasi:http: `#{export}` is for core modules")
        }
        Program::Component(component) => Ok(Prepared::Component(component::prepare(component, name, guest)?)),
        Program::Handler(handler) => Ok(Prepared::Http(http::prepare(handler, name, guest)?)),
    }
}

/// The WASI context every guest gets: argv, env, stdio, `/`, the pod's network.
fn wasi_context(guest: &Guest) -> Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(guest.args)
        .envs(&split_env(guest.env))
        .inherit_stdio()
        // The guest's network is its pod's network namespace, nothing more.
        .inherit_network()
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true)
        .allow_blocking_current_thread(true)
        .preopened_dir("/", "/", FsPerms::ReadWrite)
        .map_err(anyhow::Error::from)
        .context("preopen / for the guest")?;
    if guest.cwd != "/" && !guest.env.iter().any(|kv| kv.starts_with("PWD=")) {
        // WASI has no working directory: the spec's is passed as PWD for
        // guests that look; wasi-libc itself starts at `/`.
        builder.env("PWD", guest.cwd);
    }
    Ok(builder)
}

/// The store limits of a guest: its memory cap, if any.
fn memory_cap(guest: &Guest) -> MemoryCap {
    let mut limits = StoreLimitsBuilder::new();
    if let Some(bytes) = guest.memory_limit {
        limits = limits.memory_size(bytes as usize);
    }
    MemoryCap { limits: limits.build(), reached: false }
}

/// How the guest ended: its exit code and, when it failed, why.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    pub code: i32,
    pub error: Option<String>,
    /// It failed after its memory limit refused to grow it.
    pub out_of_memory: bool,
}

/// Runs the entry export. A failure (trap, out of memory, host error) is
/// also printed on stderr, with the wasm backtrace.
pub fn run(prepared: Prepared) -> Ended {
    let (result, cap_reached) = match prepared {
        Prepared::Module(module) => with_io_runtime(|| module.run()),
        Prepared::Component(component) => with_io_runtime(|| component.run()),
        Prepared::Http(server) => (server.run().map_err(wasmtime::Error::from_anyhow), false),
    };
    match result {
        Ok(()) => Ended { code: 0, error: None, out_of_memory: false },
        Err(err) => ended_by(&err, cap_reached),
    }
}

/// Runs a guest to its end with a runtime for WASI's blocking calls
/// (poll_oneoff, sockets). Left alone, wasmtime-wasi starts a runtime with
/// a worker per core; one worker is plenty for one guest and keeps an idle
/// instance small.
fn with_io_runtime(run: impl FnOnce() -> (wasmtime::Result<()>, bool)) -> (wasmtime::Result<()>, bool) {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => {
            let _context = runtime.enter();
            run()
        }
        Err(err) => (Err(wasmtime::Error::msg(format!("start the I/O runtime: {err}"))), false),
    }
}

fn ended_by(err: &wasmtime::Error, cap_reached: bool) -> Ended {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Ended { code: exit.0, error: None, out_of_memory: false };
    }
    if cap_reached {
        return failed(OUT_OF_MEMORY_EXIT_CODE, format!("out of memory: the guest reached its memory limit\n{err:?}"), true);
    }
    let code = if err.downcast_ref::<wasmtime::Trap>().is_some() { TRAP_EXIT_CODE } else { 1 };
    failed(code, format!("{err:?}"), false)
}

fn failed(code: i32, message: String, out_of_memory: bool) -> Ended {
    report_error(&message);
    Ended { code, error: Some(message), out_of_memory }
}

/// `Error: message` on the guest's stderr. Not eprintln!: a closed stderr
/// must not turn a failure into a panic.
fn report_error(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "Error: {message}");
}

/// `K=V` strings as (K, V); an entry without `=` is a name with an empty value.
fn split_env(env: &[String]) -> Vec<(&str, &str)> {
    env.iter().map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), ""))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_wat(wat: &str, export: &str, memory_limit: Option<u64>) -> Result<i32> {
        let engine = new_engine(Kind::Module)?;
        let module = Program::Module(Module::new(&engine, wat::parse_str(wat)?)?);
        let guest = Guest { args: &["m".into()], env: &[], cwd: "/", memory_limit };
        Ok(run(prepare(&module, "/m.wasm", export, &guest)?).code)
    }

    const EXIT_42: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 42)))
        (func (export "other")))"#;

    #[test]
    fn proc_exit_code_is_the_exit_code() {
        assert_eq!(run_wat(EXIT_42, "_start", None).unwrap(), 42);
    }

    #[test]
    fn another_export_can_be_run() {
        assert_eq!(run_wat(EXIT_42, "other", None).unwrap(), 0);
    }

    #[test]
    fn trap_gives_trap_exit_code() {
        let wat = r#"(module (func (export "_start") unreachable))"#;
        assert_eq!(run_wat(wat, "_start", None).unwrap(), TRAP_EXIT_CODE);
    }

    #[test]
    fn missing_export_is_named() {
        let err = run_wat(EXIT_42, "nope", None).unwrap_err().to_string();
        assert_eq!(err, "export `nope` not found in /m.wasm");
    }

    #[test]
    fn unknown_import_is_named() {
        let wat = r#"(module (import "env" "missing_function" (func)) (func (export "_start")))"#;
        let err = run_wat(wat, "_start", None).unwrap_err().to_string();
        assert!(err.starts_with("cannot satisfy the imports of /m.wasm"), "{err}");
        assert!(err.contains("env::missing_function"), "{err}");
    }

    #[test]
    fn memory_limit_caps_linear_memory() {
        // Grows by 2 pages (128 KiB) beyond a 64 KiB cap: memory.grow fails (-1).
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.eq (memory.grow (i32.const 2)) (i32.const -1)))))"#;
        assert_eq!(run_wat(wat, "_start", Some(64 * 1024)).unwrap(), 1);
        assert_eq!(run_wat(wat, "_start", None).unwrap(), 0);
    }

    #[test]
    fn trap_after_reaching_the_memory_limit_is_out_of_memory() {
        let wat = r#"(module (memory (export "memory") 1)
            (func (export "_start") (if (i32.eq (memory.grow (i32.const 2)) (i32.const -1)) (then unreachable))))"#;
        assert_eq!(run_wat(wat, "_start", Some(64 * 1024)).unwrap(), OUT_OF_MEMORY_EXIT_CODE);
        assert_eq!(run_wat(wat, "_start", None).unwrap(), 0);
    }

    #[test]
    fn components_are_told_from_modules() {
        assert_eq!(Kind::of(b"\0asm\x0d\0\x01\0rest"), Kind::Component);
        assert_eq!(Kind::of(b"\0asm\x01\0\0\0rest"), Kind::Module);
        assert_eq!(Kind::of(b"\0asm"), Kind::Module);
    }

    #[test]
    fn env_entries_split_on_first_equals() {
        let env = vec!["A=1".to_string(), "B=x=y".to_string(), "C".to_string()];
        assert_eq!(split_env(&env), vec![("A", "1"), ("B", "x=y"), ("C", "")]);
    }
}
