"""The real kubectl against the API: apply, get (Table columns), selectors, delete cascade, errors."""

from __future__ import annotations

import json

import kubernetes
import pytest

from contract.kit import BUSYBOX, GROUP, Cluster, to_yaml, wait_for, widget

pytestmark = pytest.mark.cluster


def test_apply_creates_then_updates_custom_object(cluster: Cluster, widget_crd: str, ns: str) -> None:
    out = cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("w1", 3))).stdout
    assert f"widget.{GROUP}/w1 created" in out
    out = cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("w1", 5, color="blue"))).stdout
    assert f"widget.{GROUP}/w1 configured" in out
    obj = json.loads(cluster.kubectl("get", "-n", ns, "wdg", "w1", "-o", "json").stdout)
    assert obj["spec"] == {"size": 5, "color": "blue"}
    assert obj["metadata"]["generation"] == 2
    out = cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("w1", 5, color="blue"))).stdout
    assert f"widget.{GROUP}/w1 unchanged" in out


def test_get_by_short_name_prints_printer_columns(cluster: Cluster, widget_crd: str, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("w2", 7, color="blue")))
    lines = cluster.kubectl("get", "-n", ns, "wdg").stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "COLOR", "PHASE", "AGE"]
    cells = lines[1].split()
    assert cells[:3] == ["w2", "7", "blue"]
    assert cells[-1].endswith("s")  # the age, e.g. "0s"


def test_invalid_object_is_refused_naming_the_field(cluster: Cluster, widget_crd: str, ns: str) -> None:
    proc = cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("bad", 0)), check=False)
    assert proc.returncode != 0
    assert 'Widget "bad" is invalid' in proc.stderr
    assert (
        "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in proc.stderr
    )


def test_unknown_field_is_refused_by_kubectl_strict_validation(
    cluster: Cluster, widget_crd: str, ns: str
) -> None:
    proc = cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=to_yaml(widget("unk", 1, sizee=3)), check=False
    )
    assert proc.returncode != 0
    assert 'unknown field "spec.sizee"' in proc.stderr


def test_get_pods_by_label_prints_default_columns(cluster: Cluster, ns: str) -> None:
    for name, app in (("pa", "one"), ("pb", "two")):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "c",
                        "image": BUSYBOX,
                        "command": ["sleep", "30"],
                    }
                ],
            },
        }
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(pod))
    lines = cluster.kubectl("get", "pods", "-n", ns, "-l", "app=one").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [ln.split()[0] for ln in lines[1:]] == ["pa"]
    names = cluster.kubectl("get", "pods", "-n", ns, "-l", "app in (one,two)", "-o", "name").stdout.split()
    assert names == ["pod/pa", "pod/pb"]
    cluster.kubectl("delete", "pods", "-n", ns, "--all", "--grace-period=1")


def test_delete_cascades_to_owned_objects(
    cluster: Cluster, api: kubernetes.client.ApiClient, widget_crd: str, ns: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("owner", 1)))
    owner = json.loads(cluster.kubectl("get", "-n", ns, "wdg", "owner", "-o", "json").stdout)
    ref = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "child", "ownerReferences": [ref]}, "data": {"a": "1"}}
    )
    grandchild_ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "child",
        "uid": core.read_namespaced_config_map("child", ns).metadata.uid,
    }
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "grandchild", "ownerReferences": [grandchild_ref]}}
    )
    core.create_namespaced_config_map(ns, {"metadata": {"name": "unrelated"}})
    cluster.kubectl("delete", "-n", ns, "wdg", "owner")

    def remaining() -> list[str]:
        return sorted(
            c.metadata.name
            for c in core.list_namespaced_config_map(ns).items
            if c.metadata.name != "kube-root-ca.crt"
        )

    # Seconds when the garbage collector knows the owner's kind (its CRD existed when the controller
    # manager started); up to its next discovery resync (~30 s) for a CRD created later.
    timeout = 30 if cluster.local is not None else 90
    wait_for(lambda: remaining() == ["unrelated"], timeout, "child and grandchild garbage-collected")


def test_not_found_and_already_exists_messages(cluster: Cluster, widget_crd: str, ns: str) -> None:
    proc = cluster.kubectl("get", "-n", ns, "wdg", "nope", check=False)
    assert proc.returncode != 0
    assert f'widgets.{GROUP} "nope" not found' in proc.stderr
    cluster.kubectl("create", "-n", ns, "-f", "-", input=to_yaml(widget("dup")))
    proc = cluster.kubectl("create", "-n", ns, "-f", "-", input=to_yaml(widget("dup")), check=False)
    assert proc.returncode != 0
    assert f'widgets.{GROUP} "dup" already exists' in proc.stderr


