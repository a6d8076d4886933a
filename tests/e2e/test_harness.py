"""Self-tests of the harness, using runc only (no wasmlet shim needed)."""

import time

from harness import RUNC_RUNTIME

BUSYBOX = "wasmlet.test/busybox:latest"


def test_runc_busybox_echo(ctd):
    res = ctd.run(BUSYBOX, "harness-echo", "/bin/echo", "hi", runtime=RUNC_RUNTIME)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hi\n"
    assert ctd.leftovers() == []


def test_runc_exit_code(ctd):
    res = ctd.run(BUSYBOX, "harness-exit", "/bin/sh", "-c", "echo oops >&2; exit 7",
                  runtime=RUNC_RUNTIME)
    assert res.returncode == 7
    assert res.stderr == "oops\n"
    assert ctd.leftovers() == []


def test_runc_detached_kill(ctd):
    res = ctd.run(BUSYBOX, "harness-sleep", "/bin/sleep", "600", runtime=RUNC_RUNTIME,
                  detach=True)
    assert res.returncode == 0, res.stderr
    try:
        assert ctd.tasks().get("harness-sleep") == "RUNNING"
        # A live task's shim, mounts and cgroups are not leftovers...
        assert ctd.leftovers(wait=0) == []
        # ...unless asked for.
        live = ctd.leftovers(include_live=True, wait=0)
        assert any("containerd-shim-runc-v2" in item for item in live), live
        # sleep is PID 1 in its namespace, so only SIGKILL ends it.
        ctd.task_kill("harness-sleep", "SIGKILL")
        assert ctd.task_wait("harness-sleep") == "STOPPED"
        assert ctd.task_delete("harness-sleep") == 137
    finally:
        ctd.delete_all()
    assert ctd.containers() == []
    assert ctd.leftovers() == []


def test_pause_sleeps_until_sigterm_then_exits_0(ctd):
    # The CRI sandbox image; as PID 1 it needs its own handlers to stop at all.
    res = ctd.run("wasmlet.test/pause:latest", "harness-pause", runtime=RUNC_RUNTIME, detach=True)
    assert res.returncode == 0, res.stderr
    try:
        time.sleep(0.3)
        assert ctd.tasks().get("harness-pause") == "RUNNING"
        ctd.task_kill("harness-pause", "SIGTERM")
        assert ctd.task_wait("harness-pause") == "STOPPED"
        assert ctd.task_delete("harness-pause") == 0
    finally:
        ctd.delete_all()
    assert ctd.leftovers() == []
