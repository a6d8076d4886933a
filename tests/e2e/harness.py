"""A private containerd for end-to-end tests of the wasmlet shim.

Each Containerd gets its own temp dir with root, state, sockets, log and
config, so tests never touch the host's containerd. Python stdlib only.

Which containerd runs is chosen by version (default: $WASMLET_CONTAINERD, else
Debian 12's 1.6.20); tests/containerd.sh finds or fetches its binaries, and
the harness uses that version's ctr and runc shim too.

    ctd = Containerd()
    atexit.register(ctd.stop)
    ctd.import_images("out/images")
    res = ctd.run("wasmlet.test/hello:latest", "t1", "a", "b")
    assert res.returncode == 0 and ctd.leftovers() == []
    ctd.stop()

Run two harnesses at the same time only with different namespaces: cgroups
are named after the namespace, and stop() cleans up the namespace's cgroups.

With cri=True, containerd also serves the Kubernetes CRI API on its socket
(tests/cri has the client), in the namespace CRI always uses, k8s.io: runc
is the default runtime, runtime handler `wasmlet` is the shim, the sandbox
image is wasmlet.test/pause:latest (import it first), and pods get their
network from the test CNI plugin tests/cri/cni/wasmlet-loopback (addresses
127.0.100.x, no routable ones). Pods must put their cgroups below
`ctd.pod_cgroup_root`, which is this harness's alone, so leftovers() can
check them as it checks task cgroups; it also reports the CNI plugin's
addresses and host veths of pods that are gone. CRI harnesses may run side
by side: each has its own pod cgroup root.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINERD_VERSION = os.environ.get("WASMLET_CONTAINERD", "1.6.20")
CONTAINERD_SCRIPT = os.path.join(REPO_ROOT, "tests", "containerd.sh")
SHIM_NAME = "containerd-shim-wasmlet-v1"
# The shim that ships: make release's static (musl) build, whose allocator
# and libc are what nodes run, not the glibc build of make build.
DEFAULT_SHIM_DIR = os.path.join(REPO_ROOT, "out", "release")
WASM_RUNTIME = "io.containerd.wasmlet.v1"
RUNC_RUNTIME = "io.containerd.runc.v2"
# What a CRI RuntimeClass names as its handler, and the runtime it maps to.
WASM_HANDLER = "wasmlet"
# CRI works only in this containerd namespace.
CRI_NAMESPACE = "k8s.io"
# The CRI sandbox image, built by images/build.sh.
PAUSE_IMAGE = "wasmlet.test/pause:latest"
CNI_PLUGIN = os.path.join(REPO_ROOT, "tests", "cri", "cni", "wasmlet-loopback")
CNI_NETWORK = "wasmlet-loopback"
CGROUP_ROOT = "/sys/fs/cgroup"
# Shims listen on /run/containerd/s/<sha256 of "ADDRESS/NAMESPACE/ID">,
# whatever containerd's state dir is.
SHIM_SOCKET_DIR = "/run/containerd/s"


def report(line):
    """Prints a figure a test measured and keeps it in out/e2e/figures-VERSION.txt,
    as pytest shows no output of a test that passes."""
    print(line)
    path = os.path.join(REPO_ROOT, "out", "e2e", f"figures-{CONTAINERD_VERSION}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


class CtrError(subprocess.CalledProcessError):
    """A failed ctr call; str() includes what ctr printed."""

    def __str__(self):
        cmd = " ".join(self.cmd)
        out = (self.stderr or "").strip() or (self.output or "").strip()
        return f"`{cmd}` exited {self.returncode}: {out}"


def containerd_bin_dir(version=CONTAINERD_VERSION):
    """The dir with containerd, ctr and containerd-shim-runc-v2 of version."""
    # The first call for a version may download it: allow for a slow mirror.
    res = subprocess.run(["bash", CONTAINERD_SCRIPT, version], capture_output=True,
                         text=True, timeout=600, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"tests/containerd.sh {version} failed:\n{res.stderr}")
    return res.stdout.strip()


class Containerd:
    """A containerd daemon of our own, with helpers around `ctr`."""

    def __init__(self, shim_dir=DEFAULT_SHIM_DIR, namespace=None,
                 snapshotter=None, log_level="info", start_timeout=30,
                 version=CONTAINERD_VERSION, cri=False, wasmlet_options=None):
        if namespace is None:
            namespace = CRI_NAMESPACE if cri else "wasmlet-test"
        if cri and namespace != CRI_NAMESPACE:
            raise ValueError(f"with cri=True the namespace is {CRI_NAMESPACE}, not {namespace}")
        self.cri = cri
        self.version = version
        self.major, self.minor = (int(n) for n in version.split(".")[:2])
        self.bin_dir = containerd_bin_dir(version)
        self.ctr_path = os.path.join(self.bin_dir, "ctr")
        self.namespace = namespace
        self.shim_dir = os.path.abspath(shim_dir)
        self.proc = None
        self._stopped = False
        self._task_ids = set()  # every id seen, to find their shim sockets
        self.dir = tempfile.mkdtemp(prefix="wasmlet-e2e-", dir="/tmp")
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.ttrpc_socket = os.path.join(self.dir, "containerd-ttrpc.sock")
        self.config = os.path.join(self.dir, "config.toml")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.cache_dir = os.path.join(self.dir, "cache")
        self.fifo_dir = os.path.join(self.dir, "fifo")
        self.runc_root = os.path.join(self.dir, "runc")
        # wasmlet's runtime options (runc's keys): Root keeps the state of
        # the shim's native containers in our temp dir too.
        self.wasmlet_options = {"Root": self.runc_root, **(wasmlet_options or {})}
        self.wasmlet_options_path = os.path.join(self.dir, "wasmlet-options.toml")
        # Task bundles (and their rootfs mounts) live here, one per task id.
        self.bundles = os.path.join(self.state, "io.containerd.runtime.v2.task", namespace)
        # CRI: the CNI plugin dir, its config dir and its data (address records).
        self.cni_bin_dir = os.path.join(self.dir, "cni", "bin")
        self.cni_conf_dir = os.path.join(self.dir, "cni", "conf")
        self.cni_data_dir = os.path.join(self.dir, "cni", "data")
        # CRI: pods' cgroups go below this (kubelet would use /kubepods);
        # named after the temp dir, so no other harness ever uses it.
        self.pod_cgroup_root = "/" + os.path.basename(self.dir) + "-kubepods"
        # CRI: one hosts.toml per registry we may pull from (trust_registry).
        self.registry_hosts_dir = os.path.join(self.dir, "registry-hosts")
        # Cgroup dirs below /sys/fs/cgroup[/*] that tasks of ours live in.
        self._cgroup_roots = [self.pod_cgroup_root.strip("/")] if cri else [namespace]
        for d in (self.root, self.state, self.cache_dir, self.fifo_dir):
            os.makedirs(d)
        try:
            self.snapshotter = snapshotter or self._pick_snapshotter()
            if cri:
                self._setup_cni()
            self._write_config(log_level)
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    # ---- startup -------------------------------------------------------

    def _pick_snapshotter(self):
        """overlayfs if an overlay mount works in our temp dir, else native."""
        probe = os.path.join(self.dir, "overlay-probe")
        lower1, lower2, upper, work, merged = (
            os.path.join(probe, n) for n in ("l1", "l2", "u", "w", "m"))
        for d in (lower1, lower2, upper, work, merged):
            os.makedirs(d)
        opts = f"lowerdir={lower1}:{lower2},upperdir={upper},workdir={work}"
        res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged],
                             capture_output=True, text=True)
        ok = res.returncode == 0
        if ok:
            try:
                with open(os.path.join(merged, "x"), "w") as f:
                    f.write("x")
            except OSError:
                ok = False
            subprocess.run(["umount", merged], capture_output=True)
        shutil.rmtree(probe, ignore_errors=True)
        return "overlayfs" if ok else "native"

    def _write_config(self, log_level):
        opt_dir = os.path.join(self.dir, "opt")
        if self.major >= 2:
            # 2.x split CRI into plugins of their own (the pod sandbox
            # controller and the sandbox service that needs it among them),
            # and runs NRI by default on a socket the whole host shares
            # (/var/run/nri/nri.sock).
            config_version = 3
            disabled = ["io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
                        "io.containerd.grpc.v1.cri",
                        "io.containerd.podsandbox.controller.v1.podsandbox",
                        "io.containerd.grpc.v1.sandbox-controllers"]
            disabled = ([] if self.cri else disabled) + ["io.containerd.nri.v1.nri"]
        else:
            config_version = 2
            disabled = [] if self.cri else ["io.containerd.grpc.v1.cri"]
        disabled_list = ", ".join(f'"{p}"' for p in disabled)
        with open(self.wasmlet_options_path, "w") as f:
            f.write(toml_lines(self.wasmlet_options))
        with open(self.config, "w") as f:
            f.write(f"""version = {config_version}
