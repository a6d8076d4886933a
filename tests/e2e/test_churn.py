"""Pods by the thousand (make chaos): wasm, hybrid and runc pods created,
run to their end and removed, a few at a time, beside a resident pod whose
shim takes a container and an exec every few cycles. Nothing may leak: no
process, mount, cgroup, netns, runc state, shim socket or file descriptor,
and the resident shim's memory stays flat. Then fifty pods at once."""

import concurrent.futures
import itertools
import os
import time

import pytest

from conftest import cri_session
from harness import report
from kubelet import v1
from test_restarts import IMAGES, args, native, pod, pods, shim_of, started

CYCLES = int(os.environ.get("WASMLET_CHURN_CYCLES", "1000"))
WORKERS = 4
# The resident pod takes a wasm container and an exec every this many cycles.
RESIDENT_EVERY = 5
KINDS = {
    "wasm": lambda name: pod(name, {"job": ("exit-code", args("0"))}),
    "hybrid": lambda name: pod(name, {"sidecar": ("busybox", native("true")), "job": ("exit-code", args("0"))}),
    "runc": lambda name: pod(name, {"job": ("busybox", native("true"))}, handler=""),
}


@pytest.fixture(scope="module")
def own_cri():
    with cri_session(image_names=IMAGES) as session:
        yield session


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def cycle(kubelet, kind, number):
    """One pod's life: run, every container to its end, stop, remove."""
    manifest = KINDS[kind](f"churn-{kind}-{number}")
    with pods(kubelet, manifest) as (sandbox_id,):
        ids = [started(kubelet, manifest, sandbox_id, name) for name in manifest.containers]
        for container_id in ids:
            status = kubelet.wait_container(container_id, timeout=60)
            assert (status.exit_code, status.reason) == (0, "Completed"), (kind, status)


def resident_round(kubelet, manifest, sandbox_id, sidecar, number):
    """A wasm container run to its end and an exec, in the resident pod."""
    job = kubelet.create_container(manifest, sandbox_id, "job")
    kubelet.start_container(job)
    assert kubelet.wait_container(job, timeout=60).exit_code == 0
    kubelet.remove_container(job)
    assert kubelet.exec_sync(sidecar, ["echo", str(number)]).stdout == f"{number}\n".encode()


def settled(measure, good, within=30):
    """The measure once `good` holds of it, or the last one after `within`
    seconds: a descriptor still held for a pod that is just going (a
    connection to its exiting shim, say) goes by itself; a leak stays."""
    deadline = time.monotonic() + within
    while True:
        now = measure()
        if good(now) or time.monotonic() >= deadline:
            return now
        time.sleep(0.5)


def test_a_thousand_pod_cycles_leak_nothing(own_cri):
    ctd, kubelet = own_cri
    resident = pod("resident", {"sidecar": ("busybox", native("sleep", "36000")), "job": ("exit-code", args("0"))})
    kinds = itertools.cycle(KINDS)
    with pods(kubelet, resident) as (resident_sandbox,):
        sidecar = started(kubelet, resident, resident_sandbox, "sidecar")
        kubelet.wait_container(sidecar, v1.CONTAINER_RUNNING, timeout=30)
        shim = shim_of(ctd, resident_sandbox)
        warm_up = max(CYCLES // 10, WORKERS * 2)
        baseline = {}
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            done = 0
            for first in range(0, CYCLES, WORKERS):
                batch = [pool.submit(cycle, kubelet, next(kinds), n) for n in range(first, min(first + WORKERS, CYCLES))]
                for future in batch:
                    future.result()
                done += len(batch)
                if (first // WORKERS) % RESIDENT_EVERY == 0:
                    resident_round(kubelet, resident, resident_sandbox, sidecar, first)
                if not baseline and done >= warm_up:
                    baseline = {"containerd fds": fds(ctd.proc.pid), "shim fds": fds(shim), "shim pss kB": pss_kb(shim)}
        took = time.monotonic() - began
        assert ctd.leftovers() == []
        final = settled(lambda: {"containerd fds": fds(ctd.proc.pid), "shim fds": fds(shim), "shim pss kB": pss_kb(shim)},
                        lambda now: now["containerd fds"] <= baseline["containerd fds"] and now["shim fds"] == baseline["shim fds"])
        report(f"churn: {CYCLES} pod cycles ({', '.join(KINDS)} in turn, {WORKERS} at a time) in {took:.0f} s: "
              f"{CYCLES / took:.2f} cycles/s; resident shim: {CYCLES // WORKERS // RESIDENT_EVERY} containers and execs; "
              f"after {warm_up} cycles {baseline}, at the end {final}")
        assert final["shim fds"] == baseline["shim fds"], (baseline, final)
        assert final["containerd fds"] <= baseline["containerd fds"], (baseline, final)
        # Flat: within 1 MiB of the warm shim (allocator noise), not growing per pod.
        assert final["shim pss kB"] <= baseline["shim pss kB"] + 1024, (baseline, final)
    assert ctd.leftovers() == []


def test_fifty_pods_at_once(own_cri):
    ctd, kubelet = own_cri
    manifests = [pod(f"at-once-{n}", {"sleep": ("sleep", {})}) for n in range(50)]

    def run(manifest):
        sandbox_id = kubelet.run_pod_sandbox(manifest)
        return sandbox_id, started(kubelet, manifest, sandbox_id, "sleep")

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        runs = [pool.submit(run, m) for m in manifests]
        results = [future.result() for future in runs]
        try:
            for _, container_id in results:
                kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=120)
            report(f"50 wasm pods started at once, all running after {time.monotonic() - began:.1f} s")
        finally:
            def remove(result):
                kubelet.stop_pod_sandbox(result[0])
                kubelet.remove_pod_sandbox(result[0])
            list(pool.map(remove, results))
    assert ctd.leftovers() == []
