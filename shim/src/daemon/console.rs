//! A native process's terminal (`tty: true`, `kubectl exec -it`): runc
//! makes the pty in the container and hands its master to us over a console
//! socket; the shim copies containerd's stdin FIFO into it and its output to
//! the stdout FIFO (a terminal has no stderr), and resizes it for ResizePty.

use std::fs::{File, OpenOptions};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tracing::warn;

use super::stdio::IoPaths;

/// The socket runc sends the pty master over, in a directory of its own:
/// a bundle path is too long for a socket address.
pub struct ConsoleSocket {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = nix::unistd::mkdtemp("/tmp/wasmlet-pty-XXXXXX").context("make a console socket directory")?;
        let path = dir.join("pty.sock");
        match UnixListener::bind(&path) {
            Ok(listener) => Ok(ConsoleSocket { dir, listener }),
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(err).with_context(|| format!("bind console socket {}", path.display()))
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pty.sock")
    }

    /// The pty master runc sent; runc has returned, so it is sent already
    /// or never will be.
    pub fn receive(&self) -> Result<File> {
        self.listener.set_nonblocking(true)?;
        let (connection, _) = self.listener.accept().context("runc did not connect to the console socket")?;
        connection.set_nonblocking(false)?;
        let mut name = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let message = recvmsg::<UnixAddr>(connection.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .context("receive the pty master")?;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just gave us this descriptor, and nothing else owns it.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        bail!("runc sent no pty master over the console socket")
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long an exit waits for the terminal's output to reach containerd.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// A running process's terminal.
#[derive(Debug)]
pub struct Console {
    master: File,
    /// Ends when the output copy does (every slave side closed).
    output_done: Mutex<mpsc::Receiver<()>>,
}

impl Console {
    /// Starts copying between `master` and containerd's FIFOs.
    pub fn attach(master: File, io: &IoPaths) -> Result<Self> {
        // Read-write, so that a client that goes away does not fail the copy.
        let stdout = match io.stdout.as_str() {
            "" => None,
            path => Some(OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("open stdio {path}"))?),
        };
        let (done, output_done) = mpsc::channel();
        let reader = master.try_clone()?;
        std::thread::Builder::new().name("tty-out".into()).spawn(move || {
            copy_output(reader, stdout);
            let _ = done.send(());
        })?;
        if !io.stdin.is_empty() {
            let (path, writer) = (io.stdin.clone(), master.try_clone()?);
            std::thread::Builder::new().name("tty-in".into()).spawn(move || copy_input(&path, writer))?;
        }
        Ok(Console { master, output_done: Mutex::new(output_done) })
    }

    /// TIOCSWINSZ on the master: the process gets SIGWINCH.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let size = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
        let done = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if done < 0 {
            bail!("resize the terminal: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits a little for the output still in the pty to be copied, so
    /// that the exit does not overtake it.
    pub fn drain(&self) {
        let _ = self.output_done.lock().unwrap().recv_timeout(OUTPUT_GRACE);
    }
}

/// pty output to the stdout FIFO, until the last slave side closes (EIO).
fn copy_output(mut master: File, mut stdout: Option<File>) {
    let mut buffer = [0u8; 32 * 1024];
    loop {
        let count = match master.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        if let Some(out) = &mut stdout {
            if let Err(err) = out.write_all(&buffer[..count]) {
                warn!("terminal output: {err}");
                stdout = None;
            }
        }
    }
}

/// The stdin FIFO into the pty. Opening waits for containerd's writer; its
/// end (the client detached, CloseIO) is typed as end-of-file (^D).
fn copy_input(path: &str, mut master: File) {
    let mut stdin = match File::open(path) {
        Ok(file) => file,
        Err(err) => return warn!("terminal input {path}: {err}"),
    };
    let mut buffer = [0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) if master.write_all(&buffer[..count]).is_ok() => {}
            _ => return,
        }
    }
    let _ = master.write_all(&[0x04]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;

    #[test]
    fn output_is_copied_input_typed_and_size_set() {
        let dir = tempfile::tempdir().unwrap();
        let (stdin, stdout) = (dir.path().join("stdin"), dir.path().join("stdout"));
        for fifo in [&stdin, &stdout] {
            nix::unistd::mkfifo(fifo, Mode::S_IRWXU).unwrap();
        }
        let pty = openpty(None, None).unwrap();
        let io = IoPaths { stdin: stdin.display().to_string(), stdout: stdout.display().to_string(), stderr: String::new() };
        let console = Console::attach(File::from(pty.master), &io).unwrap();
        let mut slave = File::from(pty.slave);
        // Raw mode, so that what is typed arrives as it is, without an echo.
        let mut termios = nix::sys::termios::tcgetattr(slave.as_fd()).unwrap();
        nix::sys::termios::cfmakeraw(&mut termios);
        nix::sys::termios::tcsetattr(slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &termios).unwrap();

        let mut reader = File::open(&stdout).unwrap();
        slave.write_all(b"hello").unwrap();
        let mut out = [0u8; 5];
        reader.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"hello");

        let mut writer = OpenOptions::new().write(true).open(&stdin).unwrap();
        writer.write_all(b"typed").unwrap();
        drop(writer);
        let mut typed = [0u8; 6];
        slave.read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"typed\x04", "the end of stdin comes as ^D");

        console.resize(123, 45).unwrap();
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize to the pointer.
        assert_eq!(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) }, 0);
        assert_eq!((size.ws_col, size.ws_row), (123, 45));

        drop(slave);
        let began = std::time::Instant::now();
        console.drain();
        assert!(began.elapsed() < OUTPUT_GRACE / 2, "the copy ends when the slave closes, and drain returns then");
    }
}
