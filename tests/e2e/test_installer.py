"""The node installer (out/release/wasmlet-node-installer, `make release`)
on throwaway nodes (tests/e2e/node.py) whose containerd is the suite's
version: install, run a wasm pod through CRI, install again (no change),
upgrade the shim (one restart), uninstall (the config byte for byte as it
was); and its failures, which leave the node as it was."""

import datetime
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib

import pytest

from harness import CONTAINERD_VERSION, containerd_bin_dir
from kube_api import KubeApi
from node import INSTALLER, RELEASE_DIR, SHIM, Node, patch_for_this_machine, run_installer

import pods
from kubelet import Kubelet, read_cri_log, v1

NODE = "node-1"
LABEL = "wasmlet.dev/installed"
MAJOR = int(CONTAINERD_VERSION.split(".")[0])
# containerd 1.6 ignores runtime_path when it starts a pod's sandbox: it
# finds the shim only on its PATH, where the installer then links it.
NEEDS_LINK = tuple(int(part) for part in CONTAINERD_VERSION.split(".")[:2]) < (1, 7)
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "out", "images")
HELLO_MANIFEST = os.path.join(os.path.dirname(HERE), "cri", "manifests", "hello-wasm.yaml")
# containerd's default sandbox image, by version (the test pause image is tagged so).
SANDBOX_IMAGES = ["registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.8", "registry.k8s.io/pause:3.10"]
SHIM_HOST_PATH = "/opt/wasmlet/bin/containerd-shim-wasmlet-v1"
STATE_FILE = "/opt/wasmlet/state.json"
LINK = "/usr/local/bin/containerd-shim-wasmlet-v1"

