"""Simulated Nodes: a test double of a kubelet, whose pods run nothing and end when a test says.

The operator's integration tests and ``benchmarks/operator_scale.py`` need pods whose end they decide:
a worker that fails with exit code 1 and a given termination message, a node fault (137), a thousand
pods that end by themselves after 5 s. A ``SimulatedNode`` joins the real control plane as a Node for
that, as upstream kubemark's hollow nodes do, and the real scheduler binds pods to it; each pod goes
Running and ends with the outcome the test sets (``finish``, ``kill``, ``default_outcome``). It runs no
containers and no processes and serves no kubelet endpoint (``kubectl logs`` and ``exec`` do not work on
its pods). Users never meet it: ``mnv2 cluster``, the demo and the end-to-end tests run pods on real
Nodes (``mnv2_cluster.realnode``, docs/real-nodes.md). What it does and does not: docs/simulated-nodes.md.

It talks to the API server as a kubelet does, as ``system:node:<name>`` (group ``system:nodes``) with a
client certificate, so the Node authorizer and the NodeRestriction admission plugin limit it to its own
Node, its own Lease and the pods bound to it:

- registration: the Node with labels, capacity/allocatable (an Atlas 800 training server's unless
  given), addresses, a ``Ready`` condition kept fresh, and a Lease in ``kube-node-lease`` renewed every
  ``lease_renew_seconds`` (the node lifecycle controller taints a node whose Lease goes stale
  ``node.kubernetes.io/unreachable`` and evicts its pods);
- pods: watched with ``fieldSelector=spec.nodeName=<name>``, their status written through the
  ``pods/status`` subresource; a deleted pod gets its final status (exit code 143 once Running), then
  the final delete with ``gracePeriodSeconds=0`` and the pod's uid as precondition.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from mnv2_cluster.ascend import ASCEND_LABELS, ASCEND_RESOURCE

log = logging.getLogger("mnv2_cluster.simulated")

#: What a simulated node reports: the size of an Atlas 800 training server (4 x 48 Kunpeng cores), so
#: that its pods are limited by what such a node holds, not by the machine the tests run on.
SIMULATED_CAPACITY = {"cpu": "192", "memory": "1536Gi", "pods": "110", "ephemeral-storage": "1Ti"}
#: The address a simulated node and its pods report (nothing listens there for them).
ADDRESS = "127.0.0.1"
#: A kubelet keeps at most this much of a termination message.
MAX_TERMINATION_MESSAGE_BYTES = 4096
#: How long a new pod stays Pending before it goes Running (unless its outcome is set first).
PENDING_SECONDS = 0.2


def ascend_node_options(devices: int = 8) -> dict[str, Any]:
    """Labels, extra capacity and taint of a node labelled as MindCluster labels Ascend training nodes.

    The taint carries the device resource's name, as accelerator nodes are commonly tainted: with the
    API server's ExtendedResourceToleration admission plugin, pods requesting the devices tolerate it
    and other pods are kept off the node.
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
    """What the node knows of one pod bound to it."""

    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    #: (exit code, reason): set by finish(), kill(), default_outcome or the pod's deletion.
    outcome: asyncio.Future[tuple[int, str | None]]
    task: asyncio.Task[None] | None = None
    deleting: bool = False
    started: bool = False  # it went Running (a deletion then ends it with 143)
    termination_message: str | None = None


