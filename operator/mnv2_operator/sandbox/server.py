"""The sandbox's Kubernetes API server: an aiohttp app over an indexed in-memory store.

Replaces the request handling and storage of kmock's `KubernetesEmulator` (whose storage is scanned
linearly per request and which has no selectors, discovery or OpenAPI for kubectl), and reuses
kmock's shipped discovery documents for the built-in resource catalog (see catalog.py).

All state lives in one asyncio loop; handlers mutate it without awaiting in between, so every
mutation is atomic with respect to watchers. Objects in the store are never mutated in place:
each write stores a new dict, so watch events can hold references to old versions.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import json
import os
import random
import re
import string
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from mnv2_operator.sandbox import patch as patching
from mnv2_operator.sandbox.catalog import CRDError, ResourceInfo, builtin_resources, resource_from_crd
from mnv2_operator.sandbox.schema import Cause, process_custom_object
from mnv2_operator.sandbox.selectors import SelectorError, parse_field_selector, parse_label_selector

SERVER_VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0-mnv2-sandbox", "gitCommit": "sandbox",
                  "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
                  "compiler": "gc", "platform": "linux/amd64"}  # fmt: skip
NODE_NAME = "sandbox"
HISTORY_PER_RESOURCE = 20000  # watch events kept per resource for resumption; older -> 410 Gone
POD_GRACE_CAP = 30.0
FOREGROUND = "foregroundDeletion"

Key = tuple[str, str]  # (group, plural)


@dataclass(frozen=True)
class AuditRecord:
    """One API request, for checking RBAC rules against what a client really did."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int


class ApiError(Exception):
    """An error rendered as a `Status` object with the real server's reason and message."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message, "reason": self.reason, "code": self.code}  # fmt: skip
        if self.details is not None:
            out["details"] = self.details
        return out


def not_found(info: ResourceInfo, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{info.qualified} "{name}" not found',
        {"name": name, "group": info.group, "kind": info.plural},
    )


def invalid(info: ResourceInfo, name: str, causes: list[Cause]) -> ApiError:
    texts = [c.text() for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{info.qualified_kind} "{name}" is invalid: {joined}',
        {"name": name, "group": info.group, "kind": info.kind, "causes": [c.as_dict() for c in causes]},
    )


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clone(value: Any) -> Any:
    """Deep copy of JSON data (several times faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME_RESOURCES = {"namespaces", "services"}
# Names the real server accepts with any characters but '/' and '%' (path segment names).
_PATH_SEGMENT_NAME_RESOURCES = {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}


def name_causes(plural: str, name: str) -> list[Cause]:
    if plural in _PATH_SEGMENT_NAME_RESOURCES:
        if name in (".", "..") or "/" in name or "%" in name:
            return [
                Cause(
                    "FieldValueInvalid",
                    "metadata.name",
                    f"Invalid value: \"{name}\": may not contain '/' or '%'",
                )
            ]
        return []
    if plural == "services":
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            return [Cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": a DNS-1035 label must consist of lower case alphanumeric characters or \'-\', start with an alphabetic character, and end with an alphanumeric character (e.g. \'my-name\',  or \'abc-123\', regex used for validation is \'[a-z]([-a-z0-9]*[a-z0-9])?\')')]  # fmt: skip
        return []
    if plural in _LABEL_NAME_RESOURCES:
        if len(name) > 63 or not _DNS1123_LABEL.match(name):
            return [Cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \'-\', and must start and end with an alphanumeric character (e.g. \'my-name\',  or \'123-abc\', regex used for validation is \'[a-z0-9]([-a-z0-9]*[a-z0-9])?\')')]  # fmt: skip
        return []
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return [Cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character (e.g. \'example.com\', regex used for validation is \'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\')')]  # fmt: skip
    return []


_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _qualified_name_causes(field: str, key: str) -> list[Cause]:
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            if name and len(name) <= 63
            else "name part must be no more than 63 characters"
            if name
            else "name part must be non-empty"
        )
    return [Cause("FieldValueInvalid", field, f"Invalid value: {json.dumps(key)}: {p}") for p in problems]


