"""A hostile image, module or pod spec gets nothing it was not granted.

Each test performs the attack through CRI, as a pod would, and asserts that
it gets nothing; where the attack needs something of the node (a device,
a root-only file) the test first shows from the host that it is there to
be had, so that a guard that stopped working would fail the test.
"""

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time

import grpc

from harness import REPO_ROOT
from kubelet import v1
from pods import Pod
from test_cri_pods import empty_dir, exited, host_dir, manifest

PACK = os.path.join(REPO_ROOT, "images", "pack.py")
PROBE_WASM = os.path.join(REPO_ROOT, "images", "workloads", "target", "wasm32-wasip1", "release", "probe.wasm")


def wasm_pod(name, image, args, user=None, volumes=()):
    """A one-container wasm pod; volumes: [(name, host path, mount path, read only)]."""
    container = {"name": name, "image": image, "args": list(args),
                 "volumeMounts": [{"name": v, "mountPath": m, "readOnly": ro} for v, _, m, ro in volumes]}
    spec = {"runtimeClassName": "wasmlet", "restartPolicy": "Never", "containers": [container],
            "volumes": [{"name": v, "hostPath": {"path": p, "type": "Directory"}} for v, p, _, _ in volumes]}
    if user is not None:
        spec["securityContext"] = {"runAsUser": user, "runAsGroup": user}
    return Pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})


# Character devices of every node that root can read from the host: the
# kernel's log (what a guest must never see) and /dev/zero.
DEVICES = {"kmsg": (1, 11), "zero": (1, 5)}


def import_image(cri, name, tmp_path, *pack_args):
    """Packs an image at test time (it carries this node's device numbers)
    and imports it into the CRI containerd; returns its reference."""
    ref = f"wasmlet.test/{name}:latest"
    archive = tmp_path / f"{name}.tar"
    subprocess.run([sys.executable, PACK, "--name", ref, "--out", str(archive), *pack_args], check=True)
    cri.ctd.import_images(str(tmp_path), (name,))
    return ref


def test_device_nodes_in_an_image_or_a_volume_cannot_be_opened(cri, tmp_path):
    nodes = [arg for name, (major, minor) in DEVICES.items() for arg in ("--device", f"/{name}=c:{major}:{minor}")]
    image = import_image(cri, "device-nodes", tmp_path,
                         "--file", f"/probe.wasm={PROBE_WASM}", "--entrypoint", "/probe.wasm", *nodes)
    volume = host_dir(cri, "devices", {})
    for name, (major, minor) in DEVICES.items():
        node = os.path.join(volume, name)
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        # From the host the node is live: root reads it.
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert len(os.read(fd, 2048)) > 0, name
        finally:
            os.close(fd)

    for path in [f"/{name}" for name in DEVICES] + [f"/volume/{name}" for name in DEVICES]:
        pod = wasm_pod("devices", image, ["read", path, "2048"], volumes=[("volume", volume, "/volume", False)])
        with exited(cri, pod) as (status, lines):
            pass
        # The kernel's EACCES (nodev), as WASI's errno reaches the guest's std.
        assert len(lines) == 1 and lines[0].startswith(f"read {path}: error: Permission denied"), (path, status, lines)
    assert cri.ctd.leftovers() == []


def start_reader_pod(secret, user):
    document = manifest("run-as-user.yaml")
    document["spec"]["securityContext"] = {"runAsUser": user, "runAsGroup": user}
    document["spec"]["containers"][0].update(image="wasmlet.test/start-reader:latest", args=[])
    pod = Pod(document)
    pod.volumes["secret"]["hostPath"]["path"] = secret
    return pod


def test_a_start_function_runs_after_start_as_the_pods_user(cri):
    secret = host_dir(cri, "secret", {"input.txt": ("the node's secret\n", 0o600)})
    with exited(cri, start_reader_pod(secret, 1000)) as (status, lines):
        pass
    assert lines == ["start: denied"], (status, lines)
    assert status.exit_code == 0, status
    # As root the same module reads the file: the guard, not the module, denied it.
    with exited(cri, start_reader_pod(secret, 0)) as (status, lines):
        pass
    assert lines == ["start: read: the node's secret"], (status, lines)
    assert cri.ctd.leftovers() == []


