"""The CustomResourceDefinition, generated from the pydantic models in ``spec.py``.

Kubernetes wants a *structural* OpenAPI v3 schema: no ``$ref``, no ``anyOf`` for plain optional
fields, a ``type`` on every node, ``additionalProperties`` never beside ``properties``. Pydantic emits
JSON Schema 2020-12; ``structural`` converts one into the other. Descriptions become ``kubectl explain``
text, so every field in ``spec.py`` has one.

The generated YAML is checked in twice (``manifests/crd/`` for plain installs and the Helm chart's
``crds/``); the checkout's ``tools/write_crd.py`` regenerates both and a unit test fails when they drift
from the models.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

from mnv2_operator import constants as C
from mnv2_operator import spec as S

CRD_FILENAME = f"{C.PLURAL}.yaml"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the job."},
    {
        "name": "Epoch",
        "type": "integer",
        "jsonPath": ".status.progress.epoch",
        "description": "Epochs completed.",
    },
    {
        "name": "Epochs",
        "type": "integer",
        "jsonPath": ".status.progress.totalEpochs",
        "description": "Epochs the job trains.",
    },
    {
        "name": "Top-1",
        "type": "number",
        "jsonPath": ".status.metrics.top1",
        "description": "Top-1 accuracy of the latest validation (0..1).",
    },
    {
        "name": "Top-5",
        "type": "number",
        "jsonPath": ".status.metrics.top5",
        "description": "Top-5 accuracy of the latest validation (0..1).",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.progress.loss",
        "description": "Latest training loss.",
    },
    {
        "name": "Restarts",
        "type": "integer",
        "jsonPath": ".status.restarts",
        "description": "Gang restarts so far.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # `kubectl get -o wide` adds these.
    {
        "name": "Best-Top-1",
        "type": "number",
        "jsonPath": ".status.metrics.bestTop1",
        "description": "Best top-1 accuracy so far.",
        "priority": 1,
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nodes", "priority": 1},
    {"name": "Devices", "type": "integer", "jsonPath": ".spec.devicesPerNode", "priority": 1},
    {"name": "Accelerator", "type": "string", "jsonPath": ".spec.accelerator.type", "priority": 1},
]

# JSON Schema keywords that Kubernetes' OpenAPI v3 subset accepts and we carry over unchanged.
_KEEP = (
    "type",
    "format",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)


def structural(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool = True) -> dict[str, Any]:
    """Convert one pydantic JSON-schema node into a structural Kubernetes schema node.

    Args:
        node: the pydantic schema node.
        defs: pydantic's ``$defs`` (every ``$ref`` is inlined).
        defaults: carry scalar defaults over (the API server then stores them in the object).
    """
    if "$ref" in node:
        return _structural_ref(node, defs, defaults=defaults)
    if "anyOf" in node:
        return _structural_any_of(node, defs, defaults=defaults)
    out = _structural_keywords(node)
    kind = node.get("type")
    if kind == "object":
        out.update(_structural_object(node, defs, defaults=defaults))
    elif kind == "array":
        out["items"] = structural(node["items"], defs, defaults=defaults)
    elif kind is None and "enum" not in out:
        raise ValueError(f"schema node without a type: {node}")
    if kind is None and "enum" in out:
        out["type"] = "string"
    _copy_default(node, out, defaults=defaults)
    return out


def _structural_ref(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """A ``$ref`` node: the referenced definition inlined, with the referring node's description."""
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    out = structural(target, defs, defaults=defaults)
    if node.get("description"):
        out["description"] = node["description"]
    return out