def metadata_causes(info_plural: str, obj: dict[str, Any]) -> list[Cause]:
    """Label/annotation keys and values, and pod hostnames, as the real server validates them."""
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    for key, value in (meta.get("labels") or {}).items():
        causes += _qualified_name_causes("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_NAME.match(value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    "metadata.labels",
                    f"Invalid value: {json.dumps(value)}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                    if isinstance(value, str) and len(value) <= 63
                    else f"Invalid value: {json.dumps(value)}: must be no more than 63 characters",
                )
            )
    annotations = meta.get("annotations") or {}
    for key in annotations:
        causes += _qualified_name_causes("metadata.annotations", key)
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        causes.append(
            Cause("FieldValueTooLong", "metadata.annotations", "Too long: may not be more than 262144 bytes")
        )
    refs = meta.get("ownerReferences") or []
    for ref in refs:
        for key, what in (("apiVersion", "version"), ("kind", "kind"), ("name", "name"), ("uid", "uid")):
            if not ref.get(key):
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        f"metadata.ownerReferences.{key}",
                        f'Invalid value: "": {what} must not be empty',
                    )
                )
    if sum(1 for ref in refs if ref.get("controller")) > 1:
        causes.append(
            Cause(
                "FieldValueInvalid",
                "metadata.ownerReferences",
                "Invalid value: ...: Only one reference can have Controller set to true",
            )
        )
    if info_plural == "pods":
        spec = obj.get("spec") or {}
        for field in ("hostname", "subdomain"):
            v = spec.get(field)
            if v and (len(v) > 63 or not _DNS1123_LABEL.match(v)):
                msg = (
                    "must be no more than 63 characters"
                    if len(v) > 63
                    else "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
                )
                causes.append(
                    Cause("FieldValueInvalid", f"spec.{field}", f"Invalid value: {json.dumps(v)}: {msg}")
                )
    return causes


class KubeletHooks(Protocol):
    """What the API server tells the kubelet (see kubelet.py)."""

    def pod_created(self, pod: dict[str, Any]) -> None: ...
    def pod_deleting(self, pod: dict[str, Any], grace: float) -> None: ...
    def pod_removed(self, pod: dict[str, Any]) -> None: ...
    def log_path(self, namespace: str, name: str) -> Path | None: ...


@dataclass
class Event:
    rv: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


class Watcher:
    """One watch stream's filter and queue."""

    def __init__(
        self, namespace: str | None, name: str | None, label: Callable | None, field: Callable | None
    ):
        self.namespace, self.name, self.label, self.field = namespace, name, label, field
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        if self.label is not None and not self.label(obj):
            return False
        return self.field is None or self.field(obj)

    def translate(self, ev: Event) -> tuple[str, dict[str, Any]] | None:
        """The event as this watcher sees it (selector transitions become ADDED/DELETED)."""
        new_ok = self.matches(ev.obj)
        if ev.type != "MODIFIED" or ev.old is None:
            return (ev.type, ev.obj) if new_ok else None
        old_ok = self.matches(ev.old)
        if old_ok and new_ok:
            return ("MODIFIED", ev.obj)
        if new_ok:
            return ("ADDED", ev.obj)
        if old_ok:
            return ("DELETED", ev.obj)
        return None

    def offer(self, ev: Event) -> None:
        item = self.translate(ev)
        if item is not None:
            self.queue.put_nowait(item)


