"""The operator process's short memory: what it created (controller.Created, controller.plan_creates)
and the newest copy of a job it knows (controller.JobView)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mnv2_operator import constants as C
from mnv2_operator import controller as mem
from mnv2_operator import status as st

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
JOB, UID, HASH = "j", "uid-1", "h1"


def pod(rank: int, uid: str, phase: str = "Pending", attempt: int = 0) -> dict[str, Any]:
    labels = {C.LABEL_JOB: JOB, C.LABEL_ATTEMPT: str(attempt), C.LABEL_INDEX: str(rank)}
    return {
        "metadata": {"name": f"{JOB}-worker-{rank}", "uid": uid, "labels": labels},
        "status": {"phase": phase},
    }


def decide(pods: list[dict[str, Any]], prev: dict[str, Any] | None, workers: int = 2) -> st.Decision:
    return st.reconcile(JOB, st.Policy(workers=workers), pods, prev, generation=1, now=T0)


def made(pods: dict[str, str], attempt: int = 0) -> mem.Created:
    """The memory after a first pass that created the children and these pods at t=100 s."""
    return mem.Created(UID).made_children(HASH, attempt).made_pods(attempt, pods, 100.0)


def test_first_pass_creates_everything() -> None:
    d = decide([], None)
    plan = mem.plan_creates(JOB, d, mem.Created(UID), HASH, first_pass=True, now=100.0)
    assert plan == mem.CreatePlan(children=True, ranks=(0, 1), recheck_after=None)


def test_second_reconcile_before_the_index_shows_the_pods_creates_nothing() -> None:
    """The status patch's echo runs a reconcile before the index shows the new pods: without the
    memory of what was created, it would create all six children again (409s) and patch five."""
    d0 = decide([], None)
    created = made({"j-worker-0": "p0", "j-worker-1": "p1"})
    d1 = decide([], d0.status)  # the index is still empty
    assert d1.create_ranks == (0, 1)  # the pure decision alone would create both again
    plan = mem.plan_creates(JOB, d1, created, HASH, first_pass=False, now=100.5)
    assert plan.children is False and plan.ranks == ()
    assert plan.recheck_after == mem.CREATE_TRUST_SECONDS - 0.5
    # One pod shows up in the index: it is forgotten, the other is still trusted.
    created = created.seen_in([pod(0, "p0")])
    assert set(created.pods) == {"j-worker-1"}
    plan = mem.plan_creates(JOB, decide([pod(0, "p0")], d0.status), created, HASH, False, 101.0)
    assert plan == mem.CreatePlan(children=False, ranks=(), recheck_after=mem.CREATE_TRUST_SECONDS - 1.0)


def test_trust_expires_and_the_level_triggered_path_takes_over() -> None:
    created = made({"j-worker-0": "p0", "j-worker-1": "p1"})
    d = decide([], decide([], None).status)
    plan = mem.plan_creates(JOB, d, created, HASH, False, 100.0 + mem.CREATE_TRUST_SECONDS)
    assert plan.ranks == (0, 1) and plan.children is False and plan.recheck_after is None


def test_a_pod_deleted_before_the_index_saw_it_is_created_again() -> None:
    created = made({"j-worker-0": "p0"})
    created = created.seen("j-worker-0", "p0")  # its DELETED event (the index never showed it)
    assert created.pods == {}
    d = decide([], decide([], None).status, workers=1)
    assert mem.plan_creates(JOB, d, created, HASH, False, 100.1).ranks == (0,)
    # An event of another pod of that name (another uid) says nothing about ours.
    created = made({"j-worker-0": "p0"})
    assert created.seen("j-worker-0", "other").pods == created.pods


def test_gang_restart_creates_the_next_attempts_pods_and_makes_sure_of_the_children() -> None:
    policy = st.Policy(workers=1, backoff_limit=2)
    created = made({"j-worker-0": "p0"})
    running = st.reconcile(JOB, policy, [pod(0, "p0", "Running")], decide([], None, 1).status, 1, T0).status
    created = created.seen_in([pod(0, "p0", "Running")])
    restart = st.reconcile(JOB, policy, [pod(0, "p0", "Failed")], running, 1, T0)
    assert restart.attempt == 1 and restart.delete_pods == ("j-worker-0",)
    after = created.after(restart)
    assert after is not None
    # The old pod is gone: rank 0 of attempt 1 is created, and the children are made sure of once
    # (one deleted by hand, the ConfigMap say, would keep the new pod from starting).
    d = st.reconcile(JOB, policy, [], restart.status, 1, T0)
    assert d.create_ranks == (0,) and d.attempt == 1
    assert mem.plan_creates(JOB, d, after, HASH, False, 100.2) == mem.CreatePlan(True, (0,), None)
    again = after.made_children(HASH, 1).made_pods(1, {"j-worker-0": "p1"}, 100.3)
    assert mem.plan_creates(JOB, d, again, HASH, False, 100.4).children is False
    # A pod of attempt 0 remembered as unseen does not hold back attempt 1 (keyed by attempt).
    assert mem.plan_creates(JOB, d, made({"j-worker-0": "p0"}), HASH, False, 100.2).ranks == (0,)
    # After an operator restart nothing is remembered: the children are created (409: patched).
    assert mem.plan_creates(JOB, d, mem.Created(UID), HASH, False, 0.0) == mem.CreatePlan(True, (0,), None)


def test_a_changed_spec_makes_the_children_again_when_pods_are_next_created() -> None:
    created = made({})
    d = decide([], decide([], None).status)
    assert mem.plan_creates(JOB, d, created, "h2", False, 100.0).children is True
    running = decide([pod(0, "p0", "Running"), pod(1, "p1", "Running")], d.status)
    assert running.create_ranks == ()
    assert mem.plan_creates(JOB, running, created, "h2", False, 100.0).children is False  # deferred


def test_memory_is_per_job_uid_and_dropped_when_finished() -> None:
    created = made({"j-worker-0": "p0"})
    assert mem.Created.of(created, UID) is created
    assert mem.Created.of(created, "uid-of-a-new-job-of-that-name") == mem.Created(
        "uid-of-a-new-job-of-that-name"
    )
    assert mem.Created.of(None, UID) == mem.Created(UID)
    policy = st.Policy(workers=1)
    done = st.reconcile(JOB, policy, [pod(0, "p0", "Succeeded")], decide([], None, 1).status, 1, T0)
    assert done.status["phase"] == "Succeeded" and created.after(done) is None


def job(rv: str, phase: str | None = None, **spec: Any) -> dict[str, Any]:
    status = {"phase": phase} if phase else {}
    return {"metadata": {"name": JOB, "resourceVersion": rv}, "spec": spec, "status": status}


def test_job_view_follows_the_watch_and_skips_the_echo_of_its_own_write() -> None:
    view = mem.JobView()
    assert view.body is None  # nothing known: the reconcile GETs
    assert view.on_event(job("1")) is True
    assert view.body == job("1")
    view.on_answer(job("2", "Pending"), view.mark(), own_write=True)  # our status patch's answer
    assert view.body == job("2", "Pending")
    assert view.on_event(job("2", "Pending")) is False  # its echo: no reconcile needed
    assert view.on_event(job("3", "Pending", suspend=True)) is True  # someone else's edit
    assert view.body == job("3", "Pending", suspend=True)


def test_job_view_never_goes_back_behind_the_operators_own_writes() -> None:
    view = mem.JobView()
    view.on_event(job("5"))
    view.on_answer(job("7", "Pending"), view.mark(), own_write=True)
    view.on_answer(job("9", "Running"), view.mark(), own_write=True)  # two writes, no echo yet
    # Events written before our last patch (ours, or the trainer's) arrive after its answer: they
    # come before its own event in the stream, so they are older. The answer stays the copy to use.
    assert view.on_event(job("6")) is True and view.body == job("9", "Running")
    assert view.on_event(job("7", "Pending")) is False and view.body == job("9", "Running")
    assert view.on_event(job("8", "Pending")) is True and view.body == job("9", "Running")
    assert view.on_event(job("9", "Running")) is False and view.body == job("9", "Running")
    assert view.on_event(job("10", "Running", suspend=True)) is True
    assert view.body == job("10", "Running", suspend=True)


def test_job_view_a_relist_while_an_answer_is_pending_means_get() -> None:
    view = mem.JobView()
    view.on_event(job("1"))
    view.on_answer(job("3", "Pending"), view.mark(), own_write=True)
    # After "410 Gone" kopf lists again: this copy may be older or newer than the answer.
    assert view.on_event(job("4", "Pending", suspend=True), listing=True) is True
    assert view.body is None
    mark = view.mark()
    view.on_answer(job("4", "Pending", suspend=True), mark, own_write=False)  # the GET's answer
    assert view.body == job("4", "Pending", suspend=True) and view.pending == []  # seen already
    assert view.on_event(job("5", "Pending")) is True and view.body == job("5", "Pending")


def test_job_view_when_the_echo_comes_before_the_answer() -> None:
    view = mem.JobView()
    view.on_event(job("1"))
    mark = view.mark()  # the patch is sent
    assert view.on_event(job("2", "Pending")) is True  # its echo, not known as ours yet
    assert view.on_event(job("3", "Pending", suspend=True)) is True  # and someone's edit after it
    view.on_answer(job("2", "Pending"), mark, own_write=True)
    assert view.pending == [] and view.body == job("3", "Pending", suspend=True)  # the newest


def test_job_view_get_of_an_idle_job() -> None:
    view = mem.JobView()
    view.on_event(job("4", "Running"))
    view.body = None  # (as after an ambiguous re-list)
    view.on_answer(job("4", "Running"), view.mark(), own_write=False)  # unchanged since that event
    assert view.pending == [] and view.body == job("4", "Running")
    assert view.on_event(job("5", "Running", suspend=True)) is True
    assert view.body == job("5", "Running", suspend=True)


def test_job_view_too_many_events_during_a_request_means_get() -> None:
    view = mem.JobView()
    mark = view.mark()
    for i in range(mem.JobView.RECENT):
        view.on_event(job(str(i)))
    view.on_answer(job("x"), mark, own_write=True)
    assert view.body is None and view.pending == []


def test_job_view_keeps_no_copy_of_a_finished_job() -> None:
    view = mem.JobView()
    view.on_event(job("1", "Running"))
    view.on_answer(job("2", "Succeeded"), view.mark(), own_write=True)
    assert view.body == job("2", "Succeeded")  # until its echo
    assert view.on_event(job("2", "Succeeded")) is False
    assert view.body is None and view.latest_event is None  # the next reconcile (TTL) GETs
    view.on_answer(job("2", "Succeeded"), view.mark(), own_write=False)  # that GET: used once
    assert view.body is None and view.pending == []


def test_operator_status_drops_unset_keys() -> None:
    assert st.operator_status({"phase": "Running", "message": None, "progress": {"epoch": 1}}) == {
        "phase": "Running"
    }
    assert st.operator_status(None) == {}
