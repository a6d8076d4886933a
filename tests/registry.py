"""A private OCI registry (Debian's `docker-registry`, distribution v2) for tests.

Tests that pull images need a registry, and the machine may reach no public
one. Each Registry gets its own temp dir with config and storage, listens on
127.0.0.1 only (a free port) and speaks plain HTTP. Python stdlib only.

    reg = Registry()
    atexit.register(reg.stop)
    push.push_archive("out/images/hello.tar", f"{reg.host}/wasmlet/hello:latest")
    ... pull from http://{reg.host} ...
    reg.stop()

The package is installed with apt-get when the binary is missing. Its
maintainer scripts would start the system service (listening on :5000, every
interface) through invoke-rc.d; a policy-rc.d that forbids that is put in
place for the install, and any service that started anyway is stopped.
"""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import file_tail, terminate  # tests/e2e, on the path in the e2e suite

REGISTRY_BIN = "/usr/bin/docker-registry"
PACKAGE = "docker-registry"
# Debian's mechanism to keep maintainer scripts from starting services:
# invoke-rc.d asks this program and does nothing when it exits 101.
POLICY_RC_D = "/usr/sbin/policy-rc.d"
# What the package's own service runs with; used to find it if it started.
SYSTEM_CONFIG = "/etc/docker/registry/config.yml"
SYSTEM_INIT_SCRIPT = "/etc/init.d/docker-registry"

CONFIG_TEMPLATE = """version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def system_service_pids():
    """Pids of docker-registry processes serving the package's own config
    (the system service), as opposed to ours with a temp config."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"docker-registry" and SYSTEM_CONFIG.encode() in argv:
            pids.append(int(entry))
    return pids


def stop_system_service():
    """Stop the package's service if its postinst started one."""
    if not system_service_pids():
        return
    if os.path.exists(SYSTEM_INIT_SCRIPT):
        subprocess.run([SYSTEM_INIT_SCRIPT, "stop"], capture_output=True, timeout=30)
    for pid in system_service_pids():  # the init script failed or is gone
        os.kill(pid, signal.SIGTERM)


def ensure_installed():
    """Install Debian's docker-registry (non-interactive) if the binary is
    missing, without letting its maintainer scripts start the service."""
    if os.path.exists(REGISTRY_BIN):
        return
    own_policy = not os.path.exists(POLICY_RC_D)
    if own_policy:
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# temporary, from wasmlet's tests/registry.py\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE]):
            res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                 stdin=subprocess.DEVNULL, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` exited {res.returncode}:\n{res.stdout}{res.stderr}")
    finally:
        if own_policy:
            os.remove(POLICY_RC_D)
        stop_system_service()
    if not os.path.exists(REGISTRY_BIN):
        raise RuntimeError(f"{PACKAGE} is installed but {REGISTRY_BIN} is missing")


class Registry:
    """A docker-registry of our own on 127.0.0.1, plain HTTP, no auth.

    `host` is "127.0.0.1:PORT", the registry part of image references, and
    `url` is "http://127.0.0.1:PORT".
    """

    def __init__(self, start_timeout=30):
        ensure_installed()
        self.proc = None
        self._stopped = False
        self.dir = tempfile.mkdtemp(prefix="wasmlet-registry-", dir="/tmp")
        self.storage = os.path.join(self.dir, "storage")
        self.config = os.path.join(self.dir, "config.yml")
        self.log_path = os.path.join(self.dir, "registry.log")
        os.makedirs(self.storage)
        try:
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout):
        # Another process may take the port between free_port() and the
        # registry's bind: then it exits at once, and we try another port.
        for _ in range(5):
            self.port = free_port()
            self.host = f"127.0.0.1:{self.port}"
            self.url = f"http://{self.host}"
            with open(self.config, "w") as f:
                f.write(CONFIG_TEMPLATE.format(storage=self.storage, port=self.port))
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
            if self._wait_ready(timeout):
                return
            if "address already in use" not in self.log_tail():
                break
        raise RuntimeError(f"docker-registry did not answer on {self.url}/v2/ within {timeout}s:\n"
                           f"{self.log_tail()}")

    def _wait_ready(self, timeout):
        """True once GET /v2/ answers 200; False if the process exited or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        self._kill()
        return False

    def log_tail(self, lines=30):
        """The last lines of the registry's log, for error messages."""
        return file_tail(self.log_path, lines, "(no registry log)")

    def _kill(self):
        terminate(self.proc)

    def stop(self):
        """Stop the registry and remove its dir (config, storage, log). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
