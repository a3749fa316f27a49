"""Decoding of Kubernetes protobuf request bodies for a few simple built-in kinds.

client-go's typed clients send protobuf (`application/vnd.kubernetes.protobuf`): `kubectl create
namespace|configmap|secret|serviceaccount|role|rolebinding|clusterrole|clusterrolebinding` and Helm's
release Secrets do. The sandbox answers in JSON (clients accept it) but must read those bodies. Field
numbers are those of k8s.io/api's generated.proto; kinds not listed here get a 415 that says to send
JSON instead (for example `kubectl apply -f`).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

MAGIC = b"k8s\x00"

_META = ("metadata", "msg:ObjectMeta")
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "Unknown": {
        1: ("typeMeta", "msg:TypeMeta"),
        2: ("raw", "raw"),
        3: ("contentEncoding", "string"),
        4: ("contentType", "string"),
    },
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "ObjectMeta": {
        1: ("name", "string"),
        2: ("generateName", "string"),
        3: ("namespace", "string"),
        5: ("uid", "string"),
        6: ("resourceVersion", "string"),
        7: ("generation", "int"),
        8: ("creationTimestamp", "time"),
        9: ("deletionTimestamp", "time"),
        10: ("deletionGracePeriodSeconds", "int"),
        11: ("labels", "map:string"),
        12: ("annotations", "map:string"),
        13: ("ownerReferences", "repeated:msg:OwnerReference"),
        14: ("finalizers", "repeated:string"),
    },
    "OwnerReference": {
        5: ("apiVersion", "string"),
        1: ("kind", "string"),
        3: ("name", "string"),
        4: ("uid", "string"),
        6: ("controller", "bool"),
        7: ("blockOwnerDeletion", "bool"),
    },
    "ConfigMap": {
        1: _META,
        2: ("data", "map:string"),
        3: ("binaryData", "map:bytes"),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: _META,
        2: ("data", "map:bytes"),
        3: ("type", "string"),
        4: ("stringData", "map:string"),
        5: ("immutable", "bool"),
    },
    "Namespace": {1: _META, 2: ("spec", "msg:NamespaceSpec"), 3: ("status", "msg:NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "repeated:string")},
    "NamespaceStatus": {1: ("phase", "string")},
    "ServiceAccount": {
        1: _META,
        2: ("secrets", "repeated:msg:ObjectReference"),
        3: ("imagePullSecrets", "repeated:msg:LocalObjectReference"),
        4: ("automountServiceAccountToken", "bool"),
    },
    "ObjectReference": {
        1: ("kind", "string"),
        2: ("namespace", "string"),
        3: ("name", "string"),
        4: ("uid", "string"),
        5: ("apiVersion", "string"),
        6: ("resourceVersion", "string"),
        7: ("fieldPath", "string"),
    },
    "LocalObjectReference": {1: ("name", "string")},
    "PolicyRule": {
        1: ("verbs", "repeated:string"),
        2: ("apiGroups", "repeated:string"),
        3: ("resources", "repeated:string"),
        4: ("resourceNames", "repeated:string"),
        5: ("nonResourceURLs", "repeated:string"),
    },
    "Role": {1: _META, 2: ("rules", "repeated:msg:PolicyRule")},
    "ClusterRole": {
        1: _META,
        2: ("rules", "repeated:msg:PolicyRule"),
        3: ("aggregationRule", "msg:AggregationRule"),
    },
    "AggregationRule": {1: ("clusterRoleSelectors", "repeated:msg:LabelSelector")},
    "LabelSelector": {
        1: ("matchLabels", "map:string"),
        2: ("matchExpressions", "repeated:msg:LabelSelectorRequirement"),
    },
    "LabelSelectorRequirement": {
        1: ("key", "string"),
        2: ("operator", "string"),
        3: ("values", "repeated:string"),
    },
    "Subject": {
        1: ("kind", "string"),
        2: ("apiGroup", "string"),
        3: ("name", "string"),
        4: ("namespace", "string"),
    },
    "RoleRef": {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")},
    "RoleBinding": {1: _META, 2: ("subjects", "repeated:msg:Subject"), 3: ("roleRef", "msg:RoleRef")},
    "ClusterRoleBinding": {1: _META, 2: ("subjects", "repeated:msg:Subject"), 3: ("roleRef", "msg:RoleRef")},
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int"),
        2: ("preconditions", "msg:Preconditions"),
        3: ("orphanDependents", "bool"),
        4: ("propagationPolicy", "string"),
        5: ("dryRun", "repeated:string"),
    },
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
}
SUPPORTED_KINDS = (
    "DeleteOptions",
    "ConfigMap",
    "Secret",
    "Namespace",
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
)


class ProtobufError(ValueError):
    """A body the sandbox cannot decode."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field of one message."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        out.append((num, wire, value))
    return out


def _scalar(kind: str, value: Any) -> Any:
    if kind == "string":
        return value.decode()
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "raw":
        return value
    if kind == "time":
        t = decode_message("Time", value)
        return dt.datetime.fromtimestamp(t.get("seconds", 0), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind.startswith("msg:"):
        return decode_message(kind[4:], value)
    raise ProtobufError(f"unknown field kind {kind}")


def decode_message(name: str, buf: bytes) -> dict[str, Any]:
    schema = SCHEMAS[name]
    out: dict[str, Any] = {}
    for num, _, value in _fields(buf):
        if num not in schema:
            continue  # fields the sandbox does not know (e.g. managedFields) are dropped
        field, kind = schema[num]
        if kind.startswith("map:"):
            entry = {n: v for n, _, v in _fields(value)}
            key = entry.get(1, b"").decode()
            out.setdefault(field, {})[key] = _scalar(kind[4:], entry.get(2, b""))
        elif kind.startswith("repeated:"):
            out.setdefault(field, []).append(_scalar(kind[9:], value))
        else:
            scalar = _scalar(kind, value)
            # Go marshals every non-pointer field, empty or not; JSON omits them (omitempty).
            if scalar not in ("", False, 0) or kind.startswith("msg:"):
                out[field] = scalar
    return out


def decode_object(body: bytes, kind: str) -> dict[str, Any]:
    """Decode a `k8s\\0`-prefixed protobuf body of `kind` into the JSON form.

    Raises:
        ProtobufError: not a Kubernetes protobuf envelope, or a kind the sandbox cannot decode.
    """
    if not body.startswith(MAGIC):
        raise ProtobufError("the body lacks the Kubernetes protobuf prefix 'k8s\\x00'")
    unknown = decode_message("Unknown", body[len(MAGIC) :])
    # The URL's resource decides the kind (as on the real server); typeMeta is informational.
    actual = kind
    if actual not in SUPPORTED_KINDS:
        raise ProtobufError(
            f"the sandbox decodes protobuf bodies only for {', '.join(SUPPORTED_KINDS)}, not {actual}: "
            "send JSON instead (e.g. `kubectl apply -f` or `kubectl create -f` with a manifest)"
        )
    obj = decode_message(actual, unknown.get("raw") or b"")
    obj["kind"] = actual
    return obj
