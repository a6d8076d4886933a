"""The part of kubelet the CRI tests play, over containerd's CRI gRPC API.

Each step is one CRI call plus what kubelet does around it (pod dir, volumes,
log dirs, /etc/hosts before; the pod's cgroup and dir after), so that tests
read like the pod lifecycle:

    kubelet = Kubelet(ctd.socket, os.path.join(ctd.dir, "kubelet"), ctd.pod_cgroup_root)
    pod = pods.Pod.load("tests/cri/manifests/busybox-echo.yaml")
    sandbox_id = kubelet.run_pod_sandbox(pod)
    container_id = kubelet.create_container(pod, sandbox_id, "echo")
    kubelet.start_container(container_id)
    # while it runs: exec_sync(container_id, cmd) as exec probes use it,
    # container_stats(container_id) as kubectl top reads it
    status = kubelet.wait_container(container_id)   # until it exits
    kubelet.stop_pod_sandbox(sandbox_id)
    kubelet.remove_pod_sandbox(sandbox_id)
    kubelet.close()

Before RunPodSandbox it makes the pod's cgroup as kubelet does for its cgroup
driver: with cgroupfs the directory ROOT/[<qos>/]pod<uid> (in every hierarchy
that counts what a pod uses; on cgroup v2 with its parents' controllers
enabled), with systemd the slices kubepods.slice/kubepods-<qos>.slice/
kubepods-<qos>-pod<uid>.slice (transient units over systemd's D-Bus API,
through busctl); and it passes that as the sandbox's cgroup_parent.
Failed calls raise grpc.RpcError; .details() holds containerd's message.
Images must be in containerd's k8s.io namespace: imported, or pulled with
pull_image (tests/e2e/test_cri_images.py, from a loopback registry).
"""

import contextlib
import glob
import json
import os
import shutil
import subprocess
import time

import grpc

from gen_stubs import load_stubs

v1, v1_grpc = load_stubs()

CGROUP_ROOT = "/sys/fs/cgroup"


