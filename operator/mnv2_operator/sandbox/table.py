"""`meta.k8s.io/v1` Table responses, as `kubectl get` asks for (Accept: ...;as=Table).

CRDs print their additionalPrinterColumns (JSONPath evaluated here); built-in kinds print the
columns a real server prints for the common ones (pods, services, ...), else NAME and AGE.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

_TOKEN_RE = re.compile(
    r"\.([\w-]+)|\[(\d+|\*)\]|\[\?\(@\.([\w.-]+)\s*(==|!=)\s*(['\"])(.*?)\5\)\]|\['([^']+)'\]"
)


def jsonpath(obj: Any, expr: str) -> list[Any]:
    """Evaluate the JSONPath subset CRD printer columns use: `.a.b`, `[0]`, `[*]`, `[?(@.k=="v")]`."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    if expr.startswith("$"):
        expr = expr[1:]
    values = [obj]
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m:
            return []
        pos = m.end()
        field, index, fkey, fop, _, fval, qkey = m.groups()
        nxt: list[Any] = []
        for v in values:
            if field is not None or qkey is not None:
                key = field if field is not None else qkey
                if isinstance(v, dict) and key in v:
                    nxt.append(v[key])
            elif index is not None:
                if isinstance(v, list):
                    if index == "*":
                        nxt.extend(v)
                    elif int(index) < len(v):
                        nxt.append(v[int(index)])
            elif fkey is not None and isinstance(v, list):
                for item in v:
                    got = item
                    for part in fkey.split("."):
                        got = got.get(part) if isinstance(got, dict) else None
                    if (str(got) == fval) == (fop == "=="):
                        nxt.append(item)
        values = nxt
    return values


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (apimachinery/pkg/util/duration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"


def age(obj: dict[str, Any]) -> str:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return "<unknown>"
    return human_duration((dt.datetime.now(dt.UTC) - created).total_seconds())


def _col(
    name: str, type_: str = "string", description: str = "", priority: int = 0, fmt: str = ""
) -> dict[str, Any]:
    return {"name": name, "type": type_, "format": fmt, "description": description, "priority": priority}


NAME_COL = _col("Name", fmt="name", description="Name must be unique within a namespace.")
AGE_COL = _col(
    "Age",
    "date",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def pod_status_text(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state:
            reason = state["terminated"].get("reason") or (f"ExitCode:{state['terminated'].get('exitCode')}")
        elif "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
    return reason


def _pod_cells(pod: dict[str, Any]) -> list[Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    st = pod.get("status") or {}
    return [
        f"{ready}/{total}",
        pod_status_text(pod),
        restarts,
        age(pod),
        st.get("podIP") or "<none>",
        (pod.get("spec") or {}).get("nodeName") or "<none>",
    ]


def _svc_cells(svc: dict[str, Any]) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = (
        ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
    )
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", "<none>", ports, age(svc)]


def _deploy_cells(d: dict[str, Any]) -> list[Any]:
    spec, st = d.get("spec") or {}, d.get("status") or {}
    return [
        f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        st.get("updatedReplicas", 0),
        st.get("availableReplicas", 0),
        age(d),
    ]


BUILTIN: dict[str, tuple[list[dict[str, Any]], Callable[[dict[str, Any]], list[Any]]]] = {
    "pods": (
        [
            _col("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            _col("Status", description="The aggregate status of the containers in this pod."),
            _col("Restarts", "string", "The number of times the containers in this pod have been restarted."),
            AGE_COL,
            _col("IP", priority=1, description="The IP address assigned to the pod"),
            _col("Node", priority=1, description="The name of the node the pod is assigned to"),
        ],
        _pod_cells,
    ),
    "services": (
        [_col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), AGE_COL],
        _svc_cells,
    ),
    "deployments": (
        [_col("Ready"), _col("Up-to-date", "string"), _col("Available", "string"), AGE_COL],
        _deploy_cells,
    ),
    "configmaps": (
        [_col("Data", "string"), AGE_COL],
        lambda o: [len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(o)],
    ),
    "secrets": (
        [_col("Type"), _col("Data", "string"), AGE_COL],
        lambda o: [o.get("type", "Opaque"), len(o.get("data") or {}), age(o)],
    ),
    "serviceaccounts": (
        [_col("Secrets", "string"), AGE_COL],
        lambda o: [len(o.get("secrets") or []), age(o)],
    ),
    "namespaces": (
        [_col("Status"), AGE_COL],
        lambda o: [(o.get("status") or {}).get("phase", "Active"), age(o)],
    ),
    "nodes": (
        [_col("Status"), _col("Roles"), AGE_COL, _col("Version")],
        lambda o: [
            "Ready",
            "<none>",
            age(o),
            ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""),
        ],
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
        lambda o: [
            age(
                {
                    "metadata": {
                        "creationTimestamp": o.get("lastTimestamp")
                        or o.get("eventTime")
                        or (o.get("metadata") or {}).get("creationTimestamp")
                    }
                }
            ),
            o.get("type", ""),
            o.get("reason", ""),
            f"{((o.get('involvedObject') or o.get('regarding') or {}).get('kind') or '').lower()}/{(o.get('involvedObject') or o.get('regarding') or {}).get('name', '')}",
            o.get("message") or o.get("note") or "",
        ],
    ),
    "customresourcedefinitions": (
        [_col("Created At", "date")],
        lambda o: [(o.get("metadata") or {}).get("creationTimestamp")],
    ),
}


def _format_cell(values: list[Any], type_: str) -> Any:
    if not values:
        return None
    value = (
        values[0]
        if len(values) == 1
        else ",".join(json.dumps(v) if not isinstance(v, str) else v for v in values)
    )
    if type_ == "date" and isinstance(value, str):
        created = parse_time(value)
        if created is not None:
            return human_duration((dt.datetime.now(dt.UTC) - created).total_seconds())
    if type_ == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def age_cells(o: dict[str, Any]) -> list[Any]:
    return [age(o)]


def build_table(
    plural: str,
    objs: list[dict[str, Any]],
    printer_columns: list[dict[str, Any]] | None,
    resource_version: str,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A Table for `objs` of resource `plural` (CRD printer columns win when given)."""
    if printer_columns is not None:
        columns = [NAME_COL] + [
            _col(
                c["name"],
                c.get("type", "string"),
                c.get("description", ""),
                c.get("priority", 0),
                c.get("format", ""),
            )
            for c in printer_columns
        ]
        if not printer_columns:
            columns.append(AGE_COL)

        def crd_cells(o: dict[str, Any]) -> list[Any]:
            if not printer_columns:
                return [age(o)]
            return [
                _format_cell(jsonpath(o, c["jsonPath"]), c.get("type", "string")) for c in printer_columns
            ]

        cells_of: Callable[[dict[str, Any]], list[Any]] = crd_cells
    elif plural in BUILTIN:
        extra, cells_of = BUILTIN[plural]
        columns = [NAME_COL, *extra]
    else:
        columns = [NAME_COL, AGE_COL]
        cells_of = age_cells

    rows = []
    for o in objs:
        row: dict[str, Any] = {"cells": [(o.get("metadata") or {}).get("name"), *cells_of(o)]}
        ro = _row_object(o, include_object)
        if ro is not None:
            row["object"] = ro
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }
