"""Cluster DNS for the local cluster: CoreDNS built from its Go module, its Corefile, and the
kube-system objects that run it as on a kubeadm cluster.

- `build()`: compiles `cluster/coredns/` (CoreDNS with the plugins a cluster needs, see its main.go)
  into a static binary (CGO_ENABLED=0), cached like the control plane's binaries by a hash of that
  module's pins and sources (`python -m mnv2_cluster.coredns`; `make cluster` runs it).
- `corefile()`: the Corefile (pure).
- `manifests()`: ServiceAccount, ClusterRole and binding, ConfigMap, Deployment and the `kube-dns`
  Service at 10.96.0.10 (pure), for a cluster whose nodes run containers.
- `image_spec()`: the image holding the static binary, for the local nodes (`mnv2_cluster.images`);
  `IMAGE_CONTAINERFILE` / `image_context()`: the same image for an OCI builder (`FROM scratch`).

The module stands apart from the control plane's (cluster/go.mod): CoreDNS's dependencies (grpc, otel,
prometheus, quic-go, ...) would otherwise move the control plane's pins and rebuild Kubernetes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mnv2_cluster import build as control_plane_build
from mnv2_cluster import images
from mnv2_cluster.build import BuildError

COREDNS_VERSION = "v1.15.0"  # the require of cluster/coredns/go.mod (a unit test keeps them equal)
LDFLAGS = "-s -w"
CLUSTER_DOMAIN = "cluster.local"
DNS_SERVICE_IP = "10.96.0.10"
IMAGE = f"localhost/mnv2/coredns:{COREDNS_VERSION}"
# CoreDNS's user in its upstream image (nonroot); the pod lets it bind port 53 through the namespaced
# sysctl net.ipv4.ip_unprivileged_port_start, so it needs no capability.
RUN_AS_USER = 65532
IMAGE_CONTAINERFILE = f"""\
# CoreDNS {COREDNS_VERSION} for the local cluster: one static binary, nothing else.
FROM scratch
COPY coredns /coredns
USER {RUN_AS_USER}:{RUN_AS_USER}
EXPOSE 53 53/udp 9153
ENTRYPOINT ["/coredns"]
"""


def module_dir() -> Path:
    """The CoreDNS Go module: cluster/coredns beside the control plane's module."""
    return control_plane_build.module_dir() / "coredns"


