"""Label and field selectors, parsed once per request and matched against stored objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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
            if op == "in":
                reqs.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                reqs.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := _OP_RE.match(part):
            key, op, value = m.groups()
            if op in ("=", "=="):
                reqs.append(lambda labels, k=key, v=value: labels.get(k) == v)
            elif op == "!=":
                reqs.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                try:
                    bound = int(value)
                except ValueError:
                    raise SelectorError(
                        f"unable to parse requirement: {part!r}: {op} needs an integer"
                    ) from None
                if op == ">":
                    reqs.append(lambda labels, k=key, b=bound: _int_or_none(labels.get(k), lambda x: x > b))
                else:
                    reqs.append(lambda labels, k=key, b=bound: _int_or_none(labels.get(k), lambda x: x < b))
        elif part.startswith("!") and re.fullmatch(r"![\w./-]+", part):
            key = part[1:]
            reqs.append(lambda labels, k=key: k not in labels)
        elif re.fullmatch(r"[\w./-]+", part):
            reqs.append(lambda labels, k=part: k in labels)
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")

    def match(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return match


def _int_or_none(value: str | None, pred: Callable[[int], bool]) -> bool:
    try:
        return value is not None and pred(int(value))
    except ValueError:
        return False


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
