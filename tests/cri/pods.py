"""Kubernetes Pod manifests turned into CRI configs, the way kubelet does it.

Covers what the tests need, shaped like kubelet's kuberuntime: pod metadata,
labels and annotations; the runtime handler from runtimeClassName;
hostNetwork/hostPID/hostIPC/shareProcessNamespace; the QoS class, the pod's
cgroup below a given root and each container's cpu and memory limits, cpu
shares and OOM score; command and args with $(VAR) expansion, env,
workingDir; hostPath and emptyDir volumes, the kubelet-managed /etc/hosts and
the termination message file; runAsUser/runAsGroup/readOnlyRootFilesystem
and the rest of the security context; the log path below the pod's log
directory. Not covered (the tests have no API server): env from other
objects, service links, DNS config (containerd then copies the host's
resolv.conf), ports, init containers. Probes are run by probes.py.

    pod = Pod.load("tests/cri/manifests/busybox-echo.yaml")
    pod.prepare(pod_dir)                       # volumes, like kubelet's volume manager
    config = pod.sandbox_config(log_dir, pod.cgroup_parent(root))
    ...RunPodSandbox(config, pod.runtime_handler())...
    pod.write_hosts_file(pod_dir, pod_ips)
    c = pod.container_config("echo", image_ref, pod_dir)

Configs are runtime.v1 messages from the stubs of tests/cri/gen_stubs.py.
"""

import decimal
import os
import re
import secrets
import uuid

import yaml

from gen_stubs import load_stubs

v1, _ = load_stubs()

# RuntimeClass name -> CRI handler, as the RuntimeClass objects would say
# (charts/ installs `wasmlet` with handler `wasmlet`).
RUNTIME_CLASSES = {"wasmlet": "wasmlet"}

# Label keys kubelet puts on sandboxes and containers.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# Paths kubelet asks the runtime to mask or make read-only in every
# unprivileged container (procMount Default).
MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# cgroup cpu numbers kubelet uses.
CPU_PERIOD = 100_000  # us
MIN_CPU_QUOTA = 1000
MIN_CPU_SHARES = 2
# OOM score adjustments of the QoS classes.
GUARANTEED_OOM_SCORE_ADJ = -997
BESTEFFORT_OOM_SCORE_ADJ = 1000

QUANTITY_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": decimal.Decimal("1e-9"), "u": decimal.Decimal("1e-6"), "m": decimal.Decimal("1e-3"),
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?([a-zA-Z]*)")


class ManifestError(ValueError):
    """The manifest asks for something this translation does not do."""


def parse_quantity(value):
    """A Kubernetes quantity ("64Mi", "500m", "1.5", 2) as a Decimal."""
    match = QUANTITY.fullmatch(str(value).strip())
    if not match or match.group(3) not in QUANTITY_SUFFIXES:
        raise ManifestError(f"not a quantity: {value!r}")
    number = decimal.Decimal(match.group(1) + (match.group(2) or ""))
    return number * decimal.Decimal(QUANTITY_SUFFIXES[match.group(3)])


def milli_cpu(value):
    """CPU quantity in millicores, rounded up like the API server does."""
    return int((parse_quantity(value) * 1000).to_integral_value(rounding=decimal.ROUND_CEILING))


def memory_bytes(value):
    return int(parse_quantity(value).to_integral_value(rounding=decimal.ROUND_CEILING))


