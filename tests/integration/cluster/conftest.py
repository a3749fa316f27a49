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


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Cluster]:
    if kubeconfig_option:
        pytest.skip("node agents join the local control plane: its CA signs their credentials")
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nodes(local: Cluster) -> Iterator[dict[str, NodeAgent]]:
    agents = {
        "node-process": NodeAgent.for_cluster(local, "node-process"),
        "node-process-2": NodeAgent.for_cluster(local, "node-process-2"),
        "node-ascend": NodeAgent.for_cluster(local, "node-ascend", mode="simulated", **ascend_node_options()),
    }
    try:
        for agent in agents.values():
            agent.start()
        yield agents
    finally:
        for agent in agents.values():
            agent.stop()


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
