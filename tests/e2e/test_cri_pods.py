"""Wasm pods through containerd's CRI, one Kubernetes feature at a time: env
and args, volumes, users, memory limits, native sidecars and exec, stats,
stopping, and many pods at once. Every pod comes from a manifest in
tests/cri/manifests and is removed again, leaving nothing behind."""

import concurrent.futures
import contextlib
import copy
import os
import tempfile
import time

import grpc
import yaml

from harness import REPO_ROOT
from kubelet import read_cri_log, v1
from pods import Pod

MANIFESTS = os.path.join(REPO_ROOT, "tests", "cri", "manifests")


def manifest(name):
    with open(os.path.join(MANIFESTS, name)) as f:
        return yaml.safe_load(f)


def load(name):
    return Pod(manifest(name))


def start_running(cri, pod, sandbox_id):
    """Start every container of the pod and wait until each runs;
    returns {name: container id}."""
    ids = cri.kubelet.start_containers(pod, sandbox_id)
    for container_id in ids.values():
        cri.kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=30)
    return ids


def stdout_lines(cri, pod, name):
    """The text of a container's CRI log, stdout only, one entry per line."""
    return [text for _, stream, tag, text in read_cri_log(cri.kubelet.log_path(pod, name))
            if stream == "stdout" and tag == "F"]


@contextlib.contextmanager
def exited(cri, pod):
    """Runs a one-container pod until its container exits; yields the
    container's final status and stdout lines while the pod (and so its
    emptyDir volumes) still exists."""
    (name,) = pod.containers
    with cri.kubelet.running_pod(pod) as sandbox_id:
        ids = cri.kubelet.start_containers(pod, sandbox_id)
        status = cri.kubelet.wait_container(ids[name])
        yield status, stdout_lines(cri, pod, name)


def run_once(cri, pod):
    """Run a one-container pod until its container exits; returns the
    container's final status and its stdout lines."""
    with exited(cri, pod) as outcome:
        return outcome


def host_dir(cri, name, files):
    """A fresh host directory below the harness's temp dir, holding files
    {name: (content, mode)}, owned by root."""
    path = tempfile.mkdtemp(prefix=f"{name}-", dir=cri.ctd.dir)
    # Anyone may look inside, so only the files' own modes keep users out.
    os.chmod(path, 0o755)
    for file_name, (content, mode) in files.items():
        file_path = os.path.join(path, file_name)
        with open(file_path, "w") as f:
            f.write(content)
        os.chmod(file_path, mode)
    return path


def empty_dir(cri, pod, volume):
    """The host side of one of the pod's emptyDir volumes."""
    return os.path.join(cri.kubelet.pod_dir(pod), "volumes", "kubernetes.io~empty-dir", volume)


def test_env_and_args_reach_a_wasm_container(cri):
    status, lines = run_once(cri, load("hello-env-args.yaml"))
    assert (status.exit_code, status.reason) == (0, "Completed"), status
    assert lines == [
        "Hello from wasmlet!",
        "args: hi big world $(NOT_SET) $HOME",
        "env: HELLO_GREETING=hi",
        "env: HELLO_TARGET=hi there",
    ]
    assert cri.ctd.leftovers() == []


def test_config_dir_read_only_and_empty_dir(cri):
    pod = load("files-volumes.yaml")
    config = host_dir(cri, "config", {"input.txt": ("from the config map\n", 0o644)})
    pod.volumes["config"]["hostPath"]["path"] = config
    with exited(cri, pod) as (status, lines):
        with open(os.path.join(empty_dir(cri, pod, "data"), "output.txt")) as f:
            written = f.read()
    assert (status.exit_code, status.reason) == (0, "Completed"), (status, lines)
    assert lines[:2] == ["read: from the config map", "wrote: /data/output.txt"]
    # The kernel says EROFS; wasmtime-wasi hands that on as an I/O error.
    assert lines[2].startswith("denied: /config/denied.txt: "), lines
    assert lines[3].startswith("denied: /../escape.txt: "), lines
    assert len(lines) == 4, lines
    assert written == "written by wasm"
    assert sorted(os.listdir(config)) == ["input.txt"]
    assert cri.ctd.leftovers() == []


