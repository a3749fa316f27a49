"""Simulated nodes against the real control plane: registration as a kubelet registers, pods bound by
the real scheduler, and the outcomes a test gives them (finish, kill, default_outcome, deletion),
written through the real API as a kubelet writes them."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from mnv2_cluster.simulated import SIMULATED_CAPACITY
from support.cluster import wait_for
from support.pods import gone, phase

pytestmark = pytest.mark.cluster
ASCEND = {"accelerator": "huawei-Ascend910"}


def pod(name: str, node_selector: dict[str, str] | None = None, devices: int = 0) -> dict[str, Any]:
    """A pod for `node-sim` (or the nodes `node_selector` picks) with two containers; `devices` of
    `huawei.com/Ascend910` requested. Its command never runs."""
    resources = {"limits": {"huawei.com/Ascend910": str(devices)}} if devices else {}
    containers = [{"name": "main", "image": "busybox", "command": ["false"], "resources": resources},
                  {"name": "side", "image": "busybox", "command": ["false"]}]  # fmt: skip
    selector = node_selector or {"kubernetes.io/hostname": "node-sim"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "nodeSelector": selector, "containers": containers},
    }


@pytest.fixture
def ns(core: kubernetes.client.CoreV1Api, nodes: dict) -> Iterator[str]:
    name = f"sim-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def terminated(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> Any:
    return core.read_namespaced_pod(name, ns).status.container_statuses[0].state.terminated


def test_nodes_register_ready_with_capacity_labels_taints_and_lease(core, coordination) -> None:
    sim = core.read_node("node-sim")
    assert {c.type: c.status for c in sim.status.conditions}["Ready"] == "True"
    assert {a.type: a.address for a in sim.status.addresses}["InternalIP"] == "127.0.0.1"
    assert sim.status.node_info.container_runtime_version == "mnv2-simulated://0"
    assert sim.status.allocatable == SIMULATED_CAPACITY  # an Atlas 800 training server's, not this machine's
    ascend = core.read_node("node-ascend")
    assert ascend.metadata.labels["accelerator"] == "huawei-Ascend910"
    assert ascend.metadata.labels["accelerator-type"] == "module"
    assert ascend.status.capacity["huawei.com/Ascend910"] == "8"
    assert ascend.status.allocatable["huawei.com/Ascend910"] == "8"
    # Its own taint only (the node lifecycle controller's not-ready taint, if it came, is gone once Ready).
    taints = wait_for(
        "the Ascend node's taints to settle",
        lambda: (
            (t := [(x.key, x.effect) for x in core.read_node("node-ascend").spec.taints or []])
            and all(k.startswith("huawei.com/") for k, _ in t)
            and t
        ),
    )
    assert taints == [("huawei.com/Ascend910", "NoSchedule")]
    lease = coordination.read_namespaced_lease("node-sim", "kube-node-lease")
    assert lease.spec.holder_identity == "node-sim" and lease.spec.lease_duration_seconds == 40


def test_a_pod_runs_until_finish_ends_it_with_exit_code_and_message(core, ns: str, nodes) -> None:
    core.create_namespaced_pod(ns, pod("fail", node_selector={"kubernetes.io/os": "linux"}))
    wait_for("pod phase Running", lambda: phase(core, ns, "fail") == "Running", 60)
    current = core.read_namespaced_pod("fail", ns)
    # The scheduler's choice: the Ascend node is tainted for pods without NPUs.
    assert current.spec.node_name == "node-sim" and current.status.pod_ip == "127.0.0.1"
    assert [(c.name, c.ready, c.state.running is not None) for c in current.status.container_statuses] == [
        ("main", True, True), ("side", True, True)]  # fmt: skip
    assert {c.type: c.status for c in current.status.conditions} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
        "ContainersReady": "True", "PodScheduled": "True",
    }  # fmt: skip
    nodes["node-sim"].finish(ns, "fail", exit_code=3, message="bad input: lr " + "x" * 5000)
    wait_for("pod phase Failed", lambda: phase(core, ns, "fail") == "Failed", 30)
    term = terminated(core, ns, "fail")
    assert (term.exit_code, term.reason) == (3, "Error")
    assert term.message.startswith("bad input: lr x") and len(term.message) == 4096  # a kubelet's limit
    conditions = {c.type: c for c in core.read_namespaced_pod("fail", ns).status.conditions}
    assert conditions["Ready"].status == "False" and conditions["Ready"].reason == "PodCompleted"
    assert conditions["PodScheduled"].status == "True"
    with pytest.raises(LookupError, match=f"no pod {ns}/nosuch runs on node node-sim"):
        nodes["node-sim"].finish(ns, "nosuch", exit_code=0, wait=0.5)

    core.create_namespaced_pod(ns, pod("ok"))
    nodes["node-sim"].finish(ns, "ok", exit_code=0)  # right after the create: waits to see it bound
    wait_for("pod phase Succeeded", lambda: phase(core, ns, "ok") == "Succeeded", 30)
    term = terminated(core, ns, "ok")
    assert (term.exit_code, term.reason, term.message) == (0, "Completed", None)


def test_device_pods_are_counted_by_the_scheduler_and_end_by_default_outcome(core, ns: str, nodes) -> None:
    core.create_namespaced_pod(ns, pod("npu", node_selector=ASCEND, devices=8))
    wait_for("pod phase Running", lambda: phase(core, ns, "npu") == "Running", 60)
    npu = core.read_namespaced_pod("npu", ns)
    assert npu.spec.node_name == "node-ascend"
    # Added by the ExtendedResourceToleration admission plugin for the device request.
    assert any(t.key == "huawei.com/Ascend910" and t.operator == "Exists" for t in npu.spec.tolerations)
    # All 8 devices are taken: a second pod asking for one stays Pending (the real scheduler counts them).
    core.create_namespaced_pod(ns, pod("npu2", node_selector=ASCEND, devices=1))
    with pytest.raises(LookupError, match="no pod .*/npu2 runs on node node-ascend"):
        nodes["node-ascend"].finish(ns, "npu2", exit_code=0, wait=1.0)  # not bound: no room for it
    nodes["node-ascend"].finish(ns, "npu", exit_code=1, message="hccl timeout")
    wait_for("pod phase Failed", lambda: phase(core, ns, "npu") == "Failed", 30)
    assert (terminated(core, ns, "npu").exit_code, terminated(core, ns, "npu").message) == (1, "hccl timeout")
    wait_for(
        "the second pod to run once the devices are free", lambda: phase(core, ns, "npu2") == "Running", 60
    )
    nodes["node-ascend"].finish(ns, "npu2", exit_code=0)
    # Without a finish(): pods end by themselves after default_outcome's seconds, with its exit code.
    nodes["node-ascend"].default_outcome = (0.5, 2)
    try:
        core.create_namespaced_pod(ns, pod("auto", node_selector=ASCEND, devices=1))
        wait_for("pod phase Failed", lambda: phase(core, ns, "auto") == "Failed", 30)
    finally:
        nodes["node-ascend"].default_outcome = None
    assert terminated(core, ns, "auto").exit_code == 2


def test_kill_fails_a_pod_with_137(core, ns: str, nodes) -> None:
    core.create_namespaced_pod(ns, pod("victim"))
    wait_for("pod phase Running", lambda: phase(core, ns, "victim") == "Running", 60)
    nodes["node-sim"].kill(ns, "victim")
    wait_for("pod phase Failed", lambda: phase(core, ns, "victim") == "Failed", 30)
    assert (terminated(core, ns, "victim").exit_code, terminated(core, ns, "victim").reason) == (137, "Error")


def test_a_deleted_pod_is_gone_at_once_and_a_new_one_of_its_name_runs(core, ns: str, local_nodes) -> None:
    core.create_namespaced_pod(ns, pod("again"))
    wait_for("pod phase Running", lambda: phase(core, ns, "again") == "Running", 60)
    t0 = time.monotonic()
    core.delete_namespaced_pod("again", ns, grace_period_seconds=30)
    wait_for("the pod to be gone", lambda: gone(core, ns, "again"), 30)
    assert time.monotonic() - t0 < 10  # the final delete came at once, not after the 30 s grace period
    core.create_namespaced_pod(ns, pod("again"))
    local_nodes.finish(ns, "again", exit_code=0)  # this pod's run, not the deleted one's
    wait_for("pod phase Succeeded", lambda: phase(core, ns, "again") == "Succeeded", 30)


def test_nodes_are_not_tainted_after_the_monitor_grace_period(core, coordination, nodes) -> None:
    """Without lease renewals the node lifecycle controller taints a node unreachable after 50 s (seen:
    54 s after a node stopped); these nodes are older than that and still untainted."""
    node = nodes["node-sim"]
    age = time.monotonic() - (node.registered_at or 0)
    time.sleep(max(0.0, 60 - age))
    for name in nodes:
        lease = coordination.read_namespaced_lease(name, "kube-node-lease")
        renewed = dt.datetime.now(dt.UTC) - lease.spec.renew_time
        assert renewed.total_seconds() < node.lease_renew_seconds + 5, f"{name}: lease renewed {renewed} ago"
        current = core.read_node(name)
        taints = [t.key for t in current.spec.taints or []]
        assert "node.kubernetes.io/unreachable" not in taints and "node.kubernetes.io/not-ready" not in taints
        assert {c.type: c.status for c in current.status.conditions}["Ready"] == "True"
