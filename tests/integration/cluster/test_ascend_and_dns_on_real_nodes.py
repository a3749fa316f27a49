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

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from mnv2_cluster import ascend, coredns, host, images
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import NodeNetwork, RealNode, start_cluster_dns
from mnv2_operator import constants as C
from mnv2_operator import render
from mnv2_operator import spec as S
from mnv2_operator.policy import OperatorPolicy
from support.cluster import wait_for

pytestmark = pytest.mark.cluster

NS = "default"
PLAIN, NPU_NODE = "plain-1", "ascend-2"
NPUS = 8  # an Atlas 800 training server's
# The device nodes' owner and group as the Ascend RealNode makes them: HwHiAiUser:HwHiAiUser.
OWNER = [str(ascend.HWHIAIUSER_UID), str(ascend.HWHIAIUSER_GID)]


class Nodes:
    def __init__(self, cluster: Cluster, npu_node: RealNode, data_dir: Path):
        self.cluster = cluster
        self.npu_node = npu_node
        self.data_dir = data_dir
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
        pytest.skip(
            "--kubeconfig names another cluster: real nodes join only the local control plane (its CA signs their credentials)"
        )
    cluster = Cluster(tmp_path_factory.mktemp("ascend-dns"), network=NodeNetwork.allocate())
    started: list[RealNode] = []
    try:
        cluster.start()
        started.append(RealNode(cluster, PLAIN, 1).start())
        started.append(RealNode(cluster, NPU_NODE, 2, ascend_devices=NPUS).start())
        start_cluster_dns(cluster)
        data_dir = tmp_path_factory.mktemp("imagenet")
        yield Nodes(cluster, started[-1], data_dir)
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
    assert len(visible) == 1 and visible[0].split("=")[1] in {str(i) for i in range(NPUS)}, env
    assert "ASCEND_RUNTIME_OPTIONS=" in env
    npu = visible[0].split("=")[1]

    listing = nodes.exec("npu-user", "ls -ln /dev/davinci* /dev/devmm_svm /dev/hisi_hdc").stdout
    found = {line.split()[-1]: line.split() for line in listing.splitlines()}
    assert set(found) == {f"/dev/davinci{npu}", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"}, (
        listing
    )
    for path, fields in found.items():
        assert fields[0] == "crw-rw----" and fields[2:4] == OWNER, (path, fields)

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
    assert npu in {str(i) for i in range(NPUS)}
    denied = nodes.exec("npu-stranger", f"echo x > /dev/davinci{npu}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


# The rendered Ascend pods run a busybox image whose user is not root and whose own group is not
# HwHiAiUser's (as an Ascend trainer image built to run as non-root): only the rendered supplemental
# group can open the device nodes, which belong to root.
TRAINER_USER = 2000
USER_IMAGE = "localhost/mnv2/busybox-nonroot:1.35"
CRD = Path(__file__).resolve().parents[3] / "manifests" / "crd" / "mobilenetv2trainingjobs.yaml"
# In place of the trainer's command (python -m mnv2_trainer.launch msrun ..., which needs CANN, MindSpore
# for Ascend and NPUs): what the container gets, one `key:value` line each.
CHECK = f"""\
echo "uid:$(id -u)"
echo "groups:$(id -G)"
env | grep '^ASCEND_' | sed 's/^/env:/'
ls -ln /dev/davinci* /dev/devmm_svm /dev/hisi_hdc | sed 's/^/dev:/'
for d in /dev/davinci* /dev/devmm_svm /dev/hisi_hdc; do
  if out=$( (echo x > "$d" && cat "$d") 2>&1); then echo "open:$d"; else echo "refused:$d:$out"; fi
done
echo "driver:$(cat {ascend.DRIVER_CONTAINER_PATH}/version.info)"
echo "driver-write:$(touch {ascend.DRIVER_CONTAINER_PATH}/probe 2>&1)"
echo "install-info:$(grep '^UserGroup=' /etc/ascend_install.info)"
awk '$5 == "{ascend.DRIVER_CONTAINER_PATH}" || $5 == "/etc/ascend_install.info" || $5 == "/etc/localtime" {{split($6, o, ","); print "mount:" $5 " " o[1]}}' \
  /proc/self/mountinfo
"""


def nonroot_image() -> images.ImageSpec:
    base = images.busybox_image(host.BUSYBOX)
    files = dict(base.files)
    files["etc/passwd"] = (
        files["etc/passwd"][0] + f"trainer:x:{TRAINER_USER}:{TRAINER_USER}::/tmp:/bin/sh\n".encode(),
        0o644,
    )
    files["etc/group"] = (files["etc/group"][0] + f"trainer:x:{TRAINER_USER}:\n".encode(), 0o644)
    return dataclasses.replace(base, name=USER_IMAGE, files=files, user=f"{TRAINER_USER}:{TRAINER_USER}")


def run_rendered_job(
    nodes: Nodes, name: str, devices: int, gid: int | None = None, image: str = USER_IMAGE
) -> tuple[Any, dict[str, list[str]]]:
    """An Ascend job as the operator renders it (its objects created, owned by the job) with the check
    in place of the trainer's command; the pod once Succeeded, and the check's lines by key."""
    accelerator: dict[str, Any] = {
        "tolerations": [{"key": ascend.ASCEND_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    }
    if gid is not None:
        accelerator["hwHiAiUserGid"] = gid
    body = {
        "apiVersion": C.API_VERSION,
        "kind": C.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"name": "mobilenet_v2_075"},
            "dataset": {"type": "imagefolder", "hostPath": {"path": str(nodes.data_dir)}},
            "output": {"emptyDir": {}},
            "runPolicy": {"backoffLimit": 0},
            "nodes": 1,
            "devicesPerNode": devices,
            "image": image,
            "imagePullPolicy": "Never",
            "accelerator": accelerator,
        },
    }
    custom = kubernetes.client.CustomObjectsApi(nodes.cluster.api_client())
    job = custom.create_namespaced_custom_object(C.GROUP, C.API_VERSION.split("/")[1], NS, C.PLURAL, body)
    policy = OperatorPolicy(
        image_prefixes=("localhost/mnv2/",),
        host_path_dataset_prefixes=(str(nodes.data_dir),),
        tolerations=({"key": ascend.ASCEND_RESOURCE, "effect": "NoSchedule"},),
        hw_hi_ai_user_gids=(1001,),
    )
    rendered = render.render_job(
        name,
        NS,
        job["metadata"]["uid"],
        S.parse_spec(body["spec"]),
        defaults=S.OperatorDefaults(policy=policy),
    )
    (pod,) = rendered.pods
    (trainer,) = pod["spec"]["containers"]
    trainer["command"] = ["sh", "-c", CHECK]
    nodes.cluster.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [*rendered.objects, pod]}),
    )
    pname = pod["metadata"]["name"]

    def done() -> Any:
        got = nodes.core.read_namespaced_pod(pname, NS)
        if got.status.phase == "Failed":
            raise AssertionError(f"pod {pname} failed: {got.status}")
        return got if got.status.phase == "Succeeded" else None

    try:
        got = wait_for(f"pod {pname} Succeeded", done, 60)
    except AssertionError as err:
        # What kept it from running (e.g. a hostPath the node lacks: its events name the path).
        described = nodes.cluster.kubectl("describe", "pod", pname, check=False).stdout
        raise AssertionError(f"{err}\n{described[-3000:]}") from None
    lines: dict[str, list[str]] = {}
    for line in nodes.core.read_namespaced_pod_log(pname, NS).splitlines():
        key, _, value = line.partition(":")
        lines.setdefault(key, []).append(value)
    return got, lines


