"""Label and field selectors, parsed once per request and matched against stored objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any


class SelectorError(ValueError):
    """A selector the real API server would refuse (400 BadRequest)."""


Matcher = Callable[[Mapping[str, Any]], bool]

# Field labels a real API server accepts per resource, besides metadata.name/metadata.namespace.
FIELD_LABELS: dict[str, set[str]] = {
    "pods": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "events": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
        "regarding.kind",
        "regarding.name",
        "regarding.namespace",
        "regarding.uid",
    },
    "secrets": {"type"},
    "namespaces": {"status.phase"},
    "nodes": {"spec.unschedulable"},
    "replicasets": {"status.replicas"},
    "jobs": {"status.successful"},
}

_SPLIT_RE = re.compile(r",(?![^()]*\))")
_SET_RE = re.compile(r"^\s*([^\s!=<>]+)\s+(in|notin)\s+\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^\s!=<>]+)\s*(==|=|!=|<|>)\s*([^\s]*)\s*$")


def parse_label_selector(text: str | None) -> Matcher | None:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h` into a matcher of an object's labels.

    Raises:
        SelectorError: the selector does not parse, naming the bad requirement.
    """
    if not text or not text.strip():
        return None
    reqs: list[Callable[[Mapping[str, str]], bool]] = []
    for raw in _SPLIT_RE.split(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
        if m := _SET_RE.match(part):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append(partial(_in if op == "in" else _notin, key, values))
        elif m := _OP_RE.match(part):
            key, op, value = m.groups()
            if op in ("=", "=="):
                reqs.append(partial(_eq, key, value))
            elif op == "!=":
                reqs.append(partial(_ne, key, value))
            else:
                try:
                    bound = int(value)
                except ValueError:
                    raise SelectorError(
                        f"unable to parse requirement: {part!r}: {op} needs an integer"
                    ) from None
                reqs.append(partial(_gt if op == ">" else _lt, key, bound))
        elif part.startswith("!") and re.fullmatch(r"![\w./-]+", part):
            reqs.append(partial(_absent, part[1:]))
        elif re.fullmatch(r"[\w./-]+", part):
            reqs.append(partial(_present, part))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")

    def match(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return match


def _in(k: str, vs: set[str], labels: Mapping[str, str]) -> bool:
    return labels.get(k) in vs


def _notin(k: str, vs: set[str], labels: Mapping[str, str]) -> bool:
    return labels.get(k) not in vs


def _eq(k: str, v: str, labels: Mapping[str, str]) -> bool:
    return labels.get(k) == v


def _ne(k: str, v: str, labels: Mapping[str, str]) -> bool:
    return labels.get(k) != v


def _present(k: str, labels: Mapping[str, str]) -> bool:
    return k in labels


def _absent(k: str, labels: Mapping[str, str]) -> bool:
    return k not in labels


def _as_int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _gt(k: str, bound: int, labels: Mapping[str, str]) -> bool:
    v = _as_int(labels.get(k))
    return v is not None and v > bound


def _lt(k: str, bound: int, labels: Mapping[str, str]) -> bool:
    v = _as_int(labels.get(k))
    return v is not None and v < bound


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None, resource: str) -> Matcher | None:
    """Parse `metadata.name=x,status.phase!=Running` (only `=`, `==`, `!=`, as the real server).

    Raises:
        SelectorError: unparsable, or a field label this resource does not support.
    """
    if not text or not text.strip():
        return None
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_LABELS.get(resource, set())
    reqs: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        field, op, value = m.groups()
        if field not in allowed:
            raise SelectorError(f"field label not supported: {field}")
        reqs.append((field, op != "!=", value))

    def match(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, f) == v) == eq for f, eq, v in reqs)

    return match
