//! Hits a wasm `unreachable` instruction to test how traps are reported.

use std::io::Write;

fn main() {
    println!("about to trap");
    // Flush first: the trap ends the instance without running destructors.
    let _ = std::io::stdout().flush();

    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();

    // Native builds have no wasm trap; abort is the closest equivalent.
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}
