"""`helm install` through the Helm SDK (helm-python-sdk: Helm v4's Go SDK) into the local control plane
(the real API server), checked with kubectl.

The real `helm install` / `upgrade` / `uninstall` path with Helm's default `secret` storage driver:
CRDs from crds/ first, then the templates with server-side apply. Helm acts as a user of its own
(`helm-test`, in `system:masters`), so the API server's audit log tells its requests from everyone
else's. With `--kubeconfig` the same tests run against another cluster (without the audit check).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import pytest
import yaml
from mnv2_cluster.launcher import kubectl_binary
from mnv2_operator.constants import CRD_NAME
from support.cluster import LocalCluster, local_cluster

from manifests import CHART_DIR

pytestmark = pytest.mark.cluster

HELM_USER = "helm-test"
WRITES = ("create", "patch", "update", "delete", "deletecollection")


@dataclass
class Target:
    kubeconfig: str
    local: LocalCluster | None = None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl_binary(), "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def create_namespace(self, name: str) -> None:
        self.kubectl("create", "namespace", name)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, check=False).returncode == 0

    def config(self, namespace: str) -> helm.Config:
        return helm.Config(kubeconfig_path=self.kubeconfig, namespace=namespace, storage_driver="secret")

    def helm_writes(self) -> list[tuple[str, str, str, int]]:
        """(verb, resource, name, response code) of every write Helm made so far, from the audit log."""
        assert self.local is not None
        out = []
        for e in self.local.control_plane.audit_events():
            ref = e.get("objectRef") or {}
            if (
                (e.get("user") or {}).get("username") == HELM_USER
                and e.get("stage") == "ResponseComplete"
                and e.get("verb") in WRITES
            ):
                code = int((e.get("responseStatus") or {}).get("code", 0))
                out.append((e["verb"], ref.get("resource", ""), ref.get("name", ""), code))
        return out


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Target]:
    if kubeconfig_option:
        yield Target(kubeconfig_option)
        return
    with local_cluster(tmp_path_factory.mktemp("cluster")) as local:
        helm_kubeconfig = local.control_plane.kubeconfig_for_user(HELM_USER, ["system:masters"])
        yield Target(str(helm_kubeconfig), local)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_helm_install_upgrade_uninstall(target: Target) -> None:
    release, namespace = unique("mnv2"), unique("mnv2-system")
    with target.config(namespace) as cfg:
        cfg.check_reachable()
        summary = cfg.install(
            str(CHART_DIR), release, None, namespace=namespace, create_namespace=True, timeout=120
        )
        assert summary["status"] == "deployed"
        assert "kubectl get mnv2" in summary["notes"]

        # The CRD from crds/ is installed and served: kubectl knows the kind by its short name.
        crd = target.get("crd", CRD_NAME)
        assert crd["spec"]["names"]["kind"] == "MobileNetV2TrainingJob"
        listed = target.kubectl("get", "mnv2", "-A")
        assert listed.returncode == 0 and "error" not in listed.stderr.lower()

        fullname = f"{release}-mnv2-operator"
        deployment = target.get("deployment", fullname, "-n", namespace)
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == fullname
        assert pod["containers"][0]["image"] == "ghcr.io/mnv2-operator/mnv2-operator:0.1.0"
        assert target.exists("serviceaccount", fullname, "-n", namespace)
        role = target.get("clusterrole", fullname)
        assert any("mobilenetv2trainingjobs/status" in rule["resources"] for rule in role["rules"])
        binding = target.get("clusterrolebinding", fullname)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fullname, "namespace": namespace}]

        # An upgrade changes the Deployment in place.
        summary = cfg.upgrade(
            str(CHART_DIR), release, {"image": {"tag": "0.1.1"}}, namespace=namespace, timeout=120
        )
        assert summary["revision"] == 2
        deployment = target.get("deployment", fullname, "-n", namespace)
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.1")

        # Uninstalling removes the templates' objects but never the CRD (Helm's rule for crds/).
        cfg.uninstall(release, timeout=120)
        assert not target.exists("deployment", fullname, "-n", namespace)
        assert not target.exists("clusterrole", fullname)
        assert not target.exists("serviceaccount", fullname, "-n", namespace)
        assert target.exists("crd", CRD_NAME)


def test_helm_install_namespaced_mode(target: Target) -> None:
    release, namespace = unique("mnv2"), unique("mnv2-system")
    watched = [unique("team-a"), unique("team-b")]
    for ns in watched:
        target.create_namespace(ns)
    values = yaml.safe_load((CHART_DIR / "ci" / "namespaced-values.yaml").read_text())
    values["watchNamespaces"] = watched
    with target.config(namespace) as cfg:
        cfg.install(str(CHART_DIR), release, values, namespace=namespace, create_namespace=True, timeout=120)
        fullname = f"{release}-mnv2-operator"
        for ns in watched:
            role = target.get("role", fullname, "-n", ns)
            assert any("pods" in rule["resources"] for rule in role["rules"])
            assert target.get("rolebinding", fullname, "-n", ns)["roleRef"]["name"] == fullname
        # Cluster-wide only the read-only scan rights; no ClusterRole named like the Roles.
        cluster_role = target.get("clusterrole", f"{fullname}-cluster")
        assert {verb for rule in cluster_role["rules"] for verb in rule["verbs"]} == {"list", "watch"}
        assert not target.exists("clusterrole", fullname)
        args = target.get("deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][
            0
        ]["args"]
        assert [a for a in args if a.startswith("--namespace=")] == [f"--namespace={ns}" for ns in watched]
        cfg.uninstall(release, timeout=120)
        assert not target.exists("role", fullname, "-n", watched[0])


def test_helm_install_refuses_a_misspelled_value(target: Target) -> None:
    release, namespace = unique("mnv2"), unique("mnv2-system")
    before = len(target.helm_writes()) if target.local else 0
    with (
        target.config(namespace) as cfg,
        pytest.raises(helm.HelmError, match="additional properties 'creat'"),
    ):
        cfg.install(
            str(CHART_DIR),
            release,
            helm.parse_set_string("rbac.creat=false"),
            namespace=namespace,
            timeout=60,
        )
    assert not target.exists("deployment", f"{release}-mnv2-operator", "-n", namespace)
    if target.local is not None:
        # Helm applies crds/ (server-side apply) before it renders (and schema-checks) the values, so
        # the CRD is the only write of a refused install; nothing of the release is created, not even
        # its release Secret.
        writes = target.helm_writes()[before:]
        assert writes, "Helm made no write at all: is the audit log read?"
        assert {(resource, name) for _, resource, name, _ in writes} == {
            ("customresourcedefinitions", CRD_NAME)
        }, writes
