"""Security: a job never takes over, changes or deletes an object it does not own.

An object is the job's only when its controller owner reference carries the job's uid. Anything else
with a child's name (another application's ConfigMap, Service, ServiceAccount, Role, RoleBinding,
PodGroup or pod) is left byte for byte as it was, survives the job's deletion, and blocks the job
with a condition and a Warning Event that name it and the fix.

Written against the public API only (the Kubernetes client), so it runs unchanged on the local control
plane and on any other cluster (`--kubeconfig`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from mnv2_operator.constants import GROUP, PLURAL, VERSION
from support.operator import (
    Cluster,
    condition,
    events_of,
    job_spec,
    operator,
    wait_for,
)
from volcano import PODGROUP_CRD

pytestmark = pytest.mark.cluster

PG_GROUP, PG_VERSION, PG_PLURAL = "scheduling.volcano.sh", "v1beta1", "podgroups"


def other_owner(c: Cluster, ns: str) -> dict[str, Any]:
    """Not the job's: a controller reference to another application's Deployment (a live one: the
    garbage collector deletes an object whose owners are all gone)."""
    import kubernetes

    deployment = kubernetes.client.AppsV1Api(c.client).create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "someone-else"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "someone-else"}},
                "template": {
                    "metadata": {"labels": {"app": "someone-else"}},
                    "spec": {"containers": [{"name": "main", "image": "busybox"}]},
                },
            },
        },
    )
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": "someone-else",
            "uid": deployment.metadata.uid, "controller": True}  # fmt: skip


def _plain(c: Cluster, obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else c.client.sanitize_for_serialization(obj)


def foreign_objects(c: Cluster, ns: str, job: str, gang: bool) -> dict[str, Callable[[], Any]]:
    """Create another application's object under each child name of `job`; return readers of them."""
    labels = {"app": "someone-else"}
    c.core.create_namespaced_config_map(
        ns, {"metadata": {"name": f"{job}-config", "labels": labels}, "data": {"config.yaml": "mine: 1\n"}}
    )
    c.core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": job, "labels": labels},
            "spec": {"selector": {"app": "someone-else"}, "ports": [{"name": "web", "port": 80}]},
        },
    )
    c.core.create_namespaced_service_account(
        ns, {"metadata": {"name": f"{job}-trainer", "ownerReferences": [other_owner(c, ns)]}}
    )
    c.rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": f"{job}-trainer", "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    c.rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": f"{job}-trainer", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{job}-trainer"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        },
    )
    readers: dict[str, Callable[[], Any]] = {
        f"ConfigMap {job}-config": lambda: c.core.read_namespaced_config_map(f"{job}-config", ns),
        f"Service {job}": lambda: c.core.read_namespaced_service(job, ns),
        f"ServiceAccount {job}-trainer": lambda: c.core.read_namespaced_service_account(f"{job}-trainer", ns),
        f"Role {job}-trainer": lambda: c.rbac.read_namespaced_role(f"{job}-trainer", ns),
        f"RoleBinding {job}-trainer": lambda: c.rbac.read_namespaced_role_binding(f"{job}-trainer", ns),
    }
    if gang:
        c.custom.create_namespaced_custom_object(
            PG_GROUP,
            PG_VERSION,
            ns,
            PG_PLURAL,
            {
                "apiVersion": f"{PG_GROUP}/{PG_VERSION}",
                "kind": "PodGroup",
                "metadata": {"name": job, "labels": labels},
                "spec": {"minMember": 5, "queue": "theirs"},
            },
        )
        readers[f"PodGroup {job}"] = lambda: c.custom.get_namespaced_custom_object(
            PG_GROUP, PG_VERSION, ns, PG_PLURAL, job
        )
    return readers


def foreign_pod(c: Cluster, ns: str, name: str) -> Callable[[], Any]:
    """Someone else's pod named like a worker, once nothing changes it any more.

    A scheduling gate holds it unscheduled on a real cluster (the scheduler writes its condition
    once).
    """
    c.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name, "labels": {"app": "someone-else"}},
            "spec": {
                "schedulingGates": [{"name": "example.com/hold"}],
                "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
            },
        },
    )

    def at_rest() -> bool:
        pod = c.core.read_namespaced_pod(name, ns)
        gated = any(x.reason == "SchedulingGated" for x in pod.status.conditions or [])
        return gated or pod.status.phase == "Running"

    wait_for(f"pod {name} gated or running", at_rest)
    return lambda: c.core.read_namespaced_pod(name, ns)


def snapshot(c: Cluster, readers: dict[str, Callable[[], Any]]) -> dict[str, dict[str, Any]]:
    return {k: _plain(c, read()) for k, read in readers.items()}