def expand(text, env):
    """kubelet's $(VAR) expansion in command and args: $(VAR) becomes VAR's
    value if VAR is set, stays as is if not; $$ is a literal $."""
    def one(match):
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def node_memory():
    """Memory capacity of this node in bytes, as kubelet sees it."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class Pod:
    """One Pod manifest, with a uid (a new one unless the manifest has one)."""

    def __init__(self, manifest, uid=None):
        if manifest.get("kind") != "Pod":
            raise ManifestError(f"not a Pod: kind {manifest.get('kind')!r}")
        meta = manifest.get("metadata") or {}
        self.manifest = manifest
        self.name = meta["name"]
        self.namespace = meta.get("namespace", "default")
        # The API server would assign it; a fresh one per load keeps sandbox
        # names unique when a test runs the same manifest twice.
        self.uid = uid or meta.get("uid") or str(uuid.uuid4())
        self.labels = dict(meta.get("labels") or {})
        self.annotations = dict(meta.get("annotations") or {})
        self.spec = manifest.get("spec") or {}
        self.containers = {c["name"]: c for c in self.spec.get("containers", [])}
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        if self.spec.get("initContainers"):
            raise ManifestError("initContainers are not supported")
        # Where Localhost seccomp profiles are; the kubelet sets its own.
        self.seccomp_root = "/var/lib/kubelet/seccomp"

    @classmethod
    def load(cls, path, uid=None):
        with open(path) as f:
            return cls(yaml.safe_load(f), uid=uid)

    # ---- pod level -------------------------------------------------------

    @property
    def host_network(self):
        return bool(self.spec.get("hostNetwork"))

    def runtime_handler(self):
        """The CRI runtime handler: the RuntimeClass's, or "" (the default, runc)."""
        class_name = self.spec.get("runtimeClassName")
        if not class_name:
            return ""
        if class_name not in RUNTIME_CLASSES:
            raise ManifestError(f"unknown RuntimeClass {class_name!r}")
        return RUNTIME_CLASSES[class_name]

    def _resources(self, container):
        """(requests, limits) with requests defaulted to limits, as the API server does."""
        resources = container.get("resources") or {}
        limits = dict(resources.get("limits") or {})
        requests = dict(resources.get("requests") or {})
        for key, value in limits.items():
            requests.setdefault(key, value)
        return requests, limits

    def qos_class(self):
        """Guaranteed, Burstable or BestEffort, from cpu and memory resources."""
        any_set = False
        guaranteed = True
        for container in self.containers.values():
            requests, limits = self._resources(container)
            for resource in ("cpu", "memory"):
                if resource in requests or resource in limits:
                    any_set = True
                if resource not in limits or (parse_quantity(requests[resource])
                                              != parse_quantity(limits[resource])):
                    guaranteed = False
        if not any_set:
            return "BestEffort"
        return "Guaranteed" if guaranteed else "Burstable"

    def cgroup_parent(self, root):
        """The pod's cgroup below root, in kubelet's cgroupfs layout:
        ROOT/pod<uid> for Guaranteed pods, else ROOT/<qos>/pod<uid>."""
        qos = self.qos_class()
        qos_dir = "" if qos == "Guaranteed" else qos.lower() + "/"
        return f"{root.rstrip('/')}/{qos_dir}pod{self.uid}"

    def systemd_slices(self):
        """The pod's slices in kubelet's systemd layout, outermost first:
        kubepods.slice, kubepods-<qos>.slice (not for Guaranteed pods) and
        kubepods-[<qos>-]pod<uid>.slice, with the uid's dashes as underscores."""
        qos = self.qos_class()
        prefix = "kubepods" if qos == "Guaranteed" else f"kubepods-{qos.lower()}"
        slices = ["kubepods.slice"] + ([] if qos == "Guaranteed" else [f"{prefix}.slice"])
        return slices + [f"{prefix}-pod{self.uid.replace('-', '_')}.slice"]

    def _namespace_options(self):
        spec = self.spec
        if spec.get("hostPID"):
            pid = v1.NODE
        elif spec.get("shareProcessNamespace"):
            pid = v1.POD
        else:
            pid = v1.CONTAINER
        return v1.NamespaceOption(
            network=v1.NODE if self.host_network else v1.POD,
            pid=pid,
            ipc=v1.NODE if spec.get("hostIPC") else v1.POD)

    def _pod_security(self):
        return self.spec.get("securityContext") or {}

    def _seccomp(self, container=None):
        """The CRI SecurityProfile of seccompProfile (the container's wins
        over the pod's): Unconfined unless set, kubelet's default without
        its SeccompDefault setting. A Localhost profile's path is taken
        below seccomp_root, kubelet's --root-dir/seccomp."""
        security = (container or {}).get("securityContext") or {}
        profile = security.get("seccompProfile") or self._pod_security().get("seccompProfile") or {}
        kind = profile.get("type", "Unconfined")
        if kind == "Unconfined":
            return v1.SecurityProfile(profile_type=v1.SecurityProfile.Unconfined)
        if kind == "RuntimeDefault":
            return v1.SecurityProfile(profile_type=v1.SecurityProfile.RuntimeDefault)
        if kind == "Localhost":
            return v1.SecurityProfile(profile_type=v1.SecurityProfile.Localhost,
                                      localhost_ref=os.path.join(self.seccomp_root, profile["localhostProfile"]))
        raise ManifestError(f"seccompProfile type {kind!r} is not supported")

    def _supplemental_groups(self):
        security = self._pod_security()
        groups = list(security.get("supplementalGroups") or [])
        if "fsGroup" in security:
            groups.append(security["fsGroup"])
        return groups

    def hostname(self):
        """The pod's hostname: spec.hostname, else its name (63 chars at most)."""
        return (self.spec.get("hostname") or self.name)[:63].rstrip("-.")

    def log_directory(self, logs_root):
        """kubelet's /var/log/pods/<namespace>_<name>_<uid>, below logs_root."""
        return os.path.join(logs_root, f"{self.namespace}_{self.name}_{self.uid}")

    def sandbox_config(self, log_directory, cgroup_parent):
        """The PodSandboxConfig for RunPodSandbox."""
        security = self._pod_security()
        context = v1.LinuxSandboxSecurityContext(
            namespace_options=self._namespace_options(),
            supplemental_groups=self._supplemental_groups(),
            privileged=any(((c.get("securityContext") or {}).get("privileged", False))
                           for c in self.containers.values()),
            seccomp=self._seccomp())
        if "runAsUser" in security:
            context.run_as_user.value = security["runAsUser"]
        if "runAsGroup" in security:
            context.run_as_group.value = security["runAsGroup"]
        sysctls = {s["name"]: str(s["value"]) for s in security.get("sysctls", [])}
        labels = dict(self.labels)
        labels.update({POD_NAME: self.name, POD_NAMESPACE: self.namespace, POD_UID: self.uid})
        return v1.PodSandboxConfig(
            metadata=v1.PodSandboxMetadata(name=self.name, namespace=self.namespace, uid=self.uid,
                                           attempt=0),
            # A pod on the host's network has the host's name.
            hostname="" if self.host_network else self.hostname(),
            log_directory=log_directory,
            labels=labels,
            annotations=self.annotations,
            linux=v1.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent, security_context=context,
                                           sysctls=sysctls))

    # ---- volumes and pod files --------------------------------------------

    def _empty_dir(self, pod_dir, name):
        return os.path.join(pod_dir, "volumes", "kubernetes.io~empty-dir", name)

    def prepare(self, pod_dir):
        """Make the pod's dir and emptyDir volumes, check hostPath volumes,
        as kubelet does before it starts the sandbox."""
        os.makedirs(pod_dir, exist_ok=True)
        for name, volume in self.volumes.items():
            if "emptyDir" in volume:
                if (volume["emptyDir"] or {}).get("medium") == "Memory":
                    raise ManifestError(f"volume {name}: emptyDir medium Memory is not supported")
                self._make_empty_dir(self._empty_dir(pod_dir, name))
            elif "hostPath" in volume:
                self._check_host_path(name, volume["hostPath"])
            else:
                raise ManifestError(f"volume {name}: only hostPath and emptyDir are supported")

    def _make_empty_dir(self, path):
        """An emptyDir as kubelet makes it: writable by any user, and owned
        by the fsGroup (setgid, so new files get the group too) if one is set."""
        os.makedirs(path, exist_ok=True)
        fs_group = self._pod_security().get("fsGroup")
        if fs_group is None:
            os.chmod(path, 0o777)
        else:
            os.chown(path, -1, fs_group)
            os.chmod(path, 0o2777)

    def _check_host_path(self, name, host_path):
        path, kind = host_path["path"], host_path.get("type", "")
        if kind == "DirectoryOrCreate":
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        elif kind == "Directory" and not os.path.isdir(path):
            raise ManifestError(f"volume {name}: hostPath {path} is not a directory")
        elif kind == "File" and not os.path.isfile(path):
            raise ManifestError(f"volume {name}: hostPath {path} is not a file")
        elif kind not in ("", "DirectoryOrCreate", "FileOrCreate", "Directory", "File"):
            raise ManifestError(f"volume {name}: hostPath type {kind!r} is not supported")

    def _volume_path(self, pod_dir, name):
        volume = self.volumes.get(name)
        if volume is None:
            raise ManifestError(f"volumeMount of unknown volume {name!r}")
        if "emptyDir" in volume:
            return self._empty_dir(pod_dir, name)
        return volume["hostPath"]["path"]

    def hosts_file(self, pod_dir):
        return os.path.join(pod_dir, "etc-hosts")

    def write_hosts_file(self, pod_dir, pod_ips):
        """kubelet's managed /etc/hosts: the host's own for hostNetwork pods,
        else localhost entries and the pod's addresses under its hostname."""
        if self.host_network:
            with open("/etc/hosts") as f:
                content = f.read()
        else:
            lines = ["# Kubernetes-managed hosts file.",
                     "127.0.0.1\tlocalhost",
                     "::1\tlocalhost ip6-localhost ip6-loopback",
                     "fe00::0\tip6-localnet",
                     "fe00::0\tip6-mcastprefix",
                     "fe00::1\tip6-allnodes",
                     "fe00::2\tip6-allrouters"]
            lines += [f"{ip}\t{self.hostname()}" for ip in pod_ips]
            content = "\n".join(lines) + "\n"
        with open(self.hosts_file(pod_dir), "w") as f:
            f.write(content)

    def _termination_message_file(self, pod_dir, container_name):
        """A new empty host file for the container's termination message."""
        directory = os.path.join(pod_dir, "containers", container_name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, secrets.token_hex(4))
        open(path, "w").close()
        os.chmod(path, 0o666)  # whatever user the container runs as may write it
        return path

    def _mounts(self, container, pod_dir):
        mounts = []
        for mount in container.get("volumeMounts", []):
            host_path = self._volume_path(pod_dir, mount["name"])
            if mount.get("subPath"):
                host_path = os.path.join(host_path, mount["subPath"])
                os.makedirs(host_path, exist_ok=True)
            mounts.append(v1.Mount(container_path=mount["mountPath"], host_path=host_path,
                                   readonly=bool(mount.get("readOnly")),
                                   propagation=v1.PROPAGATION_PRIVATE))
        mounted = {m.container_path for m in mounts}
        # /etc/hosts unless the container mounts its own there.
        if "/etc/hosts" not in mounted and os.path.exists(self.hosts_file(pod_dir)):
            mounts.append(v1.Mount(container_path="/etc/hosts", host_path=self.hosts_file(pod_dir)))
        message_path = container.get("terminationMessagePath", DEFAULT_TERMINATION_MESSAGE_PATH)
        if message_path and message_path not in mounted:
            mounts.append(v1.Mount(container_path=message_path,
                                   host_path=self._termination_message_file(pod_dir, container["name"])))
        return mounts

    # ---- containers --------------------------------------------------------

    def _oom_score_adj(self, container, memory_capacity):
        qos = self.qos_class()
        if qos == "Guaranteed":
            return GUARANTEED_OOM_SCORE_ADJ
        if qos == "BestEffort":
            return BESTEFFORT_OOM_SCORE_ADJ
        # Burstable: the larger the share of node memory it asked for, the
        # safer, but always between Guaranteed and BestEffort.
        requests, _ = self._resources(container)
        request = memory_bytes(requests["memory"]) if "memory" in requests else 0
        score = 1000 - (1000 * request) // memory_capacity
        score = max(score, 1000 + GUARANTEED_OOM_SCORE_ADJ)
        return min(score, BESTEFFORT_OOM_SCORE_ADJ - 1)

    def _linux_resources(self, container):
        requests, limits = self._resources(container)
        cpu_request = milli_cpu(requests["cpu"]) if "cpu" in requests else 0
        resources = v1.LinuxContainerResources(
            cpu_shares=max(cpu_request * 1024 // 1000, MIN_CPU_SHARES),
            oom_score_adj=self._oom_score_adj(container, node_memory()))
        if "cpu" in limits:
            resources.cpu_period = CPU_PERIOD
            resources.cpu_quota = max(milli_cpu(limits["cpu"]) * CPU_PERIOD // 1000, MIN_CPU_QUOTA)
        if "memory" in limits:
            resources.memory_limit_in_bytes = memory_bytes(limits["memory"])
        return resources

    def _container_security(self, container):
        pod_security = self._pod_security()
        security = container.get("securityContext") or {}
        privileged = bool(security.get("privileged"))
        capabilities = security.get("capabilities") or {}
        context = v1.LinuxContainerSecurityContext(
            capabilities=v1.Capability(add_capabilities=capabilities.get("add", []),
                                       drop_capabilities=capabilities.get("drop", [])),
            privileged=privileged,
            namespace_options=self._namespace_options(),
            readonly_rootfs=bool(security.get("readOnlyRootFilesystem")),
            supplemental_groups=self._supplemental_groups(),
            # Only an explicit allowPrivilegeEscalation: false sets it.
            no_new_privs=security.get("allowPrivilegeEscalation") is False,
            seccomp=self._seccomp(container))
        if not privileged:
            context.masked_paths.extend(MASKED_PATHS)
            context.readonly_paths.extend(READONLY_PATHS)
        # The container's setting wins over the pod's.
        for key, field in (("runAsUser", context.run_as_user), ("runAsGroup", context.run_as_group)):
            value = security.get(key, pod_security.get(key))
            if value is not None:
                field.value = value
        return context

    def _env(self, container):
        env = {}
        for item in container.get("env", []):
            if "valueFrom" in item:
                raise ManifestError(f"env {item['name']}: valueFrom is not supported")
            # Later entries may refer to earlier ones.
            env[item["name"]] = expand(str(item.get("value", "")), env)
        return env

    def log_path(self, container_name, restart_count=0):
        """A container's log file, relative to the pod's log directory."""
        return os.path.join(container_name, f"{restart_count}.log")

    def container_config(self, name, image_ref, pod_dir):
        """The ContainerConfig for CreateContainer of container `name`.

        image_ref is the image's id (from ImageStatus), as kubelet passes it.
        Call write_hosts_file first to have /etc/hosts mounted.
        """
        container = self.containers[name]
        env = self._env(container)
        labels = {CONTAINER_NAME: name, POD_NAME: self.name, POD_NAMESPACE: self.namespace,
                  POD_UID: self.uid}
        annotations = {
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath":
                container.get("terminationMessagePath", DEFAULT_TERMINATION_MESSAGE_PATH),
            "io.kubernetes.container.terminationMessagePolicy":
                container.get("terminationMessagePolicy", "File"),
            "io.kubernetes.pod.terminationGracePeriod":
                str(self.spec.get("terminationGracePeriodSeconds", 30)),
        }
        return v1.ContainerConfig(
            metadata=v1.ContainerMetadata(name=name, attempt=0),
            image=v1.ImageSpec(image=image_ref, user_specified_image=container["image"]),
            # kubelet hands command and args over separately; the runtime
            # combines them with the image's entrypoint and cmd.
            command=[expand(a, env) for a in container.get("command", [])],
            args=[expand(a, env) for a in container.get("args", [])],
            working_dir=container.get("workingDir", ""),
            envs=[v1.KeyValue(key=k, value=v) for k, v in env.items()],
            mounts=self._mounts(container, pod_dir),
            labels=labels,
            annotations=annotations,
            log_path=self.log_path(name),
            stdin=bool(container.get("stdin")),
            stdin_once=bool(container.get("stdinOnce")),
            tty=bool(container.get("tty")),
            linux=v1.LinuxContainerConfig(resources=self._linux_resources(container),
                                          security_context=self._container_security(container)))
