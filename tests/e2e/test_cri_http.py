"""wasi:http components served as pods: requests reach the handler over
HTTP/1.1 on the pod's loopback, from inside its network namespace, each
request in an instance of its own."""

import contextlib
import json
import os
import subprocess
import time

import grpc
import pytest

from harness import REPO_ROOT
from kubelet import v1
from pods import Pod
from test_cri_pods import stdout_lines

MANIFEST = os.path.join(REPO_ROOT, "tests", "cri", "manifests", "hello-http.yaml")

# Runs inside the pod's network namespace: GETs each path of argv[2:] on one
# keep-alive connection to 127.0.0.1:argv[1], retrying the connection until
# the server listens; prints [[status, body], ...] as JSON.
CLIENT = """
import http.client, json, sys, time
port, paths = int(sys.argv[1]), sys.argv[2:]
deadline = time.monotonic() + 10
while True:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.connect()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
answers = []
for path in paths:
    conn.request("GET", path, headers={"X-Wasmlet-Test": path})
    response = conn.getresponse()
    answers.append([response.status, response.read().decode()])
print(json.dumps(answers))
"""


def get_in_pod(kubelet, sandbox_id, paths, port=8080):
    pid = kubelet.pod_sandbox_info(sandbox_id)["pid"]
    res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", CLIENT, str(port), *paths],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@contextlib.contextmanager
def serving(kubelet, pod):
    """The pod, with its web container running; yields the sandbox's and
    the container's ids."""
    with kubelet.running_pod(pod) as sandbox_id:
        container_id = kubelet.start_containers(pod, sandbox_id)["web"]
        kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=30)
        yield sandbox_id, container_id


def test_http_pod_answers_each_request_in_a_fresh_instance(cri):
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    with serving(kubelet, pod) as (sandbox_id, container_id):
        answers = get_in_pod(kubelet, sandbox_id, ["/first", "/second?x=1", "/third"])
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
        # One request log line each: method, path, status, duration.
        deadline = time.monotonic() + 5
        while len(logs := stdout_lines(cri, pod, "web")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    for (status, body), path in zip(answers, ["/first", "/second?x=1", "/third"]):
        assert status == 200, body
        assert body == ("hello from wasm over http\n"
                        "method: GET\n"
                        f"path: {path}\n"
                        f"header x-wasmlet-test: {path}\n"
                        "requests handled by this instance: 1\n")
    assert [line.split(" ")[:3] for line in logs] == [
        ["GET", "/first", "200"], ["GET", "/second", "200"], ["GET", "/third", "200"]], logs
    assert all(line.split(" ")[3].endswith("ms") for line in logs), logs
    assert cri.ctd.leftovers() == []


def test_a_bad_address_fails_the_start_and_names_the_variable(cri):
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    pod.containers["web"]["env"] = [{"name": "WASMLET_HTTP_ADDR", "value": "port-8080"}]
    with kubelet.running_pod(pod) as sandbox_id:
        container_id = kubelet.create_container(pod, sandbox_id, "web")
        with pytest.raises(grpc.RpcError) as failed:
            kubelet.start_container(container_id)
    assert "WASMLET_HTTP_ADDR=port-8080 is not an address and port" in failed.value.details()
    assert cri.ctd.leftovers() == []


def test_a_trapping_request_gets_500_and_the_pod_keeps_serving(cri):
    kubelet = cri.kubelet
    with serving(kubelet, Pod.load(MANIFEST)) as (sandbox_id, container_id):
        (trapped, after) = get_in_pod(kubelet, sandbox_id, ["/trap", "/after"])
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
    assert trapped == [500, "internal server error\n"]
    assert after[0] == 200 and "requests handled by this instance: 1" in after[1], after
    assert cri.ctd.leftovers() == []
