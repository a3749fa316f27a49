"""The local control plane (etcd, kube-apiserver, controller manager, scheduler built from upstream)
with node agents: `node-process` and `node-process-2` run pods as local processes; `node-ascend` is labelled and sized
as MindCluster labels an Ascend training server (8 `huawei.com/Ascend910`) and simulates its pods."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import kubernetes
import pytest
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.node import NodeAgent, ascend_node_options
from support.cluster import LocalCluster, local_cluster


@pytest.fixture(scope="module")
def local_nodes(
    tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None
) -> Iterator[LocalCluster]:
    if kubeconfig_option:
        pytest.skip("node agents join the local control plane: its CA signs their credentials")
    with local_cluster(
        tmp_path_factory.mktemp("cluster"),
        process=["node-process", "node-process-2"],
        simulated=["node-ascend"],
        node_options={"node-ascend": ascend_node_options()},
    ) as started:
        yield started


@pytest.fixture(scope="module")
def local(local_nodes: LocalCluster) -> Cluster:
    return local_nodes.control_plane


@pytest.fixture(scope="module")
def nodes(local_nodes: LocalCluster) -> dict[str, NodeAgent]:
    return local_nodes.nodes


@pytest.fixture(scope="module")
def api(local: Cluster) -> kubernetes.client.ApiClient:
    return local.api_client()


@pytest.fixture(scope="module")
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


@pytest.fixture(scope="module")
def rbac(api: kubernetes.client.ApiClient) -> kubernetes.client.RbacAuthorizationV1Api:
    return kubernetes.client.RbacAuthorizationV1Api(api)


@pytest.fixture(scope="module")
def coordination(api: kubernetes.client.ApiClient) -> kubernetes.client.CoordinationV1Api:
    return kubernetes.client.CoordinationV1Api(api)


@pytest.fixture
def kubectl(local: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return local.kubectl(*args, timeout=timeout)

    return run