def test_strategic_merge_patch_merges_containers_by_name(cluster: Cluster, ns: str) -> None:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {
                    "containers": [
                        {
                            "name": "a",
                            "image": "busybox",
                            # not X/Y: kubectl reads YAML 1.1, where an unquoted Y is a boolean
                            "env": [{"name": "FIRST", "value": "1"}, {"name": "SECOND", "value": "2"}],
                        },
                        {"name": "b", "image": "busybox"},
                    ]
                },
            },
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(dep))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "alpine"}]}}}}
    cluster.kubectl("patch", "-n", ns, "deployment", "d", "--type=strategic", "-p", json.dumps(patch))
    got = json.loads(cluster.kubectl("get", "-n", ns, "deployment", "d", "-o", "json").stdout)
    containers = got["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("a", "busybox"), ("b", "alpine")]
    # client-side apply computes a three-way strategic patch: removing env SECOND must remove only it
    dep["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "FIRST", "value": "1"}]
    dep["spec"]["template"]["spec"]["containers"][1]["image"] = "alpine"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(dep))
    got = json.loads(cluster.kubectl("get", "-n", ns, "deployment", "d", "-o", "json").stdout)
    env = got["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "FIRST", "value": "1"}]


def test_kubectl_reads_unquoted_y_as_a_boolean(cluster: Cluster, ns: str) -> None:
    """kubectl parses YAML 1.1: `name: Y` (or y, yes, on) is a boolean, refused where a string goes."""
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Y\n"
    proc = cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest, check=False)
    assert proc.returncode != 0
    assert "cannot unmarshal bool" in proc.stderr, proc.stderr
    quoted = manifest.replace("name: Y", "name: 'y'")
    assert "configmap/y created" in cluster.kubectl("apply", "-n", ns, "-f", "-", input=quoted).stdout


def test_merge_and_json_patch(cluster: Cluster, widget_crd: str, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=to_yaml(widget("p", 1, tags=["a"])))
    cluster.kubectl(
        "patch", "-n", ns, "wdg", "p", "--type=merge", "-p", '{"spec": {"size": 4, "tags": null}}'
    )
    cluster.kubectl(
        "patch",
        "-n",
        ns,
        "wdg",
        "p",
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/spec/color", "value": "blue"}]',
    )
    got = json.loads(cluster.kubectl("get", "-n", ns, "wdg", "p", "-o", "json").stdout)
    assert got["spec"] == {"size": 4, "color": "blue"}
    proc = cluster.kubectl(
        "patch", "-n", ns, "wdg", "p", "--type=strategic", "-p", '{"spec": {"size": 5}}', check=False
    )
    assert proc.returncode != 0  # custom resources do not take strategic merge patches


def test_server_side_apply_creates_and_updates(cluster: Cluster, widget_crd: str, ns: str) -> None:
    out = cluster.kubectl(
        "apply", "--server-side", "-n", ns, "-f", "-", input=to_yaml(widget("ssa", 2))
    ).stdout
    assert "serverside-applied" in out
    cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=to_yaml(widget("ssa", 6)))
    got = json.loads(cluster.kubectl("get", "-n", ns, "wdg", "ssa", "-o", "json").stdout)
    assert got["spec"]["size"] == 6


def test_api_resources_lists_crd_with_short_name(cluster: Cluster, widget_crd: str) -> None:
    out = cluster.kubectl("api-resources", f"--api-group={GROUP}").stdout
    row = next(ln.split() for ln in out.splitlines() if ln.startswith("widgets"))
    assert row == ["widgets", "wdg", f"{GROUP}/v1", "true", "Widget"]


def test_typed_kubectl_create_commands(cluster: Cluster, ns: str) -> None:
    """kubectl's typed `create` subcommands send protobuf bodies; their objects arrive intact."""
    cluster.kubectl("create", "configmap", "tc", "-n", ns, "--from-literal=a=b", "--from-literal=c=d")
    cluster.kubectl("create", "secret", "generic", "ts", "-n", ns, "--from-literal=token=s3cret")
    cluster.kubectl("create", "serviceaccount", "tsa", "-n", ns)
    cluster.kubectl("create", "role", "tr", "-n", ns, "--verb=get,list", "--resource=pods,configmaps")
    cluster.kubectl("create", "rolebinding", "trb", "-n", ns, "--role=tr", f"--serviceaccount={ns}:tsa")
    cm = json.loads(cluster.kubectl("get", "cm", "tc", "-n", ns, "-o", "json").stdout)
    assert cm["data"] == {"a": "b", "c": "d"}
    secret = json.loads(cluster.kubectl("get", "secret", "ts", "-n", ns, "-o", "json").stdout)
    assert secret["type"] == "Opaque" and secret["data"] == {"token": "czNjcmV0"}  # base64 of s3cret
    role = json.loads(cluster.kubectl("get", "role", "tr", "-n", ns, "-o", "json").stdout)
    assert role["rules"] == [
        {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "configmaps"]}
    ]
    rb = json.loads(cluster.kubectl("get", "rolebinding", "trb", "-n", ns, "-o", "json").stdout)
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tr"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "tsa", "namespace": ns}]
    assert cluster.kubectl("auth", "can-i", "get", "pods", "-n", ns).stdout.strip() == "yes"
    cluster.kubectl("delete", "secret", "ts", "-n", ns)


def test_foreground_deletion_waits_for_dependents(
    cluster: Cluster, api: kubernetes.client.ApiClient, ns: str
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "fg-owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "fg-owner",
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_config_map(ns, {"metadata": {"name": "fg-dep", "ownerReferences": [ref]}})
    cluster.kubectl("delete", "cm", "fg-owner", "-n", ns, "--cascade=foreground", "--timeout=30s")
    left = {c.metadata.name for c in core.list_namespaced_config_map(ns).items}
    assert "fg-owner" not in left and "fg-dep" not in left
