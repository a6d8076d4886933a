// rustc does not put functions of a bin crate in the wasm export section,
// so ask wasm-ld to export `greet` explicitly. Native builds don't need it.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-bins=--export=greet");
    }
}
