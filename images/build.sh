#!/usr/bin/env bash
# Builds the example workloads and packs them, plus a native runc image,
# a busybox image, the pod sandbox's pause image and some broken images,
# into <repo>/out/images/*.tar for `ctr images import`, and the wasm images
# of both kinds (plain, artifact) into <repo>/out/registry-images/*.tar for
# images/push.py. Works from any directory; installs the wasm
# target and busybox-static only when they are missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
OUT="$REPO/out"
IMAGES="$OUT/images"
# Images for the registry tests, pushed rather than imported (a wasi/wasm
# platform image does not import into a linux/amd64 containerd as it is).
REGISTRY_IMAGES="$OUT/registry-images"
SCRATCH="$OUT/image-files"
WORKLOADS="$HERE/workloads"
TARGET_DIR="$WORKLOADS/target"
WASM_DIR="$TARGET_DIR/wasm32-wasip1/release"
COMPONENT_DIR="$TARGET_DIR/wasm32-wasip2/release"
NATIVE_HELLO="$TARGET_DIR/x86_64-unknown-linux-gnu/release/hello"
# The JSON API, benchmarked against its native twin: both built with the
# fully optimising `serving` profile.
JSON_API_WASM="$TARGET_DIR/wasm32-wasip2/serving/json_api.wasm"
JSON_API_NATIVE="$TARGET_DIR/x86_64-unknown-linux-gnu/serving/json-api-native"
PAUSE_SRC="$HERE/pause/pause.c"
# The large module: comrak, a Markdown to HTML converter from crates.io,
# built for wasm32-wasip1 and natively with the same features (syntax
# highlighting by fancy-regex, as onig is C) so the tests can compare them.
COMRAK_VERSION=0.59.0
COMRAK_FEATURES=cli,syntect-fancy
COMRAK_ROOT="$OUT/comrak"
COMRAK_WASM="$COMRAK_ROOT/wasm32-wasip1/bin/comrak.wasm"
COMRAK_NATIVE="$COMRAK_ROOT/x86_64-unknown-linux-gnu/bin/comrak"

WASM_WORKLOADS=(hello exit-code trap sleep files memory-hog probe)
# Core modules written as text (images/wat), for what Rust does not emit:
# start functions, a shared memory. Assembled with wabt's wat2wasm.
WAT_MODULES=(start-reader start-loop shared-memory)
# WASI 0.2 components (wasm32-wasip2): commands, and wasi:http handlers
# (libraries, so cargo names their file with underscores).
COMPONENT_WORKLOADS=(tcp-hello)
HTTP_WORKLOADS=(hello-http)
BUSYBOX_APPLETS=(sh echo sleep cat true ls nc httpd rm mkdir ln tail head dd stty tr seq readlink sed)

log() { echo "build.sh: $*" >&2; }

apt_install() {
    log "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
    local target
    for target in wasm32-wasip1 wasm32-wasip2; do
        if ! rustup target list --installed | grep -qx "$target"; then
            log "adding rust target $target"
            rustup target add "$target"
        fi
    done
    # The plain `busybox` package is dynamically linked; we need the static one.
    local package
    for package in busybox-static wabt; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
            apt_install "$package"
        fi
    done
}

# Runs in a subshell so the cd stays local; cargo then uses the workloads
# workspace rather than the shim's.
build_workloads() (
    cd "$WORKLOADS"
    log "building wasm workloads"
    # Empty RUSTFLAGS: a caller's flags must not leak into the wasm build.
    RUSTFLAGS= cargo build --release --target wasm32-wasip1 --target-dir "$TARGET_DIR" --workspace --exclude json-api-native
    log "building wasm components"
    local name
    for name in "${COMPONENT_WORKLOADS[@]}" "${HTTP_WORKLOADS[@]}"; do
        RUSTFLAGS= cargo build --release --target wasm32-wasip2 --target-dir "$TARGET_DIR" -p "$name"
    done
    RUSTFLAGS= cargo build --profile serving --target wasm32-wasip2 --target-dir "$TARGET_DIR" -p json-api
    log "building static native hello and json-api-native"
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target x86_64-unknown-linux-gnu --target-dir "$TARGET_DIR" -p hello
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --profile serving --target x86_64-unknown-linux-gnu --target-dir "$TARGET_DIR" -p json-api-native
)

# `cargo install --locked` builds comrak with its own published lock file; a
# warm target dir makes a rebuild quick (--force: cargo install would
# otherwise skip a build whose RUSTFLAGS changed). The native build is static,
# so that it also runs from a scratch image (the bench's runc side).
build_comrak() {
    local target rustflags
    for target in wasm32-wasip1 x86_64-unknown-linux-gnu; do
        rustflags=
        [[ "$target" == x86_64-* ]] && rustflags='-C target-feature=+crt-static'
        log "building comrak $COMRAK_VERSION for $target"
        RUSTFLAGS="$rustflags" cargo install --quiet --locked --force "comrak@$COMRAK_VERSION" \
            --no-default-features --features "$COMRAK_FEATURES" --target "$target" \
            --root "$COMRAK_ROOT/$target" --target-dir "$TARGET_DIR/comrak"
    done
}

pack() {
    python3 "$HERE/pack.py" "$@"
}

