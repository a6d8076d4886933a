//! Checks filesystem sandboxing: reads from a read-only mount, writes to a
//! read-write mount, and must fail to write to the read-only mount and to
//! escape the root with `..`. Prints one line per step, never panics.

use std::fs;

fn main() {
    let mut args = std::env::args().skip(1);
    let ro = args.next().unwrap_or_else(|| "/config".to_string());
    let rw = args.next().unwrap_or_else(|| "/data".to_string());

    let checks = [
        read_input(&ro),
        write_output(&rw),
        expect_denied(&format!("{ro}/denied.txt")),
        expect_denied("/../escape.txt"),
    ];
    let ok = checks.iter().all(|&passed| passed);
    std::process::exit(if ok { 0 } else { 1 });
}

fn read_input(ro: &str) -> bool {
    let path = format!("{ro}/input.txt");
    match fs::read_to_string(&path) {
        Ok(content) => {
            println!("read: {}", content.trim());
            true
        }
        Err(err) => {
            println!("FAILED: read {path}: {err}");
            false
        }
    }
}

fn write_output(rw: &str) -> bool {
    let path = format!("{rw}/output.txt");
    match fs::write(&path, "written by wasm") {
        Ok(()) => {
            println!("wrote: {path}");
            true
        }
        Err(err) => {
            println!("FAILED: write {path}: {err}");
            false
        }
    }
}

/// Succeeds when creating `path` is refused.
fn expect_denied(path: &str) -> bool {
    match fs::write(path, "should not be here") {
        Ok(()) => {
            println!("UNEXPECTED: wrote {path}");
            false
        }
        Err(err) => {
            println!("denied: {path}: {err}");
            true
        }
    }
}
