"""A hostile image, module or pod spec gets nothing it was not granted.

Each test performs the attack through CRI, as a pod would, and asserts that
it gets nothing; where the attack needs something of the node (a device,
a root-only file) the test first shows from the host that it is there to
be had, so that a guard that stopped working would fail the test.
"""

import hashlib
import os
import stat
import subprocess
import sys
import threading
import time

import grpc

from harness import REPO_ROOT
from kubelet import v1
from pods import Pod
from test_cri_pods import empty_dir, exited, host_dir, manifest

PACK = os.path.join(REPO_ROOT, "images", "pack.py")
PROBE_WASM = os.path.join(REPO_ROOT, "images", "workloads", "target", "wasm32-wasip1", "release", "probe.wasm")


def wasm_pod(name, image, args, user=None, volumes=()):
    """A one-container wasm pod; volumes: [(name, host path, mount path, read only)]."""
    container = {"name": name, "image": image, "args": list(args),
                 "volumeMounts": [{"name": v, "mountPath": m, "readOnly": ro} for v, _, m, ro in volumes]}
    spec = {"runtimeClassName": "wasmlet", "restartPolicy": "Never", "containers": [container],
            "volumes": [{"name": v, "hostPath": {"path": p, "type": "Directory"}} for v, p, _, _ in volumes]}
    if user is not None:
        spec["securityContext"] = {"runAsUser": user, "runAsGroup": user}
    return Pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})


# Character devices of every node that root can read from the host: the
# kernel's log (what a guest must never see) and /dev/zero.
DEVICES = {"kmsg": (1, 11), "zero": (1, 5)}


def import_image(cri, name, tmp_path, *pack_args):
    """Packs an image at test time (it carries this node's device numbers)
    and imports it into the CRI containerd; returns its reference."""
    ref = f"wasmlet.test/{name}:latest"
    archive = tmp_path / f"{name}.tar"
    subprocess.run([sys.executable, PACK, "--name", ref, "--out", str(archive), *pack_args], check=True)
    cri.ctd.import_images(str(tmp_path), (name,))
    return ref


def test_device_nodes_in_an_image_or_a_volume_cannot_be_opened(cri, tmp_path):
    nodes = [arg for name, (major, minor) in DEVICES.items() for arg in ("--device", f"/{name}=c:{major}:{minor}")]
    image = import_image(cri, "device-nodes", tmp_path,
                         "--file", f"/probe.wasm={PROBE_WASM}", "--entrypoint", "/probe.wasm", *nodes)
    volume = host_dir(cri, "devices", {})
    for name, (major, minor) in DEVICES.items():
        node = os.path.join(volume, name)
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        # From the host the node is live: root reads it.
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert len(os.read(fd, 2048)) > 0, name
        finally:
            os.close(fd)

    for path in [f"/{name}" for name in DEVICES] + [f"/volume/{name}" for name in DEVICES]:
        pod = wasm_pod("devices", image, ["read", path, "2048"], volumes=[("volume", volume, "/volume", False)])
        with exited(cri, pod) as (status, lines):
            pass
        # The kernel's EACCES (nodev), as WASI's errno reaches the guest's std.
        assert len(lines) == 1 and lines[0].startswith(f"read {path}: error: Permission denied"), (path, status, lines)
    assert cri.ctd.leftovers() == []


def start_reader_pod(secret, user):
    document = manifest("run-as-user.yaml")
    document["spec"]["securityContext"] = {"runAsUser": user, "runAsGroup": user}
    document["spec"]["containers"][0].update(image="wasmlet.test/start-reader:latest", args=[])
    pod = Pod(document)
    pod.volumes["secret"]["hostPath"]["path"] = secret
    return pod


def test_a_start_function_runs_after_start_as_the_pods_user(cri):
    secret = host_dir(cri, "secret", {"input.txt": ("the node's secret\n", 0o600)})
    with exited(cri, start_reader_pod(secret, 1000)) as (status, lines):
        pass
    assert lines == ["start: denied"], (status, lines)
    assert status.exit_code == 0, status
    # As root the same module reads the file: the guard, not the module, denied it.
    with exited(cri, start_reader_pod(secret, 0)) as (status, lines):
        pass
    assert lines == ["start: read: the node's secret"], (status, lines)
    assert cri.ctd.leftovers() == []


def test_a_start_function_that_never_returns_is_stopped_like_a_running_guest(cri):
    pod = wasm_pod("start-loop", "wasmlet.test/start-loop:latest", [])
    with cri.kubelet.running_pod(pod) as sandbox_id:
        # Create runs no guest code, so it answers well within its deadline.
        container_id = cri.kubelet.create_container(pod, sandbox_id, "start-loop")
        assert cri.kubelet.container_status(container_id).state == v1.CONTAINER_CREATED
        cri.kubelet.start_container(container_id)
        cri.kubelet.wait_container(container_id, v1.CONTAINER_RUNNING)
        time.sleep(0.5)
        assert cri.kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
        cri.kubelet.stop_container(container_id, grace_seconds=30)
        status = cri.kubelet.container_status(container_id)
    # 143: SIGTERM ended it, not the SIGKILL that follows the grace period.
    assert (status.state, status.exit_code) == (v1.CONTAINER_EXITED, 143), status
    assert cri.ctd.leftovers() == []


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def pid_namespace(pid):
    return os.readlink(f"/proc/{pid}/ns/pid")


