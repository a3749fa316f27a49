"""Structural-schema handling of custom objects, as the API server does for CRDs.

Order as in the real server: apply `default`s, prune unknown fields (unless
`x-kubernetes-preserve-unknown-fields`), then validate (type, required, enum, minimum/maximum,
length, pattern, items, nullable, int-or-string, allOf/anyOf/oneOf/not). Errors are
`Cause`s carrying the real server's reasons and messages, so the 422 reads the same.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cause:
    """One field error, as in a Status's details.causes."""

    reason: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def text(self) -> str:
        return f"{self.field}: {self.message}"


def go_repr(value: Any) -> str:
    """Render a value roughly as Go's %#v does in apiserver messages."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# String formats the apiserver checks on custom resources (a subset of kube-openapi's strfmt).
_FORMATS = {
    "date-time": re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"),
    "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "uuid": re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"),
    "byte": re.compile(r"^[A-Za-z0-9+/]*={0,2}$"),
}

_TYPE_CHECK = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill `default`s of missing properties, recursively (defaults are themselves defaulted)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, sub_value in value.items():
            if key in props:
                value[key] = apply_defaults(sub_value, props[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                value[key] = apply_defaults(sub_value, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def prune(value: Any, schema: dict[str, Any], path: str, unknown: list[str], root: bool = False) -> Any:
    """Drop fields the schema does not declare; record their paths in `unknown`."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return value
    if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema or root):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        out = {}
        for key, sub in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                out[key] = sub
            elif key in props:
                out[key] = prune(sub, props[key], _child(path, key), unknown)
            elif isinstance(addl, dict):
                out[key] = prune(sub, addl, f"{path}[{key}]", unknown)
            elif addl is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                out[key] = sub
            else:
                unknown.append(_child(path, key))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"], f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    return value


