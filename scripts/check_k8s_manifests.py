"""Renders the parley-operator chart with Helm's own library (the helm-python-sdk wheel: no
helm binary, no cluster), lints it, and writes every manifest to validate into OUT_DIR.

Also checks what kubernetes-validate cannot: that the chart's CRD is byte-identical to
crds/, and that every ChatCluster (the chart's example, the rendered example template)
satisfies the CRD's own openAPIV3Schema, which kubernetes-validate does not know.

Usage: python check_k8s_manifests.py REPO_ROOT OUT_DIR
       python check_k8s_manifests.py --certificates REPO_ROOT FILE...
The second form validates every cert-manager Certificate in FILE... against the schema checked
in at scripts/schemas/ (kubernetes-validate has no schema for cert-manager's CRDs).
"""

import json
import pathlib
import sys

import helm_python as helm
import jsonschema
import yaml

KUBE_VERSION = "v1.33.0"

# Value sets the chart must render and validate with.
VALUE_SETS = {
    "defaults": {},
    "example-enabled": {"example": {"enabled": True}},
    "single-namespace": {"watchNamespace": "chat", "example": {"enabled": True, "namespace": "chat"}},
    "minimal": {"rbac": {"create": False}, "serviceAccount": {"create": False}, "metrics": {"service": {"enabled": False}}},
}


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def strip_k8s_extensions(schema):
    """jsonschema does not know x-kubernetes-*; 'nullable' is OpenAPI: turn it into a type union."""
    if isinstance(schema, dict):
        out = {k: strip_k8s_extensions(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        if schema.get("x-kubernetes-int-or-string"):
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [strip_k8s_extensions(v) for v in schema]
    return schema


def main() -> None:
    root = pathlib.Path(sys.argv[1]).resolve()
    out = pathlib.Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chart_dir = root / "charts" / "parley-operator"

    crd_file = root / "crds" / "chatclusters.parley.dev.yaml"
    chart_crd = chart_dir / "crds" / "chatclusters.parley.dev.yaml"
    if crd_file.read_text() != chart_crd.read_text():
        fail(f"{chart_crd} differs from {crd_file}: copy crds/ into the chart")

    report = helm.lint(str(chart_dir), strict=True, kube_version=KUBE_VERSION)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    for m in report.get("messages", []):
        print(f"helm lint: severity {m.get('severity')} {m.get('path')}: {m.get('error')}")
    if problems:
        fail(f"helm lint --strict found problems: {problems}")

    chart = helm.Chart.load(str(chart_dir))
    names = [c["name"] for c in chart.crds]
    if names != ["crds/chatclusters.parley.dev.yaml"]:
        fail(f"the chart should ship exactly the ChatCluster CRD, found {names}")

    chatclusters = []
    for label, values in VALUE_SETS.items():
        rendered = chart.render(values, name="parley", namespace="parley-system", is_install=True)
        docs = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append(doc)
        if not docs:
            fail(f"values set {label!r} rendered nothing")
        target = out / f"chart-{label}.yaml"
        target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        kinds = sorted({d["kind"] for d in docs})
        print(f"rendered chart with {label}: {len(docs)} objects ({', '.join(kinds)}) -> {target.name}")
        chatclusters += [(f"chart ({label})", d) for d in docs if d["kind"] == "ChatCluster"]

    crd = yaml.safe_load(crd_file.read_text())
    schema = strip_k8s_extensions(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    for example in sorted((chart_dir / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(example.read_text()):
            if doc:
                chatclusters.append((f"examples/{example.name}", doc))
    if not chatclusters:
        fail("no ChatCluster to check against the CRD schema")
    for where, doc in chatclusters:
        try:
            jsonschema.validate({k: v for k, v in doc.items() if k in ("spec", "status")}, schema)
        except jsonschema.ValidationError as e:
            fail(f"ChatCluster from {where} does not match the CRD schema: {e.message} at {list(e.path)}")
        print(f"ChatCluster {doc['metadata']['name']} from {where} matches the CRD schema")


def check_certificates(root: pathlib.Path, files) -> None:
    schema = json.loads((root / "scripts" / "schemas" / "cert-manager-certificate-v1.json").read_text())
    count = 0
    for f in files:
        for doc in yaml.safe_load_all(pathlib.Path(f).read_text()):
            if not doc or doc.get("kind") != "Certificate":
                continue
            try:
                jsonschema.validate(doc, schema)
            except jsonschema.ValidationError as e:
                fail(f"Certificate {doc.get('metadata', {}).get('name')} in {f} does not match the cert-manager schema: {e.message} at {list(e.path)}")
            count += 1
    print(f"{count} cert-manager Certificates match scripts/schemas/cert-manager-certificate-v1.json "
          "(a hand-transcribed subset of cert-manager's CRD; kubernetes-validate cannot check them)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--certificates":
        check_certificates(pathlib.Path(sys.argv[2]).resolve(), sys.argv[3:])
    else:
        main()
