"""The VM lane's scenarios, run inside the VM node (systemd as PID 1, cgroup
v2 only, containerd as a systemd service) by wasmlet-vm-lane.service.

wasmlet is installed by its own node installer from the release, as a user
would; pods go through CRI as kubelet sends them (tests/cri), once with the
systemd cgroup driver and once with cgroupfs. Every scenario checks where
the processes really are (/proc/PID/cgroup, the unit systemd shows), not
only that the pod ran. Each result is a line of results/results.jsonl in
the host's share; the host prints them.

    python3 guest_lane.py SHARE
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback

import grpc
import yaml

import parity
from kubelet import Kubelet, read_cri_log, v1
from pods import Pod

SHARE = sys.argv[1] if len(sys.argv) > 1 else "/mnt/host"
RESULTS = os.path.join(SHARE, "results", "results.jsonl")
MANIFESTS = os.path.join(SHARE, "lane", "cri", "manifests")
CONFIG = "/etc/containerd/config.toml"
SOCKET = "/run/containerd/containerd.sock"
SHIM = "/opt/wasmlet/bin/containerd-shim-wasmlet-v1"
# containerd 1.6 (Debian 12's) ignores runtime_path when it starts a pod's
# sandbox, so there the installer also links the shim onto its PATH.
LINK = "/usr/local/bin/containerd-shim-wasmlet-v1"
CNI_BIN, CNI_CONF = "/opt/cni/bin", "/etc/cni/net.d"
CGROUP = "/sys/fs/cgroup"
IMAGES = ["pause", "hello", "sleep", "memory-hog", "busybox"]
KUBELET_DIR = "/var/lib/wasmlet-lane"


def run(*cmd, check=True, env=None, timeout=300):
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def systemctl_show(unit, *properties):
    out = run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def containerd_pid():
    return int(systemctl_show("containerd", "MainPID")["MainPID"])


def wait_for(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


def serving():
    return run("ctr", "--address", SOCKET, "version", check=False).returncode == 0


# ---- the node ----------------------------------------------------------------


def base_config(systemd):
    """containerd's own default config, with what this node needs: the pause
    image the lane brings, the test CNI plugin, and runc's cgroup driver."""
    text = run("containerd", "config", "default").stdout
    text = re.sub(r'sandbox_image = ".*"', 'sandbox_image = "wasmlet.test/pause:latest"', text)
    text = text.replace("SystemdCgroup = false", f"SystemdCgroup = {'true' if systemd else 'false'}")
    text = re.sub(r'bin_dir = ".*"', f'bin_dir = "{CNI_BIN}"', text)
    text = re.sub(r'conf_dir = ".*"', f'conf_dir = "{CNI_CONF}"', text)
    return text


def restart_containerd():
    run("systemctl", "restart", "containerd")
    wait_for(serving, "containerd serving after a restart")


def set_up_node():
    """The test CNI plugin (no routable address), the images, containerd
    configured for the systemd driver."""
    os.makedirs(CNI_BIN, exist_ok=True)
    os.makedirs(CNI_CONF, exist_ok=True)
    for name in ("wasmlet-loopback", "loopback"):
        shutil.copy(os.path.join(SHARE, "lane", "cri", "cni", "wasmlet-loopback"), os.path.join(CNI_BIN, name))
        os.chmod(os.path.join(CNI_BIN, name), 0o755)
    os.makedirs("/var/lib/cni/wasmlet", exist_ok=True)
    with open(os.path.join(CNI_CONF, "10-wasmlet-loopback.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "wasmlet-loopback",
                   "plugins": [{"type": "wasmlet-loopback", "dataDir": "/var/lib/cni/wasmlet"}]}, f)
    with open(CONFIG, "w") as f:
        f.write(base_config(systemd=True))
    restart_containerd()
    for image in IMAGES:
        run("ctr", "--address", SOCKET, "-n", "k8s.io", "images", "import", os.path.join(SHARE, "images", f"{image}.tar"))


