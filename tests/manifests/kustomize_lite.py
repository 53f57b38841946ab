"""A tiny offline kustomize: exactly the features installer/ uses.

Supported: `resources` (files, or directories holding a kustomization.yaml, recursively) and
`patches` with an inline JSON6902 patch (ops add, remove, replace, test) selected by
`target` (group, version, kind, name, namespace). Anything else in a kustomization.yaml is an
error, so a new kustomize feature cannot be silently ignored here. No network, no kubectl.
"""
import copy
import pathlib

import yaml

KUSTOMIZATION = "kustomization.yaml"
KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches"}


class KustomizeError(Exception):
    pass


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory):
    """Returns the list of resources `kustomize build directory` would output."""
    directory = pathlib.Path(directory)
    kfile = directory / KUSTOMIZATION
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no {KUSTOMIZATION}")
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported keys {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind must be Kustomization")
    out = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        if p.is_dir():
            out.extend(render(p))
        elif p.is_file():
            out.extend(load_docs(p))
        else:
            raise KustomizeError(f"{kfile}: resource {res} does not exist")
    for i, patch in enumerate(k.get("patches", [])):
        unknown = set(patch) - {"target", "patch"}
        if unknown or "patch" not in patch or "target" not in patch:
            raise KustomizeError(f"{kfile}: patches[{i}] must have exactly target and an inline JSON6902 patch")
        ops = yaml.safe_load(patch["patch"])
        if not isinstance(ops, list):
            raise KustomizeError(f"{kfile}: patches[{i}] is not a JSON6902 list (strategic merge is not supported)")
        hits = [r for r in out if _selected(r, patch["target"])]
        if not hits:
            raise KustomizeError(f"{kfile}: patches[{i}] selects no resource")
        for r in hits:
            for op in ops:
                _apply(r, op, f"{kfile}: patches[{i}]")
    return out


def _selected(resource, target):
    api = resource.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": resource.get("kind"),
        "name": resource.get("metadata", {}).get("name"),
        "namespace": resource.get("metadata", {}).get("namespace"),
    }
    for key, want in target.items():
        if key not in checks:
            raise KustomizeError(f"unsupported target selector {key}")
        if checks[key] != want:
            return False
    return True


def _pointer(path):
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc, parts, where):
    for p in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(p)]
            except (ValueError, IndexError):
                raise KustomizeError(f"{where}: no index {p}")
        elif isinstance(doc, dict) and p in doc:
            doc = doc[p]
        else:
            raise KustomizeError(f"{where}: no key {p}")
    return doc


def _apply(resource, op, where):
    kind = op.get("op")
    parts = _pointer(op.get("path", ""))
    parent = _walk(resource, parts[:-1], where)
    last = parts[-1]
    if kind == "test":
        if _walk(resource, parts, where) != op.get("value"):
            raise KustomizeError(f"{where}: test failed at {op['path']}")
    elif kind == "replace":
        _walk(resource, parts, where)
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            parent.insert(idx, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        _walk(resource, parts, where)
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    else:
        raise KustomizeError(f"{where}: unsupported op {kind!r}")
