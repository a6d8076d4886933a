//! Stamps the wasmtime version from Cargo.lock into the binary for --version,
//! and links it position-dependent.

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
    // A position-dependent binary: as a PIE, the loader would write
    // relocations into ~800 KB of .data.rel.ro in every shim and instance
    // process, private memory per task instead of pages shared by all.
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