def installer(command, shim=None):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RUST_LOG": "info", "WASMLET_HOST_ROOT": "/",
           "WASMLET_SHIM": shim or os.path.join(SHARE, "release", "containerd-shim-wasmlet-v1")}
    return run(os.path.join(SHARE, "release", "wasmlet-node-installer"), command, env=env, check=False)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---- scenarios ---------------------------------------------------------------


class Lane:
    def __init__(self):
        self.failed = 0

    def scenario(self, name, function, *args):
        started = time.monotonic()
        try:
            detail = function(*args) or ""
            ok = True
        except Exception as err:  # a scenario's failure is its result, the lane goes on
            detail = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
            ok = False
            self.failed += 1
        record = {"scenario": name, "ok": ok, "seconds": round(time.monotonic() - started, 1), "detail": detail}
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{'PASS' if ok else 'FAIL'} {name} ({record['seconds']} s) {detail.splitlines()[0] if detail else ''}", flush=True)


def pod(name, **changes):
    with open(os.path.join(MANIFESTS, name)) as f:
        document = yaml.safe_load(f)
    document["spec"].update(changes)
    return Pod(document)


def container_cgroup(pid):
    """The cgroup v2 path of a process, from /proc."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [l.strip() for l in f]
    assert len(lines) == 1 and lines[0].startswith("0::"), f"not on cgroup v2 alone: {lines}"
    return lines[0][3:]


def cgroup_file(path, name):
    with open(os.path.join(CGROUP, path.strip("/"), name)) as f:
        return f.read().strip()


def where_it_is(lane_kubelet, pod_object, container_id, driver):
    """Asserts the container's process is in its own cgroup in its pod's,
    and with systemd in its scope in the pod's slice; returns (pid, cgroup)."""
    pid = lane_kubelet.container_info(container_id)["pid"]
    cgroup = container_cgroup(pid)
    pod_dir = os.path.relpath(lane_kubelet.pod_cgroup_dir(pod_object), CGROUP)
    if driver == "systemd":
        unit = f"cri-containerd-{container_id}.scope"
        assert cgroup == f"/{pod_dir}/{unit}", (cgroup, pod_dir)
        shown = systemctl_show(unit, "ActiveState", "Slice")
        assert shown == {"ActiveState": "active", "Slice": pod_object.systemd_slices()[-1]}, shown
    else:
        assert cgroup == f"/{pod_dir}/{container_id}", (cgroup, pod_dir)
    return pid, cgroup


def wasm_pod_runs_to_completion(k, driver):
    hello = pod("hello-wasm.yaml")
    with k.running_pod(hello) as sandbox:
        container = k.start_containers(hello, sandbox)["hello"]
        status = k.wait_container(container)
        lines = [text for _, stream, _, text in read_cri_log(k.log_path(hello, "hello")) if stream == "stdout"]
    assert (status.exit_code, status.reason) == (0, "Completed"), status
    assert lines and lines[0] == "Hello from wasmlet!", lines
    sleeping = pod("sleep-wasm.yaml")
    with k.running_pod(sleeping) as sandbox:
        container = k.start_containers(sleeping, sandbox)["sleep"]
        k.wait_container(container, v1.CONTAINER_RUNNING)
        _, cgroup = where_it_is(k, sleeping, container, driver)
        k.stop_container(container, grace_seconds=10)
    return f"log {lines[0]!r}; instance in {cgroup}"


def limits_and_oom_beside_a_neighbour(k, driver):
    with open(os.path.join(MANIFESTS, "memory-limit.yaml")) as f:
        document = yaml.safe_load(f)
    # The neighbour gets limits of its own, to find in its cgroup.
    document["spec"]["containers"][1]["resources"] = {"limits": {"memory": "32Mi", "cpu": "100m"}}
    pair = Pod(document)
    with k.running_pod(pair) as sandbox:
        ids = k.start_containers(pair, sandbox)
        k.wait_container(ids["sleep"], v1.CONTAINER_RUNNING)
        _, sleep_cgroup = where_it_is(k, pair, ids["sleep"], driver)
        hog = k.wait_container(ids["hog"])
        neighbour = k.container_status(ids["sleep"])
        limits = {name: cgroup_file(sleep_cgroup, name) for name in ("memory.max", "cpu.max", "pids.max")}
    assert (hog.exit_code, hog.reason) == (137, "OOMKilled"), hog
    assert neighbour.state == v1.CONTAINER_RUNNING, neighbour
    assert (limits["memory.max"], limits["cpu.max"]) == (str(32 << 20), "10000 100000"), limits
    return f"hog OOMKilled, neighbour running; neighbour's limits {limits}"


