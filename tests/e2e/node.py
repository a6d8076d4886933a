"""A throwaway Kubernetes node for the node installer's tests.

The node's root is a temp dir laid out like a node of one distribution
(plain containerd, or k3s with its config template); wasmlet-node-installer
works on it as on a real host root, and a containerd of the suite's version
runs with whatever configuration the installer leaves there: the file
itself, or for k3s what k3s renders from its template.

systemd is played by a stand-in `systemctl` in the node's root (a busybox
script): the installer runs it chrooted, as it runs the host's, and the
script asks this harness to restart containerd, which counts restarts.

    node = Node("containerd", original_config_text)
    node.run_installer("install")          # the release binary
    assert node.restarts == 1
    node.stop()
"""

import os
import shutil
import subprocess
import threading
import time

from harness import REPO_ROOT, Containerd, terminate

RELEASE_DIR = os.path.join(REPO_ROOT, "out", "release")
INSTALLER = os.path.join(RELEASE_DIR, "wasmlet-node-installer")
SHIM = os.path.join(RELEASE_DIR, "containerd-shim-wasmlet-v1")
BUSYBOX = "/bin/busybox"
RUNC_STATE_DIRS = ["/run/containerd", "/run/containerd/runc", "/run/containerd/runc/k8s.io"]

# Where each distribution keeps what the installer touches (host paths).
DISTRIBUTIONS = {
    "containerd": {
        "config": "/etc/containerd/config.toml",
        "socket": "/run/containerd/containerd.sock",
        "unit": "containerd",
    },
    "k3s": {
        # k3s renders this from its base template and the user's template.
        "config": "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        "socket": "/run/k3s/containerd/containerd.sock",
        "unit": "k3s",
    },
}
K3S_BASE = '{{ template "base" . }}'

# The stand-in systemctl: hand the request to the harness, wait for its answer.
CONTAINERD_VERSION_SCRIPT = """#!/bin/sh
# Stand-in for the node's containerd binary (tests/e2e/node.py): its version.
echo "containerd github.com/containerd/containerd v{version} node-stand-in"
"""

SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl (tests/e2e/node.py): the test harness does the work.
echo "$*" > /run/systemctl.request.new && mv /run/systemctl.request.new /run/systemctl.request
while [ ! -e /run/systemctl.done ]; do sleep 0.05; done
status=$(cat /run/systemctl.done)
rm /run/systemctl.done
exit "$status"
"""


class Node(Containerd):
    """A node's root with containerd's config, and a CRI containerd run
    from it. `original` is the config text before any install (for k3s,
    what its base template renders); `template` a k3s user template."""

    def __init__(self, distribution, original, template=None, **containerd_options):
        self.distribution = distribution
        self.paths = DISTRIBUTIONS[distribution]
        self.original = original
        self.user_template = template
        self.restarts = 0
        # (start, end) of each restart, by time.monotonic().
        self.restart_times = []
        self.refuse_next_start = False  # a restart leaves containerd down
        self.systemctl_calls = []
        self._closing = threading.Event()
        self._systemctl = None
        # runc's default state dirs, which the node's pods use as a real
        # node's do: removed at the end if this node made them.
        self._made_runc_dirs = [d for d in RUNC_STATE_DIRS if not os.path.exists(d)]
        super().__init__(cri=True, **containerd_options)
        self._systemctl = threading.Thread(target=self._serve_systemctl, daemon=True)
        self._systemctl.start()

    # ---- the node's root -----------------------------------------------

    def path(self, host_path):
        """Where a host path of the node is."""
        return os.path.join(self.host, host_path.lstrip("/"))

    def read(self, host_path):
        """The file's bytes, or None if it does not exist."""
        try:
            with open(self.path(host_path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, host_path, text):
        os.makedirs(os.path.dirname(self.path(host_path)), exist_ok=True)
        with open(self.path(host_path), "w") as f:
            f.write(text)

    @property
    def template_path(self):
        """The k3s template wasmlet's runtime goes into."""
        directory = os.path.dirname(self.paths["config"])
        name = "config-v3.toml.tmpl" if self.major >= 2 else "config.toml.tmpl"
        return f"{directory}/{name}"

    def _write_config(self, log_level):
        """Lays out the node's root (called by Containerd before start)."""
        self.host = os.path.join(self.dir, "host")
        for d in ("etc/systemd/system", "usr/local/bin", "usr/bin", "bin", "run"):
            os.makedirs(os.path.join(self.host, d))
        self.write(f"/etc/systemd/system/{self.paths['unit']}.service", "")
        # The machine's cgroups, which the installer checks a node has.
        os.symlink("/sys", self.path("/sys"))
        shutil.copy(BUSYBOX, self.path("/bin/busybox"))
        for applet in ("sh", "sleep", "cat", "rm", "mv"):
            os.symlink("busybox", self.path(f"/bin/{applet}"))
        self.write("/usr/bin/systemctl", SYSTEMCTL)
        os.chmod(self.path("/usr/bin/systemctl"), 0o755)
        # What the node's `containerd --version` says (its binary runs on this machine).
        self.write("/usr/bin/containerd", CONTAINERD_VERSION_SCRIPT.format(version=self.version))
        os.chmod(self.path("/usr/bin/containerd"), 0o755)
        # The node's own /opt/containerd, not the machine's.
        opt_dir = os.path.join(self.dir, "opt")
        self.original = self.original.replace("/opt/containerd", opt_dir)
        self.write(self.paths["config"], self.original)
        if self.user_template is not None:
            self.write(self.template_path, self.user_template)
        # containerd finds shims on its PATH: the installer's link goes here.
        self.shim_dir = self.path("/usr/local/bin")
        self.socket = self.path(self.paths["socket"])
        self.log_level = log_level

    def running_config(self):
        """The file containerd runs with: the node's config, with the
        directories it imports and the shim it names mapped into the node's
        root (containerd runs on this machine, whose own /etc/containerd
        and /opt are not the node's). Imported drop-ins are copied, mapped
        the same way, into a directory of the test's own."""
        text = self.read(self.paths["config"]).decode()
        if "imports" not in text and "/opt/wasmlet/" not in text:
            return self.path(self.paths["config"])
        drop_ins = os.path.join(self.dir, "conf.d.running")
        shutil.rmtree(drop_ins, ignore_errors=True)
        os.makedirs(drop_ins)
        conf_d = self.path("/etc/containerd/conf.d")
        for name in os.listdir(conf_d) if os.path.isdir(conf_d) else []:
            with open(os.path.join(conf_d, name)) as f:
                mapped = self._mapped(f.read())
            with open(os.path.join(drop_ins, name), "w") as f:
                f.write(mapped)
        rendered = os.path.join(self.dir, "config.running.toml")
        with open(rendered, "w") as f:
            f.write(self._mapped(text.replace('"/etc/containerd/conf.d/', f'"{drop_ins}/')
                                 .replace('"/etc/containerd/', f'"{self.path("/etc/containerd")}/')))
        return rendered

    def _mapped(self, text):
        """A config's text with wasmlet's host paths in the node's root."""
        return text.replace('"/opt/wasmlet/', f'"{self.path("/opt/wasmlet")}/')

    def _render(self):
        """k3s's part at start: the user template, with the base in it."""
        if self.distribution != "k3s":
            return
        template = self.read(self.template_path)
        rendered = self.original
        if template is not None:
            rendered = template.decode().replace(K3S_BASE, self.original)
        self.write(self.paths["config"], rendered)

    def _command(self):
        return [os.path.join(self.bin_dir, "containerd"), "--config", self.running_config(),
                "--address", self.socket, "--root", self.root, "--state", self.state,
                "--log-level", self.log_level]

    def _start(self, timeout):
        self._render()
        super()._start(timeout)

    # ---- systemd's part ------------------------------------------------

    def _serve_systemctl(self):
        request, done = self.path("/run/systemctl.request"), self.path("/run/systemctl.done")
        while not self._closing.wait(0.05):
            if not os.path.exists(request):
                continue
            with open(request) as f:
                args = f.read().split()
            os.remove(request)
            self.systemctl_calls.append(args)
            status = 0
            if args == ["restart", self.paths["unit"]]:
                try:
                    self._restart()
                except Exception as e:  # the installer sees a failed restart
                    print(f"node: restart failed: {e}")
                    status = 1
            else:
                status = 1
            with open(done + ".new", "w") as f:
                f.write(f"{status}\n")
            os.rename(done + ".new", done)

    def _restart(self):
        started = time.monotonic()
        terminate(self.proc)
        self.restarts += 1
        try:
            if self.refuse_next_start:
                self.refuse_next_start = False
                return
            self._start(30)
        finally:
            self.restart_times.append((started, time.monotonic()))

    # ---- the installer -------------------------------------------------

    def run_installer(self, *args, **options):
        """run_installer on this node's root."""
        return run_installer(self.host, *args, **options)

    def serving(self):
        return self._running() and self.ctr("version", check=False).returncode == 0

    def stop(self):
        self._closing.set()
        if self._systemctl is not None:
            self._systemctl.join(timeout=5)
        super().stop()
        for d in reversed(self._made_runc_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass  # not empty: leftovers() reports what is in it


def run_installer(host_root, command, *args, shim=SHIM, env=None, timeout=180):
    """Runs the release's installer on a node root; returns the CompletedProcess."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "info",
                "WASMLET_HOST_ROOT": host_root, "WASMLET_SHIM": shim, **(env or {})}
    return subprocess.run([INSTALLER, command, *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def patch_for_this_machine(text, major):
    """containerd's default config with what this machine needs changed:
    OOM scores only as high as containerd's own (no CAP_SYS_RESOURCE here),
    and NRI's host-wide socket left alone. (Node gives each node its own
    /opt/containerd.)"""
    replacements = [("restrict_oom_score_adj = false", "restrict_oom_score_adj = true")]
    if major >= 2:
        # NRI (on by default in 2.x) would listen on /var/run/nri/nri.sock.
        replacements.append(("[plugins.'io.containerd.nri.v1.nri']\n    disable = false",
                             "[plugins.'io.containerd.nri.v1.nri']\n    disable = true"))
    for old, new in replacements:
        if old not in text:
            raise AssertionError(f"containerd's default config has no {old!r}")
        text = text.replace(old, new)
    return text


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(0.1)