def sleeping_pod(share_process_namespace):
    """A BestEffort wasm pod: its OOM score is 1000, above containerd's own
    (which the CRI plugin, restricted here, would not go below)."""
    document = manifest("sleep-wasm.yaml")
    document["spec"]["shareProcessNamespace"] = share_process_namespace
    del document["spec"]["containers"][0]["resources"]
    return Pod(document)


def test_the_instance_lives_in_its_own_or_its_pods_pid_namespace_never_the_hosts(cri):
    for share in (False, True):
        pod = sleeping_pod(share)
        with cri.kubelet.running_pod(pod) as sandbox_id:
            container_id = cri.kubelet.start_containers(pod, sandbox_id)["sleep"]
            cri.kubelet.wait_container(container_id, v1.CONTAINER_RUNNING)
            pid = cri.kubelet.container_info(container_id)["pid"]
            pause = cri.kubelet.pod_sandbox_info(sandbox_id)["pid"]
            namespace_pids = proc_status(pid)["NSpid"].split()
            assert pid_namespace(pid) != pid_namespace(os.getpid()), share
            if share:
                # kubectl users see it beside the sidecars: the pod's namespace.
                assert pid_namespace(pid) == pid_namespace(pause)
                assert namespace_pids[0] == str(pid) and namespace_pids[-1] != "1", namespace_pids
            else:
                assert pid_namespace(pid) != pid_namespace(pause)
                assert namespace_pids == [str(pid), "1"], namespace_pids
            # BestEffort's score, not the 0 of the containerd it inherits from.
            with open(f"/proc/{pid}/oom_score_adj") as f:
                assert int(f.read()) == 1000
            cri.kubelet.stop_container(container_id, grace_seconds=10)
            # As PID 1 of its namespace it still ends on StopContainer's SIGTERM.
            assert cri.kubelet.container_status(container_id).exit_code == 143
    assert cri.ctd.leftovers() == []


def test_the_specs_rlimits_reach_the_instance(clean):
    # ctr's default spec limits open files to 1024, below what containerd has.
    assert clean.run("wasmlet.test/sleep:latest", "rlimits", detach=True).returncode == 0
    line = next(l for l in clean.ctr("tasks", "ls").stdout.splitlines() if l.startswith("rlimits "))
    pid = int(line.split()[1])
    with open(f"/proc/{pid}/limits") as f:
        limits = {l[:26].strip(): l[26:].split()[:2] for l in f.readlines()[1:]}
    assert limits["Max open files"] == ["1024", "1024"], limits
    with open("/proc/self/limits") as f:
        assert "1024 " not in next(l for l in f if l.startswith("Max open files")), "the test needs a higher limit outside"
    clean.task_kill("rlimits", "SIGKILL")
    clean.task_wait("rlimits")
    clean.delete_all()


