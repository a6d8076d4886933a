"""Pods from Kubernetes manifests through containerd's CRI, as kubelet runs them."""

import json
import os
import re
import shutil

from conftest import cri_session
from harness import REPO_ROOT, RUNC_RUNTIME, WASM_RUNTIME
from kubelet import read_cri_log, v1
from pods import Pod

MANIFESTS = os.path.join(REPO_ROOT, "tests", "cri", "manifests")
# containerd stamps CRI log lines with RFC 3339 times, in nanoseconds.
CRI_LOG_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)")


def runtime_of(ctd, container_id):
    """The containerd runtime (shim) of a sandbox or container."""
    info = json.loads(ctd.ctr("containers", "info", container_id).stdout)
    return info["Runtime"]["Name"]


def run_to_completion(cri, manifest):
    """Run a one-container pod (a Pod, or a manifest's file name) like
    kubelet until its container exits, then stop and remove the pod.
    Returns what was seen on the way: the sandbox's status and runtime while
    it ran, the container's runtime, its final status and its CRI log
    entries."""
    kubelet = cri.kubelet
    pod = manifest if isinstance(manifest, Pod) else Pod.load(os.path.join(MANIFESTS, manifest))
    (name,) = pod.containers
    seen = {}
    sandbox_id = kubelet.run_pod_sandbox(pod)
    try:
        seen["sandbox"] = kubelet.pod_sandbox_status(sandbox_id)
        seen["sandbox runtime"] = runtime_of(cri.ctd, sandbox_id)
        container_id = kubelet.create_container(pod, sandbox_id, name)
        seen["container runtime"] = runtime_of(cri.ctd, container_id)
        kubelet.start_container(container_id)
        seen["status"] = kubelet.wait_container(container_id)
        seen["log"] = read_cri_log(kubelet.log_path(pod, name))
    except BaseException:
        # Don't let a failed cleanup hide why the pod failed.
        try:
            kubelet.stop_pod_sandbox(sandbox_id)
            kubelet.remove_pod_sandbox(sandbox_id)
        except Exception:
            pass
        raise
    kubelet.stop_pod_sandbox(sandbox_id)
    kubelet.remove_pod_sandbox(sandbox_id)
    listed = kubelet.runtime.ListPodSandbox(v1.ListPodSandboxRequest(), timeout=30).items
    assert sandbox_id not in [s.id for s in listed]
    return seen


def check_sandbox(seen, name):
    sandbox = seen["sandbox"]
    assert sandbox.state == v1.SANDBOX_READY
    assert sandbox.metadata.name == name
    # From the test CNI plugin: loopback space only.
    assert sandbox.network.ip.startswith("127.0.100."), sandbox.network


def check_completed(seen, stdout_lines):
    status = seen["status"]
    assert (status.exit_code, status.reason) == (0, "Completed"), status
    for time, _, _, _ in seen["log"]:
        assert CRI_LOG_TIME.fullmatch(time), seen["log"]
    assert [entry[1:] for entry in seen["log"]] == [("stdout", "F", line) for line in stdout_lines]


def test_runc_pod_from_manifest(cri):
    seen = run_to_completion(cri, "busybox-echo.yaml")
    check_sandbox(seen, "busybox-echo")
    assert seen["sandbox"].runtime_handler == ""
    assert seen["sandbox runtime"] == seen["container runtime"] == RUNC_RUNTIME
    check_completed(seen, ["hello from a runc pod"])
    assert cri.ctd.leftovers() == []


def test_wasm_pod_from_manifest(cri):
    seen = run_to_completion(cri, "hello-wasm.yaml")
    check_sandbox(seen, "hello-wasm")
    assert seen["sandbox"].runtime_handler == "wasmlet"
    assert seen["sandbox runtime"] == seen["container runtime"] == WASM_RUNTIME
    check_completed(seen, ["Hello from wasmlet!", "args: from a wasm pod", "env: HELLO_POD=hello-wasm"])
    assert cri.ctd.leftovers() == []


def test_leftovers_know_a_live_pod(cri):
    """What a running pod holds is its own until the pod is removed, and the
    harness sees every kind of it: shim, pause, netns, cgroups, CNI."""
    kubelet = cri.kubelet
    pod = Pod.load(os.path.join(MANIFESTS, "busybox-echo.yaml"))
    sandbox_id = kubelet.run_pod_sandbox(pod)
    try:
        assert cri.ctd.leftovers(wait=0) == []
        live = "\n".join(cri.ctd.leftovers(include_live=True, wait=0))
        for what in ("containerd-shim-runc-v2", "/pause", "/netns/", f"pod{pod.uid}\n",
                     f"cni address 127.0.100.", "\nveth wl"):
            assert what in live + "\n", (what, live)
    finally:
        kubelet.stop_pod_sandbox(sandbox_id)
        kubelet.remove_pod_sandbox(sandbox_id)
    assert cri.ctd.leftovers() == []


def test_runtime_options_reach_the_shims_runc(tmp_path):
    """The wasmlet handler's options table (runc's keys) reaches the runc the
    shim runs a pod's sandbox with: inline from 1.7, by ConfigPath on 1.6."""
    calls = tmp_path / "runc-calls"
    wrapper = tmp_path / "runc-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {shutil.which("runc")} "$@"\n')
    wrapper.chmod(0o755)
    with cri_session(["pause", "hello"], wasmlet_options={"BinaryName": str(wrapper)}) as own:
        seen = run_to_completion(own, "hello-wasm.yaml")
        check_completed(seen, ["Hello from wasmlet!", "args: from a wasm pod", "env: HELLO_POD=hello-wasm"])
        sandbox_id = seen["sandbox"].id
        runc_args = calls.read_text().splitlines()
        assert any(line.startswith(f"--root {own.ctd.runc_root}/k8s.io ") and " create " in line
                   and line.endswith(f" {sandbox_id}") for line in runc_args), runc_args
        assert own.ctd.leftovers() == []
