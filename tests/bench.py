#!/usr/bin/env python3
"""Benchmarks wasmlet against runc:

  (a) start latency: wall time of `ctr run --rm` of the hello program,
      as wasm (wasmlet) and as a static ELF (runc), interleaved;
  (b) idle memory: PSS per sleeping task, counting the shim and every
      process below it.

(a) and (b) run on one private containerd through ctr. Then, unless
--no-pods, a second private containerd of the same version serves CRI with
both runtimes (runc the default, wasmlet as handler `wasmlet`), and pods go
through it the way kubelet runs them (tests/cri):

  (c) pod start latency: from RunPodSandbox to the first line of the
      container's CRI log, a hello pod of each side, interleaved;
  (d) idle pod memory: PSS per sleeping pod, counting the shims serving
      the pods and every process below them (pause, instances, containers);
  (e) the large module (comrak, 3 MB of wasm; natively a static ELF under
      runc): pod start with compiling (an empty node cache) and cached,
      interleaved with the hello pod; and PSS per idle pod (comrak waiting
      on stdin) at 1, 10 and 50 pods of each side;
  (f) HTTP: requests/s, p50 and p99 of the JSON API component in a wasm
      pod, under `wasmtime serve`, and as a native server in a runc pod,
      loaded by wrk (tests/bench_http.py);
  (g) the largest real program (Yosys, 69 MB of wasm from PyPI): a pod's
      first and cached start to exit, beside `wasmtime run` of it compiling
      and precompiled (tests/bench_programs.py).

Prints a table and writes the figures to out/bench/results-<UTC>.json and
out/bench/latest.json. Missing a goal is reported, never a failure exit.
Needs root, the shim built and out/images filled: `make bench` does both.
"""

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import threading
import time

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(TESTS_DIR, "e2e"))
# The CRI client (kubelet, pods): imported only inside the pod benchmarks,
# since importing it generates the CRI stubs, which --no-pods does without.
sys.path.insert(0, os.path.join(TESTS_DIR, "cri"))

from harness import (CONTAINERD_VERSION, DEFAULT_SHIM_DIR, REPO_ROOT, RUNC_RUNTIME, SHIM_NAME,  # noqa: E402
                     WASM_RUNTIME, Containerd)
from bench_http import bench_http, http_goals, print_http_table  # noqa: E402
from bench_programs import bench_programs, forget_compiled, print_programs_table  # noqa: E402

IMAGES_DIR = os.path.join(REPO_ROOT, "out", "images")
OUT_DIR = os.path.join(REPO_ROOT, "out", "bench")
# Our own namespace: cgroups are named after it, so tests can run meanwhile.
NAMESPACE = "wasmlet-bench"
GREETING = "Hello from wasmlet!"
WARMUPS = 2  # the first wasm run compiles the module into the node cache
SETTLE_SECONDS = 2.0  # let idle tasks finish starting up before measuring
RUNNING_TIMEOUT = 60.0

SIDES = ("wasmlet", "runc")
# Image, args and shim binary of each side.
HELLO = {
    "wasmlet": ("wasmlet.test/hello:latest", ()),
    "runc": ("wasmlet.test/hello-native:latest", ("/hello",)),
}
SLEEP = {
    "wasmlet": ("wasmlet.test/sleep:latest", ()),
    "runc": ("wasmlet.test/busybox:latest", ("/bin/sleep", "3600")),
}
RUNTIMES = {"wasmlet": WASM_RUNTIME, "runc": RUNC_RUNTIME}
SHIMS = {"wasmlet": SHIM_NAME, "runc": "containerd-shim-runc-v2"}
NEEDED_TARS = ("hello.tar", "hello-native.tar", "sleep.tar", "busybox.tar")
POD_TARS = ("pause.tar", "comrak.tar", "comrak-native.tar", "json-api.tar", "json-api-native.tar", "yosys.tar")

