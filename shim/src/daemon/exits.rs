//! The one exit path. The containerd-shim crate's SIGCHLD reaper reports
//! every child the shim collects (instances, runc's container inits, which
//! are reparented to the shim, exec processes, runc's own commands, and any
//! orphan of a container, as the shim is a subreaper); this module matches
//! each exit to the process watching for it and hands it over once.
//!
//! An exit can come before its process is watched: a fast process, reaped
//! while its Create or exec Start is still being answered. Whoever starts a
//! process therefore opens a window first and watches the pid through it;
//! exits of unwatched pids are kept only while a window is open, and a
//! watch takes only an exit that came after its own window opened. Exits
//! nobody watches (orphans, runc's commands) are dropped once the windows
//! close, and can never land on a later process that got the same pid after
//! the pids wrapped around, however long windows overlap.
//!
//! What an exit sets off (an OOM event first, a terminal's output drained,
//! waiters woken) runs on a thread of its own: one slow exit never holds up
//! another process's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::util::timestamp;

use super::process::Exit;

/// What to do with one process's exit, called once.
pub type OnExit = Box<dyn FnOnce(Exit) + Send>;

#[derive(Default)]
pub struct Exits {
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    watched: HashMap<u32, OnExit>,
    /// Windows open now.
    windows: usize,
    /// Exits of unwatched pids that came while a window was open, each with
    /// its place in the order of arrival.
    early: HashMap<u32, (u64, Exit)>,
    /// The place the next exit gets.
    next: u64,
}

/// While it lives, exits of pids not yet watched are kept for their watch.
pub struct Window<'a> {
    exits: &'a Exits,
    /// Exits from this place on came after the window opened.
    opened: u64,
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        let mut index = self.exits.index.lock().unwrap();
        index.windows -= 1;
        if index.windows == 0 {
            index.early.clear();
        }
    }
}

impl Window<'_> {
    /// Calls `on_exit` when `pid` exits, at once if it has since the window
    /// opened.
    pub fn watch(&self, pid: u32, on_exit: OnExit) {
        let mut index = self.exits.index.lock().unwrap();
        match index.early.remove(&pid) {
            Some((place, exit)) if place >= self.opened => {
                drop(index);
                on_exit(exit);
            }
            _ => {
                index.watched.insert(pid, on_exit);
            }
        }
    }
}

impl Exits {
    /// Starts the thread that turns the reaper's notifications into exits.
    pub fn watch_reaper(self: &Arc<Self>) -> anyhow::Result<()> {
        let subscription = monitor_subscribe(Topic::Pid)?;
        let exits = self.clone();
        std::thread::Builder::new().name("exits".into()).spawn(move || {
            for event in subscription.rx.iter() {
                if let Subject::Pid(pid) = event.subject {
                    exits.exited(pid as u32, Exit { code: event.exit_code as u32, at: timestamp().unwrap_or_default() });
                }
            }
        })?;
        Ok(())
    }

    /// Opens a window: to be held from before a process is spawned until
    /// its pid is watched.
    pub fn window(&self) -> Window<'_> {
        let mut index = self.index.lock().unwrap();
        index.windows += 1;
        Window { exits: self, opened: index.next }
    }

    /// Forgets `pid` (a process whose exit nobody wants), whether or not its
    /// exit has come yet.
    pub fn discard(&self, pid: u32) {
        let mut index = self.index.lock().unwrap();
        index.watched.remove(&pid);
        index.early.remove(&pid);
    }

    fn exited(&self, pid: u32, exit: Exit) {
        let mut index = self.index.lock().unwrap();
        if let Some(on_exit) = index.watched.remove(&pid) {
            drop(index);
            hand_over(pid, on_exit, exit);
        } else if index.windows > 0 {
            let place = index.next;
            index.next += 1;
            index.early.insert(pid, (place, exit));
        }
    }
}

/// Calls `on_exit` on a thread of its own, or inline if no thread can be
/// made (a failed spawn drops its closure, so the call waits in a slot).
fn hand_over(pid: u32, on_exit: OnExit, exit: Exit) {
    type Slot = Arc<Mutex<Option<(OnExit, Exit)>>>;
    let call = |slot: &Slot| {
        if let Some((on_exit, exit)) = slot.lock().unwrap().take() {
            on_exit(exit);
        }
    };
    let slot: Slot = Arc::new(Mutex::new(Some((on_exit, exit))));
    let theirs = slot.clone();
    if std::thread::Builder::new().name(format!("exit-{pid}")).spawn(move || call(&theirs)).is_err() {
        call(&slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn exit(code: u32) -> Exit {
        Exit { code, at: Default::default() }
    }

    fn recorder() -> (OnExit, mpsc::Receiver<u32>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(move |exit: Exit| tx.send(exit.code).unwrap()), rx)
    }

    #[test]
    fn a_watched_exit_is_handed_over_once() {
        let exits = Exits::default();
        let (on_exit, codes) = recorder();
        exits.window().watch(10, on_exit);
        exits.exited(10, exit(3));
        exits.exited(10, exit(4));
        assert_eq!(codes.recv_timeout(Duration::from_secs(10)).unwrap(), 3);
        assert!(codes.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn one_exit_held_up_does_not_hold_up_another() {
        let exits = Exits::default();
        let (other_done, other) = mpsc::channel();
        let (held_done, held) = mpsc::channel();
        let window = exits.window();
        // The first exit's work waits until the second's is done: were they
        // run one after the other, neither would ever finish.
        window.watch(20, Box::new(move |_| {
            let finished = other.recv_timeout(Duration::from_secs(10)).is_ok();
            held_done.send(finished).unwrap();
        }));
        window.watch(21, Box::new(move |_| other_done.send(()).unwrap()));
        exits.exited(20, exit(0));
        exits.exited(21, exit(0));
        assert!(held.recv_timeout(Duration::from_secs(20)).unwrap(), "the second exit waited for the first");
    }

    #[test]
    fn an_early_exit_waits_for_its_watch_in_a_window() {
        let exits = Exits::default();
        let window = exits.window();
        exits.exited(11, exit(5));
        let (on_exit, codes) = recorder();
        window.watch(11, on_exit);
        drop(window);
        assert_eq!(codes.try_recv().unwrap(), 5);
    }

    #[test]
    fn unwatched_exits_are_gone_once_the_windows_close() {
        let exits = Exits::default();
        exits.exited(12, exit(1));
        let window = exits.window();
        exits.exited(13, exit(1));
        drop(window);
        // A later process that got pid 13 is not taken for dead.
        let (on_exit, codes) = recorder();
        exits.window().watch(13, on_exit);
        assert!(codes.try_recv().is_err());
        assert!(exits.index.lock().unwrap().early.is_empty());
    }

    #[test]
    fn an_exit_from_before_the_window_is_not_taken() {
        let exits = Exits::default();
        let long_create = exits.window();
        exits.exited(16, exit(1)); // an orphan's, kept for the long window
        let exec_start = exits.window();
        let (on_exit, codes) = recorder();
        exec_start.watch(16, on_exit); // a new process that got pid 16
        assert!(codes.try_recv().is_err());
        exits.exited(16, exit(7));
        assert_eq!(codes.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        drop((exec_start, long_create));
    }

    #[test]
    fn discarded_exits_are_dropped() {
        let exits = Exits::default();
        let _window = exits.window();
        exits.exited(14, exit(1));
        exits.discard(14);
        let (on_exit, _) = recorder();
        exits.window().watch(15, on_exit);
        exits.discard(15);
        let index = exits.index.lock().unwrap();
        assert!(index.early.is_empty() && index.watched.is_empty());
    }
}
