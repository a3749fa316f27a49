"""API semantics through the `kubernetes` Python client: validation, defaults, status, versions,
conflicts, selectors, finalizers, garbage collection."""

from __future__ import annotations

import json
import uuid

import kubernetes
import pytest
from kubernetes.client import ApiException

from contract.kit import GROUP, Cluster, wait_for, widget

pytestmark = pytest.mark.cluster


@pytest.fixture
def co(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


def create(co: kubernetes.client.CustomObjectsApi, ns: str, body: dict) -> dict:
    return co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", body)


def status_of(e: ApiException) -> dict:
    return json.loads(e.body)


@pytest.mark.parametrize(
    ("spec", "field", "reason", "message"),
    [
        (
            {"size": 0},
            "spec.size",
            "FieldValueInvalid",
            "Invalid value: 0: spec.size in body should be greater than or equal to 1",
        ),
        (
            {"size": 65},
            "spec.size",
            "FieldValueInvalid",
            "Invalid value: 65: spec.size in body should be less than or equal to 64",
        ),
        ({}, "spec.size", "FieldValueRequired", "Required value"),
        (
            {"size": 1, "color": "green"},
            "spec.color",
            "FieldValueNotSupported",
            'Unsupported value: "green": supported values: "red", "blue"',
        ),
        (
            {"size": "x"},
            "spec.size",
            "FieldValueTypeInvalid",
            'Invalid value: "string": spec.size in body must be of type integer: "string"',
        ),
        (
            {"size": 1, "label": "ABC"},
            "spec.label",
            "FieldValueInvalid",
            "Invalid value: \"ABC\": spec.label in body should match '^[a-z]+$'",
        ),
        (
            {"size": 1, "tags": ["a", "b", "c", "d"]},
            "spec.tags",
            "FieldValueTooMany",
            "Too many: 4: must have at most 3 items",
        ),
    ],
)
def test_schema_validation_422_shape(
    co, ns: str, widget_crd: str, spec: dict, field: str, reason: str, message: str
) -> None:
    body = widget("bad")
    body["spec"] = spec
    with pytest.raises(ApiException) as exc:
        create(co, ns, body)
    assert exc.value.status == 422
    st = status_of(exc.value)
    assert st["kind"] == "Status" and st["reason"] == "Invalid" and st["code"] == 422
    assert (
        st["details"]["name"] == "bad"
        and st["details"]["group"] == GROUP
        and st["details"]["kind"] == "Widget"
    )
    causes = st["details"]["causes"]
    assert {"reason": reason, "message": message, "field": field} in causes
    assert st["message"].startswith(f'Widget.{GROUP} "bad" is invalid: ')
    assert f"{field}: {message}" in st["message"]


def test_several_errors_are_listed_together(co, ns: str, widget_crd: str) -> None:
    body = widget("bad2")
    body["spec"] = {"color": "green"}
    with pytest.raises(ApiException) as exc:
        create(co, ns, body)
    st = status_of(exc.value)
    assert {c["field"] for c in st["details"]["causes"]} == {"spec.size", "spec.color"}
    assert ": [" in st["message"]


def test_defaults_applied_and_unknown_fields_pruned(co, ns: str, widget_crd: str) -> None:
    body = widget("d", 2, extra={"anything": {"goes": 1}})
    body["spec"]["unknownField"] = 1
    body["topLevelJunk"] = True
    got = create(co, ns, body)
    assert got["spec"] == {"size": 2, "color": "red", "extra": {"anything": {"goes": 1}}}
    assert "topLevelJunk" not in got


def test_metadata_on_create(co, ns: str, widget_crd: str) -> None:
    got = create(co, ns, widget("m"))
    meta = got["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert meta["namespace"] == ns


def test_status_subresource_semantics(co, ns: str, widget_crd: str) -> None:
    create(co, ns, {**widget("s"), "status": {"phase": "ignored-on-create"}})
    got = co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", "s")
    assert "phase" not in (got.get("status") or {})
    # /status writes change status only, and do not bump generation
    got = co.patch_namespaced_custom_object_status(
        GROUP, "v1", ns, "widgets", "s", {"status": {"phase": "Running"}, "spec": {"size": 9}}
    )
    assert (
        got["status"]["phase"] == "Running"
        and got["spec"]["size"] == 2
        and got["metadata"]["generation"] == 1
    )
    # main-resource writes ignore status, and bump generation on spec changes
    got = co.patch_namespaced_custom_object(
        GROUP, "v1", ns, "widgets", "s", {"status": {"phase": "Hacked"}, "spec": {"size": 3}}
    )
    assert (
        got["status"]["phase"] == "Running"
        and got["spec"]["size"] == 3
        and got["metadata"]["generation"] == 2
    )
    # metadata-only change: resourceVersion moves, generation does not
    rv = got["metadata"]["resourceVersion"]
    got = co.patch_namespaced_custom_object(
        GROUP, "v1", ns, "widgets", "s", {"metadata": {"labels": {"k": "v"}}}
    )
    assert got["metadata"]["generation"] == 2 and got["metadata"]["resourceVersion"] != rv


def test_update_with_stale_resource_version_conflicts(co, ns: str, widget_crd: str) -> None:
    got = create(co, ns, widget("c"))
    stale = json.loads(json.dumps(got))
    got["spec"]["size"] = 5
    co.replace_namespaced_custom_object(GROUP, "v1", ns, "widgets", "c", got)
    stale["spec"]["size"] = 6
    with pytest.raises(ApiException) as exc:
        co.replace_namespaced_custom_object(GROUP, "v1", ns, "widgets", "c", stale)
    assert exc.value.status == 409
    st = status_of(exc.value)
    assert st["reason"] == "Conflict"
    assert st["message"] == (
        f'Operation cannot be fulfilled on widgets.{GROUP} "c": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def test_create_twice_is_already_exists_and_missing_is_not_found(core, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "x"}})
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "x"}})
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    assert status_of(exc.value)["message"] == 'configmaps "x" already exists'
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("nope", ns)
    assert exc.value.status == 404 and status_of(exc.value)["message"] == 'configmaps "nope" not found'