# (e): comrak renders a one-line document from a hostPath; idle, it reads
# stdin, which CRI keeps open.
LARGE = {
    "wasmlet": ("wasmlet.test/comrak:latest", ()),
    "runc": ("wasmlet.test/comrak-native:latest", ("/comrak",)),
}
LARGE_WASM = os.path.join(REPO_ROOT, "out", "comrak", "wasm32-wasip1", "bin", "comrak.wasm")
LARGE_DOCUMENT = "# Hello from comrak\n"
LARGE_FIRST_LINE = "<h1>Hello from comrak</h1>"
LARGE_ARGS = ("--config-file", "none", "/docs/hello.md")
FIRST_STARTS = 5  # compiling starts per side: each costs seconds
LARGE_POD_COUNTS = (1, 10, 50)

# Pods: each side's RuntimeClass (runc is CRI's default, so none), the name
# of every bench pod's one container, and how fast to watch its log.
RUNTIME_CLASSES = {"wasmlet": "wasmlet", "runc": None}
CONTAINER = "main"
LOG_POLL_SECONDS = 0.002
FIRST_LINE_TIMEOUT = 30.0

# Goals are on the wasmlet/runc ratio: lower is better.
LATENCY_GOAL = 0.8
MEMORY_GOAL = 0.5
POD_LATENCY_GOAL = 0.7
POD_MEMORY_GOAL = 0.5
# (e)'s goals are not against runc: the cached large module starts at most
# this much later than the hello pod, and 50 pods of it cost at most this
# share of one pod's PSS each (they share its compiled code).
LARGE_CACHED_EXTRA_MS_GOAL = 30.0
LARGE_DENSITY_GOAL = 1 / 3


class BenchError(Exception):
    """Something went wrong that makes the figures meaningless."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def p90(samples):
    """90th percentile by nearest rank: no interpolation between samples."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def failure(ctd, what, res):
    """A BenchError describing a failed ctr call, with containerd's log."""
    return BenchError(f"{what} failed (exit {res.returncode})\n"
                      f"--- stdout ---\n{res.stdout.strip()}\n"
                      f"--- stderr ---\n{res.stderr.strip()}\n"
                      f"--- containerd log (tail) ---\n{ctd.log_tail()}")


def cri_failure(ctd, what, error):
    """A BenchError describing a failed CRI call or pod, with containerd's log."""
    import grpc
    if isinstance(error, grpc.RpcError):
        error = f"CRI error {error.code().name}: {error.details()}"
    return BenchError(f"{what} failed: {error}\n"
                      f"--- containerd log (tail) ---\n{ctd.log_tail()}")


# ---- start latency, shared by (a) and (c) ----------------------------------

def interleaved(timed, runs, what, sides=SIDES):
    """WARMUPS untimed calls of timed(side, id) per side, then `runs` timed
    ones; median and p90 of each side's milliseconds."""
    for i in range(WARMUPS):
        for side in sides:
            timed(side, f"warm-{side}-{i}")
    log(f"{what}: {runs} runs per side")
    samples = {side: [] for side in sides}
    # Interleaved, so drift (other load, caches) hits both sides equally.
    for i in range(runs):
        for side in sides:
            samples[side].append(timed(side, f"lat-{side}-{i}"))
    return {side: stats(s) for side, s in samples.items()}


def stats(samples):
    return {"median_ms": statistics.median(samples), "p90_ms": p90(samples), "samples_ms": samples}


# ---- (a) start latency ----------------------------------------------------

def timed_hello(ctd, side, task_id):
    """One `ctr run --rm` of hello; returns its wall time in ms."""
    image, args = HELLO[side]
    start = time.perf_counter()
    res = ctd.run(image, task_id, *args, runtime=RUNTIMES[side])
    elapsed_ms = (time.perf_counter() - start) * 1000
    if res.returncode != 0 or GREETING not in res.stdout:
        raise failure(ctd, f"{side} hello run {task_id}", res)
    return elapsed_ms


