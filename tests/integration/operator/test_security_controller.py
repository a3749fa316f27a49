"""Security and robustness of the controller: what a job's author or its trainer can make it do.

- re-validation never kills a running job: a spec edited into an invalid one, a recipe that went
  away, or stricter checks after an operator upgrade leave the pods running; the problem is
  reported (condition SpecInvalid, Warning Event) and applies at the next start;
- an object the API server refuses ends the job as Failed with the API's message after a few tries;
- the trainer, which may patch its job's status, cannot make the operator delete pods or reset the
  backoff count by rewriting `phase` or `restarts`.

Written against the public API (Kubernetes client); cases that need a pod to end a certain way use
the local cluster's simulated nodes and are skipped on another cluster.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from mnv2_operator.constants import GROUP, PLURAL, VERSION
from support.operator import (
    Cluster,
    condition,
    events_of,
    job_spec,
    operator,
    phase_is,
    running_pods,
    wait_for,
)

pytestmark = pytest.mark.cluster


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def observed(c: Cluster, ns: str, name: str, generation: int) -> Any:
    return lambda: (s := c.status(ns, name)).get("observedGeneration") == generation and s


def generation(c: Cluster, ns: str, name: str) -> int:
    job = c.job(ns, name)
    assert job is not None
    return int(job["metadata"]["generation"])


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"output": {"emptyDir": {}, "pvc": None}}, id="invalid-spec"),
        pytest.param({"recipe": "mobilenet_v2_0.75_gone"}, id="recipe-gone"),
    ],
)
def test_a_running_job_edited_into_an_invalid_spec_keeps_running(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
    edit: dict[str, Any],
) -> None:
    ns, name = namespace, "steady"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=2))
        pods = wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        cluster.patch_spec(ns, name, edit)
        s = wait_for("the edit observed", observed(cluster, ns, name, generation(cluster, ns, name)))
        # Still running, the same pods; the problem said in a condition, the message and an Event.
        assert s["phase"] == "Running", s
        invalid = conditions(s)["SpecInvalid"]
        assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec")
        field = "spec.output" if "output" in edit else "spec.recipe"
        assert field in invalid["message"] and field in s["message"]
        assert "next has to create pods" in invalid["message"]
        assert condition(s, "Failed")["status"] == "False"
        wait_for("the SpecInvalid Event", lambda: "SpecInvalid" in events_of(cluster, ns, name))
        time.sleep(0.5)
        assert sorted(p.metadata.uid for p in cluster.pods(ns, name)) == sorted(p.metadata.uid for p in pods)
        assert not any(p.metadata.deletion_timestamp for p in cluster.pods(ns, name))
        # Fixed before the next start: the condition goes and the job runs on.
        undo = (
            {"output": {"emptyDir": None, "pvc": {"claimName": "runs"}}}
            if "output" in edit
            else {"recipe": None}
        )
        cluster.patch_spec(ns, name, undo)
        s = wait_for("the fix observed", observed(cluster, ns, name, generation(cluster, ns, name)))
        assert s["phase"] == "Running" and "SpecInvalid" not in conditions(s)
        assert "does not validate" not in s["message"]
        assert events_of(cluster, ns, name).count("SpecInvalid") == 1


def test_an_invalid_spec_applies_at_the_next_start(cluster: Cluster, namespace: str) -> None:  # noqa: F811
    ns, name = namespace, "next-start"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=2))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        cluster.patch_spec(ns, name, {"recipe": "mobilenet_v2_0.75_gone"})
        wait_for("SpecInvalid", lambda: "SpecInvalid" in conditions(cluster.status(ns, name)))
        # A worker fails: the gang restart would create pods from the invalid spec; it fails instead.
        cluster.finish(ns, f"{name}-worker-1", 1)
        s = wait_for("phase Failed", phase_is(cluster, ns, name, "Failed"))
        assert condition(s, "Failed")["reason"] == "InvalidSpec"
        assert "spec.recipe" in s["message"]
        wait_for(
            "no pod left running", lambda: all(p.status.phase != "Running" for p in cluster.pods(ns, name))
        )
        assert {p.metadata.labels["training.mnv2.dev/attempt"] for p in cluster.pods(ns, name)} <= {"0"}


def test_a_suspended_job_with_an_invalid_spec_stays_suspended_until_resumed(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    ns, name = namespace, "paused"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1, suspend=True))
        wait_for("Suspended", phase_is(cluster, ns, name, "Suspended"))
        cluster.patch_spec(ns, name, {"output": {"emptyDir": {}, "pvc": None}})
        s = wait_for("the edit observed", observed(cluster, ns, name, generation(cluster, ns, name)))
        assert s["phase"] == "Suspended" and conditions(s)["SpecInvalid"]["status"] == "True"
        cluster.patch_spec(ns, name, {"runPolicy": {"suspend": False}})
        s = wait_for("Failed on resume", phase_is(cluster, ns, name, "Failed"))
        assert condition(s, "Failed")["reason"] == "InvalidSpec" and "spec.output" in s["message"]
        assert cluster.pods(ns, name) == []


def test_stricter_checks_after_an_operator_upgrade_leave_running_jobs_alone(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mnv2_operator import controller
    from mnv2_operator.spec import SpecError

    ns, name = namespace, "veteran"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1))
        pods = wait_for("attempt 0 running", running_pods(cluster, ns, name, 1, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
    real = controller.parse_spec

    def stricter(mapping: Any) -> Any:
        if (mapping or {}).get("nodes") == 1:
            raise SpecError(["spec.nodes: this operator version wants 2 or more; set nodes: 2"])
        return real(mapping)

    monkeypatch.setattr(controller, "parse_spec", stricter)
    with operator(ns):
        s = wait_for(
            "the stricter check reported",
            lambda: "SpecInvalid" in conditions(x := cluster.status(ns, name)) and x,
        )
        assert s["phase"] == "Running" and "spec.nodes" in s["message"]
        time.sleep(0.5)
        assert [p.metadata.uid for p in cluster.pods(ns, name)] == [pods[0].metadata.uid]
        assert not cluster.pods(ns, name)[0].metadata.deletion_timestamp


def test_an_edit_of_nodes_leaves_the_running_gang_as_it_is(cluster: Cluster, namespace: str) -> None:  # noqa: F811
    """msrun's worker count is fixed when it starts: the new size applies at the next start."""
    ns, name = namespace, "resized"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1, backoffLimit=2))
        pods = wait_for("attempt 0 running", running_pods(cluster, ns, name, 1, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        cluster.patch_spec(ns, name, {"nodes": 2})
        s = wait_for("the edit observed", observed(cluster, ns, name, generation(cluster, ns, name)))
        wait_for("SpecChangeDeferred", lambda: "SpecChangeDeferred" in events_of(cluster, ns, name))
        time.sleep(0.5)
        assert s["phase"] == "Running" and s["workers"]["active"] == 1
        assert [p.metadata.uid for p in cluster.pods(ns, name)] == [pods[0].metadata.uid]
        # At the next start (a gang restart) the gang has the new size.
        cluster.finish(ns, f"{name}-worker-0", 1)
        wait_for("attempt 1 with two workers", running_pods(cluster, ns, name, 2, 1))


def test_an_object_the_api_server_refuses_fails_the_job_after_a_few_tries(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A value the API server refuses (422) that the spec's checks let through: Failed, not an
    endless CreateFailed retry. The pod is made invalid here by a wrapped renderer, as a spec check
    that lags the API server's would."""
    from mnv2_operator import controller

    real = controller.render_job

    def lagging(*args: Any, **kwargs: Any) -> Any:
        rendered = real(*args, **kwargs)
        for pod in rendered.pods:
            pod["metadata"]["labels"]["example.com/note"] = "not a label value!"
        return rendered

    monkeypatch.setattr(controller, "render_job", lagging)
    ns, name = namespace, "refused"
    with operator(ns) as runner:
        cluster.create_job(ns, name, job_spec(nodes=1))
        s = wait_for("phase Failed", phase_is(cluster, ns, name, "Failed"), timeout=30)
        failed = condition(s, "Failed")
        assert failed["reason"] == "InvalidSpec", failed
        assert "the API server refused Pod refused-worker-0" in s["message"]
        assert "not a label value!" in s["message"]  # the API server's own message
        reasons = wait_for(
            "the InvalidSpec Event", lambda: (r := events_of(cluster, ns, name)) and "InvalidSpec" in r and r
        )
        assert reasons.count("CreateFailed") == 2  # one per retried try (the message counts them)
        # Nothing more is tried for this generation.
        time.sleep(3)
        assert cluster.status(ns, name)["phase"] == "Failed"
        assert cluster.pods(ns, name) == []
    assert runner.output.count("the API server refused Pod refused-worker-0") >= controller.MAX_REFUSALS
    assert "Traceback" not in runner.output


def trainer_writes(c: Cluster, ns: str, name: str, status: dict[str, Any]) -> None:
    """What a trainer may do with its job's status (its Role allows patch on the status subresource)."""
    c.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": status}, _content_type="application/merge-patch+json"
    )


def test_a_trainer_rewriting_phase_or_restarts_changes_nothing(cluster: Cluster, namespace: str) -> None:  # noqa: F811
    ns, name = namespace, "tampered"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=1, ttlSecondsAfterFinished=0))
        pods = wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        uids = sorted(p.metadata.uid for p in pods)
        # A finished phase (with a TTL of 0 the job would be deleted) and a restart count far ahead.
        trainer_writes(
            cluster, ns, name, {"phase": "Failed", "restarts": 5, "completionTime": "2000-01-01T00:00:00Z"}
        )
        s = wait_for(
            "the operator's keys written back",
            lambda: (
                (x := cluster.status(ns, name)).get("phase") == "Running" and x.get("restarts") == 0 and x
            ),
        )
        assert not s.get("completionTime")
        time.sleep(0.5)
        assert cluster.job(ns, name) is not None
        assert sorted(p.metadata.uid for p in cluster.pods(ns, name)) == uids
        assert not any(p.metadata.deletion_timestamp for p in cluster.pods(ns, name))
        cluster.patch_spec(ns, name, {"runPolicy": {"ttlSecondsAfterFinished": None}})  # keep it to look at
        # A real failure restarts the gang (restart 1 of 1) ...
        cluster.finish(ns, f"{name}-worker-1", 1)
        wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        wait_for("restarts 1", lambda: cluster.status(ns, name).get("restarts") == 1)
        # ... and a trainer resetting the count does not buy another one.
        trainer_writes(cluster, ns, name, {"restarts": 0})
        wait_for("restarts written back", lambda: cluster.status(ns, name).get("restarts") == 1)
        cluster.finish(ns, f"{name}-worker-0", 1)
        s = wait_for("Failed: backoff limit", phase_is(cluster, ns, name, "Failed"))
        assert condition(s, "Failed")["reason"] == "BackoffLimitExceeded" and s["restarts"] == 1


