#!/usr/bin/env python3
"""Build OCI image archives of a .wasm file in the two shapes wasm images
come in, without Docker, so wasmlet can be tested against both:

  plain     What `docker buildx build --platform wasi/wasm` makes of
            `FROM scratch` + `COPY app.wasm /` + `ENTRYPOINT ["/app.wasm"]`:
            an ordinary image with one tar+gzip layer holding /<name>.wasm,
            config os "wasi", architecture "wasm", and the index entry's
            platform saying the same.
  artifact  The Wasm OCI artifact (CNCF TAG Runtime wasm WG layout, what
            `wkg oci push` writes): config media type
            application/vnd.wasm.config.v0+json, one layer of media type
            application/wasm holding the raw .wasm bytes, no filesystem.

The archives are OCI image layouts in a tar (oci-layout, index.json,
blobs/sha256/...) written by pack.py's helpers, so they are deterministic
(fixed times, sorted JSON) and `ctr images import` takes them: index.json
names the image. images/push.py pushes them to a registry.

  wasm_image.py plain --name wasmlet.test/hello-plain:latest \\
      --out out/images/hello-plain.tar \\
      images/workloads/target/wasm32-wasip1/release/hello.wasm
  wasm_image.py artifact --name wasmlet.test/hello-artifact:latest \\
      --out out/images/hello-artifact.tar \\
      images/workloads/target/wasm32-wasip1/release/hello.wasm [more.wasm...]
"""

import argparse
import gzip
import os
import posixpath
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # pack.py lives next to this file
    sys.path.insert(0, HERE)
import pack  # noqa: E402  (the archive helpers, shared with the other images)

WASM_MAGIC = b"\0asm"
# Bytes 4..8 of the preamble: version 1 of a core module, or version 0x0d
# layer 1 of a component.
CORE_MODULE_VERSION = b"\x01\x00\x00\x00"
COMPONENT_VERSION = b"\x0d\x00\x01\x00"

# The artifact's media types and config values (wasm OCI artifact layout v0).
MEDIA_WASM_CONFIG = "application/vnd.wasm.config.v0+json"
MEDIA_WASM_LAYER = "application/wasm"
WASM_ARCH = "wasm"
OS_FOR_KIND = {"module": "wasip1", "component": "wasip2"}

# What buildx writes for --platform wasi/wasm (no variant).
PLAIN_PLATFORM = {"architecture": "wasm", "os": "wasi"}
# BuildKit gives a FROM scratch image this PATH (any non-Windows os) and
# WorkingDir "/".
BUILDKIT_DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Creation time of every image: the epoch, as a reproducible build with
# SOURCE_DATE_EPOCH=0 would stamp it.
FIXED_CREATED = "1970-01-01T00:00:00Z"
ANNOTATION_TITLE = "org.opencontainers.image.title"


class WasmImageError(Exception):
    """A .wasm file that cannot be packed; the message names the file."""


def wasm_kind(data, source):
    """'module' or 'component', from the 8-byte preamble of the binary."""
    if data[:4] != WASM_MAGIC:
        raise WasmImageError(f"{source}: not a wasm binary (no \\0asm magic)")
    version = data[4:8]
    if version == CORE_MODULE_VERSION:
        return "module"
    if version == COMPONENT_VERSION:
        return "component"
    raise WasmImageError(f"{source}: unknown wasm version/layer bytes {version.hex()}")


# ---- images ----------------------------------------------------------------

def read_wasm(path):
    """The bytes of a .wasm file, with its kind checked."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WasmImageError(f"cannot read {path}: {e.strerror}") from e
    return data, wasm_kind(data, path)


def index_for(manifest, media_type, name, platform=None):
    """The layout's index.json: one entry naming the image for ctr import."""
    entry = pack.descriptor(media_type, manifest)
    if platform:
        entry["platform"] = platform
    entry["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": pack.ref_tag(name),
    }
    return {"schemaVersion": 2, "mediaType": pack.MEDIA_INDEX, "manifests": [entry]}


