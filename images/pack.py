#!/usr/bin/env python3
"""Pack files into a single-layer OCI image archive for `ctr images import`.

No Docker or registry needed. The output is deterministic: fixed mtimes,
sorted entries, uid/gid 0, so the same inputs give the same digests.

Example:
  pack.py --name wasmlet.test/hello:latest \
      --file /hello.wasm=target/wasm32-wasip1/release/hello.wasm \
      --entrypoint /hello.wasm --out out/images/hello.tar

--file DST=SRC, --link DST=TARGET, --device DST=c:MAJOR:MINOR (or b: for a
block device), --env K=V, --entrypoint ARG and --cmd ARG may all be
repeated; entrypoint and cmd args are kept in order.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import posixpath
import stat
import sys
import tarfile

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# Every tar entry gets this mtime so output does not depend on build time.
FIXED_MTIME = 0


def split_pair(text, what):
    """Split 'A=B' into (A, B), failing with a readable message."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        sys.exit(f"pack.py: {what} must look like A=B, got {text!r}")
    return key, value


def image_path(dst):
    """Turn an absolute in-image path into a tar member name ('bin/sh')."""
    norm = posixpath.normpath("/" + dst).lstrip("/")
    if not norm or norm.startswith(".."):
        sys.exit(f"pack.py: bad path in image: {dst!r}")
    return norm


def new_member(name, kind, mode):
    """A tar header owned by root with the fixed mtime."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def parent_dirs(names):
    """All parent directories of the given member names, without the root."""
    dirs = set()
    for name in names:
        parent = posixpath.dirname(name)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return dirs


def build_layer_tar(files, links, devices=None):
    """Uncompressed layer tar. files: {name: src path}, links: {name: target},
    devices: {name: (tarfile.CHRTYPE or BLKTYPE, major, minor)}."""
    devices = devices or {}
    clash = (set(files) & set(links)) | (set(devices) & (set(files) | set(links)))
    if clash:
        sys.exit(f"pack.py: more than one entry for {sorted(clash)}")

    entries = {}
    for name in parent_dirs(list(files) + list(links) + list(devices)):
        entries[name] = (new_member(name, tarfile.DIRTYPE, 0o755), None)
    for name, src in files.items():
        with open(src, "rb") as f:
            data = f.read()
        # Keep the source's permission bits (executables stay executable).
        member = new_member(name, tarfile.REGTYPE, stat.S_IMODE(os.stat(src).st_mode))
        member.size = len(data)
        entries[name] = (member, data)
    for name, target in links.items():
        member = new_member(name, tarfile.SYMTYPE, 0o777)
        member.linkname = target
        entries[name] = (member, None)
    for name, (kind, major, minor) in devices.items():
        member = new_member(name, kind, 0o666)
        member.devmajor, member.devminor = major, minor
        entries[name] = (member, None)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Sorted names put each directory before its contents.
        for name in sorted(entries):
            member, data = entries[name]
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def to_json(obj):
    """Canonical JSON bytes, so digests are stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type, data):
    return {"mediaType": media_type, "digest": digest(data), "size": len(data)}


def image_config(args, diff_id):
    """The OCI image config JSON; only set fields that were asked for."""
    config = {}
    if args.entrypoint:
        config["Entrypoint"] = args.entrypoint
    if args.cmd:
        config["Cmd"] = args.cmd
    if args.env:
        config["Env"] = args.env
    return {
        "architecture": args.arch,
        "os": args.os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }


def write_archive(out, blobs, index):
    """Write the OCI image layout (oci-layout, index.json, blobs) as a tar."""
    entries = {
        "oci-layout": to_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": to_json(index),
    }
    for data in blobs:
        entries["blobs/sha256/" + digest(data).split(":", 1)[1]] = data

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            tar.addfile(new_member(name, tarfile.DIRTYPE, 0o755))
        for name in sorted(entries):
            member = new_member(name, tarfile.REGTYPE, 0o644)
            member.size = len(entries[name])
            tar.addfile(member, io.BytesIO(entries[name]))
    # Rename last so a failed run never leaves a half-written archive.
    os.replace(tmp, out)


def device_numbers(text):
    """'c:1:3' or 'b:254:0' as (tar type, major, minor)."""
    kind, _, numbers = text.partition(":")
    major, _, minor = numbers.partition(":")
    types = {"c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE}
    if kind not in types or not major.isdigit() or not minor.isdigit():
        sys.exit(f"pack.py: --device must look like DST=c:MAJOR:MINOR or DST=b:MAJOR:MINOR, got {text!r}")
    return types[kind], int(major), int(minor)


def ref_tag(name):
    """The tag of a reference ('latest' in 'example.com:5000/a/b:latest')."""
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def pack(args):
    files = {image_path(d): s for d, s in (split_pair(f, "--file") for f in args.file)}
    links = {image_path(d): t for d, t in (split_pair(l, "--link") for l in args.link)}
    devices = {image_path(d): device_numbers(n) for d, n in (split_pair(v, "--device") for v in args.device)}
    for pair in args.env:
        split_pair(pair, "--env")

    layer_tar = build_layer_tar(files, links, devices)
    # mtime=0 keeps the gzip header free of the current time.
    layer = gzip.compress(layer_tar, compresslevel=9, mtime=0)
    config = to_json(image_config(args, digest(layer_tar)))
    manifest = to_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, config),
        "layers": [descriptor(MEDIA_LAYER, layer)],
    })

    entry = descriptor(MEDIA_MANIFEST, manifest)
    entry["platform"] = {"architecture": args.arch, "os": args.os}
    entry["annotations"] = {
        "io.containerd.image.name": args.name,
        "org.opencontainers.image.ref.name": ref_tag(args.name),
    }
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]}
    write_archive(args.out, [config, manifest, layer], index)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Pack files into an OCI image archive.")
    p.add_argument("--name", required=True, help="full reference, e.g. wasmlet.test/hello:latest")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--file", action="append", default=[], metavar="DST=SRC",
                   help="copy host file SRC to DST in the image (mode kept)")
    p.add_argument("--link", action="append", default=[], metavar="DST=TARGET",
                   help="symlink DST -> TARGET in the image")
    p.add_argument("--device", action="append", default=[], metavar="DST=c|b:MAJOR:MINOR",
                   help="a character or block device node DST in the image")
    p.add_argument("--entrypoint", action="append", default=[], metavar="ARG",
                   help="one Entrypoint element (repeat for more)")
    p.add_argument("--cmd", action="append", default=[], metavar="ARG",
                   help="one Cmd element (repeat for more)")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--os", default="linux")
    args = p.parse_args(argv)
    if not args.file and not args.link and not args.device:
        p.error("nothing to pack: give at least one --file, --link or --device")
    return args


if __name__ == "__main__":
    pack(parse_args(sys.argv[1:]))