def test_a_rewrite_while_the_operator_is_down_is_checked_against_the_pods(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    ns, name = namespace, "unattended"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=3))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        cluster.finish(ns, f"{name}-worker-0", 1)
        pods = wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
    # Nobody watching: the count goes backwards and the job claims to have failed.
    trainer_writes(
        cluster, ns, name, {"phase": "Failed", "restarts": 0, "completionTime": "2000-01-01T00:00:00Z"}
    )
    with operator(ns):
        s = wait_for(
            "decided again from the pods",
            lambda: (
                (x := cluster.status(ns, name)).get("phase") == "Running" and x.get("restarts") == 1 and x
            ),
        )
        assert not s.get("completionTime")
        time.sleep(0.5)
        assert sorted(p.metadata.uid for p in cluster.pods(ns, name)) == sorted(p.metadata.uid for p in pods)
        assert not any(p.metadata.deletion_timestamp for p in cluster.pods(ns, name))


def test_rendering_runs_off_the_event_loop_and_only_for_what_is_created(
    cluster: Cluster,  # noqa: F811
    namespace: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big gang takes seconds to render (1024 nodes with a large env: ~10 s of CPU on a loaded
    2-core machine); on the event loop that would hold up every other job and kopf's watches."""
    import asyncio

    from mnv2_operator import controller

    real = controller.render_job
    calls: list[tuple[bool, list[int] | None]] = []

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        ranks = kwargs.get("ranks")
        calls.append((on_loop, None if ranks is None else sorted(ranks)))
        return real(*args, **kwargs)

    monkeypatch.setattr(controller, "render_job", watched)
    ns, name = namespace, "threaded"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=1))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        # Rank 1 is lost: the gang restarts and both ranks are rendered again, for attempt 1.
        cluster.finish(ns, f"{name}-worker-1", 1)
        wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
    assert calls and not any(on_loop for on_loop, _ in calls), calls
    # The ranks to be created, not the whole gang every time: at a restart a rank is created once
    # its old pod is gone, maybe one at a time (and again after a 409 while it was still going).
    # Reconciles that create nothing (the pods' progress, status echoes) render nothing.
    first, *restart = [ranks for _, ranks in calls]
    assert first == [0, 1] and {r for ranks in restart for r in ranks or [9]} == {0, 1}, calls
    assert len(calls) <= 6, calls