root = "{self.root}"
state = "{self.state}"
disabled_plugins = [{disabled_list}]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.ttrpc_socket}"

[debug]
  level = "{log_level}"

# Keep containerd away from the host's /opt/containerd.
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt_dir}"
""")
            if self.major >= 2:
                # 2.x also runs image verifiers found in /opt/containerd.
                f.write(f"""
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{opt_dir}/image-verifier/bin"
""")
            if self.cri:
                f.write(self._cri_config())

    def _cri_config(self):
        """The CRI plugins' config: 1.x has one plugin, 2.x three."""
        # Network namespaces under containerd's state dir (our temp dir),
        # not /var/run/netns; OOM scores only as high as containerd's own,
        # as this process may not lower them (no CAP_SYS_RESOURCE).
        common = """  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
"""
        # Streaming (exec, attach, port-forward) on loopback only.
        streaming = """  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        if self.major >= 2:
            runtime = 'plugins."io.containerd.cri.v1.runtime"'
            images = 'plugins."io.containerd.cri.v1.images"'
            return f"""
[{images}]
  snapshotter = "{self.snapshotter}"

[{images}.pinned_images]
  sandbox = "{PAUSE_IMAGE}"

[{images}.registry]
  config_path = "{self.registry_hosts_dir}"

[{runtime}]
{common}
[{runtime}.cni]
  bin_dirs = ["{self.cni_bin_dir}"]
  conf_dir = "{self.cni_conf_dir}"
{self._cri_runtimes(runtime + ".containerd")}
[plugins."io.containerd.grpc.v1.cri"]
{streaming}"""
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        snapshotter = f'  snapshotter = "{self.snapshotter}"\n'
        return f"""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
{common}{streaming}
[{cri}.cni]
  bin_dir = "{self.cni_bin_dir}"
  conf_dir = "{self.cni_conf_dir}"

