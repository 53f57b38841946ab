"""charts/kv through the real Helm (3 and 4, built from their Go modules by
`scripts/local-cluster build`), for scripts/validate-manifests: render, lint, and compare with
the kustomize overlays object by object, field by field."""
import json
import os
import pathlib
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kv"
# What Helm adds and kustomize does not: ownership labels and the config checksum.
HELM_LABELS = {"app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version", "helm.sh/chart"}
HELM_ANNOTATIONS = {"checksum/config"}


class HelmError(Exception):
    pass


def binaries():
    """{"4": path, "3": path} of the pinned Helm builds; HelmError naming the fix if missing."""
    versions = {}
    for line in (ROOT / "scripts" / "local-cluster.versions").read_text().splitlines():
        k, _, v = line.partition("=")
        if k in ("HELM_VERSION", "HELM3_VERSION"):
            versions["4" if k == "HELM_VERSION" else "3"] = v.strip()
    cache = pathlib.Path(os.environ.get("KV_LOCAL_CACHE", "/var/cache/kv-local-cluster"))
    out = {}
    for major, v in sorted(versions.items()):
        path = cache / f"helm-{v}" / "helm"
        if not os.access(path, os.X_OK):
            raise HelmError(f"Helm {v} is not built at {path}: run scripts/local-cluster build")
        out[major] = path
    if set(out) != {"3", "4"}:
        raise HelmError("scripts/local-cluster.versions must name HELM_VERSION and HELM3_VERSION")
    return out


def run(helm, *args):
    r = subprocess.run([str(helm), *args], capture_output=True, text=True,
                       env=dict(os.environ, HELM_CACHE_HOME="/nonexistent", HELM_CONFIG_HOME="/nonexistent",
                                HELM_DATA_HOME="/nonexistent"))
    return r.returncode, r.stdout, r.stderr


def render(helm, *args, namespace="kv-system"):
    """`helm template kv charts/kv -n NAMESPACE ARGS...` -> list of objects."""
    code, out, err = run(helm, "template", "kv", str(CHART), "--namespace", namespace, *args)
    if code != 0:
        raise HelmError(f"helm template {' '.join(args)}: {err.strip()}")
    return [d for d in yaml.safe_load_all(out) if d]


def lint(helm, *args):
    code, out, err = run(helm, "lint", "--strict", str(CHART), *args)
    return [] if code == 0 else [f"helm lint --strict {' '.join(args)}: {(out + err).strip()}"]


def refused(helm, *args):
    """The error Helm gives for values the schema (or a template check) refuses, or None."""
    code, _, err = run(helm, "template", "kv", str(CHART), *args)
    return err.strip() if code != 0 else None


def _normalize(doc):
    doc = json.loads(json.dumps(doc))
    for meta in (doc.get("metadata", {}), doc.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in HELM_LABELS}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in HELM_ANNOTATIONS}
        for key, value in (("labels", labels), ("annotations", annotations)):
            if value:
                meta[key] = value
            else:
                meta.pop(key, None)
    if doc.get("kind") == "ConfigMap" and "kv.json" in (doc.get("data") or {}):
        # The same config, whatever its spacing.
        doc["data"]["kv.json"] = json.loads(doc["data"]["kv.json"])
    return doc


def _diff(a, b, path=""):
    if type(a) is not type(b):
        return [f"{path or '/'}: {json.dumps(a)} != {json.dumps(b)}"]
    if isinstance(a, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}/{k}: only in the overlay")
            elif k not in b:
                out.append(f"{path}/{k}: only in the chart")
            else:
                out += _diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items in the chart, {len(b)} in the overlay"]
        return [x for i, (p, q) in enumerate(zip(a, b)) for x in _diff(p, q, f"{path}/{i}")]
    return [] if a == b else [f"{path}: chart {json.dumps(a)}, overlay {json.dumps(b)}"]


def compare(chart_docs, overlay_docs):
    """Every difference between the chart's objects and the overlay's, as `Kind/name/path: ...`
    lines (Helm's ownership labels and the checksum annotation aside)."""
    key = lambda d: (d.get("kind"), d.get("metadata", {}).get("name"))  # noqa: E731
    chart = {key(d): _normalize(d) for d in chart_docs}
    overlay = {key(d): _normalize(d) for d in overlay_docs}
    out = []
    for k in sorted(set(chart) | set(overlay), key=str):
        name = f"{k[0]}/{k[1]}"
        if k not in overlay:
            out.append(f"{name}: only in the chart")
        elif k not in chart:
            out.append(f"{name}: only in the overlay")
        else:
            out += [f"{name}{d}" for d in _diff(chart[k], overlay[k])]
    return out


def strict_objects(schema, path="values.schema.json"):
    """Object schemas with fixed properties that still accept unknown keys."""
    out = []
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False:
            out.append(path)
        for k, v in schema.items():
            out += strict_objects(v, f"{path}/{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            out += strict_objects(v, f"{path}/{i}")
    return out
