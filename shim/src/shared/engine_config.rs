//! The kinds of wasm (core module, component) and the engine settings each
//! is compiled with: compiled code depends on them, so every engine of one
//! kind, the compiler's and the instance's, is made here.

use anyhow::Result;
use wasmtime::{Config, Engine, WasmFeatures};

/// The WebAssembly wasmlet runs: the 3.0 standard as wasmtime implements
/// it (2.0, then exceptions, tail calls, GC and typed function references,
/// multi-memory, memory64, relaxed SIMD, extended constant expressions),
/// and the component model. Not threads: a pod's wasm is one thread, and
/// wasmtime is built without shared memories.
pub const OFFERED: WasmFeatures = WasmFeatures::WASM3
    .difference(WasmFeatures::THREADS)
    .union(WasmFeatures::GC_TYPES)
    .union(WasmFeatures::COMPONENT_MODEL);

/// What a wasm binary holds, which decides how it is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Module,
    Component,
}

impl Kind {
    /// The compiler's argument for this kind, and back.
    pub fn as_arg(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::Component => "component",
        }
    }

    pub fn from_arg(arg: &str) -> Option<Kind> {
        [Kind::Module, Kind::Component].into_iter().find(|kind| kind.as_arg() == arg)
    }

    /// From the preamble: `\0asm`, then version 0x0d and layer 1 for a
    /// component (a core module has version 1, layer 0).
    pub fn of(wasm: &[u8]) -> Kind {
        match wasm.get(4..8) {
            Some([0x0d, 0x00, 0x01, 0x00]) => Kind::Component,
            _ => Kind::Module,
        }
    }
}

pub fn new_engine(kind: Kind) -> Result<Engine> {
    Ok(Engine::new(&engine_config(kind))?)
}

/// The settings compiled code depends on, for every engine of one kind.
pub fn engine_config(kind: Kind) -> Config {
    let mut config = Config::new();
    // Said outright, not left to wasmtime's defaults: a feature set that
    // changes shows in the compatibility hash, so in the cache key.
    config.wasm_features(WasmFeatures::all().difference(OFFERED), false).wasm_features(OFFERED, true);
    if kind == Kind::Component {
        // Checks in the code let an HTTP server cut a runaway request (only
        // components serve HTTP). Only the server advances the epoch: a
        // command component sets no deadline.
        config.epoch_interruption(true);
        // A component may be served over HTTP, from slots reset after every
        // request. With guard pages the reset changes page protections,
        // which in a multithreaded process stops every core to flush its
        // TLB, twice per request: explicit bounds checks cost far less
        // (about 1.5x the requests/s, measured with the JSON API). The
        // price: wasmtime then compiles no Spectre guard into those checks,
        // so a component's code could speculatively read past its memory,
        // within its own instance process (its own pod's data).
        config.signals_based_traps(false).memory_guard_size(0);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_told_from_modules() {
        assert_eq!(Kind::of(b"\0asm\x0d\0\x01\0rest"), Kind::Component);
        assert_eq!(Kind::of(b"\0asm\x01\0\0\0rest"), Kind::Module);
        assert_eq!(Kind::of(b"\0asm"), Kind::Module);
    }

    #[test]
    fn engines_of_both_kinds_take_the_offered_features() {
        for kind in [Kind::Module, Kind::Component] {
            new_engine(kind).unwrap_or_else(|err| panic!("{kind:?}: {err:#}"));
        }
    }
}
