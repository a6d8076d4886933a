"""charts/wasmlet rendered and linted offline (Helm 4's Go SDK through
helm-python-sdk, no helm binary), every manifest validated strictly against
the Kubernetes schemas of 1.30 to 1.37 (kubernetes-validate), for the
default values and some variants; what the manifests say checked against
what the installer reads; and the node policy's CEL evaluated (cel-python)
against the requests an installer, or root on its node, could make."""

import copy
import json
import os
import re

import celpy
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(REPO, "charts", "wasmlet")
INSTALLER_MAIN = os.path.join(REPO, "installer", "src", "main.rs")
# From 1.30: ValidatingAdmissionPolicy (v1) and node-bound service account tokens.
KUBERNETES_VERSIONS = [f"1.{minor}" for minor in range(30, 38)]
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
        "installer": {"distribution": "k3s", "restartTimeoutSeconds": 300, "logLevel": "debug", "maxConcurrentRestarts": 3,
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
    assert env["WASMLET_MAX_CONCURRENT_RESTARTS"] == str(installer.get("maxConcurrentRestarts", 1))
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert daemonset["spec"]["updateStrategy"] == values.get(
        "updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    assert pod["nodeSelector"] == values.get("nodeSelector", {"kubernetes.io/os": "linux"})
    assert pod.get("tolerations", []) == values.get("tolerations", [])
    # The user's affinity, each required term also asking for the image's architectures.
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    user_terms = (values.get("affinity", {}).get("nodeAffinity", {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [{}]))
    architectures = values.get("image", {}).get("architectures", ["amd64"])
    assert terms == [{"matchExpressions": term.get("matchExpressions", []) + [
        {"key": "kubernetes.io/arch", "operator": "In", "values": architectures}]} for term in user_terms]
    image = values.get("image", {})
    assert container["image"] == f"{image.get('repository', 'ghcr.io/wasmlet/wasmlet-installer')}:{image.get('tag', '0.1.0')}"
    assert container["resources"] == values.get("resources", {
        "requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}})


def schedulable(pod, labels):
    """Whether the pod's nodeSelector and required node affinity take a node
    with these labels (In, NotIn and Exists, as the chart uses them)."""
    if any(labels.get(key) != value for key, value in pod.get("nodeSelector", {}).items()):
        return False
    required = pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    holds = {"In": lambda e: labels.get(e["key"]) in e["values"], "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
             "Exists": lambda e: e["key"] in labels}
    return any(all(holds[e["operator"]](e) for e in term.get("matchExpressions", [])) for term in required["nodeSelectorTerms"])


@pytest.mark.parametrize("values", [{}, {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["edge"]}]},
                          {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["core"]}]}]}}}}])
def test_the_installer_runs_only_on_nodes_of_an_architecture_it_has_a_build_for(values):
    docs, _ = render("wasmlet", values)
    pod = by_kind(docs)["DaemonSet"][0]["spec"]["template"]["spec"]
    for pool in ("edge", "core"):
        amd64 = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "pool": pool}
        assert schedulable(pod, amd64), (pool, pod["affinity"])
        assert not schedulable(pod, dict(amd64, **{"kubernetes.io/arch": "arm64"})), (pool, pod["affinity"])
    if values:
        assert not schedulable(pod, {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "pool": "other"})


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


def account_rules(kinds, account):
    """Every rule granted to a service account through the chart's bindings."""
    roles = {(r["kind"], r["metadata"]["name"]): r for r in kinds["ClusterRole"] + kinds["Role"]}
    return [rule for binding in kinds["ClusterRoleBinding"] + kinds["RoleBinding"]
            if {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in binding["subjects"]
            for rule in roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]["rules"]]