def test_invalid_name_is_refused(core, ns: str) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "Bad_Name"}})
    assert exc.value.status == 422
    assert status_of(exc.value)["details"]["causes"][0]["field"] == "metadata.name"


def test_generate_name(core, ns: str) -> None:
    got = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}})
    assert got.metadata.name.startswith("gen-") and len(got.metadata.name) == len("gen-") + 5


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=web", ["a", "b"]),
        ("tier!=web", ["c", "d"]),
        ("tier in (web,db)", ["a", "b", "c"]),
        ("tier notin (web)", ["c", "d"]),
        ("tier", ["a", "b", "c"]),
        ("!tier", ["d"]),
        ("tier=web,env=prod", ["a"]),
    ],
)
def test_label_selectors_on_list(core, ns: str, selector: str, expected: list[str]) -> None:
    labels = {
        "a": {"tier": "web", "env": "prod"},
        "b": {"tier": "web"},
        "c": {"tier": "db"},
        "d": {"other": "x"},
    }
    for name, lab in labels.items():
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": lab}})
    # The controller manager publishes kube-root-ca.crt into a new namespace a moment after it exists.
    wait_for(
        lambda: any(c.metadata.name == "kube-root-ca.crt" for c in core.list_namespaced_config_map(ns).items),
        20,
        "kube-root-ca.crt in a new namespace",
    )
    got = sorted(c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector=selector).items)
    # kube-root-ca.crt (no labels) matches the negative selectors too.
    assert [n for n in got if n in labels] == expected
    assert ("kube-root-ca.crt" in got) == selector.startswith(("!", "tier!=", "tier notin"))


def test_every_namespace_gets_the_cluster_ca_configmap(core, ns: str) -> None:
    """The controller manager's root-CA publisher: pods read the API server's CA from here."""
    cm = wait_for(
        lambda: next(
            (c for c in core.list_namespaced_config_map(ns).items if c.metadata.name == "kube-root-ca.crt"),
            None,
        ),
        20,
        "kube-root-ca.crt in a new namespace",
    )
    assert cm.data["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")


