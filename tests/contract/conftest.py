"""Fixtures of the contract suite: the behaviours the operator relies on, pinned against the real
Kubernetes control plane.

Without options the suite starts the local control plane (`mnv2_cluster.Cluster`: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from upstream modules) on a node network of its own, and
one real node (`mnv2_cluster.realnode.RealNode`, node `node-1`: the upstream kubelet on containerd +
runc, kube-proxy; no cluster DNS, no test needs it) whose containerd has the busybox image the pods
run. With `pytest --kubeconfig=PATH` it talks to that cluster instead; tests that need the local one
(its audit log, identities made from its CA, its node's processes and files) skip there, saying so.
A node that cannot start fails the suite with the missing piece (NodeError), it does not skip.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest
from mnv2_cluster.launcher import Cluster as LocalCluster
from mnv2_cluster.realnode import NodeNetwork, RealNode

from contract.kit import GADGET_CRD, GROUP, MNV2_CRD, WIDGET_CRD, Cluster, wait_for


@pytest.fixture(scope="package")
def cluster(
    kubeconfig_option: str | None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    cache = tmp_path_factory.mktemp("kube-cache")
    if kubeconfig_option:
        yield Cluster(Path(kubeconfig_option), None, cache)
        return
    # One control plane for the package (stopped after its last test, not at the end of the whole run).
    # The CRDs exist before the controller manager starts, so garbage collection knows their kinds.
    crds = [WIDGET_CRD, GADGET_CRD, MNV2_CRD]
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), network=NodeNetwork.allocate(), crds=crds)
    report = _reporter(request)
    failed_before = request.session.testsfailed
    node = None
    try:
        local.start()
        report(f"\nlocal control plane ready in {local.timings['ready']:.1f} s:\n{local.describe()}")
        node = RealNode(local, "node-1", 1).start()
        report(f"node {node.name} Ready in {node.timings['ready']:.1f} s")
        yield Cluster(local.kubeconfig, local, cache, node)
    finally:
        report(f"\nlocal control plane after the contract suite:\n{local.describe()}")
        if request.session.testsfailed > failed_before:
            report(f"\ncontrol plane logs (tests failed):\n{local.dump_logs()}")
        if node is not None:
            node.stop()
        local.stop()


def _reporter(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Write to the terminal past pytest's output capture (the control plane's times, memory, logs)."""
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        if terminal is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write_line(text)

    return write


@pytest.fixture(scope="package")
def api(cluster: Cluster) -> kubernetes.client.ApiClient:
    return cluster.api()


@pytest.fixture
def ns(cluster: Cluster, api: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = f"ct-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_for(lambda: _sa_exists(core, name), timeout=20, what=f"default service account in {name}")
    yield name
    core.delete_namespace(name)


def _sa_exists(core: kubernetes.client.CoreV1Api, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except kubernetes.client.ApiException:
        return False


@pytest.fixture(scope="package")
def widget_crd(cluster: Cluster) -> Iterator[str]:
    """The contract suite's own CRD (group contract.mnv2.dev), applied with kubectl."""
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=30s")
    wait_for(
        lambda: cluster.kubectl("get", "wdg", "-A", check=False).returncode == 0, 20, "widgets in discovery"
    )
    yield f"widgets.{GROUP}"
    cluster.kubectl("delete", "crd", f"widgets.{GROUP}", "--wait=false", check=False)
