//! What a hostile guest would try, one thing per run, for the security
//! tests: `probe read PATH [BYTES]` reads the start of a file (a device
//! node, a root-only file), `probe write PATH` creates one, `probe list DIR`
//! lists one. Each prints what it got, or the error; it never panics.

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let line = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["read", path] => read(path, 64),
        ["read", path, bytes] => read(path, bytes.parse().unwrap_or(64)),
        ["write", path] => write(path),
        ["list", dir] => list(dir),
        _ => "usage: probe read PATH [BYTES] | write PATH | list DIR".to_string(),
    };
    println!("{line}");
}

/// One read() of up to `bytes`: a device such as /dev/kmsg gives a record
/// per read and would block on the next one.
fn read(path: &str, bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    let read = std::fs::File::open(path).and_then(|mut file| file.read(&mut buffer));
    match read {
        Ok(n) => format!("read {path}: {n} bytes: {}", hex(&buffer[..n])),
        Err(err) => format!("read {path}: error: {err}"),
    }
}

fn write(path: &str) -> String {
    match std::fs::write(path, "written by probe") {
        Ok(()) => format!("write {path}: ok"),
        Err(err) => format!("write {path}: error: {err}"),
    }
}

fn list(dir: &str) -> String {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            format!("list {dir}: {}", names.join(" "))
        }
        Err(err) => format!("list {dir}: error: {err}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
