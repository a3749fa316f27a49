"""The parts of `status.reconcile`, one situation each, and the typed status they write (pure)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from mnv2_operator import constants as C
from mnv2_operator import spec as S
from mnv2_operator import status as st
from mnv2_operator.constants import ConditionType, Phase, Reason

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
JOB = "j"


def pod(
    rank: int,
    phase: str = "Running",
    attempt: int = 0,
    exit_code: int | None = None,
    message: str = "",
    deleting: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"{JOB}-worker-{rank}",
        "labels": {C.LABEL_JOB: JOB, C.LABEL_ATTEMPT: str(attempt), C.LABEL_INDEX: str(rank)},
    }
    if deleting:
        meta["deletionTimestamp"] = deleting
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        term = {"exitCode": exit_code, "reason": "Error", "message": message}
        status["containerStatuses"] = [{"name": "worker", "state": {"terminated": term}}]
    return {"metadata": meta, "status": status}


def seen(*pods: dict[str, Any], attempt: int = 0) -> st.Observed:
    return st.Observed.of(pods, attempt)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def names(pods: tuple[Any, ...]) -> list[str]:
    return [st.pod_name(p) for p in pods]


# -- What is observed --------------------------------------------------------------------------


def test_observed_splits_pods_by_attempt_and_keeps_live_ones_by_rank() -> None:
    old, gone, live = pod(0, attempt=0), pod(1, attempt=1, deleting="2026-01-01T12:00:00Z"), pod(2, attempt=1)
    o = seen(old, gone, live, attempt=1)
    assert names(o.stale) == ["j-worker-0"]
    assert names(o.current) == ["j-worker-1", "j-worker-2"]
    assert dict(o.live) == {2: live}


def test_observed_counts_live_pods_by_state() -> None:
    o = seen(pod(0, "Pending"), pod(1, "Unknown"), pod(2, "Succeeded"), pod(3, "Failed"), pod(4, "Running"))
    assert o.counts() == S.WorkerCounts(active=3, succeeded=1, failed=1)


def test_missing_ranks_skip_names_still_taken_by_a_terminating_pod() -> None:
    o = seen(pod(0), pod(1, attempt=0, deleting="2026-01-01T12:00:00Z"), attempt=0)
    assert o.missing(JOB, 3) == (2,)


def test_all_live_needs_every_rank_in_the_given_phases() -> None:
    assert seen(pod(0), pod(1, "Succeeded")).all_live(2, ("Running", "Succeeded"))
    assert not seen(pod(0), pod(1, "Pending")).all_live(2, ("Running", "Succeeded"))
    assert not seen(pod(0)).all_live(2, ("Running",))


# -- One function per situation ----------------------------------------------------------------


def test_finished_keeps_phase_reason_and_message_and_deletes_active_pods() -> None:
    prev = {
        "phase": "Failed",
        "message": "out of restarts",
        "startTime": "2026-01-01T11:00:00Z",
        "completionTime": "2026-01-01T11:30:00Z",
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    s = st.finished(st.Policy(workers=2), seen(pod(0, "Running"), pod(1, "Failed")), prev, T0)
    assert (s.phase, s.message, s.condition) == (
        Phase.FAILED,
        "out of restarts",
        ("Failed", "BackoffLimitExceeded", "out of restarts"),
    )
    assert (s.start_time, s.completion_time) == ("2026-01-01T11:00:00Z", "2026-01-01T11:30:00Z")
    assert names(s.delete) == ["j-worker-0"]  # cleanPodPolicy Running: the finished pod stays
    assert (s.delete_job, s.requeue_after, s.events) == (False, None, ())


def test_finished_without_its_condition_names_the_phase_and_sets_completion() -> None:
    s = st.finished(
        st.Policy(workers=1, clean_pod_policy="All"), seen(pod(0, "Succeeded")), {"phase": "Succeeded"}, T0
    )
    assert s.condition == ("Succeeded", "Succeeded", "")
    assert s.completion_time == "2026-01-01T12:00:00Z"
    assert names(s.delete) == ["j-worker-0"]


def test_finished_waits_for_its_ttl_then_deletes_the_job() -> None:
    prev = {"phase": "Succeeded", "completionTime": "2026-01-01T12:00:00Z"}
    policy = st.Policy(workers=1, ttl_seconds_after_finished=30)
    waiting = st.finished(policy, seen(), prev, at(10))
    assert (waiting.delete_job, waiting.requeue_after) == (False, 20.0)
    due = st.finished(policy, seen(), prev, at(30))
    assert due.delete_job and due.requeue_after is None
    assert [(e.type, e.reason, e.message) for e in due.events] == [
        ("Normal", "Deleted", "ttlSecondsAfterFinished (30s) passed")
    ]


def test_suspended_deletes_the_attempts_pods_and_stops_the_clock() -> None:
    s = st.suspended(seen(pod(0), pod(1, "Pending")))
    assert s.phase == Phase.SUSPENDED and s.start_time is None
    assert s.condition == (ConditionType.SUSPENDED, Reason.JOB_SUSPENDED, s.message)
    assert names(s.delete) == ["j-worker-0", "j-worker-1"]


def test_deadline_exceeded_fails_and_deletes_every_pod() -> None:
    s = st.deadline_exceeded(seen(pod(0), pod(1, "Succeeded")), 60, T0)
    assert s.phase == Phase.FAILED and s.completion_time == "2026-01-01T12:00:00Z"
    assert s.condition == ("Failed", "DeadlineExceeded", "activeDeadlineSeconds (60s) exceeded; pods deleted")
    assert names(s.delete) == ["j-worker-0", "j-worker-1"]


def test_worker_failure_restarts_the_gang_while_restarts_are_left() -> None:
    failed = pod(1, "Failed", exit_code=1)
    s = st.worker_failure(st.Policy(workers=2, backoff_limit=2), seen(pod(0), failed), [failed], [], T0)
    assert (s.phase, s.restarts) == (Phase.RESTARTING, 1)
    assert s.message == (
        "j-worker-1 failed: exit code 1 (Error); restarting the gang from the latest checkpoint (restart 1 of 2)"
    )
    assert s.condition == ("Restarting", "WorkerFailed", s.message)
    assert names(s.delete) == ["j-worker-0", "j-worker-1"] and s.completion_time is None


def test_worker_failure_out_of_restarts_fails_and_keeps_finished_pods() -> None:
    failed = pod(1, "Failed", exit_code=1)
    s = st.worker_failure(st.Policy(workers=2, backoff_limit=0), seen(pod(0), failed), [failed], [], T0)
    assert s.phase == Phase.FAILED and s.restarts is None
    assert s.condition is not None and s.condition[1] == Reason.BACKOFF_LIMIT_EXCEEDED
    assert s.message.endswith("; backoffLimit (0) reached")
    assert names(s.delete) == ["j-worker-0"]


def test_worker_failure_on_invalid_input_is_not_retried_and_names_no_lost_member() -> None:
    bad = pod(0, "Failed", exit_code=2, message=f"{C.INVALID_INPUT_MARKER} data_dir /data is empty")
    s = st.worker_failure(st.Policy(workers=2, backoff_limit=3), seen(bad), [bad], ["j-worker-1"], T0)
    assert s.phase == Phase.FAILED and s.condition is not None and s.condition[1] == Reason.INVALID_INPUT
    assert "was lost" not in s.message and s.message.endswith(
        "fix the input, then delete and re-create the job"
    )


def test_worker_failure_names_a_lost_member() -> None:
    s = st.worker_failure(st.Policy(workers=2), seen(pod(0)), [], ["j-worker-1"], T0)
    assert s.message.startswith("j-worker-1 was lost; restarting the gang")


def test_waiting_is_pending_and_creates_the_missing_ranks() -> None:
    s = st.waiting(JOB, st.Policy(workers=3), seen(pod(0), pod(1, "Pending")), {}, T0)
    assert (s.phase, s.condition, s.create) == (Phase.PENDING, None, (2,))
    assert s.message == "waiting for 2 of 3 worker(s) to start (attempt 0)"


def test_waiting_after_a_restart_keeps_saying_why() -> None:
    prev = {
        "phase": "Restarting",
        "conditions": [{"type": "Restarting", "status": "True", "message": "j-worker-0 failed: exit code 1"}],
    }
    s = st.waiting(JOB, st.Policy(workers=1), seen(attempt=1), prev, T0)
    assert s.phase == Phase.RESTARTING
    assert s.condition == ("Restarting", "WorkerFailed", "j-worker-0 failed: exit code 1")
    assert s.message == "waiting for 1 of 1 worker(s) to start (attempt 1); j-worker-0 failed: exit code 1"
    without = st.waiting(
        JOB, st.Policy(workers=1, backoff_limit=4), seen(attempt=1), {"phase": "Restarting"}, T0
    )
    assert without.condition == ("Restarting", "WorkerFailed", "restart 1 of 4")


def test_waiting_names_a_pod_stuck_terminating_once() -> None:
    old = pod(0, attempt=0, deleting="2026-01-01T11:58:00Z")
    s = st.waiting(JOB, st.Policy(workers=1), seen(old, attempt=1), {}, T0)
    assert "j-worker-0 still terminating" in s.message and s.create == ()
    assert [e.reason for e in s.events] == [Reason.POD_STUCK_TERMINATING]
    again = st.waiting(JOB, st.Policy(workers=1), seen(old, attempt=1), {"message": s.message}, T0)
    assert again.message == s.message and again.events == ()


def test_progress_succeeded_running_or_waiting() -> None:
    policy = st.Policy(workers=2, clean_pod_policy="All")
    done = st.progress(JOB, policy, seen(pod(0, "Succeeded"), pod(1, "Succeeded")), {}, T0)
    assert done.phase == Phase.SUCCEEDED and done.condition == (
        "Succeeded",
        "AllWorkersSucceeded",
        "all 2 worker(s) succeeded",
    )
    assert done.completion_time == "2026-01-01T12:00:00Z" and names(done.delete) == [
        "j-worker-0",
        "j-worker-1",
    ]
    running = st.progress(JOB, policy, seen(pod(0), pod(1, "Succeeded")), {}, T0)
    assert running.phase == Phase.RUNNING and running.message == "1 worker(s) running, 1 succeeded"
    assert running.delete == () and running.create == ()
    assert st.progress(JOB, policy, seen(pod(0)), {}, T0).phase == Phase.PENDING


def test_active_sets_the_start_time_and_looks_again_at_the_deadline() -> None:
    s = st.active(JOB, st.Policy(workers=1, active_deadline_seconds=100), seen(), {}, T0)
    assert s.start_time == "2026-01-01T12:00:00Z" and s.requeue_after == 100.0
    later = st.active(
        JOB,
        st.Policy(workers=1, active_deadline_seconds=100),
        seen(pod(0)),
        {"startTime": s.start_time},
        at(40),
    )
    assert later.phase == Phase.RUNNING and later.requeue_after == 60.0


def test_active_deadline_comes_before_failures_and_a_finished_job_waits_for_its_ttl() -> None:
    policy = st.Policy(workers=1, active_deadline_seconds=10, ttl_seconds_after_finished=5)
    failed = pod(0, "Failed", exit_code=1)
    s = st.active(JOB, policy, seen(failed), {"startTime": "2026-01-01T12:00:00Z"}, at(10))
    assert s.condition is not None and s.condition[1] == Reason.DEADLINE_EXCEEDED
    assert s.requeue_after == 5.0


def test_active_counts_a_missing_member_of_a_running_gang_as_lost() -> None:
    policy = st.Policy(workers=2, active_deadline_seconds=100)
    s = st.active(JOB, policy, seen(pod(0)), {"phase": "Running", "startTime": "2026-01-01T12:00:00Z"}, at(1))
    assert s.phase == Phase.RESTARTING and "j-worker-1 was lost" in s.message
    assert s.requeue_after is None  # a restarting gang is looked at again when its new pods report
    pending = st.active(
        JOB, policy, seen(pod(0)), {"phase": "Pending", "startTime": "2026-01-01T12:00:00Z"}, at(1)
    )
    assert pending.phase == Phase.PENDING and pending.create == (1,)


# -- What every situation shares ---------------------------------------------------------------


def test_transition_event_announces_a_new_phase_or_a_restart_only() -> None:
    running = st.Step(Phase.RUNNING, "2 running")
    assert st.transition_event(running, "Running", 0) is None
    assert st.transition_event(running, "Pending", 0) == st.Event("Normal", "Running", "2 running")
    restart = st.Step(Phase.RESTARTING, "again", restarts=2)
    assert st.transition_event(restart, "Restarting", 1) == st.Event("Warning", "Restarting", "again")
    bad_input = st.Step(Phase.FAILED, "bad", condition=(ConditionType.FAILED, Reason.INVALID_INPUT, "bad"))
    assert st.transition_event(bad_input, "Running", 0) == st.Event("Warning", "InvalidInput", "bad")


def test_recheck_after_waits_at_most_a_second_for_an_old_pod_to_go() -> None:
    terminating = seen(pod(0, deleting="2026-01-01T12:00:00Z"))
    assert st.recheck_after(st.Step(Phase.PENDING, "", requeue_after=30.0), terminating) == 1.0
    assert st.recheck_after(st.Step(Phase.PENDING, "", requeue_after=0.5), terminating) == 0.5
    assert st.recheck_after(st.Step(Phase.RUNNING, "", requeue_after=30.0), terminating) == 30.0
    assert st.recheck_after(st.Step(Phase.PENDING, ""), seen(pod(0))) is None


def test_deletions_are_stale_pods_first_without_terminating_ones() -> None:
    o = seen(
        pod(0, attempt=0), pod(1, attempt=1), pod(2, attempt=1, deleting="2026-01-01T12:00:00Z"), attempt=1
    )
    s = st.Step(Phase.SUSPENDED, "", delete=(*o.current, o.current[0]))
    assert st.deletions(o, s) == ("j-worker-0", "j-worker-1")


def test_decide_adds_created_condition_and_writes_completion_only_when_finished() -> None:
    policy = st.Policy(workers=2)
    step = st.Step(
        Phase.PENDING, "waiting", start_time="2026-01-01T12:00:00Z", completion_time="x", create=(1,)
    )
    d = st.decide(step, seen(pod(0, "Pending")), policy, {}, 3, T0)
    created = d.status["conditions"][0]
    assert created["type"] == "Created" and created["reason"] == "ChildrenCreated"
    assert created["message"] == "service, config, RBAC and 2 worker pod(s) managed"
    assert d.status["completionTime"] is None and d.create_ranks == (1,)
    running = st.decide(dataclasses.replace(step, phase=Phase.RUNNING), seen(pod(0)), policy, {}, 3, T0)
    assert running.create_ranks == ()


# -- The typed status --------------------------------------------------------------------------


def written(generation: int | None) -> st.OperatorStatus:
    return st.OperatorStatus(
        phase=Phase.RUNNING,
        conditions=st.build_conditions(
            [],
            Phase.RUNNING,
            {ConditionType.RUNNING: (Reason.ALL_WORKERS_RUNNING, "1 running")},
            generation,
            T0,
        ),
        workers=S.WorkerCounts(active=1),
        restarts=0,
        start_time="2026-01-01T12:00:00Z",
        completion_time=None,
        observed_generation=generation,
        message="1 running",
    )


def test_operator_status_dumps_every_key_in_order_with_unset_ones_null() -> None:
    # The operator's keys; the trainer writes the others (docs/interfaces.md).
    assert st.OPERATOR_KEYS == (
        "phase",
        "conditions",
        "workers",
        "restarts",
        "startTime",
        "completionTime",
        "observedGeneration",
        "message",
    )
    out = written(4).dump()
    assert list(out) == list(st.OPERATOR_KEYS)
    assert out["completionTime"] is None and out["phase"] == "Running" and type(out["phase"]) is str
    assert out["workers"] == {"active": 1, "succeeded": 0, "failed": 0}
    assert out["conditions"][1] == {
        "type": "Running",
        "status": "True",
        "reason": "AllWorkersRunning",
        "message": "1 running",
        "lastTransitionTime": "2026-01-01T12:00:00Z",
        "observedGeneration": 4,
    }
    assert [c["type"] for c in out["conditions"]] == [
        "Created",
        "Running",
        "Restarting",
        "Succeeded",
        "Failed",
        "Suspended",
    ]
    assert all(type(v) is str for c in out["conditions"] for v in (c["type"], c["reason"]))


def test_a_condition_leaves_out_observed_generation_when_the_job_has_none() -> None:
    out = written(None).dump()
    assert out["observedGeneration"] is None  # top level: null deletes the key in a merge patch
    assert all("observedGeneration" not in c for c in out["conditions"])


def test_the_written_status_is_valid_for_the_crd_and_reads_back_unchanged() -> None:
    out = written(2).dump()
    read = S.JobStatus.model_validate(out)
    assert read.phase == "Running" and read.conditions[1].reason == "AllWorkersRunning"
    assert st.OperatorStatus.model_validate(out).dump() == out
    assert json.dumps(st.OperatorStatus.model_validate(json.loads(json.dumps(out))).dump()) == json.dumps(out)


def test_operator_status_rejects_a_phase_or_key_it_does_not_know() -> None:
    out = written(2).dump()
    with pytest.raises(ValueError, match="phase"):
        st.OperatorStatus.model_validate({**out, "phase": "Exploded"})
    with pytest.raises(ValueError, match="progress"):
        st.OperatorStatus.model_validate({**out, "progress": {}})