[{cri}.registry]
  config_path = "{self.registry_hosts_dir}"
{self._cri_runtimes(cri + ".containerd", snapshotter)}"""

    def _cri_runtimes(self, table, extra=""):
        """CRI runtime handlers: runc (the default) and wasmlet."""
        return f"""
[{table}]
{extra}  default_runtime_name = "runc"

[{table}.runtimes.runc]
  runtime_type = "{RUNC_RUNTIME}"

# runc's state in our temp dir, as `ctr run` has it.
[{table}.runtimes.runc.options]
  Root = "{self.runc_root}"

[{table}.runtimes.{WASM_HANDLER}]
  runtime_type = "{WASM_RUNTIME}"

[{table}.runtimes.{WASM_HANDLER}.options]
{self._cri_wasmlet_options()}"""

    def _cri_wasmlet_options(self):
        """1.6 passes a non-runc runtime only the path of its options file;
        later versions pass the table itself too."""
        if (self.major, self.minor) < (1, 7):
            return toml_lines({"ConfigPath": self.wasmlet_options_path})
        return toml_lines(self.wasmlet_options)

    def _setup_cni(self):
        """The test CNI plugin (also as `loopback`) and a conflist using it."""
        for d in (self.cni_bin_dir, self.cni_conf_dir, self.cni_data_dir):
            os.makedirs(d)
        for name in (CNI_NETWORK, "loopback"):
            os.symlink(CNI_PLUGIN, os.path.join(self.cni_bin_dir, name))
        conflist = {"cniVersion": "1.0.0", "name": CNI_NETWORK,
                    "plugins": [{"type": CNI_NETWORK, "dataDir": self.cni_data_dir}]}
        with open(os.path.join(self.cni_conf_dir, f"10-{CNI_NETWORK}.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)

    def _start(self, timeout):
        env = dict(os.environ)
        # containerd finds shims on PATH and hands its environment to them:
        # ours first, then the runc shim of this containerd version.
        env["PATH"] = ":".join([self.shim_dir, self.bin_dir,
                                env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        env["WASMLET_CACHE_DIR"] = self.cache_dir
        # Don't let the caller's setting change which snapshotter ctr uses.
        env.pop("CONTAINERD_SNAPSHOTTER", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True)  # a Ctrl-C of the tests should not hit it first
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            res = self.ctr("version", check=False, timeout=10)
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not answer within {timeout}s:\n"
                                   f"{res.stderr}\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self):
        """SIGKILL containerd, as a crash or an OOM kill would end it; its
        shims and tasks go on."""
        self.proc.kill()
        self.proc.wait()

    def restart(self, timeout=60):
        """Start containerd again after kill(), with the same dirs and config."""
        self._start(timeout)

    def _command(self):
        """containerd's argv."""
        return [os.path.join(self.bin_dir, "containerd"), "--config", self.config]

    def log_tail(self, lines=40):
        """The last lines of containerd's log, for error messages."""
        return file_tail(self.log_path, lines, "(no containerd log)")

    # ---- ctr -----------------------------------------------------------

    def ctr_command(self, *args):
        """argv of this version's `ctr -a SOCK -n NS ARGS...`, e.g. for Popen."""
        return [self.ctr_path, "-a", self.socket, "-n", self.namespace, *map(str, args)]

    def ctr(self, *args, check=True, timeout=60, input=None):
        """Run `ctr -a SOCK -n NS ARGS...`; returns a text CompletedProcess."""
        cmd = self.ctr_command(*args)
        res = subprocess.run(cmd, input=input, capture_output=True, text=True,
                             timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise CtrError(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def trust_registry(self, host):
        """CRI pulls from host ("127.0.0.1:PORT") over plain HTTP. containerd
        reads the hosts dir at each pull, so this works while it runs."""
        directory = os.path.join(self.registry_hosts_dir, host)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "hosts.toml"), "w") as f:
            f.write(f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')

    def import_images(self, directory, names=("*",)):
        """Import the archives <name>.tar in directory (default: all);
        returns the archives imported."""
        tars = sorted(tar for name in names for tar in glob.glob(os.path.join(directory, f"{name}.tar")))
        for tar in tars:
            self.ctr("images", "import", "--snapshotter", self.snapshotter, tar, timeout=300)
        return tars

    def run(self, image, task_id, *args, runtime=WASM_RUNTIME, env=None, mounts=(),
            memory_limit=None, rm=True, timeout=60, detach=False, extra=()):
        """`ctr run` image as container task_id with args; returns CompletedProcess.

        The return code is the task's exit code (for detach: ctr's own).
        ctr replaces the image's whole argv (entrypoint too) when args are
        given, so pass the program first: run(img, id, "/hello.wasm", "a").
        mounts are (src, dst, options) with options like "rbind:ro".
        extra is a list of further ctr run flags.
        """
        cmd = ["run", "--snapshotter", self.snapshotter, "--runtime", runtime,
               "--fifo-dir", self.fifo_dir]
        # Keep runc's state in our temp dir, not /run/containerd/runc.
        if runtime == RUNC_RUNTIME:
            cmd += ["--runc-root", self.runc_root]
        elif runtime == WASM_RUNTIME:
            cmd += ["--runtime-config-path", self.wasmlet_options_path]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        for src, dst, options in mounts:
            cmd += ["--mount", f"type=bind,src={src},dst={dst},options={options}"]
        if memory_limit is not None:
            cmd += ["--memory-limit", str(memory_limit)]
        if detach:
            cmd.append("-d")  # ctr refuses --rm together with -d
        elif rm:
            cmd.append("--rm")
        cmd += [*extra, image, task_id, *args]
        self._task_ids.add(task_id)
        try:
            return self.ctr(*cmd, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            # ctr was killed, the task was not: don't leave it running.
            self.ctr("tasks", "rm", "-f", task_id, check=False)
            if rm and not detach:
                self.ctr("containers", "rm", task_id, check=False)
            raise

    # ---- tasks and containers ---------------------------------------------

    def tasks(self):
        """{task id: status} for every task, status like RUNNING or STOPPED."""
        res = self.ctr("tasks", "ls")
        out = {}
        for line in res.stdout.splitlines()[1:]:  # skip the header
            fields = line.split()
            if len(fields) >= 3:
                out[fields[0]] = fields[2]
        self._task_ids.update(out)
        return out

    def containers(self):
        """Ids of every container in the namespace."""
        return self.ctr("containers", "ls", "-q").stdout.split()

    def task_kill(self, task_id, signal="SIGTERM", all=False):
        """Send signal (name or number) to the task's init process."""
        args = ["tasks", "kill", "-s", str(signal)]
        if all:
            args.append("--all")
        return self.ctr(*args, task_id)

    def task_wait(self, task_id, timeout=30):
        """Wait until the task is STOPPED or gone; returns its final status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.tasks().get(task_id)
            if status in (None, "STOPPED"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {status} after {timeout}s")
            time.sleep(0.1)

    def task_delete(self, task_id, force=False):
        """Delete a stopped task (force: kill it first); returns its exit code."""
        args = ["tasks", "rm"] + (["-f"] if force else []) + [task_id]
        res = self.ctr(*args)
        # ctr (1.6, 1.7 and 2.1 alike) exits 0 here and only warns about a
        # non-zero exit code.
        match = re.search(r"exit with non-zero exit code (\d+)", res.stderr)
        return int(match.group(1)) if match else 0

    def container_delete(self, container_id):
        """Delete a container and its snapshot."""
        return self.ctr("containers", "rm", container_id, check=False)

    def delete_all(self):
        """Kill and delete every task, then delete every container."""
        for task_id in self.tasks():
            self.ctr("tasks", "rm", "-f", task_id, check=False)
        for container_id in self.containers():
            self.ctr("containers", "rm", container_id, check=False)

    # ---- what tasks left behind --------------------------------------------

    def leftovers(self, include_live=False, wait=5.0):
        """Human-readable descriptions of what tasks left behind.

        Looks for processes mentioning our temp dir or socket (shims, wasm
        instances) or living in the namespace's cgroups, mounts under our temp
        dir, and task cgroup dirs; with cri also pod cgroup dirs, and the CNI
        plugin's addresses and host veths. What belongs to a task that still
        exists is not reported unless include_live. Shims exit a moment after
        their last task is deleted, so this retries for up to `wait` seconds.
        """
        deadline = time.monotonic() + wait
        while True:
            live = set() if include_live or not self._running() else set(self.tasks())
            found = (self._stray_processes(live) + self._stray_mounts(live)
                     + self._stray_cgroups(live) + self._stray_sockets(live)
                     + self._stray_network(live) + self._stray_runc_state(live))
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)

    def _running(self):
        return self.proc is not None and self.proc.poll() is None

    def _our_processes(self, live):
        """{pid: description} of processes that are ours, minus live tasks'."""
        me = os.getpid()
        needle = self.dir.encode()
        parents, found, exempt = {}, {}, set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    # comm may hold spaces, so split after its closing paren.
                    state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
                parents[pid] = int(ppid)
                if state == b"Z":
                    continue  # dead already, just not reaped yet
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                environ = b""
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        environ = f.read()
                except OSError:
                    pass
                with open(f"/proc/{pid}/cgroup") as f:
                    cgroups = [line.split(":", 2)[2].strip() for line in f if line.count(":") >= 2]
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile, or a kernel thread
            if pid == me or (self.proc is not None and pid == self.proc.pid):
                continue
            argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
            task_cgroups = [c for c in cgroups
                            if any(c.startswith(f"/{root}/") for root in self._cgroup_roots)]
            if needle not in cmdline and needle not in environ and not task_cgroups:
                continue
            found[pid] = " ".join(argv)[:200] or "(no cmdline)"
            # A shim names its task with -id; a task process sits in /<ns>/<id>
            # (CRI: <pod cgroup root>/[<qos>/]pod<uid>/<id>).
            ids = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-id"}
            ids |= {c.rstrip("/").rsplit("/", 1)[1] for c in task_cgroups}
            self._task_ids.update(ids)
            if ids & live:
                exempt.add(pid)
        # Children of a live task's shim (e.g. wasm instances) are live too.
        for pid in list(found):
            p = pid
            while p > 1 and p not in exempt:
                p = parents.get(p, 0)
            if p in exempt:
                exempt.add(pid)
        return {pid: d for pid, d in found.items() if pid not in exempt}

    def _stray_processes(self, live):
        return [f"process {pid}: {desc}" for pid, desc in sorted(self._our_processes(live).items())]

    def _mounts_under_dir(self):
        """Mount points at or below our temp dir, in mount order."""
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = _unescape(line.split()[4])
                if point == self.dir or point.startswith(self.dir + "/"):
                    points.append(point)
        return points

    def _stray_mounts(self, live):
        allowed = tuple(os.path.join(self.bundles, i) + "/" for i in live)
        # CRI mounts a pod's shm, network namespace and more outside bundles.
        live_netns = self._live_netns(live) if self.cri and live else set()
        found = []
        for p in self._mounts_under_dir():
            if allowed and p.startswith(allowed):
                continue
            if self.cri and (live & set(p.split("/")) or _inode(p) in live_netns):
                continue
            found.append(f"mount {p}")
        return found

    def _live_netns(self, live):
        """Inodes of the network namespaces of live tasks' processes."""
        inodes = set()
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] in live and fields[1].isdigit():
                inodes.add(_inode(f"/proc/{fields[1]}/ns/net"))
        return inodes - {None}

    def _cgroup_root_dirs(self):
        """/sys/fs/cgroup[/*]/<root> dirs (v1 controllers, unified, pure v2)
        of each cgroup root of ours: the namespace, or with cri the pods' root."""
        found = []
        for root in self._cgroup_roots:
            pattern_v2 = os.path.join(CGROUP_ROOT, root)
            pattern_v1 = os.path.join(CGROUP_ROOT, "*", root)
            found += [d for d in glob.glob(pattern_v2) + glob.glob(pattern_v1) if os.path.isdir(d)]
        return found

    def _stray_cgroups(self, live):
        found = []
        for ns_dir in self._cgroup_root_dirs():
            if self.cri:
                found += self._stray_pod_cgroups(ns_dir, live)
                continue
            for child in sorted(os.listdir(ns_dir)):
                if os.path.isdir(os.path.join(ns_dir, child)) and child not in live:
                    found.append(f"cgroup {os.path.join(ns_dir, child)}")
        return found

    def _stray_pod_cgroups(self, root_dir, live):
        """Below the pods' root (kubelet's layout: [<qos>/]pod<uid>/<container
        id>): a container's cgroup whose task is gone, and a pod's cgroup with
        no live container left (kubelet removes it with the pod)."""
        found = []
        for dirpath, dirnames, _ in os.walk(root_dir):
            if not os.path.basename(dirpath).startswith("pod"):
                continue
            containers = list(dirnames)
            dirnames.clear()  # below a pod there are only containers
            found += [f"cgroup {os.path.join(dirpath, c)}" for c in containers if c not in live]
            if not set(containers) & live:
                found.append(f"cgroup {dirpath}")
        return sorted(found)

    def _cni_addresses(self):
        """{address: (container id, host veth)} the CNI plugin has handed out."""
        found = {}
        for path in sorted(glob.glob(os.path.join(self.cni_data_dir, "127.*"))):
            try:
                with open(path) as f:
                    container_id, _, veth = f.read().split()[:3]
            except (OSError, ValueError):
                continue  # being written or removed right now
            found[os.path.basename(path)] = (container_id, veth)
        return found

    def _cni_veths(self):
        """Host ends of veth pairs the CNI plugin made that still exist."""
        try:
            with open(os.path.join(self.cni_data_dir, "veths")) as f:
                names = f.read().split()
        except OSError:
            return []
        return [n for n in dict.fromkeys(names) if os.path.exists(f"/sys/class/net/{n}")]

    def _stray_network(self, live):
        """CNI addresses and host veths of pods (sandbox tasks) that are gone."""
        if not self.cri:
            return []
        addresses = self._cni_addresses()
        live_veths = {veth for container_id, veth in addresses.values() if container_id in live}
        found = [f"cni address {address} of {container_id} (veth {veth})"
                 for address, (container_id, veth) in addresses.items() if container_id not in live]
        found += [f"veth {name}" for name in self._cni_veths() if name not in live_veths]
        return found

    def _shim_sockets(self):
        """{socket path: task id} of shim sockets of ours that exist."""
        found = {}
        for task_id in self._task_ids:
            key = f"{self.socket}/{self.namespace}/{task_id}".encode()
            path = os.path.join(SHIM_SOCKET_DIR, hashlib.sha256(key).hexdigest())
            if os.path.exists(path):
                found[path] = task_id
        return found

    def _stray_runc_state(self, live):
        """runc's state dirs (<root>/<namespace>/<id>) of containers gone."""
        found = []
        for root in glob.glob(os.path.join(self.runc_root, "*")):
            found += [f"runc state {os.path.join(root, c)}" for c in sorted(os.listdir(root)) if c not in live]
        return found

    def _stray_sockets(self, live):
        return [f"shim socket {path} (task {task_id})"
                for path, task_id in sorted(self._shim_sockets().items()) if task_id not in live]

    # ---- shutdown --------------------------------------------------------

    def stop(self):
        """Delete everything, stop containerd and remove all traces. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._running():
            try:
                self.delete_all()
            except Exception as e:  # keep cleaning up whatever happens
                print(f"harness: delete_all failed: {e}", file=sys.stderr)
        terminate(self.proc)
        self._kill_strays()
        # Killed shims can't remove their sockets.
        for path in self._shim_sockets():
            try:
                os.remove(path)
            except OSError:
                pass
        self._unmount_all()
        self._remove_cgroups()
        if self.cri:
            # A pod deleted without CNI DEL leaves its host veth behind.
            for name in self._cni_veths():
                subprocess.run(["ip", "link", "del", name], capture_output=True)
        if self._mounts_under_dir():
            # Never rm -rf through a mount: it could be a bind of a host dir.
            print(f"harness: mounts remain, keeping {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_strays(self):
        """SIGKILL processes of ours that outlived containerd (shims mostly)."""
        for _ in range(50):
            pids = self._our_processes(set())
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        print(f"harness: processes survive SIGKILL: {self._our_processes(set())}", file=sys.stderr)

    def _unmount_all(self):
        """Unmount everything under the temp dir, deepest (and newest) first."""
        for _ in range(20):
            points = self._mounts_under_dir()
            if not points:
                return
            # Newest first handles stacked mounts; deepest first handles nesting.
            order = sorted(enumerate(points), key=lambda ip: (ip[1].count("/"), ip[0]), reverse=True)
            for _, point in order:
                if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", point], capture_output=True)

    def _remove_cgroups(self):
        """rmdir the namespace's cgroup dirs, deepest first; busy ones stay."""
        for ns_dir in self._cgroup_root_dirs():
            for dirpath, _, _ in sorted(os.walk(ns_dir), key=lambda w: w[0].count("/"), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError as e:
                    print(f"harness: cannot remove cgroup {dirpath}: {e}", file=sys.stderr)


def terminate(proc, grace_seconds=10):
    """SIGTERM a Popen (if any, and running), SIGKILL after the grace period."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def file_tail(path, lines, missing):
    """The last lines of a log file, or `missing` if it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return missing


def toml_lines(table):
    """A flat TOML table of strings and booleans (JSON spells both alike)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


def _inode(path):
    """st_ino of path (of a namespace, for an nsfs file), or None."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _unescape(path):
    """Decode the octal escapes (\\040 for space) used in /proc mountinfo."""
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)
