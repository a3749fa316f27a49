"""`mnv2 cluster`: run the local control plane and its nodes in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from mnv2_cluster.build import BuildError
from mnv2_cluster.launcher import Cluster, ClusterError


def run(args: argparse.Namespace) -> int:
    """Start the cluster in args.state_dir with args.nodes node agents (pods as local processes),
    args.ascend_nodes simulated Ascend nodes, args.real_nodes real nodes (kubelet on containerd) and
    args.real_ascend_nodes real Ascend nodes (with the device-plugin stand-in), with cluster DNS when
    there are real nodes; print how to reach it, stop everything on a signal."""
    from mnv2_cluster.node import NodeAgent, ascend_node_options
    from mnv2_cluster.realnode import NodeError, NodeNetwork, RealNode, start_cluster_dns

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    real_nodes = getattr(args, "real_nodes", 0)
    real_ascend_nodes = getattr(args, "real_ascend_nodes", 0)
    try:
        network = NodeNetwork.allocate() if real_nodes + real_ascend_nodes else None
    except NodeError as e:
        print(f"mnv2 cluster: {e}", file=sys.stderr)
        return 1
    cluster = Cluster(args.state_dir, start_timeout=args.timeout, network=network)
    print(
        f"mnv2 cluster: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler in {cluster.state_dir}",
        flush=True,
    )
    try:
        cluster.start()
    except (BuildError, ClusterError, NodeError) as e:
        print(f"mnv2 cluster: {e}", file=sys.stderr)
        return 1
    nodes: list[Any] = []
    try:
        for i in range(1, args.nodes + 1):
            nodes.append(NodeAgent.for_cluster(cluster, f"node-{i}").start())
        for i in range(1, args.ascend_nodes + 1):
            agent = NodeAgent.for_cluster(cluster, f"ascend-{i}", mode="simulated", **ascend_node_options())
            nodes.append(agent.start())
        for i in range(1, real_nodes + 1):
            nodes.append(RealNode(cluster, f"real-{i}", i).start())
        for i in range(1, real_ascend_nodes + 1):
            node = RealNode(cluster, f"real-ascend-{i}", real_nodes + i, ascend_devices=8)
            nodes.append(node.start())
        if network is not None:
            print(f"cluster DNS (CoreDNS) Ready in {start_cluster_dns(cluster):.1f} s", flush=True)
        print(f"API server {cluster.server}, ready in {cluster.timings['ready']:.1f} s:")
        print(cluster.describe())
        for node in nodes:
            print(f"  node {node.name:<14} {node.mode} pods, folder {node.state_dir}")
        print(f"logs in {cluster.logs_dir}, audit log {cluster.audit_log}")
        print("Ctrl-C stops it (etcd's data stays in the state folder).")
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        if network is not None:
            columns = (
                "NAME:.metadata.name,RUNTIME:.status.nodeInfo.containerRuntimeVersion,"
                "INTERNAL-IP:.status.addresses[0].address,"
                "ASCEND910:.status.allocatable.huawei\\.com/Ascend910"
            )
            print(cluster.kubectl("get", "nodes", "-o", f"custom-columns={columns}").stdout.rstrip())
            print(cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout.rstrip(), flush=True)
        while not stop.wait(1.0):
            dead = [
                n for n, c in cluster.components.items() if c.proc is not None and c.proc.poll() is not None
            ]
            dead += [
                f"{node.name}'s {n}" for node in nodes if isinstance(node, RealNode) for n in node.exited()
            ]
            if dead:
                logs = [cluster.dump_logs()] + [
                    f"---- {c.log} ----\n{c.tail()}"
                    for node in nodes
                    if isinstance(node, RealNode)
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
        for node in nodes:
            node.stop()
        cluster.stop()
        print(f"mnv2 cluster: stopped in {time.monotonic() - started:.1f} s", flush=True)
    return 0