def test_a_start_function_that_never_returns_is_stopped_like_a_running_guest(cri):
    pod = wasm_pod("start-loop", "wasmlet.test/start-loop:latest", [])
    with cri.kubelet.running_pod(pod) as sandbox_id:
        # Create runs no guest code, so it answers well within its deadline.
        container_id = cri.kubelet.create_container(pod, sandbox_id, "start-loop")
        assert cri.kubelet.container_status(container_id).state == v1.CONTAINER_CREATED
        cri.kubelet.start_container(container_id)
        cri.kubelet.wait_container(container_id, v1.CONTAINER_RUNNING)
        time.sleep(0.5)
        assert cri.kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
        cri.kubelet.stop_container(container_id, grace_seconds=30)
        status = cri.kubelet.container_status(container_id)
    # 143: SIGTERM ended it, not the SIGKILL that follows the grace period.
    assert (status.state, status.exit_code) == (v1.CONTAINER_EXITED, 143), status
    assert cri.ctd.leftovers() == []


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def pid_namespace(pid):
    return os.readlink(f"/proc/{pid}/ns/pid")


def sleeping_pod(share_process_namespace):
    """A BestEffort wasm pod: its OOM score is 1000, above containerd's own
    (which the CRI plugin, restricted here, would not go below)."""
    document = manifest("sleep-wasm.yaml")
    document["spec"]["shareProcessNamespace"] = share_process_namespace
    del document["spec"]["containers"][0]["resources"]
    return Pod(document)


def test_the_instance_lives_in_its_own_or_its_pods_pid_namespace_never_the_hosts(cri):
    for share in (False, True):
        pod = sleeping_pod(share)
        with cri.kubelet.running_pod(pod) as sandbox_id:
            container_id = cri.kubelet.start_containers(pod, sandbox_id)["sleep"]
            cri.kubelet.wait_container(container_id, v1.CONTAINER_RUNNING)
            pid = cri.kubelet.container_info(container_id)["pid"]
            pause = cri.kubelet.pod_sandbox_info(sandbox_id)["pid"]
            namespace_pids = proc_status(pid)["NSpid"].split()
            assert pid_namespace(pid) != pid_namespace(os.getpid()), share
            if share:
                # kubectl users see it beside the sidecars: the pod's namespace.
                assert pid_namespace(pid) == pid_namespace(pause)
                assert namespace_pids[0] == str(pid) and namespace_pids[-1] != "1", namespace_pids
            else:
                assert pid_namespace(pid) != pid_namespace(pause)
                assert namespace_pids == [str(pid), "1"], namespace_pids
            # BestEffort's score, not the 0 of the containerd it inherits from.
            with open(f"/proc/{pid}/oom_score_adj") as f:
                assert int(f.read()) == 1000
            cri.kubelet.stop_container(container_id, grace_seconds=10)
            # As PID 1 of its namespace it still ends on StopContainer's SIGTERM.
            assert cri.kubelet.container_status(container_id).exit_code == 143
    assert cri.ctd.leftovers() == []


def test_the_specs_rlimits_reach_the_instance(clean):
    # ctr's default spec limits open files to 1024, below what containerd has.
    assert clean.run("wasmlet.test/sleep:latest", "rlimits", detach=True).returncode == 0
    line = next(l for l in clean.ctr("tasks", "ls").stdout.splitlines() if l.startswith("rlimits "))
    pid = int(line.split()[1])
    with open(f"/proc/{pid}/limits") as f:
        limits = {l[:26].strip(): l[26:].split()[:2] for l in f.readlines()[1:]}
    assert limits["Max open files"] == ["1024", "1024"], limits
    with open("/proc/self/limits") as f:
        assert "1024 " not in next(l for l in f if l.startswith("Max open files")), "the test needs a higher limit outside"
    clean.task_kill("rlimits", "SIGKILL")
    clean.task_wait("rlimits")
    clean.delete_all()


