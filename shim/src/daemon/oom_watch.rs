//! The kernel's OOM kills in task cgroups, seen while they happen, as
//! runc's shim sees them. They must be seen live: by the time the exit is
//! reaped, systemd may have removed an empty scope, and the cgroup's
//! counters with it. cgroup v2 counts kills in memory.events, whose changes
//! inotify reports; v1 signals an eventfd registered in cgroup.event_control.
//! One thread waits on every cgroup of the daemon.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tracing::warn;

use crate::shared::cgroup::stat_field;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The epoll token of the inotify descriptor (v1 eventfds use their fd).
const INOTIFY_TOKEN: u64 = u64::MAX;

/// Called once for each new OOM kill in a watched cgroup.
pub type OnKill = Box<dyn Fn() + Send>;

pub struct OomWatch {
    inner: Arc<Inner>,
}

struct Inner {
    epoll: Epoll,
    /// Only on cgroup v2.
    inotify: Option<Inotify>,
    watched: Mutex<HashMap<Key, Watched>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V2(WatchDescriptor),
    V1(u64),
}

struct Watched {
    /// The file with the `oom_kill` count.
    counter: PathBuf,
    kills: u64,
    on_kill: OnKill,
    /// v1: the eventfd and the memory.oom_control it listens on.
    v1: Option<(EventFd, File)>,
}

impl OomWatch {
    /// Starts the watching thread for the node's cgroup version.
    pub fn start(v2: bool) -> Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll for OOM events")?;
        let inotify = match v2 {
            true => {
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).context("inotify for OOM events")?;
                epoll.add(inotify.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_TOKEN))?;
                Some(inotify)
            }
            false => None,
        };
        let inner = Arc::new(Inner { epoll, inotify, watched: Mutex::default() });
        let waiting = inner.clone();
        std::thread::Builder::new().name("oom-watch".into()).spawn(move || waiting.run())?;
        Ok(OomWatch { inner })
    }

    /// Watches the cgroup at `path` (below the hierarchy root); returns what
    /// `unwatch` takes. Kills before this call are not reported.
    pub fn watch(&self, path: &str, on_kill: OnKill) -> Result<WatchId> {
        let inner = &self.inner;
        let (key, counter, v1) = match &inner.inotify {
            Some(inotify) => {
                let counter = Path::new(CGROUP_ROOT).join(path).join("memory.events");
                let wd = inotify.add_watch(&counter, AddWatchFlags::IN_MODIFY).with_context(|| format!("watch {}", counter.display()))?;
                (Key::V2(wd), counter, None)
            }
            None => {
                let dir = Path::new(CGROUP_ROOT).join("memory").join(path);
                let counter = dir.join("memory.oom_control");
                let control = File::open(&counter).with_context(|| format!("open {}", counter.display()))?;
                let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
                let registration = format!("{} {}", eventfd.as_fd().as_raw_fd(), control.as_raw_fd());
                std::fs::write(dir.join("cgroup.event_control"), registration).with_context(|| format!("register OOM events of {}", dir.display()))?;
                let key = Key::V1(eventfd.as_fd().as_raw_fd() as u64);
                inner.epoll.add(eventfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, eventfd.as_fd().as_raw_fd() as u64))?;
                (key, counter, Some((eventfd, control)))
            }
        };
        let kills = kill_count(&counter).unwrap_or(0);
        inner.watched.lock().unwrap().insert(key, Watched { counter, kills, on_kill, v1 });
        Ok(WatchId(key))
    }

    /// Stops watching; a cgroup already removed is fine.
    pub fn unwatch(&self, id: WatchId) {
        let Some(watched) = self.inner.watched.lock().unwrap().remove(&id.0) else { return };
        match (&self.inner.inotify, id.0) {
            (Some(inotify), Key::V2(wd)) => {
                let _ = inotify.rm_watch(wd);
            }
            _ => {
                if let Some((eventfd, _)) = &watched.v1 {
                    let _ = self.inner.epoll.delete(eventfd.as_fd());
                }
            }
        }
    }
}

/// A watch, to end it.
#[derive(Debug, Clone, Copy)]
pub struct WatchId(Key);

impl Inner {
    fn run(&self) {
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let ready = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return warn!("OOM events: epoll: {err}; no more OOM kills are seen live"),
            };
            for event in &events[..ready] {
                match event.data() {
                    INOTIFY_TOKEN => self.changed_v2(),
                    fd => self.check(Key::V1(fd)),
                }
            }
        }
    }

    fn changed_v2(&self) {
        let Some(inotify) = &self.inotify else { return };
        while let Ok(changes) = inotify.read_events() {
            for change in changes {
                self.check(Key::V2(change.wd));
            }
        }
    }

    /// Reports a kill if the cgroup's count grew. (A v1 eventfd also fires
    /// when its cgroup goes; the count is then unreadable, and the watch
    /// stays until `unwatch`, so that its key is not reused meanwhile.)
    fn check(&self, key: Key) {
        let mut watched = self.watched.lock().unwrap();
        let Some(entry) = watched.get_mut(&key) else { return };
        if let Some((eventfd, _)) = &entry.v1 {
            let _ = eventfd.read();
        }
        if let Some(kills) = kill_count(&entry.counter).filter(|kills| *kills > entry.kills) {
            entry.kills = kills;
            (entry.on_kill)();
        }
    }
}

fn kill_count(counter: &Path) -> Option<u64> {
    std::fs::read_to_string(counter).ok().map(|text| stat_field(&text, "oom_kill"))
}
