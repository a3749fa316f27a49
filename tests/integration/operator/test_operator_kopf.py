"""The operator (kopf, in-process through KopfRunner) against the real control plane with simulated nodes.

The local control plane (etcd, kube-apiserver, controller manager, scheduler built from upstream) gets
two simulated nodes (docs/simulated-nodes.md): the scheduler binds each pod to one of them, the pod goes Running by
itself and ends when a test calls `cluster.finish(ns, pod, exit_code)`, which lets each test drive the
gang through every transition in seconds. The operator runs as its own user, with exactly the rules the
chart grants the operator (the real authorizer refuses whatever it would refuse the installed operator),
and the API server's audit log tells its requests from the test's. Tests that only need the API (invalid spec, garbage
collection) also run against another cluster with `--kubeconfig`; the others need the local nodes to
decide pod outcomes. The fixtures are in conftest.py, the harness they share with the security tests
in tests/support/operator.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from mnv2_operator import render
from mnv2_operator import status as st
from mnv2_operator.constants import GROUP, PLURAL, VERSION
from support import REPO_ROOT
from support.operator import (
    Cluster,
    Request,
    condition,
    events_of,
    job_spec,
    operator,
    phase_is,
    running_pods,
    wait_for,
)
from volcano import PODGROUP_CRD

pytestmark = pytest.mark.cluster


def pod_creates(cluster: Cluster, ns: str) -> int:
    return sum(
        1
        for r in cluster.audit_settled()
        if r.verb == "create" and r.resource == "pods" and r.namespace == ns and r.code < 300
    )


# ---------------------------------------------------------------------------------------------


def test_job_runs_to_success(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "ok"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2))
        wait_for("Pending with two pods", lambda: len(cluster.pods(ns, name)) == 2)
        s = wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        assert s["workers"] == {"active": 2, "succeeded": 0, "failed": 0}
        assert s["restarts"] == 0 and s["startTime"]
        assert condition(s, "Created")["status"] == "True"
        # Every child exists and is owned by the job (so deleting the job deletes it).
        job = cluster.job(ns, name)
        assert job is not None
        uid = job["metadata"]["uid"]
        children = [
            cluster.core.read_namespaced_service(name, ns),
            cluster.core.read_namespaced_config_map(f"{name}-config", ns),
            *cluster.pods(ns, name),
        ]
        for child in children:
            assert [r.uid for r in child.metadata.owner_references] == [uid], child.metadata.name
        # The trainer reports progress meanwhile: the operator must keep it.
        cluster.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            {"status": {"progress": {"epoch": 1, "totalEpochs": 1}, "metrics": {"top1": 0.5}}},
            _content_type="application/merge-patch+json",
        )
        cluster.finish(ns, f"{name}-worker-1", 0)
        cluster.finish(ns, f"{name}-worker-0", 0)
        s = wait_for("phase Succeeded", phase_is(cluster, ns, name, "Succeeded"))
        assert s["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
        assert s["completionTime"] and s["observedGeneration"] == job["metadata"]["generation"]
        assert condition(s, "Succeeded")["status"] == "True"
        assert condition(s, "Running")["status"] == "False"
        assert s["progress"] == {"epoch": 1, "totalEpochs": 1} and s["metrics"] == {"top1": 0.5}
        reasons = wait_for(
            "the Succeeded event", lambda: (r := events_of(cluster, ns, name)) and "Succeeded" in r and r
        )
        for reason in ("ChildrenCreated", "PodsCreated", "Pending", "Running", "Succeeded"):
            assert reason in reasons
        # cleanPodPolicy Running (default): finished pods are kept for their logs.
        assert len(cluster.pods(ns, name)) == 2
        assert pod_creates(cluster, ns) == 2
        # Editing the finished job into an invalid spec does not rewrite its outcome.
        cluster.patch_spec(ns, name, {"output": {"emptyDir": {}, "pvc": None}})
        gen = job["metadata"]["generation"] + 1
        s = wait_for(
            "the edit observed",
            lambda: (x := cluster.status(ns, name)).get("observedGeneration") == gen and x,
        )
        assert s["phase"] == "Succeeded" and condition(s, "Failed")["status"] == "False"


def test_worker_failure_restarts_gang(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "flaky"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=2))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        # Deleted by hand: the operator does not watch it, but the restart makes sure of it again
        # (the next attempt's pods mount it).
        cluster.core.delete_namespaced_config_map(f"{name}-config", ns)
        cluster.finish(ns, f"{name}-worker-1", 1)
        pods = wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        assert cluster.core.read_namespaced_config_map(f"{name}-config", ns).data["config.yaml"]
        s = wait_for("phase Running again", phase_is(cluster, ns, name, "Running"))
        assert s["restarts"] == 1
        container = pods[0].spec.containers[0]
        assert "--resume auto" in " ".join((container.command or []) + (container.args or []))
        wait_for("the Restarting Event", lambda: "Restarting" in events_of(cluster, ns, name))
        assert pod_creates(cluster, ns) == 4  # two per attempt, never more
        cluster.finish(ns, f"{name}-worker-0", 0)
        cluster.finish(ns, f"{name}-worker-1", 0)
        s = wait_for("phase Succeeded", phase_is(cluster, ns, name, "Succeeded"))
        assert s["restarts"] == 1


def test_backoff_limit_exhausted_fails(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "doomed"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=1))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        cluster.finish(ns, f"{name}-worker-0", 3)
        wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        cluster.finish(ns, f"{name}-worker-0", 3)
        s = wait_for("phase Failed", phase_is(cluster, ns, name, "Failed"))
        assert s["restarts"] == 1
        assert condition(s, "Failed")["reason"] == "BackoffLimitExceeded"
        assert "exit code 3" in s["message"]
        # The surviving member cannot finish alone: deleted. The failed one stays for its logs.
        wait_for(
            "only the failed pod left",
            lambda: [p.metadata.name for p in cluster.pods(ns, name)] == [f"{name}-worker-0"],
        )


def test_invalid_input_fails_at_once_other_failures_restart(cluster: Cluster, namespace: str) -> None:
    from mnv2_trainer import termination

    ns = namespace
    reason = termination.PREFIX + "dataset folder '/data/train' does not exist: mount an ImageNet layout"
    with operator(ns):
        cluster.create_job(ns, "bad-input", job_spec(nodes=2, backoffLimit=3))
        cluster.create_job(ns, "flaky", job_spec(nodes=1, backoffLimit=3))
        wait_for("bad-input running", running_pods(cluster, ns, "bad-input", 2, 0))
        wait_for("flaky running", running_pods(cluster, ns, "flaky", 1, 0))
        cluster.finish(ns, "bad-input-worker-0", 1, message=reason + "\n")
        log_tail = (
            "Traceback (most recent call last):\nRuntimeError: Distributed job exited with exception.\n"
        )
        cluster.finish(ns, "flaky-worker-0", 1, message=log_tail)

        s = wait_for("bad-input Failed", phase_is(cluster, ns, "bad-input", "Failed"))
        assert s["restarts"] == 0
        assert condition(s, "Failed")["reason"] == "InvalidInput"
        assert f"bad-input-worker-0 failed: exit code 1 (Error): {reason}; not retried" in s["message"]
        assert condition(s, "Failed")["message"] == s["message"]
        # Events are posted after the status patch (crash-safe order): wait for it.
        events = wait_for(
            "the InvalidInput Event",
            lambda: (
                (
                    ev := [
                        e
                        for e in cluster.core.list_namespaced_event(ns).items
                        if e.involved_object.name == "bad-input"
                    ]
                )
                and any(e.reason == "InvalidInput" for e in ev)
                and ev
            ),
        )
        assert [e.message for e in events if e.reason == "InvalidInput"] == [s["message"]]
        assert "Restarting" not in [e.reason for e in events]
        # As for other terminal failures: the running member goes, the failed pod stays for its logs.
        wait_for(
            "only the failed pod left",
            lambda: [p.metadata.name for p in cluster.pods(ns, "bad-input")] == ["bad-input-worker-0"],
        )
        pod = cluster.core.read_namespaced_pod("bad-input-worker-0", ns)
        assert pod.status.container_statuses[0].state.terminated.message == reason + "\n"

        s = wait_for(
            "flaky restarted",
            lambda: (cluster.status(ns, "flaky").get("restarts") or 0) >= 1 and cluster.status(ns, "flaky"),
        )
        assert s["restarts"] == 1 and s["phase"] in ("Restarting", "Pending", "Running")
        assert condition(s, "Restarting")["message"].startswith(
            "flaky-worker-0 failed: exit code 1 (Error): RuntimeError: Distributed job exited with exception.; restarting"
        )
        wait_for("flaky attempt 1 running", running_pods(cluster, ns, "flaky", 1, 1))
        assert cluster.status(ns, "bad-input")["restarts"] == 0  # and it stays Failed


def test_suspend_and_resume(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "pausable"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        cluster.patch_spec(ns, name, {"runPolicy": {"suspend": True}})
        s = wait_for("phase Suspended", phase_is(cluster, ns, name, "Suspended"))
        wait_for("no pods", lambda: not cluster.pods(ns, name))
        assert cluster.core.read_namespaced_service(name, ns)  # the job and its children stay
        assert cluster.core.read_namespaced_config_map(f"{name}-config", ns)
        assert s["restarts"] == 0
        cluster.patch_spec(ns, name, {"runPolicy": {"suspend": False}})
        wait_for("pods again", running_pods(cluster, ns, name, 2, 0))
        s = wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        assert s["restarts"] == 0
        assert condition(s, "Suspended")["status"] == "False"


def test_delete_cleans_every_child(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "gone"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2))
        wait_for("two pods", lambda: len(cluster.pods(ns, name)) == 2)
        wait_for("phase set", lambda: cluster.status(ns, name).get("phase"))
        # As `kubectl delete` does: background propagation, the garbage collector follows owner refs.
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        selector = f"{render.LABEL_JOB}={name}"

        def leftovers() -> list[str]:
            found = [
                p.metadata.name for p in cluster.core.list_namespaced_pod(ns, label_selector=selector).items
            ]
            found += [
                s.metadata.name
                for s in cluster.core.list_namespaced_service(ns, label_selector=selector).items
            ]
            found += [
                c.metadata.name
                for c in cluster.core.list_namespaced_config_map(ns, label_selector=selector).items
            ]
            found += [
                a.metadata.name
                for a in cluster.core.list_namespaced_service_account(ns, label_selector=selector).items
            ]
            found += [
                r.metadata.name for r in cluster.rbac.list_namespaced_role(ns, label_selector=selector).items
            ]
            found += [
                b.metadata.name
                for b in cluster.rbac.list_namespaced_role_binding(ns, label_selector=selector).items
            ]
            if cluster.job(ns, name) is not None:
                found.append("the job itself")
            return found

        wait_for("every child gone", lambda: not leftovers(), timeout=30)
        # The operator does not resurrect anything for a deleted job.
        time.sleep(0.5)
        assert not leftovers()


def test_invalid_spec_fails_creates_nothing_and_operator_continues(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    with operator(ns):
        # Valid for the CRD's schema, refused by parse_spec's cross-field check.
        bad = job_spec(nodes=1)
        bad["output"] = {"emptyDir": {}}
        cluster.create_job(ns, "bad", bad)
        s = wait_for("phase Failed", phase_is(cluster, ns, "bad", "Failed"))
        assert "spec.output.emptyDir" in s["message"]
        assert condition(s, "Failed")["reason"] == "InvalidSpec"
        wait_for("InvalidSpec event", lambda: "InvalidSpec" in events_of(cluster, ns, "bad"))
        # Nothing was created for it, and nothing is retried.
        time.sleep(0.5)
        assert cluster.pods(ns, "bad") == []
        assert (
            cluster.core.list_namespaced_config_map(ns, label_selector=f"{render.LABEL_JOB}=bad").items == []
        )
        # A name too long for the pods' hostnames is refused at render time, the same way.
        long_name = "x" * 60
        cluster.create_job(ns, long_name, job_spec(nodes=1))
        s = wait_for("the long name Failed", phase_is(cluster, ns, long_name, "Failed"))
        assert condition(s, "Failed")["reason"] == "InvalidSpec", s
        assert cluster.pods(ns, long_name) == []
        # The operator keeps working for the next job (pods created: on a real cluster they may not
        # start, for want of the image or the `runs` claim; that is not this test's business).
        cluster.create_job(ns, "good", job_spec(nodes=1))
        wait_for("the valid job's pod", lambda: len(cluster.pods(ns, "good")) == 1)
        # Fixing the spec starts the job.
        cluster.patch_spec(ns, "bad", {"output": {"emptyDir": None, "pvc": {"claimName": "runs"}}})
        wait_for("the fixed job's pod", lambda: len(cluster.pods(ns, "bad")) == 1)
        assert cluster.status(ns, "bad")["phase"] in ("Pending", "Running")


def test_operator_restart_mid_job_duplicates_nothing(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "survivor"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=2))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
    assert pod_creates(cluster, ns) == 2
    # While the operator is down, a worker fails.
    cluster.finish(ns, f"{name}-worker-1", 1)
    time.sleep(0.3)
    assert cluster.status(ns, name)["phase"] == "Running"  # nobody is watching
    with operator(ns):
        wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        s = wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        assert s["restarts"] == 1
        assert pod_creates(cluster, ns) == 4

    # Restart again with nothing to do: no request changes anything.
    def writes() -> list[Request]:
        return [
            r
            for r in cluster.audit_settled()
            if r.verb in ("create", "delete", "patch") and r.namespace == ns
        ]

    before = writes()
    with operator(ns):
        time.sleep(1.5)
        assert len(cluster.pods(ns, name)) == 2
    assert writes()[len(before) :] == []
    with operator(ns):
        cluster.finish(ns, f"{name}-worker-0", 0)
        cluster.finish(ns, f"{name}-worker-1", 0)
        s = wait_for("phase Succeeded", phase_is(cluster, ns, name, "Succeeded"))
        assert s["restarts"] == 1


def test_pod_deleted_under_the_operators_feet(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "evicted"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=3))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        cluster.core.delete_namespaced_pod(f"{name}-worker-0", ns)
        wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        s = wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        assert s["restarts"] == 1


def test_pod_stuck_terminating_on_a_lost_node_is_reported(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node fault: the evicted pod never goes (its kubelet is gone; a finalizer stands in for that
    here), so the next attempt's pod of that name cannot be created. The job says which pod, on
    which node, and how to free it; once it is gone the gang restarts."""
    monkeypatch.setattr(st, "STUCK_TERMINATING_SECONDS", 1.0)
    ns, name = namespace, "nodelost"
    pod_name = f"{name}-worker-1"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=2, backoffLimit=3))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        cluster.core.patch_namespaced_pod(
            pod_name, ns, {"metadata": {"finalizers": ["test.mnv2.dev/node-lost"]}}
        )
        cluster.core.delete_namespaced_pod(pod_name, ns, grace_period_seconds=0)
        s = wait_for(
            "the stuck pod reported",
            lambda: (s := cluster.status(ns, name)) and "still terminating" in (s.get("message") or "") and s,
        )
        assert s["phase"] == "Restarting" and s["restarts"] == 1
        assert f"`kubectl delete pod {pod_name} --force --grace-period=0`" in s["message"]
        wait_for(
            "the PodStuckTerminating Event", lambda: "PodStuckTerminating" in events_of(cluster, ns, name)
        )
        cluster.core.patch_namespaced_pod(pod_name, ns, {"metadata": {"finalizers": None}})
        wait_for("attempt 1 running", running_pods(cluster, ns, name, 2, 1))
        s = wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        assert "still terminating" not in s["message"]