def test_the_installer_and_the_uninstall_hook_have_separate_narrow_accounts(variant):
    _, release, values, kinds, _ = variant
    (daemonset,) = kinds["DaemonSet"]
    name = daemonset["metadata"]["name"]
    installer = values.get("serviceAccount", {}).get("name") or name
    (job,) = kinds["Job"]
    hook = job["spec"]["template"]["spec"]["serviceAccountName"]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == installer
    assert hook == f"{name}-uninstall" and hook != installer
    created = {a["metadata"]["name"] for a in kinds["ServiceAccount"]}
    assert created == ({installer, hook} if values.get("serviceAccount", {}).get("create", True) else {hook})
    # The installer: its nodes only (the policy below narrows the patch), its
    # restart slots (Leases); no DaemonSet.
    slots = values.get("installer", {}).get("maxConcurrentRestarts", 1)
    prefix = next(e["value"] for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
                  if e["name"] == "WASMLET_RESTART_LEASES")
    assert prefix == f"{name}-restart"
    assert account_rules(kinds, installer) == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [f"{prefix}-{slot}" for slot in range(slots)], "verbs": ["get", "update"]},
    ]
    # The hook: read nodes, patch this DaemonSet alone.
    assert account_rules(kinds, hook) == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": [name], "verbs": ["get", "patch"]},
    ]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    timeout = values.get("uninstall", {}).get("timeoutSeconds", 300)
    assert container["args"] == ["cleanup", f"--daemonset={name}", f"--timeout={timeout}"]
    assert container["securityContext"]["runAsNonRoot"] is True
    # The DaemonSet's selector does not take the hook's pod for its own.
    selector = daemonset["spec"]["selector"]["matchLabels"]
    hook_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not all(hook_labels.get(k) == v for k, v in selector.items())


class Policy:
    """One of the chart's ValidatingAdmissionPolicies (by its name's end),
    evaluated as the API server would."""

    def __init__(self, kinds, suffix):
        (self.policy,) = [p for p in kinds["ValidatingAdmissionPolicy"] if p["metadata"]["name"].endswith(suffix)]
        (self.binding,) = [b for b in kinds["ValidatingAdmissionPolicyBinding"] if b["metadata"]["name"].endswith(suffix)]
        self.environment = celpy.Environment()

    def _evaluate(self, expression, activation):
        return self.environment.program(self.environment.compile(expression)).evaluate(activation)

    def allows(self, username, node_name, old, new, sub_resource=""):
        """Whether an UPDATE by `username` (whose token is bound to a pod
        on `node_name`) from `old` to `new` is let through."""
        request = {"userInfo": {"username": username, "extra": {"authentication.kubernetes.io/node-name": [node_name]}},
                   "subResource": sub_resource}
        activation = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(new),
                      "oldObject": celpy.json_to_cel(old)}
        spec = self.policy["spec"]
        if not all(self._evaluate(c["expression"], activation) for c in spec["matchConditions"]):
            return True
        variables = {v["name"]: self._evaluate(v["expression"], activation) for v in spec["variables"]}
        activation["variables"] = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
        return all(self._evaluate(v["expression"], activation) for v in spec["validations"])


def node(name, labels, taints=()):
    return {"metadata": {"name": name, "labels": dict(labels), "annotations": {"node.alpha/ttl": "0"}},
            "spec": {"podCIDR": "", "taints": list(taints)}}


def test_the_node_policy_holds_the_installer_to_its_own_node_and_label(variant):
    _, release, values, kinds, _ = variant
    policy = Policy(kinds, "-installer-nodes")
    (daemonset,) = kinds["DaemonSet"]
    installer = values.get("serviceAccount", {}).get("name") or daemonset["metadata"]["name"]
    account = f"system:serviceaccount:{NAMESPACE}:{installer}"
    label = values.get("installer", {}).get("nodeLabel", "wasmlet.dev/installed")
    assert policy.binding["spec"] == {"policyName": policy.policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy.policy["spec"]["failurePolicy"] == "Fail"
    base = {"kubernetes.io/hostname": "a", "team": "blue"}
    plain, labelled = node("a", base), node("a", {**base, label: "true"})
    # What the installer does: its label on its node, and off again.
    assert policy.allows(account, "a", plain, labelled)
    assert policy.allows(account, "a", labelled, plain)
    # What root on node a could try with the same token.
    assert not policy.allows(account, "a", node("b", base), node("b", {**base, label: "true"})), "another node"
    assert not policy.allows(account, "a", plain, node("a", {**base, "team": "red"})), "another label"
    assert not policy.allows(account, "a", plain, node("a", {"kubernetes.io/hostname": "a"})), "a label removed"
    assert not policy.allows(account, "a", plain, node("a", base, [{"key": "x", "effect": "NoSchedule"}])), "a taint"
    changed = node("a", base)
    changed["metadata"]["annotations"]["x"] = "y"
    assert not policy.allows(account, "a", plain, changed), "an annotation"
    assert not policy.allows(account, "a", plain, labelled, sub_resource="status"), "the status"
    # An owner the garbage collector would follow to delete the node, or a
    # finalizer that keeps it from ever going.
    owned = node("a", {**base, label: "true"})
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "installer-x", "uid": "1"}]
    assert not policy.allows(account, "a", plain, owned), "an owner"
    held = node("a", {**base, label: "true"})
    held["metadata"]["finalizers"] = ["example.com/never"]
    assert not policy.allows(account, "a", plain, held), "a finalizer"
    # Anyone else is not this policy's business.
    assert policy.allows("system:node:a", "a", plain, node("a", {"team": "red"}))