def bench_latency(ctd, runs):
    return interleaved(lambda side, task_id: timed_hello(ctd, side, task_id), runs, "start latency")


# ---- idle memory, shared by (b) and (d) --------------------------------------

def read_procs():
    """{pid: (ppid, argv)} of every process, kernel threads included."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                # comm may hold spaces and parens, so split after the last ")".
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        procs[int(entry)] = (ppid, argv)
    return procs


def flag(argv, name):
    """The value after `name` in argv, or None."""
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def side_processes(ctd, side, task_ids):
    """Pids of the side's shims serving task_ids plus all their descendants."""
    procs = read_procs()
    # A shim names our containerd's socket with -address and its task with -id
    # (for a pod: the sandbox's); the id check skips shims of earlier runs
    # that are still exiting.
    roots = [pid for pid, (_, argv) in procs.items()
             if argv and os.path.basename(argv[0]) == SHIMS[side]
             and flag(argv, "-address") == ctd.socket and flag(argv, "-id") in task_ids]
    children = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return set(roots), found


def memory_kb(pid):
    """{"Pss": kB, "Rss": kB} of a process, or None if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Rss"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return None
    return out


def measure(pids, parts):
    """PSS and RSS totals (kB) of pids, and the PSS of each named part, a
    subset of pids kept apart to show where the memory goes."""
    out = {"processes": 0, "pss_total_kb": 0, "rss_total_kb": 0}
    out.update({f"pss_{name}_kb": 0 for name in parts})
    for pid in pids:
        mem = memory_kb(pid)
        if mem is None:
            continue  # exited meanwhile: nothing left to count
        out["processes"] += 1
        out["pss_total_kb"] += mem.get("Pss", 0)
        out["rss_total_kb"] += mem.get("Rss", 0)
        for name, members in parts.items():
            if pid in members:
                out[f"pss_{name}_kb"] += mem.get("Pss", 0)
    return out


# ---- (b) idle memory --------------------------------------------------------

def wait_running(ctd, task_ids):
    deadline = time.monotonic() + RUNNING_TIMEOUT
    while True:
        tasks = ctd.tasks()
        # A stopped task never comes back: fail now, with its exit code.
        stopped = [t for t in task_ids if tasks.get(t) == "STOPPED"]
        if stopped:
            codes = ", ".join(f"{t} exited {ctd.task_delete(t)}" for t in stopped)
            raise BenchError(f"idle tasks stopped: {codes}\n"
                             f"--- containerd log (tail) ---\n{ctd.log_tail()}")
        pending = [t for t in task_ids if tasks.get(t) != "RUNNING"]
        if not pending:
            return
        if time.monotonic() > deadline:
            states = ", ".join(f"{t}={tasks.get(t, 'missing')}" for t in pending)
            raise BenchError(f"tasks not running after {RUNNING_TIMEOUT:.0f}s: {states}\n"
                             f"--- containerd log (tail) ---\n{ctd.log_tail()}")
        time.sleep(0.2)


def bench_idle_side(ctd, side, count):
    """Starts count sleeping tasks of one side, measures them, removes them."""
    image, args = SLEEP[side]
    task_ids = [f"idle-{side}-{i}" for i in range(count)]
    log(f"idle memory: starting {count} {side} tasks")
    for task_id in task_ids:
        # No stdio: ctr -d exits at once, and wasmlet passes ctr's FIFOs on to
        # the guest as they are, so its first write could hit a closed pipe.
        res = ctd.run(image, task_id, *args, runtime=RUNTIMES[side], detach=True,
                      extra=["--null-io"])
        if res.returncode != 0:
            raise failure(ctd, f"{side} detached run {task_id}", res)
    wait_running(ctd, task_ids)
    time.sleep(SETTLE_SECONDS)

    shims, pids = side_processes(ctd, side, set(task_ids))
    if not shims:
        raise BenchError(f"found no {SHIMS[side]} process for the {side} tasks")
    mem = measure(pids, {"shims": shims})

    # Tear down before the other side starts, so the two never share a page.
    for task_id in task_ids:
        ctd.task_kill(task_id, "SIGKILL")
    for task_id in task_ids:
        ctd.task_wait(task_id)
    ctd.delete_all()
    return {"tasks": count, "shims": len(shims), **mem,
            "pss_below_shims_kb": mem["pss_total_kb"] - mem["pss_shims_kb"],
            "pss_per_task_kb": mem["pss_total_kb"] / count}


def bench_idle(ctd, count):
    return {side: bench_idle_side(ctd, side, count) for side in SIDES}


# ---- (c) pod start latency and (d) idle pod memory, through CRI ----------------

def pod_for(name, side, programs, args=(), docs=None, stdin=False):
    """A Pod of one container running programs[side] (image, command) on
    side's runtime, like the manifests in tests/cri/manifests; with args,
    a host directory `docs` mounted read-only at /docs, and an open stdin."""
    from pods import Pod
    image, command = programs[side]
    container = {"name": CONTAINER, "image": image, "stdin": stdin}
    if command:
        container["command"] = list(command)
    if args:
        container["args"] = list(args)
    spec = {"restartPolicy": "Never", "containers": [container]}
    if docs:
        container["volumeMounts"] = [{"name": "docs", "mountPath": "/docs", "readOnly": True}]
        spec["volumes"] = [{"name": "docs", "hostPath": {"path": docs, "type": "Directory"}}]
    if RUNTIME_CLASSES[side]:
        spec["runtimeClassName"] = RUNTIME_CLASSES[side]
    return Pod({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"}, "spec": spec})


def describe(status):
    """A CRI ContainerStatus in one line, for error messages."""
    from kubelet import v1
    return (f"{v1.ContainerState.Name(status.state)}, exit code {status.exit_code}, "
            f"reason {status.reason!r}, message {status.message!r}")


def remove_pod(kubelet, sandbox_id):
    kubelet.stop_pod_sandbox(sandbox_id)
    kubelet.remove_pod_sandbox(sandbox_id)


class FirstLine(threading.Thread):
    """Reads a CRI log file every LOG_POLL_SECONDS until it holds a whole
    line, and notes when that was. It runs alongside the CRI calls, so the
    line is timed when it shows up, not when StartContainer returns."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.line = None
        self.seen = None  # time.perf_counter() when the line was read
        self.cancel = threading.Event()

    def run(self):
        while not self.cancel.is_set():
            try:
                with open(self.path) as f:
                    line = f.readline()
            except FileNotFoundError:
                line = ""  # containerd makes it in CreateContainer
            if line.endswith("\n"):
                self.seen = time.perf_counter()
                self.line = line.rstrip("\n")
                return
            self.cancel.wait(LOG_POLL_SECONDS)