def plain_image(wasm_path, name, in_image=None):
    """(blobs, index) of the buildx-style image: one layer holding the
    module at in_image (default /<basename>), entrypoint that path."""
    read_wasm(wasm_path)  # only to refuse a file that is not wasm
    in_image = in_image or "/" + os.path.basename(wasm_path)
    if not posixpath.isabs(in_image):
        raise WasmImageError(f"path in image must be absolute, got {in_image!r}")
    layer_tar = pack.build_layer_tar({pack.image_path(in_image): wasm_path}, {})
    layer = gzip.compress(layer_tar, compresslevel=9, mtime=0)
    history = [
        {"created": FIXED_CREATED, "created_by": f"COPY {posixpath.basename(in_image)} / # buildkit",
         "comment": "buildkit.dockerfile.v0"},
        {"created": FIXED_CREATED, "created_by": f'ENTRYPOINT ["{in_image}"]',
         "comment": "buildkit.dockerfile.v0", "empty_layer": True},
    ]
    config = pack.to_json({
        **PLAIN_PLATFORM,
        "created": FIXED_CREATED,
        "config": {"Env": [BUILDKIT_DEFAULT_PATH], "Entrypoint": [in_image], "WorkingDir": "/"},
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": [pack.digest(layer_tar)]},
    })
    manifest = pack.to_json({
        "schemaVersion": 2,
        "mediaType": pack.MEDIA_MANIFEST,
        "config": pack.descriptor(pack.MEDIA_CONFIG, config),
        "layers": [pack.descriptor(pack.MEDIA_LAYER, layer)],
    })
    return [config, manifest, layer], index_for(manifest, pack.MEDIA_MANIFEST, name, PLAIN_PLATFORM)


def artifact_image(wasm_paths, name, author=None, layer_type=MEDIA_WASM_LAYER):
    """(blobs, index) of the wasm OCI artifact: config + each raw .wasm as a
    layer, shaped as `wkg oci push` pushes one (layer titled with the file
    name, no artifactType, no manifest annotations). The os follows the
    first file. layer_type other than application/wasm makes test images
    a runtime must refuse."""
    wasms = [read_wasm(path) for path in wasm_paths]
    kind = wasms[0][1]
    # The optional `component` field (a component's world) is left out:
    # no runtime needs it to run the layer.
    config = {
        "created": FIXED_CREATED,
        "architecture": WASM_ARCH,
        "os": OS_FOR_KIND[kind],
        "layerDigests": [pack.digest(data) for data, _ in wasms],
    }
    if author:
        config["author"] = author
    config = pack.to_json(config)
    layers = []
    for path, (data, _) in zip(wasm_paths, wasms):
        layer = pack.descriptor(layer_type, data)
        layer["annotations"] = {ANNOTATION_TITLE: os.path.basename(path)}
        layers.append(layer)
    manifest = pack.to_json({
        "schemaVersion": 2,
        "mediaType": pack.MEDIA_MANIFEST,
        "config": pack.descriptor(MEDIA_WASM_CONFIG, config),
        "layers": layers,
    })
    # wkg pushes a bare manifest: no index, so no platform on any entry.
    blobs = [config, manifest] + [data for data, _ in wasms]
    return blobs, index_for(manifest, pack.MEDIA_MANIFEST, name)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Pack .wasm files as an OCI image archive.")
    sub = p.add_subparsers(dest="kind", required=True)
    plain = sub.add_parser("plain", help="buildx-style image (wasi/wasm, tar+gzip layer)")
    artifact = sub.add_parser("artifact", help="wasm OCI artifact (application/wasm layers)")
    plain.add_argument("wasm", help=".wasm file (core module or component)")
    plain.add_argument("--path", dest="in_image", metavar="PATH",
                       help="where the module goes in the image (default /<file name>)")
    artifact.add_argument("wasm", nargs="+", help=".wasm files, one layer each")
    artifact.add_argument("--author", help="config's author (default none)")
    artifact.add_argument("--layer-type", default=MEDIA_WASM_LAYER,
                          help=f"the layers' media type (default {MEDIA_WASM_LAYER})")
    for s in (plain, artifact):
        s.add_argument("--name", required=True, help="full reference, e.g. wasmlet.test/hello:latest")
        s.add_argument("--out", required=True, help="archive to write")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        if args.kind == "plain":
            blobs, index = plain_image(args.wasm, args.name, args.in_image)
        else:
            blobs, index = artifact_image(args.wasm, args.name, args.author, args.layer_type)
    except WasmImageError as e:
        sys.exit(f"wasm_image.py: {e}")
    pack.write_archive(args.out, blobs, index)


if __name__ == "__main__":
    main(sys.argv[1:])