def compiler_processes():
    """{pid: /proc/PID/status} of every compiler process now."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            exe = os.readlink(f"/proc/{entry}/exe")
            if len(argv) > 2 and exe.endswith("containerd-shim-wasmlet-v1") and argv[1] == b"compile":
                found[int(entry)] = proc_status(entry)
        except (OSError, ValueError):
            pass
    return found


def test_untrusted_wasm_is_compiled_by_a_process_that_holds_nothing(cri):
    # No compiled comrak in the cache: this pod compiles 3 MB of wasm.
    for directory, _, files in os.walk(cri.ctd.cache_dir):
        for name in files:
            if name.endswith(".cwasm"):
                os.remove(os.path.join(directory, name))
    pod = wasm_pod("comrak", "wasmlet.test/comrak:latest", ["--version"])
    seen = {}
    with cri.kubelet.running_pod(pod) as sandbox_id:
        container_id = cri.kubelet.create_container(pod, sandbox_id, "comrak")
        starting = threading.Thread(target=cri.kubelet.start_container, args=(container_id,))
        starting.start()
        while starting.is_alive() and not seen:
            seen = compiler_processes()
            time.sleep(0.005)
        starting.join()
        status = cri.kubelet.wait_container(container_id)
    assert status.exit_code == 0, status
    assert seen, "no compiler process was seen while the pod compiled"
    for pid, fields in seen.items():
        assert fields["Uid"].split() == ["65534"] * 4 and fields["Gid"].split() == ["65534"] * 4, fields
        assert fields["Groups"].strip() == "", fields
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[caps], 16) == 0, (caps, fields)
        assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2"), fields
    assert cri.ctd.leftovers() == []


WASM_DIR = os.path.join(REPO_ROOT, "images", "workloads", "target", "wasm32-wasip1", "release")


def compiled_entry(cri, module):
    """The cached compiled code of one of the workloads, by its wasm's sha256."""
    with open(os.path.join(WASM_DIR, module), "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()
    for directory, _, files in os.walk(cri.ctd.cache_dir):
        if f"{key}.cwasm" in files:
            return os.path.join(directory, f"{key}.cwasm")
    raise AssertionError(f"no compiled {module} in the cache")


def hello_pod():
    return Pod(manifest("hello-wasm.yaml"))


def test_a_symlinked_cache_entry_is_not_followed(cri):
    for pod in (hello_pod(), wasm_pod("exit-code", "wasmlet.test/exit-code:latest", ["3"])):
        with exited(cri, pod):
            pass
    hello, other = compiled_entry(cri, "hello.wasm"), compiled_entry(cri, "exit-code.wasm")
    # Followed, the link would run exit-code's native code as hello.
    os.remove(hello)
    os.symlink(other, hello)
    with exited(cri, hello_pod()) as (status, lines):
        pass
    assert (status.exit_code, lines[:1]) == (0, ["Hello from wasmlet!"]), (status, lines)
    assert not os.path.islink(hello)
    assert "compiled code for /hello.wasm: cache Rebuilt" in cri.ctd.log_tail(200)
    assert cri.ctd.leftovers() == []


def test_a_cache_directory_others_can_write_is_refused(cri):
    os.chmod(cri.ctd.cache_dir, 0o777)
    try:
        pod = hello_pod()
        with cri.kubelet.running_pod(pod) as sandbox_id:
            container_id = cri.kubelet.create_container(pod, sandbox_id, "hello")
            try:
                cri.kubelet.start_container(container_id)
                raise AssertionError("a pod started from a cache others can write")
            except grpc.RpcError as err:
                message = err.details()
    finally:
        os.chmod(cri.ctd.cache_dir, 0o700)
    assert f"{cri.ctd.cache_dir} is writable by others (mode 777)" in message, message
    assert cri.ctd.leftovers() == []


# Swaps /shared/sub between a directory and a symlink to / for as long as it runs.
SWAPPER = "while :; do rm -rf /shared/sub; mkdir /shared/sub; rm -rf /shared/sub; ln -s / /shared/sub; done"


def mount_points_of(pid, source):
    """Where the process `pid` has `source` (a host directory) mounted."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [fields[4] for fields in (line.split() for line in f) if fields[3] == source]


def test_a_mount_target_swapped_for_a_symlink_is_not_followed(cri):
    volume = host_dir(cri, "volume", {"marker": ("the volume\n", 0o644)})
    document = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "swap", "namespace": "default"}, "spec": {
        "runtimeClassName": "wasmlet", "restartPolicy": "Never",
        "volumes": [{"name": "shared", "emptyDir": {}}, {"name": "volume", "hostPath": {"path": volume, "type": "Directory"}}],
        "containers": [
            {"name": "swapper", "image": "wasmlet.test/busybox:latest", "command": ["/bin/sh", "-c", SWAPPER],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
            {"name": "guest", "image": "wasmlet.test/sleep:latest",
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}, {"name": "volume", "mountPath": "/shared/sub"}]},
        ]}}
    pod = Pod(document)
    outcomes = []
    with cri.kubelet.running_pod(pod) as sandbox_id:
        swapper = cri.kubelet.create_container(pod, sandbox_id, "swapper")
        cri.kubelet.start_container(swapper)
        for _ in range(20):
            guest = cri.kubelet.create_container(pod, sandbox_id, "guest")
            try:
                cri.kubelet.start_container(guest)
                pid = cri.kubelet.container_info(guest)["pid"]
                outcomes.append(("mounted at", mount_points_of(pid, volume)))
                cri.kubelet.stop_container(guest, grace_seconds=5)
            except grpc.RpcError as err:
                outcomes.append(("refused", err.details()))
            cri.kubelet.remove_container(guest)
        cri.kubelet.stop_container(swapper, grace_seconds=1)
        # Once nothing swaps it, the volume is mounted where the spec says.
        sub = os.path.join(empty_dir(cri, pod, "shared"), "sub")
        if os.path.islink(sub):
            os.remove(sub)
        os.makedirs(sub, exist_ok=True)
        guest = cri.kubelet.create_container(pod, sandbox_id, "guest")
        cri.kubelet.start_container(guest)
        quiet = mount_points_of(cri.kubelet.container_info(guest)["pid"], volume)
        cri.kubelet.stop_container(guest, grace_seconds=5)
    assert quiet == ["/shared/sub"], quiet
    for outcome, detail in outcomes:
        if outcome == "refused":
            # Resolved while it was a symlink, or while it was not there.
            assert "goes through a symlink inside a volume" in detail or "mount /shared/sub" in detail, detail
        else:
            # Where the spec said, or nowhere once the swapper removed the
            # directory (which detaches a mount on it in every namespace):
            # never on the symlink's target, which nothing would detach.
            assert detail in (["/shared/sub"], []), detail
    assert cri.ctd.leftovers() == []
