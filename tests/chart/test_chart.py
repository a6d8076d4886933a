"""charts/wasmlet rendered and linted offline (Helm 4's Go SDK through
helm-python-sdk, no helm binary), every manifest validated strictly against
the Kubernetes schemas of 1.25 to 1.37 (kubernetes-validate), for the
default values and some variants; and what the manifests say checked
against what the installer reads."""

import json
import os
import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(REPO, "charts", "wasmlet")
INSTALLER_MAIN = os.path.join(REPO, "installer", "src", "main.rs")
KUBERNETES_VERSIONS = [f"1.{minor}" for minor in range(25, 38)]
NAMESPACE = "wasmlet-system"

VARIANTS = {
    "defaults": ("wasmlet", {}),
    "everything-set": ("edge", {
        "image": {"repository": "registry.example/wasmlet/wasmlet-installer", "tag": "0.1.0-rc1",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry-login"}],
        "nodeSelector": {"kubernetes.io/os": "linux", "node-role.example/wasm": "yes"},
        "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-node-critical",
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
        "installer": {"distribution": "k3s", "restartTimeoutSeconds": 300, "logLevel": "debug",
                      "nodeLabel": "example.com/wasm-ready",
                      "runtimeOptions": {"SystemdCgroup": False, "CacheMaxBytes": 1073741824}},
        "runtimeClass": {"name": "wasm", "overhead": {"podFixed": {"cpu": "10m", "memory": "8Mi"}}},
        "uninstall": {"timeoutSeconds": 600},
    }),
    "bring-your-own": ("wasmlet-prod", {
        "runtimeClass": {"create": False},
        "serviceAccount": {"create": False, "name": "node-admin"},
        "updateStrategy": {"type": "OnDelete"},
    }),
}


def render(release, values):
    """{template path: [documents]} and the NOTES text."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    notes = next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    docs = {path: [d for d in yaml.safe_load_all(text) if d]
            for path, text in out.items() if not path.endswith("NOTES.txt")}
    return docs, notes


def by_kind(docs):
    found = {}
    for documents in docs.values():
        for doc in documents:
            found.setdefault(doc["kind"], []).append(doc)
    return found


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    release, values = VARIANTS[request.param]
    docs, notes = render(release, values)
    return request.param, release, values, by_kind(docs), notes


def test_lint_passes_strictly(variant):
    name, _, values, _, _ = variant
    result = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert not result["errors"], result
    assert not [m for m in result["messages"] if m["severity"] >= 2], result["messages"]


def test_every_manifest_validates_against_every_kubernetes_version(variant):
    _, _, _, kinds, notes = variant
    documents = [doc for docs in kinds.values() for doc in docs] + [notes_pod(notes)]
    failures = []
    for doc in documents:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{version} {doc['kind']} {'.'.join(map(str, e.path))}: {e.message}")
    assert failures == []


def test_a_broken_manifest_fails_validation():
    """The check above can fail: an unknown field is refused."""
    docs, _ = render("wasmlet", {})
    daemonset = by_kind(docs)["DaemonSet"][0]
    daemonset["spec"]["replicas"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, "1.30", strict=True)


def test_the_daemonset_runs_the_installer_on_every_chosen_node(variant):
    _, release, values, kinds, _ = variant
    (daemonset,) = kinds["DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    installer = values.get("installer", {})
    assert pod["hostPID"] is True
    assert container["securityContext"] == {"privileged": True}
    assert container["volumeMounts"] == [{"name": "host", "mountPath": "/host"}]
    assert pod["volumes"] == [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}]
    assert container["args"] == ["$(WASMLET_MODE)", "--stay"]
    assert daemonset["spec"]["template"]["metadata"]["annotations"] == {"wasmlet.dev/mode": "install"}
    assert env["WASMLET_MODE"] == {"fieldRef": {"fieldPath": "metadata.annotations['wasmlet.dev/mode']"}}
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert json.loads(env["WASMLET_RUNTIME_OPTIONS"]) == installer.get("runtimeOptions", {})
    assert env["WASMLET_DISTRIBUTION"] == installer.get("distribution", "auto")
    assert env["WASMLET_NODE_LABEL"] == installer.get("nodeLabel", "wasmlet.dev/installed")
    assert daemonset["spec"]["updateStrategy"] == values.get(
        "updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    assert pod["nodeSelector"] == values.get("nodeSelector", {"kubernetes.io/os": "linux"})
    assert pod.get("tolerations", []) == values.get("tolerations", [])
    image = values.get("image", {})
    assert container["image"] == f"{image.get('repository', 'ghcr.io/wasmlet/wasmlet-installer')}:{image.get('tag', '0.1.0')}"
    assert container["resources"] == values.get("resources", {
        "requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}})


def test_the_installer_reads_every_variable_the_chart_sets(variant):
    """Names the chart passes are names the installer knows (or expands)."""
    with open(INSTALLER_MAIN) as f:
        known = set(re.findall(r'env = "([A-Z_]+)"', f.read()))
    kinds = variant[3]
    pods = [kinds["DaemonSet"][0]["spec"]["template"]["spec"], kinds["Job"][0]["spec"]["template"]["spec"]]
    passed = {e["name"] for pod in pods for c in pod["containers"] for e in c["env"]}
    # WASMLET_MODE becomes the command through args; RUST_LOG is tracing's.
    assert passed - known == {"WASMLET_MODE", "RUST_LOG"}


def test_the_runtime_class_schedules_onto_installed_nodes(variant):
    _, _, values, kinds, _ = variant
    if not values.get("runtimeClass", {}).get("create", True):
        assert "RuntimeClass" not in kinds
        return
    (runtime_class,) = kinds["RuntimeClass"]
    label = values.get("installer", {}).get("nodeLabel", "wasmlet.dev/installed")
    assert runtime_class["handler"] == "wasmlet"
    assert runtime_class["metadata"]["name"] == values.get("runtimeClass", {}).get("name", "wasmlet")
    assert runtime_class["scheduling"] == {"nodeSelector": {label: "true"}}
    overhead = values.get("runtimeClass", {}).get("overhead")
    assert runtime_class.get("overhead") == overhead


def test_rbac_and_the_uninstall_hook(variant):
    _, release, values, kinds, _ = variant
    (daemonset,) = kinds["DaemonSet"]
    name = daemonset["metadata"]["name"]
    account = values.get("serviceAccount", {}).get("name") or name
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert ("ServiceAccount" in kinds) == values.get("serviceAccount", {}).get("create", True)
    (cluster_role,) = kinds["ClusterRole"]
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]}]
    (role,) = kinds["Role"]
    assert role["rules"][0]["resourceNames"] == [name]
    for binding in kinds["ClusterRoleBinding"] + kinds["RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    (job,) = kinds["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    timeout = values.get("uninstall", {}).get("timeoutSeconds", 300)
    assert container["args"] == ["cleanup", f"--daemonset={name}", f"--timeout={timeout}"]
    assert container["securityContext"]["runAsNonRoot"] is True


def notes_pod(notes):
    """The Pod NOTES.txt tells the user to apply."""
    match = re.search(r"<<'POD' \| kubectl apply -f -\n(.*?)\nPOD\n", notes, re.S)
    assert match, notes
    return yaml.safe_load(match.group(1))


def test_notes_give_a_first_wasm_pod(variant):
    _, release, values, _, notes = variant
    pod = notes_pod(notes)
    assert pod["spec"]["runtimeClassName"] == values.get("runtimeClass", {}).get("name", "wasmlet")
    assert pod["spec"]["containers"][0]["image"].endswith("/wasmlet-hello:" + values.get("image", {}).get("tag", "0.1.0"))
    assert f"helm uninstall {release} -n {NAMESPACE}" in notes


# Values handed to Kubernetes or the installer as they are: one entry each.
WHOLE_VALUES = {"nodeSelector", "resources", "updateStrategy", "affinity",
                "installer.runtimeOptions", "runtimeClass.overhead"}


def leaf_keys(values, prefix=""):
    """Dotted names of every value the README must list."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in WHOLE_VALUES:
            yield from leaf_keys(value, name + ".")
        else:
            yield name


def test_the_readme_lists_every_value():
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(CHART, "README.md")) as f:
        readme = f.read()
    missing = [key for key in leaf_keys(values) if f"`{key}`" not in readme]
    assert missing == []
