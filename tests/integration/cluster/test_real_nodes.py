"""Two real Nodes (the upstream kubelet on containerd + runc, CNI bridge networking, kube-proxy), each
in its own network and mount namespace, on the local control plane: what a pod gets there.

One control plane and two nodes for the whole module. Where a piece cannot run on this machine, the
fixture fails with the piece and its exact error (NodeError, HostError, ClusterError), never skips.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from mnv2_cluster import ascend, build, host, images
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import (
    CGROUP_ROOT,
    KUBELET_SYSCTLS,
    RUN_ROOT,
    NodeNetwork,
    RealNode,
    start_cluster_dns,
)

from tests.support.cluster import wait_for

NS = "default"
NODES = ("real-1", "real-2")


class Real:
    def __init__(
        self,
        cluster: Cluster,
        network: NodeNetwork,
        nodes: list[RealNode],
        host_rules: set[str],
        host_sysctls: dict[str, str],
    ):
        self.cluster, self.network, self.nodes = cluster, network, nodes
        self.host_rules_before = host_rules
        self.host_sysctls_before = host_sysctls
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, check=check, timeout=timeout)

    def run_pod(
        self,
        name: str,
        node: str,
        script: str,
        timeout: float = 90,
        resources: dict[str, Any] | None = None,
        image: str = images.BUSYBOX_IMAGE,
    ) -> tuple[dict[str, Any], float]:
        """A pod of `image` (busybox) running `script` on `node`; its object once Running and seconds to
        Running."""
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 5,
                "tolerations": [{"operator": "Exists"}],
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", script],
                        "resources": resources or {},
                    }
                ],
            },
        }
        started = time.monotonic()
        self.core.create_namespaced_pod(NS, body)

        def running() -> Any:
            pod = self.core.read_namespaced_pod(name, NS)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod {name} ended: {pod.status}")
            return pod if pod.status.phase == "Running" else None

        pod = wait_for(f"pod {name} Running on {node}", running, timeout, interval=0.1)
        return pod.to_dict(), time.monotonic() - started


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Real]:
    if kubeconfig_option:
        pytest.skip(
            "--kubeconfig names another cluster: real nodes join only the local control plane (its CA signs their credentials)"
        )
    network = NodeNetwork.allocate()
    cluster = Cluster(tmp_path_factory.mktemp("real-nodes"), network=network)
    nodes: list[RealNode] = []
    host_rules, host_sysctls = _host_rules(), _host_sysctls()
    try:
        cluster.start()
        for i, name in enumerate(NODES, start=1):
            # The second node is an Ascend node: the device-plugin stand-in with 2 devices.
            nodes.append(RealNode(cluster, name, i, ascend_devices=2 if i == 2 else 0).start())
        yield Real(cluster, network, nodes, host_rules, host_sysctls)
    finally:
        for node in reversed(nodes):
            node.stop()
        cluster.stop()


def test_two_real_nodes_are_ready_on_containerd(real: Real) -> None:
    for name in NODES:
        node = real.core.read_node(name)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True", ready
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
        assert node.status.node_info.kubelet_version == build.KUBERNETES_VERSION
        addresses = {a.type: a.address for a in node.status.addresses}
        assert addresses["InternalIP"] == real.network.node_ip(NODES.index(name) + 1)
    for node in real.nodes:
        print(f"{node.name}: Ready {node.timings['ready']:.1f} s after start, RSS {node.rss()}")


def test_pods_on_two_nodes_reach_each_other_and_the_api_server(real: Real) -> None:
    server, took = real.run_pod(
        "web", NODES[0], "echo hello-from-web > /tmp/index.html; httpd -f -p 8080 -h /tmp"
    )
    print(f"pod create -> Running: {took:.2f} s")
    ip = server["status"]["pod_ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(real.network.pod_subnet(1)), ip
    client, _ = real.run_pod("client", NODES[1], "sleep 3600")
    assert client["status"]["pod_ip"] != ip
    got = real.kubectl(
        "exec", "client", "--", "timeout", "5", "wget", "-q", "-O", "-", f"http://{ip}:8080/index.html"
    )
    assert got.stdout.strip() == "hello-from-web"
    # The API server through the `kubernetes` Service (10.96.0.1:443, kube-proxy's rules in the node's
    # namespace, to the address the API server advertises). Busybox's TLS client cannot talk to it
    # (no ECDSA): plain HTTP to the TLS port gets the answer of the API server's Go TLS listener.
    env = real.kubectl(
        "exec", "client", "--", "sh", "-c", "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
    )
    assert env.stdout.strip() == "10.96.0.1:443"
    script = "printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT"
    answer = real.kubectl("exec", "client", "--", "sh", "-c", script, check=False)
    assert "Client sent an HTTP request to an HTTPS server" in answer.stdout, answer
    # Nothing leaves the machine: a node has no default route, so neither has a pod beyond its node.
    out = real.kubectl(
        "exec", "client", "--", "sh", "-c", "timeout 3 wget -q -O - http://192.0.2.1/ 2>&1; echo rc=$?"
    )
    assert "rc=0" not in out.stdout and "unreachable" in out.stdout, out.stdout


def test_logs_exec_and_deletion_end_the_container(real: Real) -> None:
    real.run_pod(
        "talker", NODES[1], "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done"
    )
    wait_for("the pod's log", lambda: "started" in real.kubectl("logs", "talker").stdout, 30)
    assert real.kubectl("exec", "talker", "--", "cat", "/etc/hostname").stdout.strip() == "talker"

    # The kubelet's events reach the API server asynchronously.
    def described_with_events() -> str:
        out = real.kubectl("describe", "pod", "talker").stdout
        return out if "spec.containers{main}: Container started" in out else ""

    described = wait_for("kubectl describe with the kubelet's Started event", described_with_events, 30, 0.5)
    assert f"Node:             {NODES[1]}/" in described and "containerd://" in described, described
    node = real.nodes[1]
    before = node.rss().get("shims", 0)
    started = time.monotonic()
    real.core.delete_namespaced_pod("talker", NS)

    def gone() -> bool:
        try:
            real.core.read_namespaced_pod("talker", NS)
        except kubernetes.client.ApiException as e:
            return e.status == 404
        return False

    wait_for("pod talker deleted", gone, 30)
    took = time.monotonic() - started
    print(f"delete -> gone: {took:.2f} s (shims RSS before {before / 2**20:.0f} MiB)")
    assert took < 15
    # The container's processes are gone from the node.
    leftovers = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmdline(p).startswith("sh -c echo started")
    ]
    assert not leftovers


def test_cluster_dns_resolves_services_for_pods(real: Real) -> None:
    took = start_cluster_dns(real.cluster)
    print(f"CoreDNS Ready {took:.1f} s after its objects were applied")
    real.run_pod("resolver", NODES[0], "sleep 3600")
    out = real.kubectl("exec", "resolver", "--", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "10.96.0.1" in out.stdout, out.stdout
    # The short name through the pod's search path, as the in-cluster clients use it.
    resolv = real.kubectl("exec", "resolver", "--", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 10.96.0.10" in resolv and "default.svc.cluster.local" in resolv, resolv
    script = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc kubernetes.default 443"
    answer = real.kubectl("exec", "resolver", "--", "sh", "-c", script, check=False)
    assert "Client sent an HTTP request to an HTTPS server" in answer.stdout, answer


def _blob(node: RealNode, digest: str) -> Path:
    """Where the node's containerd keeps the content `digest`."""
    content = node.state_dir / "containerd" / "root" / "io.containerd.content.v1.content"
    return content / "blobs" / "sha256" / digest.split(":", 1)[1]


