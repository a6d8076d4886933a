//! Long-running workload for kill/exec/state tests. Sleeps forever, or for
//! argv[1] seconds when given.

use std::io::Write;
use std::thread::sleep;
use std::time::Duration;

fn say(line: &str) {
    println!("{line}");
    // Flush so the line shows up in logs while we are still running.
    let _ = std::io::stdout().flush();
}

fn main() {
    let limit: Option<u64> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    say("sleeping");

    let mut slept = 0u64;
    // Short steps keep the guest responsive to the host's interruption.
    while limit.map_or(true, |max| slept < max) {
        sleep(Duration::from_secs(1));
        slept += 1;
    }
    say("done");
}