def run_as(cri, uid, secret):
    """The run-as-user pod with runAsUser/runAsGroup set to uid; returns
    its status, stdout lines and the owner of what it wrote to /data."""
    document = manifest("run-as-user.yaml")
    document["spec"]["securityContext"] = {"runAsUser": uid, "runAsGroup": uid}
    pod = Pod(document)
    pod.volumes["secret"]["hostPath"]["path"] = secret
    with exited(cri, pod) as (status, lines):
        written = os.stat(os.path.join(empty_dir(cri, pod, "data"), "output.txt"))
    return status, lines, (written.st_uid, written.st_gid)


def test_run_as_user_cannot_read_root_only_file(cri):
    secret = host_dir(cri, "secret", {"input.txt": ("root only\n", 0o600)})

    status, lines, owner = run_as(cri, 1000, secret)
    assert status.exit_code == 1, (status, lines)
    # The kernel's EACCES, as WASI's errno ACCES reaches the guest's std.
    assert lines[0].startswith("FAILED: read /secret/input.txt: Permission denied"), lines
    assert lines[1] == "wrote: /data/output.txt", lines
    assert owner == (1000, 1000)

    status, lines, owner = run_as(cri, 0, secret)
    assert (status.exit_code, status.reason) == (0, "Completed"), (status, lines)
    assert lines[:2] == ["read: root only", "wrote: /data/output.txt"]
    assert owner == (0, 0)
    assert cri.ctd.leftovers() == []


def termination_message(cri, pod, name):
    """What a container wrote to its terminationMessagePath (the host file
    pods.py made for it), as kubelet reads it when the container exits."""
    directory = os.path.join(cri.kubelet.pod_dir(pod), "containers", name)
    (file_name,) = os.listdir(directory)
    with open(os.path.join(directory, file_name)) as f:
        return f.read()


def test_memory_limit_oom_kills_one_container_of_two(cri):
    pod = load("memory-limit.yaml")
    with cri.kubelet.running_pod(pod) as sandbox_id:
        ids = cri.kubelet.start_containers(pod, sandbox_id)
        hog = cri.kubelet.wait_container(ids["hog"])
        sleep = cri.kubelet.container_status(ids["sleep"])
        message = termination_message(cri, pod, "hog")
    assert (hog.exit_code, hog.reason) == (137, "OOMKilled"), hog
    assert sleep.state == v1.CONTAINER_RUNNING, sleep
    # What kubelet would show as the container's last termination message.
    assert "out of memory" in message, message
    assert cri.ctd.leftovers() == []


