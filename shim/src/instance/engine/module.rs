//! A core module with WASI preview 1: instantiate, find the export, run it.

use anyhow::{anyhow, Result};
use wasmtime::{Linker, Module, Store, TypedFunc};
use wasmtime_wasi::p1::{self, WasiP1Ctx};

use super::guest::{memory_cap, wasi_context, Guest, MemoryCap};

struct ModuleState {
    wasi: WasiP1Ctx,
    limits: MemoryCap,
}

/// An instantiated module with its entry export.
pub struct ReadyModule {
    store: Store<ModuleState>,
    /// A reactor's `_initialize`, run just before a non-`_start` export.
    init: Option<TypedFunc<(), ()>>,
    entry: TypedFunc<(), ()>,
}

pub fn prepare(module: &Module, name: &str, export: &str, guest: &Guest) -> Result<ReadyModule> {
    let engine = module.engine();
    let wasi = wasi_context(guest)?.build_p1();
    let mut store = Store::new(engine, ModuleState { wasi, limits: memory_cap(guest) });
    store.limiter(|s| &mut s.limits);

    let mut linker: Linker<ModuleState> = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)?;
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(|e| anyhow!("cannot satisfy the imports of {}: {e:#}", name))?;
    // A reactor initialises itself before any other export is called; that
    // is guest code, so it runs in `run`, after privileges are dropped.
    let init = match export {
        "_start" => None,
        _ => instance.get_typed_func::<(), ()>(&mut store, "_initialize").ok(),
    };
    let func = instance
        .get_func(&mut store, export)
        .ok_or_else(|| anyhow!("export `{export}` not found in {}", name))?;
    let entry = func
        .typed::<(), ()>(&store)
        .map_err(|_| anyhow!("export `{export}` of {} must take no parameters and return nothing", name))?;
    Ok(ReadyModule { store, init, entry })
}

impl ReadyModule {
    /// Runs the export; also says whether the memory cap refused a growth.
    pub fn run(mut self) -> (wasmtime::Result<()>, bool) {
        let store = &mut self.store;
        let result = match self.init {
            Some(init) => init.call(&mut *store, ()).and_then(|()| self.entry.call(&mut *store, ())),
            None => self.entry.call(&mut *store, ()),
        };
        (result, self.store.data().limits.reached)
    }
}
