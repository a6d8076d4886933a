//! A WASI 0.2 component (wasm32-wasip2) that serves TCP with WASI sockets:
//! it listens on 0.0.0.0:$PORT (default 8080) and greets every client.

use std::io::Write;
use std::net::TcpListener;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("tcp-hello: cannot listen on port {port}: {err}");
            std::process::exit(1);
        }
    };
    println!("listening on port {port}");
    let _ = std::io::stdout().flush();
    for (served, stream) in listener.incoming().enumerate() {
        match stream {
            Ok(mut stream) => {
                let _ = writeln!(stream, "hello from wasm over tcp #{}", served + 1);
            }
            Err(err) => eprintln!("tcp-hello: accept failed: {err}"),
        }
    }
}