pack_wasm_images() {
    local name
    for name in "${WASM_WORKLOADS[@]}"; do
        pack --name "wasmlet.test/$name:latest" --out "$IMAGES/$name.tar" \
            --file "/$name.wasm=$WASM_DIR/$name.wasm" --entrypoint "/$name.wasm"
    done
    for name in "${COMPONENT_WORKLOADS[@]}"; do
        pack --name "wasmlet.test/$name:latest" --out "$IMAGES/$name.tar" \
            --file "/$name.wasm=$COMPONENT_DIR/$name.wasm" --entrypoint "/$name.wasm"
    done
    for name in "${HTTP_WORKLOADS[@]}"; do
        pack --name "wasmlet.test/$name:latest" --out "$IMAGES/$name.tar" \
            --file "/$name.wasm=$COMPONENT_DIR/${name//-/_}.wasm" --entrypoint "/$name.wasm"
    done
    mkdir -p "$SCRATCH"
    for name in "${WAT_MODULES[@]}"; do
        wat2wasm --enable-threads -o "$SCRATCH/$name.wasm" "$HERE/wat/$name.wat"
        pack --name "wasmlet.test/$name:latest" --out "$IMAGES/$name.tar" \
            --file "/$name.wasm=$SCRATCH/$name.wasm" --entrypoint "/$name.wasm"
    done
    pack --name wasmlet.test/json-api:latest --out "$IMAGES/json-api.tar" \
        --file "/json-api.wasm=$JSON_API_WASM" --entrypoint /json-api.wasm
    pack --name wasmlet.test/comrak:latest --out "$IMAGES/comrak.tar" \
        --file "/comrak.wasm=$COMRAK_WASM" --entrypoint /comrak.wasm
}

# The CRI sandbox image (containerd's sandbox_image): a static C program, so
# the image holds one file and no libc.
build_pause() {
    mkdir -p "$SCRATCH"
    log "building static pause"
    gcc -static -Os -s -Wall -Wextra -Werror -o "$SCRATCH/pause" "$PAUSE_SRC"
}

pack_native_images() {
    pack --name wasmlet.test/pause:latest --out "$IMAGES/pause.tar" \
        --file "/pause=$SCRATCH/pause" --entrypoint /pause

    pack --name wasmlet.test/hello-native:latest --out "$IMAGES/hello-native.tar" \
        --file "/hello=$NATIVE_HELLO" --entrypoint /hello
    pack --name wasmlet.test/comrak-native:latest --out "$IMAGES/comrak-native.tar" \
        --file "/comrak=$COMRAK_NATIVE" --entrypoint /comrak
    pack --name wasmlet.test/json-api-native:latest --out "$IMAGES/json-api-native.tar" \
        --file "/json-api-native=$JSON_API_NATIVE" --entrypoint /json-api-native

    local links=() applet
    for applet in "${BUSYBOX_APPLETS[@]}"; do
        links+=(--link "/bin/$applet=busybox")
    done
    pack --name wasmlet.test/busybox:latest --out "$IMAGES/busybox.tar" \
        --file /bin/busybox=/bin/busybox "${links[@]}" \
        --env PATH=/bin --cmd /bin/sh
}

# Images the shim must reject cleanly: broken, non-wasm and unlinkable modules.
pack_bad_images() {
    mkdir -p "$SCRATCH"
    local hello="$WASM_DIR/hello.wasm"

    head -c "$(( $(stat -c %s "$hello") / 2 ))" "$hello" >"$SCRATCH/truncated.wasm"
    printf 'this is not wasm\n' >"$SCRATCH/notwasm.wasm"
    python3 "$HERE/make-bad-import.py" "$SCRATCH/bad-import.wasm"
    # pack.py keeps file modes; make them executable like real entrypoints.
    chmod 0755 "$SCRATCH"/*.wasm

    pack --name wasmlet.test/bad-truncated:latest --out "$IMAGES/bad-truncated.tar" \
        --file "/app.wasm=$SCRATCH/truncated.wasm" --entrypoint /app.wasm
    pack --name wasmlet.test/bad-notwasm:latest --out "$IMAGES/bad-notwasm.tar" \
        --file "/app.wasm=$SCRATCH/notwasm.wasm" --entrypoint /app.wasm
    pack --name wasmlet.test/bad-import:latest --out "$IMAGES/bad-import.tar" \
        --file "/app.wasm=$SCRATCH/bad-import.wasm" --entrypoint /app.wasm
}

wasm_image() {
    python3 "$HERE/wasm_image.py" "$@"
}

# Both kinds of wasm image, plus artifacts the shim must refuse clearly.
pack_registry_images() {
    mkdir -p "$REGISTRY_IMAGES"
    local hello="$WASM_DIR/hello.wasm" exit_code="$WASM_DIR/exit-code.wasm"
    wasm_image plain --name wasmlet.test/hello-plain:latest --out "$REGISTRY_IMAGES/hello-plain.tar" "$hello"
    wasm_image artifact --name wasmlet.test/hello-artifact:latest --out "$REGISTRY_IMAGES/hello-artifact.tar" "$hello"
    wasm_image artifact --name wasmlet.test/tcp-hello-artifact:latest --out "$REGISTRY_IMAGES/tcp-hello-artifact.tar" \
        "$COMPONENT_DIR/tcp-hello.wasm"
    wasm_image artifact --name wasmlet.test/two-layers:latest --out "$REGISTRY_IMAGES/two-layers.tar" "$hello" "$exit_code"
    # Not hello.wasm: CRI knows an image by its config's digest, which
    # would then be hello-artifact's.
    wasm_image artifact --name wasmlet.test/bad-layer-type:latest --out "$REGISTRY_IMAGES/bad-layer-type.tar" \
        --layer-type application/vnd.example.unknown "$exit_code"
}

main() {
    ensure_tools
    build_workloads
    build_comrak
    build_pause
    mkdir -p "$IMAGES"
    pack_wasm_images
    pack_native_images
    pack_bad_images
    pack_registry_images
    bash "$HERE/third_party.sh"
    log "images written to $IMAGES and $REGISTRY_IMAGES:"
    ls -1 "$IMAGES" "$REGISTRY_IMAGES" >&2
}

main "$@"
