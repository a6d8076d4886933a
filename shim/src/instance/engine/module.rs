//! A core module with WASI preview 1. At Create it is linked (its imports
//! resolved, its export checked) but not instantiated: instantiation runs
//! the module's start function, which is guest code, so it happens in
//! `run`, after Start and after every privilege is gone.

use anyhow::{anyhow, bail, Result};
use wasmtime::{ExternType, InstancePre, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};

use super::guest::{guest_limits, wasi_context, Guest, GuestLimits};

struct ModuleState {
    wasi: WasiP1Ctx,
    limits: GuestLimits,
}

/// A linked module and the export to run.
pub struct ReadyModule {
    store: Store<ModuleState>,
    pre: InstancePre<ModuleState>,
    export: String,
}

pub fn prepare(module: &Module, name: &str, export: &str, guest: &Guest) -> Result<ReadyModule> {
    let engine = module.engine();
    let wasi = wasi_context(guest)?.build_p1();
    let mut store = Store::new(engine, ModuleState { wasi, limits: guest_limits(guest) });
    store.limiter(|s| &mut s.limits);

    let mut linker: Linker<ModuleState> = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)?;
    let pre = linker.instantiate_pre(module).map_err(|e| anyhow!("cannot satisfy the imports of {name}: {e:#}"))?;
    match module.get_export(export) {
        Some(ExternType::Func(func)) if func.params().len() == 0 && func.results().len() == 0 => {}
        Some(ExternType::Func(_)) => bail!("export `{export}` of {name} must take no parameters and return nothing"),
        _ => bail!("export `{export}` not found in {name}"),
    }
    Ok(ReadyModule { store, pre, export: export.to_string() })
}

impl ReadyModule {
    /// Instantiates the module (its start function runs here) and runs the
    /// export; also says whether the memory cap refused a growth.
    pub fn run(mut self) -> (wasmtime::Result<()>, bool) {
        let result = self.call();
        (result, self.store.data().limits.reached)
    }

    fn call(&mut self) -> wasmtime::Result<()> {
        let store = &mut self.store;
        let instance = self.pre.instantiate(&mut *store)?;
        // A reactor initialises itself before any other export is called.
        if self.export != "_start" {
            if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
                init.call(&mut *store, ())?;
            }
        }
        instance.get_typed_func::<(), ()>(&mut *store, &self.export)?.call(&mut *store, ())
    }
}
