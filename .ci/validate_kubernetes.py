"""Validates the Kubernetes manifests in deploy/kubernetes offline, as kustomize would build
them: the base (deploy/kubernetes) and every overlay in a folder of it (the orchestrated twin's,
deploy/kubernetes/orchestration), each rendered here from its kustomization.yaml (resources:
files and folders; patches: JSON 6902 operations on the documents a target names; anything else
is refused, so a kustomization this script cannot render fails rather than passes).

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

import jsonpatch
import jsonschema
import kubernetes_validate
import yaml


def render(folder):
    """The documents `kubectl apply -k folder` would apply, in order."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    if unknown:
        sys.exit(f"{folder}/kustomization.yaml: cannot render {sorted(unknown)}")
    documents = []
    for resource in kustomization["resources"]:
        path = (folder / resource).resolve()
        if path.is_dir():
            documents.extend(render(path))
        else:
            for document in yaml.safe_load_all(path.read_text()):
                if document:
                    documents.append((f"{path.parent.name}/{path.name}", document))
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        operations = jsonpatch.JsonPatch(yaml.safe_load(patch["patch"]))
        matched = 0
        for index, (name, document) in enumerate(documents):
            if document["kind"] != target["kind"]:
                continue
            if "name" in target and document["metadata"]["name"] != target["name"]:
                continue
            documents[index] = (name, operations.apply(document))
            matched += 1
        if not matched:
            sys.exit(f"{folder}/kustomization.yaml: a patch's target {target} matches nothing")
    return documents


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
    base = render(manifests)
    listed = {name.split("/")[-1] for name, _ in base}
    for path in sorted(manifests.glob("*.yaml")):
        if path.name != "kustomization.yaml" and path.name not in listed:
            sys.exit(f"{path.name} is not in the kustomization")
    overlays = [
        (folder.name, render(folder))
        for folder in sorted(manifests.iterdir())
        if (folder / "kustomization.yaml").is_file()
    ]
    documents = [(f"base: {name}", document) for name, document in base]
    for overlay, rendered in overlays:
        documents += [(f"{overlay}: {name}", document) for name, document in rendered]
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
    print(
        f"{len(documents)} manifests (the base and {len(overlays)} overlay(s)), "
        f"kinds {sorted(kinds)}, Kubernetes {k8s_version}"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
