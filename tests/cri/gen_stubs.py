#!/usr/bin/env python3
"""Python stubs of the Kubernetes CRI API (runtime.v1), made at test time.

The proto is not kept in this repo: the crates.io crate k8s-cri, pinned in
tests/cri/proto-source/Cargo.toml, ships it as proto/v1.proto. `cargo
metadata` on that manifest downloads the crate's source (nothing is built)
and says where it is. grpcio-tools (tests/deps.sh) then writes

    out/cri-stubs/cri_api/v1_pb2.py       messages
    out/cri-stubs/cri_api/v1_pb2_grpc.py  RuntimeService and ImageService stubs

again only when the proto or grpcio-tools changed.

    from gen_stubs import load_stubs
    v1, v1_grpc = load_stubs()

Run it as a script to just (re)generate and print the stubs dir.
"""

import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
MANIFEST = os.path.join(HERE, "proto-source", "Cargo.toml")
CRATE = "k8s-cri"
PROTO_IN_CRATE = os.path.join("proto", "v1.proto")
STUBS_DIR = os.path.join(REPO_ROOT, "out", "cri-stubs")
# The generated modules' package: `from cri_api import v1_pb2`.
PACKAGE = "cri_api"
STAMP = "stamp.json"


def _cargo():
    """cargo from PATH, else rustup's usual place (a non-login shell may lack it)."""
    found = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.exists(found):
        raise RuntimeError("cargo not found: it is needed to fetch the CRI proto (k8s-cri crate)")
    return found


def proto_path():
    """Where cargo unpacked k8s-cri's proto/v1.proto (downloading it if needed)."""
    res = subprocess.run([_cargo(), "metadata", "--format-version", "1", "--manifest-path", MANIFEST],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"cargo metadata for the CRI proto failed:\n{res.stderr}")
    for package in json.loads(res.stdout)["packages"]:
        if package["name"] == CRATE:
            path = os.path.join(os.path.dirname(package["manifest_path"]), PROTO_IN_CRATE)
            if not os.path.isfile(path):
                raise RuntimeError(f"{CRATE} {package['version']} has no {PROTO_IN_CRATE}")
            return path
    raise RuntimeError(f"cargo metadata did not list {CRATE}")


def generate(out_dir=STUBS_DIR):
    """Make the stubs in out_dir unless they are already there for this proto."""
    proto = proto_path()
    with open(proto, "rb") as f:
        source = f.read()
    stamp = {"proto_sha256": hashlib.sha256(source).hexdigest(),
             "grpcio_tools": importlib.metadata.version("grpcio-tools")}
    try:
        with open(os.path.join(out_dir, STAMP)) as f:
            if json.load(f) == stamp:
                return out_dir
    except (OSError, ValueError):
        pass

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # Build beside the target and swap it in, so that a concurrent session
    # never imports half-written modules.
    work = tempfile.mkdtemp(prefix=".cri-stubs-", dir=parent)
    try:
        # protoc names modules after the proto's path below its -I dir, so
        # the proto goes in as cri_api/v1.proto to get the cri_api package.
        src = os.path.join(work, "src")
        gen = os.path.join(work, "gen")
        os.makedirs(os.path.join(src, PACKAGE))
        os.makedirs(os.path.join(gen, PACKAGE))
        with open(os.path.join(src, PACKAGE, "v1.proto"), "wb") as f:
            f.write(source)
        res = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={gen}",
             f"--grpc_python_out={gen}", f"{PACKAGE}/v1.proto"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {proto}:\n{res.stderr}")
        with open(os.path.join(gen, PACKAGE, "__init__.py"), "w") as f:
            f.write(f'"""CRI runtime.v1 stubs generated from {CRATE}\'s {PROTO_IN_CRATE}."""\n')
        with open(os.path.join(gen, STAMP), "w") as f:
            json.dump(stamp, f)
        old = out_dir + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(out_dir):
            os.rename(out_dir, old)
        os.rename(gen, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


@functools.lru_cache(maxsize=None)  # one cargo metadata per process is enough
def load_stubs():
    """Generate if needed and import the stubs; returns (v1_pb2, v1_pb2_grpc).
    WASMLET_CRI_STUBS names stubs made elsewhere (the VM node has no cargo
    or grpcio-tools: the host makes them)."""
    out_dir = os.environ.get("WASMLET_CRI_STUBS") or generate()
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return (importlib.import_module(f"{PACKAGE}.v1_pb2"),
            importlib.import_module(f"{PACKAGE}.v1_pb2_grpc"))


if __name__ == "__main__":
    print(generate())
