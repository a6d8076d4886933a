//! What a guest is given, whatever its kind: argv, env, stdio, `/` and the
//! pod's network as its WASI context, and the limits of its store; and how
//! a failure reaches its stderr.

use std::io::Write;

use anyhow::{Context, Result};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// What the guest is given: argv, environment, working directory, memory cap.
pub struct Guest<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub memory_limit: Option<u64>,
}

/// Core instances a store may hold (a component holds several).
const MAX_INSTANCES: usize = 1_000;
/// Memories and tables a store may hold.
const MAX_MEMORIES: usize = 100;
const MAX_TABLES: usize = 1_000;
/// Elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 22;
/// What a table element costs the allowance (a reference is a pointer).
const TABLE_ELEMENT_BYTES: usize = 8;

/// Bytes a store may still take: a cap of its own, or a share of a budget.
pub trait Allowance: Send + 'static {
    /// Takes `bytes` if they fit.
    fn take(&mut self, bytes: usize) -> bool;
}

/// A store's own cap on bytes; `None` is no cap.
pub struct Cap(Option<usize>);

impl Allowance for Cap {
    fn take(&mut self, bytes: usize) -> bool {
        match &mut self.0 {
            None => true,
            Some(left) if bytes <= *left => {
                *left -= bytes;
                true
            }
            Some(_) => false,
        }
    }
}

/// The limiter of one store: all its memories and tables draw from one
/// allowance, and the number of instances, memories and tables is bounded,
/// so that no shape of module or component multiplies the cap. Remembers
/// whether the allowance refused a growth.
pub struct GuestLimits<A = Cap> {
    allowance: A,
    pub reached: bool,
}

impl<A: Allowance> GuestLimits<A> {
    pub fn new(allowance: A) -> Self {
        GuestLimits { allowance, reached: false }
    }

    fn take(&mut self, bytes: usize) -> bool {
        let taken = self.allowance.take(bytes);
        self.reached |= !taken;
        taken
    }
}

impl<A: Allowance> ResourceLimiter for GuestLimits<A> {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.take(desired.saturating_sub(current)))
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) || desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        Ok(self.take(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// The WASI context every guest gets: argv, env, stdio, `/`, the pod's network.
pub fn wasi_context(guest: &Guest) -> Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(guest.args)
        .envs(&split_env(guest.env))
        .inherit_stdio()
        // The guest's network is its pod's network namespace, nothing more.
        .inherit_network()
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true)
        .allow_blocking_current_thread(true)
        .preopened_dir("/", "/", FsPerms::ReadWrite)
        .map_err(anyhow::Error::from)
        .context("preopen / for the guest")?;
    // A component reads it as wasi:cli/environment.initial-cwd, and its
    // libc resolves relative paths against it. Preview 1 has no such call:
    // a core module's libc starts at `/`, and PWD tells guests that look.
    builder.initial_cwd(guest.cwd);
    if guest.cwd != "/" && !guest.env.iter().any(|kv| kv.starts_with("PWD=")) {
        builder.env("PWD", guest.cwd);
    }
    Ok(builder)
}

/// The limits of a guest's store: its memory cap, if any.
pub fn guest_limits(guest: &Guest) -> GuestLimits {
    GuestLimits::new(Cap(guest.memory_limit.map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX))))
}

/// No epoch deadline: for guests that run to their end.
pub fn without_deadline<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(u64::MAX);
}

/// `Error: message` on the guest's stderr. Not eprintln!: a closed stderr
/// must not turn a failure into a panic.
pub fn report_error(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "Error: {message}");
}

/// `K=V` strings as (K, V); an entry without `=` is a name with an empty value.
fn split_env(env: &[String]) -> Vec<(&str, &str)> {
    env.iter().map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), ""))).collect()
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_one_cap() {
        let mut limits = GuestLimits::new(Cap(Some(3 << 16)));
        assert!(limits.memory_growing(0, 2 << 16, None).unwrap());
        assert!(!limits.memory_growing(0, 2 << 16, None).unwrap(), "a second memory of 2 pages exceeds 3 pages in all");
        assert!(limits.reached);
        assert!(limits.table_growing(0, 1000, None).unwrap(), "8000 bytes of table fit the page left");
        assert!(!limits.table_growing(0, 1 << 13, None).unwrap());
    }

    #[test]
    fn counts_and_table_sizes_are_bounded_even_without_a_cap() {
        let mut limits = GuestLimits::new(Cap(None));
        assert!(!limits.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
        assert!(!limits.memory_growing(0, 2, Some(1)).unwrap());
        assert!(!limits.reached, "a declared maximum is not the cap");
        assert_eq!((limits.instances(), limits.memories(), limits.tables()), (MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES));
    }

    #[test]
    fn env_entries_split_on_first_equals() {
        let env = vec!["A=1".to_string(), "B=x=y".to_string(), "C".to_string()];
        assert_eq!(split_env(&env), vec![("A", "1"), ("B", "x=y"), ("C", "")]);
    }

    #[test]
    fn a_component_is_told_the_working_directory() {
        use wasmtime_wasi::p2::bindings::cli::environment::Host;
        let guest = Guest { args: &[], env: &[], cwd: "/srv/app", memory_limit: None };
        let mut ctx = wasi_context(&guest).unwrap().build();
        let mut table = wasmtime_wasi::ResourceTable::new();
        let mut cli = wasmtime_wasi::cli::WasiCliCtxView { ctx: ctx.cli(), table: &mut table };
        assert_eq!(cli.initial_cwd().unwrap().as_deref(), Some("/srv/app"));
        assert!(cli.get_environment().unwrap().contains(&("PWD".to_string(), "/srv/app".to_string())));
    }
}
