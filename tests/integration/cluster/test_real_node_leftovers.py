"""What a killed launcher leaves of a node network (its bridge, a node's network namespace, its
persisted mount namespace with a process in it, its cgroups) goes when the slot is taken again."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mnv2_cluster import realnode
from mnv2_cluster.realnode import CGROUP_ROOT, RUN_ROOT, NodeNetwork


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_a_slot_taken_again_loses_what_a_killed_run_left(kubeconfig_option: str | None) -> None:
    if kubeconfig_option:
        pytest.skip(
            "--kubeconfig names another cluster: node networks are made only for the local control plane"
        )
    network = NodeNetwork.allocate()
    slot = network.slot
    network.up()
    netns, cgroup = f"mnv2-{slot}-gone", f"mnv2-{slot}-gone"
    run_dir = RUN_ROOT / str(slot) / "gone"
    run_dir.mkdir(parents=True)
    _sh("ip", "netns", "add", netns)
    realnode._ensure_private_run_root()
    (run_dir / "mnt").touch()
    _sh("unshare", f"--mount={run_dir / 'mnt'}", "--propagation", "slave", "true")
    # A process left in the node's namespaces, as a container shim would be.
    sleeper = subprocess.Popen(
        ["nsenter", f"--mount={run_dir / 'mnt'}", f"--net=/run/netns/{netns}", "--", "sleep", "300"],
        start_new_session=True,
    )
    realnode._make_cgroup(cgroup)
    (CGROUP_ROOT / "cpu" / cgroup / "kubepods").mkdir()
    network.release()  # the launcher is gone: its lock with it, nothing cleaned

    again = NodeNetwork(slot)
    assert again._acquire()
    try:
        again._remove_leftovers()
        started = time.monotonic()
        while sleeper.poll() is None and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert sleeper.poll() is not None, "the process in the node's namespaces still runs"
        assert netns not in _sh("ip", "netns", "list")
        assert network.bridge not in _sh("ip", "-o", "link")
        assert str(run_dir) not in Path("/proc/self/mountinfo").read_text()
        assert not run_dir.exists()
        assert not list(CGROUP_ROOT.glob(f"*/{cgroup}"))
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()
        again.down()