RUNTIMES = ("plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes" if MAJOR >= 2
            else 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes')

# A config kept by hand, with comments the installer must keep.
COMMENTED = {
    1: """# containerd config for this node, kept by hand.
# Keep these comments: the installer must not touch them.
version = 2

[plugins]
  # CRI: runc through its v2 shim is the default runtime
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true   # this machine may not lower OOM scores
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"   # containers default to runc
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.internal.v1.opt"]
    path = "/opt/containerd"   # the test gives each node its own
""",
    2: """# containerd 2 config for this node, kept by hand.
# Keep these comments: the installer must not touch them.
version = 3

[plugins]
  # the runtime half of CRI
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true   # this machine may not lower OOM scores
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'

  [plugins.'io.containerd.internal.v1.opt']
    path = '/opt/containerd'   # the test gives each node its own
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '/opt/containerd/image-verifier/bin'
  # NRI would listen on the host-wide /var/run/nri/nri.sock
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
""",
}

# Handlers a node may have already; the installer must keep them.
OTHER_RUNTIMES = f"""
[{RUNTIMES}.crun]
  runtime_type = "io.containerd.runc.v2"

  [{RUNTIMES}.crun.options]
    BinaryName = "/usr/local/bin/crun"

[{RUNTIMES}.spin]
  runtime_type = "io.containerd.spin.v2"
"""

# A k3s user template: the base, plus an admin's own handler.
K3S_TEMPLATE = """{{{{ template "base" . }}}}

# Added by the cluster admin.
[{runtimes}.crun]
  runtime_type = "io.containerd.runc.v2"
""".format(runtimes=RUNTIMES)


def default_config():
    """This containerd version's own default config, made to run here."""
    binary = os.path.join(containerd_bin_dir(CONTAINERD_VERSION), "containerd")
    text = subprocess.run([binary, "config", "default"], capture_output=True, text=True,
                          check=True).stdout
    return patch_for_this_machine(text, MAJOR)


def with_imports(text):
    """A config that imports a directory of drop-ins, as containerd 2.2 and
    k3s write theirs (containerd's own default has an empty `imports`)."""
    imports = 'imports = ["/etc/containerd/conf.d/*.toml"]'
    if re.search(r"^imports = \[.*\]$", text, re.M):
        return re.sub(r"^imports = \[.*\]$", imports, text, count=1, flags=re.M)
    version, rest = text.split("\n", 1)
    return f"{version}\n{imports}\n{rest}"


DROP_IN = "/etc/containerd/conf.d/wasmlet.toml"

CASES = {
    "default": lambda: ("containerd", default_config(), None),
    "imports": lambda: ("containerd", with_imports(default_config()), None),
    "comments": lambda: ("containerd", COMMENTED[min(MAJOR, 2)], None),
    "other-runtimes": lambda: ("containerd", default_config() + OTHER_RUNTIMES, None),
    "k3s-template": lambda: ("k3s", default_config(), K3S_TEMPLATE),
    "k3s-no-template": lambda: ("k3s", default_config(), None),
}


@pytest.fixture(scope="module")
def api():
    api = KubeApi(nodes=[NODE])
    yield api
    api.stop()


@pytest.fixture(scope="module", autouse=True)
def release():
    for path in (INSTALLER, SHIM):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: run make release", pytrace=False)


@pytest.fixture
def make_node():
    """Nodes made by the test; each is checked for leftovers and removed."""
    made = []

    def make(distribution, original, template=None):
        node = Node(distribution, original, template)
        made.append(node)
        node.import_images(IMAGES_DIR, ("pause", "hello"))
        for name in SANDBOX_IMAGES:
            node.ctr("images", "tag", "--force", "wasmlet.test/pause:latest", name)
        return node

    yield make
    for node in made:
        try:
            assert node.leftovers() == []
        finally:
            node.stop()


def run_hello(node):
    """A wasm pod through CRI on the node: its container says hello, exit 0."""
    pod = pods.Pod.load(HELLO_MANIFEST)
    pod.spec["hostNetwork"] = True  # no CNI on these nodes
    kubelet = Kubelet(node.socket, os.path.join(node.dir, "kubelet"), node.pod_cgroup_root)
    try:
        with kubelet.running_pod(pod) as sandbox_id:
            container_id = kubelet.start_containers(pod, sandbox_id)["hello"]
            status = kubelet.wait_container(container_id)
            log = [line[3] for line in read_cri_log(kubelet.log_path(pod, "hello"))]
            assert status.exit_code == 0, (status, log)
            assert "Hello from wasmlet!" in log, log
    finally:
        kubelet.close()


def succeeded(result):
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"
    return result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_install_reinstall_upgrade_uninstall(case, make_node, api, tmp_path):
    distribution, original, template = CASES[case]()
    node = make_node(distribution, original, template)
    # containerd 2 merges an imported file's plugin tables key by key: wasmlet
    # then adds a file of its own; 1.x would replace the main file's tables.
    drop_in = case == "imports" and MAJOR >= 2
    edited = node.template_path if distribution == "k3s" else DROP_IN if drop_in else node.paths["config"]
    before = node.read(edited)
    rendered_before = node.read(node.paths["config"])
    env = api.env(NODE)

    # Install: the shim, its link, the runtime; one restart; the label.
    succeeded(node.run_installer("install", env=env))
    assert node.restarts == 1
    with open(SHIM, "rb") as f:
        assert node.read(SHIM_HOST_PATH) == f.read()
    # containerd finds it by its path: nothing goes onto containerd's PATH (but for 1.6).
    assert os.path.lexists(node.path(LINK)) == NEEDS_LINK
    assert api.nodes[NODE] == {LABEL: "true"}
    if drop_in:
        assert node.read(node.paths["config"]).decode() == node.original, "the main file was edited"
        config = merged_config(node)
        # Every setting of the main file is still in what containerd runs with.
        main = tomllib.loads(node.original)
        assert_settings_kept(main, config)
    else:
        config = tomllib.loads(node.read(node.paths["config"]).decode())
    handlers = config_runtimes(config)
    if drop_in:
        # `config dump` fills in every default of the handler.
        assert handlers["wasmlet"]["runtime_type"] == "io.containerd.wasmlet.v1"
        # The dump is of the config as it runs here, the node's /opt mapped into its root.
        assert handlers["wasmlet"]["runtime_path"] == node.path(SHIM_HOST_PATH)
        assert f'runtime_path = "{SHIM_HOST_PATH}"' in node.read(DROP_IN).decode()
    else:
        assert handlers["wasmlet"] == {"runtime_type": "io.containerd.wasmlet.v1", "runtime_path": SHIM_HOST_PATH}
    assert "runc" in handlers
    if case == "other-runtimes":
        assert handlers["crun"]["options"] == {"BinaryName": "/usr/local/bin/crun"}
        assert handlers["spin"] == {"runtime_type": "io.containerd.spin.v2"}
    if case == "comments":
        assert_kept(node.original, node.read(edited).decode())
    run_hello(node)

    # Again with the same binary: nothing written, nothing restarted.
    after_install, record = node.read(edited), os.stat(node.path(STATE_FILE))
    stderr = succeeded(node.run_installer("install", env=env))
    assert "nothing changed" in stderr
    assert node.restarts == 1
    assert node.read(edited) == after_install
    assert os.stat(node.path(STATE_FILE)).st_mtime_ns == record.st_mtime_ns

    # A new binary replaces the old one; containerd runs it for the next
    # pod without a restart.
    new_shim = tmp_path / "containerd-shim-wasmlet-v1"
    with open(SHIM, "rb") as f:
        new_shim.write_bytes(f.read() + b"\0new build")
    assert "containerd needs no restart" in succeeded(node.run_installer("install", shim=str(new_shim), env=env))
    assert node.restarts == 1
    assert node.read(SHIM_HOST_PATH) == new_shim.read_bytes()
    assert node.read(edited) == after_install
    run_hello(node)

    # Uninstall: the label stops scheduling first, then goes when all is back.
    del api.label_patches[:]
    succeeded(node.run_installer("uninstall", env=env))
    assert api.label_patches == [(NODE, {LABEL: "uninstalling"}), (NODE, {LABEL: None})]
    assert node.restarts == 2
    assert node.read(edited) == before
    if drop_in:
        assert before is None and node.read(node.paths["config"]).decode() == node.original
    assert not os.path.lexists(node.path(LINK))
    assert not os.path.exists(node.path("/opt/wasmlet"))
    assert api.nodes[NODE] == {}
    assert node.serving()
    assert node.read(node.paths["config"]) == rendered_before


def merged_config(node):
    """The config containerd runs with, its imports merged (`config dump`)."""
    binary = os.path.join(containerd_bin_dir(CONTAINERD_VERSION), "containerd")
    dump = subprocess.run([binary, "--config", node.running_config(), "config", "dump"],
                          capture_output=True, text=True, check=True).stdout
    return tomllib.loads(dump)


def assert_settings_kept(main, merged, where=""):
    """Every value of the main file's tables is in the merged config."""
    for key, value in main.items():
        if key == "imports":
            continue
        if isinstance(value, dict):
            assert isinstance(merged.get(key), dict), f"{where}{key} is gone"
            assert_settings_kept(value, merged[key], f"{where}{key}.")
        else:
            assert merged.get(key) == value, f"{where}{key}: {merged.get(key)!r}, was {value!r}"


def test_a_node_where_wasm_pods_cannot_run_is_not_labelled(make_node, api):
    node = make_node("containerd", default_config())
    os.remove(node.path("/sys"))  # no cgroup hierarchy on this node
    stderr = succeeded(node.run_installer("install", env=api.env(NODE)))
    assert "not labelling this node for wasm pods: no cgroup hierarchy is mounted at /sys/fs/cgroup" in stderr, stderr
    assert api.nodes[NODE] == {}
    succeeded(node.run_installer("uninstall", env=api.env(NODE)))


def assert_kept(original, edited):
    """Every line of the original is in the edited text, in order."""
    lines = iter(edited.splitlines())
    missing = [line for line in original.splitlines() if not any(line == e for e in lines)]
    assert missing == [], edited


def config_runtimes(config):
    """The CRI runtime handlers of a parsed config."""
    if MAJOR >= 2:
        return config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    return config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]


