"""The pure RBAC evaluator follows Kubernetes' RBAC semantics."""

from __future__ import annotations

import pytest
from support.rbac import (
    Grant,
    Request,
    allowed,
    denied_requests,
    grants_for_service_account,
    rule_allows,
    unused_rules,
)


def rule(groups, resources, verbs, names=None):
    out = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names:
        out["resourceNames"] = names
    return out


@pytest.mark.parametrize(
    ("the_rule", "request_", "expected"),
    [
        (rule([""], ["pods"], ["get"]), Request("get", "", "pods", namespace="a", name="p"), True),
        (rule([""], ["pods"], ["get"]), Request("list", "", "pods", namespace="a"), False),
        (rule(["apps"], ["pods"], ["get"]), Request("get", "", "pods", namespace="a", name="p"), False),
        (rule([""], ["pods"], ["get"]), Request("get", "", "pods", "log", "a", "p"), False),
        (rule([""], ["pods/log"], ["get"]), Request("get", "", "pods", "log", "a", "p"), True),
        (rule([""], ["pods/log"], ["get"]), Request("get", "", "pods", namespace="a", name="p"), False),
        (rule([""], ["*/log"], ["get"]), Request("get", "", "pods", "log", "a", "p"), True),
        (rule(["*"], ["*"], ["*"]), Request("delete", "x.io", "things", namespace="a", name="t"), True),
        (rule(["g"], ["j/status"], ["patch"], ["j1"]), Request("patch", "g", "j", "status", "a", "j1"), True),
        (
            rule(["g"], ["j/status"], ["patch"], ["j1"]),
            Request("patch", "g", "j", "status", "a", "j2"),
            False,
        ),
        # resourceNames never match requests that name nothing.
        (rule(["g"], ["j"], ["list"], ["j1"]), Request("list", "g", "j", namespace="a"), False),
        ({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, Request("get", path="/metrics"), True),
        ({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}, Request("get", path="/apis/x/v1"), True),
    ],
)
def test_rule_matching(the_rule, request_, expected) -> None:
    assert rule_allows(the_rule, request_) is expected


def test_role_binding_grants_only_inside_its_namespace() -> None:
    g = [Grant(rules=(rule([""], ["pods"], ["list"]),), namespace="a", source="rb")]
    assert allowed(g, Request("list", "", "pods", namespace="a"))
    assert not allowed(g, Request("list", "", "pods", namespace="b"))
    assert not allowed(g, Request("list", "", "pods"))  # all namespaces needs a ClusterRoleBinding


def test_cluster_role_binding_grants_everywhere() -> None:
    g = [Grant(rules=(rule([""], ["pods"], ["list"]),), namespace=None, source="crb")]
    assert allowed(g, Request("list", "", "pods", namespace="b"))
    assert allowed(g, Request("list", "", "pods"))


def test_discovery_is_allowed_without_rules() -> None:
    assert allowed([], Request("get", path="/apis/training.mnv2.dev/v1alpha1"))
    assert not allowed([], Request("get", path="/metrics"))
    assert not allowed([], Request("get", "", "pods", namespace="a", name="p"))


def _objects():
    sa = {"kind": "ServiceAccount", "name": "op", "namespace": "sys"}
    return [
        {"kind": "ClusterRole", "metadata": {"name": "op-cluster"}, "rules": [rule([""], ["namespaces"], ["list"])]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "op-cluster"}, "subjects": [sa],
         "roleRef": {"kind": "ClusterRole", "name": "op-cluster"}},
        {"kind": "Role", "metadata": {"name": "op", "namespace": "a"}, "rules": [rule([""], ["pods"], ["create"])]},
        {"kind": "RoleBinding", "metadata": {"name": "op", "namespace": "a"}, "subjects": [sa],
         "roleRef": {"kind": "Role", "name": "op"}},
        # A RoleBinding to a ClusterRole grants it in the binding's namespace only.
        {"kind": "ClusterRole", "metadata": {"name": "reader"}, "rules": [rule([""], ["configmaps"], ["get"])]},
        {"kind": "RoleBinding", "metadata": {"name": "reader", "namespace": "b"}, "subjects": [sa],
         "roleRef": {"kind": "ClusterRole", "name": "reader"}},
        # Bound to someone else.
        {"kind": "ClusterRoleBinding", "metadata": {"name": "other"},
         "subjects": [{"kind": "ServiceAccount", "name": "other", "namespace": "sys"}],
         "roleRef": {"kind": "ClusterRole", "name": "reader"}},
    ]  # fmt: skip


def test_grants_follow_bindings_of_the_service_account() -> None:
    g = grants_for_service_account(_objects(), "op", "sys")
    assert allowed(g, Request("list", "", "namespaces"))
    assert allowed(g, Request("create", "", "pods", namespace="a"))
    assert not allowed(g, Request("create", "", "pods", namespace="b"))
    assert allowed(g, Request("get", "", "configmaps", namespace="b", name="c"))
    assert not allowed(g, Request("get", "", "configmaps", namespace="a", name="c"))
    assert grants_for_service_account(_objects(), "op", "elsewhere") == []


def test_dangling_role_ref_is_an_error() -> None:
    objects = [o for o in _objects() if o["metadata"]["name"] != "op" or o["kind"] != "Role"]
    with pytest.raises(ValueError, match="Role 'op'"):
        grants_for_service_account(objects, "op", "sys")


def test_denied_and_unused() -> None:
    g = grants_for_service_account(_objects(), "op", "sys")
    requests = [
        Request("list", "", "namespaces"),
        Request("create", "", "pods", namespace="a"),
        Request("create", "", "pods", namespace="a"),
        Request("delete", "", "pods", namespace="a", name="p"),
    ]
    assert denied_requests(g, requests) == [Request("delete", "", "pods", namespace="a", name="p")]
    assert unused_rules(g, requests) == [("", "configmaps", "get")]


def test_a_right_used_in_one_namespace_is_used() -> None:
    rules = (rule([""], ["pods"], ["create", "delete"]),)
    g = [Grant(rules=rules, namespace="a", source="a"), Grant(rules=rules, namespace="b", source="b")]
    requests = [Request("create", "", "pods", namespace="a"), Request("create", "", "pods", namespace="b")]
    assert unused_rules(g, requests) == [("", "pods", "delete")]
    assert unused_rules(g, [*requests, Request("delete", "", "pods", namespace="b", name="p")]) == []
