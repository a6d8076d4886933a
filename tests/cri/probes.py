"""Probes as kubelet's prober runs them, for a pod without an API server:
httpGet succeeds on a status from 200 to 399, tcpSocket on an accepted
connection, each within its timeoutSeconds (default 1). They run inside the
pod's network namespace, against the pod's loopback address (kubelet uses
the pod IP; the test pods' only interface is lo).

    probe = pod.containers["web"]["readinessProbe"]
    ok, why = run_probe(sandbox_pid, pod.containers["web"], probe)
"""

import json
import subprocess

# Runs in the pod's network namespace: argv[1] is {"kind", "port", "path",
# "headers", "timeout"}; prints [ok, why] as JSON.
PROBER = """
import http.client, json, socket, sys
probe = json.loads(sys.argv[1])
try:
    if probe["kind"] == "tcpSocket":
        socket.create_connection(("127.0.0.1", probe["port"]), timeout=probe["timeout"]).close()
        result = [True, "connected"]
    else:
        conn = http.client.HTTPConnection("127.0.0.1", probe["port"], timeout=probe["timeout"])
        conn.request("GET", probe["path"], headers={"User-Agent": "kube-probe/1.31", **probe["headers"]})
        status = conn.getresponse().status
        result = [200 <= status < 400, f"HTTP {status}"]
except OSError as err:
    result = [False, str(err)]
print(json.dumps(result))
"""


def probe_port(container, port):
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    raise ValueError(f"no container port named {port!r}")


def run_probe(sandbox_pid, container, probe):
    """Runs one httpGet or tcpSocket probe; returns (succeeded, why)."""
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        action = probe["httpGet"]
        if action.get("scheme", "HTTP") != "HTTP":
            raise ValueError("only HTTP probes are run here")
        spec = {"kind": "httpGet", "path": action.get("path", "/"),
                "headers": {h["name"]: h["value"] for h in action.get("httpHeaders", [])}}
    elif "tcpSocket" in probe:
        action = probe["tcpSocket"]
        spec = {"kind": "tcpSocket"}
    else:
        raise ValueError(f"unsupported probe {probe}")
    spec.update(port=probe_port(container, action["port"]), timeout=timeout)
    res = subprocess.run(["nsenter", f"--net=/proc/{sandbox_pid}/ns/net", "python3", "-c", PROBER, json.dumps(spec)],
                         capture_output=True, text=True, timeout=timeout + 10)
    if res.returncode != 0:
        raise RuntimeError(f"the prober failed: {res.stderr}")
    ok, why = json.loads(res.stdout)
    return ok, why
