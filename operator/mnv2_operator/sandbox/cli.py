"""`mnv2 sandbox`: run the embedded cluster in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading

from mnv2_operator.sandbox.sandbox import Sandbox


def run(args: argparse.Namespace) -> int:
    """Start a process-kubelet sandbox in args.state_dir on args.port and wait for SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sandbox = Sandbox(args.state_dir, kubelet="process", port=args.port).start()
    try:
        print(f"mnv2 sandbox: API server at {sandbox.url}")
        print(f"kubeconfig: {sandbox.kubeconfig_path}")
        print(f"export KUBECONFIG={sandbox.kubeconfig_path}", flush=True)
        print(
            "Ctrl-C stops it (pod processes are killed; volumes and logs stay in the state dir).", flush=True
        )
        stop.wait()
    finally:
        sandbox.stop()
    return 0