def timed_pod(ctd, kubelet, side, name, programs=HELLO, first_line=GREETING, **pod_options):
    """Runs one pod of programs[side] (hello unless told); returns ms from
    RunPodSandbox to the first line of its container's log, which must be
    first_line. The pod is checked, stopped and removed untimed. On an
    error the pod stays for the caller's teardown."""
    import grpc
    pod = pod_for(name, side, programs, **pod_options)
    watcher = FirstLine(kubelet.log_path(pod, CONTAINER))
    watcher.start()
    what = f"{side} pod {name}"
    try:
        start = time.perf_counter()
        sandbox_id = kubelet.run_pod_sandbox(pod)
        container_id = kubelet.start_containers(pod, sandbox_id)[CONTAINER]
        watcher.join(FIRST_LINE_TIMEOUT)
        if watcher.line is None:
            status = kubelet.container_status(container_id)
            raise cri_failure(ctd, what, f"no log line after {FIRST_LINE_TIMEOUT:.0f}s; "
                                         f"container {describe(status)}")
        elapsed_ms = (watcher.seen - start) * 1000
        status = kubelet.wait_container(container_id)
    except grpc.RpcError as e:
        raise cri_failure(ctd, what, e) from None
    finally:
        watcher.cancel.set()
    # A line is "TIME STREAM F|P TEXT": the expected line, whole, on stdout.
    if watcher.line.split(" ", 3)[1:] != ["stdout", "F", first_line] or status.exit_code != 0:
        raise cri_failure(ctd, what, f"first log line {watcher.line!r}; container {describe(status)}")
    try:
        remove_pod(kubelet, sandbox_id)
    except grpc.RpcError as e:
        raise cri_failure(ctd, f"removing {what}", e) from None
    return elapsed_ms


