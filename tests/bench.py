#!/usr/bin/env python3
"""Benchmarks wasmlet against runc on one private containerd:

  (a) start latency: wall time of `ctr run --rm` of the hello program,
      as wasm (wasmlet) and as a static ELF (runc), interleaved;
  (b) idle memory: PSS per sleeping task, counting the shim and every
      process below it.

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
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))

from harness import REPO_ROOT, RUNC_RUNTIME, SHIM_NAME, WASM_RUNTIME, Containerd  # noqa: E402

IMAGES_DIR = os.path.join(REPO_ROOT, "out", "images")
OUT_DIR = os.path.join(REPO_ROOT, "out", "bench")
# Our own namespace: cgroups are named after it, so tests can run meanwhile.
NAMESPACE = "wasmlet-bench"
GREETING = "Hello from wasmlet!"
WARMUPS = 2  # the first wasm run compiles the module into the node cache
SETTLE_SECONDS = 2.0  # let idle tasks finish starting up before measuring
RUNNING_TIMEOUT = 60.0

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

# Goals are on the wasmlet/runc ratio: lower is better.
LATENCY_GOAL = 0.8
MEMORY_GOAL = 0.5


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
    samples = {"wasmlet": [], "runc": []}
    for i in range(WARMUPS):
        for side in samples:
            timed_hello(ctd, side, f"warm-{side}-{i}")
    log(f"start latency: {runs} runs per side")
    # Interleaved, so drift (other load, caches) hits both sides equally.
    for i in range(runs):
        for side in samples:
            samples[side].append(timed_hello(ctd, side, f"lat-{side}-{i}"))
    return {side: {"median_ms": statistics.median(s), "p90_ms": p90(s), "samples_ms": s}
            for side, s in samples.items()}


# ---- (b) idle memory --------------------------------------------------------

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
    # A shim names our containerd's socket with -address and its task with -id;
    # the id check skips shims of earlier runs that are still exiting.
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
    pss = rss = shim_pss = measured = 0
    for pid in pids:
        mem = memory_kb(pid)
        if mem is None:
            continue  # exited meanwhile: nothing left to count
        pss += mem.get("Pss", 0)
        rss += mem.get("Rss", 0)
        measured += 1
        if pid in shims:  # kept apart to show where the memory goes
            shim_pss += mem.get("Pss", 0)

    # Tear down before the other side starts, so the two never share a page.
    for task_id in task_ids:
        ctd.task_kill(task_id, "SIGKILL")
    for task_id in task_ids:
        ctd.task_wait(task_id)
    ctd.delete_all()
    return {"tasks": count, "shims": len(shims), "processes": measured,
            "pss_total_kb": pss, "pss_shims_kb": shim_pss, "pss_below_shims_kb": pss - shim_pss,
            "rss_total_kb": rss, "pss_per_task_kb": pss / count}


def bench_idle(ctd, count):
    return {side: bench_idle_side(ctd, side, count) for side in ("wasmlet", "runc")}


# ---- report -------------------------------------------------------------------

def summarize(latency, idle):
    """The table rows: (measure, wasmlet, runc, ratio, goal or None)."""
    rows = []
    for key, label, goal in (("median_ms", "start latency median (ms)", LATENCY_GOAL),
                             ("p90_ms", "start latency p90 (ms)", None)):
        w, r = latency["wasmlet"][key], latency["runc"][key]
        rows.append((label, w, r, w / r, goal))
    w, r = idle["wasmlet"]["pss_per_task_kb"], idle["runc"]["pss_per_task_kb"]
    rows.append(("idle PSS per task (kB)", w, r, w / r, MEMORY_GOAL))
    return rows


def print_table(rows):
    header = ("MEASURE", "WASMLET", "RUNC", "RATIO", "GOAL")
    lines = [header]
    for label, w, r, ratio, goal in rows:
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
    parser = argparse.ArgumentParser(description="Benchmark wasmlet against runc: start latency, idle memory.")
    parser.add_argument("--runs", type=positive_int, default=20,
                        help="measured start-latency runs per side (default 20)")
    parser.add_argument("--idle", type=positive_int, default=20,
                        help="idle sleeping tasks per side (default 20)")
    opts = parser.parse_args()

    if os.geteuid() != 0:
        sys.exit("bench: needs root (containerd, mounts, cgroups)")
    missing = [t for t in NEEDED_TARS if not os.path.exists(os.path.join(IMAGES_DIR, t))]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} in {IMAGES_DIR}: run make images")
    shim = os.path.join(REPO_ROOT, "target", "release", SHIM_NAME)
    if not os.path.exists(shim):
        sys.exit(f"bench: {shim} is missing: run make build")

    timestamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    ctd = Containerd(namespace=NAMESPACE)
    try:
        log(f"containerd in {ctd.dir} (snapshotter {ctd.snapshotter})")
        ctd.import_images(IMAGES_DIR)
        latency = bench_latency(ctd, opts.runs)
        idle = bench_idle(ctd, opts.idle)
        left = ctd.leftovers()
    except BenchError as e:
        sys.exit(f"bench: aborted: {e}")
    finally:
        ctd.stop()

    rows = summarize(latency, idle)
    results = {
        "timestamp": timestamp,
        "host": {"kernel": os.uname().release, "cpus": os.cpu_count()},
        "snapshotter": ctd.snapshotter,
        "runs": opts.runs,
        "warmups": WARMUPS,
        "start_latency": latency,
        "idle_memory": idle,
        "ratios": {"start_latency_median": rows[0][3], "start_latency_p90": rows[1][3],
                   "idle_pss_per_task": rows[2][3]},
        "goals": {"start_latency_median": {"max_ratio": LATENCY_GOAL, "met": rows[0][3] <= LATENCY_GOAL},
                  "idle_pss_per_task": {"max_ratio": MEMORY_GOAL, "met": rows[2][3] <= MEMORY_GOAL}},
        "leftovers": left,
    }
    path = write_json(results)

    print()
    print_table(rows)
    for side in ("wasmlet", "runc"):
        s = idle[side]
        print(f"  {side}: {s['tasks']} idle tasks, {s['shims']} shims, "
              f"{s['processes']} processes; PSS {s['pss_total_kb']} kB "
              f"(shims {s['pss_shims_kb']}, below them {s['pss_below_shims_kb']}), "
              f"RSS {s['rss_total_kb']} kB")
    print(f"\nresults: {path}")
    if left:
        # Not a goal: leaking tasks' processes, mounts or cgroups is a bug.
        print("leftovers:\n  " + "\n  ".join(left), file=sys.stderr)
        sys.exit(1)
    print("leftovers: none")


if __name__ == "__main__":
    main()
