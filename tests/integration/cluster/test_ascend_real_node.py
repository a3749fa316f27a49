"""The Ascend device-plugin stand-in on a real Node (the upstream kubelet on containerd + runc): the
kubelet takes its registration, the Node advertises `huawei.com/Ascend910`, and a pod that requests one
NPU gets what an Ascend node gives it: one ASCEND_VISIBLE_DEVICES, its /dev/davinci<N> and the shared
device nodes owned root:HwHiAiUser 0660 (usable through the HwHiAiUser group only), and the driver
folder read-only. Where a piece cannot run on this machine, the fixture fails with its exact error."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from mnv2_cluster import ascend, images
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import NodeNetwork, RealNode
from support.cluster import wait_for

pytestmark = pytest.mark.cluster

NS = "default"
NODE = "ascend-1"
NPUS = 2


class AscendNode:
    def __init__(self, cluster: Cluster, node: RealNode):
        self.cluster, self.node = cluster, node
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())

    def exec(self, pod: str, script: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("exec", pod, "--", "sh", "-c", script, check=False)

    def run_npu_pod(self, name: str, groups: list[int]) -> dict[str, Any]:
        """A busybox pod as uid 2000 requesting one NPU, with `groups` as supplemental groups."""
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsUser": 2000, "runAsGroup": 2000, "supplementalGroups": groups},
                "containers": [
                    {
                        "name": "main",
                        "image": images.BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                        "resources": {"limits": {ascend.ASCEND_RESOURCE: "1"}},
                    }
                ],
            },
        }
        self.core.create_namespaced_pod(NS, body)

        def running() -> Any:
            pod = self.core.read_namespaced_pod(name, NS)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod {name} ended: {pod.status}")
            return pod if pod.status.phase == "Running" else None

        return wait_for(f"pod {name} Running", running, 90).to_dict()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def npu_node(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[AscendNode]:
    if kubeconfig_option:
        pytest.skip("real nodes join the local control plane: its CA signs their credentials")
    cluster = Cluster(tmp_path_factory.mktemp("ascend-node"), network=NodeNetwork.allocate())
    node: RealNode | None = None
    plugin: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        node = RealNode(cluster, NODE, 1).start()
        plugin = ascend.start_device_plugin(
            ascend.KUBELET_DEVICE_PLUGIN_DIR,
            node.state_dir / "ascend-dev",
            log=node.logs_dir / "ascend-device-plugin.log",
            count=NPUS,
            driver_dir=ascend.make_driver_dir(node.state_dir / "ascend-driver"),
            prefix=["nsenter", f"--mount={node.mount_ns}", "--"],
        )
        local = AscendNode(cluster, node)
        yield local
    finally:
        if plugin is not None:
            ascend.stop_device_plugin(plugin)
        if node is not None:
            node.stop()
        cluster.stop()


def test_the_node_advertises_the_npus(npu_node: AscendNode) -> None:
    def advertised() -> bool:
        status = npu_node.core.read_node(NODE).status
        return (status.allocatable or {}).get(ascend.ASCEND_RESOURCE) == str(NPUS)

    wait_for(f"{ascend.ASCEND_RESOURCE}: {NPUS} in the Node's allocatable", advertised, 60)
    log = (npu_node.node.logs_dir / "ascend-device-plugin.log").read_text()
    assert "registered huawei.com/Ascend910 (2 devices) with the kubelet" in log


def test_a_pod_gets_one_npu_its_device_nodes_and_the_driver(npu_node: AscendNode) -> None:
    test_the_node_advertises_the_npus(npu_node)
    npu_node.run_npu_pod("npu-user", groups=[ascend.HWHIAIUSER_GID])
    env = npu_node.exec("npu-user", "env | grep '^ASCEND_' | sort").stdout.split()
    visible = [e for e in env if e.startswith("ASCEND_VISIBLE_DEVICES=")]
    assert len(visible) == 1 and visible[0].split("=")[1] in {"0", "1"}, env
    assert "ASCEND_RUNTIME_OPTIONS=" in env
    npu = visible[0].split("=")[1]
    other = "1" if npu == "0" else "0"

    listing = npu_node.exec("npu-user", "ls -ln /dev/davinci* /dev/devmm_svm /dev/hisi_hdc").stdout
    nodes = {line.split()[-1]: line.split() for line in listing.splitlines()}
    assert set(nodes) == {f"/dev/davinci{npu}", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"}, (
        listing
    )
    for path, fields in nodes.items():
        assert fields[0] == "crw-rw----" and fields[2:4] == ["0", str(ascend.HWHIAIUSER_GID)], (path, fields)
    assert f"/dev/davinci{other}" not in nodes

    opened = npu_node.exec("npu-user", f"echo x > /dev/davinci{npu} && cat /dev/davinci{npu} && echo opened")
    assert opened.stdout.strip() == "opened", opened

    driver = npu_node.exec(
        "npu-user", "cat /usr/local/Ascend/driver/version.info; touch /usr/local/Ascend/driver/x"
    )
    assert driver.stdout.strip() == "Version=stand-in", driver
    assert "Read-only file system" in driver.stderr, driver


def test_without_the_hwhiaiuser_group_the_device_nodes_stay_closed(npu_node: AscendNode) -> None:
    test_the_node_advertises_the_npus(npu_node)
    npu_node.run_npu_pod("npu-stranger", groups=[])
    npu = npu_node.exec("npu-stranger", "echo $ASCEND_VISIBLE_DEVICES").stdout.strip()
    denied = npu_node.exec("npu-stranger", f"echo x > /dev/davinci{npu}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
