"""The process node agent: joins a real control plane as a Node and runs the pods bound to it.

It stands where a kubelet stands, and talks to the API server the way a kubelet does, as
``system:node:<name>`` (group ``system:nodes``) with a client certificate, so the Node authorizer and
the NodeRestriction admission plugin limit it to its own Node, its own Lease, the pods bound to it,
and the ConfigMaps, Secrets and ServiceAccount tokens those pods use:

- registration: the Node with labels, capacity/allocatable, addresses (InternalIP 127.0.0.1),
  ``daemonEndpoints.kubeletEndpoint.port``, a ``Ready`` condition kept fresh, and a Lease in
  ``kube-node-lease`` renewed every ``lease_renew_seconds`` (the node lifecycle controller taints a node
  whose Lease goes stale ``node.kubernetes.io/unreachable`` and evicts its pods);
- pods: watched with ``fieldSelector=spec.nodeName=<name>`` (the scheduler binds them), run as local
  processes (``mode="process"``) or scripted (``mode="simulated"``), their status written through the
  ``pods/status`` subresource; a deleted pod gets SIGTERM, SIGKILL after its grace period, its final
  status, then the final delete with ``gracePeriodSeconds=0`` and the pod's uid as precondition;
- ``kubectl logs``: an HTTPS endpoint (serving certificate from the cluster CA; clients must present a
  certificate of ``client_ca_file``, as the API server's kubelet client does) serving
  ``/containerLogs/{namespace}/{pod}/{container}`` with ``follow``, ``tailLines``, ``limitBytes`` and
  ``previous``.

Its inputs are those of a kubelet (``--kubeconfig``, ``--tls-cert-file``, ``--tls-private-key-file``,
``--client-ca-file``), so a launcher that prepares them for this agent prepares them for a real
kubelet too. ``Node`` is the interface a launcher uses for either.

How a container runs as a process (volumes as folders, path and port rewriting, the environment,
termination messages, logs) and what a kubelet does that it does not: docs/node-agent.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import yaml
from aiohttp import web

from mnv2_cluster import pods as P
from mnv2_cluster.ascend import ASCEND_LABELS, ASCEND_RESOURCE

log = logging.getLogger("mnv2_cluster.node")

Mode = Literal["process", "simulated"]
UNSUPPORTED_CONTAINER = "NodeAgentUnsupported"
SA_MOUNT_PREFIX = "/var/run/secrets/"
# What a simulated node reports: the size of an Atlas 800 training server (4 x 48 Kunpeng cores), so
# that simulated pods are limited by what such a node holds, not by the machine the tests run on.
SIMULATED_CAPACITY = {"cpu": "192", "memory": "1536Gi", "pods": "110", "ephemeral-storage": "1Ti"}


class Node(Protocol):
    """What a launcher needs of a node, whatever runs it (this agent, or a real kubelet later)."""

    name: str

    def start(self) -> Node: ...

    def stop(self) -> None: ...


def ascend_node_options(devices: int = 8) -> dict[str, Any]:
    """Labels, extra capacity and taint of a node labelled as MindCluster labels Ascend training nodes.

    The taint carries the device resource's name, as accelerator nodes are commonly tainted: with the
    API server's ExtendedResourceToleration admission plugin, pods requesting the devices tolerate it
    and other pods (CPU jobs, which must run as processes) are kept off the simulated node.
    """
    return {
        "labels": dict(ASCEND_LABELS),
        "extra_capacity": {ASCEND_RESOURCE: str(devices)},
        "taints": [{"key": ASCEND_RESOURCE, "value": "present", "effect": "NoSchedule"}],
    }


class ApiError(Exception):
    """The API server answered with an error status; `status` is the HTTP code."""

    def __init__(self, status: int, method: str, path: str, body: str):
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status, self.message = status, message


def _read_kubeconfig(path: Path) -> tuple[str, ssl.SSLContext]:
    """The server URL and a TLS context (CA + client certificate) of a kubeconfig's current context."""
    cfg = yaml.safe_load(path.read_text())
    ctx_name = cfg.get("current-context")
    context = next((c["context"] for c in cfg.get("contexts") or [] if c["name"] == ctx_name), None)
    if context is None:
        raise ValueError(f"{path}: no current-context {ctx_name!r} in contexts")
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == context["user"])
    base = path.parent
    tmp = Path(tempfile.mkdtemp(prefix="mnv2-node-tls-"))

    def file_of(obj: dict[str, Any], key: str) -> str | None:
        if obj.get(f"{key}-data"):
            target = tmp / key
            target.write_bytes(base64.b64decode(obj[f"{key}-data"]))
            return str(target)
        if obj.get(key):
            return str(base / obj[key])
        return None

    ctx = ssl.create_default_context(cafile=file_of(cluster, "certificate-authority"))
    cert, key = file_of(user, "client-certificate"), file_of(user, "client-key")
    if cert is None or key is None:
        raise ValueError(f"{path}: the node's user needs client-certificate and client-key")
    ctx.load_cert_chain(cert, key)
    shutil.rmtree(tmp, ignore_errors=True)
    return cluster["server"].rstrip("/"), ctx