def shim_daemons(node):
    """Shim daemons running the node's installed binary (or its replaced
    file); its instances run it too, as `... instance BUNDLE`."""
    installed = node.path(SHIM_HOST_PATH)
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if exe.removesuffix(" (deleted)") == installed and b"instance" not in argv[1:2]:
            found.append(int(entry))
    return found


def test_upgrade_and_uninstall_under_a_running_wasm_pod(make_node, api, tmp_path):
    node = make_node("containerd", default_config())
    node.import_images(IMAGES_DIR, ("sleep",))
    env = api.env(NODE)
    succeeded(node.run_installer("install", env=env))
    sleeper = pods.Pod.load(os.path.join(os.path.dirname(HELLO_MANIFEST), "sleep-wasm.yaml"))
    sleeper.spec["hostNetwork"] = True
    kubelet = Kubelet(node.socket, os.path.join(node.dir, "kubelet"), node.pod_cgroup_root)
    try:
        sandbox_id = kubelet.run_pod_sandbox(sleeper)
        container_id = kubelet.start_containers(sleeper, sandbox_id)["sleep"]
        kubelet.wait_container(container_id, v1.CONTAINER_RUNNING, timeout=30)
        [old_shim] = shim_daemons(node)

        # Upgrade: no restart; the running pod keeps its shim, a new pod runs the new binary.
        new_shim = tmp_path / "containerd-shim-wasmlet-v1"
        with open(SHIM, "rb") as f:
            new_shim.write_bytes(f.read() + b"\0new build")
        succeeded(node.run_installer("install", shim=str(new_shim), env=env))
        assert node.restarts == 1
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING
        assert os.readlink(f"/proc/{old_shim}/exe").endswith(" (deleted)")
        run_hello(node)

        # Uninstall waits for the pod, and removes nothing if it stays.
        del api.label_patches[:]
        refused = node.run_installer("uninstall", env={**env, "WASMLET_DRAIN_TIMEOUT": "2"})
        assert refused.returncode != 0
        assert "wasm pods still run on this node" in refused.stderr and str(old_shim) in refused.stderr, refused.stderr
        assert api.label_patches == [(NODE, {LABEL: "uninstalling"})]
        assert os.path.exists(node.path(SHIM_HOST_PATH))
        assert node.restarts == 1
        assert kubelet.container_status(container_id).state == v1.CONTAINER_RUNNING

        # Once the pod is gone (here while uninstall waits), it goes ahead.
        result = {}
        uninstall = threading.Thread(target=lambda: result.update(done=node.run_installer("uninstall", env=env)))
        uninstall.start()
        time.sleep(1)
        assert uninstall.is_alive(), "uninstall did not wait for the running pod"
        kubelet.stop_pod_sandbox(sandbox_id)
        kubelet.remove_pod_sandbox(sandbox_id)
        uninstall.join(timeout=120)
        assert "waiting for the wasm pods" in succeeded(result["done"])
        assert not os.path.exists(node.path("/opt/wasmlet"))
        assert api.nodes[NODE] == {}
    finally:
        kubelet.remove_all()
        kubelet.close()