class ApiServer:
    """The in-memory API server. Create with a kubelet, then serve `app()` (aiohttp)."""

    def __init__(
        self,
        kubelet: KubeletHooks | None = None,
        namespaces: tuple[str, ...] = ("default", "kube-system", "kube-public", "kube-node-lease"),
    ):
        self.kubelet = kubelet
        self.rv = 0
        self.audit: list[AuditRecord] = []
        self.resources: dict[Key, ResourceInfo] = {}
        self.data: dict[Key, dict[str, dict[str, dict[str, Any]]]] = collections.defaultdict(dict)
        # Watch events kept per resource for resumption; older resourceVersions get 410 Gone.
        self.history_limit = HISTORY_PER_RESOURCE
        self.history: dict[Key, collections.deque[Event]] = collections.defaultdict(
            lambda: collections.deque(maxlen=self.history_limit)
        )
        self.evicted: dict[Key, int] = collections.defaultdict(int)
        self.watchers: dict[Key, set[Watcher]] = collections.defaultdict(set)
        self.dependents: dict[str, set[tuple[Key, str, str]]] = collections.defaultdict(set)
        self.uids: dict[str, tuple[Key, str, str]] = {}
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # set by Sandbox once serving
        self.loop_thread = 0
        self._pending_policy: dict[tuple[Key, str, str], str] = {}
        self._terminating: set[str] = set()  # namespaces being deleted
        for info in builtin_resources():
            self.resources[info.key] = info
        for ns in namespaces:
            self.create_object(self.resources[("", "namespaces")], "", {"metadata": {"name": ns}})
        self.create_object(self.resources[("", "nodes")], "", self._node())

    # ---- catalog ---------------------------------------------------------------------------------

    def _node(self) -> dict[str, Any]:
        cpus = str(os.cpu_count() or 1)
        mem = (
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
            if hasattr(os, "sysconf")
            else "8Gi"
        )
        cap = {"cpu": cpus, "memory": mem, "pods": "1000", "ephemeral-storage": "100Gi"}
        return {
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "mnv2-sandbox",
                },
            },  # fmt: skip
            "spec": {},
            "status": {
                "capacity": cap,
                "allocatable": cap,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "sandbox kubelet is ready",
                        "lastHeartbeatTime": now_iso(),
                        "lastTransitionTime": now_iso(),
                    }
                ],  # fmt: skip
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": NODE_NAME},
                ],
                "nodeInfo": {
                    "kubeletVersion": SERVER_VERSION["gitVersion"],
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "local processes",
                    "kernelVersion": os.uname().release,
                    "bootID": "sandbox",
                    "machineID": "sandbox",
                    "systemUUID": "sandbox",
                    "kubeProxyVersion": "",
                    "containerRuntimeVersion": "mnv2-sandbox://process",
                },  # fmt: skip
            },
        }

    def find(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        info = self.resources.get((group, plural))
        if info is None or version not in info.versions:
            return None
        return info

    def resource_for_kind(self, api_version: str, kind: str) -> ResourceInfo | None:
        group, _, version = api_version.rpartition("/")
        for info in self.resources.values():
            if info.group == group and info.kind == kind and version in info.versions:
                return info
        return None

    # ---- store primitives ------------------------------------------------------------------------

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the server's loop when called from another thread (tests reading the store)."""
        loop = self.loop
        if loop is None or not loop.is_running() or threading.get_ident() == self.loop_thread:
            return fn()

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(30)

    def snapshot(self, info: ResourceInfo, namespace: str | None = None) -> list[dict[str, Any]]:
        """Thread-safe copy of the stored objects of a resource (optionally one namespace)."""
        return self._in_loop(lambda: clone(self.iter_objects(info, namespace)))

    def get(self, info: ResourceInfo, namespace: str, name: str) -> dict[str, Any] | None:
        return self.data[info.key].get(namespace if info.namespaced else "", {}).get(name)

    def iter_objects(self, info: ResourceInfo, namespace: str | None) -> list[dict[str, Any]]:
        if self.loop is not None and threading.get_ident() != self.loop_thread:
            return self.snapshot(info, namespace)
        buckets = self.data[info.key]
        if namespace is not None and info.namespaced:
            return list(buckets.get(namespace, {}).values())
        return [o for b in buckets.values() for o in b.values()]

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, info: ResourceInfo, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ev = Event(int(obj["metadata"]["resourceVersion"]), type_, obj, old)
        hist = self.history[info.key]
        if len(hist) == hist.maxlen:
            self.evicted[info.key] = hist[0].rv
        hist.append(ev)
        for w in list(self.watchers[info.key]):
            w.offer(ev)

    def _index_owners(self, info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        ref = (info.key, meta.get("namespace", ""), meta["name"])
        if old is not None:
            for o in old["metadata"].get("ownerReferences") or []:
                self.dependents[o.get("uid", "")].discard(ref)
        for o in meta.get("ownerReferences") or []:
            self.dependents[o.get("uid", "")].add(ref)

    def _store(self, info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        ns = meta.get("namespace", "") if info.namespaced else ""
        self.data[info.key].setdefault(ns, {})[meta["name"]] = obj
        self.uids[meta["uid"]] = (info.key, ns, meta["name"])
        self._index_owners(info, obj, old)
        self._emit(info, "MODIFIED" if old is not None else "ADDED", obj, old)

    # ---- create ----------------------------------------------------------------------------------

    def create_object(self, info: ResourceInfo, namespace: str, body: dict[str, Any], params: dict[str, str] | None = None,
                      warnings: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        """Create an object (POST). Returns the stored object."""
        params = params or {}
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = clone(body)
        if info.group == "authorization.k8s.io":
            # `kubectl auth can-i` and friends: the sandbox authorizes everything (nothing is stored).
            obj["status"] = {"allowed": True, "reason": "the mnv2 sandbox does not enforce authorization"}
            if info.kind == "SelfSubjectRulesReview":
                obj["status"] = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                                 "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": False}  # fmt: skip
            return obj
        obj["apiVersion"] = obj.get("apiVersion") or info.group_version()
        obj["kind"] = obj.get("kind") or info.kind
        if obj["kind"] != info.kind:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj['apiVersion']}) does not match the expected API version ({info.group_version()}) or kind {obj['kind']!r} is not {info.kind!r}",
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if info.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
            if namespace not in self.data[("", "namespaces")].get("", {}):
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            ns_obj = self.data[("", "namespaces")][""][namespace]
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{info.qualified} "{meta.get("name", "")}" is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
                )
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(
                    random.choices(string.ascii_lowercase + string.digits, k=5)
                )
            else:
                raise invalid(
                    info,
                    "",
                    [
                        Cause(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
        name = meta["name"]
        causes = name_causes(info.plural, name) + metadata_causes(info.plural, obj)
        if causes:
            raise invalid(info, name, causes)
        if self.get(info, namespace, name) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{info.qualified} "{name}" already exists',
                {"name": name, "group": info.group, "kind": info.plural},
            )
        for k in (
            "resourceVersion",
            "uid",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(k, None)
        if info.crd:
            obj = self._custom(info, obj, warnings, params)
            meta = obj["metadata"]
            if "status" in info.subresources:
                obj.pop("status", None)
        else:
            self._prepare_builtin_create(info, obj)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["generation"] = 1
        if params.get("dryRun"):
            meta["resourceVersion"] = str(self.rv)
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._store(info, obj, None)
        self._after_create(info, obj)
        return obj

    def _custom(
        self, info: ResourceInfo, obj: dict[str, Any], warnings: list[str] | None, params: dict[str, str]
    ) -> dict[str, Any]:
        version = obj["apiVersion"].rpartition("/")[2]
        schema = info.schemas.get(version) or info.schemas.get(info.versions[0])
        out, causes, unknown = process_custom_object(obj, schema)
        if causes:
            raise invalid(info, obj["metadata"].get("name", ""), causes)
        if unknown:
            mode = params.get("fieldValidation", "Warn")
            if mode == "Strict":
                text = ", ".join(f'unknown field "{u}"' for u in unknown)
                raise ApiError(400, "BadRequest", f"strict decoding error: {text}")
            if mode != "Ignore" and warnings is not None:
                warnings.extend(f'unknown field "{u}"' for u in unknown)
        out["apiVersion"] = info.group_version()
        return out

    def _prepare_builtin_create(self, info: ResourceInfo, obj: dict[str, Any]) -> None:
        if info.key == ("", "pods"):
            spec = obj.setdefault("spec", {})
            if not spec.get("containers"):
                raise invalid(
                    info,
                    obj["metadata"]["name"],
                    [Cause("FieldValueRequired", "spec.containers", "Required value")],
                )
            for i, c in enumerate(spec["containers"]):
                if not c.get("name"):
                    raise invalid(
                        info,
                        obj["metadata"]["name"],
                        [Cause("FieldValueRequired", f"spec.containers[{i}].name", "Required value")],
                    )
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
            # One node: every pod is bound to it, whatever its nodeSelector/affinity say.
            spec["nodeName"] = NODE_NAME
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort",
                             "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso()}]}  # fmt: skip
        elif info.key == ("", "secrets"):
            self._secret_defaults(obj)
        elif info.key == ("", "services"):
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec.get("clusterIP") != "None":
                spec["clusterIP"] = f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}"
                spec["clusterIPs"] = [spec["clusterIP"]]
            for p in spec.get("ports") or []:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
            obj.setdefault("status", {"loadBalancer": {}})
        elif info.key == ("", "namespaces"):
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            try:
                res = resource_from_crd(obj)
            except CRDError as e:
                raise invalid(
                    info,
                    obj["metadata"].get("name", ""),
                    [Cause("FieldValueInvalid", f, m) for f, m in e.causes],
                ) from None
            existing = self.resources.get(res.key)
            if existing is not None and not existing.crd:
                raise invalid(
                    info,
                    obj["metadata"]["name"],
                    [
                        Cause(
                            "FieldValueInvalid",
                            "spec.names.plural",
                            f"Invalid value: {res.plural!r}: conflicts with a built-in resource",
                        )
                    ],
                )
            obj["status"] = self._crd_status(obj)

    @staticmethod
    def _secret_defaults(obj: dict[str, Any]) -> None:
        """As the real server: type defaults to Opaque; stringData is folded into data (base64)."""
        obj["type"] = obj.get("type") or "Opaque"
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    def _crd_status(self, crd: dict[str, Any]) -> dict[str, Any]:
        spec = crd.get("spec") or {}
        t = now_iso()
        return {
            "acceptedNames": spec.get("names") or {},
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": t,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": t,
                },
            ],
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        }

    def _after_create(self, info: ResourceInfo, obj: dict[str, Any]) -> None:
        if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            res = resource_from_crd(obj)
            self.resources[res.key] = res
        elif info.key == ("", "namespaces"):
            sa = self.resources[("", "serviceaccounts")]
            name = obj["metadata"]["name"]
            if self.get(sa, name, "default") is None:
                self.create_object(sa, name, {"metadata": {"name": "default"}})
        elif info.key == ("", "pods") and self.kubelet is not None:
            self.kubelet.pod_created(obj)

    # ---- update / patch --------------------------------------------------------------------------

    def update_object(self, info: ResourceInfo, namespace: str, name: str, body: dict[str, Any], subresource: str = "",
                      params: dict[str, str] | None = None, warnings: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        """Replace an object (PUT), honouring the status subresource and resourceVersion preconditions."""
        params = params or {}
        old = self.get(info, namespace, name)
        if old is None:
            raise not_found(info, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        meta_in = body.get("metadata") or {}
        if meta_in.get("name") and meta_in["name"] != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta_in['name']}) does not match the name on the URL ({name})",
            )
        rv_in = meta_in.get("resourceVersion")
        if rv_in and rv_in != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {info.qualified} "{name}": the object has been modified; please apply your changes to the latest version and try again',
                           {"name": name, "group": info.group, "kind": info.plural})  # fmt: skip
        if subresource == "status":
            new = clone(old)
            if "status" in body:
                new["status"] = clone(body["status"])
            else:
                new.pop("status", None)
        else:
            new = clone(body)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if "status" in info.subresources:
                if "status" in old:
                    new["status"] = clone(old["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for k in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "generation",
            ):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            causes = metadata_causes(info.plural, new)
            if causes:
                raise invalid(info, name, causes)
            if info.crd:
                new = self._custom(info, new, warnings, params)
            if info.key == ("", "pods"):
                new.setdefault("spec", {})["nodeName"] = NODE_NAME
            if info.key == ("", "secrets"):
                self._secret_defaults(new)
            if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                try:
                    resource_from_crd(new)
                except CRDError as e:
                    raise invalid(
                        info, name, [Cause("FieldValueInvalid", f, m) for f, m in e.causes]
                    ) from None
                new["status"] = old.get("status") or self._crd_status(new)
        return self._commit_update(info, old, new, dry_run=bool(params.get("dryRun")))

    def _spec_changed(self, info: ResourceInfo, old: dict[str, Any], new: dict[str, Any]) -> bool:
        if info.crd:
            strip = ("metadata", "status")
            return {k: v for k, v in old.items() if k not in strip} != {
                k: v for k, v in new.items() if k not in strip
            }
        return old.get("spec") != new.get("spec")

    def _commit_update(
        self, info: ResourceInfo, old: dict[str, Any], new: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        meta = new["metadata"]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if self._spec_changed(info, old, new):
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        if new == old:
            return old  # a no-op write does not bump resourceVersion, as on a real server
        if dry_run:
            return new
        meta["resourceVersion"] = self._next_rv()
        self._store(info, new, old)
        if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            res = resource_from_crd(new)
            self.resources[res.key] = res
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not self._awaiting_kubelet(info, new)
        ):
            ns = meta.get("namespace", "") if info.namespaced else ""
            # The propagation policy given with the DELETE applies once the finalizers are gone.
            self._finalize_delete(
                info, new, self._pending_policy.get((info.key, ns, meta["name"]), "Background")
            )
        return new

    def patch_object(self, info: ResourceInfo, namespace: str, name: str, content_type: str, raw: bytes, subresource: str = "",
                     params: dict[str, str] | None = None, warnings: list[str] | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """Apply a merge/JSON/strategic/apply patch (PATCH). Returns (HTTP code, object)."""
        params = params or {}
        ctype = content_type.split(";")[0].strip()
        old = self.get(info, namespace, name)
        try:
            if ctype == "application/apply-patch+yaml":
                patch = yaml.safe_load(raw)
            else:
                patch = json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"the patch could not be decoded: {e}") from None
        if old is None:
            if ctype == "application/apply-patch+yaml":
                # Server-side apply creates what does not exist.
                return 201, self.create_object(info, namespace, patch, params, warnings)
            raise not_found(info, name)
        try:
            if ctype == "application/merge-patch+json":
                new = patching.merge_patch(old, patch)
            elif ctype == "application/json-patch+json":
                new = patching.json_patch(old, patch)
            elif ctype == "application/strategic-merge-patch+json":
                if info.crd:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    )
                new = patching.strategic_merge_patch(old, patch)
            elif ctype == "application/apply-patch+yaml":
                # Server-side apply without field ownership: the applied fields win (no removals).
                new = patching.merge_patch(old, _drop_nulls(patch))
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ctype!r})",
                )
        except patching.PatchError as e:
            raise ApiError(422, "Invalid", str(e)) from None
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the patch did not produce an object")
        return 200, self.update_object(info, namespace, name, new, subresource, params, warnings)

    # ---- delete & garbage collection -------------------------------------------------------------

    def _awaiting_kubelet(self, info: ResourceInfo, obj: dict[str, Any]) -> bool:
        """Pods being deleted stay until the kubelet has stopped their process."""
        return (
            info.key == ("", "pods")
            and self.kubelet is not None
            and not obj["metadata"].get("x-sandbox-released")
        )

    def delete_object(
        self, info: ResourceInfo, namespace: str, name: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """DELETE: graceful for pods and objects with finalizers; cascades to dependents."""
        options = options or {}
        old = self.get(info, namespace, name)
        if old is None:
            raise not_found(info, name)
        pre = options.get("preconditions") or {}
        if (pre.get("uid") and pre["uid"] != old["metadata"]["uid"]) or (
            pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {info.qualified} "{name}": Precondition failed',
                {"name": name, "kind": info.plural},
            )
        if options.get("dryRun"):
            return old
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        meta = old["metadata"]
        is_pod = info.key == ("", "pods")
        grace: Any = options.get("gracePeriodSeconds")
        if is_pod:
            if grace is None:
                grace = meta.get(
                    "deletionGracePeriodSeconds",
                    (old.get("spec") or {}).get("terminationGracePeriodSeconds", 30),
                )
            grace = min(float(grace), POD_GRACE_CAP)
        if meta.get("deletionTimestamp"):
            if is_pod and self.kubelet is not None and grace is not None:
                self.kubelet.pod_deleting(old, grace)  # a shorter grace period shortens the wait
            return old
        if info.key == ("", "namespaces"):
            # Terminating until every object in it is gone (pods stop, finalizers run), as for real.
            new = clone(old)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new.setdefault("status", {})["phase"] = "Terminating"
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store(info, new, old)
            self._terminating.add(name)
            self._drop_namespace(name)
            self._namespace_done(name)
            return self.get(info, "", name) or new
        if policy == "Foreground" and self.dependents.get(meta["uid"]):
            # Foreground: the owner waits (deletionTimestamp + foregroundDeletion finalizer) until
            # the garbage collector has deleted its dependents, then goes itself.
            new = clone(old)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["finalizers"] = [*(meta.get("finalizers") or []), FOREGROUND]
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store(info, new, old)
            self._collect(meta["uid"], "Foreground")
            return self.get(info, namespace, name) or new
        if meta.get("finalizers") or (is_pod and self.kubelet is not None):
            new = clone(old)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["metadata"]["deletionGracePeriodSeconds"] = int(grace) if is_pod else 0
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store(info, new, old)
            self._pending_policy[(info.key, namespace, name)] = policy
            if is_pod and self.kubelet is not None:
                self.kubelet.pod_deleting(new, grace)
            return new
        return self._finalize_delete(info, old, policy)

    def release_pod(self, namespace: str, name: str) -> None:
        """Called by the kubelet once a deleted pod's process is gone: remove it unless finalizers remain."""
        info = self.resources[("", "pods")]
        pod = self.get(info, namespace, name)
        if pod is None or not pod["metadata"].get("deletionTimestamp"):
            return
        if pod["metadata"].get("finalizers"):
            new = clone(pod)
            new["metadata"]["x-sandbox-released"] = True  # internal marker, stripped on output
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store(info, new, pod)
            return
        self._finalize_delete(info, pod, self._pending_policy.pop((info.key, namespace, name), "Background"))

    def _finalize_delete(self, info: ResourceInfo, obj: dict[str, Any], policy: str) -> dict[str, Any]:
        meta = obj["metadata"]
        ns = meta.get("namespace", "") if info.namespaced else ""
        bucket = self.data[info.key].get(ns, {})
        if bucket.get(meta["name"]) is not obj:
            return obj
        del bucket[meta["name"]]
        self.uids.pop(meta["uid"], None)
        self._pending_policy.pop((info.key, ns, meta["name"]), None)
        for o in meta.get("ownerReferences") or []:
            self.dependents[o.get("uid", "")].discard((info.key, ns, meta["name"]))
            self._foreground_done(o.get("uid", ""))
        gone = clone(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(info, "DELETED", gone, None)
        if info.key == ("", "pods") and self.kubelet is not None:
            self.kubelet.pod_removed(gone)
        if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._drop_crd(gone)
        if info.key == ("", "namespaces"):
            self._terminating.discard(meta["name"])
        elif ns in self._terminating:
            self._namespace_done(ns)
        self._collect(meta["uid"], policy)
        return gone

    def _namespace_done(self, namespace: str) -> None:
        """Remove a terminating namespace once nothing is left in it."""
        if any(self.data[info.key].get(namespace) for info in self.resources.values() if info.namespaced):
            return
        info = self.resources[("", "namespaces")]
        ns_obj = self.get(info, "", namespace)
        if ns_obj is not None and not ns_obj["metadata"].get("finalizers"):
            self._finalize_delete(info, ns_obj, "Background")

    def _foreground_done(self, owner_uid: str) -> None:
        """Release an owner in foreground deletion once its last dependent is gone."""
        where = self.uids.get(owner_uid)
        if where is None or self.dependents.get(owner_uid):
            return
        info = self.resources.get(where[0])
        owner = self.get(info, where[1], where[2]) if info else None
        if info is None or owner is None or FOREGROUND not in (owner["metadata"].get("finalizers") or []):
            return
        new = clone(owner)
        new["metadata"]["finalizers"] = [f for f in new["metadata"]["finalizers"] if f != FOREGROUND]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self._commit_update(info, owner, new)

    def _collect(self, owner_uid: str, policy: str) -> None:
        """Garbage collection: delete (or orphan) the dependents of a deleted owner."""
        deps = (
            self.dependents.get(owner_uid, set())
            if policy == "Foreground"
            else self.dependents.pop(owner_uid, set())
        )
        for key, ns, name in list(deps):
            info = self.resources.get(key)
            dep = self.get(info, ns, name) if info else None
            if info is None or dep is None:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            live_others = any(r.get("uid") != owner_uid and r.get("uid") in self.uids for r in refs)
            if policy == "Orphan" or live_others:
                # Orphaned, or kept by another live owner: only the reference to this owner goes.
                new = clone(dep)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                self._commit_update(info, dep, new)
                continue
            with contextlib.suppress(ApiError):
                self.delete_object(
                    info,
                    ns,
                    name,
                    {"propagationPolicy": "Foreground" if policy == "Foreground" else "Background"},
                )

    def _drop_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        info = self.resources.get(key)
        if info is None or not info.crd:
            return
        for obj in self.iter_objects(info, None):
            self._finalize_delete(info, obj, "Background")
        del self.resources[key]
        for w in self.watchers.pop(key, set()):
            w.queue.put_nowait(None)

    def _drop_namespace(self, namespace: str) -> None:
        for info in list(self.resources.values()):
            if not info.namespaced:
                continue
            for obj in list(self.data[info.key].get(namespace, {}).values()):
                with contextlib.suppress(ApiError):
                    self.delete_object(
                        info, namespace, obj["metadata"]["name"], {"propagationPolicy": "Background"}
                    )

    # ---- kubelet helpers -------------------------------------------------------------------------

    def update_pod_status(
        self, namespace: str, name: str, mutate: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        """Let the kubelet change a pod's status in place of a /status PATCH (same events)."""
        info = self.resources[("", "pods")]
        old = self.get(info, namespace, name)
        if old is None:
            return None
        new = clone(old)
        status = new.setdefault("status", {})
        mutate(status)
        return self._commit_update(info, old, new)

    # ---- list & watch ----------------------------------------------------------------------------

    def list_objects(
        self, info: ResourceInfo, namespace: str | None, params: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str]:
        try:
            label = parse_label_selector(params.get("labelSelector"))
            field = parse_field_selector(params.get("fieldSelector"), info.plural)
        except SelectorError as e:
            raise ApiError(400, "BadRequest", str(e)) from None
        items = [
            o
            for o in self.iter_objects(info, namespace)
            if (label is None or label(o)) and (field is None or field(o))
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        cont = ""
        if params.get("continue"):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(params["continue"])))
            except ValueError:
                raise ApiError(400, "BadRequest", "continue key is not valid") from None
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        limit = int(params.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            cont = base64.urlsafe_b64encode(
                json.dumps([last.get("namespace", ""), last["name"]]).encode()
            ).decode()
        return items, cont


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def output(obj: dict[str, Any], info: ResourceInfo, version: str) -> dict[str, Any]:
    """The object as served at `version` (custom resources are stored once, served at every version)."""
    meta = obj.get("metadata") or {}
    want = info.group_version(version)
    if obj.get("apiVersion") == want and "x-sandbox-released" not in meta:
        return obj
    out = dict(obj)
    out["apiVersion"] = want
    if "x-sandbox-released" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "x-sandbox-released"}
    return out
