//! A WASI 0.2 component that exports `wasi:cli/run`. At Create it is only
//! linked: instantiating runs its core instances' start functions, guest
//! code, which waits for Start and for every privilege to be gone.

use anyhow::{anyhow, Result};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::guest::{guest_limits, wasi_context, without_deadline, Guest, GuestLimits};

/// A component's store data: its WASI context, resources and memory
/// limiter (a command's own cap; wasi:http's store wraps it with a share of
/// the pod's budget).
pub(super) struct ComponentState<L> {
    ctx: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: L,
}

impl<L> ComponentState<L> {
    pub(super) fn new(guest: &Guest, limits: L) -> Result<Self> {
        Ok(ComponentState { ctx: wasi_context(guest)?.build(), table: ResourceTable::new(), limits })
    }
}

impl<L: Send + 'static> WasiView for ComponentState<L> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// A linked command component.
pub struct ReadyCommand {
    store: Store<ComponentState<GuestLimits>>,
    pre: CommandPre<ComponentState<GuestLimits>>,
}

pub fn prepare(component: &Component, name: &str, guest: &Guest) -> Result<ReadyCommand> {
    let engine = component.engine();
    let mut store = Store::new(engine, ComponentState::new(guest, guest_limits(guest))?);
    store.limiter(|s| &mut s.limits);
    without_deadline(&mut store);

    let mut linker: Linker<ComponentState<GuestLimits>> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let pre = linker
        .instantiate_pre(component)
        .and_then(CommandPre::new)
        .map_err(|e| anyhow!("cannot run {name} as a wasi:cli command: {e:#}"))?;
    Ok(ReadyCommand { store, pre })
}

impl ReadyCommand {
    /// Instantiates the component and runs `wasi:cli/run`; its plain
    /// failure is exit code 1, as for a command. Also says whether the
    /// memory cap refused a growth.
    pub fn run(mut self) -> (wasmtime::Result<()>, bool) {
        let run = self.pre.instantiate(&mut self.store).and_then(|command| command.wasi_cli_run().call_run(&mut self.store));
        let result = match run {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(wasmtime_wasi::I32Exit(1).into()),
            Err(err) => Err(err),
        };
        (result, self.store.data().limits.reached)
    }
}