def test_an_edit_after_the_install_survives_reinstall_and_uninstall(make_node, api):
    node = make_node("containerd", default_config())
    succeeded(node.run_installer("install", env=api.env(NODE)))
    config = node.path(node.paths["config"])
    with open(config, "a") as f:
        f.write("\n# The admin was here.\n")
    # The pod restarts: same install, nothing to do, but the edit is noted.
    succeeded(node.run_installer("install", env=api.env(NODE)))
    assert node.restarts == 1
    succeeded(node.run_installer("uninstall", env=api.env(NODE)))
    assert node.read(node.paths["config"]).decode() == node.original + "\n# The admin was here.\n"


def test_runtime_options_go_to_a_file_the_config_names(make_node, api):
    node = make_node("containerd", default_config())
    options = '{"SystemdCgroup": false, "CacheMaxBytes": 1000000}'
    succeeded(node.run_installer("install", env={**api.env(NODE), "WASMLET_RUNTIME_OPTIONS": options}))
    written = tomllib.loads(node.read("/opt/wasmlet/options.toml").decode())
    assert written == {"SystemdCgroup": False, "CacheMaxBytes": 1000000}
    handler = config_runtimes(tomllib.loads(node.read(node.paths["config"]).decode()))["wasmlet"]
    assert handler["options"] == {"ConfigPath": "/opt/wasmlet/options.toml"}
    succeeded(node.run_installer("uninstall", env=api.env(NODE)))
    assert node.read(node.paths["config"]).decode() == node.original


def test_containerd_not_coming_back_undoes_the_install(make_node, api):
    node = make_node("containerd", default_config())
    node.refuse_next_start = True
    result = node.run_installer("install", "--restart-timeout", "3", env=api.env(NODE))
    assert result.returncode != 0
    assert "containerd did not come back within 3s" in result.stderr, result.stderr
    assert "removing wasmlet from this node again" in result.stderr, result.stderr
    # The undo restarted containerd with its own config again.
    assert node.restarts == 2
    assert node.serving()
    assert node.read(node.paths["config"]).decode() == node.original
    assert not os.path.exists(node.path("/opt/wasmlet"))
    assert not os.path.lexists(node.path(LINK))
    assert api.nodes[NODE] == {}


