"""A hybrid pod: a wasm component serving TCP and a runc sidecar talking to
it on 127.0.0.1, through containerd's CRI as kubelet runs them."""

import os
import time

from harness import REPO_ROOT
from kubelet import v1
from pods import Pod

MANIFEST = os.path.join(REPO_ROOT, "tests", "cri", "manifests", "hybrid-tcp.yaml")


def test_sidecar_reaches_the_wasm_server_on_loopback(cri):
    kubelet = cri.kubelet
    pod = Pod.load(MANIFEST)
    with kubelet.running_pod(pod) as sandbox:
        ids = kubelet.start_containers(pod, sandbox)
        deadline = time.monotonic() + 10
        while True:
            res = kubelet.exec_sync(ids["sidecar"], ["/bin/sh", "-c", "nc 127.0.0.1 8080 </dev/null"])
            if res.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server may not listen yet
        assert (res.exit_code, res.stdout.decode()) == (0, "hello from wasm over tcp #1\n"), res.stderr
        assert kubelet.container_status(ids["server"]).state == v1.CONTAINER_RUNNING
    assert cri.ctd.leftovers() == []
