//! A WASI 0.2 component that exports `wasi:http/incoming-handler`: served
//! over HTTP/1.1 (keep-alive) on the address in the guest's
//! `WASMLET_HTTP_ADDR` (default 0.0.0.0:8080), inside the pod's network
//! namespace. Every request gets a fresh instance of a template linked
//! once, so no request sees another's state.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::{component, report_error, Guest};
use crate::workload::env_value;

/// The guest's environment variable naming the address to serve on.
pub const ADDR_ENV: &str = "WASMLET_HTTP_ADDR";
pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";
/// Set to `off` in the guest's environment to silence the request log.
pub const LOG_ENV: &str = "WASMLET_HTTP_LOG";

const HANDLER: &str = "wasi:http/incoming-handler@0.2";
/// How long to wait before accepting again after accept failed (for
/// example out of file descriptors), instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Whether the component is an HTTP handler rather than a command.
pub fn exports_handler(engine: &Engine, component: &Component) -> bool {
    component.component_type().exports(engine).any(|(name, _)| name.starts_with(HANDLER))
}

/// A command component's store data plus wasi:http's, sharing one table.
struct State {
    wasi: component::State,
    http: WasiHttpCtx,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.wasi.table, hooks: Default::default() }
    }
}

/// What each request's instance is given, owned for the server's life.
struct Template {
    pre: ProxyPre<State>,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    memory_limit: Option<u64>,
    log_requests: bool,
}

impl Template {
    fn store(&self) -> Result<Store<State>> {
        let guest = Guest { args: &self.args, env: &self.env, cwd: &self.cwd, memory_limit: self.memory_limit };
        let state = State { wasi: component::State::new(&guest)?, http: WasiHttpCtx::new() };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.wasi.limits);
        Ok(store)
    }
}

/// A linked handler and its bound listening socket.
pub struct Prepared {
    template: Arc<Template>,
    listener: std::net::TcpListener,
}

/// Links the component and binds its address, so that both kinds of error
/// fail the container's creation.
pub fn prepare(engine: &Engine, component: &Component, name: &str, guest: &Guest) -> Result<Prepared> {
    let mut linker: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = linker
        .instantiate_pre(component)
        .and_then(ProxyPre::new)
        .map_err(|e| anyhow!("cannot serve {name} as a wasi:http handler: {e:#}"))?;
    let addr = env_value(guest.env, ADDR_ENV).unwrap_or(DEFAULT_ADDR);
    let addr: SocketAddr = addr.parse().with_context(|| format!("{ADDR_ENV}={addr} is not an address and port"))?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listen on {addr} for {name}"))?;
    listener.set_nonblocking(true).context("make the listening socket non-blocking")?;
    let template = Template {
        pre,
        args: guest.args.to_vec(),
        env: guest.env.to_vec(),
        cwd: guest.cwd.to_string(),
        memory_limit: guest.memory_limit,
        log_requests: env_value(guest.env, LOG_ENV) != Some("off"),
    };
    Ok(Prepared { template: Arc::new(template), listener })
}

impl Prepared {
    /// Serves until the process is stopped.
    pub fn run(self, runtime: &tokio::runtime::Runtime) -> (wasmtime::Result<()>, bool) {
        let result = runtime.block_on(serve(self.template, self.listener));
        (result.map_err(wasmtime::Error::from_anyhow), false)
    }
}

async fn serve(template: Arc<Template>, listener: std::net::TcpListener) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("register the listening socket")?;
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(err) => {
                report_error(format_args!("accept a connection: {err}"));
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let template = template.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let template = template.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&template, request).await) }
            });
            // The timer enables hyper's limit on reading a request's head.
            let mut connection = http1::Builder::new();
            connection.timer(TokioTimer::new()).keep_alive(true);
            // A client that goes away mid-request is its own business.
            let _ = connection.serve_connection(TokioIo::new(client), service).await;
        });
    }
}

/// The handler's response, or a 500 that says what went wrong; one log
/// line per request.
async fn respond(template: &Template, request: hyper::Request<hyper::body::Incoming>) -> hyper::Response<HyperOutgoingBody> {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = handle(template, request).await.unwrap_or_else(|err| {
        report_error(format_args!("{method} {path}: {err:#}"));
        plain_response(500, "internal server error\n")
    });
    if template.log_requests {
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        // Not println!: a closed stdout must not panic the server.
        let _ = writeln!(std::io::stdout(), "{method} {path} {} {millis:.3}ms", response.status().as_u16());
    }
    response
}

async fn handle(template: &Template, request: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = template.store()?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = template.pre.clone();
    // The instance lives on in its own task while it streams the body.
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await
    });
    match receiver.await {
        Ok(Ok(response)) => {
            // The body may still be streaming: report a failure after the head.
            tokio::spawn(async move {
                if let Ok(Err(err)) = task.await {
                    report_error(format_args!("the handler failed after its response head: {err:?}"));
                }
            });
            Ok(response)
        }
        Ok(Err(code)) => Err(anyhow!("the handler answered with error {code:?}")),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(anyhow!("the handler returned without setting a response")),
            Ok(Err(err)) => Err(anyhow!("the handler failed: {err:?}")),
            Err(join) => Err(anyhow!("the handler's task ended: {join}")),
        },
    }
}

fn plain_response(status: u16, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}