class SimulatedNode:
    """A Node of a real control plane whose pods run nothing: a test ends each with the outcome it wants.

    Args:
        name: the Node's name; the kubeconfig's client certificate must be ``system:node:<name>``.
        kubeconfig: the node's kubeconfig (API server URL, cluster CA, client certificate and key).
        labels: the Node's labels (``kubernetes.io/hostname``, ``kubernetes.io/os`` and
            ``kubernetes.io/arch`` are added).
        capacity: cpu, memory, pods, ephemeral-storage (default: an Atlas 800 training server's,
            SIMULATED_CAPACITY).
        extra_capacity: extended resources, e.g. ``{"huawei.com/Ascend910": "8"}``.
        taints: the Node's taints at registration.
        lease_duration_seconds, lease_renew_seconds: its Lease in ``kube-node-lease``.
        status_report_seconds: how often the Node's status (its ``Ready`` heartbeat) is written.

    A pod bound here is Pending for PENDING_SECONDS, then Running (every container running and ready)
    until its outcome is set: ``finish()``, ``kill()``, ``default_outcome`` (``(seconds, exit code)``: pods
    end by themselves that long after they went Running) or its deletion (143, or 0 if not yet
    Running). It then ends Succeeded (exit code 0) or Failed, every container terminated with
    that exit code. ``restartPolicy`` is not followed: a simulated pod ends once.
    """

    def __init__(
        self,
        name: str,
        kubeconfig: str | Path,
        *,
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        extra_capacity: dict[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        lease_duration_seconds: int = 40,
        lease_renew_seconds: float = 10.0,
        status_report_seconds: float = 60.0,
    ):
        self.name = name
        self.kubeconfig = Path(kubeconfig)
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            **(labels or {}),
        }
        self.capacity = {**SIMULATED_CAPACITY, **(capacity or {}), **(extra_capacity or {})}
        self.taints = list(taints or [])
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
        self._tasks: list[asyncio.Task[Any]] = []
        self._ready_since: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._version = ""

    @classmethod
    def for_cluster(cls, cluster: Any, name: str, **options: Any) -> SimulatedNode:
        """A node (not started) named `name` of a local `mnv2_cluster.launcher.Cluster`, with the
        credentials of `system:node:<name>` from the cluster's CA; `options` as for the constructor."""
        return cls(name, kubeconfig=cluster.kubeconfig_for_node(name), **options)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> SimulatedNode:
        """Register the Node (Ready) and its Lease, watch pods; returns when registered."""
        if self._thread is not None:
            return self
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
        """Stop watching pods and the heartbeats. The Node object and its pods stay as last written
        (as a stopped kubelet leaves them): the node lifecycle controller marks the Node unreachable
        later and evicts its pods."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._thread = self._loop = None

    def __enter__(self) -> SimulatedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self, ssl_context: ssl.SSLContext) -> None:
        self._api = Api(self.server_url, ssl_context)
        await self._api.open()
        await self._register()
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._status_loop(), name="node-status"),
            asyncio.create_task(self._watch_pods(), name="pod-watch"),
        ]

    async def _shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        tasks += list(self._background)
        for t in tasks:
            t.cancel()
        if tasks or self._tasks:
            await asyncio.wait([*tasks, *self._tasks], timeout=5)
        if self._api is not None:
            await self._api.close()

    # ---- what a test does ------------------------------------------------------------------------

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
        """The node runs (or ran) this pod: it is bound here and seen (with this uid, if given)."""
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
        """End a pod now, Succeeded (exit 0) or Failed, with that exit code and `reason` (default:
        `Completed` for 0, else `Error`).

        `message` becomes the containers' `state.terminated.message` (what the trainer writes to its
        terminationMessagePath), cut to 4096 bytes as a kubelet does. A pod created a moment ago may
        not be bound and seen yet: up to `wait` seconds are given for that.

        Raises:
            LookupError: no such pod is on this node (after `wait`).
        """

        def do() -> None:
            run = self._run_named(namespace, name)
            if not run.outcome.done() and message:
                data = message.encode()[:MAX_TERMINATION_MESSAGE_BYTES]
                run.termination_message = data.decode(errors="replace")
            _set_outcome(run, exit_code, reason)

        self._await_pod(namespace, name, wait)
        self._call(do)

    def kill(self, namespace: str, name: str, wait: float = 10.0) -> None:
        """A node fault: the pod fails now with exit code 137 (SIGKILL), reason `Error`.

        Raises:
            LookupError: no such pod is on this node (after `wait` seconds, as for finish()).
        """
        self.finish(namespace, name, 137, "Error", wait=wait)

    # ---- the Node and its Lease ------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        t = _now()

        def cond(type_: str, reason: str, message: str, status: str = "False") -> dict[str, Any]:
            return {"type": type_, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": t, "lastTransitionTime": self._ready_since or t}  # fmt: skip

        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                cond(
                    "MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
                ),
                cond("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "KubeletReady", "mnv2 simulated node is posting ready status", "True"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": ADDRESS},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "mnv2 simulated node",
                "containerRuntimeVersion": "mnv2-simulated://0",
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
        self._ready_since = _now()
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
        renewed = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": self.lease_duration_seconds,
                "renewTime": renewed}  # fmt: skip
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

    # ---- pods ------------------------------------------------------------------------------------

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
                _set_outcome(run, 137, "Error")
                self._forget(run)
            return
        if run is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                # Ended before this node knew it (an earlier node ran it): only the final delete is left.
                if meta.get("deletionTimestamp"):
                    self._spawn(self._final_delete_pod(meta["namespace"], meta["name"], uid))
                return
            loop = asyncio.get_running_loop()
            # The outcome exists from now on, not from when the task first runs: a finish() right after
            # the create must work.
            run = PodRun(meta["namespace"], meta["name"], uid, pod, outcome=loop.create_future())
            self._runs[uid] = run
            self._by_name[(run.namespace, run.name)] = uid
            run.task = loop.create_task(self._guard(run))
        run.pod = pod
        if meta.get("deletionTimestamp"):
            self._begin_delete(run)

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

    def _begin_delete(self, run: PodRun) -> None:
        """A deleted pod ends at once (143 once Running), whatever its grace period; then the final delete."""
        first = not run.deleting
        run.deleting = True
        if run.task is not None and run.task.done():  # it ended already
            if first:
                self._spawn(self._final_delete_pod(run.namespace, run.name, run.uid))
                self._forget(run)
            return
        _set_outcome(run, *((143, "Error") if run.started else (0, None)))

    async def _guard(self, run: PodRun) -> None:
        try:
            await self._run(run)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must not stop the loop; show it on the pod instead
            log.exception("node %s: pod %s/%s", self.name, run.namespace, run.name)
            with contextlib.suppress(Exception):
                waiting = {"waiting": {"reason": "SimulatedNodeError", "message": f"{type(e).__name__}: {e}"}}
                await self._patch_status(run, "Pending", waiting, ready=False)
        finally:
            if run.deleting and self._runs.get(run.uid) is run:
                with contextlib.suppress(Exception):
                    await self._final_delete_pod(run.namespace, run.name, run.uid)
                self._forget(run)

    async def _run(self, run: PodRun) -> None:
        with contextlib.suppress(TimeoutError):
            # Pending for a moment (the pod is seen Pending), unless its outcome comes first.
            await asyncio.wait_for(asyncio.shield(run.outcome), PENDING_SECONDS)
        if run.deleting:
            return
        started = _now()
        cid = f"mnv2-simulated://{run.uid[:8]}"
        run.started = True
        await self._patch_status(run, "Running", {"running": {"startedAt": started}}, ready=True, cid=cid)
        if self.default_outcome is not None:
            seconds, code = self.default_outcome
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.outcome), seconds)
            _set_outcome(run, code, None)
        exit_code, reason = await run.outcome
        term = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "startedAt": started, "finishedAt": _now(), "containerID": cid}  # fmt: skip
        if run.termination_message:
            term["message"] = run.termination_message
        phase = "Succeeded" if exit_code == 0 else "Failed"
        await self._patch_status(run, phase, {"terminated": term}, ready=False, cid=cid)

    async def _patch_status(
        self, run: PodRun, phase: str, state: dict[str, Any], *, ready: bool, cid: str = ""
    ) -> None:
        """Write the pod's phase, conditions and containers' `state` (every container the same) as a
        merge patch carrying the pod's uid, so that a new pod of the same name is never written to."""
        assert self._api is not None
        t = _now()
        running = "running" in state
        containers = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "containerID": cid,
             "restartCount": 0, "started": running, "ready": ready, "state": state}
            for c in run.pod["spec"]["containers"]
        ]  # fmt: skip
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": ADDRESS,
            "hostIPs": [{"ip": ADDRESS}],
            "startTime": (run.pod.get("status") or {}).get("startTime") or t,
            "conditions": pod_conditions(
                run.pod, ready, t, "PodCompleted" if "terminated" in state else None
            ),
            "containerStatuses": containers,
        }
        if running:
            status["podIP"], status["podIPs"] = ADDRESS, [{"ip": ADDRESS}]
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


def _set_outcome(run: PodRun, exit_code: int, reason: str | None) -> None:
    """End the pod with this outcome, unless it has one already (the first one set wins)."""
    if not run.outcome.done():
        run.outcome.set_result((exit_code, reason))


def pod_conditions(pod: dict[str, Any], ready: bool, t: str, reason: str | None) -> list[dict[str, Any]]:
    """The kubelet's pod conditions; PodScheduled is kept as the scheduler wrote it, and a condition
    that keeps its status keeps its transition time."""

    def cond(type_: str, ok: bool) -> dict[str, Any]:
        c: dict[str, Any] = {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None,
                             "lastTransitionTime": t}  # fmt: skip
        if not ok:
            c["reason"] = reason or "ContainersNotReady"
        return c

    old = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    out = [cond("PodReadyToStartContainers", True), cond("Initialized", True), cond("Ready", ready),
           cond("ContainersReady", ready)]  # fmt: skip
    for c in out:
        prev = old.get(c["type"])
        if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
    out.append(old.get("PodScheduled") or cond("PodScheduled", True))
    return out


def _now() -> str:
    """The current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