def test_a_node_whose_usr_is_read_only_gets_wasmlet_all_the_same(make_node, api):
    """Container-Optimized OS, Bottlerocket, Flatcar and Talos keep /usr
    read-only: the shim is named by its path in /opt (runtime_path), never
    linked there. containerd 1.6 alone needs the link: there the install
    fails, saying so, and puts the node back. A link an older install left
    is removed where /usr can be written; where it cannot, it stays (it
    names the same shim) and the install goes ahead."""
    node = make_node("containerd", default_config())
    usr = node.path("/usr")

    def read_only_usr(then):
        subprocess.run(["mount", "--bind", usr, usr], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", usr], check=True)
            with pytest.raises(OSError):
                open(node.path("/usr/local/bin/probe"), "w").close()
            then()
        finally:
            subprocess.run(["umount", usr], check=True)

    if NEEDS_LINK:
        def refused():
            result = node.run_installer("install", env=api.env(NODE))
            assert result.returncode != 0
            assert "containerd 1.6 ignores runtime_path when it starts a pod's sandbox" in result.stderr, result.stderr
            assert not os.path.exists(node.path("/opt/wasmlet"))
            assert node.read(node.paths["config"]).decode() == node.original
        read_only_usr(refused)
        return

    def installed_and_removed():
        succeeded(node.run_installer("install", env=api.env(NODE)))
        assert api.nodes[NODE] == {LABEL: "true"}
        run_hello(node)
        succeeded(node.run_installer("uninstall", env=api.env(NODE)))
        assert node.read(node.paths["config"]).decode() == node.original
        assert not os.path.exists(node.path("/opt/wasmlet"))
    read_only_usr(installed_and_removed)

    # An install from before runtime_path left its link.
    os.symlink("../../../opt/wasmlet/bin/containerd-shim-wasmlet-v1", node.path(LINK))

    def kept():
        assert "leaving wasmlet's" in succeeded(node.run_installer("install", env=api.env(NODE)))
        assert os.path.islink(node.path(LINK))
        run_hello(node)
    read_only_usr(kept)
    succeeded(node.run_installer("install", env=api.env(NODE)))
    assert not os.path.lexists(node.path(LINK))
    succeeded(node.run_installer("uninstall", env=api.env(NODE)))


@pytest.fixture
def bare_host():
    """A node root with plain containerd's files but no containerd running:
    for failures that must stop the installer before any restart."""
    root = tempfile.mkdtemp(prefix="wasmlet-e2e-host-", dir="/tmp")
    for d in ("etc/containerd", "etc/systemd/system", "opt", "usr/local/bin"):
        os.makedirs(os.path.join(root, d))
    open(os.path.join(root, "etc/systemd/system/containerd.service"), "w").close()
    yield root
    subprocess.run(["umount", os.path.join(root, "opt")], capture_output=True)
    shutil.rmtree(root)


def untouched(root, config):
    with open(os.path.join(root, "etc/containerd/config.toml")) as f:
        assert f.read() == config
    assert os.listdir(os.path.join(root, "opt")) == []
    assert os.listdir(os.path.join(root, "usr/local/bin")) == []


def test_an_unknown_config_layout_is_refused(bare_host, api):
    config = "# a containerd from the future\nversion = 4\n"
    with open(os.path.join(bare_host, "etc/containerd/config.toml"), "w") as f:
        f.write(config)
    result = run_installer(bare_host, "install", env=api.env(NODE))
    assert result.returncode != 0
    assert "/etc/containerd/config.toml: unknown layout: config version 4" in result.stderr, result.stderr
    untouched(bare_host, config)
    assert api.nodes[NODE] == {}


def test_an_unwritable_root_is_refused(bare_host, api):
    config = "version = 2\n"
    with open(os.path.join(bare_host, "etc/containerd/config.toml"), "w") as f:
        f.write(config)
    opt = os.path.join(bare_host, "opt")
    subprocess.run(["mount", "--bind", opt, opt], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", opt], check=True)
    result = run_installer(bare_host, "install", env=api.env(NODE))
    assert result.returncode != 0
    assert "create /opt/wasmlet on the host: Read-only file system" in result.stderr, result.stderr
    untouched(bare_host, config)
    assert api.nodes[NODE] == {}


def test_uninstall_hook_waits_for_every_node(api):
    api.nodes.update({"node-a": {LABEL: "true"}, "node-b": {LABEL: "true"}})
    api.daemonsets[("wasmlet", "wasmlet")] = {"wasmlet.dev/mode": "install"}

    def uninstall_nodes(namespace, name):
        # What the DaemonSet's pods do once their mode is uninstall.
        def unlabel():
            for node in ("node-a", "node-b"):
                api.nodes[node].pop(LABEL, None)
        threading.Timer(1.0, unlabel).start()

    api.on_daemonset_patch = uninstall_nodes
    try:
        result = run_installer("/", "cleanup", "--namespace", "wasmlet", "--daemonset", "wasmlet",
                               "--timeout", "30", env=api.env())
        assert result.returncode == 0, result.stderr
        assert api.daemonsets[("wasmlet", "wasmlet")] == {"wasmlet.dev/mode": "uninstall"}

        # A node that never gets there fails the hook, by name.
        api.on_daemonset_patch = None
        api.nodes["node-b"][LABEL] = "true"
        result = run_installer("/", "cleanup", "--namespace", "wasmlet", "--daemonset", "wasmlet",
                               "--timeout", "2", env=api.env())
        assert result.returncode != 0
        assert "these nodes still have wasmlet.dev/installed: node-b" in result.stderr, result.stderr
    finally:
        api.on_daemonset_patch = None
        for node in ("node-a", "node-b"):
            del api.nodes[node]


def test_release_binaries_are_static_stripped_and_stamped():
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=RELEASE_DIR,
                            capture_output=True, text=True).stdout.strip()
    for binary in (SHIM, INSTALLER):
        headers = subprocess.run(["readelf", "-lSW", binary], capture_output=True, text=True, check=True).stdout
        assert "INTERP" not in headers and "DYNAMIC" not in headers, f"{binary} is not static"
        assert ".symtab" not in headers, f"{binary} is not stripped"
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        assert "0.1.0 (commit " + commit in version, version
    sums = subprocess.run(["sha256sum", "--check", "SHA256SUMS"], cwd=RELEASE_DIR,
                          capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr


def test_installer_image_holds_both_binaries(ctd):
    ctd.ctr("images", "import", os.path.join(RELEASE_DIR, "wasmlet-installer.tar"))
    image = next(name for name in ctd.ctr("images", "ls", "-q").stdout.split()
                 if "wasmlet-installer" in name)
    for i, binary in enumerate(("/wasmlet/wasmlet-node-installer", "/wasmlet/containerd-shim-wasmlet-v1")):
        result = ctd.run(image, f"installer-image-{i}", binary, "--version", runtime="io.containerd.runc.v2")
        assert result.returncode == 0, result.stderr
        assert "0.1.0" in result.stdout


def test_nodes_restart_containerd_one_at_a_time(make_node, api):
    """A first install on three nodes at once, as a new DaemonSet starts
    them: each restart of containerd holds the one restart Lease, so no two
    restarts overlap, and every node ends installed and labelled. The Lease
    starts out held by a node that died mid-restart: everyone waits until
    its time is up."""
    names = ["node-1", "node-2", "node-3"]
    nodes = [make_node("containerd", default_config()) for _ in names]
    for name in names:
        api.nodes[name] = {}
    slots = {"WASMLET_RESTART_LEASES": "wasmlet-restart", "POD_NAMESPACE": "wasmlet-system",
             "WASMLET_MAX_CONCURRENT_RESTARTS": "1"}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.leases[("wasmlet-system", "wasmlet-restart-0")] = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "wasmlet-restart-0", "namespace": "wasmlet-system", "resourceVersion": "1"},
        "spec": {"holderIdentity": "node-gone", "leaseDurationSeconds": 4, "acquireTime": now, "renewTime": now}}
    results = {}

    def install(node, name):
        results[name] = node.run_installer("install", env={**api.env(name), **slots})

    threads = [threading.Thread(target=install, args=pair) for pair in zip(nodes, names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in names:
        succeeded(results[name])
        assert api.nodes[name] == {LABEL: "true"}
    assert [node.restarts for node in nodes] == [1, 1, 1]
    # No two restarts overlap: each began after the one before it ended.
    restarts = sorted(interval for node in nodes for interval in node.restart_times)
    for (_, ended), (began, _) in zip(restarts, restarts[1:]):
        assert began >= ended, restarts
    # The Lease went from holder to holder, given back after each restart.
    holders = [holder for namespace, lease, holder in api.lease_writes if (namespace, lease) == ("wasmlet-system", "wasmlet-restart-0")]
    assert sorted(h for h in holders if h) == names and all(not h for h in holders[1::2]), holders
    for name in names:
        assert "waiting to restart containerd: 1 of the cluster's nodes restart at a time" in results[name].stderr, results[name].stderr
    for node in nodes:
        succeeded(node.run_installer("uninstall", env={**api.env(names[nodes.index(node)]), **slots}))