class Api:
    """The few API calls a node makes, over one aiohttp session with the node's client certificate."""

    def __init__(self, server: str, ssl_context: ssl.SSLContext):
        self.server, self.ssl = server, ssl_context
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=20),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict[str, Any]:
        assert self.session is not None
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self.session.request(
            method, self.server + path, data=data, params=params, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:  # fmt: skip
            text = await resp.text()
            if resp.status >= 400:
                raise ApiError(resp.status, method, path, text)
            return json.loads(text) if text else {}

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Events of one watch request (it ends when the server closes it)."""
        assert self.session is not None
        params = {**params, "watch": "1", "allowWatchBookmarks": "true"}
        async with self.session.get(
            self.server + path, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=400)
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, "WATCH", path, await resp.text())
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


@dataclass
class PodRun:
    """What the agent knows of one pod it runs."""

    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    deleting: bool = False
    grace: float | None = None
    sigterm_sent: bool = False
    kill_handle: asyncio.TimerHandle | None = None
    outcome: asyncio.Future[tuple[int, str | None]] | None = None  # simulated mode
    killed: bool = False
    started: bool = False  # a container has been started (its terminated state is to be written)
    last_terminated: dict[str, Any] | None = None
    restarts: int = 0
    termination_message: str | None = None
    log_starts: list[int] = field(default_factory=list)  # offset of each container instance in the log
    instance_done: asyncio.Event = field(default_factory=asyncio.Event)
    config_error: str | None = None
    token_tasks: list[asyncio.Task[None]] = field(default_factory=list)


class NodeAgent:
    """A Node of a real control plane whose pods run as local processes (or are simulated).

    Args:
        name: the Node's name; the kubeconfig's client certificate must be ``system:node:<name>``.
        kubeconfig: the node's kubeconfig (API server URL, cluster CA, client certificate and key).
        tls_cert_file, tls_private_key_file: the serving certificate of the node's HTTPS endpoint
            (for 127.0.0.1, signed by the CA the API server checks kubelets with).
        client_ca_file: the CA of the certificates allowed to call that endpoint (the API server's
            kubelet client certificate).
        state_dir: this node's folder (pods' logs, volumes of their own).
        volumes_dir: where PersistentVolumeClaims (``pvc/<claim>``) and hostPaths (``hostpath/<path>``)
            live; nodes of one cluster share it, as nodes share network storage.
        mode: ``process`` runs each pod's first container; ``simulated`` runs nothing: a pod goes
            Running and ends when ``finish()`` says, or after ``default_outcome``.
        labels: the Node's labels (``kubernetes.io/hostname``, ``kubernetes.io/os`` and
            ``kubernetes.io/arch`` are added).
        capacity: cpu, memory, pods (default: this machine's CPUs and memory, 110 pods; on a
            simulated node, an Atlas 800 training server's: SIMULATED_CAPACITY).
        extra_capacity: extended resources, e.g. ``{"huawei.com/Ascend910": "8"}``.
        taints: the Node's taints at registration.
        port: the HTTPS endpoint's port (0: any free one).
    """

    def __init__(
        self,
        name: str,
        kubeconfig: str | Path,
        tls_cert_file: str | Path,
        tls_private_key_file: str | Path,
        client_ca_file: str | Path,
        state_dir: str | Path,
        volumes_dir: str | Path | None = None,
        mode: Mode = "process",
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        extra_capacity: dict[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        port: int = 0,
        lease_duration_seconds: int = 40,
        lease_renew_seconds: float = 10.0,
        status_report_seconds: float = 60.0,
    ):
        if mode not in ("process", "simulated"):
            raise ValueError(f"mode must be 'process' or 'simulated', not {mode!r}")
        self.name = name
        self.kubeconfig = Path(kubeconfig)
        self.tls_cert_file, self.tls_private_key_file = Path(tls_cert_file), Path(tls_private_key_file)
        self.client_ca_file = Path(client_ca_file)
        self.state_dir = Path(state_dir).resolve()
        self.volumes_dir = Path(volumes_dir).resolve() if volumes_dir else self.state_dir / "volumes"
        self.mode: Mode = mode
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            **(labels or {}),
        }
        base = SIMULATED_CAPACITY if mode == "simulated" else _machine_capacity(self.state_dir)
        self.capacity = {**base, **(capacity or {}), **(extra_capacity or {})}
        self.taints = list(taints or [])
        self.port = port
        self.lease_duration_seconds = lease_duration_seconds
        self.lease_renew_seconds = lease_renew_seconds
        self.status_report_seconds = status_report_seconds
        self.default_outcome: tuple[float, int] | None = None
        self.server_url = ""
        self.registered_at: float | None = None
        self._api: Api | None = None
        self._runs: dict[str, PodRun] = {}  # by uid
        self._by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid of the newest run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ca_data: str | None = None
        self._bind_mounts: bool | None = None
        self._ready_since: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._version = ""

    @classmethod
    def for_cluster(cls, cluster: Any, name: str, mode: Mode = "process", **options: Any) -> NodeAgent:
        """An agent (not started) for node `name` of a local `mnv2_cluster.launcher.Cluster`: its
        credentials come from the cluster's CA, its folder is `<state>/nodes/<name>`, and its
        PersistentVolumeClaims and hostPaths live in `<state>/volumes`, shared by the cluster's nodes."""
        serving = cluster.node_serving_cert(name)
        options.setdefault("volumes_dir", cluster.state_dir / "volumes")
        return cls(
            name,
            kubeconfig=cluster.kubeconfig_for_node(name),
            tls_cert_file=serving.cert,
            tls_private_key_file=serving.key,
            client_ca_file=cluster.pki.ca.cert,
            state_dir=cluster.state_dir / "nodes" / name,
            mode=mode,
            **options,
        )

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> NodeAgent:
        """Serve the endpoint, register the Node (Ready) and its Lease, watch pods; returns when done."""
        if self._thread is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.server_url, ssl_context = _read_kubeconfig(self.kubeconfig)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._start(ssl_context))
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._shutdown())
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"mnv2-node-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"node {self.name}: not registered within {timeout:g} s")
        if failure:
            self._thread.join(5)
            self._thread = self._loop = None
            raise RuntimeError(
                f"node {self.name} could not join {self.server_url}: {failure[0]}"
            ) from failure[0]
        return self

    def stop(self) -> None:
        """Kill the pods' processes, stop heartbeats and the endpoint. The Node object stays (as a
        stopped kubelet leaves it): the node lifecycle controller marks it unreachable later."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._thread = self._loop = None

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self, ssl_context: ssl.SSLContext) -> None:
        self._api = Api(self.server_url, ssl_context)
        await self._api.open()
        await self._serve()
        await self._register()
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._status_loop(), name="node-status"),
            asyncio.create_task(self._watch_pods(), name="pod-watch"),
        ]

    async def _shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for run in list(self._runs.values()):
            run.deleting = True
            self._signal(run, signal.SIGKILL)
            if run.outcome is not None and not run.outcome.done():
                run.outcome.set_result((137, "Error"))
            for t in run.token_tasks:
                t.cancel()
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        tasks += list(self._background)
        for t in tasks:
            t.cancel()
        if tasks or self._tasks:
            await asyncio.wait([*tasks, *self._tasks], timeout=5)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._api is not None:
            await self._api.close()

    # ---- thread-safe test hooks ------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        if self._loop is None:
            raise RuntimeError(f"node {self.name} is not running: call start() first")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return fn()

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def _run_named(self, namespace: str, name: str) -> PodRun:
        uid = self._by_name.get((namespace, name))
        run = self._runs.get(uid or "")
        if run is None:
            raise LookupError(f"no pod {namespace}/{name} runs on node {self.name}")
        return run

    def has_pod(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """The agent runs (or ran) this pod: it is bound here and seen (with this uid, if given)."""
        known = self._call(lambda: self._by_name.get((namespace, name)))
        return known is not None and (uid is None or known == uid)

    def _await_pod(self, namespace: str, name: str, wait: float) -> None:
        """Give the watch up to `wait` seconds to bring a pod just created (from another thread)."""
        if self._loop is None or threading.get_ident() == getattr(self._thread, "ident", None):
            return
        deadline = time.monotonic() + wait
        while not self.has_pod(namespace, name) and time.monotonic() < deadline:
            time.sleep(0.05)

    def finish(
        self,
        namespace: str,
        name: str,
        exit_code: int,
        reason: str | None = None,
        message: str | None = None,
        wait: float = 10.0,
    ) -> None:
        """Simulated mode: end a pod now, Succeeded (exit 0) or Failed, with that exit code.

        `message` becomes the container's `state.terminated.message` (what a process would have
        written to its terminationMessagePath), cut to 4096 bytes as a kubelet does. A pod created a
        moment ago may not be bound and seen yet: up to `wait` seconds are given for that.

        Raises:
            LookupError: no such pod is running on this node (after `wait`).
            RuntimeError: in process mode (end the real process instead, e.g. with kill()).
        """
        if self.mode != "simulated":
            raise RuntimeError(
                "finish() is for a simulated node; on a process node use kill() or let the process exit"
            )

        def do() -> None:
            run = self._run_named(namespace, name)
            if run.outcome is None:
                raise LookupError(f"pod {namespace}/{name} on node {self.name} has no outcome to set")
            if not run.outcome.done():
                if message:
                    run.termination_message = P.cut(message.encode(), P.MAX_TERMINATION_MESSAGE_BYTES)
                run.outcome.set_result((exit_code, reason))

        self._await_pod(namespace, name, wait)
        self._call(do)

    def kill(self, namespace: str, name: str, wait: float = 10.0) -> None:
        """Simulate a fault: SIGKILL the pod's processes; the pod fails with exit code 137.

        Raises:
            LookupError: no such pod is running on this node (after `wait` seconds, as for finish()).
        """

        def do() -> None:
            run = self._run_named(namespace, name)
            run.killed = True
            if self.mode == "simulated":
                if run.outcome is not None and not run.outcome.done():
                    run.outcome.set_result((137, "Error"))
            else:
                self._signal(run, signal.SIGKILL)

        self._await_pod(namespace, name, wait)
        self._call(do)

    def logs(self, namespace: str, name: str) -> str:
        """The pod's whole log (every container instance), '' if it has none yet."""
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else ""

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.state_dir / "pods" / namespace / name

    def log_path(self, namespace: str, name: str) -> Path:
        return self.pod_dir(namespace, name) / "log"

    # ---- the Node and its Lease ------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        t = P.now()

        def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
            return {"type": type_, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": t, "lastTransitionTime": self._ready_since or t}  # fmt: skip

        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                cond(
                    "Ready",
                    "True",
                    "KubeletReady",
                    f"mnv2 node agent is posting ready status ({self.mode} pods)",
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": P.POD_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "mnv2 node agent",
                "containerRuntimeVersion": f"mnv2-{self.mode}://0",
                "kubeletVersion": self._version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },  # fmt: skip
        }

    async def _register(self) -> None:
        assert self._api is not None
        version = await self._api.request("GET", "/version")
        self._version = version.get("gitVersion", "")
        self._ready_since = P.now()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"taints": self.taints} if self.taints else {},
            # Ready from the start: a Node without the condition gets the not-ready taint meanwhile.
            "status": self._node_status(),
        }
        try:
            await self._api.request("POST", "/api/v1/nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
            await self._api.merge_patch(f"/api/v1/nodes/{self.name}", {"metadata": {"labels": self.labels}})
            await self._api.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()})
        await self._renew_lease()
        self.registered_at = time.monotonic()

    async def _renew_lease(self) -> None:
        assert self._api is not None
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": self.lease_duration_seconds,
                "renewTime": P.now_micro()}  # fmt: skip
        try:
            await self._api.merge_patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            node = await self._api.request("GET", f"/api/v1/nodes/{self.name}")
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node["metadata"]["uid"]}
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": self.name, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                     "spec": spec}  # fmt: skip
            await self._api.request(
                "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease
            )

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_renew_seconds)
            try:
                await self._renew_lease()
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                log.warning("node %s: lease renewal failed: %s", self.name, e)

    async def _status_loop(self) -> None:
        assert self._api is not None
        while True:
            await asyncio.sleep(self.status_report_seconds)
            try:
                await self._api.merge_patch(
                    f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()}
                )
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                log.warning("node %s: status update failed: %s", self.name, e)

    # ---- pods: watch -----------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        assert self._api is not None
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        rv = ""
        while True:
            try:
                if not rv:
                    listing = await self._api.request("GET", "/api/v1/pods", params=selector)
                    rv = listing["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in listing.get("items") or []:
                        seen.add(pod["metadata"]["uid"])
                        self._on_pod("ADDED", pod)
                    for uid in [u for u in self._runs if u not in seen]:  # deleted while not watching
                        self._on_pod("DELETED", self._runs[uid].pod)
                async for event in self._api.watch(
                    "/api/v1/pods", {**selector, "resourceVersion": rv, "timeoutSeconds": "300"}
                ):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = ""
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event.get("type") != "BOOKMARK":
                        self._on_pod(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 410:
                    rv = ""
                else:
                    log.warning("node %s: pod watch failed: %s", self.name, e)
                    await asyncio.sleep(1)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.warning("node %s: pod watch interrupted: %s", self.name, e)
                await asyncio.sleep(1)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        run = self._runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.deleting = True
                self._signal(run, signal.SIGKILL)
                if run.outcome is not None and not run.outcome.done():
                    run.outcome.set_result((137, "Error"))
                self._forget(run)
            return
        phase = (pod.get("status") or {}).get("phase")
        if run is None:
            if phase in ("Succeeded", "Failed"):
                # Ended before this agent knew it (an earlier agent ran it): only the final delete is left.
                if meta.get("deletionTimestamp"):
                    self._spawn(self._final_delete_pod(meta["namespace"], meta["name"], uid))
                return
            run = PodRun(meta["namespace"], meta["name"], uid, pod)
            self._runs[uid] = run
            self._by_name[(run.namespace, run.name)] = uid
            if self.mode == "simulated":
                # Created now, not when the task first runs: finish() right after the create must work.
                run.outcome = asyncio.get_running_loop().create_future()
            target = self._run_simulated if self.mode == "simulated" else self._run_process
            run.task = asyncio.get_running_loop().create_task(self._guard(run, target(run)))
        run.pod = pod
        if meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            self._begin_delete(run, float(30 if grace is None else grace))

    def _spawn(self, coro: Any) -> None:
        """Run `coro` in the background, holding it until done (the loop keeps only weak references)
        and logging its failure."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("node %s: %s", self.name, t.exception())

        task.add_done_callback(done)

    def _forget(self, run: PodRun) -> None:
        self._runs.pop(run.uid, None)
        if self._by_name.get((run.namespace, run.name)) == run.uid:
            del self._by_name[(run.namespace, run.name)]
        for t in run.token_tasks:
            t.cancel()

    def _begin_delete(self, run: PodRun, grace: float) -> None:
        """SIGTERM now, SIGKILL after `grace` seconds (a shorter grace given later shortens the wait)."""
        first = not run.deleting
        run.deleting = True
        if run.task is not None and run.task.done():  # its containers ended already
            if first:
                self._spawn(self._final_delete_pod(run.namespace, run.name, run.uid))
                self._forget(run)
            return
        if run.outcome is not None and not run.outcome.done():
            run.outcome.set_result((143 if run.started else 0, "Error" if run.started else None))
        if run.grace is not None and grace >= run.grace and not first:
            return
        run.grace = grace
        if run.proc is not None and run.proc.returncode is None:
            if not run.sigterm_sent:
                run.sigterm_sent = True
                self._event(run, "Killing", f"Stopping container {_first(run.pod)['name']}")
                self._signal(run, signal.SIGTERM)
            if run.kill_handle is not None:
                run.kill_handle.cancel()
            run.kill_handle = asyncio.get_running_loop().call_later(grace, self._signal, run, signal.SIGKILL)
        # A pod whose process has not started: its task sees `deleting` and stops.

    def _signal(self, run: PodRun, sig: int) -> None:
        if self.mode == "process":
            P.signal_processes(run.proc.pid if run.proc is not None else None, run.uid, sig)

    async def _guard(self, run: PodRun, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an agent bug must not kill the loop; show it on the pod instead
            log.exception("node %s: pod %s/%s", self.name, run.namespace, run.name)
            with contextlib.suppress(Exception):
                await self._set_waiting(run, "NodeAgentError", f"{type(e).__name__}: {e}")
        finally:
            for t in run.token_tasks:
                t.cancel()
            if run.deleting and self._runs.get(run.uid) is run:
                with contextlib.suppress(Exception):
                    await self._final_delete_pod(run.namespace, run.name, run.uid)
                self._forget(run)

    async def _final_delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's last word on a pod: delete it with grace 0 once its containers are gone."""
        assert self._api is not None
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            await self._api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    # ---- status writes ---------------------------------------------------------------------------

    async def _patch_status(self, run: PodRun, status: dict[str, Any]) -> None:
        assert self._api is not None
        try:
            pod = await self._api.merge_patch(
                f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                {"metadata": {"uid": run.uid}, "status": status},
            )
            if pod.get("metadata", {}).get("uid") == run.uid:
                run.pod = pod
        except ApiError as e:
            if e.status not in (404, 409):  # gone, or a new pod of that name
                raise

    def _first_status(self, run: PodRun, first: dict[str, Any]) -> list[dict[str, Any]]:
        first = {"restartCount": run.restarts, **first}
        if run.last_terminated and "lastState" not in first:
            first["lastState"] = {"terminated": run.last_terminated}
        return P.container_statuses(
            run.pod, first, UNSUPPORTED_CONTAINER, "the mnv2 node agent runs only a pod's first container"
        )

    async def _set_waiting(self, run: PodRun, reason: str, message: str) -> None:
        t = P.now()
        status: dict[str, Any] = {
            "phase": "Pending",
            "hostIP": P.POD_IP,
            "hostIPs": [{"ip": P.POD_IP}],
            "startTime": (run.pod.get("status") or {}).get("startTime") or t,
            "conditions": P.conditions(run.pod, ready=False, t=t, reason="ContainersNotReady"),
            "containerStatuses": self._first_status(
                run, {"state": {"waiting": {"reason": reason, "message": message}}}
            ),
        }
        if run.started:  # restarting (back-off): the pod stays Running
            status["phase"] = "Running"
            status["podIP"], status["podIPs"] = P.POD_IP, [{"ip": P.POD_IP}]
        await self._patch_status(run, status)

    async def _set_running(self, run: PodRun, container_id: str, started_at: str) -> None:
        ready = len(run.pod["spec"]["containers"]) == 1
        first = {"state": {"running": {"startedAt": started_at}}, "ready": True, "started": True,
                 "containerID": container_id}  # fmt: skip
        await self._patch_status(
            run,
            {
                "phase": "Running",
                "hostIP": P.POD_IP,
                "hostIPs": [{"ip": P.POD_IP}],
                "podIP": P.POD_IP,
                "podIPs": [{"ip": P.POD_IP}],
                "startTime": (run.pod.get("status") or {}).get("startTime") or started_at,
                "conditions": P.conditions(run.pod, ready=ready, t=started_at, reason="ContainersNotReady"),
                "containerStatuses": self._first_status(run, first),
            },
        )

    def _terminated(
        self, exit_code: int, reason: str | None, started_at: str, cid: str, message: str | None
    ) -> dict[str, Any]:
        term = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "startedAt": started_at, "finishedAt": P.now(), "containerID": cid}  # fmt: skip
        if message:
            term["message"] = message
        return term

    async def _set_terminated(self, run: PodRun, term: dict[str, Any]) -> None:
        t = P.now()
        first = {
            "state": {"terminated": term},
            "ready": False,
            "started": False,
            "containerID": term["containerID"],
        }
        await self._patch_status(
            run,
            {
                "phase": "Succeeded" if term["exitCode"] == 0 else "Failed",
                "startTime": (run.pod.get("status") or {}).get("startTime") or term["startedAt"],
                "conditions": P.conditions(run.pod, ready=False, t=t, reason="PodCompleted"),
                "containerStatuses": self._first_status(run, first),
            },
        )

    def _event(self, run: PodRun, reason: str, message: str, type_: str = "Normal") -> None:
        """Post a core/v1 Event about the pod, as a kubelet does (`kubectl describe pod` shows them)."""
        if self._api is None:
            return
        t = P.now()
        event = {
            "metadata": {"name": f"{run.name}.{os.urandom(8).hex()}", "namespace": run.namespace},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": run.namespace, "name": run.name,
                               "uid": run.uid, "fieldPath": f"spec.containers{{{_first(run.pod)['name']}}}"},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet", "reportingInstance": self.name,
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
        }  # fmt: skip

        async def post() -> None:
            assert self._api is not None
            with contextlib.suppress(Exception):  # e.g. the namespace is being deleted
                await self._api.request("POST", f"/api/v1/namespaces/{run.namespace}/events", event)

        self._spawn(post())

    # ---- simulated -------------------------------------------------------------------------------

    async def _run_simulated(self, run: PodRun) -> None:
        assert run.outcome is not None
        with contextlib.suppress(TimeoutError):
            # Pending for a moment (the pod is seen Pending), unless finish() comes first.
            await asyncio.wait_for(asyncio.shield(run.outcome), 0.2)
        if run.deleting:
            return
        started = P.now()
        cid = f"mnv2-simulated://{run.uid[:8]}"
        run.started = True
        await self._set_running(run, cid, started)
        logf = self.log_path(run.namespace, run.name)
        logf.parent.mkdir(parents=True, exist_ok=True)
        logf.write_text(
            f"simulated pod {run.namespace}/{run.name} started at {started} on node {self.name}\n"
        )
        run.log_starts = [0]
        if self.default_outcome is not None:
            seconds, code = self.default_outcome
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.outcome), seconds)
            if not run.outcome.done():
                run.outcome.set_result((code, None))
        exit_code, reason = await run.outcome
        with logf.open("a") as f:
            f.write(f"simulated pod ended with exit code {exit_code}\n")
        run.instance_done.set()
        await self._set_terminated(
            run, self._terminated(exit_code, reason, started, cid, run.termination_message)
        )

    # ---- process ---------------------------------------------------------------------------------

    async def _run_process(self, run: PodRun) -> None:
        pod_dir = self.pod_dir(run.namespace, run.name)
        uid_file = pod_dir / ".uid"
        if pod_dir.exists() and (not uid_file.exists() or uid_file.read_text() != run.uid):
            shutil.rmtree(pod_dir, ignore_errors=True)  # a new pod of the same name starts clean
        pod_dir.mkdir(parents=True, exist_ok=True)
        uid_file.write_text(run.uid)
        log_path = self.log_path(run.namespace, run.name)
        log_path.touch()
        await self._set_waiting(run, "ContainerCreating", "")
        while True:
            if run.deleting:
                return
            try:
                cmd, env, cwd = await self.prepare(run, pod_dir)
                break
            except P.PodConfigError as e:
                if run.config_error != e.message:  # report each new problem once
                    run.config_error = e.message
                    await self._set_waiting(run, e.reason, e.message)
                    self._event(run, "Failed", f"Error: {e.message}", "Warning")
                    with log_path.open("a") as f:
                        f.write(f"[mnv2 node {self.name}] cannot start container: {e.reason}: {e.message}\n")
                if not e.retry:
                    return
                await asyncio.sleep(1.0)
        container = _first(run.pod)
        policy = run.pod["spec"].get("restartPolicy", "Always")
        term_file = pod_dir / "termination-log"
        while not run.deleting:
            term_file.write_bytes(b"")  # each container instance starts with an empty file
            log_start = log_path.stat().st_size
            run.log_starts.append(log_start)
            run.instance_done = asyncio.Event()
            with log_path.open("ab") as logf:
                try:
                    run.proc = await asyncio.create_subprocess_exec(
                        *cmd, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                except OSError as e:
                    logf.write(f"[mnv2 node {self.name}] cannot run {cmd[0]!r}: {e}\n".encode())
                    run.instance_done.set()
                    run.started = True
                    await self._set_terminated(run, self._terminated(128, "StartError", P.now(), "", str(e)))
                    return
            started = P.now()
            cid = f"mnv2-process://{run.proc.pid}"
            run.started = True
            if run.deleting:  # deleted while starting: stop it at once, within the grace period
                run.sigterm_sent = True
                self._signal(run, signal.SIGTERM)
                run.kill_handle = asyncio.get_running_loop().call_later(
                    run.grace or 0, self._signal, run, signal.SIGKILL
                )
            await self._set_running(run, cid, started)
            self._event(run, "Started", f"Started container {container['name']} (pid {run.proc.pid})")
            rc = await run.proc.wait()
            # When a container's main process ends, everything else in it ends too (msrun's
            # workers run in sessions of their own, so the process group is not enough).
            self._signal(run, signal.SIGKILL)
            if run.kill_handle is not None:
                run.kill_handle.cancel()
            run.instance_done.set()
            exit_code = P.exit_code_of(rc)
            reason = "Error" if run.killed else None
            run.killed = False
            message = P.termination_message(container, exit_code, term_file, log_path, log_start)
            term = self._terminated(exit_code, reason, started, cid, message)
            restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
            if run.deleting or not restart:
                await self._set_terminated(run, term)
                return
            run.last_terminated = term
            run.restarts += 1
            await self._set_waiting(
                run,
                "CrashLoopBackOff" if exit_code else "Completed",
                f"back-off restarting container (restart {run.restarts})",
            )
            await asyncio.sleep(min(10.0, 0.5 * 2 ** (run.restarts - 1)))

    def _can_bind_mount(self) -> bool:
        """Whether pod processes can get a mount namespace (root with CAP_SYS_ADMIN, `unshare` present)."""
        if self._bind_mounts is None:
            ok = os.geteuid() == 0 and shutil.which("unshare") is not None
            if ok:
                probe = subprocess.run(
                    ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
                )
                ok = probe.returncode == 0
            self._bind_mounts = ok
        return self._bind_mounts

    async def prepare(self, run: PodRun, pod_dir: Path) -> tuple[list[str], dict[str, str], str]:
        """Resolve a pod's first container into (argv, env, cwd) on this machine.

        Raises:
            P.PodConfigError: a referenced ConfigMap/Secret/key is missing, a volume type is not
                supported, or the container has no command; the message names what is missing.
        """
        pod = run.pod
        spec, meta = pod["spec"], pod["metadata"]
        ns = meta["namespace"]
        c = _first(pod)
        vol_dirs = await self._volumes(run, pod_dir)
        mounts: dict[str, str] = {}
        binds: list[tuple[str, str]] = []
        for m in c.get("volumeMounts") or []:
            base = vol_dirs.get(m.get("name", ""))
            if base is None:
                raise P.PodConfigError(
                    "CreateContainerConfigError",
                    f"volumeMounts {m.get('name')!r}: no volume of that name in spec.volumes",
                )
            local = base / m["subPath"] if m.get("subPath") else base
            # A missing subPath is created as a directory, as the kubelet does; in configMap/secret
            # volumes it names a file that is already there.
            if not local.exists():
                local.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"]] = str(local)
            if m["mountPath"].startswith(SA_MOUNT_PREFIX) and self._can_bind_mount():
                binds.append((str(local), m["mountPath"]))
        # The termination-message file is mapped like a mount (a file of the pod's own), so that a
        # path to it in command/args/env (MNV2_TERMINATION_LOG) reaches the process as the local file.
        term_path = c.get("terminationMessagePath") or P.DEFAULT_TERMINATION_MESSAGE_PATH
        mounts.setdefault(term_path, str(pod_dir / "termination-log"))
        rewrite_paths = P.path_rewriter(mounts)
        declared = {int(p["containerPort"]) for p in c.get("ports") or [] if p.get("containerPort")}
        # Pods behind one headless Service (same subdomain) share the local ports: rank 0 listens on
        # the port that the other ranks, on any node of this machine, connect to.
        group = f"{ns}/{spec.get('subdomain') or meta['name']}"
        rewrite_ports = P.port_rewriter({port: self._local_port(group, port) for port in declared})

        def rewrite(value: str) -> str:
            return rewrite_ports(rewrite_paths(value))

        host, port = _host_port(self.server_url)
        pod_env: dict[str, str] = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                                   "KUBERNETES_SERVICE_PORT_HTTPS": port}  # fmt: skip
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = await self._config_data("configmaps", ns, src["configMapRef"], None)
            elif "secretRef" in src:
                data = await self._config_data("secrets", ns, src["secretRef"], None)
            else:
                continue
            for k, v in (data or {}).items():
                pod_env[prefix + k] = v
        for e in c.get("env") or []:
            value = await self._env_value(pod, c, e)
            if value is not None:
                pod_env[e["name"]] = P.expand_vars(value, pod_env)
        # The agent's own environment minus what points at a cluster: a pod reaches the API server
        # only through its ServiceAccount (in-cluster config), never with the agent's credentials.
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}
        env.update({k: rewrite(v) for k, v in pod_env.items()})
        env["HOSTNAME"] = spec.get("hostname") or meta["name"]
        env[P.POD_MARKER] = meta["uid"]  # every process of the pod, whatever session it moves to
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        token_mount = next((path for path in mounts if path.startswith(SA_MOUNT_PREFIX)), None)
        if token_mount is not None and not self._can_bind_mount():
            # No mount namespace here: the fixed in-cluster paths cannot be provided, so the same
            # ServiceAccount credentials go through a kubeconfig instead.
            env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod_dir, Path(mounts[token_mount])))
        command = list(c.get("command") or [])
        if not command:
            raise P.PodConfigError(
                "CreateContainerError",
                f"container {c['name']!r} has no command: the node agent runs no images, so the image's "
                "ENTRYPOINT is unknown; set spec.containers[0].command",
            )
        argv = [rewrite(P.expand_vars(str(a), pod_env)) for a in command + list(c.get("args") or [])]
        cwd = rewrite(c["workingDir"]) if c.get("workingDir") else str(pod_dir)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        if self._can_bind_mount():
            # No cluster DNS: the Service names the pod uses (`<pod>.<service>.<ns>.svc`) and its own
            # resolve to 127.0.0.1, where every pod of this machine listens.
            names = P.service_names([*argv, *env.values()])
            if spec.get("subdomain"):
                fqdn = f"{env['HOSTNAME']}.{spec['subdomain']}.{ns}.svc"
                names += [fqdn, f"{fqdn}.cluster.local"]
            hosts = pod_dir / "hosts"
            _write_atomic(hosts, P.hosts_file(Path("/etc/hosts"), env["HOSTNAME"], names).encode())
            binds.append((str(hosts), "/etc/hosts"))
            argv = _in_mount_namespace(binds, argv)
        return argv, env, cwd

    def _local_port(self, group: str, port: int) -> int:
        """The local port standing for `port` of the pods in `group` (one Service), shared by the
        node agents of this machine through a file each: the first pod to ask picks a free port."""
        folder = self.volumes_dir.parent / "ports" / group
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / str(port)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            for _ in range(50):  # written just now by another agent: its number is on its way
                text = path.read_text().strip()
                if text:
                    return int(text)
                time.sleep(0.01)
            raise
        local = P.free_local_port()
        with os.fdopen(fd, "w") as f:
            f.write(str(local))
        return local

    def _service_account_kubeconfig(self, pod_dir: Path, token_dir: Path) -> Path:
        path = pod_dir / "serviceaccount.kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "cluster", "cluster": {"server": self.server_url,
                                                          "certificate-authority": str(token_dir / "ca.crt")}}],
            "users": [{"name": "sa", "user": {"tokenFile": str(token_dir / "token")}}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": "sa"}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(config))
        return path

    async def _get(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        assert self._api is not None
        try:
            return await self._api.request(
                "GET", f"/api/v1/namespaces/{ns}/{plural}/{urllib.parse.quote(name)}"
            )
        except ApiError as e:
            if e.status == 404:
                return None
            if e.status == 403:
                raise P.PodConfigError(
                    "CreateContainerConfigError", f"{plural[:-1]} {ns}/{name}: {e.message}", retry=True
                ) from e
            raise

    async def _config_data(
        self, plural: str, ns: str, ref: dict[str, Any], key: str | None
    ) -> dict[str, str] | None:
        obj = await self._get(plural, ns, ref.get("name", ""))
        kind = "configmap" if plural == "configmaps" else "secret"
        if obj is None:
            if ref.get("optional"):
                return None
            raise P.PodConfigError(
                "CreateContainerConfigError", f'{kind} "{ref.get("name")}" not found', retry=True
            )
        data = dict(obj.get("data") or {})
        if plural == "secrets":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        if key is not None and key not in data:
            if ref.get("optional"):
                return None
            raise P.PodConfigError(
                "CreateContainerConfigError",
                f"couldn't find key {key} in {kind} {ns}/{ref.get('name')}",
                retry=True,
            )
        return data

    async def _env_value(self, pod: dict[str, Any], c: dict[str, Any], e: dict[str, Any]) -> str | None:
        if "value" in e:
            return str(e["value"])
        vf = e.get("valueFrom") or {}
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in vf:
            return P.field_ref(pod, vf["fieldRef"].get("fieldPath", ""))
        for kind, plural in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            if kind in vf:
                ref = vf[kind]
                data = await self._config_data(plural, ns, ref, ref.get("key"))
                return None if data is None else data[ref["key"]]
        if "resourceFieldRef" in vf:
            return P.resource_field_ref(c, vf["resourceFieldRef"].get("resource", ""))
        return ""

    async def _write_keys(self, d: Path, plural: str, ns: str, src: dict[str, Any], volume: str) -> None:
        """The files of a configMap/secret volume (or projected source): every key, or the listed items."""
        ref = {"name": src.get("name") or src.get("secretName"), "optional": src.get("optional")}
        obj = await self._get(plural, ns, str(ref["name"]))
        if obj is None:
            if ref["optional"]:
                return
            raise P.PodConfigError(
                "CreateContainerConfigError",
                f'volume {volume!r}: {plural[:-1]} "{ref["name"]}" not found',
                retry=True,
            )
        files: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            files[k] = base64.b64decode(v) if plural == "secrets" else v.encode()
        for k, v in (obj.get("binaryData") or {}).items():
            files[k] = base64.b64decode(v)
        for it in src.get("items") or [{"key": k, "path": k} for k in files]:
            if it["key"] not in files:
                if ref["optional"]:
                    continue
                raise P.PodConfigError(
                    "CreateContainerConfigError",
                    f"volume {volume!r}: key {it['key']!r} not found in {plural[:-1]} {ref['name']!r}",
                    retry=True,
                )
            target = d / it.get("path", it["key"])
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(target, files[it["key"]])

    async def _service_account_token(self, run: PodRun, src: dict[str, Any]) -> tuple[str, float]:
        """A token of the pod's ServiceAccount bound to the pod (TokenRequest), and its lifetime in s."""
        assert self._api is not None
        sa = run.pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(src.get("expirationSeconds") or 3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": run.name, "uid": run.uid},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        try:
            resp = await self._api.request(
                "POST", f"/api/v1/namespaces/{run.namespace}/serviceaccounts/{sa}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )  # fmt: skip
        except ApiError as e:
            raise P.PodConfigError(
                "CreateContainerConfigError",
                f"serviceaccount {run.namespace}/{sa} token: {e.message}",
                retry=True,
            ) from e
        return resp["status"]["token"], float(spec["expirationSeconds"])

    async def _refresh_token(self, run: PodRun, src: dict[str, Any], target: Path, lifetime: float) -> None:
        """Rewrite a projected token at 80% of its lifetime, as the kubelet does."""
        while True:
            await asyncio.sleep(lifetime * 0.8)
            try:
                token, lifetime = await self._service_account_token(run, src)
                _write_atomic(target, token.encode())
            except (P.PodConfigError, aiohttp.ClientError, TimeoutError) as e:
                log.warning(
                    "node %s: token refresh for %s/%s failed: %s", self.name, run.namespace, run.name, e
                )
                lifetime = 60 / 0.8

    async def _volumes(self, run: PodRun, pod_dir: Path) -> dict[str, Path]:
        pod = run.pod
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        for t in run.token_tasks:
            t.cancel()
        run.token_tasks = []
        for v in pod["spec"].get("volumes") or []:
            name = v.get("name", "")
            d = pod_dir / "volumes" / name
            if "configMap" in v or "secret" in v:
                plural = "configmaps" if "configMap" in v else "secrets"
                d.mkdir(parents=True, exist_ok=True)
                await self._write_keys(d, plural, ns, v.get("configMap") or v.get("secret") or {}, name)
                out[name] = d
            elif "projected" in v:
                d.mkdir(parents=True, exist_ok=True)
                for source in v["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        src = source["serviceAccountToken"]
                        token, lifetime = await self._service_account_token(run, src)
                        target = d / src.get("path", "token")
                        _write_atomic(target, token.encode())
                        run.token_tasks.append(
                            asyncio.get_running_loop().create_task(
                                self._refresh_token(run, src, target, lifetime)
                            )
                        )
                    elif "configMap" in source or "secret" in source:
                        plural = "configmaps" if "configMap" in source else "secrets"
                        await self._write_keys(
                            d, plural, ns, source.get("configMap") or source.get("secret"), name
                        )
                    elif "downwardAPI" in source:
                        self._write_downward(d, pod, source["downwardAPI"])
                out[name] = d
            elif "emptyDir" in v:
                out[name] = d
            elif "persistentVolumeClaim" in v:
                out[name] = self.volumes_dir / "pvc" / v["persistentVolumeClaim"]["claimName"]
            elif "hostPath" in v:
                out[name] = self.volumes_dir / "hostpath" / v["hostPath"]["path"].lstrip("/")
            elif "downwardAPI" in v:
                d.mkdir(parents=True, exist_ok=True)
                self._write_downward(d, pod, v["downwardAPI"])
                out[name] = d
            else:
                kinds = [k for k in v if k != "name"]
                raise P.PodConfigError(
                    "CreateContainerConfigError",
                    f"volume {name!r}: type {kinds} is not supported by the mnv2 node agent (configMap, secret, "
                    "projected, emptyDir, persistentVolumeClaim, hostPath, downwardAPI are)",
                )
            out[name].mkdir(parents=True, exist_ok=True)
        return out

    @staticmethod
    def _write_downward(d: Path, pod: dict[str, Any], src: dict[str, Any]) -> None:
        c = _first(pod)
        for it in src.get("items") or []:
            if "fieldRef" in it:
                value = P.field_ref(pod, it["fieldRef"].get("fieldPath", ""))
            elif "resourceFieldRef" in it:
                value = P.resource_field_ref(c, it["resourceFieldRef"].get("resource", ""))
            else:
                continue
            target = d / it["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(target, value.encode())

    # ---- the HTTPS endpoint (kubectl logs through the API server) --------------------------------

    async def _serve(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.client_ca_file))
        ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_private_key_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        app.router.add_route("*", "/{tail:.*}", self._unsupported)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, P.POD_IP, self.port, ssl_context=ctx, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _unsupported(self, request: web.Request) -> web.Response:
        return web.Response(
            status=501,
            text=f"{request.path}: the mnv2 node agent serves only /containerLogs and /healthz (no exec, attach or port-forward)\n",
        )

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        uid = self._by_name.get((ns, name))
        run = self._runs.get(uid or "")
        path = self.log_path(ns, name)
        if run is None and not path.exists():
            return web.Response(status=404, text=f"pod {ns}/{name} is not on node {self.name}\n")
        if run is not None and container != _first(run.pod)["name"]:
            return web.Response(
                status=400,
                text=f"container {container} of pod {ns}/{name} is not run by the mnv2 node agent\n",
            )
        q = request.query
        previous = q.get("previous") in ("true", "1")
        follow = q.get("follow") in ("true", "1") and not previous
        starts = run.log_starts if run is not None else [0]
        if previous:
            if len(starts) < 2:
                return web.Response(
                    status=400,
                    text=f'previous terminated container "{container}" in pod "{name}" not found\n',
                )
            start, end = starts[-2], starts[-1]
        else:
            start, end = (starts[-1] if starts else 0), None
        data = _read_range(path, start, end)
        offset = start + len(data)
        if q.get("tailLines"):
            n = int(q["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        sent = 0

        async def send(chunk: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                chunk = chunk[: max(0, limit - sent)]
            sent += len(chunk)
            if chunk:
                await resp.write(chunk)
            return limit is None or sent < limit

        more = await send(data)
        if follow and more and run is not None:
            done = run.instance_done
            while more:
                chunk = _read_range(path, offset, None)
                offset += len(chunk)
                more = await send(chunk)
                if done.is_set() and not chunk:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.2)
        await resp.write_eof()
        return resp


def _first(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def _read_range(path: Path, start: int, end: int | None) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(max(0, end - start))
    except OSError:
        return b""


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _host_port(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", str(parsed.port or 443)


def _in_mount_namespace(binds: list[tuple[str, str]], argv: list[str]) -> list[str]:
    """argv run in a private mount namespace where each (local, path) folder is bind-mounted at path.

    The mount points are created empty on the host (as a node has them); the binds are the pod's own.
    """
    script = []
    for i, (source, target) in enumerate(binds):
        if Path(source).is_dir():  # a file is bound over a file that is there (/etc/hosts)
            Path(target).mkdir(parents=True, exist_ok=True)
        script.append(f'mount --bind "$BIND_SRC_{i}" "$BIND_DST_{i}"')
    script.append('exec "$@"')
    env_args = [f"BIND_SRC_{i}={src}" for i, (src, _) in enumerate(binds)]
    env_args += [f"BIND_DST_{i}={dst}" for i, (_, dst) in enumerate(binds)]
    return ["unshare", "--mount", "--propagation", "private", "env", *env_args,
            "sh", "-c", " && ".join(script), "sh", *argv]  # fmt: skip


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _machine_capacity(folder: Path) -> dict[str, str]:
    """This machine's CPUs, memory and the size of the disk holding `folder`, and 110 pods."""
    memory_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    disk = folder
    while not disk.exists() and disk != disk.parent:
        disk = disk.parent
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "pods": "110",
        "ephemeral-storage": f"{shutil.disk_usage(disk).total // 1024}Ki",
    }
