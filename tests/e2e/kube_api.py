"""A stand-in for the Kubernetes API server, for the node installer's
tests: HTTPS on 127.0.0.1 with a CA of its own, a bearer token, and the
few calls the installer makes (label a node, list nodes by label, patch a
DaemonSet's pod template, get, create and update a Lease with the API's
optimistic concurrency). Python stdlib plus the openssl CLI.

    api = KubeApi(nodes=["node-1"])
    subprocess.run([...installer...], env={**api.env("node-1")})
    assert api.nodes["node-1"] == {"wasmlet.dev/installed": "true"}
    api.stop()
"""

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "wasmlet-test-token"
MERGE_PATCH = "application/merge-patch+json"


class KubeApi:
    def __init__(self, nodes=()):
        self.dir = tempfile.mkdtemp(prefix="wasmlet-kube-api-", dir="/tmp")
        self.nodes = {name: {} for name in nodes}  # name -> labels
        self.daemonsets = {}  # (namespace, name) -> pod template annotations
        self.label_patches = []  # (node, {label: value or None}) in order
        self.on_daemonset_patch = None  # called with (namespace, name)
        self.leases = {}  # (namespace, name) -> Lease
        self.lease_writes = []  # (namespace, name, holder or None) in order
        self.lock = threading.Lock()
        self._make_certificates()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._file("server.crt"), self._file("server.key"))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _file(self, name):
        return os.path.join(self.dir, name)

    def _make_certificates(self):
        """A CA, and a server certificate for IP 127.0.0.1 signed by it."""
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        with open(self._file("server.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        for argv in (
            ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=wasmlet-test-ca"],
            ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
        ):
            subprocess.run(["openssl", *argv], cwd=self.dir, check=True, capture_output=True)
        os.makedirs(self._file("serviceaccount"))
        shutil.copy(self._file("ca.crt"), self._file("serviceaccount/ca.crt"))
        with open(self._file("serviceaccount/token"), "w") as f:
            f.write(TOKEN + "\n")

    def env(self, node_name=None):
        """The environment a pod of this cluster has (plus its node's name)."""
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port),
               "WASMLET_SERVICE_ACCOUNT_DIR": self._file("serviceaccount")}
        if node_name:
            env["NODE_NAME"] = node_name
        return env

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


def merge(target, patch):
    """RFC 7386 JSON merge patch of a dict, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            merge(target.setdefault(key, {}), value)
        else:
            target[key] = value


def _handler(api):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, status, message):
            self._answer(status, {"kind": "Status", "status": "Failure", "message": message, "code": status})

        def _authorised(self):
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._fail(401, "Unauthorized")
                return False
            return True

        def _lease_key(self):
            """(namespace, name or None) of a Lease URL, else None."""
            parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
            if len(parts) in (6, 7) and parts[:4] == ["apis", "coordination.k8s.io", "v1", "namespaces"] \
                    and parts[5] == "leases":
                return parts[4], parts[6] if len(parts) == 7 else None
            return None

        def _body(self):
            return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

        def _write_lease(self, key, lease, create):
            """Creates or replaces the Lease as the API server would: a
            create of one that exists, or a replace from an older
            resourceVersion, is a Conflict."""
            with api.lock:
                current = api.leases.get(key)
                if create and current is not None:
                    return self._fail(409, f'leases.coordination.k8s.io "{key[1]}" already exists')
                if not create and current is None:
                    return self._fail(404, f'leases.coordination.k8s.io "{key[1]}" not found')
                if not create and lease["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return self._fail(409, "the object has been modified; please apply your changes to the latest version")
                lease["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1 if current else 1)
                api.leases[key] = lease
                api.lease_writes.append((*key, lease.get("spec", {}).get("holderIdentity")))
            self._answer(201 if create else 200, lease)

        def do_POST(self):
            if not self._authorised():
                return
            key = self._lease_key()
            if key is None or key[1] is not None:
                return self._fail(404, f"no route {self.path}")
            lease = self._body()
            self._write_lease((key[0], lease["metadata"]["name"]), lease, create=True)

        def do_PUT(self):
            if not self._authorised():
                return
            key = self._lease_key()
            if key is None or key[1] is None:
                return self._fail(404, f"no route {self.path}")
            self._write_lease(key, self._body(), create=False)

        def do_GET(self):
            if not self._authorised():
                return
            url = urllib.parse.urlsplit(self.path)
            lease_key = self._lease_key()
            if lease_key is not None and lease_key[1] is not None:
                with api.lock:
                    lease = api.leases.get(lease_key)
                if lease is None:
                    return self._fail(404, f'leases.coordination.k8s.io "{lease_key[1]}" not found')
                return self._answer(200, lease)
            if url.path != "/api/v1/nodes":
                return self._fail(404, f"no route {url.path}")
            selector = urllib.parse.parse_qs(url.query).get("labelSelector", [""])[0]
            with api.lock:
                items = [{"metadata": {"name": name, "labels": dict(labels)}}
                         for name, labels in api.nodes.items() if not selector or selector in labels]
            self._answer(200, {"kind": "NodeList", "items": items})

        def do_PATCH(self):
            if not self._authorised():
                return
            if self.headers.get("Content-Type") != MERGE_PATCH:
                return self._fail(415, f"expected {MERGE_PATCH}")
            patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            parts = self.path.strip("/").split("/")
            with api.lock:
                if parts[:3] == ["api", "v1", "nodes"] and len(parts) == 4:
                    if parts[3] not in api.nodes:
                        return self._fail(404, f'nodes "{parts[3]}" not found')
                    labels = patch.get("metadata", {}).get("labels", {})
                    api.label_patches.append((parts[3], labels))
                    merge(api.nodes[parts[3]], labels)
                    return self._answer(200, {"metadata": {"name": parts[3], "labels": api.nodes[parts[3]]}})
                if parts[:3] == ["apis", "apps", "v1"] and len(parts) == 7 and parts[5] == "daemonsets":
                    key = (parts[4], parts[6])
                    if key not in api.daemonsets:
                        return self._fail(404, f'daemonsets.apps "{parts[6]}" not found')
                    annotations = patch.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
                    merge(api.daemonsets[key], annotations)
                    answer = {"metadata": {"name": parts[6], "namespace": parts[4]}}
                else:
                    return self._fail(404, f"no route {self.path}")
            if api.on_daemonset_patch:
                api.on_daemonset_patch(*key)
            self._answer(200, answer)

    return Handler
