#!/usr/bin/env python3
"""Run wasm tasks (wasmlet) next to runc tasks on a private containerd, then
wasm, wasi:http, hybrid and runc pods through containerd's CRI as kubelet would, and
print what each did. Needs the shim built and out/images filled:
`make demo` does both first.
"""

import atexit
import glob
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(TESTS, "e2e"))
sys.path.insert(0, os.path.join(TESTS, "cri"))

from harness import DEFAULT_SHIM_DIR, REPO_ROOT, RUNC_RUNTIME, SHIM_NAME, WASM_RUNTIME, Containerd  # noqa: E402

IMAGES_DIR = os.path.join(REPO_ROOT, "out", "images")
EXCERPT = 70  # characters of output shown per task


def printable(text):
    """Escape control characters (error texts may hold a NUL) but keep newlines."""
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)


def excerpt(text):
    """Output on one line, cut to fit the table."""
    flat = " | ".join(line.strip() for line in printable(text).splitlines() if line.strip())
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT - 3] + "..."


def show_command(args, env=None):
    words = [f"{k}={v}" for k, v in (env or {}).items()] + list(args)
    return shlex.join(words) or "(image default)"


class Demo:
    def __init__(self, ctd):
        self.ctd = ctd
        self.rows = []
        self.errors = []  # (task, full text) of tasks that could not run

    def add(self, task, runtime, command, code, output):
        short = "wasmlet" if runtime == WASM_RUNTIME else "runc"
        self.rows.append((task, short, command, str(code), excerpt(output)))
        # "ctr: ..." is ctr's own error (e.g. the shim failed), not task output.
        if code == "error" or "ctr: " in output:
            self.errors.append((task, printable(output.strip())))

    def run(self, task, image, args=(), runtime=WASM_RUNTIME, env=None, mounts=(), note=None,
            label=None):
        """One foreground task; errors become table rows, not exceptions."""
        try:
            res = self.ctd.run(image, task, *args, runtime=runtime, env=env, mounts=mounts)
            code, output = res.returncode, res.stdout + res.stderr
        except Exception as e:
            code, output = "error", str(e)
        if note:
            output = output.rstrip("\n") + "\n" + note()
        self.add(task, runtime, label or show_command(args, env), code, output)

    def run_and_kill(self, task, image):
        """Start a task detached, SIGTERM it, and report its exit code."""
        command = "(detached) then SIGTERM"
        try:
            res = self.ctd.run(image, task, detach=True)
            if res.returncode != 0:
                self.add(task, WASM_RUNTIME, command, "error", res.stderr or res.stdout)
                self.ctd.delete_all()
                return
            time.sleep(1)  # let it get going before the signal
            self.ctd.task_kill(task, "SIGTERM")
            self.ctd.task_wait(task, timeout=15)
            code = self.ctd.task_delete(task)
            self.ctd.container_delete(task)
            self.add(task, WASM_RUNTIME, command, code, "killed by SIGTERM (143 expected)")
        except Exception as e:
            self.add(task, WASM_RUNTIME, command, "error", str(e))
            self.ctd.ctr("tasks", "rm", "-f", task, check=False)
            self.ctd.container_delete(task)

    def print_table(self):
        header = ("TASK", "RUNTIME", "COMMAND", "EXIT", "OUTPUT")
        widths = [max(len(row[i]) for row in [header] + self.rows) for i in range(len(header))]
        for row in [header] + self.rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if self.errors:
            print("\nErrors in full:")
            for task, text in self.errors:
                print(f"  {task}: " + text.replace("\n", "\n    "))


MANIFESTS = os.path.join(TESTS, "cri", "manifests")