def test_the_uninstall_hook_may_only_switch_the_daemonset_to_uninstall(variant):
    _, release, values, kinds, _ = variant
    policy = Policy(kinds, "-uninstall-daemonset")
    (daemonset,) = kinds["DaemonSet"]
    name = daemonset["metadata"]["name"]
    hook = f"system:serviceaccount:{NAMESPACE}:{name}-uninstall"
    assert policy.binding["spec"] == {"policyName": policy.policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy.policy["spec"]["failurePolicy"] == "Fail"

    def changed(change):
        new = copy.deepcopy(daemonset)
        change(new)
        return new

    def mode(value):
        return lambda d: d["spec"]["template"]["metadata"]["annotations"].update({"wasmlet.dev/mode": value})

    # What the hook does.
    assert policy.allows(hook, "a", daemonset, changed(mode("uninstall")))
    # What a pod that got the hook's token could try.
    pod = lambda d: d["spec"]["template"]["spec"]  # noqa: E731
    attacks = {
        "another mode": mode("install-anything"),
        "another image": lambda d: pod(d)["containers"][0].update(image="evil.example/root:latest"),
        "another command": lambda d: pod(d)["containers"][0].update(command=["/bin/sh", "-c", "id"]),
        "another host path": lambda d: pod(d)["volumes"][0]["hostPath"].update(path="/etc"),
        "another template label": lambda d: d["spec"]["template"]["metadata"].setdefault("labels", {}).update(x="y"),
        "another annotation": lambda d: d["spec"]["template"]["metadata"]["annotations"].update(x="y"),
        "an owner": lambda d: d["metadata"].update(ownerReferences=[{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "1"}]),
        "a finalizer": lambda d: d["metadata"].update(finalizers=["example.com/never"]),
        "the update strategy": lambda d: d["spec"].update(updateStrategy={
            "type": "OnDelete" if d["spec"]["updateStrategy"]["type"] == "RollingUpdate" else "RollingUpdate"}),
        "the history kept": lambda d: d["spec"].update(revisionHistoryLimit=0),
        "the ready delay": lambda d: d["spec"].update(minReadySeconds=3600),
    }
    for what, attack in attacks.items():
        both = lambda d, attack=attack: (mode("uninstall")(d), attack(d))  # noqa: E731
        assert not policy.allows(hook, "a", daemonset, changed(both)), what
    assert not policy.allows(hook, "a", daemonset, changed(mode("uninstall")), sub_resource="status")
    # Anyone else (helm upgrade, an admin) is not this policy's business.
    assert policy.allows("admin", "a", daemonset, changed(attacks["another image"]))


def test_the_uninstall_hooks_account_exists_only_while_uninstall_runs(variant):
    _, release, values, kinds, _ = variant
    (job,) = kinds["Job"]
    hook = job["spec"]["template"]["spec"]["serviceAccountName"]
    made_for_the_hook = [doc for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
                         for doc in kinds[kind] if doc["metadata"]["name"] == hook]
    assert sorted(doc["kind"] for doc in made_for_the_hook) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]
    job_weight = int(job["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    for doc in made_for_the_hook:
        annotations = doc["metadata"].get("annotations", {})
        assert annotations.get("helm.sh/hook") == "pre-delete", doc
        assert int(annotations["helm.sh/hook-weight"]) < job_weight, doc
        assert set(annotations["helm.sh/hook-delete-policy"].split(",")) >= {"hook-succeeded", "hook-failed"}, doc


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
