"""A local cluster for the tests: the upstream control plane (`mnv2_cluster.launcher.Cluster`: etcd,
kube-apiserver with RBAC, admission and an audit log, kube-controller-manager, kube-scheduler), with
simulated Nodes (`mnv2_cluster.simulated.SimulatedNode`) or real ones (`mnv2_cluster.realnode.RealNode`).

    with local_cluster(tmp / "cluster", crds=[crd.crd_yaml()], simulated=["sim-0"]) as local:
        local.control_plane.kubectl("apply", "-f", ...)
        local.finish("ns", "job-worker-0", exit_code=0)   # a simulated pod ends now

Simulated nodes run nothing: their pods go Running and end when a test says (`finish`). Everything
started is stopped in order (nodes, then the control plane), also when a start fails half way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mnv2_cluster.launcher import Cluster
from mnv2_cluster.simulated import SimulatedNode

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def object_requests(
    events: Iterable[Mapping[str, Any]], username: str
) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(verb, objectRef, HTTP code) of each request `username` made for an object, from audit events.

    One record per request: a watch's when it starts, any other's when it completes. Requests for no
    object (discovery, /version) are left out.
    """
    for event in events:
        if (event.get("user") or {}).get("username") != username:
            continue
        if event.get("stage") != ("ResponseStarted" if event.get("verb") == "watch" else "ResponseComplete"):
            continue
        ref = event.get("objectRef")
        if ref is None:
            continue
        yield event["verb"], ref, int((event.get("responseStatus") or {}).get("code", 0))


@dataclass
class LocalCluster:
    """A started control plane and its started simulated nodes (by node name)."""

    control_plane: Cluster
    nodes: dict[str, SimulatedNode] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def node_of(self, namespace: str, pod: str, timeout: float = 30.0) -> SimulatedNode:
        """The node running `pod` (this pod: a pod made again under the same name is waited for),
        once the scheduler has bound it and the node has seen it."""
        core = self._core()

        def bound() -> Any:
            current = core.read_namespaced_pod(pod, namespace)
            return current if current.spec.node_name else None

        current = wait_for(f"pod {namespace}/{pod} bound to a node", bound, timeout)
        node = self.nodes[current.spec.node_name]
        uid = current.metadata.uid
        wait_for(
            f"pod {namespace}/{pod} seen by {node.name}", lambda: node.has_pod(namespace, pod, uid), timeout
        )
        return node

    def finish(
        self, namespace: str, pod: str, exit_code: int, reason: str | None = None, message: str | None = None
    ) -> None:
        """End a pod of a simulated node with `exit_code` (reason `Error` when not 0, unless given);
        `message` becomes its containers' termination message."""
        reason = reason if reason is not None else ("Error" if exit_code else None)
        self.node_of(namespace, pod).finish(
            namespace, pod, exit_code=exit_code, reason=reason, message=message
        )

    def _core(self) -> Any:
        import kubernetes

        if not hasattr(self, "_core_api"):
            self._core_api = kubernetes.client.CoreV1Api(self.control_plane.api_client())
        return self._core_api


@contextlib.contextmanager
def local_cluster(
    state_dir: Path,
    *,
    crds: Sequence[str] = (),
    simulated: Sequence[str] = (),
    node_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[LocalCluster]:
    """Start the control plane (with `crds` created before the controller manager starts, so garbage
    collection knows their kinds) and the named simulated nodes (`node_options`: a node's further
    `SimulatedNode` arguments, by name); stop all of it on exit."""
    control_plane = Cluster(state_dir, crds=list(crds))
    local = LocalCluster(control_plane)
    try:
        control_plane.start()
        for name in simulated:
            node = SimulatedNode.for_cluster(control_plane, name, **(node_options or {}).get(name, {}))
            local.nodes[name] = node
            node.start()
        yield local
    finally:
        for node in local.nodes.values():
            node.stop()
        control_plane.stop()


@contextlib.contextmanager
def real_node_cluster(
    state_dir: Path,
    nodes: Sequence[str],
    *,
    dns: bool = True,
    ascend_devices: Mapping[str, int] | None = None,
    crds: Sequence[str] = (),
) -> Iterator[tuple[Cluster, list[Any]]]:
    """The control plane on a node network of its own with real Nodes (`RealNode`: the upstream kubelet
    on containerd + runc, kube-proxy), as `mnv2 cluster` wires them: `nodes` started in
    order (each returns once Ready; `ascend_devices`: a node's number of `huawei.com/Ascend910`), then
    cluster DNS unless `dns` is false; `crds` are created before the controller manager starts. Yields the cluster and the started nodes; stops the nodes (last
    first), then the control plane, also when a start fails half way (its NodeError propagates)."""
    from mnv2_cluster.realnode import NodeNetwork, RealNode, start_cluster_dns

    cluster = Cluster(state_dir, network=NodeNetwork.allocate(), crds=list(crds))
    started: list[RealNode] = []
    try:
        cluster.start()
        for index, name in enumerate(nodes, start=1):
            devices = (ascend_devices or {}).get(name, 0)
            started.append(RealNode(cluster, name, index, ascend_devices=devices).start())
        if dns:
            start_cluster_dns(cluster)
        yield cluster, started
    finally:
        for node in reversed(started):
            node.stop()
        cluster.stop()
