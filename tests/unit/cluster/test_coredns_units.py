"""The pure parts of cluster DNS: the Corefile, the kube-system manifests, the build's cache key and
the image's build context."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
from mnv2_cluster import coredns, images

K8S_VERSION = "1.37.0"


def test_corefile_serves_the_cluster_zone_and_forwards_nothing() -> None:
    text = coredns.corefile()
    assert text.startswith(".:53 {\n")
    assert "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods insecure\n" in text
    for directive in ("errors", "health :8080", "ready :8181", "prometheus :9153", "cache 30", "loadbalance"):
        assert f"\n    {directive}" in text
    # Nothing may leave the machine: no upstream, and the loop check that only guards forwarding.
    for absent in ("forward", "loop", "reload", "bind", "kubeconfig", "fallthrough"):
        assert absent not in text
    assert text.count("{") == text.count("}")


def test_corefile_for_a_test_run_outside_the_cluster(tmp_path: Path) -> None:
    text = coredns.corefile(
        port=5353, bind="127.0.0.1", health="127.0.0.1:1", ready="127.0.0.1:2", metrics=None,
        kubeconfig=tmp_path / "kc", log=True, domain="example.local",
    )  # fmt: skip
    assert text.startswith(".:5353 {\n    bind 127.0.0.1\n    errors\n    log\n")
    assert f"        kubeconfig {tmp_path / 'kc'}\n" in text
    assert "kubernetes example.local in-addr.arpa" in text and "disable success example.local" in text
    assert "prometheus" not in text


def test_every_corefile_directive_is_built_into_the_binary() -> None:
    main_go = (coredns.module_dir() / "main.go").read_text()
    directives = re.search(r"var directives = \[\]string\{(.*?)\}", main_go, re.S)
    assert directives
    built = re.findall(r'"(\w+)"', directives.group(1))
    used = {line.split()[0] for line in coredns.corefile(bind="127.0.0.1", log=True).splitlines()[1:]}
    used -= {"}", "lameduck", "pods", "ttl", "disable", "kubeconfig"}
    assert used <= set(built), f"Corefile directives {used - set(built)} are not compiled in"
    for name in built:
        plugin = "metrics" if name == "prometheus" else name
        assert f'"github.com/coredns/coredns/plugin/{plugin}"' in main_go


def test_go_mod_pins_the_version_the_launcher_names() -> None:
    go_mod = (coredns.module_dir() / "go.mod").read_text()
    assert f"github.com/coredns/coredns {coredns.COREDNS_VERSION}\n" in go_mod
    assert coredns.COREDNS_VERSION in coredns.IMAGE


def test_manifests_are_valid_kubernetes_objects_as_kubeadm_makes_them() -> None:
    objects = coredns.manifests(image="localhost/mnv2/coredns:test", replicas=2)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind) == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service",
    }  # fmt: skip
    service = by_kind["Service"]
    assert (service["metadata"]["name"], service["metadata"]["namespace"]) == ("kube-dns", "kube-system")
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    assert service["spec"]["selector"] == by_kind["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert by_kind["ConfigMap"]["data"]["Corefile"] == coredns.corefile()
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    container = pod["containers"][0]
    assert (
        container["image"] == "localhost/mnv2/coredns:test" and by_kind["Deployment"]["spec"]["replicas"] == 2
    )
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"} in pod["securityContext"]["sysctls"]
    rules = by_kind["ClusterRole"]["rules"]
    assert {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    } in rules
    assert by_kind["ClusterRoleBinding"]["subjects"][0] == {
        "kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system",
    }  # fmt: skip


def test_cache_key_follows_the_module(tmp_path: Path) -> None:
    module = tmp_path / "coredns"
    shutil.copytree(coredns.module_dir(), module)
    key = coredns.cache_key(module)
    assert key == coredns.cache_key() and len(key) == 16
    (module / "main.go").write_text((module / "main.go").read_text() + "\n// changed\n")
    assert coredns.cache_key(module) != key
    with pytest.raises(coredns.BuildError, match="go.mod missing.*MNV2_COREDNS_BIN"):
        coredns.cache_key(tmp_path)


def test_binary_missing_names_the_build_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNV2_COREDNS_BIN", str(tmp_path / "coredns"))
    with pytest.raises(coredns.BuildError, match=r"coredns not found at .*`make cluster`"):
        coredns.binary()


def test_image_context_holds_the_binary_and_a_scratch_containerfile(tmp_path: Path) -> None:
    fake = tmp_path / "built"
    fake.write_bytes(b"\x7fELF")
    context = coredns.image_context(tmp_path / "ctx", coredns=fake)
    assert (context / "coredns").read_bytes() == b"\x7fELF"
    containerfile = (context / "Containerfile").read_text()
    assert "FROM scratch\nCOPY coredns /coredns\nUSER 65532:65532\n" in containerfile


def test_image_spec_for_the_nodes_holds_the_binary_as_entrypoint(tmp_path: Path) -> None:
    fake = tmp_path / "built"
    fake.write_bytes(b"\x7fELF static")
    spec = coredns.image_spec(fake)
    assert spec.name == coredns.IMAGE and spec.entrypoint == ["/coredns"]
    assert spec.files == {"coredns": (b"\x7fELF static", 0o755)}
    with tarfile.open(fileobj=io.BytesIO(images.layer_tar(spec))) as layer:
        member = layer.getmember("coredns")
        assert member.mode == 0o755 and layer.extractfile(member).read() == b"\x7fELF static"  # type: ignore[union-attr]