def test_an_imported_image_keeps_its_snapshots_not_its_layers_and_runs(real: Real, tmp_path: Path) -> None:
    """The layer blobs of an imported image go once it is unpacked; the kubelet still finds the image
    (the CRI's ImageStatus: pull policy Never) and runs a pod from it."""
    spec = images.busybox_image(host.BUSYBOX)
    spec.name = "localhost/mnv2/busybox-marked:1"
    spec.files["marker"] = (b"imported-without-layers\n", 0o644)
    archive = tmp_path / "marked.tar"
    manifest_digest = images.write_oci_archive(spec, archive)
    layer = "sha256:" + hashlib.sha256(images.layer_tar(spec)).hexdigest()
    node = real.nodes[0]
    started = time.monotonic()
    node.import_image(archive, spec.name)
    print(f"busybox-sized image imported and its layer dropped in {time.monotonic() - started:.2f} s")
    # containerd's garbage collector frees the blob's file a moment after its record goes.
    wait_for(
        f"layer {layer} gone from {_blob(node, layer).parent}", lambda: not _blob(node, layer).exists(), 30
    )
    assert _blob(node, manifest_digest).exists()  # the image's manifest and config stay
    listed = subprocess.run(
        node.in_node("ctr", f"--address={node.socket}", "-n", "k8s.io", "content", "ls", "-q"),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert layer not in listed and manifest_digest in listed, listed
    # Every layer of the images the node imported at start went too: only manifests and configs stay.
    blobs = sorted(_blob(node, layer).parent.iterdir())
    assert sum(b.stat().st_size for b in blobs) < 64 * 1024, [(b.name, b.stat().st_size) for b in blobs]
    real.run_pod("marked", NODES[0], "cat /marker; sleep 3600", image=spec.name)
    wait_for(
        "the marker in the pod's log",
        lambda: "imported-without-layers" in real.kubectl("logs", "marked").stdout,
        30,
    )
    assert real.kubectl("exec", "marked", "--", "ls", "/bin/sleep").stdout.strip() == "/bin/sleep"


def test_ascend_node_gives_a_pod_its_device(real: Real) -> None:
    node = real.core.read_node(NODES[1])
    assert node.status.allocatable[ascend.ASCEND_RESOURCE] == "2"
    assert node.metadata.labels["accelerator"] == ascend.ASCEND_LABELS["accelerator"]
    one = {"limits": {ascend.ASCEND_RESOURCE: "1"}}
    real.run_pod("npu", NODES[1], "sleep 3600", resources=one)
    env = real.kubectl("exec", "npu", "--", "sh", "-c", "echo $ASCEND_VISIBLE_DEVICES").stdout.strip()
    assert env.isdigit(), env
    devices = real.kubectl(
        "exec", "npu", "--", "ls", "-l", f"/dev/davinci{env}", "/dev/davinci_manager"
    ).stdout
    assert devices.count("\ncrw-rw----") + devices.startswith("crw-rw----") == 2, devices
    driver = real.kubectl("exec", "npu", "--", "cat", f"{ascend.DRIVER_CONTAINER_PATH}/version.info")
    assert driver.stdout.startswith("Version=")


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_stop_leaves_no_processes_mounts_namespaces_or_rules(real: Real) -> None:
    """Runs last: stops the nodes, each with a pod running, and the control plane, then checks that
    nothing of them is left on the machine."""
    real.run_pod("left-1", NODES[0], "sleep 3600")
    real.run_pod("left-2", NODES[1], "sleep 3600")
    stopped = list(real.nodes)
    started = time.monotonic()
    for node in reversed(stopped):
        node.stop()
        real.nodes.remove(node)
    print(f"two nodes with a pod each stopped in {time.monotonic() - started:.1f} s")
    for node in stopped:
        print(node.name, {k: round(v, 2) for k, v in node.timings.items() if k.startswith("stop")})
    real.cluster.stop()
    # No process of theirs: no component or shim naming a node's folders, no container in a node's
    # cgroups. (Not by mount-namespace inode: a freed namespace's inode is reused by new ones.)
    pids = [p for p in Path("/proc").iterdir() if p.name.isdigit() and any(_of_node(p, n) for n in stopped)]
    assert not pids, [_cmdline(p) for p in pids]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    for node in stopped:
        assert node.netns not in netns
        assert str(node.run_dir) not in mounts and "/var/lib/kubelet" not in mounts
        assert not node.run_dir.exists()
        assert not list(CGROUP_ROOT.glob(f"*/{node.cgroup_root}"))
        assert node.pod_subnet not in routes
    assert f" {real.network.bridge}:" not in links and f"mnv2v{real.network.slot}n" not in links
    # kube-proxy's and the CNI's iptables rules lived in the nodes' namespaces, gone with them.
    assert _host_rules() == real.host_rules_before
    # The kubelets found the sysctls they want in their mount namespaces: the machine's are unchanged.
    assert _host_sysctls() == real.host_sysctls_before
    assert not list(RUN_ROOT.glob(f"{real.network.slot}/*"))
    # The nodes' state (images, snapshots, pods' volumes) went with them; their logs stay.
    for node in stopped:
        assert not (node.state_dir / "containerd").exists() and not (node.state_dir / "kubelet").exists()
        assert (node.logs_dir / "containerd.log").stat().st_size > 0
        assert (node.logs_dir / "kubelet.log").stat().st_size > 0


def _host_rules() -> set[str]:
    """The host's iptables rules that mention kube-proxy's chains or this project's subnets."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "KUBE-" in line or "10.127." in line}


def _host_sysctls() -> dict[str, str]:
    return {key: Path(f"/proc/sys/{key}").read_text().strip() for key in KUBELET_SYSCTLS}


def _of_node(proc: Path, node: RealNode) -> bool:
    try:
        cgroups = (proc / "cgroup").read_text()
    except OSError:
        return False
    cmdline = _cmdline(proc)
    return (
        f"/{node.cgroup_root}/" in cgroups or str(node.run_dir) in cmdline or str(node.state_dir) in cmdline
    )