def run_pods():
    """The pods part: a wasm pod, a wasi:http pod (the JSON API), a hybrid
    pod (wasm server + runc sidecar) and a runc pod, from the manifests in
    tests/cri/manifests."""
    from kubelet import Kubelet, read_cri_log  # generates the CRI stubs
    from pod_http import request_in_pod
    from pods import Pod

    ctd = Containerd(cri=True)
    atexit.register(ctd.stop)
    ctd.import_images(IMAGES_DIR)
    kubelet = Kubelet(ctd.socket, os.path.join(ctd.dir, "kubelet"), ctd.pod_cgroup_root)
    rows = []

    def completed(manifest):
        pod = Pod.load(os.path.join(MANIFESTS, manifest))
        (name,) = pod.containers
        with kubelet.running_pod(pod) as sandbox:
            container = kubelet.start_containers(pod, sandbox)[name]
            status = kubelet.wait_container(container)
            log = " | ".join(entry[3] for entry in read_cri_log(kubelet.log_path(pod, name)))
            return f"exit {status.exit_code} ({status.reason}); log: {log}"

    def http_service(manifest):
        pod = Pod.load(os.path.join(MANIFESTS, manifest))
        with kubelet.running_pod(pod) as sandbox:
            container = kubelet.start_containers(pod, sandbox)["web"]
            order = json.dumps({"id": "demo", "currency": "eur", "customer": {"name": "Ada", "country": "DE"},
                                "items": [{"sku": "tea", "name": "Tea", "unit_price_cents": 450, "quantity": 4}]})
            pid = kubelet.pod_sandbox_info(sandbox)["pid"]
            (status, body), (usage_status, _) = request_in_pod(pid, [("POST", "/invoice", order), "/"])
            kubelet.stop_container(container, grace_seconds=10)
            stopped = kubelet.container_status(container)
        total = json.loads(body)["total_cents"] if status == 200 else body
        return (f"POST /invoice -> {status}, total_cents {total}; GET / -> {usage_status}; "
                f"SIGTERM -> exit {stopped.exit_code} ({stopped.reason})")

    def hybrid():
        pod = Pod.load(os.path.join(MANIFESTS, "hybrid-tcp.yaml"))
        with kubelet.running_pod(pod) as sandbox:
            ids = kubelet.start_containers(pod, sandbox)
            command = ["/bin/sh", "-c", "nc 127.0.0.1 8080 </dev/null"]
            for _ in range(50):  # the server may not listen yet
                res = kubelet.exec_sync(ids["sidecar"], command)
                if res.exit_code == 0:
                    break
                time.sleep(0.1)
            return f"sidecar `nc 127.0.0.1 8080` got: {res.stdout.decode().strip()!r}"

    for manifest, handler, what in [("hello-wasm.yaml", "wasmlet", completed),
                                     ("json-api.yaml", "wasmlet", http_service),
                                     ("hybrid-tcp.yaml", "wasmlet", lambda _: hybrid()),
                                     ("busybox-echo.yaml", "runc", completed)]:
        try:
            result = what(manifest)
        except Exception as e:
            result = f"error: {printable(str(e))}"
        rows.append((manifest, handler, result))
    kubelet.close()
    left = ctd.leftovers()
    ctd.stop()
    print()
    header = ("POD MANIFEST", "HANDLER", "WHAT HAPPENED")
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(2)]
    for row in [header] + rows:
        print(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
    print("\npods leftovers: " + ("none" if not left else "\n  " + "\n  ".join(left)))


def main():
    if not glob.glob(os.path.join(IMAGES_DIR, "*.tar")):
        sys.exit(f"no images in {IMAGES_DIR}: run make images")
    shim = os.path.join(DEFAULT_SHIM_DIR, SHIM_NAME)
    if not os.path.exists(shim):
        print(f"warning: {shim} is missing (run make release); wasm tasks will fail", file=sys.stderr)

    ctd = Containerd(namespace="wasmlet-demo")
    atexit.register(ctd.stop)
    # Host dirs for the files workload: read-only input, writable output.
    host = tempfile.mkdtemp(prefix="wasmlet-demo-files-")
    atexit.register(shutil.rmtree, host, True)
    config, data = os.path.join(host, "config"), os.path.join(host, "data")
    os.makedirs(config)
    os.makedirs(data)
    with open(os.path.join(config, "input.txt"), "w") as f:
        f.write("hello from the host\n")

    def read_output():
        try:
            with open(os.path.join(data, "output.txt")) as f:
                return f"host sees data/output.txt: {f.read()!r}"
        except OSError as e:
            return f"host cannot read data/output.txt: {e.strerror}"

    print(f"containerd: {ctd.dir} (snapshotter {ctd.snapshotter})")
    ctd.import_images(IMAGES_DIR)

    demo = Demo(ctd)
    demo.run("wasm-hello", "wasmlet.test/hello:latest", ["/hello.wasm", "a", "b"],
             env={"HELLO_NAME": "demo"})
    demo.run("wasm-exit-code", "wasmlet.test/exit-code:latest")
    demo.run("wasm-trap", "wasmlet.test/trap:latest")
    demo.run("wasm-files", "wasmlet.test/files:latest",
             mounts=[(config, "/config", "rbind:ro"), (data, "/data", "rbind:rw")],
             note=read_output, label="(image default), /config ro, /data rw")
    demo.run_and_kill("wasm-sleep", "wasmlet.test/sleep:latest")
    demo.run("runc-echo", "wasmlet.test/busybox:latest", ["/bin/echo", "hello from runc"],
             runtime=RUNC_RUNTIME)
    demo.run("runc-hello", "wasmlet.test/hello-native:latest", runtime=RUNC_RUNTIME)

    print()
    demo.print_table()
    print()
    left = ctd.leftovers()
    print("leftovers: " + ("none" if not left else "\n  " + "\n  ".join(left)))
    ctd.stop()
    run_pods()


if __name__ == "__main__":
    main()
