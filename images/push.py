#!/usr/bin/env python3
"""Push an OCI image archive (as pack.py and wasm_image.py write them) to a
registry over plain HTTP with the OCI distribution API, so that tests can
pull images the way a node does, from a local registry and without Docker
or skopeo.

  push.py ARCHIVE 127.0.0.1:5000/wasmlet/hello:latest [--index MODE]

The archive's index.json must have one entry: the image. What the tag
points to is chosen with --index:

  none         (default) the entry's manifest itself, a bare manifest as
               `wkg oci push` or `docker push` of one platform leaves it
  platform     a new image index holding the entry with its platform, as a
               multi-platform build pushes it
  no-platform  the same index with the entry's platform left out

Blobs the registry already has are not sent again (HEAD first). Each
failure names the request, the HTTP status and the registry's answer.
"""

import argparse
import http.client
import json
import os
import sys
import tarfile
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # pack.py lives next to this file
    sys.path.insert(0, HERE)
import pack  # noqa: E402  (canonical JSON and digests, as the archives use them)

INDEX_TYPES = (pack.MEDIA_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
INDEX_MODES = ("none", "platform", "no-platform")


class PushError(Exception):
    """A push that failed; the message says what and why."""


def parse_reference(ref):
    """('127.0.0.1:5000', 'wasmlet/hello', 'latest') from a full reference.
    The registry part is required: there is no default registry here."""
    host, sep, rest = ref.partition("/")
    if not sep or not rest or not ("." in host or ":" in host or host == "localhost"):
        raise PushError(f"reference {ref!r} must start with a registry host, e.g. 127.0.0.1:5000/repo:tag")
    if "@" in rest:
        raise PushError(f"reference {ref!r}: push by tag, not by digest")
    last = rest.rsplit("/", 1)[-1]
    repo, tag = (rest.rsplit(":", 1) if ":" in last else (rest, "latest"))
    return host, repo, tag


def read_archive(path):
    """(index.json as a dict, {digest: bytes}) of an OCI layout tar."""
    blobs, index = {}, None
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                name = member.name[2:] if member.name.startswith("./") else member.name
                data = tar.extractfile(member).read()
                if name == "index.json":
                    index = json.loads(data)
                elif name.startswith("blobs/sha256/"):
                    blobs["sha256:" + member.name.rsplit("/", 1)[1]] = data
    except (OSError, tarfile.TarError, ValueError) as e:
        raise PushError(f"cannot read OCI archive {path}: {e}") from e
    if index is None:
        raise PushError(f"{path} has no index.json: not an OCI image layout archive")
    return index, blobs


class RegistryClient:
    """One repository of a plain-HTTP registry, spoken to with http.client."""

    def __init__(self, host, repo):
        self.host, self.repo = host, repo
        self.conn = http.client.HTTPConnection(host, timeout=60)

    def close(self):
        self.conn.close()

    def request(self, method, path, body=None, headers=None, ok=(200,)):
        """Send one request; returns the response (body read) or raises
        PushError with the status and body if the status is not in ok."""
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            response.data = response.read()
        except OSError as e:
            self.conn.close()  # http.client reconnects on the next request
            raise PushError(f"{method} http://{self.host}{path}: {e}") from e
        if response.status not in ok:
            text = response.data.decode(errors="replace").strip()
            raise PushError(f"{method} http://{self.host}{path}: HTTP {response.status} "
                            f"{response.reason}: {text or '(empty body)'}")
        return response

    def has_blob(self, digest):
        res = self.request("HEAD", f"/v2/{self.repo}/blobs/{digest}", ok=(200, 404))
        return res.status == 200

    def put_blob(self, digest, data):
        """Monolithic upload: POST opens a session, PUT with ?digest= ends it."""
        if self.has_blob(digest):
            return
        res = self.request("POST", f"/v2/{self.repo}/blobs/uploads/", ok=(202,))
        location = res.getheader("Location")
        if not location:
            raise PushError(f"POST /v2/{self.repo}/blobs/uploads/ answered 202 without a Location")
        url = urllib.parse.urlsplit(urllib.parse.urljoin(f"http://{self.host}/", location))
        query = "&".join(q for q in (url.query, "digest=" + urllib.parse.quote(digest)) if q)
        self.request("PUT", f"{url.path}?{query}", body=data, ok=(201,),
                     headers={"Content-Type": "application/octet-stream"})

    def put_manifest(self, reference, media_type, data):
        self.request("PUT", f"/v2/{self.repo}/manifests/{reference}", body=data, ok=(201,),
                     headers={"Content-Type": media_type})


def blob(blobs, digest, archive):
    """The bytes of a blob the archive must hold."""
    if digest not in blobs:
        raise PushError(f"{archive}: blob {digest} is referenced but not in the archive")
    return blobs[digest]


def push_tree(registry, descriptor, blobs, archive, reference=None):
    """Push what a descriptor points to, children first: an index's
    manifests, a manifest's config and layers. The manifest goes under
    reference (a tag), or under its digest."""
    data = blob(blobs, descriptor["digest"], archive)
    document = json.loads(data)
    if descriptor["mediaType"] in INDEX_TYPES:
        for child in document["manifests"]:
            push_tree(registry, child, blobs, archive)
    else:
        for child in [document["config"]] + document.get("layers", []):
            registry.put_blob(child["digest"], blob(blobs, child["digest"], archive))
    registry.put_manifest(reference or descriptor["digest"], descriptor["mediaType"], data)


def push_archive(archive, ref, index="none"):
    """Push the image of an OCI archive as ref; returns the digest the tag
    points to. index: one of INDEX_MODES (see the module docstring)."""
    if index not in INDEX_MODES:
        raise PushError(f"index mode must be one of {', '.join(INDEX_MODES)}, not {index!r}")
    host, repo, tag = parse_reference(ref)
    layout, blobs = read_archive(archive)
    entries = layout.get("manifests", [])
    if len(entries) != 1:
        raise PushError(f"{archive}: index.json has {len(entries)} images, push.py takes one")
    (entry,) = entries
    if index == "platform" and "platform" not in entry:
        raise PushError(f"{archive}: the image entry has no platform to put in an index")
    registry = RegistryClient(host, repo)
    try:
        if index == "none":
            push_tree(registry, entry, blobs, archive, reference=tag)
            return entry["digest"]
        push_tree(registry, entry, blobs, archive)
        child = {k: entry[k] for k in ("mediaType", "digest", "size")}
        if index == "platform":
            child["platform"] = entry["platform"]
        data = pack.to_json({"schemaVersion": 2, "mediaType": pack.MEDIA_INDEX, "manifests": [child]})
        registry.put_manifest(tag, pack.MEDIA_INDEX, data)
        return pack.digest(data)
    finally:
        registry.close()


def main(argv):
    p = argparse.ArgumentParser(description="Push an OCI image archive to a registry over plain HTTP.")
    p.add_argument("archive", help="OCI layout tar (pack.py, wasm_image.py)")
    p.add_argument("reference", help="REGISTRY/REPO[:TAG], e.g. 127.0.0.1:5000/wasmlet/hello:latest")
    p.add_argument("--index", choices=INDEX_MODES, default="none",
                   help="what the tag points to (default: the bare manifest)")
    args = p.parse_args(argv)
    try:
        print(push_archive(args.archive, args.reference, args.index))
    except PushError as e:
        sys.exit(f"push.py: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
