//! The one exit path. The containerd-shim crate's SIGCHLD reaper reports
//! every child the shim collects (instances, runc's container inits, which
//! are reparented to the shim, exec processes, and runc's own commands);
//! this module matches each exit to the process watching for it and hands
//! it over once. An exit can come before its process is watched (a fast
//! process, reaped while its Create or Start is still being answered): it
//! is kept until the watch claims it. Pids whose exits nobody wants (runc's
//! commands, instances whose setup failed) are discarded.

use std::collections::{HashMap, HashSet};
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
    /// Exits of pids not (yet) watched.
    unclaimed: HashMap<u32, Exit>,
    /// Pids whose exit is dropped when it comes.
    discarded: HashSet<u32>,
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

    /// Calls `on_exit` when `pid` exits, at once if it already has.
    pub fn watch(&self, pid: u32, on_exit: OnExit) {
        let mut index = self.index.lock().unwrap();
        match index.unclaimed.remove(&pid) {
            Some(exit) => {
                drop(index);
                on_exit(exit);
            }
            None => {
                index.watched.insert(pid, on_exit);
            }
        }
    }

    /// Forgets `pid`, whether or not its exit has arrived yet.
    pub fn discard(&self, pid: u32) {
        let mut index = self.index.lock().unwrap();
        index.watched.remove(&pid);
        if index.unclaimed.remove(&pid).is_none() {
            index.discarded.insert(pid);
        }
    }

    fn exited(&self, pid: u32, exit: Exit) {
        let mut index = self.index.lock().unwrap();
        if let Some(on_exit) = index.watched.remove(&pid) {
            drop(index);
            on_exit(exit);
        } else if !index.discarded.remove(&pid) {
            index.unclaimed.insert(pid, exit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

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
        exits.watch(10, on_exit);
        exits.exited(10, exit(3));
        exits.exited(10, exit(4));
        assert_eq!(codes.try_iter().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn an_early_exit_waits_for_its_watch() {
        let exits = Exits::default();
        exits.exited(11, exit(5));
        let (on_exit, codes) = recorder();
        exits.watch(11, on_exit);
        assert_eq!(codes.try_recv().unwrap(), 5);
    }

    #[test]
    fn discarded_exits_are_dropped_before_or_after_they_come() {
        let exits = Exits::default();
        exits.discard(12);
        exits.exited(12, exit(1));
        exits.exited(13, exit(1));
        exits.discard(13);
        let index = exits.index.lock().unwrap();
        assert!(index.unclaimed.is_empty() && index.discarded.is_empty());
    }
}
