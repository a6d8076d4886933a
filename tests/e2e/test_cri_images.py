"""Wasm images pulled from a registry through CRI, as kubelet pulls them:
a plain image (the .wasm in a filesystem layer) and a wasm OCI artifact
(the .wasm as a layer of its own), plus artifacts that must fail clearly."""

import concurrent.futures
import hashlib
import os
import shutil

import grpc
import pytest

from harness import REPO_ROOT
from kubelet import read_cri_log, v1
from pods import Pod
from test_cri import MANIFESTS, check_completed, run_to_completion

HELLO_WASM = os.path.join(REPO_ROOT, "images", "workloads", "target", "wasm32-wasip1", "release", "hello.wasm")

HELLO_LINES = ["Hello from wasmlet!"]


def image(registry, name):
    return f"{registry.host}/wasmlet/{name}:latest"


def artifact_pod(registry, name, command=None, args=None):
    """The wasm-artifact manifest, running image `name` of our registry."""
    pod = Pod.load(os.path.join(MANIFESTS, "wasm-artifact.yaml"))
    container = pod.containers["hello"]
    container["image"] = image(registry, name)
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    return pod


def artifacts_pull(ctd):
    """containerd 1.6 cannot pull a wasm artifact: it tries to unpack it."""
    return (ctd.major, ctd.minor) >= (1, 7)


@pytest.fixture
def pulls_artifacts(cri):
    """Skips a test that needs an artifact pulled where containerd cannot."""
    if not artifacts_pull(cri.ctd):
        pytest.skip("containerd 1.6 cannot pull wasm artifacts (test_wasm_artifact_from_the_registry checks its error)")


def start_error(cri, pod):
    """The error StartContainer gives for the pod's one container."""
    kubelet = cri.kubelet
    with kubelet.running_pod(pod) as sandbox_id:
        container_id = kubelet.create_container(pod, sandbox_id, "hello")
        with pytest.raises(grpc.RpcError) as failed:
            kubelet.start_container(container_id)
    return failed.value.details()


def clear_cache(cri):
    """Forget every compiled module and stored layer of the node cache."""
    shutil.rmtree(cri.ctd.cache_dir)
    os.makedirs(cri.ctd.cache_dir)


def test_plain_image_from_the_registry(cri, registry):
    cri.kubelet.pull_image(image(registry, "hello-plain"))
    pod = Pod.load(os.path.join(MANIFESTS, "hello-wasm.yaml"))
    pod.containers["hello"]["image"] = image(registry, "hello-plain")
    seen = run_to_completion(cri, pod)
    check_completed(seen, HELLO_LINES + ["args: from a wasm pod", "env: HELLO_POD=hello-wasm"])
    assert cri.ctd.leftovers() == []


def test_wasm_artifact_from_the_registry(cri, registry):
    ref = image(registry, "hello-artifact")
    if not artifacts_pull(cri.ctd):
        with pytest.raises(grpc.RpcError) as failed:
            cri.kubelet.pull_image(ref)
        assert ref in failed.value.details()
        assert "mismatched image rootfs and manifest layers" in failed.value.details()
        return
    cri.kubelet.pull_image(ref)
    seen = run_to_completion(cri, artifact_pod(registry, "hello-artifact"))
    check_completed(seen, HELLO_LINES + ["args: from an artifact"])
    assert cri.ctd.leftovers() == []


def test_artifact_of_a_component(cri, registry, pulls_artifacts):
    cri.kubelet.pull_image(image(registry, "tcp-hello-artifact"))
    pod = artifact_pod(registry, "tcp-hello-artifact", command=["tcp-hello.wasm"], args=[])
    kubelet = cri.kubelet
    with kubelet.running_pod(pod) as sandbox_id:
        container_id = kubelet.start_containers(pod, sandbox_id)["hello"]
        kubelet.wait_container(container_id, v1.CONTAINER_RUNNING)
        kubelet.stop_container(container_id, grace_seconds=5)
        log = read_cri_log(kubelet.log_path(pod, "hello"))
    assert [entry[1:] for entry in log] == [("stdout", "F", "listening on port 8080")]
    assert cri.ctd.leftovers() == []


def test_a_command_chooses_among_several_wasm_layers(cri, registry, pulls_artifacts):
    cri.kubelet.pull_image(image(registry, "two-layers"))
    seen = run_to_completion(cri, artifact_pod(registry, "two-layers", command=["exit-code.wasm"], args=["0"]))
    check_completed(seen, ["exiting with 0"])
    details = start_error(cri, artifact_pod(registry, "two-layers", command=["other.wasm"]))
    assert "has 2 wasm layers and the container's command (other.wasm) names none of them" in details
    assert image(registry, "two-layers") in details
    assert cri.ctd.leftovers() == []


def test_unknown_layer_type_is_refused_clearly(cri, registry, pulls_artifacts):
    ref = image(registry, "bad-layer-type")
    cri.kubelet.pull_image(ref)
    details = start_error(cri, artifact_pod(registry, "bad-layer-type"))
    assert f"image {ref}" in details
    assert "has media type application/vnd.example.unknown, which is not a wasm layer" in details
    assert cri.ctd.leftovers() == []


def content_blob(ctd, digest):
    return os.path.join(ctd.root, "io.containerd.content.v1.content", "blobs", "sha256", digest.split(":", 1)[1])


def test_corrupt_layer_in_the_content_store_is_refused(cri, registry, pulls_artifacts):
    ref = image(registry, "hello-artifact")
    cri.kubelet.pull_image(ref)
    with open(HELLO_WASM, "rb") as f:
        layer_digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    blob = content_blob(cri.ctd, layer_digest)
    with open(blob, "rb") as f:
        original = f.read()
    clear_cache(cri)  # else the layer comes from the node cache
    try:
        with open(blob, "r+b") as f:
            f.seek(len(original) // 2)
            f.write(bytes([original[len(original) // 2] ^ 0xFF]))
        details = start_error(cri, artifact_pod(registry, "hello-artifact"))
    finally:
        with open(blob, "wb") as f:
            f.write(original)
    assert f"image {ref}: layer {layer_digest} has digest sha256:" in details
    assert "the content does not match" in details
    assert cri.ctd.leftovers() == []


def test_concurrent_first_starts_compile_once(cri, registry, pulls_artifacts):
    cri.kubelet.pull_image(image(registry, "hello-artifact"))
    clear_cache(cri)
    log_start = os.path.getsize(cri.ctd.log_path)
    pods = [artifact_pod(registry, "hello-artifact") for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        for seen in pool.map(lambda pod: run_to_completion(cri, pod), pods):
            check_completed(seen, HELLO_LINES + ["args: from an artifact"])
    with open(cri.ctd.log_path, errors="replace") as f:
        f.seek(log_start)
        log = f.read()
    outcomes = [outcome for outcome in ("Miss", "Hit") for _ in range(log.count(f": cache {outcome}"))]
    assert sorted(outcomes) == ["Hit", "Hit", "Hit", "Miss"], log[-3000:]
    assert cri.ctd.leftovers() == []
