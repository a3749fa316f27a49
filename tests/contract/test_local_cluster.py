"""`mnv2 cluster`: the local cluster in the foreground (the control plane, a real CPU node and a real
Ascend stand-in node on containerd, CoreDNS), stopped in order by a signal, its etcd data kept for the
next start on the same state folder."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubernetes
import pytest
from mnv2_cluster.launcher import Cluster as LocalCluster
from mnv2_cluster.launcher import ClusterError

from contract.kit import Cluster

pytestmark = pytest.mark.cluster
# A bound on a wait, not a target: the control plane, two nodes and CoreDNS start in ~30 s on a quiet machine.
START_BOUND = 240.0


def start(state: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """Run `mnv2 cluster` and return once it printed its export line (the lines so far with it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnv2_operator.cli", "cluster", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout or []], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + START_BOUND
    while not (seen and seen[-1].startswith("export KUBECONFIG=")):
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())).rstrip("\n"))
        except queue.Empty:
            proc.kill()
            pytest.fail(
                f"`mnv2 cluster` printed no export line within {START_BOUND:.0f} s:\n" + "\n".join(seen)
            )
    return proc, seen


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> float:
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0
    return time.monotonic() - t0


def test_mnv2_cluster_command_stops_in_order_and_keeps_its_data(cluster: Cluster, tmp_path: Path) -> None:
    cluster.need_local("runs the local control plane's own command")
    state = tmp_path / "cli"
    proc, lines = start(state)
    try:
        kubeconfig = state.resolve() / "kubeconfig"
        assert lines[-1] == f"export KUBECONFIG={kubeconfig}"
        assert any(ln.strip().startswith("apiserver") and "RSS" in ln for ln in lines), lines
        core = kubernetes.client.CoreV1Api(
            kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        )
        assert {"default", "kube-system", "kube-public"} <= {
            n.metadata.name for n in core.list_namespace().items
        }
        core.create_namespaced_config_map("default", {"metadata": {"name": "kept"}, "data": {"k": "v"}})
        nodes = {n.metadata.name: n for n in core.list_node().items}
        assert set(nodes) == {"node-1", "ascend-1"}
        for node in nodes.values():
            assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions), node.status
            assert node.status.node_info.container_runtime_version.startswith("containerd://")
        assert nodes["ascend-1"].status.allocatable.get("huawei.com/Ascend910") == "8"
        assert "huawei.com/Ascend910" not in (nodes["node-1"].status.allocatable or {})
        dns = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
        assert [p.status.phase for p in dns] == ["Running"], dns
        # What it printed: `kubectl get nodes` with both nodes Ready on containerd, and the DNS pod.
        text = "\n".join(lines)
        assert "$ kubectl get nodes -o wide" in text
        for name in nodes:
            row = next(ln for ln in lines if ln.startswith(name + " ") and "containerd://" in ln)
            assert row.split()[1] == "Ready", row
        assert any(ln.startswith("coredns-") and "Running" in ln for ln in lines), text
    finally:
        took = stop(proc, signal.SIGINT)
    assert took < 30, f"stopping took {took:.1f} s"
    for name in ("etcd", "apiserver", "controller-manager", "scheduler"):
        assert (state / "logs" / f"{name}.log").stat().st_size > 0

    proc, lines = start(state)  # the same folder: same CA, same etcd data
    try:
        core = kubernetes.client.CoreV1Api(
            kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        )
        assert core.read_namespaced_config_map("kept", "default").data == {"k": "v"}
    finally:
        stop(proc, signal.SIGTERM)


def test_a_component_that_exits_fails_start_with_its_log_and_stops_the_rest(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A broken API server: start() raises naming it, with the end of its log, and etcd is stopped."""
    local = cluster.need_local("uses the local control plane's binaries")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    etcd = local._binaries()["etcd"]
    (bin_dir / "etcd").symlink_to(etcd)
    kube = bin_dir / "kube"
    kube.write_text('#!/bin/sh\necho "kube $1: cannot start, for the test" >&2\nexit 3\n')
    kube.chmod(0o755)
    broken = LocalCluster(tmp_path / "state", bin_dir=bin_dir, start_timeout=60)
    with pytest.raises(ClusterError) as exc:
        broken.start()
    message = str(exc.value)
    assert message.startswith("apiserver exited with code 3 while starting; the end of ")
    assert "kube apiserver: cannot start, for the test" in message
    assert not broken.running and not broken.components
    assert not _processes_mentioning(str(tmp_path / "state")), "etcd left running"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_start_picks_other_ports_once_when_one_was_taken_meanwhile(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = cluster.need_local("uses the local control plane's binaries")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    second = LocalCluster(tmp_path / "state", bin_dir=local._binaries()["kube"].parent)
    pick = second._pick_ports
    apiserver_ports: list[int] = []

    def pick_a_taken_port_first() -> None:
        pick()
        if not apiserver_ports:
            second.ports.apiserver = taken.getsockname()[1]
        apiserver_ports.append(second.ports.apiserver)

    monkeypatch.setattr(second, "_pick_ports", pick_a_taken_port_first)
    try:
        second.start()
        assert len(apiserver_ports) == 2 and apiserver_ports[1] != taken.getsockname()[1]
        assert "address already in use" in (tmp_path / "state" / "logs" / "apiserver.log").read_text()
    finally:
        second.stop()
        taken.close()
