"""Task lifecycles that ctr cannot drive, through containerd's gRPC API."""

import os
import signal
import time

import grpc
import pytest

from containerd_api import Client
from harness import WASM_RUNTIME
from test_restarts import is_gone

SLEEP = "wasmlet.test/sleep:latest"


@pytest.fixture
def api(ctd):
    client = Client(ctd.socket, ctd.namespace)
    yield client
    client.close()


def create_task(ctd, api, container_id):
    """Create the sleep container and its task, not started; returns the pid."""
    ctd.ctr("containers", "create", "--snapshotter", ctd.snapshotter,
            "--runtime", WASM_RUNTIME, SLEEP, container_id)
    return api.create_task(container_id, api.rootfs_mounts(ctd.snapshotter, container_id))


def seconds(timestamp):
    return timestamp.seconds + timestamp.nanos / 1e9


def test_delete_after_create_without_start(clean, api):
    task = "api-create-delete"
    pid = create_task(clean, api, task)
    # The instance process exists already, waiting for Start.
    assert pid > 0 and os.path.exists(f"/proc/{pid}")
    assert clean.tasks()[task] == "CREATED"
    assert os.path.ismount(os.path.join(clean.bundles, task, "rootfs"))
    api.delete_task(task)
    assert not os.path.exists(f"/proc/{pid}")
    assert task not in clean.tasks()
    clean.ctr("containers", "rm", task)
    assert clean.leftovers() == []


def test_kill_wait_state_and_delete_agree_on_the_exit(clean, api):
    task = "api-kill-wait"
    create_task(clean, api, task)
    assert api.start_task(task) > 0
    assert api.state(task)[1] == "RUNNING"
    api.kill(task, signal.SIGKILL)
    waited = api.wait(task, timeout=10)
    assert waited.exit_status == 137
    assert time.time() - 60 < seconds(waited.exited_at) <= time.time()
    process, status = api.state(task)
    assert (status, process.exit_status, process.exited_at) == ("STOPPED", 137, waited.exited_at)
    deleted = api.delete_task(task)
    assert (deleted.exit_status, deleted.exited_at) == (137, waited.exited_at)


def test_a_start_that_fails_gives_an_exit_and_delete_works(clean, api):
    task = "api-start-fails"
    pid = create_task(clean, api, task)
    os.kill(pid, signal.SIGKILL)  # the instance dies between Create and Start
    # Its exit takes a moment (its address space goes first, its pipes last).
    deadline = time.monotonic() + 10
    while not is_gone(pid):
        assert time.monotonic() < deadline, "the instance did not die"
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError):
        api.start_task(task)
    # As with runc's shim: the exit is there for Wait and State, and Delete goes ahead.
    assert api.wait(task, timeout=10).exit_status == 137
    assert api.state(task)[1] == "STOPPED"
    assert api.delete_task(task).exit_status == 137
    clean.ctr("containers", "rm", task)
    assert clean.leftovers() == []


UNSUPPORTED = {
    "exec": lambda api, task: api.exec(task, "exec-1", {"args": ["x"], "cwd": "/"}),
    "pause": lambda api, task: api.pause(task),
}


@pytest.mark.parametrize("operation", sorted(UNSUPPORTED))
def test_unsupported_operation_is_refused_clearly(clean, api, operation):
    task = f"api-{operation.replace('_', '-')}"
    create_task(clean, api, task)
    with pytest.raises(grpc.RpcError) as refused:
        UNSUPPORTED[operation](api, task)
    # containerd may wrap the shim's message, so look for it inside.
    assert "not supported for wasm tasks" in refused.value.details()
    # The refusal changed nothing: the task is still there to delete.
    assert clean.tasks()[task] == "CREATED"
    api.delete_task(task)


def test_resize_of_a_task_without_a_terminal_does_nothing(clean, api):
    # As runc's shim answers: there is no terminal to resize.
    task = "api-resize"
    create_task(clean, api, task)
    api.resize_pty(task, 80, 24)
    assert clean.tasks()[task] == "CREATED"
    api.delete_task(task)
    clean.ctr("containers", "rm", task)
    assert clean.leftovers() == []


def test_a_native_task_pauses_and_resumes_as_under_runc(clean):
    """ctr task pause freezes every process of a native container (runc
    pause), State says PAUSED, and resume lets it go on."""
    task = "native-pause"
    count = "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done"
    started = clean.run("wasmlet.test/busybox:latest", task, "/bin/sh", "-c", count, detach=True)
    assert started.returncode == 0, started.stderr
    counter = os.path.join(clean.bundles, task, "rootfs", "count")
    deadline = time.monotonic() + 10
    while not os.path.exists(counter):
        assert time.monotonic() < deadline, "the container never counted"
        time.sleep(0.05)

    def counted_on():
        before = open(counter).read()
        time.sleep(0.6)
        return open(counter).read() != before

    assert counted_on()
    clean.ctr("tasks", "pause", task)
    assert clean.tasks()[task] == "PAUSED"
    assert not counted_on(), "a paused container does not run"
    clean.ctr("tasks", "resume", task)
    assert clean.tasks()[task] == "RUNNING"
    assert counted_on(), "it runs on after resume"
    clean.ctr("tasks", "kill", "-s", "SIGKILL", task)
    clean.ctr("tasks", "rm", "-f", task, check=False)
    clean.ctr("containers", "rm", task)
    assert clean.leftovers() == []
