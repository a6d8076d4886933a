"""The large module: comrak, a real command-line program of 3 MB of wasm
built from crates.io (images/build.sh), runs as a pod on documents from a
mounted volume, and must write exactly what its native build writes."""

import os
import shutil
import subprocess

from harness import REPO_ROOT
from pods import Pod
from test_cri import MANIFESTS
from test_cri_pods import empty_dir, exited, host_dir

NATIVE_COMRAK = os.path.join(REPO_ROOT, "out", "comrak", "x86_64-unknown-linux-gnu", "bin", "comrak")


def documents(cri):
    """A host directory of real Markdown: this repo's README and
    ARCHITECTURE, and a Rust source file in a fenced block, so syntax
    highlighting has work to do."""
    with open(os.path.join(REPO_ROOT, "shim", "src", "shared", "node_cache.rs")) as f:
        rust = f.read()
    docs = host_dir(cri, "docs", {"cache.md": (f"# node_cache.rs\n\n```rust\n{rust}```\n", 0o644)})
    for name in ("README.md", "ARCHITECTURE.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), docs)
    return docs


def native_html(container, docs, tmp_path):
    """What the native comrak writes for the container's args, with the
    pod's /docs and /out mapped to host directories."""
    args = [arg.replace("/docs/", docs + "/").replace("/out/", f"{tmp_path}/")
            for arg in container["args"]]
    # The native build looks for a config file below XDG_CONFIG_HOME even
    # when told not to read one: keep it in the test's directory.
    env = {"PATH": os.environ["PATH"], "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    subprocess.run([NATIVE_COMRAK, *args], env=env, check=True)
    with open(tmp_path / "docs.html", "rb") as f:
        return f.read()


def test_comrak_renders_a_mounted_volume_like_its_native_build(cri, tmp_path):
    pod = Pod.load(os.path.join(MANIFESTS, "comrak-docs.yaml"))
    docs = documents(cri)
    pod.volumes["docs"]["hostPath"]["path"] = docs
    with exited(cri, pod) as (status, logs):
        with open(os.path.join(empty_dir(cri, pod, "out"), "docs.html"), "rb") as f:
            html = f.read()
    assert (status.exit_code, status.reason) == (0, "Completed"), (status, logs)
    expected = native_html(pod.containers["comrak"], docs, tmp_path)
    assert html == expected
    # The theme's inline styles: syntect highlighted the Rust block.
    assert b'<pre lang="rust" style="background-color:#2b303b;">' in html
    assert sorted(os.listdir(docs)) == ["ARCHITECTURE.md", "README.md", "cache.md"]
    assert cri.ctd.leftovers() == []