def test_field_selector_on_list(core, ns: str) -> None:
    for name in ("f1", "f2"):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name}})
    got = [
        c.metadata.name for c in core.list_namespaced_config_map(ns, field_selector="metadata.name=f2").items
    ]
    assert got == ["f2"]
    got = [
        c.metadata.name
        for c in core.list_config_map_for_all_namespaces(
            field_selector=f"metadata.namespace={ns},metadata.name!=f2"
        ).items
    ]
    assert "f1" in got and "f2" not in got
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(ns, field_selector="data.x=1")
    assert exc.value.status == 400


def test_finalizers_hold_deletion(co, ns: str, widget_crd: str) -> None:
    body = widget("fin")
    body["metadata"]["finalizers"] = ["contract.mnv2.dev/hold"]
    create(co, ns, body)
    co.delete_namespaced_custom_object(GROUP, "v1", ns, "widgets", "fin")
    got = co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", "fin")
    assert got["metadata"]["deletionTimestamp"]
    co.patch_namespaced_custom_object(GROUP, "v1", ns, "widgets", "fin", {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", "fin")
            return False
        except ApiException as e:
            return e.status == 404

    wait_for(gone, 10, "the object to go once its finalizers are removed")


def test_orphan_propagation_keeps_dependents(core, ns: str) -> None:
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(ns, {"metadata": {"name": "dep", "ownerReferences": [ref]}})
    core.delete_namespaced_config_map("owner", ns, propagation_policy="Orphan")

    def orphaned() -> bool:
        dep = core.read_namespaced_config_map("dep", ns)
        return not dep.metadata.owner_references

    wait_for(orphaned, 10, "the dependent to lose its ownerReference")


def test_pagination_with_limit_and_continue(core, ns: str) -> None:
    for i in range(5):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"pg{i}"}})
    first = core.list_namespaced_config_map(ns, limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    rest = core.list_namespaced_config_map(ns, limit=10, _continue=first.metadata._continue)
    names = [c.metadata.name for c in first.items + rest.items if c.metadata.name.startswith("pg")]
    assert names == [f"pg{i}" for i in range(5)]


def test_node_registered(core, cluster: Cluster) -> None:
    cluster.need_node()
    nodes = core.list_node().items
    assert all(n.metadata.labels["kubernetes.io/hostname"] for n in nodes)


def test_discovery_lists_project_resources(api: kubernetes.client.ApiClient, widget_crd: str) -> None:
    core = kubernetes.client.CoreV1Api(api).get_api_resources()
    by_name = {r.name: r for r in core.resources}
    for name in (
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "configmaps",
        "events",
        "serviceaccounts",
        "namespaces",
        "nodes",
    ):
        assert name in by_name, name
    assert by_name["pods"].short_names == ["po"] and "watch" in by_name["pods"].verbs
    groups = {g.name for g in kubernetes.client.ApisApi(api).get_api_versions().groups}
    assert {
        "apps",
        "rbac.authorization.k8s.io",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
        "events.k8s.io",
        GROUP,
    } <= groups
    res = kubernetes.client.CustomObjectsApi(api).get_api_resources(GROUP, "v1")
    names = {r.name for r in res.resources}
    assert {"widgets", "widgets/status"} <= names


def test_orphan_policy_holds_through_finalizers(co, core, ns: str, widget_crd: str) -> None:
    """Orphan deletion is the `orphan` finalizer, added by the API server next to the object's own.
    The garbage collector orphans the dependents and removes `orphan` at once, while the owner still
    waits for its own finalizer; removing that one then deletes the owner alone."""
    body = widget("orph")
    body["metadata"]["finalizers"] = ["contract.mnv2.dev/hold"]
    owner = create(co, ns, body)
    ref = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "name": "orph", "uid": owner["metadata"]["uid"]}
    core.create_namespaced_config_map(ns, {"metadata": {"name": "orph-dep", "ownerReferences": [ref]}})
    deleting = co.delete_namespaced_custom_object(
        GROUP, "v1", ns, "widgets", "orph", propagation_policy="Orphan"
    )
    assert deleting["metadata"]["finalizers"] == ["contract.mnv2.dev/hold", "orphan"]

    def orphaned() -> bool:
        return not core.read_namespaced_config_map("orph-dep", ns).metadata.owner_references

    def finalizers() -> list[str]:
        return co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", "orph")["metadata"]["finalizers"]

    wait_for(orphaned, 30, "the dependent to be orphaned while the owner waits on its finalizer")
    wait_for(lambda: finalizers() == ["contract.mnv2.dev/hold"], 30, "the orphan finalizer to be removed")
    co.patch_namespaced_custom_object(GROUP, "v1", ns, "widgets", "orph", {"metadata": {"finalizers": None}})
    wait_for(lambda: _gone(co, ns, "orph"), 30, "the owner to go once its finalizer is removed")
    assert core.read_namespaced_config_map("orph-dep", ns).metadata.name == "orph-dep"