def validate(value: Any, schema: dict[str, Any], path: str) -> list[Cause]:
    """Validate `value` at field path `path`; return every error found."""
    causes: list[Cause] = []
    if value is None:
        if schema.get("nullable"):
            return causes
        if schema.get("type"):
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    path,
                    f'Invalid value: "null": {path} in body must be of type {schema["type"]}: "null"',
                )
            )
        return causes
    stype = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    path,
                    f"Invalid value: {go_repr(value)}: {path} in body must be of type integer,string: {go_repr(type(value).__name__)}",
                )
            )
            return causes
    elif stype and stype in _TYPE_CHECK and not _TYPE_CHECK[stype](value):
        actual = {
            dict: "object",
            list: "array",
            str: "string",
            bool: "boolean",
            int: "integer",
            float: "number",
        }.get(type(value), type(value).__name__)
        causes.append(
            Cause(
                "FieldValueTypeInvalid",
                path,
                f"Invalid value: {go_repr(actual)}: {path} in body must be of type {stype}: {go_repr(actual)}",
            )
        )
        return causes
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(go_repr(v) for v in schema["enum"])
        causes.append(
            Cause(
                "FieldValueNotSupported",
                path,
                f"Unsupported value: {go_repr(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            lo = schema["minimum"]
            if value < lo or (schema.get("exclusiveMinimum") is True and value == lo):
                rel = "greater than" if schema.get("exclusiveMinimum") is True else "greater than or equal to"
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        path,
                        f"Invalid value: {go_repr(value)}: {path} in body should be {rel} {go_repr(lo)}",
                    )
                )
        if "maximum" in schema:
            hi = schema["maximum"]
            if value > hi or (schema.get("exclusiveMaximum") is True and value == hi):
                rel = "less than" if schema.get("exclusiveMaximum") is True else "less than or equal to"
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        path,
                        f"Invalid value: {go_repr(value)}: {path} in body should be {rel} {go_repr(hi)}",
                    )
                )
        if "multipleOf" in schema and schema["multipleOf"] and (value / schema["multipleOf"]) % 1:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {go_repr(value)}: {path} in body should be a multiple of {go_repr(schema['multipleOf'])}",
                )
            )
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(
                Cause(
                    "FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes"
                )
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {go_repr(value)}: {path} in body should be at least {schema['minLength']} chars long",
                )
            )
        fmt = schema.get("format")
        if fmt in _FORMATS and not _FORMATS[fmt].match(value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {go_repr(value)}: {path} in body must be of type {fmt}: {go_repr(value)}",
                )
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {go_repr(value)}: {path} in body should match '{schema['pattern']}'",
                )
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(
                Cause(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                )
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items",
                )
            )
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                causes.extend(validate(item, schema["items"], f"{path}[{i}]"))
        if schema.get("x-kubernetes-list-type") == "map" and schema.get("x-kubernetes-list-map-keys"):
            seen: set[str] = set()
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    key = json.dumps([item.get(k) for k in schema["x-kubernetes-list-map-keys"]])
                    if key in seen:
                        keys = ", ".join(
                            f"{k}={go_repr(item.get(k))}" for k in schema["x-kubernetes-list-map-keys"]
                        )
                        causes.append(
                            Cause(
                                "FieldValueDuplicate",
                                f"{path}[{i}]",
                                f"Duplicate value: map[string]interface {{}}{{{keys}}}",
                            )
                        )
                    seen.add(key)
        if schema.get("x-kubernetes-list-type") == "set" and len(
            {json.dumps(v, sort_keys=True) for v in value}
        ) != len(value):
            causes.append(Cause("FieldValueDuplicate", path, "Duplicate value"))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                causes.append(Cause("FieldValueRequired", _child(path, req), "Required value"))
        for key, sub in value.items():
            if key in props:
                causes.extend(validate(sub, props[key], _child(path, key)))
            elif isinstance(schema.get("additionalProperties"), dict):
                causes.extend(validate(sub, schema["additionalProperties"], f"{path}[{key}]"))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            causes.append(
                Cause(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
                )
            )
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least {schema['minProperties']} properties",
                )
            )
    for sub in schema.get("allOf") or []:
        causes.extend(validate(value, sub, path))
    if schema.get("anyOf") and all(validate(value, sub, path) for sub in schema["anyOf"]):
        causes.append(
            Cause(
                "FieldValueInvalid",
                path,
                f"Invalid value: {go_repr(value)}: {path} in body must match at least one schema in anyOf",
            )
        )
    if schema.get("oneOf"):
        ok = sum(1 for sub in schema["oneOf"] if not validate(value, sub, path))
        if ok != 1:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {go_repr(value)}: {path} in body must validate one and only one schema (oneOf)",
                )
            )
    if isinstance(schema.get("not"), dict) and not validate(value, schema["not"], path):
        causes.append(
            Cause(
                "FieldValueInvalid",
                path,
                f"Invalid value: {go_repr(value)}: {path} in body should not validate the schema in not",
            )
        )
    return causes


def process_custom_object(
    obj: dict[str, Any], schema: dict[str, Any] | None
) -> tuple[dict[str, Any], list[Cause], list[str]]:
    """Default, prune and validate a custom object against its version's openAPIV3Schema.

    Returns:
        (the defaulted and pruned object, validation errors, paths of pruned unknown fields)
    """
    if not schema:
        return obj, [], []
    obj = apply_defaults(copy.deepcopy(obj), schema)
    unknown: list[str] = []
    obj = prune(obj, schema, "", unknown, root=True)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    root_schema = dict(schema)
    root_props = {
        k: v
        for k, v in (schema.get("properties") or {}).items()
        if k not in ("apiVersion", "kind", "metadata")
    }
    root_schema["properties"] = root_props
    root_schema["required"] = [
        r for r in schema.get("required") or [] if r not in ("apiVersion", "kind", "metadata")
    ]
    root_schema.pop("type", None)
    return obj, validate(body, root_schema, ""), unknown