def task_pids(ctd):
    """{task id: pid} of every task; in k8s.io a task id is a sandbox's or
    container's id."""
    pids = {}
    for line in ctd.ctr("tasks", "ls").stdout.splitlines()[1:]:  # skip the header
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            pids[fields[0]] = int(fields[1])
    return pids


def wait_pods_running(ctd, kubelet, side, container_ids):
    from kubelet import v1
    deadline = time.monotonic() + RUNNING_TIMEOUT
    pending = list(container_ids)
    while pending:
        status = kubelet.container_status(pending[0])
        if status.state == v1.CONTAINER_RUNNING:
            pending.pop(0)
            continue
        # An exited container never comes back (restartPolicy Never): fail now.
        if status.state == v1.CONTAINER_EXITED or time.monotonic() > deadline:
            raise cri_failure(ctd, f"{side} idle pod", f"container {pending[0]} {describe(status)}")
        time.sleep(0.2)


def bench_idle_pods_side(ctd, kubelet, side, count, programs=SLEEP, what="idle", stdin=False):
    """Starts count idle pods of programs[side] (sleep unless told),
    measures them, removes them."""
    import grpc
    log(f"{what} pod memory: starting {count} {side} pods")
    sandboxes, containers = [], []
    try:
        for i in range(count):
            pod = pod_for(f"{what}-{side}-{i}", side, programs, stdin=stdin)
            sandboxes.append(kubelet.run_pod_sandbox(pod))
            containers.append(kubelet.start_containers(pod, sandboxes[-1])[CONTAINER])
        wait_pods_running(ctd, kubelet, side, containers)
    except grpc.RpcError as e:
        raise cri_failure(ctd, f"starting {side} idle pods", e) from None
    time.sleep(SETTLE_SECONDS)

    # One shim serves a whole pod and is named after its sandbox; the
    # container ids are there in case a runtime started one per container.
    shims, pids = side_processes(ctd, side, set(sandboxes) | set(containers))
    if not shims:
        raise BenchError(f"found no {SHIMS[side]} process for the {side} pods")
    by_task = task_pids(ctd)
    pause = {by_task.get(s) for s in sandboxes} - {None}
    workloads = {by_task.get(c) for c in containers} - {None}
    mem = measure(pids, {"shims": shims, "pause": pause, "containers": workloads})
    other = (mem["pss_total_kb"] - mem["pss_shims_kb"] - mem["pss_pause_kb"]
             - mem["pss_containers_kb"])
    # Task processes that are not below the shims are not counted: say so.
    outside = sorted((pause | workloads) - pids)

    try:
        for sandbox_id in sandboxes:
            remove_pod(kubelet, sandbox_id)
    except grpc.RpcError as e:
        raise cri_failure(ctd, f"removing {side} idle pods", e) from None
    return {"pods": count, "shims": len(shims), **mem, "pss_other_kb": other,
            "task_processes_outside_shims": outside,
            "pss_per_pod_kb": mem["pss_total_kb"] / count}


# ---- (e) the large module ------------------------------------------------------

def large_docs(ctd):
    """A host directory with the document the timed comrak pods render."""
    docs = os.path.join(ctd.dir, "large-docs")
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(docs, "hello.md"), "w") as f:
        f.write(LARGE_DOCUMENT)
    return docs


