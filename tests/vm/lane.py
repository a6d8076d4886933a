"""The VM lane (`make vm-test`, and part of `make test`): wasmlet on a node
as most Kubernetes nodes are, systemd as PID 1 and cgroup v2 only, which
this machine is not. tests/vm/node.sh makes the node once (cached under
/var/cache/wasmlet/vm); this boots a copy-on-write disk of it under qemu
(TCG: the host's KVM takes no ordinary guests), shares with it the release
(`make release`), the test images, the CRI test kit and tests/vm/guest_lane.py,
lets the node run the scenarios and power off, and prints one line per
scenario. It fails when a scenario failed, or did not run.

    python3 tests/vm/lane.py        (as root)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RELEASE = os.path.join(REPO, "out", "release")
IMAGES = os.path.join(REPO, "out", "images")
OUT = os.path.join(REPO, "out", "vm")
IMAGE_NAMES = ["pause", "hello", "sleep", "memory-hog", "busybox"]
CRI_KIT = ["kubelet.py", "pods.py", "parity.py", "gen_stubs.py", "cni", "manifests"]
# Boot (~25 s), two installs with containerd restarts and a dozen pods at
# 3-5 s each under TCG: some minutes. Past this the node is stuck.
TIMEOUT = 1800
EXPECTED = 32  # scenarios guest_lane.py runs

sys.path.insert(0, os.path.join(REPO, "tests", "cri"))
import gen_stubs  # noqa: E402  (the CRI stubs, made here: the node has no grpcio-tools)


def share_dir(root):
    """What the node sees at /mnt/host."""
    share = os.path.join(root, "share")
    lane = os.path.join(share, "lane")
    os.makedirs(os.path.join(lane, "cri"))
    for name in ("guest.sh", "guest_lane.py"):
        shutil.copy(os.path.join(HERE, name), lane)
    for name in CRI_KIT:
        source = os.path.join(REPO, "tests", "cri", name)
        (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, os.path.join(lane, "cri", name))
    shutil.copytree(gen_stubs.generate(), os.path.join(share, "stubs"))
    os.makedirs(os.path.join(share, "release"))
    for name in ("containerd-shim-wasmlet-v1", "wasmlet-node-installer"):
        path = os.path.join(RELEASE, name)
        if not os.path.exists(path):
            sys.exit(f"lane.py: {path} is missing: run make release")
        shutil.copy(path, os.path.join(share, "release"))
    os.makedirs(os.path.join(share, "images"))
    for name in IMAGE_NAMES:
        shutil.copy(os.path.join(IMAGES, f"{name}.tar"), os.path.join(share, "images"))
    return share


def boot(node, root, share):
    """Runs the node until it powers off; returns (seconds, timed out)."""
    disk = os.path.join(root, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", os.path.join(node, "root.img"), disk],
                   check=True)
    qemu = os.path.join(node, "qemu")
    command = [
        os.path.join(qemu, "usr", "bin", "qemu-system-x86_64"),
        "-L", os.path.join(qemu, "usr", "share", "seabios"), "-L", os.path.join(qemu, "usr", "share", "qemu"),
        "-accel", "tcg,thread=multi", "-smp", "2", "-m", "2048",
        "-kernel", os.path.join(node, "vmlinuz"), "-initrd", os.path.join(node, "initrd.img"),
        "-append", "console=ttyS0 root=/dev/vda rw systemd.unified_cgroup_hierarchy=1 panic=-1",
        "-display", "none", "-no-reboot", "-nic", "none",
        "-serial", f"file:{os.path.join(root, 'console.log')}",
        "-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe",
        "-fsdev", f"local,id=share,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=share,mount_tag=host",
    ]
    env = {**os.environ, "QEMU_MODULE_DIR": os.path.join(qemu, "usr", "lib", "x86_64-linux-gnu", "qemu")}
    started = time.monotonic()
    vm = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        vm.wait(timeout=TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        vm.kill()
        vm.wait()
        timed_out = True
    if vm.returncode not in (0, None) and not timed_out:
        print(f"lane.py: qemu exited {vm.returncode}: {vm.stderr.read().decode(errors='replace')}", file=sys.stderr)
    return time.monotonic() - started, timed_out


def main():
    node = subprocess.run(["bash", os.path.join(HERE, "node.sh")], check=True, capture_output=True, text=True).stdout.strip()
    root = tempfile.mkdtemp(prefix="wasmlet-vm-")
    try:
        share = share_dir(root)
        seconds, timed_out = boot(node, root, share)
        os.makedirs(OUT, exist_ok=True)
        for name in ("console.log",):
            shutil.copy(os.path.join(root, name), OUT)
        results_dir = os.path.join(share, "results")
        if os.path.isdir(results_dir):
            shutil.copytree(results_dir, os.path.join(OUT, "results"), dirs_exist_ok=True)
        results = []
        results_file = os.path.join(results_dir, "results.jsonl")
        if os.path.exists(results_file):
            with open(results_file) as f:
                results = [json.loads(line) for line in f if line.strip()]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for result in results:
        first = result["detail"].splitlines()[0] if result["detail"] else ""
        print(f"vm lane: {'PASS' if result['ok'] else 'FAIL'} {result['scenario']} ({result['seconds']} s): {first}")
    for result in results:
        if not result["ok"]:
            print(f"--- {result['scenario']}\n{result['detail']}")
    failed = [r for r in results if not r["ok"]]
    print(f"vm lane: {len(results) - len(failed)} of {EXPECTED} scenarios passed in {seconds:.0f} s"
          f"{' (timed out)' if timed_out else ''}; the node's console is in {OUT}/console.log")
    return 1 if failed or timed_out or len(results) < EXPECTED else 0


if __name__ == "__main__":
    sys.exit(main())
