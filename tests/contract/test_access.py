"""Who may do what: RBAC, ServiceAccount tokens, the audit log, Pod Security admission, and the pod
validation a real API server applies (the emulator had none of these)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiException

from contract.kit import BUSYBOX, GROUP, Cluster, wait_for, widget

pytestmark = pytest.mark.cluster


def client_for(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


def test_user_without_rules_is_forbidden_naming_verb_resource_and_namespace(
    cluster: Cluster, ns: str
) -> None:
    local = cluster.need_local("signs a client certificate for a new user")
    core = kubernetes.client.CoreV1Api(client_for(local.kubeconfig_for_user("ct-nobody", ["ct-team"])))
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(ns)
    assert exc.value.status == 403
    st = status_of(exc.value)
    assert st["reason"] == "Forbidden"
    assert st["message"] == (
        f'configmaps is forbidden: User "ct-nobody" cannot list resource "configmaps" in API group "" '
        f'in the namespace "{ns}"'
    )


def test_user_who_may_only_create_widgets_in_one_namespace(
    cluster: Cluster, api: kubernetes.client.ApiClient, ns: str, widget_crd: str
) -> None:
    local = cluster.need_local("signs a client certificate for a new user")
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "widget-creator"},
            "rules": [{"apiGroups": [GROUP], "resources": ["widgets"], "verbs": ["create"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "widget-creator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "widget-creator"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "ct-creator"}],
        },
    )
    co = kubernetes.client.CustomObjectsApi(client_for(local.kubeconfig_for_user("ct-creator")))
    co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("mine"))
    with pytest.raises(ApiException) as exc:
        co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", "mine")
    assert exc.value.status == 403
    assert 'cannot get resource "widgets" in API group "contract.mnv2.dev"' in status_of(exc.value)["message"]
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(GROUP, "v1", "default", "widgets", widget("elsewhere"))
    assert exc.value.status == 403
    # what kubectl auth can-i reports for that user (impersonated by the admin)
    assert (
        cluster.kubectl("auth", "can-i", "create", "widgets", "-n", ns, "--as=ct-creator").stdout.strip()
        == "yes"
    )
    can_list = cluster.kubectl("auth", "can-i", "list", "widgets", "-n", ns, "--as=ct-creator", check=False)
    assert can_list.stdout.strip() == "no"


def test_service_account_token_authenticates_as_the_service_account(cluster: Cluster, ns: str) -> None:
    local = cluster.need_local("issues a token with a TokenRequest as the admin")
    kubeconfig = local.kubeconfig_for_service_account(ns, "default")
    whoami = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    user = whoami["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{ns}:default"
    assert {"system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"} <= set(
        user["groups"]
    )
    with pytest.raises(ApiException) as exc:
        kubernetes.client.CoreV1Api(client_for(kubeconfig)).list_namespaced_pod(ns)
    assert exc.value.status == 403


def test_audit_log_records_user_verb_resource_and_code(cluster: Cluster, ns: str) -> None:
    local = cluster.need_local("reads the API server's audit log file")
    core = kubernetes.client.CoreV1Api(client_for(local.kubeconfig_for_user("ct-audited")))
    name = f"audited-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ApiException):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name}})

    def found() -> dict | None:
        for event in local.audit_events():
            if event["user"]["username"] == "ct-audited" and event["verb"] == "create":
                ref = event.get("objectRef", {})
                if ref.get("resource") == "configmaps" and ref.get("namespace") == ns:
                    return event
        return None

    event = wait_for(found, 10, "the refused create in the audit log")
    assert event["responseStatus"]["code"] == 403
    assert event["stage"] == "ResponseComplete" and event["level"] == "Metadata"
    assert event["annotations"]["authorization.k8s.io/decision"] == "forbid"


RESTRICTED_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod(name: str, **container: object) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX, "command": ["true"], **container}]},
    }


def test_pod_security_restricted_namespace_refuses_a_plain_pod(
    api: kubernetes.client.ApiClient,
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    name = f"ct-psa-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    try:
        with pytest.raises(ApiException) as exc:
            core.create_namespaced_pod(name, _pod("plain"))
        assert exc.value.status == 403
        message = status_of(exc.value)["message"]
        assert message.startswith('pods "plain" is forbidden: violates PodSecurity "restricted:latest": ')
        for violation in (
            "allowPrivilegeEscalation != false",
            "unrestricted capabilities",
            "runAsNonRoot != true",
        ):
            assert violation in message, message
        created = core.create_namespaced_pod(
            name, _pod("hardened", securityContext=RESTRICTED_SECURITY_CONTEXT)
        )
        assert created.metadata.name == "hardened"
    finally:
        core.delete_namespace(name)


def test_default_namespace_admits_privileged_pods(api: kubernetes.client.ApiClient, ns: str) -> None:
    """The cluster-wide Pod Security default is `privileged`: only labelled namespaces enforce."""
    core = kubernetes.client.CoreV1Api(api)
    created = core.create_namespaced_pod(ns, _pod("priv", securityContext={"privileged": True}))
    assert created.spec.containers[0].security_context.privileged is True


@pytest.mark.parametrize(
    ("container", "field", "detail"),
    [
        (
            {"resources": {"limits": {"cpu": "-1"}}},
            "spec.containers[0].resources.limits[cpu]",
            "must be greater than or equal to 0",
        ),
        (
            {"env": [{"name": "A=B", "value": "x"}]},
            "spec.containers[0].env[0].name",
            "a valid environment variable name must consist only of printable ASCII characters other than '='",
        ),
        (
            {
                "env": [
                    {
                        "name": "DEVICES",
                        "valueFrom": {"resourceFieldRef": {"resource": "limits.huawei.com/Ascend910"}},
                    }
                ]
            },
            "spec.containers[0].env[0].valueFrom.resourceFieldRef.resource",
            'Unsupported value: "limits.huawei.com/Ascend910": supported values: "limits.cpu"',
        ),
        (
            {
                "env": [
                    {"name": "R", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers[0].resources"}}}
                ]
            },
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
            "field label not supported: spec.containers[0].resources",
        ),
    ],
)
def test_invalid_pods_are_refused(
    api: kubernetes.client.ApiClient, ns: str, container: dict, field: str, detail: str
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod(ns, _pod("invalid", **container))
    assert exc.value.status == 422
    st = status_of(exc.value)
    assert field in {c["field"] for c in st["details"]["causes"]}, st
    assert detail in st["message"]


def test_environment_variable_names_need_not_be_c_identifiers(
    api: kubernetes.client.ApiClient, ns: str
) -> None:
    """Any printable ASCII but '=' is a valid name now (a leading digit, a dot, a dash)."""
    core = kubernetes.client.CoreV1Api(api)
    env = [{"name": n, "value": "x"} for n in ("1ST", "a.b", "with-dash")]
    created = core.create_namespaced_pod(ns, _pod("relaxed", env=env))
    assert [e.name for e in created.spec.containers[0].env] == ["1ST", "a.b", "with-dash"]
