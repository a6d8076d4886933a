//! A process the shim runs and sees exit: a task's init (a wasm instance or
//! runc's container init) or an exec. One type for both, so that Start,
//! State, Wait and the exit behave alike whichever it is.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::console::Console;
use super::stdio::IoPaths;

#[derive(Debug, Clone)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

#[derive(Debug)]
enum Phase {
    Created,
    Running,
    Stopped(Exit),
}

#[derive(Debug)]
struct Lifecycle {
    /// 0 until known: an exec gets its pid at Start.
    pid: u32,
    /// The process itself, not its number (see `Handle`).
    handle: Handle,
    phase: Phase,
}

/// How signals reach the process.
#[derive(Debug)]
enum Handle {
    /// Not known yet (an exec before its Start).
    None,
    /// Its pidfd: never another process that took its pid after it was reaped.
    Pidfd(OwnedFd),
    /// It was gone already when its pid became known.
    Gone,
    /// Only its pid: a kernel without pidfd_open.
    Pid,
}

/// A handle for `pid`, taken as soon as the pid is known.
fn handle_of(pid: u32) -> Handle {
    if pid == 0 {
        return Handle::None;
    }
    // Safety: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    match Errno::result(fd) {
        // Safety: a descriptor just returned to us, owned by nothing else.
        Ok(fd) => Handle::Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(Errno::ESRCH) => Handle::Gone,
        Err(_) => Handle::Pid,
    }
}

