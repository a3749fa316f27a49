"""The local Kubernetes of the tests and the demo: the upstream control plane, built from Go modules.

Not part of the operator's runtime (its image never imports this package); installed with the
`cluster` extra. Pieces:

- `build`: builds `kube` (apiserver | controller-manager | scheduler), `etcd`, `ascend-device-plugin`,
  `kubenode` (kubelet | proxy) and `pause` from the Go module in this folder's parent, cached by its pins
  (`python -m mnv2_cluster.build`, `make cluster`).
- `pki`: the CA, serving and client certificates, the service-account signing key.
- `launcher.Cluster`: etcd, kube-apiserver (RBAC, default admission with PodSecurity and
  NodeRestriction, audit log), kube-controller-manager and kube-scheduler on loopback (or on a node
  network's bridge address), stopped in order.
- `simulated.SimulatedNode`: a test double of a Node whose pods run nothing and end when a test says
  (the operator's integration tests; docs/simulated-nodes.md).
- `realnode.RealNode`, `realnode.NodeNetwork`: a real Node, the upstream kubelet and kube-proxy on
  containerd + runc with CNI networking in a network namespace of its own (docs/real-nodes.md);
  `host` installs the Debian packages it runs on, `images` writes its pause and busybox images.
- `ascend`: starts the Ascend device-plugin stand-in (`ascend-device-plugin`) for a node's kubelet
  (docs/ascend-device-plugin.md).
- `coredns`: builds CoreDNS from `cluster/coredns` (`python -m mnv2_cluster.coredns`); its Corefile and
  the kube-system objects of cluster DNS (docs/cluster-dns.md).

What a node (a kubelet joining this control plane) gets from a started `Cluster`:

- `cluster.kubeconfig_for_node(name)`: credentials of `system:node:<name>` in `system:nodes`, so the
  Node authorizer and NodeRestriction admission treat it as that node's kubelet;
- `cluster.node_serving_cert(name, hosts)`: a serving certificate for the node's kubelet port, signed by
  the CA the API server verifies kubelets with (`cluster.pki.ca.cert`); the API server connects to the
  Node's `InternalIP` (then `Hostname`) at `status.daemonEndpoints.kubeletEndpoint.Port`, presenting the
  client certificate `kube-apiserver-kubelet-client` (group `system:masters`) signed by the same CA.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BuildError", "Cluster", "ClusterError"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m mnv2_cluster.build` does not import its own module twice.
    if name == "BuildError":
        from mnv2_cluster.build import BuildError

        return BuildError
    if name in ("Cluster", "ClusterError"):
        from mnv2_cluster import launcher

        return getattr(launcher, name)
    raise AttributeError(name)
