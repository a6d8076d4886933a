//! The guest ends on the signals that end a process by default (SIGTERM
//! from StopContainer above all). The instance is the first process of its
//! PID namespace, for which the kernel ignores any signal without a handler,
//! so the handler does what the default would: exit with 128 + the signal.

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Signals whose default action ends a process and that a guest may be sent.
const TERMINATING: [Signal; 7] =
    [Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGALRM];

extern "C" fn exit_on(signal: libc::c_int) {
    // Safety: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + signal) };
}

pub fn end_on_termination_signals() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(exit_on), SaFlags::empty(), SigSet::empty());
    for signal in TERMINATING {
        // Safety: the handler only calls _exit.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("handle {signal}"))?;
    }
    Ok(())
}

/// Gives SIGTERM back to its default before a server installs its own
/// handler, which would otherwise chain to ours and exit mid-drain.
pub fn release_sigterm() -> Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // Safety: restoring the default action.
    unsafe { sigaction(Signal::SIGTERM, &default) }.context("reset SIGTERM")?;
    Ok(())
}
