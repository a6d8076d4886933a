#!/usr/bin/env bash
# Builds wasmlet's release into <repo>/out/release:
#   containerd-shim-wasmlet-v1, wasmlet-node-installer
#       static (musl), stripped, stamped with the version and commit;
#   wasmlet-installer.tar   the installer image (images/installer/Containerfile)
#   wasmlet-hello.tar       the hello-world wasm image the chart's NOTES use;
#   SHA256SUMS              of all four.
# Needs the musl target and musl-gcc: `make release` installs them first
# (tests/deps.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
OUT="$REPO/out/release"
TARGET=x86_64-unknown-linux-musl
BINARIES=(containerd-shim-wasmlet-v1 wasmlet-node-installer)
WORKLOADS="$HERE/workloads"

log() { echo "release.sh: $*" >&2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit-dirty"
fi
log "building $version (commit $commit) for $TARGET"
(cd "$REPO" && WASMLET_COMMIT="$commit" cargo build --release --locked --target "$TARGET" \
    -p wasmlet-shim -p wasmlet-node-installer)

mkdir -p "$OUT"
for binary in "${BINARIES[@]}"; do
    strip -o "$OUT/$binary" "$REPO/target/$TARGET/release/$binary"
done

log "building the hello example"
(cd "$WORKLOADS" && cargo build --release --locked --target wasm32-wasip1 -p hello)

pack() { python3 "$HERE/pack.py" "$@"; }
pack --name "ghcr.io/wasmlet/wasmlet-installer:$version" --out "$OUT/wasmlet-installer.tar" \
    --file "/wasmlet/containerd-shim-wasmlet-v1=$OUT/containerd-shim-wasmlet-v1" \
    --file "/wasmlet/wasmlet-node-installer=$OUT/wasmlet-node-installer" \
    --entrypoint /wasmlet/wasmlet-node-installer
pack --name "ghcr.io/wasmlet/wasmlet-hello:$version" --out "$OUT/wasmlet-hello.tar" \
    --file "/hello.wasm=$WORKLOADS/target/wasm32-wasip1/release/hello.wasm" \
    --entrypoint /hello.wasm

(cd "$OUT" && sha256sum "${BINARIES[@]}" wasmlet-installer.tar wasmlet-hello.tar > SHA256SUMS)
log "wrote $OUT:"
cat "$OUT/SHA256SUMS" >&2
