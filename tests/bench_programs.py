"""(g) The largest real program, Yosys (69 MB of wasm from PyPI,
images/third_party.sh), synthesising a 4-bit counter, four ways:

  wasmlet first       a pod, its compiled code removed from the node cache
                      before each run, so the start compiles;
  wasmlet cached      a pod, its compiled code in the node cache;
  wasmtime run        the same .wasm under `wasmtime run` of the shim's
                      wasmtime version (tests/wasmtime_cli.py), which
                      compiles it every time (built without its cache);
  wasmtime precompiled  `wasmtime run --allow-precompiled` of the code
                      `wasmtime compile` made once.

Each is timed whole, from RunPodSandbox (or the process start) to the
program's exit, so the pods carry the pod's own cost too; the rows show what
compiling costs and what the node cache saves.
"""

import glob
import hashlib
import os
import statistics
import subprocess
import tempfile
import time

from pods import Pod
from wasmtime_cli import ensure_wasmtime

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
PROGRAMS = os.path.join(REPO_ROOT, "out", "third-party")
YOSYS_WASM = os.path.join(PROGRAMS, "yosys.wasm")
MANIFEST = os.path.join(TESTS_DIR, "cri", "manifests", "yosys-synth.yaml")
WAYS = ("wasmlet first", "wasmlet cached", "wasmtime run", "wasmtime precompiled")
RUNS = {"wasmlet first": 2, "wasmlet cached": 5, "wasmtime run": 2, "wasmtime precompiled": 5}
COUNTER_V = """\
module counter(input clk, input rst, input en, output reg [3:0] q);
  always @(posedge clk)
    if (rst) q <= 4'd0;
    else if (en) q <= q + 4'd1;
endmodule
"""


def forget_compiled(ctd, wasm):
    """Removes the node cache's code for `wasm`, keyed by its sha256."""
    with open(wasm, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()
    for path in glob.glob(os.path.join(ctd.cache_dir, "*", f"{key}.*")):
        os.remove(path)


def timed_pod(kubelet, source, name):
    """ms from RunPodSandbox to the exit of a yosys pod reading `source`."""
    pod = Pod.load(MANIFEST)
    pod.name = name
    pod.volumes["in"]["hostPath"]["path"] = source
    start = time.perf_counter()
    sandbox_id = kubelet.run_pod_sandbox(pod)
    try:
        container_id = kubelet.start_containers(pod, sandbox_id)["yosys"]
        status = kubelet.wait_container(container_id, timeout=900)
        elapsed = (time.perf_counter() - start) * 1000
        if status.exit_code != 0:
            raise RuntimeError(f"yosys pod {name} exited {status.exit_code}: {status.message}")
    finally:
        kubelet.stop_pod_sandbox(sandbox_id)
        kubelet.remove_pod_sandbox(sandbox_id)
    return elapsed


def timed_wasmtime(command):
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return (time.perf_counter() - start) * 1000


def bench_programs(ctd, kubelet, log):
    """(g): {way: {"median_ms", "runs_ms"}}."""
    wasmtime = ensure_wasmtime(log)
    with tempfile.TemporaryDirectory(prefix="wasmlet-bench-yosys-", dir=ctd.dir) as scratch:
        source = os.path.join(scratch, "in")
        os.makedirs(source)
        os.chmod(scratch, 0o755)
        os.chmod(source, 0o755)
        with open(os.path.join(source, "counter.v"), "w") as f:
            f.write(COUNTER_V)
        dirs = {"/in": source, "/share": os.path.join(PROGRAMS, "yosys-share")}
        for guest in ("/out", "/tmp"):
            dirs[guest] = os.path.join(scratch, guest.strip("/"))
            os.makedirs(dirs[guest])
        preopens = [f"--dir={host}::{guest}" for guest, host in dirs.items()]
        args = Pod.load(MANIFEST).containers["yosys"]["args"]
        precompiled = os.path.join(scratch, "yosys.cwasm")
        subprocess.run([wasmtime, "compile", "-o", precompiled, YOSYS_WASM], check=True)

        def first(i):
            forget_compiled(ctd, YOSYS_WASM)
            return timed_pod(kubelet, source, f"yosys-first-{i}")

        ways = {
            "wasmlet first": first,
            "wasmlet cached": lambda i: timed_pod(kubelet, source, f"yosys-cached-{i}"),
            "wasmtime run": lambda i: timed_wasmtime([wasmtime, "run", *preopens, YOSYS_WASM, *args]),
            "wasmtime precompiled": lambda i: timed_wasmtime(
                [wasmtime, "run", "--allow-precompiled", *preopens, precompiled, *args]),
        }
        timed_pod(kubelet, source, "yosys-warm")  # fills the node cache, warms the page cache
        results = {}
        for way in WAYS:
            runs = [ways[way](i) for i in range(RUNS[way])]
            log(f"yosys, {way}: {', '.join(f'{ms:.0f}' for ms in runs)} ms")
            results[way] = {"median_ms": statistics.median(runs), "runs_ms": runs}
    return results


def print_programs_table(results):
    print()
    print("Yosys (69 MB of wasm) synthesising a counter, start to exit, median ms:")
    compiling, cached = results["wasmtime run"]["median_ms"], results["wasmtime precompiled"]["median_ms"]
    for way in WAYS:
        ms = results[way]["median_ms"]
        print(f"  {way:<22} {ms:9.0f}   / wasmtime run {ms / compiling:5.2f}   / precompiled {ms / cached:5.2f}")
