//! Stamps the commit (from $WASMLET_COMMIT, which `make release` sets) into
//! the binary for --version.

fn main() {
    let commit = std::env::var("WASMLET_COMMIT").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=WASMLET_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=WASMLET_COMMIT");
}
