"""The per-job reconcile scheduler and the controller's pure helpers (no API)."""

from __future__ import annotations

import asyncio

from mnv2_operator import controller, kube, scheduler
from mnv2_operator.constants import ANNOTATION_SPEC_HASH


async def test_scheduler_coalesces_and_never_overlaps_one_job() -> None:
    running: set[tuple[str, str]] = set()
    calls: list[tuple[str, str]] = []
    overlap = False
    release = asyncio.Event()
    a_ran_twice = asyncio.Event()

    async def fn(key: tuple[str, str]) -> None:
        nonlocal overlap
        overlap = overlap or key in running
        running.add(key)
        calls.append(key)
        await release.wait()
        running.discard(key)
        if calls.count(("ns", "a")) == 2:
            a_ran_twice.set()

    s = scheduler.Scheduler(fn)
    s.kick(("ns", "a"))
    s.kick(("ns", "a"))  # before the run started: the run will see the latest state anyway
    s.kick(("ns", "b"))
    await asyncio.sleep(0.01)
    assert sorted(calls) == [("ns", "a"), ("ns", "b")]  # both jobs at once
    for _ in range(9):
        s.kick(("ns", "a"))  # while running: must run once more afterwards
    release.set()
    await asyncio.wait_for(a_ran_twice.wait(), timeout=5)
    # A third run would start in the same task right after the second returned, before this one
    # resumes: the nine kicks during the first run collapse into exactly one more run.
    assert calls.count(("ns", "a")) == 2 and calls.count(("ns", "b")) == 1
    assert not overlap
    await s.close()


async def test_scheduler_requeue_and_retry_after_errors() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def fn(key: tuple[str, str]) -> float | None:
        calls.append(loop.time())
        if len(calls) == 1:
            raise RuntimeError("API hiccup")  # retried after 0.5 s
        if len(calls) == 2:
            return 0.1  # asks to be woken again
        return None

    s = scheduler.Scheduler(fn)
    delays: list[float | None] = []
    kick = s.kick

    def spy(key: tuple[str, str], delay: float | None = None) -> None:
        delays.append(delay)
        kick(key, delay)

    s.kick = spy  # type: ignore[method-assign]
    s.kick(("ns", "j"))
    for _ in range(1000):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(calls) == 3
    # The waits asked for: after the error, after the requested wake-up (each timer kicks with None).
    # The wall clock between runs bounds them only from below on a busy machine.
    assert delays == [None, 0.5, None, 0.1, None]
    assert calls[1] - calls[0] >= 0.45
    assert calls[2] - calls[1] >= 0.09
    await asyncio.sleep(0.2)
    assert len(calls) == 3  # None: no more runs
    await s.close()


async def test_scheduler_keeps_earliest_timer_and_forgets() -> None:
    calls: list[str] = []

    async def fn(key: tuple[str, str]) -> None:
        calls.append(key[1])

    s = scheduler.Scheduler(fn)
    s.kick(("ns", "x"), delay=0.05)
    s.kick(("ns", "x"), delay=5)  # later: ignored, the earlier one stays
    s.kick(("ns", "y"), delay=0.05)
    s.forget(("ns", "y"))  # the job was deleted
    await asyncio.sleep(0.2)
    assert calls == ["x"]
    await s.close()


def test_object_paths() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-worker-0"}}
    assert kube.object_path(pod, "ns") == "/api/v1/namespaces/ns/pods"
    assert kube.object_path(pod, "ns", named=True) == "/api/v1/namespaces/ns/pods/j-worker-0"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}}
    assert kube.object_path(role, "ns") == "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles"
    pg = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": {"name": "j"}}
    assert kube.object_path(pg, "ns").endswith("/scheduling.volcano.sh/v1beta1/namespaces/ns/podgroups")
    assert (
        kube.job_path("ns", "j", "status")
        == "/apis/training.mnv2.dev/v1alpha1/namespaces/ns/mobilenetv2trainingjobs/j/status"
    )


def test_owned_adds_one_controller_reference_in_the_jobs_namespace() -> None:
    job = {"metadata": {"name": "j", "uid": "u1", "namespace": "ns"}}
    obj = {"metadata": {"name": "x", "ownerReferences": [{"uid": "u1", "name": "j"}, {"uid": "other"}]}}
    owned = controller._owned(obj, job, "ns")
    assert owned["metadata"]["namespace"] == "ns"
    refs = owned["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["other", "u1"]
    assert refs[-1]["controller"] is True and refs[-1]["kind"] == "MobileNetV2TrainingJob"
    assert obj["metadata"]["ownerReferences"][0] == {"uid": "u1", "name": "j"}  # input untouched


def test_slim_pod_keeps_what_status_reads() -> None:
    pod = {
        "metadata": {
            "name": "j-worker-0",
            "uid": "u",
            "labels": {"a": "b"},
            "annotations": {"big": "x" * 1000, ANNOTATION_SPEC_HASH: "h"},
            "managedFields": [{"big": 1}],
        },
        "spec": {"containers": [{"name": "w"}], "nodeName": "node-a"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "w", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}],
        },
    }
    slim = controller.slim_pod(pod)
    assert slim["spec"] == {"nodeName": "node-a"} and "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {ANNOTATION_SPEC_HASH: "h"}
    from mnv2_operator import status as st

    assert st.pod_failure(slim) == "exit code 2 (Error)"
    assert st.pod_phase(slim) == "Failed"


def test_spec_hash_ignores_run_policy() -> None:
    a = {"nodes": 2, "runPolicy": {"suspend": False}}
    b = {"nodes": 2, "runPolicy": {"suspend": True, "backoffLimit": 9}}
    assert controller._spec_hash(a) == controller._spec_hash(b)
    assert controller._spec_hash(a) != controller._spec_hash({"nodes": 4, "runPolicy": {}})


def test_only_pods_owned_by_this_job_count() -> None:
    mine = {"metadata": {"name": "j-worker-0", "ownerReferences": [{"uid": "new", "controller": True}]}}
    predecessor = {
        "metadata": {"name": "j-worker-1", "ownerReferences": [{"uid": "old", "controller": True}]}
    }
    orphan = {"metadata": {"name": "j-worker-2"}}
    assert controller.owned_pods([mine, predecessor, orphan], "new") == [mine]
    slim = controller.slim_pod(
        {"metadata": {"name": "p", "ownerReferences": [{"uid": "new", "kind": "X", "controller": True}]}}
    )
    assert controller.owned_pods([slim], "new") == [slim]
