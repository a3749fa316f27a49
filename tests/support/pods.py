"""Pods that run a Python snippet (they name a real image, so they run on any cluster), and the reads
of pods' state the cluster tests share."""

from __future__ import annotations

import textwrap
from typing import Any

import kubernetes
from kubernetes.client import ApiException

IMAGE = "python:3.11-slim"

#: A process that says `ready`, then on SIGTERM says `got SIGTERM` and exits 0 (graceful deletion).
EXITS_ON_SIGTERM = """
    import signal, sys, time
    def term(*_):
        print("got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    print("ready", flush=True)
    time.sleep(120)
"""

#: Exits 5 on its first run and 0 on the next: it counts its runs in /work, the `w` emptyDir volume of
#: `fails_once_pod`, which outlives a container's restart.
FAILS_ONCE = """
    import os, sys
    marker = "/work/attempts"
    n = len(os.listdir(marker)) if os.path.isdir(marker) else 0
    os.makedirs(marker, exist_ok=True)
    open(f"{marker}/{n}", "w").close()
    print("attempt", n, flush=True)
    sys.exit(0 if n >= 1 else 5)
"""


def python_pod(
    name: str,
    code: str,
    *,
    app: str,
    restart: str = "Never",
    grace: int | None = None,
    node_selector: dict[str, str] | None = None,
    **container: Any,
) -> dict[str, Any]:
    """A pod labelled `app` whose one container runs `python -c code` (dedented); `container` adds
    fields to the container (env, volumeMounts, terminationMessagePolicy...)."""
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "containers": [
            {"name": "main", "image": IMAGE, "command": ["python", "-c", textwrap.dedent(code)], **container}
        ],
    }
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": spec,
    }


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


def fails_once_pod(name: str, *, app: str, **fields: Any) -> dict[str, Any]:
    """A `restartPolicy: OnFailure` pod running FAILS_ONCE: Succeeded after one restart."""
    pod = python_pod(
        name,
        FAILS_ONCE,
        app=app,
        restart="OnFailure",
        volumeMounts=[{"name": "w", "mountPath": "/work"}],
        **fields,
    )
    pod["spec"]["volumes"] = [{"name": "w", "emptyDir": {}}]
    return pod
