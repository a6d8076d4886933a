"""wasi:http components served as pods: requests reach the handler over
HTTP/1.1 on the pod's loopback, from inside its network namespace, each
request in an instance of its own; timeouts, the memory budget, outgoing
requests, graceful termination and probes."""

import contextlib
import json
import os
import subprocess
import time

import grpc
import pytest

import pod_http
from kubelet import read_cri_log, v1
from pods import Pod
from probes import run_probe
from test_cri import MANIFESTS
from test_cri_pods import stdout_lines

MANIFEST = os.path.join(MANIFESTS, "hello-http.yaml")


def client_command(kubelet, sandbox_id, requests, port):
    return pod_http.client_command(kubelet.pod_sandbox_info(sandbox_id)["pid"], requests, port)


def get_in_pod(kubelet, sandbox_id, requests, port=8080):
    return pod_http.request_in_pod(kubelet.pod_sandbox_info(sandbox_id)["pid"], requests, port)


def stderr_text(cri, pod, name):
    return "\n".join(text for _, stream, _, text in read_cri_log(cri.kubelet.log_path(pod, name)) if stream == "stderr")


def wait_stderr(cri, pod, text, timeout=10):
    """The container's stderr once it contains text (containerd copies the
    log asynchronously)."""
    deadline = time.monotonic() + timeout
    while text not in (errors := stderr_text(cri, pod, "web")):
        assert time.monotonic() < deadline, errors
        time.sleep(0.05)
    return errors


@contextlib.contextmanager
def serving(kubelet, pod):
    """The pod, with its web container running; yields the sandbox's and
    the container's ids."""
    with kubelet.running_pod(pod) as sandbox_id:
        container_id = kubelet.start_containers(pod, sandbox_id)["web"]
        kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=30)
        yield sandbox_id, container_id


