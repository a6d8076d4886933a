"""(f) HTTP throughput and latency of the JSON API (images/workloads/json-api:
POST an order, get its invoice), served three ways in one run:

  wasmlet         the json-api component in a wasm pod;
  wasmtime serve  the same .wasm under `wasmtime serve`, the engine's own
                  server, as shipped (wasmtime-cli of the shim's wasmtime
                  version, tests/wasmtime_cli.py), on the host's loopback;
  native          json-api-native, the same handler in a hyper server, in a
                  runc pod.

wrk (Debian's) loads each with the same order at a fixed number of
connections, in short rounds interleaved between the three: from inside
the pod's network namespace for the pods, on the host's loopback for
wasmtime serve. Requests/s, p50 and p99 are the medians over the rounds.
"""

import os
import re
import statistics
import subprocess
import tempfile
import time

from wasmtime_cli import ensure_wasmtime, shim_wasmtime_version

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
JSON_API_WASM = os.path.join(REPO_ROOT, "images", "workloads", "target", "wasm32-wasip2", "serving", "json_api.wasm")
MANIFESTS = os.path.join(TESTS_DIR, "cri", "manifests")

SERVERS = ("wasmlet", "wasmtime serve", "native")
PORT = 8080
SERVE_PORT = 18080  # wasmtime serve's, on the host's loopback
CONNECTIONS = 16
THREADS = 2
ROUNDS = 3
ROUND_SECONDS = 5
ITEMS = 20  # lines in the benchmark's order

# Goals of issue 5: throughput against wasmtime serve and the native server,
# tail latency against the native server.
SERVE_THROUGHPUT_GOAL = 3.0
NATIVE_THROUGHPUT_GOAL = 0.3
NATIVE_P99_GOAL = 2.0


def order_body():
    items = ",".join(
        f'{{"sku":"sku-{i:03}","name":"Item number {i}","unit_price_cents":{199 + 37 * i},'
        f'"quantity":{1 + i % 5},"tags":["tag-{i % 4}","bench"]}}' for i in range(ITEMS))
    return ('{"id":"bench-order","currency":"eur","coupon":"SAVE10",'
            '"customer":{"name":"Bench Customer","country":"DE"},"items":[' + items + "]}")


def wrk_script(directory):
    path = os.path.join(directory, "order.lua")
    body = order_body().replace("\\", "\\\\").replace('"', '\\"')
    with open(path, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n')
    return path


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text):
    """requests/s, p50 and p99 (ms) from `wrk --latency` output; every
    response must have been a success."""
    if "Non-2xx or 3xx responses" in text or "Socket errors" in text:
        raise RuntimeError(f"wrk saw failures:\n{text}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
    latency = {}
    for pct in ("50", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([0-9.]+)(us|ms|s)\s*$", text, re.M).groups()
        latency[pct] = float(value) * UNITS_MS[unit]
    return {"rps": rps, "p50_ms": latency["50"], "p99_ms": latency["99"]}


def run_wrk(script, netns_pid, port):
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{ROUND_SECONDS}s", "--latency", "-s", script,
               f"http://127.0.0.1:{port}/invoice"]
    if netns_pid:
        command = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"] + command
    res = subprocess.run(command, capture_output=True, text=True, timeout=ROUND_SECONDS + 60)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed: {res.stderr}")
    return parse_wrk(res.stdout)


def wait_listening(port, netns_pid=None, timeout=30.0):
    """Until something accepts on 127.0.0.1:port (in the pod's namespace)."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while True:
        command = ["python3", "-c", probe]
        if netns_pid:
            command = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"] + command
        if subprocess.run(command, capture_output=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout}s")
        time.sleep(0.2)


def start_pod(kubelet, native):
    """The JSON API pod (wasm, or the native twin under runc); returns its
    sandbox id and the pid whose network namespace is the pod's."""
    from kubelet import v1
    from pods import Pod
    pod = Pod.load(os.path.join(MANIFESTS, "json-api-native.yaml" if native else "json-api.yaml"))
    sandbox_id = kubelet.run_pod_sandbox(pod)
    container_id = kubelet.start_containers(pod, sandbox_id)["web"]
    kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=60)
    pid = kubelet.pod_sandbox_info(sandbox_id)["pid"]
    wait_listening(PORT, pid)
    return sandbox_id, pid


