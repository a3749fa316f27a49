"""What a real node is made of, without starting one: its images, addresses and configuration files."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from mnv2_cluster import host, images, realnode
from mnv2_cluster.realnode import NodeNetwork, RealNode


def _archive(tmp_path: Path, spec: images.ImageSpec) -> tuple[dict[str, bytes], str]:
    path = tmp_path / "image.tar"
    digest = images.write_oci_archive(spec, path)
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}, digest  # type: ignore[union-attr]


def test_oci_archive_is_a_valid_reproducible_image_layout(tmp_path: Path) -> None:
    spec = images.ImageSpec(
        "localhost/test/tool:1", files={"bin/tool": (b"\x7fELF...", 0o755)}, symlinks={"bin/sh": "tool"},
        directories={"bin": 0o755, "tmp": 0o1777}, entrypoint=["/bin/tool"],
    )  # fmt: skip
    files, digest = _archive(tmp_path, spec)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    # Every blob's name is its content's sha256.
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/test/tool:1"
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    (layer,) = manifest["layers"]
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]  # uncompressed: the layer is its diff
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    with tarfile.open(fileobj=io.BytesIO(files[f"blobs/sha256/{layer['digest'].split(':')[1]}"])) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"
    assert members["bin/tool"].mode == 0o755 and members["tmp"].mode == 0o1777
    assert {m.mtime for m in members.values()} == {0}
    # The same inputs give the same image.
    assert images.write_oci_archive(spec, tmp_path / "again.tar") == digest


def test_node_network_addresses_are_distinct_per_node_and_slot() -> None:
    a, b = NodeNetwork(0), NodeNetwork(1)
    assert ipaddress.ip_address(a.gateway) in a.node_subnet
    assert ipaddress.ip_address(a.node_ip(1)) in a.node_subnet and a.node_ip(1) != a.node_ip(2)
    subnets = [ipaddress.ip_network(n.pod_subnet(i)) for n in (a, b) for i in (1, 2)]
    assert len(set(subnets)) == 4
    assert all(s.subnet_of(a.pod_network) for s in subnets[:2]) and all(
        s.subnet_of(b.pod_network) for s in subnets[2:]
    )
    assert not a.pod_network.overlaps(b.pod_network) and not a.node_subnet.overlaps(b.node_subnet)
    # Neither the service range nor loopback.
    service = ipaddress.ip_network("10.96.0.0/16")
    assert not any(n.overlaps(service) for n in (a.pod_network, a.node_subnet, b.pod_network))
    assert len(a.bridge) <= 15 and len(f"mnv2v{63}n{250}") <= 15  # Linux interface names


def _node(tmp_path: Path) -> RealNode:
    ca = SimpleNamespace(cert=tmp_path / "ca.crt")
    cluster = SimpleNamespace(network=NodeNetwork(3), state_dir=tmp_path, pki=SimpleNamespace(ca=ca))
    return RealNode(cluster, "real-2", 2)


def test_containerd_config_has_the_settings_this_host_needs(tmp_path: Path) -> None:
    node = _node(tmp_path)
    config = tomllib.loads(node.containerd_config())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(tmp_path / "nodes" / "real-2" / "cni" / "net.d")
    # Its own root, state and socket, the socket short enough for a unix socket address (108 bytes).
    assert config["root"].startswith(str(tmp_path / "nodes" / "real-2"))
    assert config["grpc"]["address"] == str(node.socket) and len(str(node.socket)) < 100
    assert config["state"] != config["root"]


def test_kubelet_and_cni_configs_use_the_node_address_subnet_and_cgroup_root(tmp_path: Path) -> None:
    node = _node(tmp_path)
    serving = SimpleNamespace(cert=tmp_path / "kubelet.crt", key=tmp_path / "kubelet.key")
    kubelet = node.kubelet_config(serving)
    assert kubelet["failCgroupV1"] is False and kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["address"] == node.ip == "10.127.3.12"
    assert kubelet["cgroupRoot"] == "/mnv2-3-real-2"
    assert kubelet["clusterDNS"] == ["10.96.0.10"]
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{node.socket}"
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    cni = node.cni_config()
    bridge = cni["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipam"]["ranges"] == [[{"subnet": "10.131.2.0/24"}]]
    proxy = node.kube_proxy_config(tmp_path / "proxy.kubeconfig")
    assert proxy["mode"] == "iptables" and proxy["clusterCIDR"] == "10.131.0.0/16"
    assert proxy["hostnameOverride"] == "real-2"


def test_missing_host_packages_are_named_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(
        host, "PROGRAMS",
        {"a": (str(tmp_path / "no-a"), "pkg-a"), "b": (str(tmp_path / "no-b"), "pkg-a"), "sh": ("sh", "dash"),
         "busybox": (str(tmp_path / "no-busybox"), "busybox-static")},
    )  # fmt: skip
    assert host.missing_packages() == ["pkg-a", "busybox-static"]


def test_a_node_network_names_what_the_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 1000)
    with pytest.raises(realnode.NodeError, match="real nodes need root"):
        NodeNetwork.allocate()
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 0)
    monkeypatch.setattr(host, "missing_packages", lambda: ["containerd", "runc"])
    with pytest.raises(realnode.NodeError, match=r"Debian packages containerd runc: `make cluster` installs"):
        NodeNetwork.allocate()


def test_the_layers_named_by_an_image_manifest_or_index(tmp_path: Path) -> None:
    spec = images.ImageSpec("localhost/test/tool:1", files={"tool": (b"x", 0o755)})
    files, digest = _archive(tmp_path, spec)
    index = json.loads(files["index.json"])  # an OCI index without a mediaType, as image layouts have it
    assert images.manifest_children(index) == ([digest], [])
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    (layer,) = manifest["layers"]
    assert images.manifest_children(manifest) == ([], [layer["digest"]])
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:c"},
        "layers": [{"digest": "sha256:a"}, {"digest": "sha256:b"}],
    }
    assert images.manifest_children(docker) == ([], ["sha256:a", "sha256:b"])
    docker_list = {
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"digest": "sha256:m1"}, {"digest": "sha256:m2"}],
    }
    assert images.manifest_children(docker_list) == (["sha256:m1", "sha256:m2"], [])
    with pytest.raises(ValueError, match="application/vnd.docker.container.image.v1"):
        images.manifest_children({"mediaType": "application/vnd.docker.container.image.v1+json"})


def test_the_images_ctr_import_unpacked_are_read_from_its_output() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    output = (
        f"unpacking localhost/mnv2/busybox:1.35 ({a})...done\n"
        f"unpacking localhost/mnv2-trainer:0.1.0 ({b})...done\n"
    )
    assert realnode.unpacked_images(output) == {
        "localhost/mnv2/busybox:1.35": a,
        "localhost/mnv2-trainer:0.1.0": b,
    }
    # An image ctr did not finish unpacking, and anything else it prints, are not taken.
    assert realnode.unpacked_images(f"unpacking localhost/x:1 ({a})...\nctr: failed\n") == {}


def test_mounts_under_a_folder_deepest_first() -> None:
    mountinfo = "\n".join(
        [
            "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
            "30 22 0:50 / /tmp/node/containerd rw - tmpfs tmpfs rw",
            "31 30 0:51 / /tmp/node/containerd/root/snap/1/fs rw - overlay overlay rw",
            "32 22 0:52 / /tmp/node/containerd-other rw - tmpfs tmpfs rw",
            "33 22 0:53 / /tmp/node/containerd/with\\040space rw - tmpfs tmpfs rw",
        ]
    )
    assert realnode.mounts_under(mountinfo, Path("/tmp/node/containerd")) == [
        "/tmp/node/containerd/root/snap/1/fs",
        "/tmp/node/containerd/with space",
        "/tmp/node/containerd",
    ]
    assert realnode.mounts_under(mountinfo, Path("/tmp/elsewhere")) == []
