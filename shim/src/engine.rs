//! wasmtime: the engine, loading a module through the node cache, and running
//! one export with WASI preview 1, mapping the outcome to an exit code.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use wasmtime::{Engine, Linker, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
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

struct State {
    wasi: WasiP1Ctx,
    limits: MemoryCap,
}

/// The store's limits, remembering whether a growth was refused by them.
struct MemoryCap {
    limits: StoreLimits,
    reached: bool,
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

/// An instantiated module with its entry export, ready to run.
pub struct Prepared {
    store: Store<State>,
    /// A reactor's `_initialize`, run just before a non-`_start` export.
    init: Option<TypedFunc<(), ()>>,
    entry: TypedFunc<(), ()>,
}

pub fn new_engine() -> Result<Engine> {
    // Built without parallel compilation: compiling runs before privileges
    // are dropped, and capabilities are per thread, so no compiler thread
    // may outlive it.
    Ok(Engine::new(&wasmtime::Config::new())?)
}

/// Loads `wasm` (shown as `name` in errors) from the cache, compiling on a miss.
pub fn load(engine: &Engine, cache: &Cache, wasm: &[u8], name: &Path) -> Result<(Module, Outcome)> {
    let (artifact, outcome) = cache.artifact(engine, wasm, || {
        engine.precompile_module(wasm).map_err(|e| anyhow!("invalid wasm module {}: {e:#}", name.display()))
    })?;
    // Safety: the artifact was written by this engine and its checksum was
    // verified just now; the cache never rewrites an entry in place.
    let module = unsafe { Module::deserialize_file(engine, &artifact) }
        .map_err(anyhow::Error::from)
        .with_context(|| format!("load compiled {} from {}", name.display(), artifact.display()))?;
    Ok((module, outcome))
}

/// Instantiates `module` with WASI and finds `export`; every linking problem
/// surfaces here, before the task is reported as created.
pub fn prepare(engine: &Engine, module: &Module, name: &Path, export: &str, guest: &Guest) -> Result<Prepared> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(guest.args)
        .envs(&split_env(guest.env))
        .inherit_stdio()
        .allow_blocking_current_thread(true)
        .preopened_dir("/", "/", FsPerms::ReadWrite)
        .map_err(anyhow::Error::from)
        .context("preopen / for the guest")?;
    if guest.cwd != "/" && !guest.env.iter().any(|kv| kv.starts_with("PWD=")) {
        // WASI preview 1 has no working directory: the spec's is passed as
        // PWD for guests that look; wasi-libc itself starts at `/`.
        builder.env("PWD", guest.cwd);
    }
    let mut limits = StoreLimitsBuilder::new();
    if let Some(bytes) = guest.memory_limit {
        limits = limits.memory_size(bytes as usize);
    }
    let cap = MemoryCap { limits: limits.build(), reached: false };
    let mut store = Store::new(engine, State { wasi: builder.build_p1(), limits: cap });
    store.limiter(|s| &mut s.limits);

    let mut linker: Linker<State> = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)?;
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(|e| anyhow!("cannot satisfy the imports of {}: {e:#}", name.display()))?;
    // A reactor initialises itself before any other export is called; that
    // is guest code, so it runs in `run`, after privileges are dropped.
    let init = match export {
        "_start" => None,
        _ => instance.get_typed_func::<(), ()>(&mut store, "_initialize").ok(),
    };
    let func = instance
        .get_func(&mut store, export)
        .ok_or_else(|| anyhow!("export `{export}` not found in {}", name.display()))?;
    let entry = func
        .typed::<(), ()>(&store)
        .map_err(|_| anyhow!("export `{export}` of {} must take no parameters and return nothing", name.display()))?;
    Ok(Prepared { store, init, entry })
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
pub fn run(mut prepared: Prepared) -> Ended {
    // WASI's blocking calls (poll_oneoff, sockets) are driven by tokio. Left
    // alone, wasmtime-wasi starts a runtime with a worker per core; one
    // worker is plenty for one guest and keeps an idle instance small.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return failed(1, format!("start the I/O runtime: {err}"), false),
    };
    let _context = runtime.enter();
    let store = &mut prepared.store;
    let result = match prepared.init {
        Some(init) => init.call(&mut *store, ()).and_then(|()| prepared.entry.call(&mut *store, ())),
        None => prepared.entry.call(&mut *store, ()),
    };
    match result {
        Ok(()) => Ended { code: 0, error: None, out_of_memory: false },
        Err(err) => ended_by(&err, prepared.store.data().limits.reached),
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
    // Not eprintln!: a closed stderr must not turn a failure into a panic.
    let _ = writeln!(std::io::stderr(), "Error: {message}");
    Ended { code, error: Some(message), out_of_memory }
}

/// `K=V` strings as (K, V); an entry without `=` is a name with an empty value.
fn split_env(env: &[String]) -> Vec<(&str, &str)> {
    env.iter().map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), ""))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_wat(wat: &str, export: &str, memory_limit: Option<u64>) -> Result<i32> {
        let engine = new_engine()?;
        let module = Module::new(&engine, wat::parse_str(wat)?)?;
        let guest = Guest { args: &["m".into()], env: &[], cwd: "/", memory_limit };
        Ok(run(prepare(&engine, &module, Path::new("/m.wasm"), export, &guest)?).code)
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
    fn env_entries_split_on_first_equals() {
        let env = vec!["A=1".to_string(), "B=x=y".to_string(), "C".to_string()];
        assert_eq!(split_env(&env), vec![("A", "1"), ("B", "x=y"), ("C", "")]);
    }
}
