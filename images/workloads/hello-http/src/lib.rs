//! A wasi:http/incoming-handler (WASI 0.2 component, wasm32-wasip2): answers
//! every request with 200 and a text body naming its method, path and query,
//! the `x-wasmlet-*` request headers, and how many requests this instance
//! has handled. Served with a fresh instance per request, that count is
//! always 1. The path `/trap` traps instead, before answering.

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(HelloHttp);

static HANDLED: AtomicU32 = AtomicU32::new(0);

struct HelloHttp;

impl wasip2::exports::http::incoming_handler::Guest for HelloHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let handled = HANDLED.fetch_add(1, Ordering::SeqCst) + 1;
        if request.path_with_query().as_deref() == Some("/trap") {
            // wasm32's panic is an abort: the instance traps.
            panic!("asked to trap");
        }
        let mut text = String::from("hello from wasm over http\n");
        text += &format!("method: {}\n", method_name(&request.method()));
        text += &format!("path: {}\n", request.path_with_query().unwrap_or_default());
        for (name, value) in request.headers().entries() {
            if name.starts_with("x-wasmlet-") {
                text += &format!("header {name}: {}\n", String::from_utf8_lossy(&value));
            }
        }
        text += &format!("requests handled by this instance: {handled}\n");

        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
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
