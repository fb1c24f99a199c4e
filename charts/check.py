#!/usr/bin/env python3
"""Checks the Helm chart offline: lints and renders charts/cairn with every values file
in charts/cairn/ci, validates every rendered object against the Kubernetes schemas
(kubernetes-validate, strict) or, for KEDA and Scylla Operator objects, against the
schemas in testdata/k8s-schemas, checks that the objects fit together, and that k8s/
equals a fresh rendering of the defaults.

    python3 charts/check.py            check everything (part of ./dev test)
    python3 charts/check.py --write    rewrite k8s/ from the chart (./dev k8s)
    python3 charts/check.py render F   print the objects rendered with values file F as JSON

Needs helm-python-sdk and kubernetes-validate (./dev installs them into .cairn/tools/helm).
"""

import json
import pathlib
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "cairn"
VALUES = sorted((CHART / "ci").glob("*.yaml"))
K8S = ROOT / "k8s" / "cairn.yaml"
SCHEMAS = ROOT / "testdata" / "k8s-schemas"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]
# Objects of operators' custom resources, checked against the schemas kept in the repo.
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("scylla.scylladb.com/v1", "ScyllaCluster"): "scyllacluster-scylla-v1.json",
}
# The NATS chart is a dependency fetched by `helm dependency build`, which needs the
# network; lint reports it missing here, and that is the only finding allowed.
MISSING_NATS = "chart directory is missing these dependencies: nats"
RELEASE, NAMESPACE = "cairn", "cairn"


def load_values(path):
    return yaml.safe_load(path.read_text()) or {}


def render(values):
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    text = []
    for name in sorted(manifests):
        if name.endswith("NOTES.txt") or not manifests[name].strip():
            continue
        text.append(f"# Source: {name}\n{manifests[name].strip()}\n")
    return "---\n".join(text)


def objects(text):
    return [doc for doc in yaml.safe_load_all(text) if doc]


def lint(values, where):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [
        f"{message['path']}: {message['error']}"
        for message in report["messages"]
        if message["severity"] >= 2 and message["error"] != MISSING_NATS
    ]
    return [f"{where}: lint: {problem}" for problem in problems]


def validate(obj, where):
    kind = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    custom = CUSTOM_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if custom:
        schema = json.loads((SCHEMAS / custom).read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        return [
            f"{where}: {kind}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(obj)
        ]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(map(str, error.path))
            problems.append(f"{where}: {kind} (Kubernetes {version}): {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{where}: {kind}: no schema: {error}")
    return problems


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def consistency(objs, where):
    """What a schema cannot see: names unique, selectors and references that lead
    somewhere, and the security settings every workload must have."""
    problems = []
    seen = set()
    by_kind = {}
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in seen:
            problems.append(f"{where}: {key[0]}/{key[1]} twice")
        seen.add(key)
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
    for name, workload in workloads.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        if any(labels.get(key) != value for key, value in selector.items()):
            problems.append(f"{where}: {name}: the selector does not match its pods")
        spec = pod_spec(workload)
        if spec["securityContext"].get("runAsNonRoot") is not True:
            problems.append(f"{where}: {name}: pods may run as root")
        for container in spec["containers"]:
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: {name}: writable root filesystem")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: {name}: privilege escalation allowed")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{where}: {name}: no {probe}")
        account = spec.get("serviceAccountName")
        if account not in by_kind.get("ServiceAccount", {}) and account != "cairn-runner":
            problems.append(f"{where}: {name}: service account {account} is not rendered")

    def selects_pods(selector):
        return any(
            all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
            for w in workloads.values()
        )

    for name, service in by_kind.get("Service", {}).items():
        if not selects_pods(service["spec"]["selector"]):
            problems.append(f"{where}: Service {name} selects no pods")
    for name, budget in by_kind.get("PodDisruptionBudget", {}).items():
        if not selects_pods(budget["spec"]["selector"]["matchLabels"]):
            problems.append(f"{where}: PodDisruptionBudget {name} selects no pods")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in by_kind.get(kind, {}).items():
            target = scaler["spec"]["scaleTargetRef"]["name"]
            if target not in by_kind.get("Deployment", {}):
                problems.append(f"{where}: {kind} {name} scales {target}, which is not rendered")
    for kind, low, high in (
        ("HorizontalPodAutoscaler", "minReplicas", "maxReplicas"),
        ("ScaledObject", "minReplicaCount", "maxReplicaCount"),
    ):
        for name, scaler in by_kind.get(kind, {}).items():
            if not 1 <= scaler["spec"][low] <= scaler["spec"][high]:
                problems.append(f"{where}: {kind} {name}: replicas from {scaler['spec'][low]} to {scaler['spec'][high]}")
    for name, scaler in by_kind.get("ScaledObject", {}).items():
        triggers = [trigger.get("name") for trigger in scaler["spec"]["triggers"]]
        if len(set(triggers)) != len(triggers):
            problems.append(f"{where}: ScaledObject {name}: trigger names repeat")
    hpa_targets = {s["spec"]["scaleTargetRef"]["name"] for s in by_kind.get("HorizontalPodAutoscaler", {}).values()}
    for name, scaler in by_kind.get("ScaledObject", {}).items():
        if scaler["spec"]["scaleTargetRef"]["name"] in hpa_targets:
            problems.append(f"{where}: {name} is scaled by both KEDA and an HPA")
    for name, ingress in by_kind.get("Ingress", {}).items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]["name"]
                if backend not in by_kind.get("Service", {}):
                    problems.append(f"{where}: Ingress {name} leads to {backend}, not rendered")
    return problems


def check():
    problems = []
    for path in VALUES:
        where = path.relative_to(ROOT)
        values = load_values(path)
        problems += lint(values, where)
        try:
            objs = objects(render(values))
        except helm.HelmError as error:
            problems.append(f"{where}: does not render: {error}")
            continue
        for obj in objs:
            problems += validate(obj, where)
        problems += consistency(objs, where)
        print(f"{where}: {len(objs)} objects", file=sys.stderr)
    if K8S.read_text() != k8s_manifests():
        problems.append(f"{K8S.relative_to(ROOT)} differs from the chart's defaults: run ./dev k8s")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def k8s_manifests():
    header = (
        "# Cairn's Kubernetes objects for users without Helm: charts/cairn rendered with its\n"
        "# default values, release and namespace \"cairn\" (kubectl create namespace cairn).\n"
        "# Generated by ./dev k8s; do not edit. See docs/kubernetes.md.\n"
    )
    return header + "---\n" + render({})


def main(args):
    if args == ["--write"]:
        K8S.parent.mkdir(exist_ok=True)
        K8S.write_text(k8s_manifests())
        print(f"wrote {K8S.relative_to(ROOT)}", file=sys.stderr)
        return 0
    if len(args) == 2 and args[0] == "render":
        print(json.dumps(objects(render(load_values(pathlib.Path(args[1]))))))
        return 0
    if args:
        print(__doc__, file=sys.stderr)
        return 2
    return check()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