def stats_match_the_cgroup(k, driver):
    sleeping = pod("sleep-wasm.yaml")
    with k.running_pod(sleeping) as sandbox:
        container = k.start_containers(sleeping, sandbox)["sleep"]
        k.wait_container(container, v1.CONTAINER_RUNNING)
        _, cgroup = where_it_is(k, sleeping, container, driver)
        stats = k.container_stats(container)
        current = int(cgroup_file(cgroup, "memory.current"))
        inactive = int(re.search(r"^inactive_file (\d+)$", cgroup_file(cgroup, "memory.stat"), re.M).group(1))
        pod_usage = int(cgroup_file(os.path.relpath(k.pod_cgroup_dir(sleeping), CGROUP), "memory.current"))
        k.stop_container(container, grace_seconds=10)
    working_set = stats.memory.working_set_bytes.value
    # Read a moment apart: within 1 MiB.
    assert abs(working_set - (current - inactive)) < 1 << 20, (working_set, current, inactive)
    assert stats.cpu.usage_core_nano_seconds.value > 0, stats
    # The instance's pages are charged to its pod.
    assert pod_usage >= current > 0, (pod_usage, current)
    return f"working set {working_set} (memory.current {current} - inactive_file {inactive}); pod {pod_usage}"


def hybrid_pod_with_a_runc_sidecar(k, driver):
    hybrid = pod("hybrid.yaml")
    with k.running_pod(hybrid) as sandbox:
        ids = k.start_containers(hybrid, sandbox)
        places = {}
        for name, container in ids.items():
            k.wait_container(container, v1.CONTAINER_RUNNING)
            places[name] = where_it_is(k, hybrid, container, driver)[1]
    return "; ".join(f"{name} in {place}" for name, place in places.items())


def the_same_resources_as_runc(k, driver):
    """A wasm container and a runc container of the same resources in one
    pod get the same unit settings from systemd."""
    with open(os.path.join(MANIFESTS, "sleep-wasm.yaml")) as f:
        document = yaml.safe_load(f)
    wasm = document["spec"]["containers"][0]
    native = {"name": "native", "image": "wasmlet.test/busybox:latest", "command": ["/bin/sleep", "3600"],
              "resources": wasm["resources"]}
    document["spec"]["containers"].append(native)
    both = Pod(document)
    properties = ("Slice", "Delegate", "MemoryMax", "CPUWeight", "CPUQuotaPerSecUSec", "TasksMax", "MemoryAccounting")
    with k.running_pod(both) as sandbox:
        ids = k.start_containers(both, sandbox)
        shown = {}
        for name, container in ids.items():
            k.wait_container(container, v1.CONTAINER_RUNNING)
            shown[name] = systemctl_show(f"cri-containerd-{container}.scope", *properties)
    assert shown["sleep"] == shown["native"], shown
    return f"both {shown['sleep']}"


def cri_answers(k, container):
    try:
        k.container_status(container)
        return True
    except grpc.RpcError:
        return False