def test_active_deadline_and_ttl(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    # Generous waits: the 2 s deadline and 1 s TTL are the operator's timers, and a busy machine delays
    # them without anything being wrong.
    with operator(ns):
        cluster.create_job(ns, "slow", job_spec(nodes=1, activeDeadlineSeconds=2))
        cluster.create_job(ns, "brief", job_spec(nodes=1, ttlSecondsAfterFinished=1))
        wait_for("brief running", phase_is(cluster, ns, "brief", "Running"))
        cluster.finish(ns, "brief-worker-0", 0)
        s = wait_for("deadline exceeded", phase_is(cluster, ns, "slow", "Failed"), timeout=60)
        assert condition(s, "Failed")["reason"] == "DeadlineExceeded"
        wait_for("its pods deleted", lambda: not cluster.pods(ns, "slow"))
        wait_for("the brief job deleted after its TTL", lambda: cluster.job(ns, "brief") is None, timeout=60)


def test_status_changes_are_merge_patches(cluster: Cluster, namespace: str) -> None:
    """The operator writes only status (never the job's spec or metadata) and never the trainer's keys."""
    ns, name = namespace, "audited"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
    writes = {
        (r.verb, r.resource, r.subresource)
        for r in cluster.audit
        if r.namespace == ns and r.resource == PLURAL and r.verb in ("create", "update", "patch", "delete")
    }
    # The test created the job; the operator only patched its status.
    assert writes == {("patch", PLURAL, "status")}


def _documented_requests() -> set[tuple[str, str, str]]:
    """(verb, group, resource[/subresource]) rows of the table in docs/operator.md."""
    doc = (REPO_ROOT / "docs" / "operator.md").read_text()
    table = doc.split("## API requests the operator makes", 1)[1]
    allowed = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("API group", "---") or not line.startswith("|"):
            continue
        group = "" if cells[0].startswith('""') else cells[0]
        for resource in cells[1].split(","):
            for verb in cells[2].split(","):
                allowed.add((verb.strip(), group, resource.strip()))
    return allowed


def test_operator_requests_are_documented(cluster: Cluster, namespace: str) -> None:
    """Every request the operator makes (its audit records) is in docs/operator.md's table (the RBAC source)."""
    ns = namespace

    def phase(name: str, want: str) -> Callable[[], bool]:
        return lambda: cluster.status(ns, name).get("phase") == want

    start = len(cluster.audit)
    with operator(ns):
        cluster.create_job(ns, "a", job_spec(nodes=2, backoffLimit=1, ttlSecondsAfterFinished=0))
        cluster.create_job(ns, "s", job_spec(nodes=1))
        wait_for("a running", phase("a", "Running"))
        cluster.finish(ns, "a-worker-0", 1)  # gang restart: pods deleted and created
        wait_for("a restarted", phase("a", "Restarting"))
        wait_for("a running again", phase("a", "Running"))
        cluster.finish(ns, "a-worker-0", 0)
        cluster.finish(ns, "a-worker-1", 0)
        wait_for("a deleted after its TTL", lambda: cluster.job(ns, "a") is None)
        wait_for("s running", phase("s", "Running"))
        cluster.patch_spec(ns, "s", {"runPolicy": {"suspend": True}})
        wait_for("s suspended", phase("s", "Suspended"))
    operator_requests = {
        (r.verb, r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""))
        for r in cluster.audit_settled()[start:]
    }
    undocumented = operator_requests - _documented_requests()
    assert not undocumented, f"requests missing from docs/operator.md: {sorted(undocumented)}"
    # And the table is not just permissive: the core of it was exercised. (A GET of the job is only
    # a fallback, when the watch's copy may be older than the operator's last status write.)
    for expected in [
        ("delete", GROUP, PLURAL),
        ("patch", GROUP, f"{PLURAL}/status"),
        ("create", "", "pods"),
        ("delete", "", "pods"),
        ("list", "", "pods"),
        ("create", "", "configmaps"),
        ("create", "rbac.authorization.k8s.io", "roles"),
        ("create", "", "events"),
    ]:
        assert expected in operator_requests, expected


