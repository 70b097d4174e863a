"""Validates the Kubernetes manifests in deploy/kubernetes offline.

Built-in kinds (Deployment, Service, PodDisruptionBudget, Job, Secret, Namespace) are checked
strictly against the Kubernetes schemas by `kubernetes-validate`; the operators' custom
resources (RabbitmqCluster, CloudNativePG's Cluster) against the `openAPIV3Schema` of their
CRDs, vendored in deploy/kubernetes/crds (see SOURCES.md there). Each check is also shown to
refuse a broken copy, so a pass means something. Exits non-zero on any failure.

Usage: validate_kubernetes.py <manifests dir> <kubernetes version>
"""

import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml


def crd_schemas(crd_dir):
    """(apiVersion, kind) -> the JSON Schema of that served version."""
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def check(document, schemas, k8s_version):
    """Raises on an invalid document."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key in schemas:
        jsonschema.validate(document, schemas[key])
    else:
        kubernetes_validate.validate(document, k8s_version, strict=True)


def main():
    manifests, k8s_version = pathlib.Path(sys.argv[1]), sys.argv[2]
    schemas = crd_schemas(manifests / "crds")
    if not schemas:
        sys.exit("no CRD schemas vendored")
    documents = []
    for path in sorted(manifests.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    failed = False
    kinds = set()
    for name, document in documents:
        label = f"{name}: {document.get('kind')} {document.get('metadata', {}).get('name')}"
        try:
            check(document, schemas, k8s_version)
            kinds.add(document["kind"])
            print(f"valid   {label}")
        except Exception as error:  # noqa: BLE001 - every kind of refusal is reported the same
            failed = True
            print(f"INVALID {label}: {str(error).splitlines()[0]}")
    # Negative controls: a wrongly typed field is refused by both kinds of check.
    for kind, break_it in [
        ("Deployment", lambda d: d["spec"].__setitem__("replicas", "two")),
        ("RabbitmqCluster", lambda d: d["spec"].__setitem__("replicas", "three")),
        ("Cluster", lambda d: d["spec"].__setitem__("instances", "three")),
    ]:
        original = next(d for _, d in documents if d["kind"] == kind)
        broken = copy.deepcopy(original)
        break_it(broken)
        try:
            check(broken, schemas, k8s_version)
            failed = True
            print(f"the check accepted a broken {kind}")
        except Exception:  # noqa: BLE001
            pass
    print(f"{len(documents)} manifests, kinds {sorted(kinds)}, Kubernetes {k8s_version}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