def with_env(pod, **env):
    pod.containers["web"]["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return pod


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


@pytest.mark.parametrize("variable, value, message", [
    ("WASMLET_HTTP_ADDR", "port-8080", "WASMLET_HTTP_ADDR=port-8080 is not an address and port"),
    ("WASMLET_HTTP_TIMEOUT", "soon", "WASMLET_HTTP_TIMEOUT=soon: not a positive number of seconds"),
])
def test_a_bad_setting_fails_the_start_and_names_the_variable(cri, variable, value, message):
    kubelet = cri.kubelet
    pod = with_env(Pod.load(MANIFEST), **{variable: value})
    with kubelet.running_pod(pod) as sandbox_id:
        container_id = kubelet.create_container(pod, sandbox_id, "web")
        with pytest.raises(grpc.RpcError) as failed:
            kubelet.start_container(container_id)
    assert message in failed.value.details()
    assert cri.ctd.leftovers() == []


def test_a_trapping_request_gets_500_and_the_pod_keeps_serving(cri):
    kubelet = cri.kubelet
    with serving(kubelet, Pod.load(MANIFEST)) as (sandbox_id, container_id):
        (trapped, after) = get_in_pod(kubelet, sandbox_id, ["/trap", "/after"])
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
    assert trapped == [500, "internal server error\n"]
    assert after[0] == 200 and "requests handled by this instance: 1" in after[1], after
    assert cri.ctd.leftovers() == []


def test_slow_requests_are_cut_with_504_and_the_pod_keeps_serving(cri):
    kubelet = cri.kubelet
    pod = with_env(Pod.load(MANIFEST), WASMLET_HTTP_TIMEOUT="1")
    with serving(kubelet, pod) as (sandbox_id, container_id):
        started = time.monotonic()
        # A handler that computes forever, one that waits on the host, then a quick one.
        spun, slept, after = get_in_pod(kubelet, sandbox_id, ["/spin", "/sleep/20000", "/after"])
        took = time.monotonic() - started
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
        wait_stderr(cri, pod, "GET /spin: the request took longer than 1s (WASMLET_HTTP_TIMEOUT)")
    assert spun == slept == [504, "request timed out\n"]
    assert after[0] == 200, after
    assert took < 10, took
    assert cri.ctd.leftovers() == []


def test_requests_share_the_pods_memory_limit(cri):
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    with serving(kubelet, pod) as (sandbox_id, container_id):
        # 64Mi for the pod: 100 MiB does not fit, 8 MiB does, then again.
        big, small, again = get_in_pod(kubelet, sandbox_id, ["/grow/100", "/grow/8", "/grow/8"])
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
        wait_stderr(cri, pod, "GET /grow/100: the requests in flight reached the pod's memory limit")
    assert big == [500, "internal server error\n"]
    assert small[0] == again[0] == 200 and small[1].startswith("grew by 8388608 bytes"), small
    assert cri.ctd.leftovers() == []


def test_an_outgoing_request_reaches_a_sidecar_on_the_pods_loopback(cri):
    kubelet = cri.kubelet
    with serving(kubelet, Pod.load(os.path.join(MANIFESTS, "http-outgoing.yaml"))) as (sandbox_id, _):
        # The sidecar's httpd may still be starting: the handler then answers 502.
        deadline = time.monotonic() + 15
        while (answer := get_in_pod(kubelet, sandbox_id, ["/fetch/9000/index.html"])[0])[0] == 502:
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
    assert answer[0] == 200, answer
    assert answer[1].startswith("fetched 200: hello from the sidecar\n"), answer
    assert cri.ctd.leftovers() == []


def stop_during_request(cri, sleep_ms, grace_seconds):
    """Stops the hello-http pod's server while a /sleep/MS request is in its
    handler; returns the client's (exit code, stdout), how long StopContainer
    took, and the container's final status."""
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    with serving(kubelet, pod) as (sandbox_id, container_id):
        get_in_pod(kubelet, sandbox_id, ["/ready"])
        slow = subprocess.Popen(client_command(kubelet, sandbox_id, [f"/sleep/{sleep_ms}"], 8080),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_stderr(cri, pod, f"sleeping {sleep_ms} ms")
        started = time.monotonic()
        kubelet.stop_container(container_id, grace_seconds=grace_seconds)
        stopped_after = time.monotonic() - started
        out, _ = slow.communicate(timeout=30)
        return (slow.returncode, out), stopped_after, kubelet.container_status(container_id)


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(cri):
    (code, out), stopped_after, status = stop_during_request(cri, 2000, grace_seconds=30)
    assert code == 0 and json.loads(out)[0][0] == 200, out
    assert (status.exit_code, status.reason) == (0, "Completed"), status
    # It waited for the request (up to 2 s left), not for the grace period.
    assert 0.5 < stopped_after < 15, stopped_after
    assert cri.ctd.leftovers() == []


def test_sigkill_ends_the_server_at_once(cri):
    (code, _), stopped_after, status = stop_during_request(cri, 20000, grace_seconds=0)
    assert code != 0, "the request in flight was cut"
    assert status.exit_code == 137, status
    assert stopped_after < 5, stopped_after
    assert cri.ctd.leftovers() == []


def test_probes_pass_and_a_failing_probe_is_seen(cri):
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    web = pod.containers["web"]
    with serving(kubelet, pod) as (sandbox_id, _):
        pid = kubelet.pod_sandbox_info(sandbox_id)["pid"]
        # The server may take a moment to listen, as with initialDelaySeconds.
        deadline = time.monotonic() + 10
        while not (readiness := run_probe(pid, web, web["readinessProbe"]))[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        liveness = run_probe(pid, web, web["livenessProbe"])
        failing_http = run_probe(pid, web, {"httpGet": {"path": "/status/503", "port": "http"}})
        failing_tcp = run_probe(pid, web, {"tcpSocket": {"port": 8081}})
    assert readiness == (True, "HTTP 200")
    assert liveness == (True, "connected")
    assert failing_http == (False, "HTTP 503")
    assert failing_tcp[0] is False and "refused" in failing_tcp[1], failing_tcp
    assert cri.ctd.leftovers() == []


ORDER = {
    "id": "order-17", "currency": "eur", "coupon": "SAVE10",
    "customer": {"name": "Ada Lovelace", "country": "DE"},
    "items": [
        {"sku": "tea", "name": "Green tea", "unit_price_cents": 450, "quantity": 4, "tags": ["drink"]},
        {"sku": "pot", "name": "Tea pot", "unit_price_cents": 2990, "quantity": 1, "tags": ["kitchen", "gift"]},
        {"sku": "cup", "name": "Cup", "unit_price_cents": 800, "quantity": 2, "tags": ["kitchen"]},
    ],
}


def test_the_json_api_answers_like_its_native_twin_under_runc(cri):
    kubelet = cri.kubelet
    requests = [("POST", "/invoice", json.dumps(ORDER)), ("POST", "/invoice", "{}"), "/"]
    with serving(kubelet, Pod.load(os.path.join(MANIFESTS, "json-api.yaml"))) as (sandbox_id, _):
        wasm = get_in_pod(kubelet, sandbox_id, requests)
    with serving(kubelet, Pod.load(os.path.join(MANIFESTS, "json-api-native.yaml"))) as (sandbox_id, _):
        native = get_in_pod(kubelet, sandbox_id, requests)
    invoice = json.loads(wasm[0][1])
    assert wasm[0][0] == 200, wasm
    assert [line["sku"] for line in invoice["lines"]] == ["pot", "tea", "cup"]
    assert (invoice["subtotal_cents"], invoice["discount_cents"], invoice["vat_cents"], invoice["total_cents"]) == \
        (6390, 639, 1092, 6843)
    assert invoice["tags"] == ["drink", "gift", "kitchen"] and invoice["currency"] == "EUR"
    assert wasm[1][0] == 400 and wasm[1][1].startswith("not an order: missing field `id`"), wasm
    assert wasm[2][0] == 405, wasm
    assert wasm == native
    assert cri.ctd.leftovers() == []