def _gone(co, ns: str, name: str) -> bool:
    try:
        co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", name)
        return False
    except ApiException as e:
        return e.status == 404


def test_namespace_deletion_waits_for_its_objects(co, core, widget_crd: str) -> None:
    name = f"ct-del-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: core.list_namespaced_service_account(name).items, 20, "the default service account")
    core.create_namespaced_config_map(name, {"metadata": {"name": "plain"}})
    body = widget("held")
    body["metadata"]["finalizers"] = ["contract.mnv2.dev/hold"]
    create(co, name, body)
    core.delete_namespace(name)
    assert core.read_namespace(name).status.phase == "Terminating"
    wait_for(
        lambda: not core.list_namespaced_config_map(name, field_selector="metadata.name=plain").items,
        30,
        "the namespace's objects to go",
    )
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(name, {"metadata": {"name": "late"}})
    assert exc.value.status == 403  # no new content in a terminating namespace
    assert core.read_namespace(name).status.phase == "Terminating"  # held by the widget's finalizer
    co.patch_namespaced_custom_object(
        GROUP, "v1", name, "widgets", "held", {"metadata": {"finalizers": None}}
    )

    def ns_gone() -> bool:
        try:
            core.read_namespace(name)
            return False
        except ApiException as e:
            return e.status == 404

    wait_for(ns_gone, 60, "the namespace to go once empty")


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"labels": {"app": "x" * 64}}, "metadata.labels"),
        ({"labels": {"bad key!": "x"}}, "metadata.labels"),
        ({"labels": {"app": "-leading-dash"}}, "metadata.labels"),
        ({"annotations": {"example.com/": "x"}}, "metadata.annotations"),
    ],
)
def test_invalid_labels_and_annotations_are_refused(core, ns: str, meta: dict, field: str) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "lab", **meta}})
    assert exc.value.status == 422
    assert status_of(exc.value)["details"]["causes"][0]["field"] == field


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Svc_1", "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
        ("svc.a", "must not contain dots"),
        ("s" * 64, "must be no more than 63 characters"),
    ],
)
def test_service_names_are_dns_1123_labels(core, ns: str, name: str, message: str) -> None:
    """Current Kubernetes validates Service names as DNS-1123 labels: a leading digit is fine."""
    created = core.create_namespaced_service(
        ns, {"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert created.metadata.name == "1svc"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service(ns, {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})
    assert exc.value.status == 422
    assert status_of(exc.value)["details"]["causes"][0]["field"] == "metadata.name"
    assert message in status_of(exc.value)["message"]


def test_owner_references_need_uid_and_one_controller(core, ns: str) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(
            ns,
            {
                "metadata": {
                    "name": "o1",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": ""}],
                }
            },
        )
    assert exc.value.status == 422
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "controller": True}
    refs = [{**ref, "name": "a", "uid": "u1"}, {**ref, "name": "b", "uid": "u2"}]
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "o2", "ownerReferences": refs}})
    assert exc.value.status == 422
