//! A WASI 0.2 component that exports `wasi:http/incoming-handler`: served
//! over HTTP/1.1 (keep-alive) inside the pod's network namespace, with a
//! fresh instance per request from a template linked once and a pool of
//! instance slots, so that no request sees another's state. The knobs are
//! in settings.rs; SIGTERM drains the server.

mod budget;
mod epoch;
mod request;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Enabled, Engine, PoolingAllocationConfig};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::guest::{report_error, Guest};
use crate::shared::engine_config::{engine_config, Kind};
use crate::instance::compiled_code::Verified;
use crate::instance::own_proc::OwnProc;
use budget::Budget;
use epoch::Clock;
use request::{respond, Server, Template};
use settings::Settings;

const HANDLER: &str = "wasi:http/incoming-handler@0.2";
/// How long to wait before accepting again after accept failed (for
/// example out of file descriptors), instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Pool slots per request slot: a component holds several core instances
/// (its modules and the adapters' shims), each with its tables, and up to
/// two memories (its own and a preview 1 adapter's).
const CORE_INSTANCES_PER_REQUEST: u32 = 16;
const TABLES_PER_REQUEST: u32 = 16;
const MEMORIES_PER_REQUEST: u32 = 2;
/// Bytes of a slot's memory (and of its tables) kept mapped between requests.
const KEEP_RESIDENT: usize = 2 << 20;

/// Whether the component is an HTTP handler rather than a command.
pub fn exports_handler(engine: &Engine, component: &Component) -> bool {
    component.component_type().exports(engine).any(|(name, _)| name.starts_with(HANDLER))
}

/// A pooling engine (compiled code does not depend on the allocator) and
/// the settings from the guest's environment, made while the host's /proc
/// is there: the engine opens /proc/self/pagemap, and the worker count
/// defaults to the cgroup's CPU quota.
pub struct Pool {
    engine: Engine,
    settings: Settings,
    workers: usize,
}

impl Pool {
    /// A bad setting in the guest's environment `env` is an error here.
    pub fn new(env: &[String]) -> Result<Pool> {
        let settings = Settings::from_env(env)?;
        let engine = pooling_engine(settings.concurrency)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = settings.workers.unwrap_or(cpus);
        Ok(Pool { engine, settings, workers })
    }
}

/// A handler's compiled component in its pool's engine.
pub struct Handler {
    component: Component,
    settings: Settings,
    workers: usize,
}

impl Handler {
    pub fn load(pool: Pool, compiled: &Verified, name: &str, proc: &OwnProc) -> Result<Handler> {
        let component = compiled.component(&pool.engine, name, proc)?;
        Ok(Handler { component, settings: pool.settings, workers: pool.workers })
    }
}

/// A linked handler and its bound listening socket.
pub struct ReadyServer {
    template: Template,
    listener: std::net::TcpListener,
    workers: usize,
}

/// Links the handler and binds its address, so that both kinds of error
/// fail the container's creation.
pub fn prepare(handler: &Handler, name: &str, guest: &Guest) -> Result<ReadyServer> {
    let settings = handler.settings;
    let mut linker: Linker<request::RequestState> = Linker::new(handler.component.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = linker
        .instantiate_pre(&handler.component)
        .and_then(ProxyPre::new)
        .map_err(|e| anyhow!("cannot serve {name} as a wasi:http handler: {e:#}"))?;
    let listener = std::net::TcpListener::bind(settings.addr).with_context(|| format!("listen on {} for {name}", settings.addr))?;
    listener.set_nonblocking(true).context("make the listening socket non-blocking")?;
    let template = Template {
        pre,
        args: guest.args.to_vec(),
        env: guest.env.to_vec(),
        cwd: guest.cwd.to_string(),
        budget: Budget::new(guest.memory_limit),
        settings,
    };
    Ok(ReadyServer { template, listener, workers: handler.workers })
}

/// The engine of the shim (same compiled code) with pooled instances: a
/// request's instance reuses a warm slot instead of mapping fresh memory.
fn pooling_engine(concurrency: u32) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(concurrency)
        .total_stacks(concurrency)
        .total_core_instances(concurrency * CORE_INSTANCES_PER_REQUEST)
        .total_tables(concurrency * TABLES_PER_REQUEST)
        .total_memories(concurrency * MEMORIES_PER_REQUEST)
        // A used slot is reset by rewriting its dirty pages (found with
        // PAGEMAP_SCAN where the kernel has it; wasmtime opens
        // /proc/self/pagemap here, before pivot_root, and keeps it) rather
        // than by unmapping them: unmapping in a multithreaded process
        // interrupts every core to flush its TLB, which cost more than the
        // request itself.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    let mut config = engine_config(Kind::Component);
    config.allocation_strategy(pool);
    Engine::new(&config).map_err(anyhow::Error::from).context("create the instance pool")
}

impl ReadyServer {
    /// Serves until SIGTERM, then drains: exit code 0 once the requests
    /// in flight are answered.
    pub fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.workers)
            .enable_all()
            .build()
            .context("start the server's runtime")?;
        let clock = Clock::start(self.template.pre.engine().clone())?;
        let slots = Arc::new(Semaphore::new(self.template.settings.concurrency as usize));
        let server = Arc::new(Server { template: self.template, slots, clock });
        runtime.block_on(serve(server, self.listener))
    }
}

async fn serve(server: Arc<Server>, listener: std::net::TcpListener) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("register the listening socket")?;
    crate::instance::signals::release_sigterm()?;
    let mut terminate = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let connections = GracefulShutdown::new();
    // The timer enables hyper's limit on reading a request's head.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    loop {
        let client = tokio::select! {
            _ = terminate.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(err) => {
                    report_error(format_args!("accept a connection: {err}"));
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        // Small responses go out at once rather than after Nagle's delay.
        let _ = client.set_nodelay(true);
        let server = server.clone();
        let service = service_fn(move |request| {
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(respond(server, request).await) }
        });
        let connection = connections.watch(builder.serve_connection(TokioIo::new(client), service));
        // A client that goes away mid-request is its own business.
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    // Stop accepting; idle connections close, busy ones after their response.
    drop(listener);
    connections.shutdown().await;
    Ok(())
}
