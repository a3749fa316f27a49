"""The fixtures of the operator's integration tests: the API under test and a namespace per test.

`cluster` is the local control plane with two simulated nodes, the operator's own user holding
exactly the chart's rules, and the CRD; with `--kubeconfig`, another cluster. The harness it yields
is in tests/support/operator.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from support.cluster import local_cluster
from support.operator import OPERATOR_USER, Cluster, grant_chart_rbac, install_crd

_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Cluster]:
    with pytest.MonkeyPatch.context() as mp:
        if kubeconfig_option:
            mp.setenv("KUBECONFIG", kubeconfig_option)
            c = Cluster(kubeconfig_option, kubeconfig_option)
            install_crd(c)
            yield c
            return
        from mnv2_operator import crd

        # The CRD exists before the controller manager starts, so garbage collection knows its kind.
        with local_cluster(
            tmp_path_factory.mktemp("cluster"), crds=[crd.crd_yaml()], simulated=["sim-0", "sim-1"]
        ) as local:
            control_plane = local.control_plane
            operator_kubeconfig = control_plane.kubeconfig_for_user(OPERATOR_USER)
            grant_chart_rbac(control_plane.api_client(), OPERATOR_USER)
            mp.setenv("KUBECONFIG", str(operator_kubeconfig))
            c = Cluster(str(operator_kubeconfig), str(control_plane.kubeconfig), local)
            install_crd(c)
            yield c
            # Every request the operator made in the module's tests was allowed by the chart's rules.
            refused = [
                f"{e['verb']} {e.get('objectRef') or e.get('requestURI')}"
                for e in control_plane.audit_events()
                if (e.get("user") or {}).get("username") == OPERATOR_USER
                and (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
            ]
            assert not refused, "the API server's authorizer refused the operator:\n" + "\n".join(refused)


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace with the jobs' output claim `runs`, bound to a volume of its own."""
    import kubernetes

    name = f"op-{os.getpid() % 10000}-{next(_names)}"
    try:
        cluster.core.create_namespace({"metadata": {"name": name}})
    except kubernetes.client.ApiException as err:
        if err.status != 409:
            raise
    if cluster.local is not None:
        # The scheduler binds a pod only once its claims are bound: a volume made for this claim.
        cluster.core.create_persistent_volume({
            "metadata": {"name": f"{name}-runs"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/mnv2/{name}/runs"},
                     "claimRef": {"namespace": name, "name": "runs"}},
        })  # fmt: skip
        cluster.core.create_namespaced_persistent_volume_claim(name, {
            "metadata": {"name": "runs"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{name}-runs",
                     "resources": {"requests": {"storage": "1Gi"}}},
        })  # fmt: skip
    return name