def bench_large(ctd, kubelet, runs):
    """(e): first and cached starts of the large module, and its idle memory
    at each of LARGE_POD_COUNTS pods per side."""
    docs = large_docs(ctd)

    def large_pod(side, name):
        return timed_pod(ctd, kubelet, side, name, LARGE, LARGE_FIRST_LINE, args=LARGE_ARGS, docs=docs)

    log(f"large module first start: {FIRST_STARTS} runs per side, wasm compiling each time")
    first = {side: [] for side in SIDES}
    for i in range(FIRST_STARTS):
        for side in SIDES:
            if side == "wasmlet":
                forget_compiled(ctd, LARGE_WASM)
            first[side].append(large_pod(side, f"first-{side}-{i}"))

    # The hello pod runs in the same rounds: the goal is on the difference.
    def large_or_hello(side, name):
        if side == "hello":
            return timed_pod(ctd, kubelet, "wasmlet", name)
        return large_pod(side, name)

    cached = interleaved(large_or_hello, runs, "large module cached start", sides=("hello",) + SIDES)
    idle = {count: {side: bench_idle_pods_side(ctd, kubelet, side, count, LARGE, f"large{count}", stdin=True)
                    for side in SIDES}
            for count in LARGE_POD_COUNTS}
    return {"first": {side: stats(s) for side, s in first.items()}, "cached": cached, "idle": idle}


def bench_pods(count, http, programs):
    """(c), (d), (e), if http (f), and if programs (g) on a containerd of
    their own serving CRI with both runtimes; returns (latency, idle, large,
    http, leftovers, programs)."""
    import subprocess
    import grpc
    from kubelet import Kubelet
    ctd = Containerd(cri=True)
    kubelet = None
    try:
        log(f"CRI containerd in {ctd.dir} (snapshotter {ctd.snapshotter})")
        ctd.import_images(IMAGES_DIR)
        kubelet = Kubelet(ctd.socket, os.path.join(ctd.dir, "kubelet"), ctd.pod_cgroup_root)
        latency = interleaved(lambda side, name: timed_pod(ctd, kubelet, side, name),
                              count, "pod start latency")
        idle = {side: bench_idle_pods_side(ctd, kubelet, side, count) for side in SIDES}
        large = bench_large(ctd, kubelet, count)
        http_results = bench_http(kubelet, log) if http else None
        program_results = None
        if programs:
            try:
                program_results = bench_programs(ctd, kubelet, log)
            except (grpc.RpcError, subprocess.CalledProcessError, RuntimeError) as e:
                raise cri_failure(ctd, "the real-program bench", e) from None
        left = ctd.leftovers()
    finally:
        if kubelet is not None:
            # Through CRI, so the CNI plugin releases each pod's network.
            try:
                kubelet.remove_all()
            except Exception as e:  # stop() below cleans up the rest
                log(f"removing pods failed: {e}")
            kubelet.close()
        ctd.stop()
    return latency, idle, large, http_results, left, program_results


# ---- report -------------------------------------------------------------------

def latency_rows(latency, key, label, goal):
    """Median (with its goal) and p90 rows of one latency measurement."""
    rows = []
    for stat, stat_goal in (("median", goal), ("p90", None)):
        w, r = latency["wasmlet"][f"{stat}_ms"], latency["runc"][f"{stat}_ms"]
        rows.append((f"{key}_{stat}", f"{label} {stat} (ms)", w, r, w / r, stat_goal))
    return rows


def memory_row(idle, field, key, label, goal):
    w, r = idle["wasmlet"][field], idle["runc"][field]
    return (key, label, w, r, w / r, goal)


