"""`wasmtime`, the CLI of the shim's own wasmtime version: the reference the
third-party programs' output is compared with (tests/e2e/test_real_programs.py)
and the bench's `wasmtime run` and `wasmtime serve`. Built from crates.io
the first time (about 10 minutes on 2 cores) with the subcommands and
WebAssembly features those need, then kept in /var/cache/wasmlet/tools.
"""

import hashlib
import os
import re
import subprocess

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
TOOLS_DIR = os.environ.get("WASMLET_TOOLS_CACHE", "/var/cache/wasmlet/tools")
# run, compile and serve (with wasi:http), WebAssembly 3.0 as the shim offers
# it; no winch, pulley, wizer or wasi proposals. serve does not build without
# component-model-async (wasmtime-cli 48), which no test program uses.
FEATURES = ("run,compile,serve,wasi-http,cranelift,component-model,component-model-async,gc,gc-drc,"
            "parallel-compilation,pooling-allocator,backtrace,demangle,addr2line")


def shim_wasmtime_version():
    """The wasmtime version the shim pins in shim/Cargo.toml."""
    with open(os.path.join(REPO_ROOT, "shim", "Cargo.toml")) as f:
        return re.search(r'^wasmtime = \{ version = "=([0-9.]+)"', f.read(), re.M).group(1)


def ensure_wasmtime(log=print):
    """The path of the `wasmtime` binary, installed when missing."""
    version = shim_wasmtime_version()
    # Another feature list is another build (and other precompiled code).
    features = hashlib.sha256(FEATURES.encode()).hexdigest()[:12]
    root = os.path.join(TOOLS_DIR, f"wasmtime-cli-{version}-{features}")
    binary = os.path.join(root, "bin", "wasmtime")
    if os.path.exists(binary):
        return binary
    log(f"installing wasmtime-cli {version} from crates.io into {root} (about 10 minutes)")
    subprocess.run(["cargo", "install", "--quiet", "--locked", "--force", "--root", root,
                    "--target-dir", os.path.join(TOOLS_DIR, "target"), "--no-default-features",
                    "--features", FEATURES, f"wasmtime-cli@{version}"], check=True)
    return binary


def precompiled(wasmtime, wasm):
    """`wasm` compiled by `wasmtime compile`, kept beside the CLI under the
    wasm's sha256, for `wasmtime run --allow-precompiled`: a large program
    then compiles once per machine, not once per test run."""
    with open(wasm, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()
    path = os.path.join(os.path.dirname(os.path.dirname(wasmtime)), "precompiled", f"{key}.cwasm")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        subprocess.run([wasmtime, "compile", "-o", f"{path}.tmp", wasm], check=True)
        os.rename(f"{path}.tmp", path)
    return path
