"""Pure helpers of the process node agent: how a pod's container becomes a local process.

Paths, ports and environment are resolved here without any API call; the agent (node.py) fetches
what a pod references and calls these functions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

POD_IP = "127.0.0.1"
# Kubernetes' termination message: the default path, at most this much of the file, and with
# terminationMessagePolicy FallbackToLogsOnError (file empty, exit code not 0) the log's last lines.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
# Every process of a pod carries this variable (the pod's uid): it stands in for a container's cgroup.
POD_MARKER = "MNV2_SANDBOX_POD_UID"


class PodConfigError(Exception):
    """The pod cannot start (yet); `reason` goes to the container's waiting state."""

    def __init__(self, reason: str, message: str, retry: bool = False):
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


def now() -> str:
    """The current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """The current time as a MicroTime (Lease renewTime, Event eventTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion in command, args and env values; `$$(VAR)` escapes it."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None:  # $$(VAR) -> $(VAR)
            return m.group(0)[1:]
        return env.get(m.group(2), m.group(0))

    return re.sub(r"\$\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def path_rewriter(mounts: dict[str, str]) -> Callable[[str], str]:
    """Replace every mountPath prefix in a string by its local folder, in a single pass.

    `/data` matches in `/data`, `/data/x`, `--dir=/data`, but not in `/database` or `/x/data`.
    """
    if not mounts:
        return lambda s: s
    keys = sorted((m.rstrip("/") or "/" for m in mounts), key=len, reverse=True)
    local = {m.rstrip("/") or "/": v for m, v in mounts.items()}
    pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(k) for k in keys) + r")(?=/|$|[^\w.\-])")
    return lambda s: pattern.sub(lambda m: local[m.group(1)], s)


def port_rewriter(ports: dict[int, int]) -> Callable[[str], str]:
    """Replace declared container ports by the local ports the node agent gave them.

    Pod processes share the host's network, so two pods declaring the same containerPort (every
    job's msrun master port) would collide. A port is replaced where a value names it: `--x_port=8118`,
    `host:8118`, or a whole value `8118`; other digits (`18118`, `8118.5`) are left alone.
    """
    if not ports:
        return lambda s: s
    numbers = "|".join(str(p) for p in sorted(ports, reverse=True))
    pattern = re.compile(r"(?:(?<=port=)|(?<=:)|^)(" + numbers + r")(?![\d.])")
    return lambda s: pattern.sub(lambda m: str(ports[int(m.group(1))]), s)


def free_local_port() -> int:
    """A port on 127.0.0.1 nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pod_pids(uid: str) -> list[int]:
    """Processes whose environment carries the pod's marker (they inherit it from the pod process)."""
    needle = f"{POD_MARKER}={uid}".encode()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return out


def signal_processes(pgid: int | None, uid: str, sig: int) -> None:
    """Signal a pod's process group and every other process of the pod (e.g. setsid'd workers)."""
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in pod_pids(uid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def exit_code_of(returncode: int) -> int:
    """A container's exit code from a process return code: 128 + signal for a signalled process."""
    return returncode if returncode >= 0 else 128 - returncode


def cut(data: bytes, limit: int, tail: bool = False) -> str:
    """At most `limit` bytes of `data` (its start, or its end with `tail`), as text."""
    part = data[-limit:] if tail else data[:limit]
    return part.decode("utf-8", errors="replace")


def termination_message(
    container: dict[str, Any], exit_code: int, message_file: Path, log_path: Path, log_start: int = 0
) -> str | None:
    """A finished container's `state.terminated.message`, as a kubelet makes it.

    The termination-message file's content (at most 4096 bytes); if that is empty, the container
    failed and its terminationMessagePolicy is FallbackToLogsOnError, the end of its log (of this
    container instance: from `log_start` on): the last 80 lines, at most 2048 bytes.
    """
    try:
        data = message_file.read_bytes()[:MAX_TERMINATION_MESSAGE_BYTES]
    except OSError:
        data = b""
    if data:
        return cut(data, MAX_TERMINATION_MESSAGE_BYTES)
    if exit_code == 0 or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return None
    try:
        with log_path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(log_start, size - 64 * 1024)  # more than 80 lines of 2048 bytes need
            f.seek(start)
            log = f.read()
    except OSError:
        return None
    lines = log.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    text = cut(b"".join(lines), FALLBACK_LOG_BYTES, tail=True)
    return text or None


def field_ref(pod: dict[str, Any], path: str) -> str:
    """Downward API fieldRef values."""
    meta = pod["metadata"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIPs": POD_IP,
    }
    return str(simple.get(path) or "")


def resource_field_ref(container: dict[str, Any], resource: str) -> str:
    """Downward API resourceFieldRef: the container's request/limit, else the node's CPU count / 0."""
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        value = str(os.cpu_count() or 1) if name == "cpu" else "0"
    return str(value)


def conditions(pod: dict[str, Any], ready: bool, t: str, reason: str | None = None) -> list[dict[str, Any]]:
    """The kubelet's pod conditions; PodScheduled is kept as the scheduler wrote it."""

    def cond(type_: str, ok: bool) -> dict[str, Any]:
        c: dict[str, Any] = {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None,
                             "lastTransitionTime": t}  # fmt: skip
        if not ok and reason:
            c["reason"] = reason
        return c

    old = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    out = [cond("PodReadyToStartContainers", True), cond("Initialized", True), cond("Ready", ready),
           cond("ContainersReady", ready)]  # fmt: skip
    for c in out:  # a condition that keeps its status keeps its transition time
        prev = old.get(c["type"])
        if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
    out.append(old.get("PodScheduled") or cond("PodScheduled", True))
    return out


def container_statuses(
    pod: dict[str, Any], first: dict[str, Any], unsupported_reason: str, unsupported_message: str
) -> list[dict[str, Any]]:
    """containerStatuses: `first` for the pod's first container, waiting for the others (not run)."""
    out = []
    for i, c in enumerate(pod["spec"]["containers"]):
        base: dict[str, Any] = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                                "restartCount": 0, "started": False, "ready": False}  # fmt: skip
        if i == 0:
            base.update(first)
        else:
            base["state"] = {"waiting": {"reason": unsupported_reason, "message": unsupported_message}}
        out.append(base)
    return out


# `<service>.<namespace>.svc` with any names before it, not inside a longer word.
SERVICE_NAME = re.compile(
    r"(?<![\w.-])((?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\.){2,}svc(?:\.cluster\.local)?)(?![\w-])"
)


def service_names(values: list[str]) -> list[str]:
    """The cluster DNS names (`<name>.<service>.<namespace>.svc[.cluster.local]`) in these strings."""
    found: dict[str, None] = {}
    for value in values:
        for m in SERVICE_NAME.finditer(value):
            found[m.group(1)] = None
    return list(found)


def hosts_file(base: Path, hostname: str, names: list[str]) -> str:
    """The machine's hosts file with the pod's hostname and these names on 127.0.0.1."""
    try:
        text = base.read_text()
    except OSError:
        text = "127.0.0.1 localhost\n"
    lines = [text.rstrip("\n"), "# the pod's names (no cluster DNS here: every pod listens on the loopback)"]
    lines += [f"{POD_IP} {name}" for name in [hostname, *names]]
    return "\n".join(lines) + "\n"
