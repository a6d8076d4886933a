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
    "resize_pty": lambda api, task: api.resize_pty(task, 80, 24),
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
