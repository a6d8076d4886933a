"""Fixtures for the end-to-end tests: one private containerd per session."""

import atexit
import glob
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # so tests can `import harness`

from harness import REPO_ROOT, Containerd  # noqa: E402

IMAGES_DIR = os.path.join(REPO_ROOT, "out", "images")
# containerd's log is copied here at the end, since its temp dir goes away.
LOG_COPY = os.path.join(REPO_ROOT, "out", "e2e", "containerd.log")

_current = None  # the session's Containerd, for the failure report hook


@pytest.fixture(scope="session")
def ctd():
    global _current
    if not glob.glob(os.path.join(IMAGES_DIR, "*.tar")):
        pytest.fail(f"no images in {IMAGES_DIR}: run make images", pytrace=False)
    ctd = Containerd()
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