def containerd_killed_then_an_oom(k, driver):
    """containerd SIGKILLed under a hybrid pod and started again by systemd:
    the pod runs on, and an OOM kill in it (memory.events on v2) reaches CRI
    through the shim's reconnected events."""
    with open(os.path.join(MANIFESTS, "hybrid.yaml")) as f:
        document = yaml.safe_load(f)
    document["spec"]["containers"].append({"name": "hog", "image": "wasmlet.test/memory-hog:latest",
                                           "resources": {"limits": {"memory": "32Mi"}}})
    hybrid = Pod(document)
    with k.running_pod(hybrid) as sandbox:
        ids = {name: k.create_container(hybrid, sandbox, name) for name in ("sidecar", "app")}
        for container in ids.values():
            k.start_container(container)
            k.wait_container(container, v1.CONTAINER_RUNNING)
        before = containerd_pid()
        run("systemctl", "kill", "--signal=SIGKILL", "--kill-whom=main", "containerd")
        wait_for(lambda: containerd_pid() not in (0, before) and serving(), "containerd back after SIGKILL")
        # ctr answers before the CRI plugin has loaded its pods again.
        wait_for(lambda: cri_answers(k, ids["app"]), "CRI serving after the restart")
        for name, container in ids.items():
            assert k.container_status(container).state == v1.CONTAINER_RUNNING, name
        hog = k.create_container(hybrid, sandbox, "hog")
        k.start_container(hog)
        status = k.wait_container(hog)
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), status
    return "pod ran on across the crash; a later OOM kill reached CRI as OOMKilled"


def shim_killed_leaves_nothing(k, driver):
    """The shim of a hybrid pod SIGKILLed: its instance goes at once, and
    containerd's cleanup leaves no scope, cgroup or runc state."""
    hybrid = pod("hybrid.yaml")
    with k.running_pod(hybrid) as sandbox:
        ids = k.start_containers(hybrid, sandbox)
        for container in ids.values():
            k.wait_container(container, v1.CONTAINER_RUNNING)
        instance = k.container_info(ids["app"])["pid"]
        shim = int(run("ps", "-o", "ppid=", "-p", str(instance)).stdout)
        os.kill(shim, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{instance}"), "the instance gone with its shim", timeout=10)
        for container in ids.values():
            k.wait_container(container, timeout=60)
    return "instance gone with its shim; the pod removed"


def nothing_is_left(driver):
    units = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "cri-containerd-*", "kubepods-*pod*").stdout.strip()
    assert units == "", units
    # Containers' scopes and directories, and pods' slices and directories.
    cgroups = run("find", CGROUP, "-type", "d", "(", "-name", "cri-containerd-*", "-o", "-name", "*-pod*.slice",
                  "-o", "-name", "pod*", ")").stdout.strip()
    assert cgroups == "", cgroups
    runc_state = [d for d in os.listdir("/run/containerd/runc/k8s.io")] if os.path.isdir("/run/containerd/runc/k8s.io") else []
    assert runc_state == [], runc_state
    shims = run("pgrep", "-f", "containerd-shim-wasmlet-v1", check=False).stdout.strip()
    assert shims == "", shims
    return "no unit, scope, cgroup, runc state or shim"


def run_pods(lane, driver):
    if not serving():
        raise RuntimeError("containerd is not serving")
    k = Kubelet(SOCKET, os.path.join(KUBELET_DIR, driver), "/kubepods", timeout=120, cgroup_driver=driver)
    lane.scenario(f"{driver}: wasm pod to completion, its log and where it runs", wasm_pod_runs_to_completion, k, driver)
    lane.scenario(f"{driver}: limits and OOMKilled beside a neighbour that lives", limits_and_oom_beside_a_neighbour, k, driver)
    lane.scenario(f"{driver}: stats match the cgroup's files", stats_match_the_cgroup, k, driver)
    lane.scenario(f"{driver}: hybrid pod with a runc sidecar", hybrid_pod_with_a_runc_sidecar, k, driver)
    if driver == "systemd":
        lane.scenario(f"{driver}: a wasm container's scope is as runc makes it", the_same_resources_as_runc, k, driver)
        lane.scenario(f"{driver}: containerd killed, then an OOM kill in a pod that lived on", containerd_killed_then_an_oom, k, driver)
    lane.scenario(f"{driver}: a killed shim takes its instance, cleanup leaves nothing", shim_killed_leaves_nothing, k, driver)
    # Native containers of a wasm pod against runc pods; what they leave is
    # checked by the last scenario.
    for check in parity.NODE_CHECKS:
        lane.scenario(f"{driver}: as under runc: {check.__name__}", check, k, list)
    k.remove_all()
    time.sleep(2)  # shims exit a moment after their last task
    lane.scenario(f"{driver}: StopPodSandbox and RemovePodSandbox leave nothing", nothing_is_left, driver)
    k.close()


