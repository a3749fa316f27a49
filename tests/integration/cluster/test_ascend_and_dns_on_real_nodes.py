"""What a pod gets on the local cluster's real nodes (`RealNode`: the upstream kubelet on containerd +
runc, kube-proxy) from the Ascend device-plugin stand-in and from cluster DNS, as `mnv2 cluster` wires
them: an Ascend node (`ascend_devices`) and a plain node, then CoreDNS (`start_cluster_dns`).

- An NPU pod gets exactly one ASCEND_VISIBLE_DEVICES, only its own /dev/davinci<N> beside the shared
  device nodes, each root:HwHiAiUser 0660, usable through the HwHiAiUser group and refused without it,
  and the driver folder read-only.
- A pod with `hostname`/`subdomain` behind a headless Service (as the operator's workers are) resolves
  `kubernetes.default` and its own `<hostname>.<subdomain>.<ns>.svc` name through CoreDNS.

Where a piece cannot run on this machine, the fixture fails with its exact error."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from mnv2_cluster import ascend, coredns, images
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import NodeNetwork, RealNode, start_cluster_dns
from support.cluster import wait_for

pytestmark = pytest.mark.cluster

NS = "default"
PLAIN, NPU_NODE = "plain-1", "ascend-2"
NPUS = 2


class Nodes:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())

    def exec(self, pod: str, script: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("exec", pod, "--", "sh", "-c", script, check=False)

    def run(self, name: str, node: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> Any:
        """A busybox pod sleeping on `node`, with `spec` merged into its spec; its object once Running."""
        container = {"name": "main", "image": images.BUSYBOX_IMAGE, "imagePullPolicy": "Never"}
        container["command"] = ["sleep", "3600"]
        container.update(spec.pop("container", {}))
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [container], **spec},
        }
        self.core.create_namespaced_pod(NS, body)

        def running() -> Any:
            pod = self.core.read_namespaced_pod(name, NS)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod {name} ended: {pod.status}")
            return pod if pod.status.phase == "Running" else None

        return wait_for(f"pod {name} Running on {node}", running, 90)

    def run_npu_pod(self, name: str, groups: list[int]) -> Any:
        """As uid 2000 with `groups` as supplemental groups, requesting one NPU."""
        return self.run(
            name,
            NPU_NODE,
            {
                "securityContext": {"runAsUser": 2000, "runAsGroup": 2000, "supplementalGroups": groups},
                "container": {"resources": {"limits": {ascend.ASCEND_RESOURCE: "1"}}},
            },
        )


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Nodes]:
    if kubeconfig_option:
        pytest.skip("real nodes join the local control plane: its CA signs their credentials")
    cluster = Cluster(tmp_path_factory.mktemp("ascend-dns"), network=NodeNetwork.allocate())
    started: list[RealNode] = []
    try:
        cluster.start()
        started.append(RealNode(cluster, PLAIN, 1).start())
        started.append(RealNode(cluster, NPU_NODE, 2, ascend_devices=NPUS).start())
        start_cluster_dns(cluster)
        yield Nodes(cluster)
    finally:
        for node in reversed(started):
            node.stop()
        cluster.stop()


def test_the_ascend_node_advertises_its_npus(nodes: Nodes) -> None:
    node = nodes.core.read_node(NPU_NODE)
    assert node.status.allocatable[ascend.ASCEND_RESOURCE] == str(NPUS)
    assert ascend.ASCEND_LABELS.items() <= node.metadata.labels.items()
    assert ascend.ASCEND_RESOURCE not in (nodes.core.read_node(PLAIN).status.allocatable or {})


def test_an_npu_pod_gets_one_npu_its_device_nodes_and_the_driver(nodes: Nodes) -> None:
    nodes.run_npu_pod("npu-user", groups=[ascend.HWHIAIUSER_GID])
    env = nodes.exec("npu-user", "env | grep '^ASCEND_' | sort").stdout.split()
    visible = [e for e in env if e.startswith("ASCEND_VISIBLE_DEVICES=")]
    assert len(visible) == 1 and visible[0].split("=")[1] in {"0", "1"}, env
    assert "ASCEND_RUNTIME_OPTIONS=" in env
    npu = visible[0].split("=")[1]

    listing = nodes.exec("npu-user", "ls -ln /dev/davinci* /dev/devmm_svm /dev/hisi_hdc").stdout
    found = {line.split()[-1]: line.split() for line in listing.splitlines()}
    assert set(found) == {f"/dev/davinci{npu}", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"}, (
        listing
    )
    for path, fields in found.items():
        assert fields[0] == "crw-rw----" and fields[2:4] == ["0", str(ascend.HWHIAIUSER_GID)], (path, fields)

    opened = nodes.exec("npu-user", f"echo x > /dev/davinci{npu} && cat /dev/davinci{npu} && echo opened")
    assert opened.stdout.strip() == "opened", opened
    driver = nodes.exec(
        "npu-user", f"cat {ascend.DRIVER_CONTAINER_PATH}/version.info; touch {ascend.DRIVER_CONTAINER_PATH}/x"
    )
    assert driver.stdout.strip() == "Version=stand-in", driver
    assert "Read-only file system" in driver.stderr, driver


def test_without_the_hwhiaiuser_group_the_device_nodes_stay_closed(nodes: Nodes) -> None:
    nodes.run_npu_pod("npu-stranger", groups=[])
    npu = nodes.exec("npu-stranger", "echo $ASCEND_VISIBLE_DEVICES").stdout.strip()
    assert npu in {"0", "1"}
    denied = nodes.exec("npu-stranger", f"echo x > /dev/davinci{npu}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


def test_a_worker_pod_resolves_the_api_server_and_its_own_name(nodes: Nodes) -> None:
    dns_pods = nodes.core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
    assert [p.status.phase for p in dns_pods] == ["Running"]
    nodes.core.create_namespaced_service(
        NS,
        {
            "metadata": {"name": "digits"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"job": "digits"},
                "ports": [{"name": "msrun", "port": 8118}],
            },
        },
    )
    pod = nodes.run(
        "digits-worker-0",
        PLAIN,
        {"hostname": "digits-worker-0", "subdomain": "digits"},
        labels={"job": "digits"},
    )
    resolv = nodes.exec("digits-worker-0", "cat /etc/resolv.conf").stdout
    assert f"nameserver {coredns.DNS_SERVICE_IP}" in resolv and f"search {NS}.svc.cluster.local" in resolv

    def resolves(name: str, address: str) -> bool:
        answer = nodes.exec("digits-worker-0", f"nslookup {name}")
        return answer.returncode == 0 and f"Address: {address}" in answer.stdout

    assert resolves("kubernetes.default.svc.cluster.local", "10.96.0.1")
    assert resolves("kube-dns.kube-system.svc.cluster.local", coredns.DNS_SERVICE_IP)
    own = f"digits-worker-0.digits.{NS}.svc.cluster.local"
    assert wait_for(f"{own} in cluster DNS", lambda: resolves(own, pod.status.pod_ip), 30)