def summarize(latency, idle, pods):
    """The table rows: (key, measure, wasmlet, runc, ratio, goal or None)."""
    rows = latency_rows(latency, "start_latency", "start latency", LATENCY_GOAL)
    rows.append(memory_row(idle, "pss_per_task_kb", "idle_pss_per_task",
                           "idle PSS per task (kB)", MEMORY_GOAL))
    if pods is not None:
        pod_latency, pod_idle, large = pods[:3]
        rows += latency_rows(pod_latency, "pod_start", "pod start", POD_LATENCY_GOAL)
        rows.append(memory_row(pod_idle, "pss_per_pod_kb", "idle_pss_per_pod",
                               "idle PSS per pod (kB)", POD_MEMORY_GOAL))
        rows += large_rows(large)
    return rows


def large_rows(large):
    """(e)'s rows: its goals are not ratios to runc (see large_goals)."""
    rows = latency_rows(large["first"], "large_first_start", "large module first start", None)[:1]
    rows += latency_rows(large["cached"], "large_cached_start", "large module cached start", None)
    for count in LARGE_POD_COUNTS:
        rows.append(memory_row(large["idle"][count], "pss_per_pod_kb", f"large_idle_pss_per_pod_{count}",
                               f"large module PSS per pod, {count} pods (kB)", None))
    return rows


def large_goals(large):
    """(e)'s own goals: [(key, what, value, goal, met)]."""
    extra = large["cached"]["wasmlet"]["median_ms"] - large["cached"]["hello"]["median_ms"]
    most = max(LARGE_POD_COUNTS)
    per_pod = {count: large["idle"][count]["wasmlet"]["pss_per_pod_kb"] for count in (1, most)}
    density = per_pod[most] / per_pod[1]
    return [
        ("large_cached_extra_ms", "large module cached start minus hello pod start (median, ms)",
         extra, LARGE_CACHED_EXTRA_MS_GOAL, extra <= LARGE_CACHED_EXTRA_MS_GOAL),
        ("large_density", f"large module PSS per pod at {most} pods / at 1 pod",
         density, LARGE_DENSITY_GOAL, density <= LARGE_DENSITY_GOAL),
    ]


def print_table(rows):
    header = ("MEASURE", "WASMLET", "RUNC", "RATIO", "GOAL")
    lines = [header]
    for _, label, w, r, ratio, goal in rows:
        if goal is None:
            verdict = "-"
        else:
            verdict = f"<= {goal} " + ("met" if ratio <= goal else "NOT met")
        lines.append((label, f"{w:.1f}", f"{r:.1f}", f"{ratio:.2f}", verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        # Text left, numbers right.
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:4], widths[1:4])]
        print("  ".join(cells + [line[4]]).rstrip())


