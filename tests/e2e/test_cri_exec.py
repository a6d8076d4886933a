"""Streaming exec through CRI (what `kubectl exec` uses): containerd's
streaming server, reached over WebSocket (channel.k8s.io, v4)."""

import json
import os

import websocket

from harness import REPO_ROOT
from kubelet import v1
from pods import Pod

MANIFEST = os.path.join(REPO_ROOT, "tests", "cri", "manifests", "hybrid-tcp.yaml")
STDOUT, STDERR, STATUS = 1, 2, 3


def stream_exec(kubelet, container_id, *cmd):
    """Runs cmd over the streaming URL; returns (stdout, stderr, status)."""
    url = kubelet.runtime.Exec(v1.ExecRequest(container_id=container_id, cmd=list(cmd),
                                              stdout=True, stderr=True), timeout=30).url
    ws = websocket.create_connection(url.replace("http://", "ws://", 1), timeout=30,
                                     subprotocols=["v4.channel.k8s.io"])
    out = {STDOUT: b"", STDERR: b"", STATUS: b""}
    try:
        while True:
            frame = ws.recv()
            if not frame:
                break
            frame = frame if isinstance(frame, bytes) else frame.encode()
            out[frame[0]] = out.get(frame[0], b"") + frame[1:]
    except websocket.WebSocketConnectionClosedException:
        pass
    finally:
        ws.close()
    return out[STDOUT].decode(), out[STDERR].decode(), json.loads(out[STATUS] or b"{}")


def test_streaming_exec_into_the_sidecar_and_refusal_for_wasm(cri):
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    with kubelet.running_pod(pod) as sandbox:
        ids = kubelet.start_containers(pod, sandbox)
        stdout, stderr, status = stream_exec(kubelet, ids["sidecar"], "/bin/sh", "-c", "echo out; echo err >&2")
        assert (stdout, stderr, status.get("status")) == ("out\n", "err\n", "Success"), status
        _, _, status = stream_exec(kubelet, ids["sidecar"], "/bin/sh", "-c", "exit 3")
        assert status.get("status") == "Failure"
        assert {"reason": "ExitCode", "message": "3"} in status["details"]["causes"], status
        _, _, status = stream_exec(kubelet, ids["server"], "/tcp-hello.wasm")
        assert status.get("status") == "Failure"
        assert "not supported for wasm tasks" in status.get("message", ""), status
    assert cri.ctd.leftovers() == []