def test_api_errors_are_retried(cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 500 on the first pod create and on the first status patch: retried, nothing duplicated."""
    from mnv2_operator import kube

    real = kube.Api._request_sync
    failed: list[str] = []

    def flaky(
        self: Any, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        for what in ("POST pods", "PATCH status"):
            verb, suffix = what.split()
            if method == verb and path.endswith(suffix) and what not in failed:
                failed.append(what)
                raise kube.ApiError(500, "Internal Server Error", "injected by the test")
        return real(self, method, path, body, content_type)

    monkeypatch.setattr(kube.Api, "_request_sync", flaky)
    ns, name = namespace, "unlucky"
    with operator(ns) as runner:
        cluster.create_job(ns, name, job_spec(nodes=2))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 2, 0))
        wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
    assert sorted(failed) == ["PATCH status", "POST pods"]
    assert "retrying" in runner.output
    assert len(cluster.pods(ns, name)) == 2


def test_spec_change_while_running_is_deferred_with_a_warning(cluster: Cluster, namespace: str) -> None:
    ns, name = namespace, "edited"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1))
        pods = wait_for("the pod", lambda: cluster.pods(ns, name))
        uid = pods[0].metadata.uid
        wait_for("a phase", lambda: cluster.status(ns, name).get("phase"))
        cluster.patch_spec(ns, name, {"config": {"epoch_size": 3}})
        wait_for("SpecChangeDeferred event", lambda: "SpecChangeDeferred" in events_of(cluster, ns, name))
        job = cluster.job(ns, name)
        assert job is not None
        wait_for(
            "observedGeneration",
            lambda: cluster.status(ns, name).get("observedGeneration") == job["metadata"]["generation"],
        )
        # The running pod was left alone; a runPolicy change alone gives no warning.
        assert [p.metadata.uid for p in cluster.pods(ns, name)] == [uid]
        cluster.patch_spec(ns, name, {"runPolicy": {"backoffLimit": 5}})
        wait_for(
            "observedGeneration",
            lambda: cluster.status(ns, name).get("observedGeneration") == job["metadata"]["generation"] + 1,
        )
        assert events_of(cluster, ns, name).count("SpecChangeDeferred") == 1


def test_mnv2_operator_command(cluster: Cluster, namespace: str) -> None:
    """`mnv2 operator` as a process: liveness endpoint, handles a job, exits 0 on SIGTERM."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    cmd = [sys.executable, "-m", "mnv2_operator.cli", "operator", "--standalone", "-n", namespace]
    proc = subprocess.Popen(
        [*cmd, "--liveness", f"http://127.0.0.1:{port}/healthz"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def alive() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for("the liveness endpoint", alive, timeout=30)
        cluster.create_job(namespace, "cli", job_spec(nodes=1))
        wait_for("the job's pod", lambda: cluster.pods(namespace, "cli"))
        wait_for("phase Pending", lambda: cluster.status(namespace, "cli").get("phase"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert f"{namespace}/cli: Pending" in out
    assert f"{namespace}/cli: PodsCreated" in out


def test_gang_job_without_volcano_says_why_then_recovers(cluster: Cluster, namespace: str) -> None:
    import kubernetes

    if cluster.local is None:
        pytest.skip("installs and needs the absence of Volcano's PodGroup CRD")
    ext = kubernetes.client.ApiextensionsV1Api(cluster.client)
    with contextlib.suppress(kubernetes.client.ApiException):
        ext.delete_custom_resource_definition(PODGROUP_CRD["metadata"]["name"])
    ns, name = namespace, "gang"
    spec = job_spec(nodes=2)
    spec["scheduling"] = {"gang": True}
    with operator(ns):
        cluster.create_job(ns, name, spec)
        s = wait_for(
            "the reason in the status",
            lambda: (x := cluster.status(ns, name)) and "Volcano" in x.get("message", "") and x,
        )
        assert s["phase"] == "Pending"
        assert condition(s, "Created")["status"] == "False"
        assert condition(s, "Created")["reason"] == "CreateFailed"
        # Waits for that Event itself: the job's other Events can be listed before it is posted.
        wait_for("CreateFailed event", lambda: "CreateFailed" in events_of(cluster, ns, name))
        assert cluster.pods(ns, name) == []
        ext.create_custom_resource_definition(PODGROUP_CRD)
        try:
            # Retried with backoff (0.5 s doubling): the job goes on once the CRD is there.
            # (The retries' backoff grows while the CRD is missing; a busy machine adds to it.)
            wait_for(
                "pods after Volcano's CRD appeared", lambda: len(cluster.pods(ns, name)) == 2, timeout=60
            )
            s = wait_for(
                "Created",
                lambda: (x := cluster.status(ns, name)) and condition(x, "Created")["status"] == "True" and x,
                timeout=60,
            )
            assert "Volcano" not in s["message"]
            assert events_of(cluster, ns, name).count("CreateFailed") == 1
            # Volcano's scheduler does not run here: its pods wait for it, unbound, as on any cluster
            # that serves the CRD without the scheduler.
            pods = cluster.pods(ns, name)
            assert {p.spec.scheduler_name for p in pods} == {"volcano"}
            assert not any(p.spec.node_name for p in pods) and s["phase"] == "Pending"
        finally:
            ext.delete_custom_resource_definition(PODGROUP_CRD["metadata"]["name"])


def test_job_recreated_under_the_same_name_starts_afresh(cluster: Cluster, namespace: str) -> None:
    """The predecessor's pods (same name, same labels) never count for the new job."""
    ns, name = namespace, "again"
    with operator(ns):
        cluster.create_job(ns, name, job_spec(nodes=1))
        wait_for("attempt 0 running", running_pods(cluster, ns, name, 1, 0))
        cluster.finish(ns, f"{name}-worker-0", 0)
        wait_for("phase Succeeded", phase_is(cluster, ns, name, "Succeeded"))
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        wait_for("the job gone", lambda: cluster.job(ns, name) is None)
        new = cluster.create_job(ns, name, job_spec(nodes=1))
        pods = wait_for("the new job's pod running", running_pods(cluster, ns, name, 1, 0))
        assert [r.uid for r in pods[0].metadata.owner_references] == [new["metadata"]["uid"]]
        s = wait_for("phase Running", phase_is(cluster, ns, name, "Running"))
        assert not s.get("completionTime")
        # Deleted with its children orphaned: the leftovers (same names, same labels, no owner any
        # more) are not the new job's; the new job is blocked, says by what, and starts once the
        # user has removed them.
        cluster.finish(ns, f"{name}-worker-0", 0)
        wait_for("phase Succeeded", phase_is(cluster, ns, name, "Succeeded"))
        cluster.custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, propagation_policy="Orphan"
        )
        wait_for("the job gone", lambda: cluster.job(ns, name) is None)
        assert len(cluster.pods(ns, name)) == 1
        cluster.create_job(ns, name, job_spec(nodes=1))
        s = wait_for(
            "the reason", lambda: (x := cluster.status(ns, name)) and "not this job's" in x["message"] and x
        )
        assert s["phase"] == "Pending" and condition(s, "Created")["reason"] == "ChildConflict"
        assert f"ConfigMap {name}-config (no controller owner reference)" in s["message"]
        selector = f"{render.LABEL_JOB}={name}"
        cluster.core.delete_collection_namespaced_service_account(ns, label_selector=selector)
        cluster.core.delete_collection_namespaced_config_map(ns, label_selector=selector)
        cluster.rbac.delete_collection_namespaced_role(ns, label_selector=selector)
        cluster.rbac.delete_collection_namespaced_role_binding(ns, label_selector=selector)
        cluster.core.delete_namespaced_service(name, ns)
        # The pod is next in the way ...
        s = wait_for(
            "the pod named",
            lambda: (x := cluster.status(ns, name)) and "Pod again-worker-0" in x["message"] and x,
        )
        assert f"Pod {name}-worker-0 (no controller owner reference)" in s["message"]
        # ... and once it is gone too, the job starts.
        cluster.core.delete_namespaced_pod(f"{name}-worker-0", ns)
        wait_for("the third job running", phase_is(cluster, ns, name, "Running"), timeout=40)


def _operator_requests(cluster: Cluster, ns: str, start: int) -> list[Request]:
    """The operator's requests in namespace `ns` since audit index `start`."""
    return [r for r in cluster.audit_settled()[start:] if r.namespace == ns]


def test_many_jobs_at_once_create_each_child_once_per_attempt(cluster: Cluster, namespace: str) -> None:
    """Jobs applied at once get each child created exactly once per attempt, at a bounded cost.

    The race this guards against: a second reconcile (woken by the operator's own status patch) that
    runs before the pod index shows the new pod would create every child again (six 409 Conflicts)
    and merge-patch the unchanged ConfigMap; and a GET of the job on every reconcile would double the
    requests.
    """
    if cluster.local is None:
        pytest.skip("reads the local API server's audit log and decides pod outcomes")
    ns, n, restarted = namespace, 16, 4
    names = [f"many-{i}" for i in range(n)]

    def phases(want: str, which: list[str], restarts: int = 0) -> bool:
        # The test's polling is the admin's: it stays out of the operator's audit records.
        statuses = [cluster.status(ns, name) for name in which]
        return all(s.get("phase") == want and s.get("restarts", 0) == restarts for s in statuses)

    start = len(cluster.audit)
    with operator(ns) as runner:
        for name in names:
            cluster.create_job(ns, name, job_spec(nodes=1, backoffLimit=2))
        wait_for("every job Running", lambda: phases("Running", names), timeout=60)
        # A gang restart must still create the next attempt's pod (memory is keyed by attempt).
        for name in names[:restarted]:
            cluster.finish(ns, f"{name}-worker-0", 1)
        wait_for("attempt 1 Running", lambda: phases("Running", names[:restarted], 1), timeout=60)
        time.sleep(1.0)  # the last Events and status patches
    assert "retrying" not in runner.output, runner.output
    requests = _operator_requests(cluster, ns, start)
    by: dict[str, int] = {}
    for r in requests:
        key = f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''} {r.code}"
        by[key] = by.get(key, 0) + 1
    singles = ("services", "configmaps", "serviceaccounts", "roles", "rolebindings")
    # A gang restart makes sure of the children once (create: 409, get: the job's, patch); nothing
    # else conflicts.
    conflicts: dict[str, int] = {}
    for r in requests:
        if r.verb == "create" and r.code == 409:
            conflicts[r.resource] = conflicts.get(r.resource, 0) + 1
    # On the real API server the old attempt's pod can still be on its way out (its node writes its
    # final status, then deletes it) when the operator creates its successor: a 409, then one GET of
    # it, and the operator looks again shortly. At most once per restarted pod; the pod's create
    # that succeeds is still one per attempt (below).
    pod_conflicts = conflicts.pop("pods", 0)
    assert pod_conflicts <= restarted, f"duplicate pod creates: {by}"
    assert conflicts == dict.fromkeys(singles, restarted), f"duplicate creates: {by}"
    created = {}
    for r in requests:
        if r.verb == "create" and r.code < 300 and r.resource != "events":
            created[r.resource] = created.get(r.resource, 0) + 1
    # Each child once per job; the pod once per attempt.
    assert created == {**dict.fromkeys(singles, n), "pods": n + restarted}, by
    # Nothing patched but the status and, once per restart, the child that follows the spec (the
    # ConfigMap); the others never change once created (render.FIXED_KINDS).
    patched = sorted(r.resource for r in requests if r.verb == "patch" and r.resource != PLURAL)
    assert patched == ["configmaps"] * restarted, by
    read = sorted(r.resource for r in requests if r.verb == "get" and r.resource != PLURAL)
    assert read == sorted([*singles] * restarted + ["pods"] * pod_conflicts), by
    # Bounded: the job comes from the watch and the status patches' answers, not a GET per reconcile.
    gets = sum(1 for r in requests if r.verb == "get" and r.resource == PLURAL)
    assert gets <= n // 4, by
    per_job = sum(1 for r in requests if r.verb not in ("list", "watch")) / n
    # Running, never restarted: 6 creates, 3 status patches (Pending, its pod seen, Running), 4 Events
    # (Pending, ChildrenCreated, PodsCreated, Running) = 13; a restart adds 1 pod delete, 1 pod
    # create, 3 status patches (Restarting, its pod seen, Running), 3 Events and 5 + 5 + 1 for making
    # sure of the children (create, get, patch of the ConfigMap) = 19.
    assert per_job <= 13 + 19 * restarted / n + 0.5, (per_job, by)


def test_operator_restart_while_jobs_are_created_converges(cluster: Cluster, namespace: str) -> None:
    """The memory of what was created is lost with the operator: the next one converges from what it
    observes, every pod once, a 409 (if any) handled quietly."""
    if cluster.local is None:
        pytest.skip("reads the local API server's audit log")
    ns, n = namespace, 8
    names = [f"cut-{i}" for i in range(n)]
    start = len(cluster.audit)
    with operator(ns):
        for name in names:
            cluster.create_job(ns, name, job_spec(nodes=2))
        # Stop as soon as the first pods are there, while other jobs are still being created.
        wait_for("a first pod", lambda: any(cluster.pods(ns, name) for name in names), timeout=30)
    with operator(ns) as runner:
        wait_for(
            "every job Running",
            lambda: all(cluster.status(ns, name).get("phase") == "Running" for name in names),
            timeout=60,
        )
    assert "retrying" not in runner.output, runner.output
    pod_creates = [
        r
        for r in _operator_requests(cluster, ns, start)
        if r.verb == "create" and r.resource == "pods" and r.code < 300
    ]
    assert len(pod_creates) == 2 * n
    for name in names:
        assert len(cluster.pods(ns, name)) == 2
