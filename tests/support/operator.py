"""The harness of the operator's integration tests (tests/integration/operator): the API under test,
the operator run in-process by kopf's KopfRunner, jobs, and the waits and reads the tests share.

The fixtures that start it (`cluster`, `namespace`) are in tests/integration/operator/conftest.py.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from kopf.testing import KopfRunner
from mnv2_operator import render
from mnv2_operator.constants import GROUP, PLURAL, VERSION

from support.cluster import LocalCluster, object_requests
from support.cluster import wait_for as _wait_for

T = TypeVar("T")
#: How long the operator's tests wait for a condition unless they say otherwise.
WAIT = 20.0

OPERATOR_USER = "mnv2-operator-under-test"
_markers = itertools.count()


@dataclass(frozen=True)
class Request:
    """One request of the operator, from the API server's audit log."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int


class Cluster:
    """The API under test: the local control plane with simulated nodes, or another cluster.

    `kubeconfig` is the operator's; the test's own requests go through `client` (the admin).
    """

    def __init__(self, kubeconfig: str, admin_kubeconfig: str, local: LocalCluster | None = None) -> None:
        import kubernetes

        self.kubeconfig = kubeconfig
        self.local = local
        self.client = kubernetes.config.new_client_from_config(config_file=admin_kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.client)

    def finish(self, namespace: str, pod: str, exit_code: int, message: str | None = None) -> None:
        """End a pod; `message` is its container's termination message (state.terminated.message)."""
        if self.local is None:
            pytest.skip("needs the local simulated nodes to decide how pods end")
        self.local.finish(namespace, pod, exit_code, message=message)

    @property
    def audit(self) -> list[Request]:
        """The operator's requests so far, in order (the audit log only grows: indexes stay valid)."""
        if self.local is None:
            pytest.skip("reads the local API server's audit log")
        return [
            Request(verb, ref.get("apiGroup", ""), ref.get("resource", ""), ref.get("subresource", ""),
                    ref.get("namespace", ""), ref.get("name", ""), code)
            for verb, ref, code in object_requests(self.local.control_plane.audit_events(), OPERATOR_USER)
        ]  # fmt: skip

    def audit_settled(self) -> list[Request]:
        """`audit` once the log has caught up with every answer the operator has had.

        The API server writes a request's record after sending its answer, so the operator's last
        requests can be missing from the file for a moment after it stopped. A request of the test's,
        made now, is recorded after them: wait for its record first."""
        marker = f"audit-marker-{next(_markers)}"
        with contextlib.suppress(Exception):
            self.core.read_namespace(marker)  # 404: only its audit record matters
        wait_for(
            "the audit log caught up",
            lambda: any(
                (e.get("objectRef") or {}).get("name") == marker
                for e in self.local.control_plane.audit_events()
            ),
        )
        return self.audit

    # -- jobs
    def create_job(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MobileNetV2TrainingJob"}
        body |= {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.job(namespace, name) or {}).get("status") or {}

    def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": patch},
            _content_type="application/merge-patch+json",
        )

    def pods(self, namespace: str, job: str) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in render.pod_selector(job).items())
        return self.core.list_namespaced_pod(namespace, label_selector=selector).items


def wait_for(what: str, fn: Callable[[], T], timeout: float = WAIT) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` after `timeout` seconds."""
    return _wait_for(what, fn, timeout)


def install_crd(c: Cluster) -> None:
    """Create (or replace) the CRD from crd.crd_yaml() and wait until the API serves it."""
    import kubernetes
    import yaml
    from mnv2_operator import crd

    body = yaml.safe_load(crd.crd_yaml())
    api = kubernetes.client.ApiextensionsV1Api(c.client)
    try:
        api.create_custom_resource_definition(body)
    except kubernetes.client.ApiException as err:
        if err.status != 409:
            raise
        current = api.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        api.replace_custom_resource_definition(body["metadata"]["name"], body)

    def served() -> bool:
        try:
            c.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            return True
        except kubernetes.client.ApiException:
            return False

    wait_for("the CRD to be served", served)


def grant_chart_rbac(admin: Any, user: str) -> None:
    """Give `user` exactly the rules the chart grants the operator, so the API server's authorizer
    refuses whatever it would refuse the installed operator.

    The tests run kopf with `--namespace`, as the chart's namespaced mode does: its ClusterRole of
    cluster-scoped reads (CRDs, and namespaces, which kopf lists to follow the ones it serves), and its
    per-namespace rules, bound here cluster-wide because every test makes its own namespace.
    """
    import kubernetes

    from manifests import render_chart

    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    roles = [o for o in render_chart({"watchNamespaces": ["any"]}) if o["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 2, [r["metadata"]["name"] for r in roles]
    for i, role in enumerate(roles):
        name = f"{user}-chart-rules-{i}"
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": role["rules"]})
        rbac.create_cluster_role_binding({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        })  # fmt: skip


@contextlib.contextmanager
def operator(namespace: str) -> Iterator[KopfRunner]:
    """The operator watching one namespace, in this process; fails the test if it crashed."""
    args = ["run", "--standalone", "--namespace", namespace, "-m", "mnv2_operator.handlers"]
    with KopfRunner(args, timeout=30) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert "Traceback" not in runner.output, runner.output


def job_spec(nodes: int = 2, **run_policy: Any) -> dict[str, Any]:
    return {
        "model": {"name": "mobilenet_v2_035_96", "numClasses": 10},
        "dataset": {"type": "digits"},
        "accelerator": {"type": "cpu"},
        "devicesPerNode": 1,
        "nodes": nodes,
        "output": {"pvc": {"claimName": "runs"}},
        "runPolicy": run_policy,
    }


def phase_is(cluster: Cluster, ns: str, name: str, phase: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        s = cluster.status(ns, name)
        return s if s.get("phase") == phase else None

    return check


def running_pods(cluster: Cluster, ns: str, name: str, n: int, attempt: int) -> Callable[[], list[Any]]:
    def check() -> list[Any]:
        pods = [p for p in cluster.pods(ns, name) if not p.metadata.deletion_timestamp]
        ok = len(pods) == n and all(
            p.status.phase == "Running" and p.metadata.labels[render.LABEL_ATTEMPT] == str(attempt)
            for p in pods
        )
        return pods if ok else []

    return check


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def events_of(cluster: Cluster, ns: str, name: str) -> list[str]:
    events = cluster.core.list_namespaced_event(ns).items
    return [e.reason for e in events if e.involved_object.name == name]
