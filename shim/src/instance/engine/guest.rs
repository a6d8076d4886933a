//! What a guest is given, whatever its kind: argv, env, stdio, `/` and the
//! pod's network as its WASI context, and its memory cap; and how a
//! failure reaches its stderr.

use std::io::Write;

use anyhow::{Context, Result};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// What the guest is given: argv, environment, working directory, memory cap.
pub struct Guest<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub memory_limit: Option<u64>,
}

/// The store's limits, remembering whether a growth was refused by them.
pub struct MemoryCap {
    limits: StoreLimits,
    pub reached: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.reached |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
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
    if guest.cwd != "/" && !guest.env.iter().any(|kv| kv.starts_with("PWD=")) {
        // WASI has no working directory: the spec's is passed as PWD for
        // guests that look; wasi-libc itself starts at `/`.
        builder.env("PWD", guest.cwd);
    }
    Ok(builder)
}

/// The store limits of a guest: its memory cap, if any.
pub fn memory_cap(guest: &Guest) -> MemoryCap {
    let mut limits = StoreLimitsBuilder::new();
    if let Some(bytes) = guest.memory_limit {
        limits = limits.memory_size(bytes as usize);
    }
    MemoryCap { limits: limits.build(), reached: false }
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
    fn env_entries_split_on_first_equals() {
        let env = vec!["A=1".to_string(), "B=x=y".to_string(), "C".to_string()];
        assert_eq!(split_env(&env), vec![("A", "1"), ("B", "x=y"), ("C", "")]);
    }
}
