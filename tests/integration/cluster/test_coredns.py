"""Cluster DNS: the CoreDNS built from its Go module (`mnv2_cluster.coredns`) serving the local control
plane's Services on loopback, with the ServiceAccount and ClusterRole the in-cluster Deployment uses.

This runs before any node exists: CoreDNS reads Services and EndpointSlices from the API server as
it does in a pod, and the test queries it over UDP and TCP with dnspython. The headless Service's
EndpointSlice is written here as the EndpointSlice controller writes it for ready pods whose
`hostname`/`subdomain` name them (as the operator's worker pods do)."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import kubernetes
import pytest
import yaml
from mnv2_cluster import coredns
from mnv2_cluster.launcher import Cluster
from support.cluster import wait_for

pytestmark = pytest.mark.cluster

NS = "dns-test"
DOMAIN = "cluster.local"


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS serves both on one port)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)


class Dns:
    def __init__(self, port: int, ready_port: int, health_port: int, log: Path):
        self.port, self.ready_port, self.health_port, self.log = port, ready_port, health_port, log

    def query(self, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
        message = dns.message.make_query(name, rdtype)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(message, "127.0.0.1", port=self.port, timeout=5)

    def addresses(self, name: str, tcp: bool = False) -> set[str]:
        answer = self.query(name, tcp=tcp)
        assert answer.rcode() == dns.rcode.NOERROR, f"{name}: {dns.rcode.to_text(answer.rcode())}"
        return {rr.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset}


@pytest.fixture(scope="module")
def dns_server(local: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dns]:
    """CoreDNS on loopback, authenticated as the in-cluster ServiceAccount kube-system/coredns."""
    binary = coredns.binary()
    folder = tmp_path_factory.mktemp("coredns")
    manifests = coredns.manifests()
    local.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    kubeconfig = local.kubeconfig_for_service_account("kube-system", "coredns")
    port, ready, health = _free_port(), _free_port(), _free_port()
    conf = folder / "Corefile"
    conf.write_text(
        coredns.corefile(
            port=port,
            bind="127.0.0.1",
            health=f"127.0.0.1:{health}",
            ready=f"127.0.0.1:{ready}",
            metrics=None,
            kubeconfig=kubeconfig,
            log=True,
        )
    )
    log = folder / "coredns.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-conf", str(conf)], cwd=folder, stdout=out, stderr=subprocess.STDOUT
        )
    server = Dns(port, ready, health, log)
    try:
        wait_for(f"CoreDNS ready (log: {log})", lambda: proc.poll() is None and _http_ok(ready, "/ready"), 60)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def services(local: Cluster, core: kubernetes.client.CoreV1Api) -> dict[str, str]:
    """A ClusterIP Service and a headless one with two named endpoints (ready pods with hostnames)."""
    core.create_namespace({"metadata": {"name": NS}})
    web = core.create_namespaced_service(
        NS, {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}}
    )
    core.create_namespaced_service(
        NS,
        {
            "metadata": {"name": "digits"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "ports": [{"name": "msrun", "port": 8118}],
            },
        },
    )
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "digits-abcde",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": "digits"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.7"], "hostname": "digits-worker-0", "conditions": {"ready": True}},
            {"addresses": ["10.244.2.9"], "hostname": "digits-worker-1", "conditions": {"ready": True}},
        ],
        "ports": [{"name": "msrun", "port": 8118, "protocol": "TCP"}],
    }
    local.kubectl("apply", "-f", "-", input=yaml.safe_dump(slice_))
    kubernetes_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    return {"web": web.spec.cluster_ip, "kubernetes": kubernetes_ip}


def test_the_api_servers_service_resolves(dns_server: Dns, services: dict[str, str]) -> None:
    assert dns_server.addresses(f"kubernetes.default.svc.{DOMAIN}") == {services["kubernetes"]}
    assert dns_server.addresses(f"kubernetes.default.svc.{DOMAIN}", tcp=True) == {services["kubernetes"]}
    assert dns_server.addresses(f"kube-dns.kube-system.svc.{DOMAIN}") == {coredns.DNS_SERVICE_IP}


def test_a_headless_services_pods_resolve_by_hostname(dns_server: Dns, services: dict[str, str]) -> None:
    assert wait_for(
        "the headless Service's endpoints in DNS",
        lambda: dns_server.addresses(f"digits-worker-0.digits.{NS}.svc.{DOMAIN}") == {"10.244.1.7"},
    )
    assert dns_server.addresses(f"digits-worker-1.digits.{NS}.svc.{DOMAIN}") == {"10.244.2.9"}
    assert dns_server.addresses(f"digits.{NS}.svc.{DOMAIN}") == {"10.244.1.7", "10.244.2.9"}
    srv = dns_server.query(f"_msrun._tcp.digits.{NS}.svc.{DOMAIN}", "SRV")
    targets = {(rr.port, rr.target.to_text()) for rrset in srv.answer for rr in rrset}
    assert targets == {(8118, f"digits-worker-{i}.digits.{NS}.svc.{DOMAIN}.") for i in (0, 1)}


def test_cluster_ip_services_and_unknown_names(
    dns_server: Dns, services: dict[str, str], core: kubernetes.client.CoreV1Api
) -> None:
    assert dns_server.addresses(f"web.{NS}.svc.{DOMAIN}") == {services["web"]}
    assert dns_server.query(f"nosuch.{NS}.svc.{DOMAIN}").rcode() == dns.rcode.NXDOMAIN
    # A Service made after CoreDNS started: the plugin watches the API.
    later = core.create_namespaced_service(
        NS, {"metadata": {"name": "later"}, "spec": {"ports": [{"port": 81}]}}
    )
    assert wait_for("a new Service in DNS", lambda: dns_server.query(f"later.{NS}.svc.{DOMAIN}").answer, 30)
    assert dns_server.addresses(f"later.{NS}.svc.{DOMAIN}") == {later.spec.cluster_ip}
    # Nothing is forwarded off the machine.
    assert dns_server.query("example.com.").rcode() == dns.rcode.SERVFAIL
    assert _http_ok(dns_server.health_port, "/health")


def test_the_deployments_pod_passes_the_restricted_pod_security_level(
    local: Cluster, core: kubernetes.client.CoreV1Api
) -> None:
    core.create_namespace(
        {
            "metadata": {
                "name": "dns-restricted",
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            }
        }
    )
    core.create_namespaced_service_account("dns-restricted", {"metadata": {"name": "coredns"}})
    deployment = next(o for o in coredns.manifests() if o["kind"] == "Deployment")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "coredns", "namespace": "dns-restricted"},
        "spec": deployment["spec"]["template"]["spec"],
    }
    proc = local.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert proc.returncode == 0, proc.stderr