@pytest.fixture(scope="module")
def rendered_jobs(nodes: Nodes) -> Nodes:
    """The job CRD installed and the non-root image on the Ascend node."""
    nodes.cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    nodes.cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "-f", str(CRD))
    archive = nodes.cluster.state_dir / "images" / "busybox-nonroot.tar"
    images.write_oci_archive(nonroot_image(), archive)
    nodes.npu_node.import_image(archive, USER_IMAGE)
    return nodes


def test_a_rendered_ascend_pod_gets_its_npus_the_driver_and_the_install_info(rendered_jobs: Nodes) -> None:
    devices = 4
    pod, check = run_rendered_job(rendered_jobs, "mnv2-npu", devices)
    # Only the Ascend node matches the rendered node selector, and its taint is tolerated.
    assert pod.spec.node_name == NPU_NODE
    assert pod.spec.node_selector == ascend.ASCEND_LABELS
    assert check["uid"] == [str(TRAINER_USER)]
    assert str(ascend.HWHIAIUSER_GID) in check["groups"][0].split(), check["groups"]
    visible = [e for e in check.get("env", []) if e.startswith("ASCEND_VISIBLE_DEVICES=")]
    assert len(visible) == 1, check
    npus = visible[0].split("=", 1)[1].split(",")
    assert len(npus) == devices and set(npus) <= {str(i) for i in range(NPUS)}, visible
    shared = ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    wanted = {*(f"/dev/davinci{n}" for n in npus), *shared}
    listed = {line.split()[-1]: line.split() for line in check["dev"]}
    assert set(listed) == wanted, check["dev"]
    for path, fields in listed.items():
        assert fields[0] == "crw-rw----" and fields[2:4] == OWNER, (path, fields)
    assert set(check.get("open", [])) == wanted, check
    assert check["driver"] == ["Version=stand-in"]
    assert "Read-only file system" in check["driver-write"][0], check["driver-write"]
    assert check["install-info"] == ["UserGroup=HwHiAiUser"]
    # Both come read-only from the rendered hostPath volumes; the driver folder also from the stand-in's
    # Allocate answer (the same folder: a real node's Ascend Docker Runtime mounts libraries below it).
    assert sorted(check["mount"]) == [
        "/etc/ascend_install.info ro",
        "/etc/localtime ro",
        f"{ascend.DRIVER_CONTAINER_PATH} ro",
        f"{ascend.DRIVER_CONTAINER_PATH} ro",
    ], check["mount"]


def test_a_rendered_ascend_pod_running_as_root_opens_the_npus_only_through_the_group(
    rendered_jobs: Nodes,
) -> None:
    """As a CANN image runs (root): with every capability dropped, root is neither the device nodes'
    owner nor exempt from their mode, so the rendered HwHiAiUser group is what opens them."""
    pod, check = run_rendered_job(rendered_jobs, "mnv2-npu-root", 1, image=images.BUSYBOX_IMAGE)
    assert check["uid"] == ["0"] and pod.spec.security_context.run_as_user is None
    assert len(check["open"]) == 4 and "refused" not in check, check
    pod, check = run_rendered_job(
        rendered_jobs, "mnv2-npu-root-othergid", 1, gid=1001, image=images.BUSYBOX_IMAGE
    )
    assert pod.spec.security_context.supplemental_groups == [1001]
    assert check["uid"] == ["0"] and "open" not in check, check
    assert len(check["refused"]) == 4 and all("Permission denied" in r for r in check["refused"]), check


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