def cache_key(module: Path | None = None) -> str:
    """A hash of what decides the binary: go.mod, go.sum, the sources and the build flags."""
    module = module or module_dir()
    if not (module / "go.mod").exists():
        raise BuildError(
            f"no CoreDNS Go module at {module} (go.mod missing): build from a clone of the repository, "
            "or set MNV2_COREDNS_BIN to a built `coredns`"
        )
    digest = hashlib.sha256(f"CGO_ENABLED=0 {LDFLAGS}".encode())
    for path in [module / "go.mod", module / "go.sum", *sorted(module.glob("*.go"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def binary_path() -> Path:
    """$MNV2_COREDNS_BIN, else `coredns` in the cache folder of the current pins."""
    if os.environ.get("MNV2_COREDNS_BIN"):
        return Path(os.environ["MNV2_COREDNS_BIN"])
    return control_plane_build.cache_root() / f"coredns-{cache_key()}" / "coredns"


def binary() -> Path:
    """The built binary; BuildError naming the build command when it is missing."""
    path = binary_path()
    if not os.access(path, os.X_OK):
        raise BuildError(
            f"coredns not found at {path}: build it with `make cluster` (or `python -m mnv2_cluster.coredns`),"
            " or point MNV2_COREDNS_BIN at a built coredns"
        )
    return path


def build(force: bool = False) -> Path:
    """Build the static binary into the cache unless it is there already; return its path."""
    target = binary_path()
    if not force and os.access(target, os.X_OK):
        return target
    module = module_dir()
    go = control_plane_build.find_go()
    env = {**os.environ, "CGO_ENABLED": "0"}
    print(
        f"building CoreDNS {COREDNS_VERSION} (static) from its Go module into {target.parent} "
        "(only when its pins change; the first time ~3 CPU-minutes, ~2-6 min on 2 cores)...",
        flush=True,
    )
    started = time.monotonic()
    staging = target.parent / f".coredns.tmp-{os.getpid()}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [go, "build", "-v", "-trimpath", "-ldflags", LDFLAGS, "-o", str(staging), "."]
    proc = subprocess.Popen(cmd, cwd=module, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    done = threading.Event()

    def report() -> None:
        while not done.wait(control_plane_build.PROGRESS_EVERY):
            minutes = (time.monotonic() - started) / 60
            print(f"  ... {len(lines)} packages compiled, {minutes:.0f} min", flush=True)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
    rc = proc.wait()
    done.set()
    reporter.join()
    if rc != 0:
        staging.unlink(missing_ok=True)
        raise BuildError(f"go build of CoreDNS failed (exit {rc}) in {module}:\n" + "\n".join(lines[-60:]))
    os.replace(staging, target)
    print(f"built coredns in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return target


def corefile(
    *,
    domain: str = CLUSTER_DOMAIN,
    port: int = 53,
    bind: str | None = None,
    health: str = ":8080",
    ready: str = ":8181",
    metrics: str | None = ":9153",
    kubeconfig: Path | None = None,
    log: bool = False,
) -> str:
    """The Corefile: kubeadm's, less what needs upstream DNS (`forward`, `loop`) or is not built
    (`reload`). In-cluster (no `kubeconfig`) CoreDNS reads the API with its ServiceAccount; `bind`,
    `kubeconfig` and `log` serve running it outside the cluster (tests). Names outside the cluster's
    zones get SERVFAIL: nothing is forwarded off the machine."""
    lines = [f".:{port} {{"]
    if bind:
        lines.append(f"    bind {bind}")
    lines += ["    errors"]
    if log:
        lines.append("    log")
    lines += [f"    health {health} {{", "        lameduck 5s", "    }", f"    ready {ready}"]
    lines += [f"    kubernetes {domain} in-addr.arpa ip6.arpa {{"]
    if kubeconfig is not None:
        lines.append(f"        kubeconfig {kubeconfig}")
    lines += ["        pods insecure", "        ttl 30", "    }"]
    if metrics:
        lines.append(f"    prometheus {metrics}")
    lines += [
        "    cache 30 {",
        f"        disable success {domain}",
        f"        disable denial {domain}",
        "    }",
        "    loadbalance",
        "}",
    ]
    return "\n".join(lines) + "\n"


def manifests(
    *, image: str = IMAGE, cluster_ip: str = DNS_SERVICE_IP, domain: str = CLUSTER_DOMAIN, replicas: int = 1
) -> list[dict[str, Any]]:
    """The kube-system objects of cluster DNS, as kubeadm's CoreDNS addon makes them (pure): RBAC
    to list and watch what the `kubernetes` plugin reads, the Corefile, the Deployment (non-root, no
    capabilities, read-only root filesystem) and the `kube-dns` Service the kubelets' `clusterDNS`
    points at."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"namespace": "kube-system"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", **meta},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", **meta},
            "data": {"Corefile": corefile(domain=domain)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", **meta, "labels": labels},
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": _pod_spec(image),
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                **meta,
                "labels": {
                    **labels,
                    "kubernetes.io/cluster-service": "true",
                    "kubernetes.io/name": "CoreDNS",
                },
                "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
            },
            "spec": {
                "selector": labels,
                "clusterIP": cluster_ip,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                ],
            },
        },
    ]


def _pod_spec(image: str) -> dict[str, Any]:
    return {
        "priorityClassName": "system-cluster-critical",
        "serviceAccountName": "coredns",
        # CoreDNS resolves nothing through cluster DNS itself.
        "dnsPolicy": "Default",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
            # Port 53 without NET_BIND_SERVICE: a namespaced sysctl of the pod's own network namespace.
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}],
        },
        "containers": [
            {
                "name": "coredns",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["-conf", "/etc/coredns/Corefile"],
                "resources": {
                    "limits": {"memory": "170Mi"},
                    "requests": {"cpu": "100m", "memory": "70Mi"},
                },
                "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
                "ports": [
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                    "initialDelaySeconds": 60,
                    "timeoutSeconds": 5,
                    "successThreshold": 1,
                    "failureThreshold": 5,
                },
                "readinessProbe": {
                    "httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"},
                },
            }
        ],
        "volumes": [
            {
                "name": "config-volume",
                "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]},
            }
        ],
    }


def image_spec(coredns: Path | None = None) -> images.ImageSpec:
    """The image as the local nodes import it (`images.write_oci_archive`, then `ctr images import`):
    one layer holding `/coredns`, its entrypoint. The pod's securityContext sets the user."""
    return images.ImageSpec(
        IMAGE, files={"coredns": ((coredns or binary()).read_bytes(), 0o755)}, entrypoint=["/coredns"]
    )


def image_context(dest: Path, coredns: Path | None = None) -> Path:
    """A build context for the CoreDNS image: `Containerfile` and the static `coredns`. Returns `dest`.

    Build it with any OCI builder, e.g. `buildah build --layers=false -t <IMAGE> <dest>`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(coredns or binary(), dest / "coredns")
    (dest / "Containerfile").write_text(IMAGE_CONTAINERFILE)
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mnv2_cluster.coredns", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--force", action="store_true", help="build even when the cached binary is there")
    parser.add_argument("--print-path", action="store_true", help="print the binary's path and exit")
    args = parser.parse_args(argv)
    if args.print_path:
        print(binary_path())
        return 0
    try:
        path = build(force=args.force)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"coredns: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
