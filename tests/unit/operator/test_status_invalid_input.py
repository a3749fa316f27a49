"""A pod whose termination message marks an input error fails the job at once (pure: no API, no kopf)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mnv2_operator import constants as C
from mnv2_operator import controller
from mnv2_operator import status as st
from mnv2_operator.constants import Reason
from mnv2_trainer import termination

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
JOB = "j"
REASON = termination.PREFIX + "dataset folder '/data/train' does not exist: mount an ImageNet layout"
RUNNING = {"phase": "Running", "restarts": 0, "startTime": "2026-01-01T12:00:00Z"}


def pod(
    rank: int, phase: str = "Running", exit_code: int | None = None, message: str | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        term: dict[str, Any] = {"exitCode": exit_code, "reason": "Error"}
        if message is not None:
            term["message"] = message
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": term}}]
    labels = {C.LABEL_JOB: JOB, C.LABEL_ATTEMPT: "0", C.LABEL_INDEX: str(rank)}
    return {"metadata": {"name": f"{JOB}-worker-{rank}", "labels": labels}, "status": status}


def step(policy: st.Policy, pods: list[dict[str, Any]], prev: dict[str, Any] | None, seconds: float = 10):
    return st.reconcile(JOB, policy, pods, prev, generation=1, now=T0 + dt.timedelta(seconds=seconds))


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_marker_matches_the_trainer() -> None:
    assert termination.PREFIX.strip() == C.INVALID_INPUT_MARKER


def test_invalid_input_fails_at_once_without_a_restart() -> None:
    policy = st.Policy(workers=2, backoff_limit=3)
    failed = pod(0, "Failed", 1, REASON + "\n")
    d = step(policy, [failed, pod(1)], RUNNING)
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 0 and d.attempt == 0
    assert cond(d.status, "Failed")["reason"] == Reason.INVALID_INPUT == "InvalidInput"
    assert cond(d.status, "Restarting")["status"] == "False"
    message = d.status["message"]
    assert message.startswith(f"j-worker-0 failed: exit code 1 (Error): {REASON}; not retried")
    assert cond(d.status, "Failed")["message"] == message
    assert [(e.type, e.reason, e.message) for e in d.events] == [("Warning", "InvalidInput", message)]
    # as for other terminal failures: the running member is deleted, the failed pod kept
    assert d.delete_pods == ("j-worker-1",) and d.create_ranks == ()
    assert d.status["completionTime"] == "2026-01-01T12:00:10Z"
    # and it stays so, without another Event
    d2 = step(policy, [failed, pod(1, "Failed", 137)], d.status, 20)
    assert d2.status["phase"] == "Failed" and cond(d2.status, "Failed")["reason"] == "InvalidInput"
    assert d2.status["message"] == message and d2.events == () and d2.status["restarts"] == 0


def test_invalid_input_wins_over_a_retryable_failure_and_ignores_the_backoff_budget() -> None:
    policy = st.Policy(workers=2, backoff_limit=0, clean_pod_policy="All")
    d = step(policy, [pod(0, "Failed", 137), pod(1, "Failed", 1, REASON)], RUNNING)
    assert cond(d.status, "Failed")["reason"] == "InvalidInput"
    assert "j-worker-0" not in d.status["message"] and "j-worker-1 failed" in d.status["message"]
    assert set(d.delete_pods) == {"j-worker-0", "j-worker-1"}  # cleanPodPolicy All


def test_identical_failures_of_a_gang_are_named_once() -> None:
    policy = st.Policy(workers=3)
    d = step(policy, [pod(r, "Failed", 1, REASON) for r in range(3)], RUNNING)
    assert d.status["message"].count(REASON) == 1
    assert d.status["message"].startswith("j-worker-0, j-worker-1, j-worker-2 failed: ")


def test_other_failures_still_restart_and_quote_the_message() -> None:
    policy = st.Policy(workers=1, backoff_limit=2)
    log_tail = (
        "Traceback (most recent call last):\n  ...\n"
        "RuntimeError: Distributed job exited with exception. Please check logs in directory: /output/logs/0.\n\n"
    )
    d = step(policy, [pod(0, "Failed", 1, log_tail)], RUNNING)
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 1
    assert cond(d.status, "Restarting")["reason"] == "WorkerFailed"
    assert d.status["message"].startswith(
        "j-worker-0 failed: exit code 1 (Error): RuntimeError: Distributed job exited with exception. "
        "Please check logs in directory: /output/logs/0.; restarting"
    )
    # the marker counts on any line of the message (a log tail may hold it), not in other words
    assert st.pod_invalid_input(pod(0, "Failed", 1, "warning: x\n" + REASON))
    assert not st.pod_invalid_input(pod(0, "Failed", 1, "mnv2: invalid inputs are fine here"))
    # a pod without a message: as before
    assert st.pod_failure(pod(0, "Failed", 3)) == "exit code 3 (Error)"


def test_the_quoted_message_is_one_bounded_line() -> None:
    assert st.termination_summary("a\n\n  b   c \n") == "b c"
    assert st.termination_summary(None) == "" and st.termination_summary("\n \n") == ""
    long = st.termination_summary("x" * 5000)
    assert len(long) == st.MAX_POD_MESSAGE and long.endswith("...")
    marked = st.termination_summary("log noise\nrank 3: " + REASON + "\nmore noise")
    assert marked == REASON
    failure = st.pod_failure(pod(0, "Failed", 1, "y" * 4096))
    assert len(failure) < 40 + st.MAX_POD_MESSAGE and "\n" not in failure


def test_slim_pod_keeps_the_summary_only() -> None:
    body = pod(0, "Failed", 1, "noise\n" * 500 + REASON)
    slim = controller.slim_pod(body)
    assert slim["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == REASON
    assert st.pod_invalid_input(slim)
    assert (
        "message"
        not in controller.slim_pod(pod(0, "Failed", 1))["status"]["containerStatuses"][0]["state"][
            "terminated"
        ]
    )