def the_node_is_a_real_node():
    assert os.readlink("/proc/1/exe").endswith("systemd"), os.readlink("/proc/1/exe")
    cgroup_mounts = [l.split()[1:3] for l in open("/proc/mounts") if l.split()[2] in ("cgroup", "cgroup2")]
    assert cgroup_mounts == [["/sys/fs/cgroup", "cgroup2"]], cgroup_mounts
    return f"PID 1 systemd, cgroup mounts {cgroup_mounts}, kernel {os.uname().release}"


def main():
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    lane = Lane()
    lane.scenario("node: systemd as PID 1, cgroup v2 only", the_node_is_a_real_node)
    set_up_node()
    original = read(CONFIG)

    def install():
        before = containerd_pid()
        result = installer("install")
        assert result.returncode == 0, result.stderr
        assert containerd_pid() != before, "containerd was not restarted"
        assert os.path.exists(SHIM) and f'runtime_path = "{SHIM}"'.encode() in read(CONFIG)
        assert os.path.realpath(LINK) == SHIM
        assert "cgroup driver systemd" in result.stderr, result.stderr
        return "installed, one restart, systemd driver found"

    def reinstall():
        before, config = containerd_pid(), read(CONFIG)
        result = installer("install")
        assert result.returncode == 0, result.stderr
        assert containerd_pid() == before, "a re-install restarted containerd"
        assert read(CONFIG) == config
        return "nothing written, no restart"

    lane.scenario("installer: install with systemctl restart containerd", install)
    lane.scenario("installer: re-install changes nothing", reinstall)
    run_pods(lane, "systemd")

    def switch_to_cgroupfs():
        with open(CONFIG) as f:
            text = f.read()
        with open(CONFIG, "w") as f:
            f.write(text.replace("SystemdCgroup = true", "SystemdCgroup = false", 1))
        restart_containerd()
        result = installer("install")
        assert result.returncode == 0, result.stderr
        assert "cgroup driver cgroupfs" in result.stderr, result.stderr
        return "runc on cgroupfs, wasmlet matched"

    lane.scenario("installer: the node's driver changes to cgroupfs", switch_to_cgroupfs)
    run_pods(lane, "cgroupfs")

    def upgrade():
        newer = os.path.join(KUBELET_DIR, "containerd-shim-wasmlet-v1")
        shutil.copy(os.path.join(SHARE, "release", "containerd-shim-wasmlet-v1"), newer)
        with open(newer, "ab") as f:
            f.write(b"\0upgrade")
        before = containerd_pid()
        result = installer("install", shim=newer)
        assert result.returncode == 0, result.stderr
        assert read(SHIM) == read(newer)
        k = Kubelet(SOCKET, os.path.join(KUBELET_DIR, "upgrade"), "/kubepods", timeout=120)
        wasm_pod_runs_to_completion(k, "cgroupfs")
        k.remove_all()
        assert containerd_pid() == before, "a new shim alone restarted containerd"
        return "new shim in place, containerd not restarted, pods run"

    def uninstall():
        result = installer("uninstall")
        assert result.returncode == 0, result.stderr
        # The edit made after the install (runc's driver) stays; wasmlet's part goes.
        expected = original.replace(b"SystemdCgroup = true", b"SystemdCgroup = false", 1)
        assert read(CONFIG) == expected, "the config is not back byte for byte"
        assert not os.path.lexists(LINK) and not os.path.exists("/opt/wasmlet")
        wait_for(serving, "containerd serving after the uninstall")
        return "config back byte for byte, shim and /opt/wasmlet gone, containerd serving"

    lane.scenario("installer: upgrade", upgrade)
    lane.scenario("installer: uninstall", uninstall)
    print(f"lane done: {lane.failed} failed", flush=True)
    return 1 if lane.failed else 0


if __name__ == "__main__":
    sys.exit(main())
