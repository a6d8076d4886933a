#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian 12 (run as root).
# Idempotent and quiet: does nothing when everything is already there.
set -euo pipefail

PYTEST_VERSION=8.4.2
# containerd's gRPC API for tests/e2e/containerd_api.py. The stubs were
# generated in 2021 by a protoc that protobuf 4+ refuses, hence protobuf 3.
GRPC_PACKAGES=(grpcio==1.85.3 protobuf==3.20.3 containerd==1.5.3)
# Generates the CRI stubs (tests/cri/gen_stubs.py). 1.49.1 is the oldest with
# a wheel for Python 3.11; its protoc (3.21) writes code that protobuf 3.20
# runs. It declares protobuf>=4 though, which would break the containerd
# stubs above, so it is installed without its dependencies; its grpc_tools.protoc
# needs setuptools' pkg_resources, which newer setuptools drop.
GRPC_TOOLS=(grpcio-tools==1.49.1 "setuptools<81")
# Reads the Pod manifests of the CRI tests (tests/cri/pods.py).
PYYAML=PyYAML==6.0.3
# CRI streaming exec speaks WebSocket (channel.k8s.io).
WEBSOCKET_CLIENT=websocket-client==1.9.2
# The chart tests: Helm 4's Go SDK, to render and lint charts/wasmlet with
# no helm binary, the Kubernetes 1.30-1.37 schemas to validate it, and a
# CEL evaluator for its ValidatingAdmissionPolicy.
CHART_TOOLS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 cel-python==0.5.0)
# wabt (wat2wasm) assembles the test modules written as text (images/wat);
# jq and iproute2 for the test CNI plugin (tests/cri/cni/wasmlet-loopback);
# wrk loads the HTTP servers in `make bench`; musl-tools (musl-gcc) and
# binutils (strip, readelf) build and check the static release; openssl
# makes the certificates of the installer tests' stand-in API server;
# debootstrap, cpio, xz-utils and zstd make the VM lane's node (tests/vm), and
# qemu-utils' qemu-img its copy-on-write disk (a machine may have a newer one:
# then nothing is installed).
APT_PACKAGES=(containerd runc protobuf-compiler busybox-static wabt jq iproute2 wrk musl-tools binutils openssl debootstrap cpio xz-utils zstd qemu-utils)
# The workloads, and the static release (`make release`).
RUST_TARGETS=(wasm32-wasip1 wasm32-wasip2 x86_64-unknown-linux-musl)

# cargo/rustup usually live in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v rustup >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update
    quiet apt-get install -y "${missing[@]}"
fi

if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup target list --installed)
    for target in "${RUST_TARGETS[@]}"; do
        if ! grep -qx "$target" <<<"$installed"; then
            echo "deps: adding rust target $target"
            quiet rustup target add "$target"
        fi
    done
else
    echo "deps: rustup not found; cannot add ${RUST_TARGETS[*]}" >&2
    exit 1
fi

# Installs pinned Python packages unless `import MODULES` already works.
# PIP_BREAK_SYSTEM_PACKAGES: Debian marks its system python as externally
# managed; this suite's packages are pinned and test-only.
pip_install_unless() {
    local modules=$1
    shift
    if ! python3 -c "import $modules" >/dev/null 2>&1; then
        echo "deps: installing $*"
        quiet env PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --root-user-action=ignore "$@"
    fi
}

pip_install_unless pytest "pytest==$PYTEST_VERSION"
pip_install_unless "grpc, containerd.services.tasks.v1.tasks_pb2" "${GRPC_PACKAGES[@]}"
pip_install_unless grpc_tools.protoc --no-deps "${GRPC_TOOLS[@]}"
pip_install_unless yaml "$PYYAML"
pip_install_unless websocket "$WEBSOCKET_CLIENT"
pip_install_unless "helm_python, kubernetes_validate, celpy" "${CHART_TOOLS[@]}"
