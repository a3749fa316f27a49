"""JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes strategic merge patch.

The strategic merge covers what kubectl and kopf send for core kinds: lists merged by their patch
merge key (containers by name, env by name, volumeMounts by mountPath, ...), `$patch: delete|replace`,
`$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys`. Lists without a known
merge key are replaced, as the real server does for `patchStrategy` unset.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422 or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---- JSON patch ----------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON patch path must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict):
            if p not in cur:
                raise PatchError(f"JSON patch path not found: {path}")
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise PatchError(f"JSON patch path not found: {path}") from None
        else:
            raise PatchError(f"JSON patch path not found: {path}")
    return cur


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            idx = int(last)
            if idx > len(parent):
                raise PatchError(f"JSON patch index out of range: {path}")
            parent.insert(idx, value)
    else:
        raise PatchError(f"JSON patch path not found: {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    try:
        if isinstance(parent, dict):
            return parent.pop(last) if last in parent else _raise(path)
        return parent.pop(int(last))
    except (ValueError, IndexError, AttributeError):
        raise PatchError(f"JSON patch path not found: {path}") from None


def _raise(path: str) -> Any:
    raise PatchError(f"JSON patch path not found: {path}")


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 operations add/remove/replace/move/copy/test on a copy of `target`."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            parts = _pointer(path)
            if not parts:
                doc = copy.deepcopy(op.get("value"))
                continue
            _walk(doc, parts, path)  # must exist
            parent = _walk(doc, parts[:-1], path)
            if isinstance(parent, list):
                parent[int(parts[-1])] = copy.deepcopy(op.get("value"))
            else:
                parent[parts[-1]] = copy.deepcopy(op.get("value"))
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_walk(doc, _pointer(op["from"]), op["from"])))
        elif kind == "test":
            if _walk(doc, _pointer(path), path) != op.get("value"):
                raise PatchError(f"JSON patch test failed at {path}")
        else:
            raise PatchError(f"unknown JSON patch operation: {kind!r}")
    return doc


# ---- strategic merge patch -----------------------------------------------------------------------

# Patch merge keys of the core kinds' lists, by field name (path-independent where unambiguous).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}
# Primitive lists merged as sets (patchStrategy=merge without a key).
MERGED_PRIMITIVE_LISTS = {"finalizers"}


def _merge_key(field: str, path: tuple[str, ...]) -> str | None:
    if field == "ports":
        # Container ports merge by containerPort, Service ports by port.
        return "containerPort" if "containers" in path or "initContainers" in path else "port"
    return MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch as the API server does for built-in kinds."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, list):
            result[key] = _merge_list(key, current, value, path + (key,))
            order = patch.get(f"$setElementOrder/{key}")
            if order is not None and isinstance(result[key], list):
                result[key] = _reorder(key, result[key], order, path + (key,))
        elif isinstance(value, dict):
            merged = strategic_merge_patch(current, value, path + (key,))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, current: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    current = current if isinstance(current, list) else []
    if field in MERGED_PRIMITIVE_LISTS:
        out = list(current)
        out.extend(v for v in patch if v not in out)
        return out
    key = _merge_key(field, path)
    if key is None or not all(isinstance(v, dict) for v in patch):
        if len(patch) == 1 and isinstance(patch[0], dict) and patch[0].get("$patch") == "replace":
            return []
        return copy.deepcopy(patch)
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy({k: x for k, x in v.items() if k != "$patch"}) for v in patch if len(v) > 1]
    out = [copy.deepcopy(v) for v in current]
    for item in patch:
        k = item.get(key)
        idx = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == k), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge_patch({}, item, path))
        else:
            out[idx] = strategic_merge_patch(out[idx], item, path)
    return out


def _reorder(field: str, items: list[Any], order: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = _merge_key(field, path)
    if key is None:
        ranking = {repr(v): i for i, v in enumerate(order)}
        return sorted(items, key=lambda v: ranking.get(repr(v), len(ranking)))
    by_key: dict[Any, int] = {o.get(key): i for i, o in enumerate(order) if isinstance(o, dict)}
    return sorted(items, key=lambda v: by_key.get(v.get(key) if isinstance(v, dict) else None, len(by_key)))