def write_json(results):
    os.makedirs(OUT_DIR, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    path = os.path.join(OUT_DIR, f"results-{results['timestamp']}.json")
    for target in (path, os.path.join(OUT_DIR, "latest.json")):
        with open(target, "w") as f:
            f.write(text)
    return path


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main():
    parser = argparse.ArgumentParser(
        description="Benchmark wasmlet against runc: start latency, idle memory, as tasks and as pods.")
    parser.add_argument("--runs", type=positive_int, default=20,
                        help="measured start-latency runs per side (default 20)")
    parser.add_argument("--idle", type=positive_int, default=20,
                        help="idle sleeping tasks per side (default 20)")
    parser.add_argument("--pods", type=positive_int, default=20,
                        help="measured pod starts and idle pods per side (default 20)")
    parser.add_argument("--no-http", action="store_true",
                        help="skip the HTTP measurements (f)")
    parser.add_argument("--no-programs", action="store_true",
                        help="skip the real-program measurements (g)")
    parser.add_argument("--no-pods", action="store_true",
                        help="skip the pod measurements (and their CRI containerd)")
    opts = parser.parse_args()

    if os.geteuid() != 0:
        sys.exit("bench: needs root (containerd, mounts, cgroups)")
    needed = NEEDED_TARS + (() if opts.no_pods else POD_TARS)
    missing = [t for t in needed if not os.path.exists(os.path.join(IMAGES_DIR, t))]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} in {IMAGES_DIR}: run make images")
    shim = os.path.join(DEFAULT_SHIM_DIR, SHIM_NAME)
    if not os.path.exists(shim):
        sys.exit(f"bench: {shim} is missing: run make release")

    timestamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    ctd = Containerd(namespace=NAMESPACE)
    try:
        log(f"containerd {CONTAINERD_VERSION} in {ctd.dir} (snapshotter {ctd.snapshotter})")
        ctd.import_images(IMAGES_DIR)
        latency = bench_latency(ctd, opts.runs)
        idle = bench_idle(ctd, opts.idle)
        left = ctd.leftovers()
    except BenchError as e:
        sys.exit(f"bench: aborted: {e}")
    finally:
        ctd.stop()

    # The pods' containerd starts only now, so the two never run at once.
    pods = None
    if not opts.no_pods:
        try:
            pods = bench_pods(opts.pods, http=not opts.no_http, programs=not opts.no_programs)
        except BenchError as e:
            sys.exit(f"bench: aborted: {e}")
        left += [f"CRI containerd: {item}" for item in pods[4]]

    rows = summarize(latency, idle, pods)
    http = None if pods is None else pods[3]
    own_goals = [] if pods is None else large_goals(pods[2])
    if http is not None:
        own_goals += http_goals(http)
    results = {
        "timestamp": timestamp,
        "host": {"kernel": os.uname().release, "cpus": os.cpu_count()},
        "containerd": CONTAINERD_VERSION,
        "snapshotter": ctd.snapshotter,
        "runs": opts.runs,
        "warmups": WARMUPS,
        "start_latency": latency,
        "idle_memory": idle,
        "pods": None if pods is None else opts.pods,
        "pod_start_latency": None if pods is None else pods[0],
        "idle_pod_memory": None if pods is None else pods[1],
        "large_module": None if pods is None else pods[2],
        "http": http,
        "real_program": None if pods is None else pods[5],
        "ratios": {key: ratio for key, _, _, _, ratio, _ in rows},
        "goals": {**{key: {"max_ratio": goal, "met": ratio <= goal}
                     for key, _, _, _, ratio, goal in rows if goal is not None},
                  **{key: {"max": goal, "value": value, "met": met}
                     for key, _, value, goal, met in own_goals}},
        "leftovers": left,
    }
    path = write_json(results)

    print()
    print_table(rows)
    if http is not None:
        print_http_table(http)
    if pods is not None and pods[5] is not None:
        print_programs_table(pods[5])
    for _, what, value, goal, met in own_goals:
        print(f"{what}: {value:.2f} (goal {goal:.2f}: {'met' if met else 'NOT met'})")
    for side in SIDES:
        s = idle[side]
        print(f"  {side}: {s['tasks']} idle tasks, {s['shims']} shims, "
              f"{s['processes']} processes; PSS {s['pss_total_kb']} kB "
              f"(shims {s['pss_shims_kb']}, below them {s['pss_below_shims_kb']}), "
              f"RSS {s['rss_total_kb']} kB")
    if pods is not None:
        for side in SIDES:
            s = pods[1][side]
            print(f"  {side}: {s['pods']} idle pods, {s['shims']} shims, "
                  f"{s['processes']} processes; PSS {s['pss_total_kb']} kB "
                  f"(shims {s['pss_shims_kb']}, pause {s['pss_pause_kb']}, "
                  f"containers {s['pss_containers_kb']}, other {s['pss_other_kb']}), "
                  f"RSS {s['rss_total_kb']} kB")
            if s["task_processes_outside_shims"]:
                print(f"  {side}: not counted, as not below the shims: task processes "
                      f"{s['task_processes_outside_shims']}")
    print(f"\nresults: {path}")
    if left:
        # Not a goal: leaking tasks' processes, mounts or cgroups is a bug.
        print("leftovers:\n  " + "\n  ".join(left), file=sys.stderr)
        sys.exit(1)
    print("leftovers: none")


if __name__ == "__main__":
    main()
