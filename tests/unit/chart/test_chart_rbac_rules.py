"""The chart's RBAC in its two modes, evaluated with the pure RBAC evaluator."""

from __future__ import annotations

from typing import Any

from mnv2_operator import constants as C
from support.rbac import Request, allowed, grants_for_service_account

from manifests import render_chart

SA, SA_NS = "mnv2-operator", "mnv2-system"
JOBS = C.GROUP


def grants(values: dict[str, Any] | None = None):
    return grants_for_service_account(render_chart(values), SA, SA_NS)


def all_rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    objects = render_chart(values)
    return [rule for obj in objects if obj["kind"] in ("Role", "ClusterRole") for rule in obj["rules"]]


def test_no_wildcards_anywhere() -> None:
    for values in (None, {"watchNamespaces": ["a"]}):
        for rule in all_rules(values):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), rule
            assert "nonResourceURLs" not in rule


def test_cluster_wide_mode_grants_job_handling_in_every_namespace() -> None:
    g = grants()
    for ns in ("default", "team-x"):
        assert allowed(g, Request("patch", JOBS, "mobilenetv2trainingjobs", "status", ns, "job1"))
        assert allowed(g, Request("create", "", "pods", namespace=ns))
        assert allowed(g, Request("create", "rbac.authorization.k8s.io", "roles", namespace=ns))
    # kopf lists and watches across all namespaces (namespace "").
    assert allowed(g, Request("watch", JOBS, "mobilenetv2trainingjobs"))
    assert allowed(g, Request("list", "apiextensions.k8s.io", "customresourcedefinitions"))
    # Nothing it does not need.
    assert not allowed(g, Request("get", "", "secrets", namespace="default", name="x"))
    assert not allowed(g, Request("update", JOBS, "mobilenetv2trainingjobs", namespace="default", name="x"))
    assert not allowed(g, Request("create", "rbac.authorization.k8s.io", "clusterroles"))
    assert not allowed(g, Request("list", "", "namespaces"))  # not needed when cluster-wide


def test_namespaced_mode_grants_only_the_listed_namespaces() -> None:
    g = grants({"watchNamespaces": ["team-a", "team-b"]})
    for ns in ("team-a", "team-b"):
        assert allowed(g, Request("watch", JOBS, "mobilenetv2trainingjobs", namespace=ns))
        assert allowed(g, Request("create", "", "pods", namespace=ns))
    assert not allowed(g, Request("create", "", "pods", namespace="default"))
    assert not allowed(g, Request("watch", JOBS, "mobilenetv2trainingjobs"))  # cluster-wide watch
    # What kopf still reads cluster-wide: CRDs and namespaces, read-only.
    assert allowed(g, Request("watch", "apiextensions.k8s.io", "customresourcedefinitions"))
    assert allowed(g, Request("list", "", "namespaces"))
    assert not allowed(g, Request("create", "", "namespaces"))


def test_operator_holds_what_the_trainer_role_grants() -> None:
    # Kubernetes refuses to let the operator create the per-job trainer Role unless the operator holds
    # every right in it (RBAC escalation prevention): patch on its job's status, and nothing more.
    for values in (None, {"watchNamespaces": ["team-a"]}):
        g = grants(values)
        assert allowed(g, Request("patch", JOBS, "mobilenetv2trainingjobs", "status", "team-a", "any-job"))
        for verb in ("get", "update", "create", "delete"):
            assert not allowed(g, Request(verb, JOBS, "mobilenetv2trainingjobs", "status", "team-a", "j"))


def test_children_that_never_change_are_never_patched() -> None:
    # Service, ServiceAccount, Role and RoleBinding are complete once created (render.FIXED_KINDS).
    g = grants()
    for group, resource in [
        ("", "services"),
        ("", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ]:
        assert allowed(g, Request("create", group, resource, namespace="ns"))
        assert allowed(g, Request("get", group, resource, namespace="ns", name="j-trainer"))
        for verb in ("patch", "update", "delete", "list"):
            assert not allowed(g, Request(verb, group, resource, namespace="ns", name="j-trainer"))
    # What follows the spec is patched to the rendered form.
    assert allowed(g, Request("patch", "", "configmaps", namespace="ns", name="j-config"))
    assert allowed(g, Request("patch", "scheduling.volcano.sh", "podgroups", namespace="ns", name="j"))


def test_gang_scheduling_rights_follow_the_value() -> None:
    podgroup = Request("create", "scheduling.volcano.sh", "podgroups", namespace="default")
    assert allowed(grants(), podgroup)
    assert not allowed(grants({"rbac": {"create": True, "gangScheduling": False}}), podgroup)


def test_bindings_name_the_operator_service_account() -> None:
    custom = {"serviceAccount": {"create": True, "name": "custom-sa"}}
    objects = render_chart(custom)
    assert grants_for_service_account(objects, "custom-sa", SA_NS)
    assert not grants_for_service_account(objects, SA, SA_NS)
