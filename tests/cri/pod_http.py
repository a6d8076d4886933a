"""HTTP requests from inside a pod's network namespace, as a client on the
pod's loopback: what a sidecar, or kubelet's prober, would send.

    answers = request_in_pod(sandbox_pid, ["/path", ("POST", "/x", body)])
"""

import json
import subprocess

# Runs inside the pod's network namespace: sends the requests of argv[2]
# ([[method, path, body or null], ...]) on one keep-alive connection to
# 127.0.0.1:argv[1], retrying the connection until the server listens;
# prints [[status, body], ...] as JSON.
CLIENT = """
import http.client, json, sys, time
port, requests = int(sys.argv[1]), json.loads(sys.argv[2])
deadline = time.monotonic() + 10
while True:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.connect()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
answers = []
for method, path, body in requests:
    conn.request(method, path, body=body, headers={"X-Wasmlet-Test": path})
    response = conn.getresponse()
    answers.append([response.status, response.read().decode()])
print(json.dumps(answers))
"""


def client_command(sandbox_pid, requests, port=8080):
    """The command that sends the requests (a path to GET, or (method,
    path, body)) in the network namespace of the pod whose sandbox process
    is sandbox_pid."""
    requests = [["GET", r, None] if isinstance(r, str) else list(r) for r in requests]
    return ["nsenter", f"--net=/proc/{sandbox_pid}/ns/net", "python3", "-c", CLIENT, str(port), json.dumps(requests)]


def request_in_pod(sandbox_pid, requests, port=8080):
    """[[status, body], ...] for the requests, sent on one connection."""
    res = subprocess.run(client_command(sandbox_pid, requests, port), capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"the HTTP client in the pod failed: {res.stderr}")
    return json.loads(res.stdout)
