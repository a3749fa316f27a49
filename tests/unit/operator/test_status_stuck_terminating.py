"""A node fault: the old pod of a rank stays Terminating (its kubelet is gone), so the next attempt,
whose pod has the same name, cannot start. The status says so and what to do, without noise."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mnv2_operator import constants as C
from mnv2_operator import status as st
from mnv2_operator.constants import Phase

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
JOB = "j"
POLICY = st.Policy(workers=2, backoff_limit=3)


def pod(rank: int, phase: str, attempt: int, deleted_at: dt.datetime | None = None) -> dict[str, Any]:
    labels = {C.LABEL_JOB: JOB, C.LABEL_ATTEMPT: str(attempt), C.LABEL_INDEX: str(rank)}
    meta: dict[str, Any] = {"name": f"{JOB}-worker-{rank}", "uid": f"u{rank}-{attempt}", "labels": labels}
    if deleted_at is not None:
        meta["deletionTimestamp"] = st.format_time(deleted_at)  # request time + grace period
    return {"metadata": meta, "spec": {"nodeName": f"node-{rank}"}, "status": {"phase": phase}}


def restarting() -> dict[str, Any]:
    """Attempt 0 was running; rank 1's node died, its pod was evicted: the gang restarts (attempt 1)."""
    running = st.reconcile(JOB, POLICY, [pod(0, "Running", 0), pod(1, "Running", 0)], None, 1, T0).status
    running = st.reconcile(JOB, POLICY, [pod(0, "Running", 0), pod(1, "Running", 0)], running, 1, T0).status
    assert running["phase"] == Phase.RUNNING
    lost = [pod(0, "Running", 0), pod(1, "Running", 0, deleted_at=T0)]
    decision = st.reconcile(JOB, POLICY, lost, running, 1, T0)
    assert decision.status["phase"] == Phase.RESTARTING and decision.status["restarts"] == 1
    return decision.status


def test_a_pod_stuck_terminating_is_named_with_its_node_and_the_fix() -> None:
    prev = restarting()
    # Rank 0's old pod went; rank 0 of attempt 1 is created. Rank 1's old pod is still terminating.
    pods = [pod(0, "Pending", 1), pod(1, "Running", 0, deleted_at=T0)]
    early = st.reconcile(JOB, POLICY, pods, prev, 1, T0 + dt.timedelta(seconds=30))
    assert early.create_ranks == () and "still terminating" not in early.status["message"]
    assert early.requeue_after == 1.0  # looks again until the name is free

    later = T0 + dt.timedelta(seconds=st.STUCK_TERMINATING_SECONDS + 5)
    stuck = st.reconcile(JOB, POLICY, pods, early.status, 1, later)
    message = stuck.status["message"]
    assert stuck.status["phase"] == Phase.RESTARTING and stuck.create_ranks == ()
    assert "j-worker-1 on node node-1 still terminating 60s after its grace period" in message
    assert "`kubectl delete pod j-worker-1 --force --grace-period=0`" in message
    assert [(e.type, e.reason) for e in stuck.events] == [("Warning", "PodStuckTerminating")]

    # Waiting on: the status does not change (no patch, no further Event) while the pod stays.
    again = st.reconcile(JOB, POLICY, pods, stuck.status, 1, later + dt.timedelta(minutes=10))
    assert again.status["message"] == message and not again.events
    assert st.status_patch(stuck.status, again.status) == {}

    # Force-deleted by the user: rank 1 of attempt 1 is created, the note goes.
    freed = st.reconcile(
        JOB, POLICY, [pod(0, "Pending", 1)], again.status, 1, later + dt.timedelta(minutes=11)
    )
    assert freed.create_ranks == (1,) and "still terminating" not in freed.status["message"]
