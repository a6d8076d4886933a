//! Native containers (a pod's sandbox, sidecars, any non-wasm entrypoint)
//! run by the runc binary with their full OCI spec, as containerd's runc
//! shim would. The container's init is reparented to this shim (a
//! subreaper), so its exit arrives like an instance process's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};
use serde::{Deserialize, Serialize};

use super::exits::Exits;
use super::runtime_options::RuntimeOptions;
use super::stdio::IoPaths;

/// Where runc keeps container state when containerd gives no root.
const DEFAULT_ROOT: &str = "/run/containerd/runc";

pub struct Runc {
    binary: String,
    root: PathBuf,
    systemd_cgroup: bool,
    /// The shim's exits, which must not keep those of runc's own commands.
    exits: Arc<Exits>,
}

impl std::fmt::Debug for Runc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Runc({} --root {})", self.binary, self.root.display())
    }
}

/// How runc was run, kept in the task record: enough for `shim delete` to
/// remove a container whose daemon died (`Runc::of_record`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncRecord {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

impl Runc {
    /// What `shim delete` needs to remove this runc's containers.
    pub fn record(&self) -> RuncRecord {
        RuncRecord { binary: self.binary.clone(), root: self.root.clone(), systemd_cgroup: self.systemd_cgroup }
    }

    /// runc as a task record says it was run, for `shim delete`: no exits
    /// to keep there, but the containerd-shim crate's reaper runs, so runc
    /// is waited for through it as in the daemon.
    pub fn of_record(record: &RuncRecord) -> Self {
        let RuncRecord { binary, root, systemd_cgroup } = record.clone();
        Runc { binary, root, systemd_cgroup, exits: Arc::default() }
    }

    /// runc as configured by containerd's runtime options.
    pub fn new(options: &RuntimeOptions, namespace: &str, exits: Arc<Exits>) -> Self {
        let or_default = |value: &str, default: &str| if value.is_empty() { default.to_string() } else { value.to_string() };
        let root = or_default(&options.root, DEFAULT_ROOT);
        Runc {
            binary: or_default(&options.binary_name, "runc"),
            root: Path::new(&root).join(namespace),
            systemd_cgroup: options.systemd_cgroup,
            exits,
        }
    }

    /// `runc create`: the container's init waits for `start`; returns its
    /// pid. With a console socket, runc makes a terminal and sends its
    /// master there; otherwise the init gets containerd's FIFOs.
    pub fn create(&self, id: &str, bundle: &Path, io: &IoPaths, console: Option<&Path>) -> Result<u32> {
        let pid_file = bundle.join("init.pid");
        let mut command = self.command(bundle);
        command.arg("create").arg("--bundle").arg(bundle).arg("--pid-file").arg(&pid_file);
        with_stdio(&mut command, io, console)?;
        command.arg(id);
        self.run(command, bundle, "create")?;
        read_pid(&pid_file)
    }

    /// `runc exec --detach`: runs `process_file` (an OCI process) in the
    /// container, on a terminal when a console socket is given; returns the
    /// new process's pid, a child of this shim.
    pub fn exec(&self, id: &str, bundle: &Path, process_file: &Path, pid_file: &Path, io: &IoPaths, console: Option<&Path>) -> Result<u32> {
        let mut command = self.command(bundle);
        command.arg("exec").arg("--detach").arg("--process").arg(process_file).arg("--pid-file").arg(pid_file);
        with_stdio(&mut command, io, console)?;
        command.arg(id);
        self.run(command, bundle, "exec")?;
        read_pid(pid_file)
    }

    pub fn start(&self, id: &str, bundle: &Path) -> Result<()> {
        let mut command = self.command(bundle);
        command.arg("start").arg(id);
        self.run(command, bundle, "start")
    }

    pub fn kill(&self, id: &str, bundle: &Path, signal: i32, all: bool) -> Result<()> {
        let mut command = self.command(bundle);
        command.arg("kill");
        if all {
            command.arg("--all");
        }
        command.arg(id).arg(signal.to_string());
        self.run(command, bundle, "kill")
    }

    /// `runc pause` (freezes the container's cgroup) or `runc resume`.
    pub fn freeze(&self, id: &str, bundle: &Path, frozen: bool) -> Result<()> {
        let action = if frozen { "pause" } else { "resume" };
        let mut command = self.command(bundle);
        command.arg(action).arg(id);
        self.run(command, bundle, action)
    }