def compiler_processes():
    """{pid: (/proc/PID/status, its owner)} of every compiler process now."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            exe = os.readlink(f"/proc/{entry}/exe")
            if len(argv) > 2 and exe.endswith("containerd-shim-wasmlet-v1") and argv[1] == b"compile":
                found[int(entry)] = (proc_status(entry), os.stat(f"/proc/{entry}/status").st_uid)
        except (OSError, ValueError):
            pass
    return found


def test_untrusted_wasm_is_compiled_by_a_process_that_holds_nothing(cri):
    """The compiler is nobody with no capability from its first instruction
    (the instance's child changes user before it execs), and once it runs
    it is undumpable and under its filter: every sample of it must show the
    first, its last sample (taken while it compiles) the second."""
    # No compiled comrak in the cache: this pod compiles 3 MB of wasm.
    for directory, _, files in os.walk(cri.ctd.cache_dir):
        for name in files:
            if name.endswith(".cwasm"):
                os.remove(os.path.join(directory, name))
    pod = wasm_pod("comrak", "wasmlet.test/comrak:latest", ["--version"])
    samples = {}
    with cri.kubelet.running_pod(pod) as sandbox_id:
        container_id = cri.kubelet.create_container(pod, sandbox_id, "comrak")
        starting = threading.Thread(target=cri.kubelet.start_container, args=(container_id,))
        starting.start()
        while starting.is_alive():
            for pid, sample in compiler_processes().items():
                samples.setdefault(pid, []).append(sample)
            time.sleep(0.005)
        starting.join()
        status = cri.kubelet.wait_container(container_id)
    assert status.exit_code == 0, status
    assert samples, "no compiler process was seen while the pod compiled"
    for pid, seen in samples.items():
        for fields, _ in seen:
            assert fields["Uid"].split() == ["65534"] * 4 and fields["Gid"].split() == ["65534"] * 4, fields
            assert fields["Groups"].strip() == "", fields
            for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(fields[caps], 16) == 0, (caps, fields)
            assert fields["NoNewPrivs"] == "1", fields
        # Compiling takes a second; by its last sample it is confined.
        fields, owner = seen[-1]
        assert fields["Seccomp"] == "2", (len(seen), fields)
        # An undumpable process's /proc/PID files belong to root, not to nobody.
        assert owner == 0, (len(seen), owner)
        # It is no process of the pod: the host's PID namespace, not the pod's.
        assert len(fields["NSpid"].split()) == 1, fields
    assert cri.ctd.leftovers() == []


WASM_DIR = os.path.join(REPO_ROOT, "images", "workloads", "target", "wasm32-wasip1", "release")


def compiled_entry(cri, module):
    """The cached compiled code of one of the workloads, by its wasm's sha256."""
    with open(os.path.join(WASM_DIR, module), "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()
    for directory, _, files in os.walk(cri.ctd.cache_dir):
        if f"{key}.cwasm" in files:
            return os.path.join(directory, f"{key}.cwasm")
    raise AssertionError(f"no compiled {module} in the cache")


def hello_pod():
    return Pod(manifest("hello-wasm.yaml"))


def test_a_symlinked_cache_entry_is_not_followed(cri):
    for pod in (hello_pod(), wasm_pod("exit-code", "wasmlet.test/exit-code:latest", ["3"])):
        with exited(cri, pod):
            pass
    hello, other = compiled_entry(cri, "hello.wasm"), compiled_entry(cri, "exit-code.wasm")
    # Followed, the link would run exit-code's native code as hello.
    os.remove(hello)
    os.symlink(other, hello)
    with exited(cri, hello_pod()) as (status, lines):
        pass
    assert (status.exit_code, lines[:1]) == (0, ["Hello from wasmlet!"]), (status, lines)
    assert not os.path.islink(hello)
    assert "compiled code for /hello.wasm: cache Rebuilt" in cri.ctd.log_tail(200)
    assert cri.ctd.leftovers() == []


def start_error(cri, pod, name):
    """What StartContainer of the pod's container `name` answers: its error,
    or None when it started."""
    with cri.kubelet.running_pod(pod) as sandbox_id:
        container_id = cri.kubelet.create_container(pod, sandbox_id, name)
        try:
            cri.kubelet.start_container(container_id)
            return None
        except grpc.RpcError as err:
            return err.details()


def test_a_cache_directory_others_can_write_is_refused(cri):
    os.chmod(cri.ctd.cache_dir, 0o777)
    try:
        message = start_error(cri, hello_pod(), "hello")
    finally:
        os.chmod(cri.ctd.cache_dir, 0o700)
    assert message is not None, "a pod started from a cache others can write"
    assert f"{cri.ctd.cache_dir} is writable by others (mode 777)" in message, message
    assert cri.ctd.leftovers() == []


# Swaps /shared/sub between a directory and a symlink to / for as long as it runs.
SWAPPER = "while :; do rm -rf /shared/sub; mkdir /shared/sub; rm -rf /shared/sub; ln -s / /shared/sub; done"


def mount_points_of(pid, source):
    """Where the process `pid` has `source` (a host directory) mounted."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [fields[4] for fields in (line.split() for line in f) if fields[3] == source]


def test_a_mount_target_swapped_for_a_symlink_is_not_followed(cri):
    volume = host_dir(cri, "volume", {"marker": ("the volume\n", 0o644)})
    document = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "swap", "namespace": "default"}, "spec": {
        "runtimeClassName": "wasmlet", "restartPolicy": "Never",
        "volumes": [{"name": "shared", "emptyDir": {}}, {"name": "volume", "hostPath": {"path": volume, "type": "Directory"}}],
        "containers": [
            {"name": "swapper", "image": "wasmlet.test/busybox:latest", "command": ["/bin/sh", "-c", SWAPPER],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
            {"name": "guest", "image": "wasmlet.test/sleep:latest",
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}, {"name": "volume", "mountPath": "/shared/sub"}]},
        ]}}
    pod = Pod(document)
    outcomes = []
    with cri.kubelet.running_pod(pod) as sandbox_id:
        swapper = cri.kubelet.create_container(pod, sandbox_id, "swapper")
        cri.kubelet.start_container(swapper)
        for _ in range(20):
            guest = cri.kubelet.create_container(pod, sandbox_id, "guest")
            try:
                cri.kubelet.start_container(guest)
                pid = cri.kubelet.container_info(guest)["pid"]
                outcomes.append(("mounted at", mount_points_of(pid, volume)))
                cri.kubelet.stop_container(guest, grace_seconds=5)
            except grpc.RpcError as err:
                outcomes.append(("refused", err.details()))
            cri.kubelet.remove_container(guest)
        cri.kubelet.stop_container(swapper, grace_seconds=1)
        # Once nothing swaps it, the volume is mounted where the spec says.
        sub = os.path.join(empty_dir(cri, pod, "shared"), "sub")
        if os.path.islink(sub):
            os.remove(sub)
        os.makedirs(sub, exist_ok=True)
        guest = cri.kubelet.create_container(pod, sandbox_id, "guest")
        cri.kubelet.start_container(guest)
        quiet = mount_points_of(cri.kubelet.container_info(guest)["pid"], volume)
        cri.kubelet.stop_container(guest, grace_seconds=5)
    assert quiet == ["/shared/sub"], quiet
    for outcome, detail in outcomes:
        if outcome == "refused":
            # Resolved while it was a symlink, or while it was not there.
            assert "goes through a symlink inside a volume" in detail or "mount /shared/sub" in detail, detail
        else:
            # Where the spec said, or nowhere once the swapper removed the
            # directory (which detaches a mount on it in every namespace):
            # never on the symlink's target, which nothing would detach.
            assert detail in (["/shared/sub"], []), detail
    assert cri.ctd.leftovers() == []


# Run in a root sidecar that shares the wasm container's PID namespace: it
# finds the instance and tries every way /proc offers into it. Each line it
# prints is something it got.
PROC_ATTACK = r"""
pid=""
for d in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in *" instance "*) pid=${d#/proc/} ;; esac
done
[ -n "$pid" ] || { echo "no instance seen"; exit 2; }
echo "instance seen"
for f in /proc/$pid/fd/*; do readlink "$f" >/dev/null 2>&1 && { echo "got: where its descriptors lead"; break; }; done
for fd in $(seq 0 40); do
    link=$(readlink "/proc/$pid/fd/$fd" 2>/dev/null) || continue
    case "$link" in
        *.cwasm) echo "compiled code on descriptor $fd"
                 printf x >> "/proc/$pid/fd/$fd" && echo "got: appended to $link"
                 : > "/proc/$pid/fd/$fd" && echo "got: truncated $link" ;;
        pipe:*) [ "$fd" -gt 2 ] && printf 'oom\n' > "/proc/$pid/fd/$fd" && echo "got: wrote to its pipe $fd" ;;
    esac
done 2>&1 | sed 's/^/attack: /'
for f in /proc/$pid/map_files/*; do
    case "$(readlink "$f" 2>/dev/null)" in *.cwasm) printf x >> "$f" 2>/dev/null && echo "got: appended through $f" ;; esac
done
head -c 1 "/proc/$pid/environ" >/dev/null 2>&1 && echo "got: its environment"
ls "/proc/$pid/root/" >/dev/null 2>&1 && echo "got: its root directory"
echo "attack over"
"""


def cache_files(cri):
    """{path: sha256} of every compiled entry and checksum in the node cache."""
    found = {}
    for directory, _, files in os.walk(cri.ctd.cache_dir):
        for name in files:
            if name.endswith((".cwasm", ".sha256")):
                with open(os.path.join(directory, name), "rb") as f:
                    found[os.path.join(directory, name)] = hashlib.sha256(f.read()).hexdigest()
    return found


def proc_attack_pod(capabilities):
    """A wasm container as root (a FROM scratch image's default) and a root
    busybox sidecar, in one PID namespace."""
    document = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "proc-attack", "namespace": "default"}, "spec": {
        "runtimeClassName": "wasmlet", "restartPolicy": "Never", "shareProcessNamespace": True,
        "containers": [
            {"name": "guest", "image": "wasmlet.test/sleep:latest"},
            {"name": "attacker", "image": "wasmlet.test/busybox:latest", "command": ["/bin/sh", "-c", "sleep 3600"],
             "securityContext": {"capabilities": {"add": capabilities}}},
        ]}}
    return Pod(document)


def attack_through_proc(cri, capabilities):
    """Performs PROC_ATTACK beside a running wasm instance; returns its
    output lines and whether the instance still runs."""
    pod = proc_attack_pod(capabilities)
    with cri.kubelet.running_pod(pod) as sandbox_id:
        guest = cri.kubelet.create_container(pod, sandbox_id, "guest")
        cri.kubelet.start_container(guest)
        cri.kubelet.wait_container(guest, v1.CONTAINER_RUNNING)
        attacker = cri.kubelet.create_container(pod, sandbox_id, "attacker")
        cri.kubelet.start_container(attacker)
        cri.kubelet.wait_container(attacker, v1.CONTAINER_RUNNING)
        result = cri.kubelet.exec_sync(attacker, ["/bin/sh", "-c", PROC_ATTACK], timeout=30)
        lines = result.stdout.decode().splitlines()
        time.sleep(0.5)
        still_running = cri.kubelet.container_status(guest).state == v1.CONTAINER_RUNNING
    return lines, still_running


def test_a_root_sidecar_gets_nothing_of_the_instance_through_proc(cri):
    # The sleep module's compiled code in the node cache, shared by every pod of it.
    with exited(cri, wasm_pod("warm", "wasmlet.test/sleep:latest", ["0"])):
        pass
    before = cache_files(cri)
    assert any(path.endswith(".cwasm") for path in before), before
    lines, still_running = attack_through_proc(cri, [])
    assert "instance seen" in lines and "attack over" in lines, lines
    # Undumpable: /proc/PID/fd, environ and root are closed to it.
    assert [line for line in lines if "got:" in line] == [], lines
    assert still_running
    assert cache_files(cri) == before
    assert cri.ctd.leftovers() == []


def test_a_sidecar_with_sys_ptrace_cannot_change_the_nodes_compiled_code(cri):
    """CAP_SYS_PTRACE (kubectl debug --profile=general adds it) opens an
    undumpable process's /proc/PID/fd; the compiled code it maps is still
    held through a read-only mount, so reopening it for writing fails."""
    with exited(cri, wasm_pod("warm", "wasmlet.test/sleep:latest", ["0"])):
        pass
    before = cache_files(cri)
    lines, still_running = attack_through_proc(cri, ["SYS_PTRACE"])
    assert "got: where its descriptors lead" in lines, "the attack must reach the descriptors to show the guard behind them"
    held = [line.split()[-1] for line in lines if line.startswith("attack: compiled code on descriptor")]
    assert held, lines
    # Each descriptor of compiled code: the append and the truncation refused.
    for fd in held:
        refused = [line for line in lines if f"/proc/" in line and line.endswith(f"/fd/{fd}: Read-only file system")]
        assert len(refused) == 2, (fd, lines)
    assert not [line for line in lines if "cwasm" in line and "got:" in line], lines
    assert still_running
    assert cache_files(cri) == before
    assert cri.ctd.leftovers() == []


def seccomp_pod(name, args, profile):
    """The probe as a pod whose container's seccompProfile is `profile`
    (the pod's own would apply to its sandbox too)."""
    pod = wasm_pod(name, "wasmlet.test/probe:latest", args)
    pod.containers[name]["securityContext"] = {"seccompProfile": profile}
    return pod


def localhost_profile(cri, name, profile):
    """Writes a Localhost seccomp profile where kubelet looks for them."""
    os.makedirs(cri.kubelet.seccomp_dir, exist_ok=True)
    with open(os.path.join(cri.kubelet.seccomp_dir, name), "w") as f:
        json.dump(profile, f)
    return {"type": "Localhost", "localhostProfile": name}


def test_the_pods_seccomp_profile_applies_on_top_of_the_instances_own(cri):
    # Listing a directory is getdents64; this profile answers EACCES to it alone.
    no_listing = localhost_profile(cri, "no-listing.json", {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getdents64"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]})
    with exited(cri, seccomp_pod("unconfined", ["list", "/"], {"type": "Unconfined"})) as (status, lines):
        assert status.exit_code == 0 and lines[0].startswith("list /: ") and "probe.wasm" in lines[0], (status, lines)
    with exited(cri, seccomp_pod("runtime-default", ["list", "/"], {"type": "RuntimeDefault"})) as (status, lines):
        assert status.exit_code == 0 and "probe.wasm" in lines[0], (status, lines)
    with exited(cri, seccomp_pod("no-listing", ["list", "/"], no_listing)) as (status, lines):
        assert len(lines) == 1 and lines[0].startswith("list /: error: Permission denied"), (status, lines)
    assert cri.ctd.leftovers() == []


def test_a_deny_all_seccomp_profile_stops_the_container_with_a_clear_error(cri):
    deny_all = localhost_profile(cri, "deny-all.json", {"defaultAction": "SCMP_ACT_ERRNO"})
    message = start_error(cri, seccomp_pod("deny-all", ["list", "/"], deny_all), "deny-all")
    # As under runc the container never runs; unlike runc's "operation not
    # permitted", the error says which calls the profile takes away.
    assert message is not None, "a container ran under a profile that refuses every syscall"
    assert ("the pod's seccomp profile: the seccomp profile refuses read, write, exit_group, "
            "which a wasm instance needs") in message, message
    assert cri.ctd.leftovers() == []


def test_a_seccomp_profile_with_a_notifier_is_refused_by_name(cri):
    notify = localhost_profile(cri, "notify.json", {
        "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_NOTIFY"}]})
    message = start_error(cri, seccomp_pod("notify", ["list", "/"], notify), "notify")
    assert message is not None, "a profile with SCMP_ACT_NOTIFY was accepted"
    assert "SCMP_ACT_NOTIFY needs a user-space notifier, which wasm containers do not support" in message, message
    assert cri.ctd.leftovers() == []


def test_an_apparmor_profile_on_a_node_without_apparmor_is_refused(clean):
    """As runc: a spec that asks for a profile the node cannot apply does
    not run unconfined. (containerd's CRI refuses such a pod itself; ctr
    passes the profile through.)"""
    assert not os.path.exists("/sys/module/apparmor/parameters/enabled"), "this check needs a node without AppArmor"
    result = clean.ctr("run", "--rm", "--runtime", "io.containerd.wasmlet.v1", "--apparmor-profile", "wasmlet-test",
                       "wasmlet.test/hello:latest", "apparmor", check=False)
    assert result.returncode != 0
    assert "the pod asks for the AppArmor profile wasmlet-test, but AppArmor is not enabled on this node" in result.stderr, result.stderr
    clean.delete_all()
