#!/usr/bin/env bash
# Keep cargo's build output across clones: the repo's target/ and the
# workloads' target/ become links into /var/cache/wasmlet/cargo/rustc-VERSION,
# so a fresh clone on a warm machine rebuilds only the workspace's own crates
# (wasmtime alone takes 12-17 minutes from scratch on 2 cores). Keyed by the
# compiler's version: another rustc never reads this one's artifacts.
# A clone whose target/ is a real directory keeps it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v rustc >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi
version=$(rustc --version | awk '{ print $2 }')
CACHE=${WASMLET_BUILD_CACHE:-/var/cache/wasmlet/cargo/rustc-$version}

link_target() {
    local link=$1 dir=$2
    if [[ -L "$link" || -e "$link" ]]; then
        return 0
    fi
    mkdir -p "$dir"
    ln -s "$dir" "$link"
}

link_target "$REPO/target" "$CACHE/target"
link_target "$REPO/images/workloads/target" "$CACHE/workloads-target"
