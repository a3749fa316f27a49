"""`mnv2 cluster`: run the local control plane in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from mnv2_cluster.build import BuildError
from mnv2_cluster.launcher import Cluster, ClusterError


def run(args: argparse.Namespace) -> int:
    """Start the cluster in args.state_dir, print how to reach it, stop it in order on a signal."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(args.state_dir, start_timeout=args.timeout)
    print(
        f"mnv2 cluster: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler in {cluster.state_dir}",
        flush=True,
    )
    try:
        cluster.start()
    except (BuildError, ClusterError) as e:
        print(f"mnv2 cluster: {e}", file=sys.stderr)
        return 1
    try:
        print(f"API server {cluster.server}, ready in {cluster.timings['ready']:.1f} s:")
        print(cluster.describe())
        print(f"logs in {cluster.logs_dir}, audit log {cluster.audit_log}")
        print("Ctrl-C stops it (etcd's data stays in the state folder).")
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        while not stop.wait(1.0):
            dead = [
                n for n, c in cluster.components.items() if c.proc is not None and c.proc.poll() is not None
            ]
            if dead:
                print(
                    f"mnv2 cluster: {', '.join(dead)} exited; stopping.\n{cluster.dump_logs()}",
                    file=sys.stderr,
                )
                return 1
    finally:
        started = time.monotonic()
        cluster.stop()
        print(f"mnv2 cluster: stopped in {time.monotonic() - started:.1f} s", flush=True)
    return 0
