"""Fixtures for the end-to-end tests: one private containerd per session."""

import atexit
import glob
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # so tests can `import harness`

from harness import CONTAINERD_VERSION, REPO_ROOT, Containerd, containerd_bin_dir  # noqa: E402

IMAGES_DIR = os.path.join(REPO_ROOT, "out", "images")
# containerd's log is copied here at the end, since its temp dir goes away.
# One per version, so `make e2e` keeps the log of each.
LOG_COPY = os.path.join(REPO_ROOT, "out", "e2e", f"containerd-{CONTAINERD_VERSION}.log")

_current = None  # the session's Containerd, for the failure report hook


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
    global _current
    if not glob.glob(os.path.join(IMAGES_DIR, "*.tar")):
        pytest.fail(f"no images in {IMAGES_DIR}: run make images", pytrace=False)
    # A namespace of its own, so parallel sessions never clean up each other.
    ctd = Containerd(namespace=f"wasmlet-test-{os.getpid()}")
    atexit.register(ctd.stop)  # in case the session dies before teardown
    _current = ctd
    try:
        ctd.import_images(IMAGES_DIR)
        yield ctd
    finally:
        _current = None
        os.makedirs(os.path.dirname(LOG_COPY), exist_ok=True)
        try:
            shutil.copyfile(ctd.log_path, LOG_COPY)
        except OSError:
            pass
        ctd.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Show the end of containerd's log under a failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _current is not None:
        report.sections.append(("containerd log (tail)", _current.log_tail()))
