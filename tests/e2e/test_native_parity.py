"""Native containers in a wasm pod answer CRI as under runc's own shim: the
differential checks of tests/cri/parity.py (OOM kills, stats, stop, terminals
for exec and attach, in-place update), each run in a runc pod and in a
wasmlet pod and compared fact by fact."""

import pytest

import parity


@pytest.mark.parametrize("check", parity.CHECKS, ids=lambda check: check.__name__)
def test_native_containers_answer_as_under_runc(cri, check):
    check(cri.kubelet, cri.ctd.leftovers)