def _structural_any_of(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """An ``anyOf`` node: an optional field's one type, or int-or-string for quantities."""
    branches = [b for b in node["anyOf"] if b.get("type") != "null"]
    types = sorted(b.get("type", "") for b in branches)
    if types == ["integer", "string"]:
        # Kubernetes quantities are written as 4 or "500m".
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    elif len(branches) == 1:
        out = structural(branches[0], defs, defaults=defaults)
    else:
        raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
    if node.get("description"):
        out["description"] = node["description"]
    _copy_default(node, out, defaults=defaults)
    return out


def _structural_keywords(node: dict[str, Any]) -> dict[str, Any]:
    """The node's own keywords in OpenAPI v3.0 terms: kept ones, const as enum, bounds, description."""
    out = {k: node[k] for k in _KEEP if k in node}
    if "const" in node:
        out["enum"] = [node["const"]]
    # JSON Schema 2020-12 exclusive bounds are numbers; OpenAPI v3.0's are booleans.
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in node:
            out[bound] = node[key]
            out[key] = True
    if node.get("description"):
        out["description"] = node["description"]
    return out


def _structural_object(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """An object node's properties (and required), its value schema, or preserve-unknown-fields."""
    props = node.get("properties")
    extra = node.get("additionalProperties")
    if props:
        out: dict[str, Any] = {
            "properties": {k: structural(v, defs, defaults=defaults) for k, v in props.items()}
        }
        if node.get("required"):
            out["required"] = list(node["required"])
        return out
    if isinstance(extra, dict):
        return {"additionalProperties": structural(extra, defs, defaults=defaults)}
    # A free-form map (spec.config): validated by the operator with the trainer's config code.
    return {"x-kubernetes-preserve-unknown-fields": True}


def _copy_default(node: dict[str, Any], out: dict[str, Any], *, defaults: bool) -> None:
    """Carry a scalar default over into ``out`` when ``defaults`` is on."""
    default = node.get("default")
    if defaults and isinstance(default, str | int | float | bool):
        out["default"] = default


def _model_schema(model: type[BaseModel], *, defaults: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    out = structural(raw, raw.get("$defs", {}), defaults=defaults)
    if defaults:
        _object_defaults(model, out)
    return out


def _object_defaults(model: type[BaseModel], node: dict[str, Any]) -> None:
    """``default: {}`` on sub-objects that pydantic builds by default (runPolicy, scheduling, ...).

    The API server defaults a field only inside an object that exists; an empty default object makes it
    fill in e.g. ``runPolicy.backoffLimit: 3`` even when the job has no ``runPolicy``, so the stored
    object shows the values the operator uses.
    """
    for name, info in model.model_fields.items():
        sub = info.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            continue
        prop = node["properties"][info.alias or name]
        if info.default_factory is not None:
            prop["default"] = {}
        _object_defaults(sub, prop)


def crd_object() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": C.CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "mnv2-operator",
                "app.kubernetes.io/part-of": "mnv2-operator",
            },
        },
        "spec": {
            "group": C.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": C.KIND,
                "listKind": f"{C.KIND}List",
                "plural": C.PLURAL,
                "singular": C.SINGULAR,
                "shortNames": list(C.SHORT_NAMES),
                "categories": ["mnv2"],
            },
            "versions": [
                {
                    "name": C.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": _root_schema()},
                }
            ],
        },
    }


def _root_schema() -> dict[str, Any]:
    """The schema of the whole object: apiVersion, kind, metadata, spec and status."""
    return {
        "type": "object",
        "description": (
            "Trains (or validates) MobileNetV2 with MindSpore's msrun on Ascend NPU "
            "or CPU nodes: one pod per node, a gang restart from the latest checkpoint "
            "on failure, progress and accuracy in the status."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _spec_schema(),
            "status": _status_schema(),
        },
    }


def _spec_schema() -> dict[str, Any]:
    """``JobSpec``'s schema, with defaults and the list of model names."""
    spec_schema = _model_schema(S.JobSpec, defaults=True)
    # The model name is a plain string in Python (its validator gives a better message than an enum
    # error), but the API server and `kubectl explain` should know the list too.
    from mnv2_trainer.model_names import MODEL_NAMES

    spec_schema["properties"]["model"]["properties"]["name"]["enum"] = list(MODEL_NAMES)
    return spec_schema


def _status_schema() -> dict[str, Any]:
    """``JobStatus``'s schema: no defaults, conditions a list-map keyed by type."""
    # Status defaults would be written by the API server on every status patch: none there.
    status_schema = _model_schema(S.JobStatus, defaults=False)
    status_schema["description"] = (S.JobStatus.__doc__ or "").strip().splitlines()[0]
    # metav1.Condition lists are maps keyed by type (server-side apply merges them entry by entry).
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return status_schema


def crd_yaml() -> str:
    """The CRD as YAML with a header saying where it comes from."""
    header = (
        "# Generated by `python tools/write_crd.py` from operator/mnv2_operator/spec.py. Do not edit by hand:\n"
        "# change the models and regenerate (a unit test fails when this file drifts from them).\n"
    )
    return header + yaml.safe_dump(crd_object(), sort_keys=False, width=100, allow_unicode=True)


def crd_cli() -> int:
    """``mnv2 crd``: print the CRD."""
    sys.stdout.write(crd_yaml())
    return 0