def netns_inode(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_hybrid_pod_exec_and_shared_network(cri):
    pod = load("hybrid.yaml")
    with cri.kubelet.running_pod(pod) as sandbox_id:
        ids = start_running(cri, pod, sandbox_id)

        result = cri.kubelet.exec_sync(ids["sidecar"], ["echo", "hi"])
        assert (result.stdout, result.stderr, result.exit_code) == (b"hi\n", b"", 0)

        try:
            cri.kubelet.exec_sync(ids["app"], ["echo", "hi"])
        except grpc.RpcError as e:
            error = (e.code(), e.details())
        else:
            raise AssertionError("exec into the wasm container succeeded")
        assert error[0] == grpc.StatusCode.UNIMPLEMENTED, error
        assert "exec is not supported for wasm tasks" in error[1], error

        pause = cri.kubelet.pod_sandbox_info(sandbox_id)["pid"]
        sidecar = cri.kubelet.container_info(ids["sidecar"])["pid"]
        app = cri.kubelet.container_info(ids["app"])["pid"]
        assert netns_inode(app) == netns_inode(sidecar) == netns_inode(pause)
        assert netns_inode(app) != netns_inode(os.getpid())
    assert cri.ctd.leftovers() == []


def test_stats_of_a_running_wasm_container(cri):
    pod = load("sleep-wasm.yaml")
    with cri.kubelet.running_pod(pod) as sandbox_id:
        container_id = start_running(cri, pod, sandbox_id)["sleep"]
        one = cri.kubelet.container_stats(container_id)
        listed = cri.kubelet.list_container_stats(sandbox_id)
    assert one.attributes.id == container_id
    assert one.memory.working_set_bytes.value > 0, one
    assert one.memory.usage_bytes.value > 0, one
    assert one.cpu.usage_core_nano_seconds.value > 0, one
    assert one.cpu.timestamp > 0 and one.memory.timestamp > 0, one
    assert [s.attributes.id for s in listed] == [container_id]
    (stats,) = listed
    assert stats.memory.working_set_bytes.value > 0, stats
    assert stats.cpu.usage_core_nano_seconds.value > 0, stats
    assert cri.ctd.leftovers() == []


def memory_usage(directory):
    """Bytes a cgroup's processes use (v1 or v2)."""
    for name in ("memory.usage_in_bytes", "memory.current"):
        if os.path.exists(os.path.join(directory, name)):
            with open(os.path.join(directory, name)) as f:
                return int(f.read())
    raise AssertionError(f"no memory usage in {directory}")


def test_the_pods_cgroup_is_made_first_and_holds_the_wasm_containers_usage(cri):
    pod = load("sleep-wasm.yaml")
    pod_dir = cri.kubelet.pod_cgroup_dir(pod)
    with cri.kubelet.running_pod(pod) as sandbox_id:
        # kubelet's layout: the pod's cgroup below the root, made before RunPodSandbox.
        assert os.path.isdir(pod_dir), pod_dir
        container_id = start_running(cri, pod, sandbox_id)["sleep"]
        pid = cri.kubelet.container_info(container_id)["pid"]
        with open(f"/proc/{pid}/cgroup") as f:
            memory = next(line.split(":", 2)[2].strip() for line in f if line.split(":")[1] in ("memory", ""))
        pod_usage, container_usage = memory_usage(pod_dir), memory_usage(os.path.join(pod_dir, container_id))
    assert memory.endswith(f"/pod{pod.uid}/{container_id}"), memory
    # The instance's pages are charged to its pod.
    assert pod_usage >= container_usage > 0, (pod_usage, container_usage)
    assert not os.path.exists(pod_dir), "the pod's cgroup outlived the pod"
    assert cri.ctd.leftovers() == []


def timed_stop(cri, container_id, grace_seconds):
    """StopContainer; returns (seconds it took, the exited status)."""
    started = time.monotonic()
    cri.kubelet.stop_container(container_id, grace_seconds)
    took = time.monotonic() - started
    return took, cri.kubelet.container_status(container_id)


def test_stop_container_grace_period(cri):
    pod = load("hybrid.yaml")
    with cri.kubelet.running_pod(pod) as sandbox_id:
        ids = start_running(cri, pod, sandbox_id)
        # busybox sleep is PID 1 of its pid namespace and has no SIGTERM
        # handler, so only the SIGKILL after the grace period ends it.
        native_took, native = timed_stop(cri, ids["sidecar"], 2)
        # The wasm instance is the first process of its PID namespace too, and ends on SIGTERM.
        _, wasm = timed_stop(cri, ids["app"], 2)
    # 137 after waiting out the grace period: SIGKILL ended it.
    assert (native.state, native.exit_code) == (v1.CONTAINER_EXITED, 137), native
    assert native_took >= 1.8, native_took
    # 143: SIGTERM ended it, without waiting for the grace period's SIGKILL.
    assert (wasm.state, wasm.exit_code) == (v1.CONTAINER_EXITED, 143), wasm
    assert cri.ctd.leftovers() == []


def test_churn_of_twenty_pods(cri):
    templates = {"runc": manifest("sleep-runc.yaml"), "wasm": manifest("sleep-wasm.yaml")}
    pods = []
    for kind, template in templates.items():
        for i in range(10):
            document = copy.deepcopy(template)
            document["metadata"]["name"] = f"churn-{kind}-{i}"
            pods.append(Pod(document))

    sandbox_ids = []  # of every pod started, even if its container fails

    def start(pod):
        sandbox_id = cri.kubelet.run_pod_sandbox(pod)
        sandbox_ids.append(sandbox_id)
        return cri.kubelet.start_containers(pod, sandbox_id)["sleep"]

    def remove(sandbox_id):
        cri.kubelet.stop_pod_sandbox(sandbox_id)
        cri.kubelet.remove_pod_sandbox(sandbox_id)

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        started = [pool.submit(start, pod) for pod in pods]
        concurrent.futures.wait(started)
        try:
            for future in started:
                cri.kubelet.wait_container(future.result(), v1.CONTAINER_RUNNING, timeout=30)
            listed = cri.kubelet.runtime.ListPodSandbox(v1.ListPodSandboxRequest(), timeout=30).items
            assert sorted(s.id for s in listed if s.state == v1.SANDBOX_READY) == sorted(sandbox_ids)
            assert len(sandbox_ids) == 20
        finally:
            list(pool.map(remove, sandbox_ids))
    assert cri.ctd.leftovers() == []
