"""The operator decides from its own keys as it wrote them, not as a trainer rewrote them
(pure: status.trusted_status)."""

from __future__ import annotations

from typing import Any

import pytest
from mnv2_operator import status as st
from test_status_transitions import JOB, T0, pod

WRITTEN = {"phase": "Running", "restarts": 1, "startTime": "2026-01-01T11:00:00Z", "message": "2 running"}
TRAINER = {"progress": {"epoch": 3}, "metrics": {"top1": 0.5}}


@pytest.mark.parametrize(
    "rewrite",
    [
        {"phase": "Failed", "completionTime": "1970-01-01T00:00:00Z"},
        {"phase": "Succeeded"},
        {"restarts": 0},
        {"restarts": 7},
        {"restarts": "many", "phase": None},
        {"conditions": [{"type": "Failed", "status": "True", "reason": "InvalidSpec"}], "phase": "Failed"},
    ],
)
def test_what_the_operator_wrote_wins_over_a_rewrite(rewrite: dict[str, Any]) -> None:
    api = {**WRITTEN, **TRAINER, **rewrite}
    trusted = st.trusted_status(api, st.operator_status(WRITTEN), [pod(0, attempt=1), pod(1, attempt=1)])
    assert st.operator_status(trusted) == WRITTEN
    assert trusted["progress"] == {"epoch": 3}  # the trainer's own keys pass through
    # Deciding from it keeps the gang: nothing deleted, the backoff count where it was.
    d = st.reconcile(
        JOB, st.Policy(workers=2, backoff_limit=2), [pod(0, attempt=1), pod(1, attempt=1)], trusted, 1, T0
    )
    assert d.status["phase"] == "Running" and d.status["restarts"] == 1 and d.delete_pods == ()
    # And the status patch writes back every rewritten operator key.
    patch = st.status_patch(api, d.status)
    for k in rewrite:
        if k in st.OPERATOR_KEYS and api.get(k) != d.status.get(k):
            assert k in patch


def test_after_an_operator_restart_restarts_follow_the_live_pods() -> None:
    pods = [pod(0, attempt=2), pod(1, attempt=2)]
    assert st.trusted_status({"phase": "Running", "restarts": 0}, None, pods)["restarts"] == 2  # backwards
    assert st.trusted_status({"phase": "Running", "restarts": 9}, None, pods)["restarts"] == 2  # ahead
    assert st.trusted_status({"phase": "Running", "restarts": "x"}, None, pods)["restarts"] == 2
    # A restart announced whose old pods are on their way out: the status is right.
    going = [pod(0, attempt=2, deleting=True)]
    assert st.trusted_status({"phase": "Restarting", "restarts": 3}, None, going)["restarts"] == 3
    assert st.trusted_status({"restarts": 3}, None, [])["restarts"] == 3
    assert st.trusted_status({}, None, [])["restarts"] == 0


def test_after_an_operator_restart_a_finished_phase_with_active_pods_is_decided_again() -> None:
    pods = [pod(0), pod(1)]
    forged = {"phase": "Failed", "restarts": 0, "completionTime": "1970-01-01T00:00:00Z", "startTime": "x"}
    trusted = st.trusted_status(forged, None, pods)
    assert trusted["phase"] is None and trusted["completionTime"] is None
    d = st.reconcile(JOB, st.Policy(workers=2, ttl_seconds_after_finished=0), pods, trusted, 1, T0)
    assert d.status["phase"] == "Running" and d.delete_pods == () and not d.delete_job
    # A real finish has no active pod of the attempt left: believed.
    done = [pod(0, phase="Succeeded"), pod(1, phase="Failed", exit_code=1)]
    assert st.trusted_status(forged, None, done)["phase"] == "Failed"


def test_a_restart_announced_before_an_operator_crash_is_decided_again_and_counted_once() -> None:
    """The status says Restarting (restarts 1) but the old gang was not deleted yet."""
    announced = {"phase": "Restarting", "restarts": 1, "startTime": "2026-01-01T11:00:00Z"}
    policy = st.Policy(workers=2, backoff_limit=3)
    # A failed member: the restart is decided again from it.
    failed = [pod(0), pod(1, phase="Failed", exit_code=1)]
    d = st.reconcile(JOB, policy, failed, st.trusted_status(announced, None, failed), 1, T0)
    assert (d.status["phase"], d.status["restarts"]) == ("Restarting", 1)
    assert sorted(d.delete_pods) == ["j-worker-0", "j-worker-1"]
    # A lost member (deleted under the running gang): likewise, not a new member for the old gang.
    lost = [pod(0)]
    d = st.reconcile(JOB, policy, lost, st.trusted_status(announced, None, lost), 1, T0)
    assert (d.status["phase"], d.status["restarts"]) == ("Restarting", 1)
    assert d.delete_pods == ("j-worker-0",) and d.create_ranks == ()
