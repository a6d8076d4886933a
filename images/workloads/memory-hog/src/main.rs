//! Grows memory 1 MiB at a time to test memory limits. Stops after argv[1]
//! MiB when given; otherwise runs until allocation fails (an abort, which in
//! wasm is a trap).

use std::io::Write;

const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;

fn main() {
    let limit: Option<usize> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    let mut chunks: Vec<Vec<u8>> = Vec::new();

    while limit.map_or(true, |max| chunks.len() < max) {
        let mut chunk = vec![0u8; MIB];
        // Touch every page so the memory is really committed, not just reserved.
        for i in (0..MIB).step_by(PAGE) {
            chunk[i] = 1;
        }
        // black_box keeps the optimizer from dropping the unread writes.
        chunks.push(std::hint::black_box(chunk));

        if chunks.len() % 16 == 0 {
            println!("allocated {} MiB", chunks.len());
            let _ = std::io::stdout().flush();
        }
    }
    println!("done {} MiB", chunks.len());
}
