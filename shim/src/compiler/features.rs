//! Which WebAssembly feature a refused binary needs, so that its error
//! names it: the binary is validated again with each feature wasmlet does
//! not offer added alone. Pure parsing, in the confined compiler.

use wasmparser::{Validator, WasmFeatures};

use crate::shared::engine_config::OFFERED;

/// The name of a feature outside the offered ones that alone makes `wasm`
/// valid, if there is one.
pub fn needed_feature(wasm: &[u8]) -> Option<String> {
    if valid_with(wasm, OFFERED) || !valid_with(wasm, WasmFeatures::all()) {
        return None;
    }
    WasmFeatures::all()
        .difference(OFFERED)
        .iter_names()
        .find(|(_, flag)| valid_with(wasm, OFFERED | *flag))
        .map(|(name, _)| name.to_lowercase().replace('_', " "))
}

fn valid_with(wasm: &[u8], features: WasmFeatures) -> bool {
    Validator::new_with_features(features).validate_all(wasm).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_needs_threads() {
        let wasm = wat::parse_str("(module (memory 1 1 shared))").unwrap();
        assert_eq!(needed_feature(&wasm).as_deref(), Some("threads"));
    }

    #[test]
    fn offered_or_broken_binaries_need_nothing_more() {
        let exceptions = wat::parse_str("(module (tag $e) (func (throw $e)))").unwrap();
        assert_eq!(needed_feature(&exceptions), None);
        assert_eq!(needed_feature(b"\0asm\x01\0\0\0\x7f"), None);
    }
}
