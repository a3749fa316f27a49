"""Reads of pods' state and pieces of pod specs the cluster tests share."""

from __future__ import annotations

from typing import Any

import kubernetes
from kubernetes.client import ApiException


def field_env(**paths: str) -> list[dict[str, Any]]:
    """Environment variables from the downward API: `field_env(MY_NAME="metadata.name")`."""
    return [{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in paths.items()]


def phase(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> str | None:
    return core.read_namespaced_pod(name, ns).status.phase  # type: ignore[no-any-return]


def gone(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> bool:
    """The pod is deleted for good (404); any other API error is raised."""
    try:
        core.read_namespaced_pod(name, ns)
        return False
    except ApiException as e:
        if e.status == 404:
            return True
        raise
