"""Faults of the processes around a pod (make chaos): containerd killed and
restarted under live pods, a shim daemon killed, an instance killed from
outside, and an exec start that fails (a failed Start is in
test_task_api.py: CRI creates the task only at its Start). Every exit reaches
containerd with the reason CRI would give under runc's shim, and nothing
is left behind."""

import contextlib
import os
import signal
import subprocess
import time

import grpc
import pytest

from conftest import cri_session
from harness import report
from kubelet import v1
from pods import Pod

IMAGES = ("pause", "sleep", "busybox", "memory-hog", "exit-code")


def pod(name, containers, handler="wasmlet"):
    """A Pod manifest of `containers` ({name: (image, args)}), as kubelet gets it."""
    spec = {"restartPolicy": "Never", "containers": [
        {"name": c, "image": f"wasmlet.test/{image}:latest", **extra}
        for c, (image, extra) in containers.items()]}
    if handler:
        spec["runtimeClassName"] = handler
    return Pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                "spec": spec})


def args(*values):
    return {"args": list(values)}


def native(*command):
    return {"command": list(command)}


@pytest.fixture(scope="module")
def own_cri():
    """A CRI containerd of this module's own: these tests kill it."""
    with cri_session(image_names=IMAGES) as session:
        yield session


def wait_for_cri(kubelet, timeout=60):
    """Until containerd's CRI answers again after a restart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return kubelet.version()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def shim_of(ctd, sandbox_id):
    """The pid of the shim daemon serving the pod `sandbox_id`."""
    pattern = f"containerd-shim-wasmlet-v1 .*-id {sandbox_id}( |$)"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(found) == 1, f"wasmlet shims of sandbox {sandbox_id}: {found}"
    return int(found[0])


def kill(pid):
    assert pid > 1, f"not a process to kill: {pid}"  # 0 or -1 would hit the test itself
    os.kill(pid, signal.SIGKILL)


def is_gone(pid):
    """Gone, or a zombie (its files closed, its exit on its way)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def pods(kubelet, *manifests):
    """Sandboxes of the pods, removed (stopped first) at the end."""
    sandboxes = []
    try:
        for manifest in manifests:
            sandboxes.append(kubelet.run_pod_sandbox(manifest))
        yield sandboxes
    finally:
        for sandbox_id in sandboxes:
            kubelet.stop_pod_sandbox(sandbox_id)
            kubelet.remove_pod_sandbox(sandbox_id)


def started(kubelet, manifest, sandbox_id, name):
    container_id = kubelet.create_container(manifest, sandbox_id, name)
    kubelet.start_container(container_id)
    return container_id


def outcome(status):
    return (status.exit_code, status.reason)


def test_containerd_killed_and_restarted_loses_no_exit(own_cri):
    ctd, kubelet = own_cri
    # Each runs its shim from before the crash; the runc pod is the yardstick.
    down = pod("ends-while-down", {"sleep": ("sleep", args("4"))})
    down_runc = pod("ends-while-down-runc", {"sleep": ("busybox", native("sleep", "4"))}, handler="")
    later = pod("ends-after-restart", {"sleep": ("sleep", args("25"))})
    hybrid = pod("hybrid", {"sidecar": ("busybox", native("sleep", "3600")), "app": ("sleep", {}),
                            "hog": ("memory-hog", {"resources": {"limits": {"memory": "64Mi"}}}),
                            "fails": ("exit-code", args("3"))})
    killed = pod("killed-after-restart", {"sleep": ("sleep", {})})
    with pods(kubelet, down, down_runc, later, hybrid, killed) as (s_down, s_runc, s_later, s_hybrid, s_killed):
        ids = {
            "down": started(kubelet, down, s_down, "sleep"),
            "runc": started(kubelet, down_runc, s_runc, "sleep"),
            "later": started(kubelet, later, s_later, "sleep"),
            "sidecar": started(kubelet, hybrid, s_hybrid, "sidecar"),
            "app": started(kubelet, hybrid, s_hybrid, "app"),
            "killed": started(kubelet, killed, s_killed, "sleep"),
        }
        for name in ("down", "runc", "later", "sidecar", "app", "killed"):
            kubelet.wait_container(ids[name], v1.CONTAINER_RUNNING, timeout=30)
        instance = kubelet.container_info(ids["killed"])["pid"]

        ctd.kill()
        time.sleep(8)  # the four-second sleepers end while containerd is away
        ctd.restart()
        wait_for_cri(kubelet)

        # Exits from while it was away: reported at least as well as runc's
        # shim reports them (containerd 1.7's CRI makes those 255, Unknown).
        under_runc = outcome(kubelet.wait_container(ids["runc"], timeout=30))
        under_wasmlet = outcome(kubelet.wait_container(ids["down"], timeout=30))
        report(f"an exit while containerd was down: {under_wasmlet} under wasmlet, {under_runc} under runc's shim")
        assert under_wasmlet in {(0, "Completed"), under_runc}, (under_wasmlet, under_runc)
        # The pods that still run keep running, and their exits come through
        # the shims' events, which reconnected.
        for name in ("sidecar", "app", "killed"):
            assert kubelet.container_status(ids[name]).state == v1.CONTAINER_RUNNING, name
        assert kubelet.container_status(ids["later"]).state == v1.CONTAINER_RUNNING, "ended too early to tell"
        assert outcome(kubelet.wait_container(ids["later"], timeout=40)) == (0, "Completed")
        kill(instance)
        assert outcome(kubelet.wait_container(ids["killed"], timeout=30)) == (137, "Error")
        # New containers in a pod whose shim lived through the restart.
        hog = started(kubelet, hybrid, s_hybrid, "hog")
        assert outcome(kubelet.wait_container(hog, timeout=60)) == (137, "OOMKilled")
        fails = started(kubelet, hybrid, s_hybrid, "fails")
        assert outcome(kubelet.wait_container(fails, timeout=30)) == (3, "Error")
        # Stop works for both kinds of container of the pod.
        kubelet.stop_container(ids["sidecar"], grace_seconds=1)
        kubelet.stop_container(ids["app"], grace_seconds=5)
        assert outcome(kubelet.container_status(ids["app"])) == (143, "Error")
        assert kubelet.container_status(ids["sidecar"]).exit_code == 137
    assert ctd.leftovers() == []


def test_killed_shim_takes_its_instances_and_leaves_nothing(own_cri):
    ctd, kubelet = own_cri
    hybrid = pod("shim-killed", {"sidecar": ("busybox", native("sleep", "3600")), "app": ("sleep", {})})
    for attempt in range(2):  # the same pod again once the first is gone
        with pods(kubelet, hybrid) as (sandbox_id,):
            sidecar = started(kubelet, hybrid, sandbox_id, "sidecar")
            app = started(kubelet, hybrid, sandbox_id, "app")
            for container_id in (sidecar, app):
                kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=30)
            instance = kubelet.container_info(app)["pid"]
            shim = shim_of(ctd, sandbox_id)
            if attempt == 1:
                break
            kill(shim)
            # The parent-death signal ends the instance at once, before any cleanup.
            assert wait_gone(instance, 5), "the instance outlived its shim"
            for container_id in (sidecar, app):
                assert kubelet.wait_container(container_id, timeout=30).state == v1.CONTAINER_EXITED
        assert ctd.leftovers() == []
    assert ctd.leftovers() == []


def test_a_failed_exec_start_gives_an_exit(own_cri):
    ctd, kubelet = own_cri
    hybrid = pod("exec-fails", {"sidecar": ("busybox", native("sleep", "3600"))})
    with pods(kubelet, hybrid) as (sandbox_id,):
        sidecar = started(kubelet, hybrid, sandbox_id, "sidecar")
        kubelet.wait_container(sidecar, v1.CONTAINER_RUNNING, timeout=30)
        shim = shim_of(ctd, sandbox_id)
        threads = len(os.listdir(f"/proc/{shim}/task"))
        # A probe that runs a binary the image lacks: each exec start fails,
        # and its Wait (which CRI issues before Start) returns.
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as failed:
                kubelet.exec_sync(sidecar, ["/no/such/probe"], timeout=20)
            assert "no such file" in failed.value.details().lower(), failed.value.details()
        assert len(os.listdir(f"/proc/{shim}/task")) < threads + 5, "a thread per failed exec"
        assert kubelet.exec_sync(sidecar, ["true"]).exit_code == 0

    assert ctd.leftovers() == []