class Kubelet:
    """CRI RuntimeService and ImageService of one containerd, used like kubelet."""

    def __init__(self, socket, root_dir, cgroup_root, timeout=120, cgroup_driver="cgroupfs"):
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = v1_grpc.RuntimeServiceStub(self.channel)
        self.images = v1_grpc.ImageServiceStub(self.channel)
        self.timeout = timeout  # per call: kubelet's --runtime-request-timeout default
        # kubelet's /var/lib/kubelet/pods and /var/log/pods.
        self.pods_dir = os.path.join(root_dir, "pods")
        self.logs_dir = os.path.join(root_dir, "logs")
        # kubelet's /var/lib/kubelet/seccomp: Localhost profiles are found here.
        self.seccomp_dir = os.path.join(root_dir, "seccomp")
        self.cgroup_root = cgroup_root
        self.cgroup_driver = cgroup_driver
        self._sandboxes = {}  # sandbox id -> (Pod, PodSandboxConfig)

    def close(self):
        self.channel.close()

    def _call(self, method, request):
        return method(request, timeout=self.timeout)

    def version(self):
        return self._call(self.runtime.Version, v1.VersionRequest(version="v1"))

    # ---- images ----------------------------------------------------------------

    def pull_image(self, image):
        """PullImage, as kubelet's image manager pulls; returns the image ref."""
        return self._call(self.images.PullImage, v1.PullImageRequest(image=v1.ImageSpec(image=image))).image_ref

    def image_ref(self, image):
        """The id of an image containerd has (pulled, or imported by the
        tests), as kubelet's image manager resolves it."""
        status = self._call(self.images.ImageStatus,
                            v1.ImageStatusRequest(image=v1.ImageSpec(image=image)))
        if not status.image.id:
            raise LookupError(f"image {image} is not in containerd's k8s.io namespace")
        return status.image.id

    # ---- sandboxes -------------------------------------------------------------

    def pod_dir(self, pod):
        return os.path.join(self.pods_dir, pod.uid)

    def log_path(self, pod, container_name):
        """Absolute path of a container's CRI log file."""
        return os.path.join(pod.log_directory(self.logs_dir), pod.log_path(container_name))

    def run_pod_sandbox(self, pod):
        """Volumes and dirs, then RunPodSandbox; returns the sandbox id."""
        pod_dir = self.pod_dir(pod)
        pod.seccomp_root = self.seccomp_dir
        pod.prepare(pod_dir)
        log_directory = pod.log_directory(self.logs_dir)
        os.makedirs(log_directory, exist_ok=True)
        config = pod.sandbox_config(log_directory, self.make_pod_cgroup(pod))
        try:
            sandbox_id = self._call(self.runtime.RunPodSandbox, v1.RunPodSandboxRequest(
                config=config, runtime_handler=pod.runtime_handler())).pod_sandbox_id
        except grpc.RpcError:
            self.remove_pod_cgroup(config.linux.cgroup_parent)
            raise
        self._sandboxes[sandbox_id] = (pod, config)
        network = self.pod_sandbox_status(sandbox_id).network
        ips = [ip for ip in [network.ip] + [a.ip for a in network.additional_ips] if ip]
        pod.write_hosts_file(pod_dir, ips)
        return sandbox_id

    def pod_sandbox_status(self, sandbox_id):
        return self._call(self.runtime.PodSandboxStatus,
                          v1.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status

    def stop_pod_sandbox(self, sandbox_id):
        """StopPodSandbox; tried again a second later when containerd 1.6
        used a shim connection it had just closed, as kubelet's next pod
        sync tries again. (1.6's exit handler deletes the sandbox's task,
        and with it the shim, while StopPodSandbox is still on its way.)"""
        request = v1.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        try:
            self._call(self.runtime.StopPodSandbox, request)
        except grpc.RpcError as e:
            if "ttrpc: closed" not in (e.details() or ""):
                raise
            time.sleep(1)
            self._call(self.runtime.StopPodSandbox, request)

    def remove_pod_sandbox(self, sandbox_id):
        """RemovePodSandbox (it removes the pod's containers too), then what
        kubelet removes with a pod: its cgroup and its dir."""
        self._call(self.runtime.RemovePodSandbox, v1.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        pod, config = self._sandboxes.pop(sandbox_id, (None, None))
        if pod is None:
            return
        self.remove_pod_cgroup(config.linux.cgroup_parent)
        shutil.rmtree(self.pod_dir(pod), ignore_errors=True)

    def remove_pod_cgroup(self, parent):
        if self.cgroup_driver == "systemd":
            stop_slice(parent)
        else:
            remove_cgroup(parent)

    def make_pod_cgroup(self, pod):
        """The pod's cgroup, made as kubelet makes it; returns the
        cgroup_parent to give CRI."""
        if self.cgroup_driver == "systemd":
            slices = pod.systemd_slices()
            for name in slices:
                start_slice(name)
            return slices[-1]
        path = pod.cgroup_parent(self.cgroup_root)
        make_cgroup(path)
        return path

    def pod_cgroup_dir(self, pod, controller="memory"):
        """The pod's cgroup directory for `controller` (v1), or the pod's
        directory on the unified hierarchy."""
        if self.cgroup_driver == "systemd":
            relative = "/".join(pod.systemd_slices())
        else:
            relative = pod.cgroup_parent(self.cgroup_root).strip("/")
        if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
            return os.path.join(CGROUP_ROOT, relative)
        return os.path.join(CGROUP_ROOT, controller, relative)

    def remove_all(self):
        """Stop and remove every pod sandbox, for a clean teardown."""
        for sandbox in self._call(self.runtime.ListPodSandbox, v1.ListPodSandboxRequest()).items:
            self.stop_pod_sandbox(sandbox.id)
            self.remove_pod_sandbox(sandbox.id)

    # ---- containers ------------------------------------------------------------

    def create_container(self, pod, sandbox_id, name):
        """CreateContainer of the manifest's container `name`; returns its id."""
        _, sandbox_config = self._sandboxes[sandbox_id]
        config = pod.container_config(name, self.image_ref(pod.containers[name]["image"]),
                                      self.pod_dir(pod))
        # containerd opens the log file but does not make its dir.
        os.makedirs(os.path.dirname(self.log_path(pod, name)), exist_ok=True)
        return self._call(self.runtime.CreateContainer, v1.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config)).container_id

    @contextlib.contextmanager
    def running_pod(self, pod):
        """A pod sandbox for the duration of a with block, then stopped and
        removed as kubelet does when the pod is deleted."""
        sandbox_id = self.run_pod_sandbox(pod)
        try:
            yield sandbox_id
        finally:
            self.stop_pod_sandbox(sandbox_id)
            self.remove_pod_sandbox(sandbox_id)

    def start_containers(self, pod, sandbox_id):
        """Create and start every container of the pod in manifest order;
        returns {container name: container id}."""
        ids = {}
        for name in pod.containers:
            ids[name] = self.create_container(pod, sandbox_id, name)
            self.start_container(ids[name])
        return ids

    def start_container(self, container_id):
        self._call(self.runtime.StartContainer, v1.StartContainerRequest(container_id=container_id))

    def container_status(self, container_id):
        return self._call(self.runtime.ContainerStatus,
                          v1.ContainerStatusRequest(container_id=container_id)).status

    def wait_container(self, container_id, state=None, timeout=60):
        """Poll ContainerStatus (as kubelet's PLEG relists) until the
        container is in `state`, by default exited."""
        state = v1.CONTAINER_EXITED if state is None else state
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id)
            if status.state == state:
                return status
            name = v1.ContainerState.Name(status.state)
            if status.state == v1.CONTAINER_EXITED:
                raise AssertionError(f"container {container_id} exited: {status}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {container_id} still {name} after {timeout}s")
            time.sleep(0.05)

    def stop_container(self, container_id, grace_seconds=30):
        self._call(self.runtime.StopContainer, v1.StopContainerRequest(
            container_id=container_id, timeout=grace_seconds))

    def remove_container(self, container_id):
        self._call(self.runtime.RemoveContainer, v1.RemoveContainerRequest(container_id=container_id))

    def container_info(self, container_id):
        """The runtime's verbose details of a container (what `crictl inspect`
        shows under "info"), e.g. its "pid"."""
        response = self._call(self.runtime.ContainerStatus,
                              v1.ContainerStatusRequest(container_id=container_id, verbose=True))
        return json.loads(response.info["info"])

    def pod_sandbox_info(self, sandbox_id):
        """The runtime's verbose details of a sandbox, e.g. its "pid"."""
        response = self._call(self.runtime.PodSandboxStatus,
                              v1.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))
        return json.loads(response.info["info"])

    def exec_sync(self, container_id, cmd, timeout=10):
        """ExecSync, as exec probes and `kubectl exec` without a tty use it;
        returns the response (stdout, stderr as bytes, exit_code)."""
        return self._call(self.runtime.ExecSync, v1.ExecSyncRequest(
            container_id=container_id, cmd=cmd, timeout=timeout))

    def container_stats(self, container_id):
        """ContainerStats: cpu, memory and filesystem use, as the summary API reads them."""
        return self._call(self.runtime.ContainerStats,
                          v1.ContainerStatsRequest(container_id=container_id)).stats

    def list_container_stats(self, sandbox_id=""):
        """ListContainerStats of every container, or of one pod's."""
        request = v1.ListContainerStatsRequest(filter=v1.ContainerStatsFilter(pod_sandbox_id=sandbox_id))
        return self._call(self.runtime.ListContainerStats, request).stats