    /// `runc update`: new cgroup limits for the container; `resources` is
    /// the OCI LinuxResources JSON containerd sent.
    pub fn update(&self, id: &str, bundle: &Path, resources: &[u8]) -> Result<()> {
        let file = bundle.join("update-resources.json");
        std::fs::write(&file, resources).with_context(|| format!("write {}", file.display()))?;
        let mut command = self.command(bundle);
        command.arg("update").arg("--resources").arg(&file).arg(id);
        let updated = self.run(command, bundle, "update");
        let _ = std::fs::remove_file(&file);
        updated
    }

    /// Kills the container if it still runs and removes its state and cgroup.
    pub fn delete(&self, id: &str, bundle: &Path) -> Result<()> {
        let mut command = self.command(bundle);
        command.arg("delete").arg("--force").arg(id);
        self.run(command, bundle, "delete")
    }

    fn command(&self, bundle: &Path) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root).arg("--log").arg(log_path(bundle)).arg("--log-format").arg("json");
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // containerd under systemd (Type=notify) has NOTIFY_SOCKET, which the
        // daemon inherits: runc would then proxy the container's sd_notify
        // through a socket of its own, which containerd's runc shim never
        // asks of it.
        command.env_remove("NOTIFY_SOCKET");
        command
    }

    /// Runs one runc command to its end. The shim's reaper collects every
    /// child, so the exit code comes from its notification, not from wait().
    fn run(&self, mut command: Command, bundle: &Path, action: &str) -> Result<()> {
        let exits = monitor_subscribe(Topic::Pid).context("subscribe to process exits")?;
        let child = command.spawn().with_context(|| format!("run {} {action}", self.binary))?;
        drop(command);
        let pid = child.id();
        let code = wait_pid(pid as i32, exits);
        self.exits.discard(pid);
        if code != 0 {
            bail!("runc {action} failed: {}", last_error(&log_path(bundle)).unwrap_or_else(|| format!("exit code {code}")));
        }
        Ok(())
    }
}

/// A terminal's console socket for runc, or containerd's FIFOs as its stdio
/// (which the container's process inherits).
fn with_stdio(command: &mut Command, io: &IoPaths, console: Option<&Path>) -> Result<()> {
    match console {
        Some(socket) => command.arg("--console-socket").arg(socket),
        None => command.stdin(io.stdin()?).stdout(io.stdout()?).stderr(io.stderr()?),
    };
    Ok(())
}

/// Whether a failed runc command failed because the container's process
/// is already gone (runc says "container not running", or knows it no more).
pub fn is_not_running(err: &anyhow::Error) -> bool {
    let message = format!("{err:#}");
    ["container not running", "process already finished", "container does not exist"].iter().any(|m| message.contains(m))
}

fn read_pid(pid_file: &Path) -> Result<u32> {
    let pid = std::fs::read_to_string(pid_file).with_context(|| format!("read {}", pid_file.display()))?;
    pid.trim().parse().with_context(|| format!("parse the pid in {}", pid_file.display()))
}

fn log_path(bundle: &Path) -> PathBuf {
    bundle.join("runc.log")
}

/// The message of the last error runc logged (JSON lines with level and msg).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["level"] == "error")
        .find_map(|entry| entry["msg"].as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_choose_binary_root_and_cgroup_driver() {
        let mut options = RuntimeOptions::default();
        (options.binary_name, options.root, options.systemd_cgroup) = ("/usr/sbin/runc".into(), "/run/custom".into(), true);
        let runc = Runc::new(&options, "k8s.io", Arc::default());
        assert_eq!((runc.binary.as_str(), runc.root.as_path(), runc.systemd_cgroup), ("/usr/sbin/runc", Path::new("/run/custom/k8s.io"), true));
    }

    #[test]
    fn defaults_without_options() {
        let runc = Runc::new(&RuntimeOptions::default(), "default", Arc::default());
        assert_eq!((runc.binary.as_str(), runc.root.as_path()), ("runc", Path::new("/run/containerd/runc/default")));
    }

    #[test]
    fn last_logged_error_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        std::fs::write(&log, "{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"/nope\\\": not found\"}\n").unwrap();
        assert_eq!(last_error(&log).as_deref(), Some("exec: \"/nope\": not found"));
    }
}
