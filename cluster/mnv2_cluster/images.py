"""Container images written by the project, as OCI image archives a node's containerd imports.

No registry is needed: an image here is one layer of static binaries, written reproducibly (fixed
times and owners, so the same inputs give the same digests) into an OCI image layout tar that
`ctr images import` reads. Two images:

- `PAUSE_IMAGE`: the pod sandbox image (containerd's `sandbox_image`), the `pause` binary built
  with the cluster (`cluster/cmd/pause`);
- `BUSYBOX_IMAGE`: a small image for tests and debugging, Debian's static busybox with its applets
  (`sh`, `sleep`, `nc`, `wget`, `httpd`, `nslookup`, ...) as links under `/bin`; nodes import it under
  Docker Hub's name for the same release too (`BUSYBOX_HUB_IMAGE`), so a pod naming `busybox:1.35` runs
  on the local nodes without a registry and on any cluster that pulls from Docker Hub;

and `mnv2_cluster.coredns.image_spec()` writes CoreDNS's the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

PAUSE_IMAGE = "localhost/mnv2/pause:3.10"
BUSYBOX_IMAGE = "localhost/mnv2/busybox:1.35"
BUSYBOX_HUB_IMAGE = "docker.io/library/busybox:1.35"  # what `busybox:1.35` in a pod spec means
BUSYBOX_APPLETS = (
    "sh", "ash", "cat", "echo", "env", "grep", "hostname", "httpd", "id", "ip", "kill", "ls", "mkdir",
    "nc", "nslookup", "ping", "ps", "rm", "sed", "sleep", "test", "true", "false", "wc", "wget",
    "ssl_client", "head", "tail", "printf", "date", "touch", "timeout", "setsid",
)  # fmt: skip

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
# Media types of image indexes (their `manifests` are per platform) and of manifests (their `layers`).
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")


@dataclass
class ImageSpec:
    """An image of one layer: files (path in the image -> bytes, mode), symlinks, directories."""

    name: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    directories: dict[str, int] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"])
    user: str = ""  # the image's USER ("uid:gid"); empty: root


def pause_image(pause_binary: Path) -> ImageSpec:
    """The sandbox image: `/pause`, run as its entrypoint."""
    return ImageSpec(PAUSE_IMAGE, files={"pause": (pause_binary.read_bytes(), 0o755)}, entrypoint=["/pause"])


def busybox_image(busybox: Path) -> ImageSpec:
    """Busybox with its common applets, a root and a nobody user, `/tmp`; runs `sh` by default."""
    return ImageSpec(
        BUSYBOX_IMAGE,
        files={
            "bin/busybox": (busybox.read_bytes(), 0o755),
            "etc/passwd": (
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
                0o644,
            ),
            "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        },
        symlinks={f"bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS},
        directories={"bin": 0o755, "etc": 0o755, "root": 0o700, "tmp": 0o1777},
        cmd=["sh"],
    )


def layer_tar(spec: ImageSpec) -> bytes:
    """The image's one layer: an uncompressed tar, entries sorted, times and owners zero."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries: list[tuple[str, tarfile.TarInfo, bytes | None]] = []
        for path, mode in spec.directories.items():
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, mode
            entries.append((path, info, None))
        for path, (data, mode) in spec.files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            entries.append((path, info, data))
        for path, target in spec.symlinks.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            entries.append((path, info, None))
        for _, info, content in sorted(entries, key=lambda e: e[0]):
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def write_oci_archive(spec: ImageSpec, path: Path) -> str:
    """Write `spec` as an OCI image layout tar at `path`; return the manifest's digest."""
    layer = layer_tar(spec)
    layer_digest = _digest(layer)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": spec.env,
                "Entrypoint": spec.entrypoint or None,
                "Cmd": spec.cmd or None,
                **({"User": spec.user} if spec.user else {}),
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": f"mnv2_cluster.images ({spec.name})"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    )
    manifest_digest = _digest(manifest)
    index = _json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        # containerd names the imported image after this annotation.
                        "io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    )
    blobs = {d: b for b in (layer, config, manifest) for d in [_digest(b)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)]
        members += [(f"blobs/sha256/{d.split(':', 1)[1]}", b) for d, b in sorted(blobs.items())]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return manifest_digest


def manifest_children(doc: dict) -> tuple[list[str], list[str]]:
    """What an image index or manifest (OCI or Docker, parsed JSON) names: `(manifests, layers)`, the
    digests of an index's manifests and of a manifest's layers.

    Raises:
        ValueError: `doc` is neither an index nor a manifest (its mediaType, or its missing keys).
    """
    media_type = doc.get("mediaType", "")
    if media_type in INDEX_TYPES or (not media_type and "manifests" in doc):
        return [m["digest"] for m in doc.get("manifests") or []], []
    if media_type in MANIFEST_TYPES or (not media_type and "layers" in doc):
        return [], [layer["digest"] for layer in doc.get("layers") or []]
    raise ValueError(f"not an image index or manifest: mediaType {media_type!r}, keys {sorted(doc)}")


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
