"""A started job whose spec stops validating goes on with its pods (pure: status.lenient_policy,
status.spec_invalid_deferred)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from mnv2_operator import status as st
from mnv2_operator.constants import Phase
from test_status_transitions import JOB, T0, cond, pod

PROBLEM = "invalid MobileNetV2TrainingJob spec:\n  spec.recipe: unknown recipe 'gone'"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, st.Policy(workers=1)),
        (None, st.Policy(workers=1)),
        ("garbage", st.Policy(workers=1)),
        (
            {"nodes": 4, "runPolicy": {"backoffLimit": 1, "suspend": True}},
            st.Policy(workers=4, backoff_limit=1, suspend=True),
        ),
        ({"nodes": "abc", "runPolicy": "x"}, st.Policy(workers=1)),
        (
            {"nodes": 1e400, "runPolicy": {"backoffLimit": -3, "activeDeadlineSeconds": "0"}},
            st.Policy(workers=1),
        ),
        (
            {"nodes": True, "runPolicy": {"suspend": "yes", "cleanPodPolicy": "Everything"}},
            st.Policy(workers=1),
        ),
        (
            {
                "runPolicy": {
                    "ttlSecondsAfterFinished": "30",
                    "activeDeadlineSeconds": 60,
                    "cleanPodPolicy": "All",
                }
            },
            st.Policy(
                workers=1, ttl_seconds_after_finished=30, active_deadline_seconds=60, clean_pod_policy="All"
            ),
        ),
    ],
)
def test_the_lenient_policy_never_raises_and_falls_back_to_defaults(spec: Any, expected: st.Policy) -> None:
    assert st.lenient_policy(spec, [], 0) == expected


def test_the_lenient_policys_gang_is_the_one_that_runs() -> None:
    """An edit of nodes in an invalid spec neither grows nor shrinks the running gang."""
    pods = [pod(0), pod(1), pod(2, attempt=1)]
    assert st.lenient_policy({"nodes": 8}, pods, 0).workers == 2
    assert st.lenient_policy({"nodes": 8}, pods, 1).workers == 3
    assert st.lenient_policy({"nodes": 8}, pods, 2).workers == 8  # no pods of that attempt


def running_status() -> dict[str, Any]:
    return st.reconcile(JOB, st.Policy(workers=2), [pod(0), pod(1)], None, 1, T0).status


def test_a_running_job_with_an_invalid_spec_goes_on_and_says_why() -> None:
    prev = running_status()
    pods = [pod(0), pod(1)]
    decision = st.reconcile(JOB, st.lenient_policy({}, pods, 0), pods, prev, 2, T0)
    deferred = st.spec_invalid_deferred(decision, prev, PROBLEM, 2, T0)
    s = deferred.status
    assert s["phase"] == Phase.RUNNING and not deferred.delete_pods and not deferred.create_ranks
    invalid = cond(s, "SpecInvalid")
    assert (invalid["status"], invalid["reason"], invalid["observedGeneration"]) == ("True", "InvalidSpec", 2)
    assert "spec.recipe: unknown recipe 'gone'" in invalid["message"]
    assert "generation 2" in invalid["message"] and "next has to create pods" in invalid["message"]
    assert s["message"].startswith("2 worker(s) running") and "spec.recipe" in s["message"]
    assert [e.reason for e in deferred.events] == ["SpecInvalid"]
    assert cond(s, "Failed")["status"] == "False"
    # Said once: the next reconcile keeps the condition's transition time and posts nothing.
    later = T0 + dt.timedelta(seconds=30)
    again = st.spec_invalid_deferred(
        st.reconcile(JOB, st.Policy(workers=2), pods, s, 2, later), s, PROBLEM, 2, later
    )
    assert again.events == () and cond(again.status, "SpecInvalid") == invalid
    assert st.status_patch(s, again.status) == {}
    # Fixed: the valid spec's decision has no SpecInvalid condition, so the merge patch removes it.
    fixed = st.reconcile(JOB, st.Policy(workers=2), pods, s, 3, later).status
    assert "SpecInvalid" not in {c["type"] for c in fixed["conditions"]}
    assert "spec.recipe" not in fixed["message"]


def test_the_deferred_decision_never_creates() -> None:
    """A restart's create is the caller's cue to fail the job; the deferred decision drops it anyway."""
    prev = running_status()
    failed = [pod(0), pod(1, phase="Failed", exit_code=1)]
    decision = st.reconcile(JOB, st.Policy(workers=2), failed, prev, 2, T0)
    assert decision.status["phase"] == Phase.RESTARTING
    restarted = st.reconcile(JOB, st.Policy(workers=2), [], decision.status, 2, T0)
    assert restarted.create_ranks == (0, 1)
    assert st.spec_invalid_deferred(restarted, decision.status, PROBLEM, 2, T0).create_ranks == ()