def blocked(c: Cluster, ns: str, name: str, *needles: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        s = c.status(ns, name)
        return s if all(n in (s.get("message") or "") for n in needles) else None

    return check


@pytest.fixture
def podgroups(cluster: Cluster) -> Any:  # noqa: F811
    """Volcano's PodGroup kind served for the test (installed if missing, removed again if so)."""
    import kubernetes

    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)
    installed = False
    try:
        ext.create_custom_resource_definition(PODGROUP_CRD)
        installed = True
    except kubernetes.client.ApiException as err:
        if err.status != 409:
            raise

    def served() -> bool:
        try:
            cluster.custom.list_cluster_custom_object(PG_GROUP, PG_VERSION, PG_PLURAL)
            return True
        except kubernetes.client.ApiException:
            return False

    wait_for("the PodGroup kind served", served)
    yield
    if installed:
        with contextlib.suppress(kubernetes.client.ApiException):
            ext.delete_custom_resource_definition(PODGROUP_CRD["metadata"]["name"])


def test_objects_the_job_does_not_own_are_left_byte_identical_and_outlive_it(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
    podgroups: Any,
) -> None:
    ns = namespace
    # One job meets another application's object under every child name but its pods (blocked
    # before it would create any); another meets one under its worker pod's name only.
    readers = foreign_objects(cluster, ns, "victim", gang=True)
    readers["Pod solo-worker-0"] = foreign_pod(cluster, ns, "solo-worker-0")
    before = snapshot(cluster, readers)
    gang = job_spec(nodes=1)
    gang["scheduling"] = {"gang": True}
    with operator(ns):
        cluster.create_job(ns, "victim", gang)
        cluster.create_job(ns, "solo", job_spec(nodes=1))
        kinds = ("ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding", "PodGroup")
        s = wait_for(
            "victim blocked, naming every object in its way",
            blocked(cluster, ns, "victim", *(n for n in readers if not n.startswith("Pod ")), "delete"),
        )
        assert s["phase"] == "Pending", s
        created = condition(s, "Created")
        assert (created["status"], created["reason"]) == ("False", "ChildConflict"), created
        assert all(k in s["message"] for k in kinds)
        assert "ServiceAccount victim-trainer (controlled by Deployment someone-else)" in s["message"]
        assert "ConfigMap victim-config (no controller owner reference)" in s["message"]
        assert "re-create this job under another name" in s["message"]
        s = wait_for("solo blocked by the pod", blocked(cluster, ns, "solo", "Pod solo-worker-0"))
        assert condition(s, "Created")["reason"] == "ChildConflict"
        for job in ("victim", "solo"):
            wait_for(
                f"{job}'s ChildConflict Event", lambda j=job: "ChildConflict" in events_of(cluster, ns, j)
            )
        # Its own children (not in the way) were created; the pod in the way is not replaced.
        assert cluster.core.read_namespaced_config_map("solo-config", ns).metadata.owner_references
        assert cluster.pods(ns, "victim") == [] and cluster.pods(ns, "solo") == []
        # Looked at again with backoff, but said once and never touched.
        time.sleep(2.5)
        assert events_of(cluster, ns, "victim").count("ChildConflict") == 1
        after = snapshot(cluster, readers)
        for k in before:
            assert after[k] == before[k], k
        for job in ("victim", "solo"):
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job)
        wait_for(
            "the jobs gone", lambda: cluster.job(ns, "victim") is None and cluster.job(ns, "solo") is None
        )

    import kubernetes

    def solo_config_gone() -> bool:
        try:
            cluster.core.read_namespaced_config_map("solo-config", ns)
            return False
        except kubernetes.client.ApiException as err:
            return err.status == 404

    # The garbage collector has removed what the jobs owned ...
    wait_for("the garbage collector to remove solo's own ConfigMap", solo_config_gone, timeout=60)
    # ... and nothing else: every pre-existing object is still there, unchanged to the resourceVersion.
    after = snapshot(cluster, readers)
    for k in before:
        assert after[k] == before[k], k


def test_a_blocked_job_starts_by_itself_once_the_object_in_its_way_is_gone(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    ns, name = namespace, "patient"
    cluster.core.create_namespaced_config_map(
        ns, {"metadata": {"name": f"{name}-config"}, "data": {"a": "b"}}
    )
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1))
        s = wait_for("blocked", blocked(cluster, ns, name, f"ConfigMap {name}-config"))
        assert condition(s, "Created")["reason"] == "ChildConflict"
        assert cluster.core.read_namespaced_config_map(f"{name}-config", ns).data == {"a": "b"}
        cluster.core.delete_namespaced_config_map(f"{name}-config", ns)
        # Re-checked after 1 s, doubling: the pod comes within a few seconds, with the job's config.
        wait_for("the job's pod", lambda: len(cluster.pods(ns, name)) == 1, timeout=30)
        config = cluster.core.read_namespaced_config_map(f"{name}-config", ns)
        assert "config.yaml" in config.data
        job = cluster.job(ns, name)
        assert job is not None
        assert [r.uid for r in config.metadata.owner_references] == [job["metadata"]["uid"]]
        s = wait_for(
            "the conflict cleared",
            lambda: (x := cluster.status(ns, name)) and condition(x, "Created")["status"] == "True" and x,
        )
        assert "not this job's" not in s["message"]
