"""A shim that dies (OOM, kill -9) must not leave its wasm task behind."""

import os
import signal
import time

SLEEP = "wasmlet.test/sleep:latest"


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_killed_shim_leaves_no_instance_behind(ctd):
    task = "orphan-sleep"
    try:
        assert ctd.run(SLEEP, task, detach=True).returncode == 0
        line = next(l for l in ctd.ctr("tasks", "ls").stdout.splitlines() if l.startswith(task + " "))
        instance = int(line.split()[1])
        shim = parent_of(instance)
        assert b"containerd-shim-wasmlet-v1" in open(f"/proc/{shim}/cmdline", "rb").read()

        os.kill(shim, signal.SIGKILL)
        assert ctd.task_wait(task, timeout=10) in ("STOPPED", None)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{instance}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{instance}"), "the instance outlived containerd's cleanup"
    finally:
        ctd.delete_all()
    assert ctd.containers() == []
    assert ctd.leftovers() == []
