//! Compiling on a cache miss, in the compiler process (compiler/): the
//! instance still holds its privileges then, so it hands the untrusted
//! wasm to a process that holds none, and takes back only bytes, which
//! the node cache stores and checksums like any entry. The compiler is
//! nobody before it is the compiler: the forked child changes user, drops
//! every capability, sets no_new_privs and its parent-death signal, and
//! only then execs, so no moment exists when it runs privileged.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::shared::compile_protocol::{COMPILE_COMMAND, COMPILER_USER, INVALID, MAX_MESSAGE_BYTES};
use crate::shared::engine_config::Kind;
use crate::shared::sandbox;

/// The compiled code of `wasm` (`name` in errors).
pub fn compile(kind: Kind, wasm: &[u8], name: &str) -> Result<Vec<u8>> {
    // The instance is in the host's mount namespace still: /proc/self/exe is this binary.
    let mut command = Command::new("/proc/self/exe");
    command.arg(COMPILE_COMMAND).arg(kind.as_arg()).env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Safety: the instance has one thread here (setup starts none before
    // its compiled code is found), so the child may allocate after fork.
    let instance = std::process::id();
    unsafe { command.pre_exec(move || become_nobody(instance).map_err(std::io::Error::other)) };
    let mut child = command.spawn().context("start the compiler process")?;
    // The compiler reads all its input before it writes, and stops reading
    // at its limit: a write refused then is answered on its stderr.
    let mut stdin = child.stdin.take().context("the compiler's stdin")?;
    let _ = stdin.write_all(wasm);
    drop(stdin);
    let mut compiled = Vec::new();
    child.stdout.take().context("the compiler's stdout")?.read_to_end(&mut compiled).context("read the compiled code")?;
    let mut message = Vec::new();
    let stderr = child.stderr.take().context("the compiler's stderr")?;
    stderr.take(MAX_MESSAGE_BYTES as u64).read_to_end(&mut message).context("read the compiler's message")?;
    let status = child.wait().context("wait for the compiler process")?;
    let message = String::from_utf8_lossy(&message);
    match status.code() {
        Some(0) => Ok(compiled),
        Some(INVALID) => Err(anyhow!("invalid wasm module {name}: {message}")),
        _ => {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(libc::SIGKILL) => bail!("compiling {name} was killed (the pod's memory limit?): {message}"),
                _ => bail!("compiling {name} failed ({status}): {message}"),
            }
        }
    }
}

/// In the forked child, before exec: nobody with no capability, no new
/// privileges, killed when the `instance` dies (set after the change of
/// user, which clears it; execve keeps it; the instance may have gone
/// just before).
fn become_nobody(instance: u32) -> Result<()> {
    sandbox::become_user(&COMPILER_USER)?;
    nix::sys::prctl::set_no_new_privs().context("set no_new_privs")?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("set the parent-death signal")?;
    if nix::unistd::getppid().as_raw() as u32 != instance {
        bail!("the instance is gone");
    }
    Ok(())
}
