//! Exits with the code in argv[1] (default 42) to test exit status plumbing.

use std::io::Write;

fn main() {
    let code: i32 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("exit-code: not a number: {arg}");
            2
        }),
        None => 42,
    };
    println!("exiting with {code}");
    // process::exit skips destructors, so flush stdout ourselves.
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
