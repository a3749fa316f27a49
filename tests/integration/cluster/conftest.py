"""The local control plane (etcd, kube-apiserver, controller manager, scheduler built from upstream)
with two simulated nodes: `node-sim`, and `node-ascend`, labelled and sized as MindCluster labels an
Ascend training server (8 `huawei.com/Ascend910`). The real-node modules start clusters of their own."""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes
import pytest
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.simulated import SimulatedNode, ascend_node_options
from support.cluster import LocalCluster, local_cluster


@pytest.fixture(scope="module")
def local_nodes(
    tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None
) -> Iterator[LocalCluster]:
    if kubeconfig_option:
        pytest.skip("simulated nodes join the local control plane: its CA signs their credentials")
    with local_cluster(
        tmp_path_factory.mktemp("cluster"),
        simulated=["node-sim", "node-ascend"],
        node_options={"node-ascend": ascend_node_options()},
    ) as started:
        yield started


@pytest.fixture(scope="module")
def local(local_nodes: LocalCluster) -> Cluster:
    return local_nodes.control_plane


@pytest.fixture(scope="module")
def nodes(local_nodes: LocalCluster) -> dict[str, SimulatedNode]:
    return local_nodes.nodes


@pytest.fixture(scope="module")
def api(local: Cluster) -> kubernetes.client.ApiClient:
    return local.api_client()


@pytest.fixture(scope="module")
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


@pytest.fixture(scope="module")
def coordination(api: kubernetes.client.ApiClient) -> kubernetes.client.CoordinationV1Api:
    return kubernetes.client.CoordinationV1Api(api)
