//! Stamps the wasmtime version from Cargo.lock and the commit (from
//! $WASMLET_COMMIT, which `make release` sets) into the binary for
//! --version, and links it position-dependent.

fn main() {
    let lock = std::fs::read_to_string("../Cargo.lock").unwrap_or_default();
    let version = lock
        .split("[[package]]")
        .find(|pkg| pkg.contains("name = \"wasmtime\"\n"))
        .and_then(|pkg| pkg.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WASMTIME_VERSION={version}");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let commit = std::env::var("WASMLET_COMMIT").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=WASMLET_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=WASMLET_COMMIT");
    // A position-dependent binary: as a PIE, the loader would write
    // relocations into ~800 KB of .data.rel.ro in every shim and instance
    // process, private memory per task instead of pages shared by all.
    // musl targets link static-pie, whose start code would crash in a
    // binary linked -no-pie; release builds for musl pass
    // `-C relocation-model=static` instead (.cargo/config.toml).
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
