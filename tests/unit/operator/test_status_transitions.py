"""Status computation for every phase transition (pure: no API, no kopf)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mnv2_operator import constants as C
from mnv2_operator import status as st
from mnv2_operator.constants import Reason

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
JOB = "j"


def pod(
    rank: int,
    phase: str = "Running",
    attempt: int = 0,
    exit_code: int | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"{JOB}-worker-{rank}",
        "labels": {C.LABEL_JOB: JOB, C.LABEL_ATTEMPT: str(attempt), C.LABEL_INDEX: str(rank)},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "worker", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
        ]
    return {"metadata": meta, "status": status}


def step(policy: st.Policy, pods: list[dict[str, Any]], prev: dict[str, Any] | None, seconds: float = 0):
    return st.reconcile(JOB, policy, pods, prev, generation=1, now=T0 + dt.timedelta(seconds=seconds))


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_new_job_creates_every_rank_and_is_pending() -> None:
    d = step(st.Policy(workers=2), [], None)
    assert d.status["phase"] == "Pending"
    assert d.create_ranks == (0, 1)
    assert d.attempt == 0
    assert d.status["restarts"] == 0
    assert d.status["startTime"] == "2026-01-01T12:00:00Z"
    assert cond(d.status, "Created")["status"] == "True"
    assert [e.reason for e in d.events] == ["Pending"]
    assert set(d.status) == set(st.OPERATOR_KEYS)


def test_pending_running_succeeded() -> None:
    policy = st.Policy(workers=2)
    d0 = step(policy, [], None)
    d1 = step(policy, [pod(0, "Pending"), pod(1, "Running")], d0.status, 1)
    assert d1.status["phase"] == "Pending"
    assert d1.create_ranks == ()  # both pods exist: nothing to create, no duplicates
    assert d1.events == ()  # no transition, no event
    d2 = step(policy, [pod(0), pod(1)], d1.status, 2)
    assert d2.status["phase"] == "Running"
    assert d2.status["workers"] == {"active": 2, "succeeded": 0, "failed": 0}
    assert cond(d2.status, "Running")["status"] == "True"
    assert cond(d2.status, "Running")["lastTransitionTime"] == "2026-01-01T12:00:02Z"
    d3 = step(policy, [pod(0, "Succeeded", exit_code=0), pod(1)], d2.status, 3)
    assert d3.status["phase"] == "Running"
    assert d3.status["workers"] == {"active": 1, "succeeded": 1, "failed": 0}
    d4 = step(policy, [pod(0, "Succeeded"), pod(1, "Succeeded")], d3.status, 4)
    assert d4.status["phase"] == "Succeeded"
    assert d4.status["completionTime"] == "2026-01-01T12:00:04Z"
    assert cond(d4.status, "Succeeded")["status"] == "True"
    assert cond(d4.status, "Running")["status"] == "False"
    assert d4.delete_pods == ()  # cleanPodPolicy Running: finished pods stay for their logs
    assert [e.reason for e in d4.events] == ["Succeeded"]
    # Stable afterwards: same status, no events, no actions.
    d5 = step(policy, [pod(0, "Succeeded"), pod(1, "Succeeded")], d4.status, 60)
    assert d5.status == d4.status
    assert not st.status_changed(d4.status, d5.status)
    assert (d5.events, d5.delete_pods, d5.create_ranks, d5.delete_job) == ((), (), (), False)


def test_condition_timestamp_kept_while_status_unchanged() -> None:
    policy = st.Policy(workers=1)
    d1 = step(policy, [pod(0)], step(policy, [], None).status, 5)
    d2 = step(policy, [pod(0)], d1.status, 500)
    assert cond(d2.status, "Running")["lastTransitionTime"] == "2026-01-01T12:00:05Z"
    assert cond(d2.status, "Created")["lastTransitionTime"] == "2026-01-01T12:00:00Z"


def test_failure_restarts_the_gang_then_runs_again() -> None:
    policy = st.Policy(workers=2, backoff_limit=2)
    running = step(policy, [pod(0), pod(1)], step(policy, [], None).status, 1).status
    d = step(policy, [pod(0, "Failed", exit_code=1), pod(1)], running, 2)
    assert d.status["phase"] == "Restarting"
    assert d.status["restarts"] == 1
    assert d.attempt == 1
    assert set(d.delete_pods) == {"j-worker-0", "j-worker-1"}
    assert d.create_ranks == ()  # the old pods must go first: same names
    assert "j-worker-0 failed: exit code 1 (Error)" in d.status["message"]
    assert cond(d.status, "Restarting")["status"] == "True"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Restarting")]
    # Old pods still terminating: wait, check again soon; the failure is not counted twice.
    d2 = step(policy, [pod(0, "Failed", exit_code=1, deleting=True), pod(1, deleting=True)], d.status, 3)
    assert d2.status["restarts"] == 1
    assert d2.status["phase"] == "Restarting"
    assert d2.create_ranks == () and d2.delete_pods == ()
    assert d2.requeue_after == 1.0
    # Old pods gone: create attempt 1.
    d3 = step(policy, [], d2.status, 4)
    assert d3.create_ranks == (0, 1) and d3.attempt == 1
    assert d3.status["phase"] == "Restarting"
    # A stale pod of attempt 0 that is not yet deleting is deleted, its rank waits.
    d3b = step(policy, [pod(0, "Failed", attempt=0)], d2.status, 4)
    assert d3b.delete_pods == ("j-worker-0",) and d3b.create_ranks == (1,)
    d4 = step(policy, [pod(0, attempt=1), pod(1, attempt=1)], d3.status, 5)
    assert d4.status["phase"] == "Running"
    assert d4.status["restarts"] == 1
    assert cond(d4.status, "Restarting")["status"] == "False"


def test_backoff_limit_exhausted_fails() -> None:
    policy = st.Policy(workers=2, backoff_limit=1)
    prev = {"phase": "Running", "restarts": 1, "startTime": "2026-01-01T12:00:00Z"}
    d = step(policy, [pod(0, "Failed", attempt=1, exit_code=137), pod(1, attempt=1)], prev, 10)
    assert d.status["phase"] == "Failed"
    assert d.status["restarts"] == 1
    assert cond(d.status, "Failed")["reason"] == Reason.BACKOFF_LIMIT_EXCEEDED
    assert "exit code 137" in d.status["message"]
    assert d.delete_pods == ("j-worker-1",)  # running members cannot finish alone; failed pod kept
    assert d.status["completionTime"] == "2026-01-01T12:00:10Z"
    # backoffLimit 0: the first failure is final.
    d0 = step(st.Policy(workers=1, backoff_limit=0), [pod(0, "Failed", exit_code=1)], {"phase": "Running"})
    assert d0.status["phase"] == "Failed"


def test_lost_pod_while_running_counts_as_failure() -> None:
    policy = st.Policy(workers=2)
    prev = {"phase": "Running", "restarts": 0, "startTime": "2026-01-01T12:00:00Z"}
    d = step(policy, [pod(1)], prev, 1)
    assert d.status["phase"] == "Restarting"
    assert "j-worker-0 was lost" in d.status["message"]
    # The same picture while pending is not a loss: the missing rank is (re-)created.
    d2 = step(policy, [pod(1)], {"phase": "Pending", "restarts": 0}, 1)
    assert d2.status["phase"] == "Pending" and d2.create_ranks == (0,)


def test_active_deadline_exceeded() -> None:
    policy = st.Policy(workers=1, active_deadline_seconds=30)
    d0 = step(policy, [], None)
    assert d0.requeue_after == 30
    d1 = step(policy, [pod(0)], d0.status, 10)
    assert d1.status["phase"] == "Running" and d1.requeue_after == 20
    d2 = step(policy, [pod(0)], d1.status, 30)
    assert d2.status["phase"] == "Failed"
    assert cond(d2.status, "Failed")["reason"] == Reason.DEADLINE_EXCEEDED
    assert d2.delete_pods == ("j-worker-0",)


def test_suspend_and_resume() -> None:
    policy = st.Policy(workers=2, active_deadline_seconds=100)
    running = step(policy, [pod(0), pod(1)], step(policy, [], None).status, 1).status
    suspended_policy = st.Policy(workers=2, active_deadline_seconds=100, suspend=True)
    d = step(suspended_policy, [pod(0), pod(1)], running, 50)
    assert d.status["phase"] == "Suspended"
    assert set(d.delete_pods) == {"j-worker-0", "j-worker-1"}
    assert d.create_ranks == ()
    assert d.status["restarts"] == 0  # suspending is not a failure
    assert cond(d.status, "Suspended")["status"] == "True"
    assert d.status["startTime"] is None  # deadline clock stopped
    d2 = step(suspended_policy, [], d.status, 500)
    assert d2.status["phase"] == "Suspended" and d2.events == () and d2.delete_pods == ()
    assert d2.status["workers"] == {"active": 0, "succeeded": 0, "failed": 0}
    assert cond(d2.status, "Suspended")["lastTransitionTime"] == "2026-01-01T12:00:50Z"
    # Resume: pods re-created for the same attempt, deadline counted from the resume.
    d3 = step(policy, [], d2.status, 1000)
    assert d3.status["phase"] == "Pending"
    assert d3.create_ranks == (0, 1) and d3.attempt == 0
    assert d3.status["startTime"] == "2026-01-01T12:16:40Z"
    assert d3.requeue_after == 100
    # Resumed while the suspended pods still terminate: not a loss, wait for them.
    d4 = step(policy, [pod(0, deleting=True)], d2.status, 1000)
    assert d4.status["phase"] == "Pending" and d4.create_ranks == (1,) and d4.requeue_after == 1.0


def test_created_suspended_creates_no_pods() -> None:
    d = step(st.Policy(workers=1, suspend=True), [], None)
    assert d.status["phase"] == "Suspended" and d.create_ranks == ()


def test_clean_pod_policy_and_ttl() -> None:
    done = {
        "phase": "Succeeded",
        "restarts": 0,
        "completionTime": "2026-01-01T12:00:00Z",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "AllWorkersSucceeded"}],
    }
    pods = [pod(0, "Succeeded"), pod(1, "Running")]
    assert step(st.Policy(workers=2, clean_pod_policy="Running"), pods, done).delete_pods == ("j-worker-1",)
    assert set(step(st.Policy(workers=2, clean_pod_policy="All"), pods, done).delete_pods) == {
        "j-worker-0",
        "j-worker-1",
    }
    assert step(st.Policy(workers=2, clean_pod_policy="None"), [pod(0, "Succeeded")], done).delete_pods == ()
    ttl = st.Policy(workers=2, ttl_seconds_after_finished=60)
    early = step(ttl, [], done, 20)
    assert not early.delete_job and early.requeue_after == 40
    late = step(ttl, [], done, 60)
    assert late.delete_job
    assert cond(late.status, "Succeeded")["reason"] == "AllWorkersSucceeded"


def test_finished_job_ignores_suspend_and_deadline() -> None:
    done = {"phase": "Succeeded", "restarts": 0, "completionTime": "2026-01-01T12:00:00Z"}
    d = step(st.Policy(workers=1, suspend=True, active_deadline_seconds=1), [pod(0, "Succeeded")], done, 99)
    assert d.status["phase"] == "Succeeded" and d.delete_pods == ()


def test_invalid_spec_then_fixed() -> None:
    d = st.invalid_spec(None, "spec.nodes: must be >= 1", 1, T0)
    assert d.status["phase"] == "Failed"
    assert cond(d.status, "Failed")["reason"] == Reason.INVALID_SPEC
    assert "spec.nodes" in d.status["message"]
    assert d.create_ranks == () and d.delete_pods == ()
    assert [e.type for e in d.events] == ["Warning"]
    assert st.invalid_spec(d.status, "spec.nodes: must be >= 1", 1, T0).events == ()  # said once
    # Edited into an invalid spec while running: the pods go too.
    running = st.invalid_spec({"phase": "Running"}, "x", 2, T0, [pod(0), pod(1, deleting=True)])
    assert running.delete_pods == ("j-worker-0",)
    fixed = st.reconcile(JOB, st.Policy(workers=1), [], d.status, 2, T0)
    assert fixed.status["phase"] == "Pending" and fixed.create_ranks == (0,)
    # The same generation stays Failed (the API server refused what it renders): nothing created.
    same = st.reconcile(JOB, st.Policy(workers=1), [], d.status, 1, T0)
    assert same.status["phase"] == "Failed" and same.create_ranks == ()


def test_trainer_keys_are_never_written() -> None:
    prev = {
        "phase": "Running",
        "progress": {"epoch": 3},
        "metrics": {"top1": 0.5},
        "checkpoints": {"latest": "x"},
    }
    d = step(st.Policy(workers=1), [pod(0)], prev)
    assert not {"progress", "metrics", "checkpoints"} & set(d.status)
    patch = st.status_patch(prev, d.status)
    assert not {"progress", "metrics", "checkpoints"} & set(patch)


def test_policy_from_spec_camel_case() -> None:
    p = st.Policy.from_spec(
        {
            "nodes": 4,
            "runPolicy": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 60,
                "ttlSecondsAfterFinished": 5,
                "cleanPodPolicy": "All",
                "suspend": True,
            },
        }
    )
    assert p == st.Policy(4, 0, 60, 5, "All", True)
    assert st.Policy.from_spec({}) == st.Policy(workers=1)