# The v1 hierarchies that count what a pod uses, where kubelet makes pod
# cgroups first (runc makes the rest); on v2, the controllers to enable.
V1_POD_HIERARCHIES = ["memory", "cpu", "cpuacct", "cpu,cpuacct", "pids"]
V2_POD_CONTROLLERS = ["cpu", "memory", "pids"]


def make_cgroup(path):
    """A pod's cgroup directory with its parents (cgroupfs driver)."""
    relative = path.strip("/")
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        # v2: each level hands its children the controllers kubelet uses.
        current = CGROUP_ROOT
        for part in relative.split("/"):
            with open(os.path.join(current, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(f"+{c}" for c in V2_POD_CONTROLLERS))
            current = os.path.join(current, part)
            os.makedirs(current, exist_ok=True)
        return
    for hierarchy in V1_POD_HIERARCHIES:
        if os.path.isdir(os.path.join(CGROUP_ROOT, hierarchy)):
            os.makedirs(os.path.join(CGROUP_ROOT, hierarchy, relative), exist_ok=True)


def start_slice(name):
    """A transient slice unit, as kubelet's systemd driver starts it; one
    that is there already is left as it is."""
    result = subprocess.run(
        ["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
         "StartTransientUnit", "ssa(sv)a(sa(sv))", name, "replace", "1", "Description", "s", f"test kubelet {name}", "0"],
        capture_output=True, text=True)
    if result.returncode != 0 and "already exists" not in result.stderr and "already loaded" not in result.stderr:
        raise RuntimeError(f"start {name}: {result.stderr.strip()}")


def stop_slice(name):
    subprocess.run(["systemctl", "stop", name], capture_output=True)


def remove_cgroup(path):
    """rmdir a pod's cgroup in every hierarchy; one still holding container
    cgroups stays (and shows up in the harness's leftovers)."""
    relative = path.strip("/")
    for directory in glob.glob(os.path.join(CGROUP_ROOT, relative)) + \
            glob.glob(os.path.join(CGROUP_ROOT, "*", relative)):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def read_cri_log(path):
    """[(time, stream, tag, text)] of a CRI log file: lines of
    "RFC3339NANO-TIME stdout|stderr F|P TEXT", P marking a partial line."""
    with open(path) as f:
        return [tuple(line.rstrip("\n").split(" ", 3)) for line in f]
