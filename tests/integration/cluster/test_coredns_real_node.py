"""Cluster DNS in the cluster: `coredns.manifests()` applied to the local control plane with a real Node
(the upstream kubelet on containerd + runc, kube-proxy), the CoreDNS image imported into the node's
containerd. The DNS pod runs in kube-system as uid 65532 with no capability, reads the API through the
`kubernetes` Service, and pods resolve `kubernetes.default` and a headless Service's pod by its
`<hostname>.<subdomain>.<ns>.svc` name, as msrun's rendezvous needs. Where a piece cannot run on this
machine, the fixture fails with its exact error."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml
from mnv2_cluster import coredns, images
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import NodeNetwork, RealNode
from support.cluster import wait_for

pytestmark = pytest.mark.cluster

NODE = "dns-1"
NS = "default"


class DnsCluster:
    def __init__(self, cluster: Cluster, node: RealNode):
        self.cluster, self.node = cluster, node
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())

    def exec(self, pod: str, script: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("exec", pod, "--", "sh", "-c", script, check=False)

    def running(self, name: str, namespace: str = NS, ready: bool = False, timeout: float = 120) -> Any:
        def check() -> Any:
            pod = self.core.read_namespaced_pod(name, namespace)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod {namespace}/{name} ended: {pod.status}")
            if pod.status.phase != "Running":
                return None
            if ready and not all(c.ready for c in pod.status.container_statuses or []):
                return None
            return pod

        return wait_for(f"pod {namespace}/{name} Running{' and Ready' if ready else ''}", check, timeout)


@pytest.fixture(scope="module")
def dns_cluster(
    tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None
) -> Iterator[DnsCluster]:
    if kubeconfig_option:
        pytest.skip("real nodes join the local control plane: its CA signs their credentials")
    cluster = Cluster(tmp_path_factory.mktemp("dns-node"), network=NodeNetwork.allocate())
    node: RealNode | None = None
    try:
        cluster.start()
        node = RealNode(cluster, NODE, 1).start()
        archive = cluster.state_dir / "images" / "coredns.tar"
        archive.parent.mkdir(parents=True, exist_ok=True)
        images.write_oci_archive(coredns.image_spec(), archive)
        subprocess.run(
            ["nsenter", f"--mount={node.mount_ns}", "--", "ctr", f"--address={node.socket}", "-n", "k8s.io"]
            + ["images", "import", str(archive)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(coredns.manifests()))
        yield DnsCluster(cluster, node)
    finally:
        if node is not None:
            node.stop()
        cluster.stop()


def test_the_dns_pod_runs_in_kube_system(dns_cluster: DnsCluster) -> None:
    def dns_pod() -> Any:
        pods = dns_cluster.core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
        return pods[0].metadata.name if pods else None

    name = wait_for("a CoreDNS pod", dns_pod, 60)
    pod = dns_cluster.running(name, "kube-system", ready=True)
    assert pod.spec.node_name == NODE
    assert pod.status.container_statuses[0].image.endswith(coredns.IMAGE.split("/", 1)[1])


def test_pods_resolve_the_api_server_and_headless_pods(dns_cluster: DnsCluster) -> None:
    test_the_dns_pod_runs_in_kube_system(dns_cluster)
    core = dns_cluster.core
    core.create_namespaced_service(
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
    core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": "digits-worker-0", "labels": {"job": "digits"}},
            "spec": {
                "hostname": "digits-worker-0",
                "subdomain": "digits",
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": images.BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                    }
                ],
            },
        },
    )
    pod = dns_cluster.running("digits-worker-0")
    resolv = dns_cluster.exec("digits-worker-0", "cat /etc/resolv.conf").stdout
    assert f"nameserver {coredns.DNS_SERVICE_IP}" in resolv and "search default.svc.cluster.local" in resolv

    def resolves(name: str, address: str) -> bool:
        answer = dns_cluster.exec("digits-worker-0", f"nslookup {name}")
        return answer.returncode == 0 and f"Address: {address}" in answer.stdout

    wait_for(
        "kubernetes.default in cluster DNS",
        lambda: resolves("kubernetes.default.svc.cluster.local", "10.96.0.1"),
    )
    assert resolves("kube-dns.kube-system.svc.cluster.local", coredns.DNS_SERVICE_IP)
    own = f"digits-worker-0.digits.{NS}.svc.cluster.local"
    assert wait_for(f"{own} in cluster DNS", lambda: resolves(own, pod.status.pod_ip), 30)
