"""`mnv2 cluster`: run the local cluster in the foreground until Ctrl-C or SIGTERM.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on a node network of
its own, real Nodes (the upstream kubelet and kube-proxy on containerd + runc, `mnv2_cluster.realnode`):
`--nodes` CPU nodes (node-1, ...) and `--ascend-nodes` Ascend nodes (ascend-1, ...; the device-plugin
stand-in advertises 8 `huawei.com/Ascend910` each, and they are labelled and tainted as MindCluster's
are), then cluster DNS (CoreDNS in kube-system). Needs root and what `make cluster` builds and installs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from mnv2_cluster.build import BuildError
from mnv2_cluster.launcher import Cluster, ClusterError

ASCEND_DEVICES = 8
# `kubectl get nodes` with what the default columns leave out: the runtime and the Ascend devices.
NODE_COLUMNS = (
    "NAME:.metadata.name,RUNTIME:.status.nodeInfo.containerRuntimeVersion,"
    "INTERNAL-IP:.status.addresses[0].address,ASCEND910:.status.allocatable.huawei\\.com/Ascend910,"
    "TAINTS:.spec.taints[*].key"
)


def node_names(nodes: int, ascend_nodes: int) -> list[tuple[str, int]]:
    """(name, Ascend devices) of each node to start, CPU nodes first.

    Raises:
        ValueError: no node at all, or a negative count.
    """
    if nodes < 0 or ascend_nodes < 0:
        raise ValueError("--nodes and --ascend-nodes count nodes: use 0 or more")
    if nodes + ascend_nodes == 0:
        raise ValueError("no nodes: --nodes and --ascend-nodes are both 0 (pods would never run)")
    return [(f"node-{i}", 0) for i in range(1, nodes + 1)] + [
        (f"ascend-{i}", ASCEND_DEVICES) for i in range(1, ascend_nodes + 1)
    ]


def run(args: argparse.Namespace) -> int:
    """Start the control plane in args.state_dir, args.nodes CPU and args.ascend_nodes Ascend real
    nodes and cluster DNS; print `kubectl get nodes` and how to reach it; stop everything on a signal."""
    from mnv2_cluster.realnode import NodeError, NodeNetwork, RealNode, start_cluster_dns

    try:
        wanted = node_names(args.nodes, args.ascend_nodes)
    except ValueError as e:
        print(f"mnv2 cluster: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        network = NodeNetwork.allocate()
    except NodeError as e:
        print(f"mnv2 cluster: {e}", file=sys.stderr)
        return 1
    cluster = Cluster(args.state_dir, start_timeout=args.timeout, network=network)
    print(
        "mnv2 cluster: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler in "
        f"{cluster.state_dir}",
        flush=True,
    )
    nodes: list[Any] = []
    try:
        try:
            cluster.start()
        except (BuildError, ClusterError) as e:
            print(f"mnv2 cluster: {e}", file=sys.stderr)
            return 1
        print(f"API server {cluster.server}, ready in {cluster.timings['ready']:.1f} s:")
        print(cluster.describe(), flush=True)
        for index, (name, devices) in enumerate(wanted, start=1):
            node = RealNode(cluster, name, index, ascend_devices=devices)
            nodes.append(node)
            node.start()
            what = f"{devices} huawei.com/Ascend910 (device-plugin stand-in)" if devices else "CPU"
            print(
                f"  node {name:<10} Ready in {node.timings['ready']:.1f} s: {node.ip}, {what}, "
                f"folder {node.state_dir}",
                flush=True,
            )
        print(f"cluster DNS (CoreDNS) Ready in {start_cluster_dns(cluster):.1f} s", flush=True)
        for command in (
            ("get", "nodes", "-o", "wide"),
            ("get", "nodes", "-o", f"custom-columns={NODE_COLUMNS}"),
            ("get", "pods", "-n", "kube-system", "-o", "wide"),
        ):
            print(f"$ kubectl {' '.join(command)}")
            print(cluster.kubectl(*command).stdout.rstrip(), flush=True)
        print(
            f"logs in {cluster.logs_dir} (nodes: {cluster.state_dir / 'nodes'}), audit log {cluster.audit_log}"
        )
        print("Ctrl-C stops it (etcd's data and the nodes' images stay in the state folder).")
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        while not stop.wait(1.0):
            dead = [
                n for n, c in cluster.components.items() if c.proc is not None and c.proc.poll() is not None
            ]
            dead += [f"{node.name}'s {n}" for node in nodes for n in node.exited()]
            if dead:
                logs = [cluster.dump_logs()] + [
                    f"---- {c.log} ----\n{c.tail()}"
                    for node in nodes
                    for c in node.components.values()
                    if c.name in node.exited()
                ]
                print(
                    f"mnv2 cluster: {', '.join(dead)} exited; stopping.\n" + "\n".join(logs), file=sys.stderr
                )
                return 1
    except NodeError as e:
        print(f"mnv2 cluster: {e}", file=sys.stderr)
        return 1
    finally:
        started = time.monotonic()
        for node in reversed(nodes):
            node.stop(keep_state=True)  # its images, for the next start on this state folder
        cluster.stop()
        print(f"mnv2 cluster: stopped in {time.monotonic() - started:.1f} s", flush=True)
    return 0
