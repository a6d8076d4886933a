"""Third-party programs, as their users get them from PyPI and crates.io
(images/third_party.sh), run as pods through CRI on input from a volume,
and must write exactly what the same .wasm writes under `wasmtime run` of
the shim's wasmtime version (tests/wasmtime_cli.py). Among them: Yosys,
which needs WebAssembly exception handling, and ripgrep, a WASI 0.2
component."""

import gzip
import json
import os
import shutil
import subprocess

import pytest

from harness import REPO_ROOT
from pods import Pod
from test_cri import MANIFESTS
from test_cri_pods import empty_dir, exited, host_dir

PROGRAMS = os.path.join(REPO_ROOT, "out", "third-party")

COUNTER_V = """\
// A 4-bit counter with enable and synchronous reset.
module counter(input clk, input rst, input en, output reg [3:0] q);
  always @(posedge clk)
    if (rst) q <= 4'd0;
    else if (en) q <= q + 4'd1;
endmodule
"""

# 3 is odd, so invertible modulo 256: x = 7 is the one model.
PROBLEM_SMT2 = """\
(set-logic QF_BV)
(set-option :produce-models true)
(declare-const x (_ BitVec 8))
(assert (= (bvmul x #x03) #x15))
(check-sat)
(get-value (x))
(exit)
"""

@pytest.fixture(scope="module")
def wasmtime():
    from wasmtime_cli import ensure_wasmtime
    return ensure_wasmtime()


def reference(wasmtime, program, args, dirs, code=0):
    """What the program's .wasm writes to stdout under `wasmtime run` (of
    the code `wasmtime compile` made of it), with {guest path: host dir}
    preopened; it must exit with `code`."""
    from wasmtime_cli import precompiled
    code_path = precompiled(wasmtime, os.path.join(PROGRAMS, f"{program}.wasm"))
    preopens = [f"--dir={host}::{guest}" for guest, host in dirs.items()]
    done = subprocess.run([wasmtime, "run", "--allow-precompiled", *preopens, code_path, *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stderr
    return done.stdout.splitlines()


def run_pod(cri, manifest, inputs):
    """Runs the one-container pod of `manifest` with its `in` hostPath
    holding `inputs`; returns its status, stdout lines, the hostPath and
    the files of its `out` emptyDir, if it has one."""
    pod = Pod.load(os.path.join(MANIFESTS, manifest))
    source = host_dir(cri, "in", {name: (text, 0o644) for name, text in inputs.items()})
    pod.volumes["in"]["hostPath"]["path"] = source
    with exited(cri, pod) as (status, lines):
        written = {}
        if "out" in pod.volumes:
            out = empty_dir(cri, pod, "out")
            for name in os.listdir(out):
                with open(os.path.join(out, name), "rb") as f:
                    written[name] = f.read()
    return pod, status, lines, source, written


def test_yosys_needs_exceptions_and_synthesises_like_wasmtime(cri, wasmtime, tmp_path):
    pod, status, lines, source, written = run_pod(cri, "yosys-synth.yaml", {"counter.v": COUNTER_V})
    assert (status.exit_code, status.reason) == (0, "Completed"), (status, lines)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    dirs = {"/in": source, "/out": str(out), "/tmp": str(tmp), "/share": os.path.join(PROGRAMS, "yosys-share")}
    expected = reference(wasmtime, "yosys", pod.containers["yosys"]["args"], dirs)
    assert lines == expected
    assert list(written) == ["counter.json"]
    assert written["counter.json"] == (out / "counter.json").read_bytes()
    # A real netlist: the counter's 4 flip-flops among yosys's gate cells.
    cells = json.loads(written["counter.json"])["modules"]["counter"]["cells"].values()
    assert sum("DFF" in cell["type"] for cell in cells) == 4, [cell["type"] for cell in cells]
    # And it does need exception handling: wasmtime without it refuses it.
    refused = subprocess.run([wasmtime, "run", "-W", "exceptions=n", os.path.join(PROGRAMS, "yosys.wasm"), "-V"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "exception handling" in refused.stderr, refused.stderr
    assert cri.ctd.leftovers() == []


def test_boolector_solves_like_wasmtime(cri, wasmtime):
    pod, status, lines, source, _ = run_pod(cri, "boolector-solve.yaml", {"problem.smt2": PROBLEM_SMT2})
    assert (status.exit_code, status.reason) == (10, "Error"), (status, lines)  # 10: satisfiable
    assert lines[0] == "sat"
    assert "#b00000111" in "".join(lines[1:])
    assert lines == reference(wasmtime, "boolector", pod.containers["boolector"]["args"], {"/in": source}, code=10)
    assert cri.ctd.leftovers() == []


def test_ripgrep_component_searches_like_wasmtime(cri, wasmtime):
    docs = {}
    for name in ("README.md", "ARCHITECTURE.md"):
        with open(os.path.join(REPO_ROOT, name)) as f:
            docs[name] = f.read()
    pod, status, lines, source, _ = run_pod(cri, "ripgrep-search.yaml", docs)
    assert (status.exit_code, status.reason) == (0, "Completed"), (status, lines)
    assert lines and all(line.startswith(("/in/ARCHITECTURE.md:", "/in/README.md:")) for line in lines), lines[:5]
    assert lines == reference(wasmtime, "ripgrep", pod.containers["ripgrep"]["args"], {"/in": source})
    assert cri.ctd.leftovers() == []


def test_zopfli_compresses_like_wasmtime(cri, wasmtime, tmp_path):
    with open(os.path.join(REPO_ROOT, "ARCHITECTURE.md")) as f:
        text = f.read()
    pod, status, lines, source, _ = run_pod(cri, "zopfli-compress.yaml", {"ARCHITECTURE.md": text})
    assert (status.exit_code, status.reason) == (0, "Completed"), (status, lines)
    with open(os.path.join(source, "ARCHITECTURE.md.gz"), "rb") as f:
        compressed = f.read()
    assert gzip.decompress(compressed).decode() == text
    shutil.copy(os.path.join(source, "ARCHITECTURE.md"), tmp_path)
    reference(wasmtime, "zopfli", pod.containers["zopfli"]["args"], {"/in": str(tmp_path)})
    assert compressed == (tmp_path / "ARCHITECTURE.md.gz").read_bytes()
    assert cri.ctd.leftovers() == []