def bench_http(kubelet, log):
    """(f): {server: {"rps", "p50_ms", "p99_ms", "rounds"}} plus the setup."""
    wasmtime = ensure_wasmtime(log)
    version = shim_wasmtime_version()
    sandboxes = []
    serve = None
    with tempfile.TemporaryDirectory(prefix="wasmlet-bench-http-") as scratch:
        try:
            script = wrk_script(scratch)
            wasm_sandbox, wasm_pid = start_pod(kubelet, native=False)
            sandboxes.append(wasm_sandbox)
            native_sandbox, native_pid = start_pod(kubelet, native=True)
            sandboxes.append(native_sandbox)
            # -Scli: the component uses wasi:cli (environment, stdio), as Rust std does.
            serve = subprocess.Popen([wasmtime, "serve", "-Scli", "--addr", f"127.0.0.1:{SERVE_PORT}", JSON_API_WASM],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_listening(SERVE_PORT)
            targets = {"wasmlet": (wasm_pid, PORT), "wasmtime serve": (None, SERVE_PORT), "native": (native_pid, PORT)}
            # One unmeasured round each warms caches and connection paths.
            for pid, port in targets.values():
                run_wrk(script, pid, port)
            rounds = {server: [] for server in SERVERS}
            for i in range(ROUNDS):
                for server in SERVERS:
                    result = run_wrk(script, *targets[server])
                    log(f"http round {i + 1}/{ROUNDS} {server}: {result['rps']:.0f} requests/s, "
                        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
                    rounds[server].append(result)
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(timeout=30)
            for sandbox_id in sandboxes:
                kubelet.stop_pod_sandbox(sandbox_id)
                kubelet.remove_pod_sandbox(sandbox_id)
    results = {server: {key: statistics.median(r[key] for r in rounds[server]) for key in ("rps", "p50_ms", "p99_ms")}
               | {"rounds": rounds[server]} for server in SERVERS}
    results["setup"] = {"wasmtime": version, "connections": CONNECTIONS, "wrk_threads": THREADS,
                        "rounds": ROUNDS, "round_seconds": ROUND_SECONDS, "order_bytes": len(order_body())}
    return results


def http_goals(http):
    """(f)'s goals: [(key, what, value, goal, met)]; throughput goals are minimums."""
    w, serve, native = (http[s] for s in SERVERS)
    vs_serve = w["rps"] / serve["rps"]
    vs_native = w["rps"] / native["rps"]
    p99 = w["p99_ms"] / native["p99_ms"]
    return [
        ("http_rps_vs_wasmtime_serve", "HTTP requests/s, wasmlet / wasmtime serve (at least)",
         vs_serve, SERVE_THROUGHPUT_GOAL, vs_serve >= SERVE_THROUGHPUT_GOAL),
        ("http_rps_vs_native", "HTTP requests/s, wasmlet / native in runc (at least)",
         vs_native, NATIVE_THROUGHPUT_GOAL, vs_native >= NATIVE_THROUGHPUT_GOAL),
        ("http_p99_vs_native", "HTTP p99 latency, wasmlet / native in runc (at most)",
         p99, NATIVE_P99_GOAL, p99 <= NATIVE_P99_GOAL),
    ]


def print_http_table(http):
    setup = http["setup"]
    print(f"\nHTTP, JSON API ({setup['order_bytes']} byte order), wrk {setup['connections']} connections, "
          f"{setup['rounds']} x {setup['round_seconds']} s, medians:")
    lines = [("SERVER", "REQUESTS/S", "P50 (MS)", "P99 (MS)")]
    for server in SERVERS:
        s = http[server]
        name = f"wasmtime serve {setup['wasmtime']}" if server == "wasmtime serve" else server
        lines.append((name, f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        print("  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]))
