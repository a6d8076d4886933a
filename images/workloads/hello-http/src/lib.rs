//! A wasi:http/incoming-handler (WASI 0.2 component, wasm32-wasip2): answers
//! every request with 200 and a text body naming its method, path and query,
//! the `x-wasmlet-*` request headers, and how many requests this instance
//! has handled. Served with a fresh instance per request, that count is
//! always 1. Some paths test the server instead:
//!
//! - `/trap` traps before answering;
//! - `/spin` computes forever, `/sleep/MS` says `sleeping MS ms` on stderr
//!   and waits MS milliseconds first;
//! - `/status/CODE` answers with that status;
//! - `/grow/MIB` takes MIB MiB of memory first;
//! - `/fetch/PORT/PATH` answers with what `GET http://127.0.0.1:PORT/PATH`
//!   answered (an outgoing request).

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme};

wasip2::http::proxy::export!(HelloHttp);

static HANDLED: AtomicU32 = AtomicU32::new(0);

struct HelloHttp;

impl wasip2::exports::http::incoming_handler::Guest for HelloHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let handled = HANDLED.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.path_with_query().unwrap_or_default();
        let mut status = 200;
        let mut text = String::new();
        match path.split('/').collect::<Vec<_>>()[1..] {
            // wasm32's panic is an abort: the instance traps.
            ["trap"] => panic!("asked to trap"),
            ["spin"] => spin(),
            ["sleep", ms] => {
                // On stderr, so a test knows the request is in flight.
                eprintln!("sleeping {ms} ms");
                wasip2::clocks::monotonic_clock::subscribe_duration(number(ms) * 1_000_000).block()
            }
            ["status", code] => status = number(code) as u16,
            ["grow", mib] => text += &format!("grew by {} bytes\n", std::hint::black_box(vec![1u8; (number(mib) as usize) << 20]).len()),
            ["fetch", port, ref rest @ ..] => (status, text) = fetch(port, &rest.join("/")),
            _ => {}
        }
        text += "hello from wasm over http\n";
        text += &format!("method: {}\n", method_name(&request.method()));
        text += &format!("path: {path}\n");
        for (name, value) in request.headers().entries() {
            if name.starts_with("x-wasmlet-") {
                text += &format!("header {name}: {}\n", String::from_utf8_lossy(&value));
            }
        }
        text += &format!("requests handled by this instance: {handled}\n");

        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).unwrap();
        let body = response.body().unwrap();
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().unwrap();
        out.write_all(text.as_bytes()).unwrap();
        out.flush().unwrap();
        drop(out);
        OutgoingBody::finish(body, None).unwrap();
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn number(text: &str) -> u64 {
    text.parse().expect("a number in the path")
}

/// Never returns, and never calls the host: only the server's timeout ends it.
fn spin() {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// `GET http://127.0.0.1:PORT/PATH` through wasi:http/outgoing-handler:
/// its status and body, or 502 and the error.
fn fetch(port: &str, path: &str) -> (u16, String) {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).unwrap();
    request.set_authority(Some(&format!("127.0.0.1:{port}"))).unwrap();
    request.set_path_with_query(Some(&format!("/{path}"))).unwrap();
    let future = match wasip2::http::outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(err) => return (502, format!("fetch failed: {err:?}\n")),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        other => return (502, format!("fetch failed: {other:?}\n")),
    };
    let status = response.status();
    let body = response.consume().unwrap();
    let mut fetched = String::new();
    body.stream().unwrap().read_to_string(&mut fetched).unwrap();
    (200, format!("fetched {status}: {fetched}"))
}
