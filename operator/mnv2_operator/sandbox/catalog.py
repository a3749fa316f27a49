"""The resource catalog: built-in kinds (discovery data shipped with kmock) plus registered CRDs."""

from __future__ import annotations

import gzip
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any

# Built-in group/versions the sandbox stores objects for. Review-style APIs (create-only) and
# aggregated APIs (metrics) are left out: the sandbox has nothing behind them.
SERVED_GROUP_VERSIONS = (
    "v1",
    "apps/v1",
    "batch/v1",
    "events.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "coordination.k8s.io/v1",
    "apiextensions.k8s.io/v1",
    "policy/v1",
    "scheduling.k8s.io/v1",
    "networking.k8s.io/v1",
    "storage.k8s.io/v1",
    "discovery.k8s.io/v1",
    "node.k8s.io/v1",
    "authorization.k8s.io/v1",  # access reviews: answered "allowed" (authorization is not enforced)
)
SKIPPED_RESOURCES = {"bindings", "componentstatuses"}
# The sandbox implements these subresources; others (exec, portforward, scale, ...) are not listed.
SERVED_SUBRESOURCES = {"status", "log"}


@dataclass
class ResourceInfo:
    """What the server knows about one resource (one plural in one group)."""

    group: str
    versions: list[str]  # served versions, the first is the preferred/storage version
    plural: str
    singular: str
    kind: str
    namespaced: bool
    verbs: list[str]
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    subresources: set[str] = field(default_factory=set)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> openAPIV3Schema
    printer_columns: dict[str, list[dict[str, Any]]] | None = None  # version -> columns (CRDs)
    list_kind: str = ""
    crd: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def group_version(self, version: str | None = None) -> str:
        version = version or self.versions[0]
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified(self) -> str:
        """`pods` or `mobilenetv2trainingjobs.training.mnv2.dev`, as in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """`Pod` or `MobileNetV2TrainingJob.training.mnv2.dev`, as in 422 messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def discovery_entries(self) -> list[dict[str, Any]]:
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs,
        }
        if self.short_names:
            main["shortNames"] = self.short_names
        if self.categories:
            main["categories"] = self.categories
        out = [main]
        for sub in sorted(self.subresources):
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            out.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": verbs,
                }
            )
        return out


def builtin_resources() -> list[ResourceInfo]:
    """Built-in resources, from the real discovery documents kmock ships (resources.json.gz)."""
    raw = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
    docs = json.loads(gzip.decompress(raw))
    out: list[ResourceInfo] = []
    for doc in docs:
        gv = doc["groupVersion"]
        if gv not in SERVED_GROUP_VERSIONS:
            continue
        group, _, version = gv.rpartition("/")
        subs: dict[str, set[str]] = {}
        for r in doc["resources"]:
            if "/" in r["name"]:
                base, sub = r["name"].split("/", 1)
                if sub in SERVED_SUBRESOURCES:
                    subs.setdefault(base, set()).add(sub)
        for r in doc["resources"]:
            if "/" in r["name"] or r["name"] in SKIPPED_RESOURCES:
                continue
            out.append(
                ResourceInfo(
                    group=group,
                    versions=[version],
                    plural=r["name"],
                    singular=r.get("singularName") or r["kind"].lower(),
                    kind=r["kind"],
                    namespaced=r["namespaced"],
                    verbs=list(r.get("verbs") or []),
                    short_names=list(r.get("shortNames") or []),
                    categories=list(r.get("categories") or []),
                    subresources=subs.get(r["name"], set()),
                    list_kind=f"{r['kind']}List",
                )
            )
    return out


class CRDError(ValueError):
    """A CustomResourceDefinition the sandbox refuses, with (field, message) causes."""

    def __init__(self, causes: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in causes))
        self.causes = causes


def resource_from_crd(crd: dict[str, Any]) -> ResourceInfo:
    """Build the ResourceInfo a CRD defines.

    Raises:
        CRDError: the CRD lacks what a real apiextensions server requires, naming the field.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    causes: list[tuple[str, str]] = []
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    if not group:
        causes.append(("spec.group", "Required value"))
    if not plural:
        causes.append(("spec.names.plural", "Required value"))
    if not names.get("kind"):
        causes.append(("spec.names.kind", "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            (
                "spec.scope",
                f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
            )
        )
    name = (crd.get("metadata") or {}).get("name")
    if plural and group and name != f"{plural}.{group}":
        causes.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not spec.get("versions"):
        causes.append(
            ("spec.versions", "Invalid value: null: must have exactly one version marked as storage version")
        )
    elif sum(1 for v in spec["versions"] if v.get("storage")) != 1:
        causes.append(
            ("spec.versions", "Invalid value: ...: must have exactly one version marked as storage version")
        )
    for i, v in enumerate(spec.get("versions") or []):
        if not ((v.get("schema") or {}).get("openAPIV3Schema")):
            causes.append(
                (f"spec.versions[{i}].schema.openAPIV3Schema", "Required value: schemas are required")
            )
    if causes:
        raise CRDError(causes)
    # Storage version first: it is the preferred version too.
    versions.sort(key=lambda v: not v.get("storage"))
    schemas = {v["name"]: v["schema"]["openAPIV3Schema"] for v in versions}
    columns = {v["name"]: list(v.get("additionalPrinterColumns") or []) for v in versions}
    subs = {"status"} if any("status" in (v.get("subresources") or {}) for v in versions) else set()
    return ResourceInfo(
        group=group,
        versions=[v["name"] for v in versions],
        plural=plural,
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec["scope"] == "Namespaced",
        verbs=["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        subresources=subs,
        schemas=schemas,
        printer_columns=columns,
        list_kind=names.get("listKind") or f"{names['kind']}List",
        crd=True,
    )
