//! The compiler process: untrusted wasm in on stdin, compiled code out on
//! stdout (shared/compile_protocol.rs). The instance runs one per cache
//! miss, inside the pod's cgroup, before it enters the pod's namespaces,
//! and starts it as nobody with no capability and no new privileges
//! (instance/compile.rs). Before it reads a byte it checks that it holds
//! nothing, makes itself undumpable and installs a seccomp filter that
//! leaves it memory, threads and its three pipes: no file, no socket, no
//! other process. So a wasm that exploits the parser or the
//! compiler gets nothing, and compiling may use every core (wasmtime's
//! parallel compilation) without a thread that holds a privilege.

mod features;
mod seccomp;

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};

use crate::shared::compile_protocol::{COMPILER_USER, INVALID, MAX_MESSAGE_BYTES};
use crate::shared::engine_config::{new_engine, Kind};
use crate::shared::node_cache::MAX_WASM_BYTES;
use crate::shared::sandbox;

/// Why there is no compiled code.
enum Failure {
    /// The wasm is at fault: too large, or not valid.
    Invalid(String),
    /// The compiler could not do its work.
    Broken(anyhow::Error),
}

pub fn main(args: &[String]) -> ! {
    let (code, message) = match compile(args) {
        Ok(()) => (0, String::new()),
        Err(Failure::Invalid(message)) => (INVALID, message),
        Err(Failure::Broken(err)) => (1, format!("{err:#}")),
    };
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let _ = std::io::stderr().write_all(message[..end].as_bytes());
    std::process::exit(code);
}

fn compile(args: &[String]) -> Result<(), Failure> {
    let kind = match args {
        [kind] => Kind::from_arg(kind),
        _ => None,
    };
    let kind = kind.ok_or_else(|| Failure::Broken(anyhow::anyhow!("usage: compile module|component")))?;
    // The engine first: making it reads nothing untrusted.
    let engine = new_engine(kind).map_err(Failure::Broken)?;
    confine().map_err(Failure::Broken)?;
    let wasm = read_bounded(std::io::stdin().lock(), MAX_WASM_BYTES)?;
    let compiled = match kind {
        Kind::Module => engine.precompile_module(&wasm),
        Kind::Component => engine.precompile_component(&wasm),
    };
    let compiled = compiled.map_err(|err| match features::needed_feature(&wasm) {
        Some(feature) => {
            Failure::Invalid(format!("it needs the WebAssembly feature '{feature}', which wasmlet does not run ({err:#})"))
        }
        None => Failure::Invalid(format!("{err:#}")),
    })?;
    std::io::stdout().lock().write_all(&compiled).context("write the compiled code").map_err(Failure::Broken)
}

/// Holds nothing (the instance started it so), dumps no core of what it
/// read, is undumpable, and is under the filter.
fn confine() -> Result<()> {
    holds_nothing()?;
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: setrlimit reads the struct passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        bail!("limit core dumps: {}", std::io::Error::last_os_error());
    }
    sandbox::undumpable()?;
    sandbox::confine(&seccomp::filters()?)
}

/// The compiler refuses to run as anyone but `COMPILER_USER` with no
/// capability in any set and no_new_privs.
fn holds_nothing() -> Result<()> {
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    if (uid, gid) != (COMPILER_USER.uid, COMPILER_USER.gid) || nix::unistd::geteuid().as_raw() != uid {
        bail!("the compiler runs as uid {uid} gid {gid}: it must be started as {}:{}", COMPILER_USER.uid, COMPILER_USER.gid);
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable, caps::CapSet::Ambient, caps::CapSet::Bounding] {
        let held = caps::read(None, set).with_context(|| format!("read {set:?} capabilities"))?;
        if !held.is_empty() {
            bail!("the compiler holds {} {set:?} capabilities: it must be started with none", held.len());
        }
    }
    if !nix::sys::prctl::get_no_new_privs().context("read no_new_privs")? {
        bail!("the compiler must be started with no_new_privs");
    }
    Ok(())
}

/// All of `input`, refused once it holds more than `limit` bytes.
fn read_bounded(input: impl Read, limit: u64) -> Result<Vec<u8>, Failure> {
    let mut wasm = Vec::new();
    input.take(limit + 1).read_to_end(&mut wasm).context("read the wasm").map_err(Failure::Broken)?;
    if wasm.len() as u64 > limit {
        return Err(Failure::Invalid(format!("it is larger than the {limit} bytes a wasm may be")));
    }
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_over_the_limit_is_refused_without_reading_it_all() {
        let endless = std::io::repeat(0);
        let Err(Failure::Invalid(message)) = read_bounded(endless, 1000) else { panic!("an endless input was taken") };
        assert_eq!(message, "it is larger than the 1000 bytes a wasm may be");
        assert!(matches!(read_bounded(&[0u8; 1000][..], 1000), Ok(wasm) if wasm.len() == 1000));
    }
}
