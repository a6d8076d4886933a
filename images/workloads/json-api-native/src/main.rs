//! json-api's invoice handler served natively: HTTP/1.1 with keep-alive on
//! $ADDR (default 0.0.0.0:8080), a worker thread per CPU.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("json-api-native serving on {addr}");
    loop {
        let (client, _) = listener.accept().await?;
        client.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(client), service_fn(respond)).await;
        });
    }
}

async fn respond(request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let post_body = match request.method() == Method::POST {
        true => Some(request.into_body().collect().await.map(|body| body.to_bytes()).map_err(|err| format!("cannot read the body: {err}\n"))),
        false => None,
    };
    let (status, content_type, body) = json_api::answer(post_body);
    let response = Response::builder().status(status).header("content-type", content_type).body(Full::new(Bytes::from(body)));
    Ok(response.expect("a valid status and header"))
}
