//! One request: wait for a free slot, give it a fresh store and instance
//! from the template, call the handler under the request's deadline, and
//! turn whatever went wrong into a status the client can act on.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio::time::timeout_at;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::budget::{Budget, Share};
use super::epoch::Clock;
use super::settings::{Settings, TIMEOUT_ENV};
use crate::instance::engine::component;
use crate::instance::engine::guest::{report_error, Guest, GuestLimits};

pub type Response = hyper::Response<HyperOutgoingBody>;

/// A command component's store data, limited by this request's share of
/// the pod's memory, plus wasi:http's, sharing one table.
pub struct RequestState {
    wasi: component::ComponentState<GuestLimits<Share>>,
    http: WasiHttpCtx,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.wasi.table, hooks: Default::default() }
    }
}

/// What every request's instance is given, owned for the server's life.
pub struct Template {
    pub pre: ProxyPre<RequestState>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub settings: Settings,
    pub budget: Arc<Budget>,
}

impl Template {
    fn store(&self) -> Result<Store<RequestState>> {
        // The memory limit is the shared budget's, not each instance's.
        let guest = Guest { args: &self.args, env: &self.env, cwd: &self.cwd, memory_limit: None };
        let state = RequestState { wasi: component::ComponentState::new(&guest, GuestLimits::new(Share::new(&self.budget)))?, http: WasiHttpCtx::new() };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.wasi.limits);
        // Yield to the server at every epoch tick (see epoch.rs).
        store.epoch_deadline_async_yield_and_update(1);
        store.set_epoch_deadline(1);
        Ok(store)
    }
}

/// The server's state shared by every connection.
pub struct Server {
    pub template: Template,
    /// One permit per request being handled, held until its instance is gone.
    pub slots: Arc<Semaphore>,
    pub clock: Arc<Clock>,
}

/// Why a request got no answer from its handler.
enum Failure {
    /// No slot came free before the deadline.
    Busy,
    TimedOut,
    OutOfMemory(anyhow::Error),
    Failed(anyhow::Error),
}

impl Failure {
    /// What the client gets.
    fn response(&self) -> Response {
        match self {
            Failure::Busy => plain_response(503, "server busy\n"),
            Failure::TimedOut => plain_response(504, "request timed out\n"),
            Failure::OutOfMemory(_) | Failure::Failed(_) => plain_response(500, "internal server error\n"),
        }
    }

    /// What the pod's log says.
    fn why(&self, settings: &Settings) -> String {
        match self {
            Failure::Busy => format!("no request slot came free within {:?} ({} handled at once)", settings.timeout, settings.concurrency),
            Failure::TimedOut => format!("the request took longer than {:?} ({TIMEOUT_ENV})", settings.timeout),
            Failure::OutOfMemory(err) => format!("the requests in flight reached the pod's memory limit: {err:?}"),
            Failure::Failed(err) => format!("{err:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Failed(err)
    }
}

impl From<wasmtime::Error> for Failure {
    fn from(err: wasmtime::Error) -> Self {
        Failure::Failed(err.into())
    }
}

/// The handler's response or an error status; one log line per request.
pub async fn respond(server: Arc<Server>, request: hyper::Request<hyper::body::Incoming>) -> Response {
    let started = Instant::now();
    let settings = &server.template.settings;
    // Clones share the request's buffers: no copy on the hot path.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let path = uri.path();
    let response = handle(&server, request).await.unwrap_or_else(|failure| {
        report_error(format_args!("{method} {path}: {}", failure.why(settings)));
        failure.response()
    });
    if settings.log_requests {
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        // Not println!: a closed stdout must not panic the server.
        let _ = writeln!(std::io::stdout(), "{method} {path} {} {millis:.3}ms", response.status().as_u16());
    }
    response
}

async fn handle(server: &Server, request: hyper::Request<hyper::body::Incoming>) -> Result<Response, Failure> {
    let deadline = tokio::time::Instant::now() + server.template.settings.timeout;
    let slot = match timeout_at(deadline, server.slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => return Err(Failure::Busy),
    };
    let mut store = server.template.store()?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = server.template.pre.clone();
    let ticking = server.clock.running();
    // The instance lives on in its own task while it streams the body.
    let task = tokio::spawn(async move {
        let call = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await
        };
        let result = timeout_at(deadline, call).await;
        let out_of_memory = store.data().wasi.limits.reached;
        // The instance goes back to the pool before its slot is freed.
        drop(store);
        drop((slot, ticking));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) if out_of_memory => Err(Failure::OutOfMemory(err.into())),
            Ok(Err(err)) => Err(Failure::Failed(anyhow!("the handler failed: {err:?}"))),
            Err(_) => Err(Failure::TimedOut),
        }
    });
    match receiver.await {
        Ok(Ok(response)) => {
            // The body may still be streaming: report a failure after the head.
            let settings = server.template.settings;
            tokio::spawn(async move {
                if let Ok(Err(failure)) = task.await {
                    report_error(format_args!("after the response head: {}", failure.why(&settings)));
                }
            });
            Ok(response)
        }
        Ok(Err(code)) => Err(Failure::Failed(anyhow!("the handler answered with error {code:?}"))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(Failure::Failed(anyhow!("the handler returned without setting a response"))),
            Ok(Err(failure)) => Err(failure),
            Err(join) => Err(Failure::Failed(anyhow!("the handler's task ended: {join}"))),
        },
    }
}

fn plain_response(status: u16, text: &'static str) -> Response {
    let body = Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}
