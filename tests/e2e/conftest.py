"""Fixtures for the end-to-end tests: one private containerd per session
(`ctd`), and one more with the CRI plugin on for the tests that need it
(`cri`)."""

import atexit
import collections
import contextlib
import glob
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # so tests can `import harness`
# ...and the CRI helpers: `import pods`, `import kubelet`; the registry
# (`import registry`) and the image tools (`import push`).
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cri"))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "images"))

from harness import CONTAINERD_VERSION, REPO_ROOT, Containerd, containerd_bin_dir  # noqa: E402

IMAGES_DIR = os.path.join(REPO_ROOT, "out", "images")
# Pushed to the test registry as <registry>/wasmlet/<name>:latest.
REGISTRY_IMAGES_DIR = os.path.join(REPO_ROOT, "out", "registry-images")
# containerd's log is copied here at the end, since its temp dir goes away.
# One per version, so `make e2e` keeps the log of each.
LOG_COPY = os.path.join(REPO_ROOT, "out", "e2e", f"containerd-{CONTAINERD_VERSION}.log")
CRI_LOG_COPY = os.path.join(REPO_ROOT, "out", "e2e", f"containerd-cri-{CONTAINERD_VERSION}.log")

_current = []  # the session's live Containerds, for the failure report hook

# What the `cri` fixture yields: the harness and a Kubelet on its CRI socket.
Cri = collections.namedtuple("Cri", "ctd kubelet")


def _save_log(ctd, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        shutil.copyfile(ctd.log_path, path)
    except OSError:
        pass


def pytest_report_header(config):
    """Name the containerd the session runs against, as it names itself."""
    try:
        binary = os.path.join(containerd_bin_dir(CONTAINERD_VERSION), "containerd")
        found = subprocess.run([binary, "--version"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except Exception as e:  # the ctd fixture reports it properly
        found = f"unavailable: {e}"
    return f"containerd {CONTAINERD_VERSION} (WASMLET_CONTAINERD): {found}"


@pytest.fixture(scope="session")
def ctd():
    if not glob.glob(os.path.join(IMAGES_DIR, "*.tar")):
        pytest.fail(f"no images in {IMAGES_DIR}: run make images", pytrace=False)
    # A namespace of its own, so parallel sessions never clean up each other.
    ctd = Containerd(namespace=f"wasmlet-test-{os.getpid()}")
    atexit.register(ctd.stop)  # in case the session dies before teardown
    _current.append(ctd)
    try:
        ctd.import_images(IMAGES_DIR)
        yield ctd
    finally:
        _current.remove(ctd)
        _save_log(ctd, LOG_COPY)
        ctd.stop()


@pytest.fixture(scope="session")
def cri():
    """A containerd of its own serving CRI (namespace k8s.io), with every
    image imported, and a Kubelet to run pods through it."""
    with cri_session(log_copy=CRI_LOG_COPY) as session:
        yield session


@contextlib.contextmanager
def cri_session(image_names=("*",), log_copy=None, **containerd_options):
    """A CRI containerd (Containerd options as given) with the images
    <name>.tar of IMAGES_DIR imported and a Kubelet on it; every pod,
    process and file of it is gone afterwards (its log kept as log_copy)."""
    if not os.path.exists(os.path.join(IMAGES_DIR, "pause.tar")):
        pytest.fail(f"no pause image in {IMAGES_DIR}: run make images", pytrace=False)
    from kubelet import Kubelet  # generates the CRI stubs on first use

    ctd = Containerd(cri=True, **containerd_options)
    atexit.register(ctd.stop)
    _current.append(ctd)
    kubelet = None
    try:
        ctd.import_images(IMAGES_DIR, image_names)
        kubelet = Kubelet(ctd.socket, os.path.join(ctd.dir, "kubelet"), ctd.pod_cgroup_root)
        yield Cri(ctd, kubelet)
    finally:
        _current.remove(ctd)
        if kubelet is not None:
            # Through CRI, so the CNI plugin releases each pod's network.
            try:
                kubelet.remove_all()
            except Exception as e:  # stop() below cleans up the rest
                print(f"conftest: removing pods failed: {e}", file=sys.stderr)
            kubelet.close()
        if log_copy:
            _save_log(ctd, log_copy)
        ctd.stop()


@pytest.fixture(scope="session")
def registry(cri):
    """A registry on 127.0.0.1 holding every image of REGISTRY_IMAGES_DIR,
    which the `cri` containerd pulls from over plain HTTP."""
    import push
    from registry import Registry

    archives = sorted(glob.glob(os.path.join(REGISTRY_IMAGES_DIR, "*.tar")))
    if not archives:
        pytest.fail(f"no images in {REGISTRY_IMAGES_DIR}: run make images", pytrace=False)
    reg = Registry()
    atexit.register(reg.stop)
    try:
        for archive in archives:
            name = os.path.basename(archive)[:-len(".tar")]
            push.push_archive(archive, f"{reg.host}/wasmlet/{name}:latest")
        cri.ctd.trust_registry(reg.host)
        yield reg
    finally:
        reg.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Show the end of containerd's log under a failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # The containerds this test used (through its fixtures), else all.
        used = [v.ctd if isinstance(v, Cri) else v for v in getattr(item, "funcargs", {}).values()
                if isinstance(v, (Cri, Containerd))]
        for ctd in [c for c in _current if c in used] or _current:
            title = "containerd (CRI) log (tail)" if ctd.cri else "containerd log (tail)"
            report.sections.append((title, ctd.log_tail()))


@pytest.fixture
def clean(ctd):
    """Each scenario must leave no task, container, process, mount or cgroup."""
    yield ctd
    ctd.delete_all()
    assert ctd.containers() == []
    assert ctd.leftovers() == []
