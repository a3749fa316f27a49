"""The simulated node's pure pieces: the pod conditions it writes, the options of an Ascend node."""

from __future__ import annotations

from mnv2_cluster.simulated import ascend_node_options, pod_conditions


def test_conditions_keep_the_schedulers_podscheduled_and_unchanged_transition_times() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    pod = {"status": {"conditions": [scheduled]}}
    pending = pod_conditions(pod, ready=False, t="T1", reason=None)
    assert pending[-1] == scheduled
    assert {c["type"]: c["reason"] for c in pending if c["status"] == "False"} == {
        "Ready": "ContainersNotReady", "ContainersReady": "ContainersNotReady"}  # fmt: skip
    running = pod_conditions({"status": {"conditions": pending}}, ready=True, t="T2", reason=None)
    times = {c["type"]: c["lastTransitionTime"] for c in running}
    assert times["Initialized"] == "T1" and times["Ready"] == "T2"
    assert all("reason" not in c for c in running[:-1])
    done = pod_conditions({"status": {"conditions": running}}, ready=False, t="T3", reason="PodCompleted")
    assert {c["type"]: c.get("reason") for c in done if c["status"] == "False"} == {
        "Ready": "PodCompleted", "ContainersReady": "PodCompleted"}  # fmt: skip
    assert pod_conditions({}, ready=False, t="T4", reason=None)[-1]["type"] == "PodScheduled"


def test_an_ascend_node_is_labelled_sized_and_tainted_as_mindcluster_does() -> None:
    options = ascend_node_options(devices=4)
    assert options["labels"]["accelerator"] == "huawei-Ascend910"
    assert options["extra_capacity"] == {"huawei.com/Ascend910": "4"}
    assert options["taints"] == [{"key": "huawei.com/Ascend910", "value": "present", "effect": "NoSchedule"}]
