"""What a running wasm instance process is allowed: checked from the host."""

import os
import subprocess
import time

import pytest

SLEEP = "wasmlet.test/sleep:latest"
HELLO = "wasmlet.test/hello:latest"


@pytest.fixture
def sleeping(ctd):
    """A running wasm sleep task; yields (task id, instance pid)."""
    task = "iso-sleep"
    assert ctd.run(SLEEP, task, detach=True, memory_limit=96 * 1024 * 1024).returncode == 0
    line = next(l for l in ctd.ctr("tasks", "ls").stdout.splitlines() if l.startswith(task + " "))
    yield task, int(line.split()[1])
    ctd.delete_all()
    assert ctd.leftovers() == []


def status_fields(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_instance_has_no_privileges(sleeping):
    _, pid = sleeping
    status = status_fields(pid)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # a filter is installed
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, caps


def test_instance_lives_in_its_cgroup_with_its_limit(ctd, sleeping):
    task, pid = sleeping
    with open(f"/proc/{pid}/cgroup") as f:
        cgroups = f.read()
    assert f"/{ctd.namespace}/{task}" in cgroups
    limit_files = [f"/sys/fs/cgroup/memory/{ctd.namespace}/{task}/memory.limit_in_bytes",
                   f"/sys/fs/cgroup/{ctd.namespace}/{task}/memory.max"]
    limit = next(open(p).read().strip() for p in limit_files if os.path.exists(p))
    assert limit == str(96 * 1024 * 1024)


def test_instance_has_its_own_namespaces(sleeping):
    _, pid = sleeping
    for ns in ("mnt", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns


def test_instance_root_is_the_container_rootfs(sleeping):
    _, pid = sleeping
    entries = os.listdir(f"/proc/{pid}/root")
    assert "sleep.wasm" in entries
    assert "usr" not in entries and "tmp" not in entries, entries


def test_task_events_reach_containerd(ctd):
    events = subprocess.Popen(ctd.ctr_command("events"), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # let the subscription settle
        assert ctd.run(HELLO, "events-hello").returncode == 0
        time.sleep(0.3)
    finally:
        events.terminate()
    seen = [line for line in events.communicate()[0].splitlines() if "events-hello" in line]
    # Lines read: DATE TIME ZONE UTC NAMESPACE TOPIC JSON
    topics = [word for line in seen for word in line.split() if word.startswith("/tasks/")]
    assert topics[:4] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], seen
    assert ctd.leftovers() == []
