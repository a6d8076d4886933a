//! Prints a greeting, its arguments and the HELLO_* environment, so tests
//! can check that argv and env reach the workload unchanged.

fn main() {
    println!("Hello from wasmlet!");

    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {}", args.join(" "));

    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("HELLO_"))
        .collect();
    vars.sort();
    for (name, value) in vars {
        println!("env: {name}={value}");
    }
}

/// Alternative entry point, exported from the wasm module as `greet`.
#[no_mangle]
pub extern "C" fn greet() {
    println!("greet: called via #export");
}
