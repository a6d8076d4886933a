"""Faults of the node cache (make chaos): the disk fills while compiled code
is written, an entry is truncated, and a pod with almost no CPU holds the
compile lock of a module that other pods need. Pods still run, with a clear
line in the shim log, no half-written entry stays, and nobody waits for the
lock longer than a bounded time."""

import fcntl
import glob
import os
import re
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import cri_session
from harness import report
from test_restarts import args, pod, pods, started

IMAGES = ("pause", "comrak")


@pytest.fixture(scope="module")
def cache_disk():
    """A small disk of its own for the cache (root's and 0755, as a trusted
    cache must be), outside the containerd's dir, whose leftovers it is not."""
    place = tempfile.mkdtemp(prefix="wasmlet-cache-disk-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", place], check=True)
    try:
        yield place
    finally:
        subprocess.run(["umount", place], check=True)
        os.rmdir(place)


@pytest.fixture(scope="module")
def own_cri(cache_disk):
    with cri_session(image_names=IMAGES, wasmlet_options={"CacheDir": cache_disk}) as session:
        yield session


def comrak(name, **extra):
    return pod(name, {"comrak": ("comrak", {**args("--version"), **extra})})


def run_comrak(kubelet, manifest):
    """Runs the pod to its end; returns the container id and its status."""
    with pods(kubelet, manifest) as (sandbox_id,):
        container_id = started(kubelet, manifest, sandbox_id, "comrak")
        status = kubelet.wait_container(container_id, timeout=120)
    assert (status.exit_code, status.reason) == (0, "Completed"), status
    return container_id


def cache_outcome(ctd, container_id):
    """What the shim log says the cache did for the container."""
    pattern = re.compile(r"compiled code for \S+: cache (.*) task=" + container_id)
    found = [m.group(1) for m in map(pattern.search, ctd.log_tail(2000).splitlines()) if m]
    assert found, f"no cache line for {container_id}"
    return found[-1]


def entries(cache):
    """Every compiled entry (and temporary file) in the cache, by name."""
    names = [os.path.basename(p) for p in glob.glob(os.path.join(cache, "*", "*"))]
    return sorted(n for n in names if n.endswith((".cwasm", ".sha256")) or n.startswith(".tmp-"))


def resize(cache, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", cache], check=True)


def test_a_full_disk_runs_uncached_and_leaves_no_entry(own_cri, cache_disk):
    ctd, kubelet = own_cri
    cache = cache_disk
    resize(cache, "2m")  # smaller than comrak's compiled code
    assert entries(cache) == []
    try:
        for attempt in range(2):  # and the next start compiles again
            said = cache_outcome(ctd, run_comrak(kubelet, comrak(f"full-disk-{attempt}")))
            assert said.startswith("Uncached") and "No space left on device" in said, said
            assert entries(cache) == []
    finally:
        resize(cache, "64m")
    assert cache_outcome(ctd, run_comrak(kubelet, comrak("room-again"))) == "Miss"
    assert cache_outcome(ctd, run_comrak(kubelet, comrak("stored"))) == "Hit"
    assert len(entries(cache)) == 2, entries(cache)
    # A truncated entry is found out and rebuilt.
    [artifact] = glob.glob(os.path.join(cache, "*", "*.cwasm"))
    size = os.path.getsize(artifact)
    os.truncate(artifact, size // 3)
    assert cache_outcome(ctd, run_comrak(kubelet, comrak("truncated"))) == "Rebuilt"
    assert os.path.getsize(artifact) == size
    assert ctd.leftovers() == []


def locked_by_someone(lock_file):
    try:
        with open(lock_file, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except (BlockingIOError, FileNotFoundError):
        return os.path.exists(lock_file)


def lift_cpu_limits(cgroup_dir):
    """Lets every cgroup below `cgroup_dir` use all the CPU (v1 or v2)."""
    for dirpath, _, files in os.walk(cgroup_dir):
        for name, value in (("cpu.cfs_quota_us", "-1"), ("cpu.max", "max")):
            if name in files:
                with open(os.path.join(dirpath, name), "w") as f:
                    f.write(value)


def test_a_starved_compile_holds_no_one_up_for_long(own_cri, cache_disk):
    ctd, kubelet = own_cri
    cache = cache_disk
    for path in glob.glob(os.path.join(cache, "*", "*.cwasm")):
        os.remove(path)  # comrak is compiled anew
    # 10m: a hundredth of a core, minutes for comrak's compile.
    starved = comrak("starved", resources={"limits": {"cpu": "10m", "memory": "512Mi"}})
    created = {}
    with pods(kubelet, starved) as (starved_sandbox,):
        # CRI makes the task, and so compiles, at StartContainer.
        creating = threading.Thread(target=lambda: created.update(id=started(kubelet, starved, starved_sandbox, "comrak")))
        creating.start()
        deadline = time.monotonic() + 60
        locks = lambda: glob.glob(os.path.join(cache, "*", "*.lock"))  # noqa: E731
        while not (locks() and locked_by_someone(locks()[0])):
            assert time.monotonic() < deadline, "the starved pod never took the compile lock"
            time.sleep(0.1)
        began = time.monotonic()
        other = run_comrak(kubelet, comrak("not-held-up"))
        waited = time.monotonic() - began
        said = cache_outcome(ctd, other)
        assert said.startswith("Uncached") and "held the compile lock" in said, said
        # The starved one is let go, so its pod can be removed.
        lift_cpu_limits(kubelet.pod_cgroup_dir(starved, "cpu"))
        creating.join(timeout=120)
        assert "id" in created
        report(f"a pod waited {waited:.1f} s for a compile lock held by a starved pod, then compiled itself")
    assert ctd.leftovers() == []
