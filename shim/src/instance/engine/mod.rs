//! wasmtime: the engine, loading a program (a core module or a WASI 0.2
//! component) through the node cache, and running it, mapping the outcome
//! to an exit code.

mod component;
mod guest;
mod http;
mod module;

use anyhow::{bail, Result};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};
use wasmtime_wasi::I32Exit;

use super::compile;
use super::compiled_code::{self, Outcome, Verified};
use super::own_proc::OwnProc;
use crate::shared::node_cache::NodeCache;
use guest::report_error;
pub use guest::Guest;
pub use crate::shared::engine_config::Kind;
use crate::shared::engine_config::new_engine;

/// Exit code of a trapped module: 128 + SIGABRT, as for a native abort.
pub const TRAP_EXIT_CODE: i32 = 134;
/// Exit code of a guest that failed after reaching its memory limit:
/// 128 + SIGKILL, as if the kernel's OOM killer had ended it.
pub const OUT_OF_MEMORY_EXIT_CODE: i32 = 137;

/// A compiled program: a core module, a command component, or a
/// component to serve as a wasi:http handler.
pub enum Program {
    Module(Module),
    Component(Component),
    Handler(http::Handler),
}

/// An instantiated program, ready to run.
pub enum ReadyGuest {
    Module(module::ReadyModule),
    Command(component::ReadyCommand),
    Server(http::ReadyServer),
}

/// A program's compiled code, found in the node cache or compiled into it,
/// open but not mapped.
pub struct Compiled {
    kind: Kind,
    engine: Engine,
    verified: Verified,
}

/// Finds the compiled code of the wasm of `kind` whose sha256 is `key`
/// (shown as `name` in errors) in the cache of its kind's engine; on a
/// miss, `read` gives its bytes to the compiler process. Runs while the
/// instance is still outside the pod: the compiler is no process the pod
/// can see.
pub fn fetch(kind: Kind, cache: &NodeCache, key: &str, read: impl FnOnce() -> Result<Vec<u8>>, name: &str) -> Result<(Compiled, Outcome)> {
    let engine = new_engine(kind)?;
    let (verified, outcome) = compiled_code::lookup(cache, &engine, key, || compile::compile(kind, &read()?, name))?;
    Ok((Compiled { kind, engine, verified }, outcome))
}

/// A component may turn out to be a wasi:http handler, served by a pool
/// of its own, which is made while the host's /proc is there (see
/// `http::Pool`); or the guest's environment's error about its settings.
pub type ServingPool = Option<Result<http::Pool>>;

impl Compiled {
    pub fn serving_pool(&self, env: &[String]) -> ServingPool {
        (self.kind == Kind::Component).then(|| http::Pool::new(env))
    }

    /// Maps the compiled code, once every privilege is gone (it is refused
    /// before: see compiled_code). A component that exports the wasi:http
    /// handler is mapped again into its serving pool.
    pub fn load(self, pool: ServingPool, name: &str, proc: &OwnProc) -> Result<Program> {
        let Compiled { kind, engine, verified } = self;
        Ok(match (kind, pool) {
            (Kind::Component, Some(pool)) => {
                let component = verified.component(&engine, name, proc)?;
                if http::exports_handler(&engine, &component) {
                    Program::Handler(http::Handler::load(pool?, &verified, name, proc)?)
                } else {
                    Program::Component(component)
                }
            }
            _ => Program::Module(verified.module(&engine, name, proc)?),
        })
    }
}

/// Instantiates the program with WASI; every linking problem surfaces here,
/// before the task is reported as created. A module runs `export`; a
/// component serves `wasi:http/incoming-handler` if it exports it, else
/// runs `wasi:cli/run`.
pub fn prepare(program: &Program, name: &str, export: &str, guest: &Guest) -> Result<ReadyGuest> {
    match program {
        Program::Module(module) => Ok(ReadyGuest::Module(module::prepare(module, name, export, guest)?)),
        Program::Component(_) | Program::Handler(_) if export != "_start" => {
            bail!("{name} is a component, which runs wasi:cli/run or serves wasi:http: `#{export}` is for core modules")
        }
        Program::Component(component) => Ok(ReadyGuest::Command(component::prepare(component, name, guest)?)),
        Program::Handler(handler) => Ok(ReadyGuest::Server(http::prepare(handler, name, guest)?)),
    }
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
pub fn run(ready: ReadyGuest) -> Ended {
    let (result, cap_reached) = match ready {
        ReadyGuest::Module(module) => with_io_runtime(|| module.run()),
        ReadyGuest::Command(command) => with_io_runtime(|| command.run()),
        ReadyGuest::Server(server) => (server.run().map_err(wasmtime::Error::from_anyhow), false),
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
    fn start_functions_run_at_run_not_at_prepare() {
        // Had prepare instantiated the module, its proc_exit would fail it.
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func $start (call $exit (i32.const 7)))
            (start $start)
            (func (export "_start")))"#;
        assert_eq!(run_wat(wat, "_start", None).unwrap(), 7);
    }

    #[test]
    fn the_memory_cap_covers_every_memory_of_the_module() {
        let wat = r#"(module (memory 2) (memory 2) (func (export "_start")))"#;
        assert_eq!(run_wat(wat, "_start", Some(3 << 16)).unwrap(), OUT_OF_MEMORY_EXIT_CODE);
        assert_eq!(run_wat(wat, "_start", Some(4 << 16)).unwrap(), 0);
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
    fn webassembly_3_features_run() {
        // Exits with the number of features that gave a wrong answer.
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory $small (export "memory") 1)
            (memory $wide i64 1)
            (global $answer i32 (i32.add (i32.const 40) (i32.const 2)))
            (type $pair (struct (field i32) (field i32)))
            (type $unary (func (param i32) (result i32)))
            (tag $oops (param i32))
            (func $count_down (param $n i32) (result i32)
                (if (result i32) (i32.eqz (local.get $n))
                    (then (i32.const 0))
                    (else (return_call $count_down (i32.sub (local.get $n) (i32.const 1))))))
            (func $double (type $unary) (i32.mul (local.get 0) (i32.const 2)))
            (elem declare func $double)
            (func $caught (result i32)
                (block $handler (result i32)
                    (try_table (catch $oops $handler) (throw $oops (i32.const 7)))
                    (i32.const -1)))
            (func (export "_start")
                (i32.store $wide (i64.const 8) (i32.const 5))
                (call $exit
                    (i32.add (i32.add (i32.add
                        (i32.ne (call $count_down (i32.const 1000000)) (i32.const 0))
                        (i32.ne (call $caught) (i32.const 7)))
                        (i32.add
                            (i32.ne (struct.get $pair 1 (struct.new $pair (i32.const 3) (i32.const 4))) (i32.const 4))
                            (i32.ne (call_ref $unary (i32.const 21) (ref.func $double)) (i32.const 42))))
                        (i32.add (i32.add
                            (i32.ne (i32.add (i32.load $wide (i64.const 8)) (i32.load $small (i32.const 8))) (i32.const 5))
                            (i32.ne (global.get $answer) (i32.const 42)))
                            (i32.ne (i32x4.extract_lane 0 (i32x4.relaxed_trunc_f32x4_s (f32x4.splat (f32.const 2.5))))
                                (i32.const 2)))))))"#;
        assert_eq!(run_wat(wat, "_start", None).unwrap(), 0);
    }
}