#[derive(Debug)]
pub struct Process {
    /// The task id for a task's init, the exec id for an exec.
    pub id: String,
    /// `task ID` or `exec ID of task ID`, for messages.
    pub name: String,
    pub io: IoPaths,
    state: Mutex<Lifecycle>,
    exited: Condvar,
    /// Its terminal, for a native process that has one.
    console: OnceLock<Console>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} was already started")]
    AlreadyStarted(String),
    #[error("{0} has already exited")]
    Exited(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Process {
    /// A created process (`name` says what it is); `pid` is 0 when it has none yet.
    pub fn new(id: &str, name: String, io: IoPaths, pid: u32) -> Self {
        let state = Mutex::new(Lifecycle { pid, handle: handle_of(pid), phase: Phase::Created });
        Process { id: id.to_string(), name, io, state, exited: Condvar::new(), console: OnceLock::new() }
    }

    /// Moves Created -> Running with `start`, which lets the process go and
    /// returns its pid, then calls `announce` with it. The state stays
    /// locked meanwhile, so an immediate exit is recorded (and told) after
    /// the start; a failed start leaves it Created.
    pub fn start(&self, start: impl FnOnce() -> anyhow::Result<u32>, announce: impl FnOnce(u32)) -> Result<u32, StartError> {
        let mut state = self.state.lock().unwrap();
        match state.phase {
            Phase::Created => {}
            Phase::Running => return Err(StartError::AlreadyStarted(self.name.clone())),
            Phase::Stopped(_) => return Err(StartError::Exited(self.name.clone())),
        }
        let pid = start()?;
        if pid != state.pid {
            state.handle = handle_of(pid);
        }
        state.pid = pid;
        state.phase = Phase::Running;
        announce(state.pid);
        Ok(state.pid)
    }

    /// Returns once a Start in progress (which holds the state) is over.
    pub fn wait_for_start(&self) {
        drop(self.state.lock().unwrap());
    }

    pub fn set_console(&self, console: Console) {
        let _ = self.console.set(console);
    }

    pub fn console(&self) -> Option<&Console> {
        self.console.get()
    }

    pub fn pid(&self) -> u32 {
        self.state.lock().unwrap().pid
    }

    /// Sends `signal` to the process through its pidfd (by pid only where
    /// the kernel has no pidfds). ESRCH: it has exited, whether or not its
    /// exit has been told yet.
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        let state = self.state.lock().unwrap();
        match &state.handle {
            Handle::Pidfd(pidfd) => {
                // Safety: pidfd_send_signal reads the descriptor and no siginfo (null).
                let sent = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal as i32, std::ptr::null::<libc::siginfo_t>(), 0) };
                Errno::result(sent).map(drop)
            }
            Handle::None | Handle::Gone => Err(Errno::ESRCH),
            Handle::Pid => kill(Pid::from_raw(state.pid as i32), signal),
        }
    }

    /// Records the exit and wakes every waiter.
    pub fn exited(&self, exit: Exit) {
        self.state.lock().unwrap().phase = Phase::Stopped(exit);
        self.exited.notify_all();
    }

    /// Ends a process that was never started with `exit` (waking its
    /// waiters) and keeps a stopped one as it is, in one step, so a Start
    /// cannot come in between; false for a running one.
    pub fn end_unless_started(&self, exit: Exit) -> bool {
        let mut state = self.state.lock().unwrap();
        match state.phase {
            Phase::Running => false,
            Phase::Stopped(_) => true,
            Phase::Created => {
                state.phase = Phase::Stopped(exit);
                self.exited.notify_all();
                true
            }
        }
    }

    /// The phase as containerd names it, the pid, and the exit once there is one.
    pub fn status(&self) -> (Status, u32, Option<Exit>) {
        let state = self.state.lock().unwrap();
        let (status, exit) = match &state.phase {
            Phase::Created => (Status::CREATED, None),
            Phase::Running => (Status::RUNNING, None),
            Phase::Stopped(exit) => (Status::STOPPED, Some(exit.clone())),
        };
        (status, state.pid, exit)
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state.lock().unwrap().phase, Phase::Running)
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state.lock().unwrap().phase, Phase::Stopped(_))
    }

    /// Blocks until the process has exited, or until `timeout` when one is given.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Exit> {
        let running = |state: &mut Lifecycle| !matches!(state.phase, Phase::Stopped(_));
        let state = self.state.lock().unwrap();
        let state = match timeout {
            None => self.exited.wait_while(state, running).unwrap(),
            Some(t) => self.exited.wait_timeout_while(state, t, running).unwrap().0,
        };
        match &state.phase {
            Phase::Stopped(exit) => Some(exit.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn exit(code: u32) -> Exit {
        Exit { code, at: Timestamp::default() }
    }

    #[test]
    fn a_process_goes_created_running_stopped() {
        let process = Process::new("p", "task p".into(), IoPaths::default(), 0);
        assert_eq!(process.status().0, Status::CREATED);
        assert_eq!(process.start(|| Ok(42), |_| ()).unwrap(), 42);
        assert_eq!(process.status().0, Status::RUNNING);
        assert!(matches!(process.start(|| Ok(43), |_| ()), Err(StartError::AlreadyStarted(_))));
        process.exited(exit(3));
        assert_eq!(process.status().2.map(|e| e.code), Some(3));
        assert!(matches!(process.start(|| Ok(44), |_| ()), Err(StartError::Exited(_))));
    }

    #[test]
    fn a_failed_start_leaves_it_created() {
        let process = Process::new("p", "task p".into(), IoPaths::default(), 7);
        assert!(matches!(process.start(|| anyhow::bail!("no"), |_| ()), Err(StartError::Failed(_))));
        let (status, pid, exit) = process.status();
        assert_eq!((status, pid, exit.is_none()), (Status::CREATED, 7, true));
    }

    #[test]
    fn an_exit_during_the_start_comes_after_its_announcement() {
        let process = Arc::new(Process::new("p", "task p".into(), IoPaths::default(), 1));
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reaper = None;
        process
            .start(
                || {
                    // The process exits at once: the reaper records it while Start is still going.
                    let (process, told) = (process.clone(), told.clone());
                    reaper = Some(std::thread::spawn(move || {
                        process.exited(exit(0));
                        told.lock().unwrap().push("exit");
                    }));
                    std::thread::sleep(Duration::from_millis(50));
                    Ok(1)
                },
                |_| told.lock().unwrap().push("start"),
            )
            .unwrap();
        reaper.unwrap().join().unwrap();
        assert_eq!(*told.lock().unwrap(), ["start", "exit"]);
    }

    #[test]
    fn a_signal_never_reaches_a_process_that_took_a_reaped_ones_pid() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let process = Process::new("p", "task p".into(), IoPaths::default(), child.id());
        process.signal(Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        // Reaped: its pid may be anyone's now, but the pidfd is still the old process.
        assert_eq!(process.signal(Signal::SIGKILL), Err(Errno::ESRCH));
    }

    #[test]
    fn waiters_wake_on_the_exit() {
        let process = Arc::new(Process::new("p", "task p".into(), IoPaths::default(), 1));
        assert!(process.wait(Some(Duration::from_millis(10))).is_none());
        let waiter = std::thread::spawn({
            let process = process.clone();
            move || process.wait(None).map(|e| e.code)
        });
        process.exited(exit(9));
        assert_eq!(waiter.join().unwrap(), Some(9));
    }
}
