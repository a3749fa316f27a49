"""Every API request the operator makes is allowed by the RBAC the chart renders, in both modes.

The operator (kopf, in this process via KopfRunner, with the same flags as the chart's Deployment) runs
a scenario against the sandbox that exercises every kind of request it can make: watching jobs and
pods, creating every child (a gang job gets a Volcano PodGroup), a worker failure with a gang restart
(pod deletes; the job's own children are read and patched again), a job blocked by someone else's pod,
success, deletion of the job by ttlSecondsAfterFinished, an invalid spec (status patch + Events). The sandbox's audit log holds every
request; each one is evaluated against the chart's rendered Roles and bindings for the operator's
ServiceAccount with the pure evaluator in `mnv2_operator.rbac`. Conversely every granted verb must
have been used, except the few listed in NOT_EXERCISED with the reason.

The test drives the scenario without adding requests of its own while the operator runs: setup goes
through kubectl before the operator starts, and the test then only reads the sandbox's store in
process and ends pods through the simulated kubelet, so the audit slice is the operator's alone.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kopf.testing import KopfRunner
from mnv2_operator import render
from mnv2_operator.manifests import CHART_DIR, render_chart
from mnv2_operator.rbac import Request, denied_requests, grants_for_service_account, unused_rules
from volcano import PODGROUP_CRD

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION, PLURAL = "training.mnv2.dev", "v1alpha1", "mobilenetv2trainingjobs"
SA, SA_NS = "mnv2-operator", "mnv2-system"
NS_A, NS_B = "team-a", "team-b"
T = TypeVar("T")

# Granted but not exercised by the scenario, and why they are granted anyway.
NOT_EXERCISED = {
    # Never called: held so the operator may create the trainer's Role, which grants get + patch on
    # the job's status (Kubernetes refuses to create a Role granting rights its creator lacks).
    (GROUP, f"{PLURAL}/status", "get"),
    # Only a fallback: a reconcile takes the job from its watch events and from the answers to the
    # operator's own status patches, and reads it only when neither is known to be current (see
    # status.JobView). Whether the scenario needs it depends on timing.
    (GROUP, PLURAL, "get"),
}


def job(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "model": {"name": "mobilenet_v2_035_96", "numClasses": 10},
        "dataset": {"type": "digits"},
        "accelerator": {"type": "cpu"},
        "devicesPerNode": 1,
        "nodes": 2,
        "output": {"pvc": {"claimName": "runs"}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MobileNetV2TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base | spec,
    }


def wait_for(what: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Store:
    """In-process reads of the sandbox's objects: no HTTP, so nothing lands in the audit log."""

    def __init__(self, sandbox: Any) -> None:
        self.server = sandbox.server

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.server.get(self.server.resources[(group, plural)], namespace, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.get(GROUP, PLURAL, namespace, name) or {}).get("status") or {}

    def pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        pods = self.server.iter_objects(self.server.resources[("", "pods")], namespace)
        return [
            p
            for p in pods
            if p["metadata"].get("labels", {}).get(render.LABEL_JOB) == job_name
            and not p["metadata"].get("deletionTimestamp")
        ]

    def running(self, namespace: str, job_name: str, n: int, attempt: int) -> bool:
        pods = self.pods(namespace, job_name)
        return len(pods) == n and all(
            (p.get("status") or {}).get("phase") == "Running"
            and p["metadata"]["labels"][render.LABEL_ATTEMPT] == str(attempt)
            for p in pods
        )


def run_scenario(sandbox: Any, kopf_namespace_args: list[str]) -> int:
    """Set up, run the operator through the scenario; return where its requests start in the audit log.

    A watch is logged when its stream ends, so read the log only after the sandbox has stopped.
    """
    kubectl_apply = lambda docs: sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))  # noqa: E731
    sandbox.kubectl("apply", "-f", str(CHART_DIR / "crds"))
    kubectl_apply(
        [PODGROUP_CRD]
        + [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in (NS_A, NS_B, "elsewhere")
        ]
    )
    # Someone else's pod under a worker's name: the job "held" creates its other children, then finds
    # the pod in its way (create -> 409 -> get: not the job's) and stays blocked, the pod untouched.
    # The other children's get and patch come from the gang restarts below: a new attempt makes sure
    # of the job's own children again (create -> 409 -> get: the job's -> merge patch).
    held_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "held-worker-0", "namespace": NS_A, "labels": {"app": "someone-else"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }
    kubectl_apply([
        held_pod,
        job(NS_A, "ok", runPolicy={"backoffLimit": 1, "ttlSecondsAfterFinished": 1}),
        job(NS_A, "held", nodes=1),
        job(NS_B, "bad", mode="validate", nodes=1),  # validate mode without a checkpoint: InvalidSpec
        job(NS_B, "gang", scheduling={"gang": True}, runPolicy={"backoffLimit": 1}),
    ])  # fmt: skip
    store = Store(sandbox)
    start = len(sandbox.audit)
    port = free_port()
    args = ["run", "--standalone", f"--liveness=http://127.0.0.1:{port}/healthz", *kopf_namespace_args]
    with KopfRunner([*args, "-m", "mnv2_operator.handlers"], timeout=60) as runner:
        # kopf's liveness endpoint, which the chart's probe calls, answers.
        health = wait_for("kopf's /healthz", lambda: _get(f"http://127.0.0.1:{port}/healthz"))
        assert health == 200

        wait_for("ok: attempt 0 running", lambda: store.running(NS_A, "ok", 2, 0))
        held = wait_for(
            "held: blocked by the pod",
            lambda: "Pod held-worker-0" in (s := store.status(NS_A, "held")).get("message", "") and s,
        )
        assert held["phase"] == "Pending"
        pod = store.get("", "pods", NS_A, "held-worker-0")
        assert pod is not None and not pod["metadata"].get("ownerReferences"), (
            "the pod in the way was changed"
        )
        sandbox.kubelet.finish(NS_A, "ok-worker-1", exit_code=1, reason="Error")
        wait_for("ok: attempt 1 running", lambda: store.running(NS_A, "ok", 2, 1))
        for rank in (0, 1):
            sandbox.kubelet.finish(NS_A, f"ok-worker-{rank}", exit_code=0)
        wait_for("ok deleted by its TTL", lambda: store.get(GROUP, PLURAL, NS_A, "ok") is None)

        failed = wait_for(
            "bad: Failed", lambda: (s := store.status(NS_B, "bad")).get("phase") == "Failed" and s
        )
        assert "checkpoint" in failed["message"]
        wait_for("gang: PodGroup", lambda: store.get("scheduling.volcano.sh", "podgroups", NS_B, "gang"))
        wait_for("gang: running", lambda: store.running(NS_B, "gang", 2, 0))
        group = store.get("scheduling.volcano.sh", "podgroups", NS_B, "gang")
        assert group is not None and group["spec"]["minMember"] == 2
        # A gang restart of the gang job: its pods are deleted and created again.
        sandbox.kubelet.finish(NS_B, "gang-worker-0", exit_code=1, reason="Error")
        wait_for("gang: attempt 1 running", lambda: store.running(NS_B, "gang", 2, 1))
        # Let the last status patches and Events go out before stopping.
        wait_for("gang: phase Running", lambda: store.status(NS_B, "gang").get("phase") == "Running")
        time.sleep(1.0)
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output
    return start


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


@pytest.mark.parametrize(
    ("values", "kopf_namespace_args"),
    [
        pytest.param({}, ["--all-namespaces"], id="cluster-wide"),
        pytest.param(
            {"watchNamespaces": [NS_A, NS_B]}, ["--namespace", NS_A, "--namespace", NS_B], id="namespaced"
        ),
    ],
)
def test_operator_requests_are_exactly_the_charts_rbac(
    values: dict[str, Any], kopf_namespace_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnv2_operator.sandbox import Sandbox

    with Sandbox(tmp_path / "sandbox", kubelet="simulated") as sandbox:
        # kopf and the operator's client both read $KUBECONFIG (the kubernetes package at import).
        import kubernetes.config.kube_config as kube_config

        monkeypatch.setenv("KUBECONFIG", str(sandbox.kubeconfig_path))
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(sandbox.kubeconfig_path))
        start = run_scenario(sandbox, kopf_namespace_args)
    requests = [
        Request(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name)
        for r in sandbox.audit[start:]
    ]

    objects = render_chart(values)
    grants = grants_for_service_account(objects, SA, SA_NS)
    denied = denied_requests(grants, requests)
    assert denied == [], "requests the chart's RBAC would refuse:\n" + "\n".join(map(str, denied))
    unused = set(unused_rules(grants, requests)) - NOT_EXERCISED
    assert unused == set(), (
        f"granted but never used (remove them, or say why in NOT_EXERCISED): {sorted(unused)}"
    )
    # The operator stayed inside its namespaces in namespaced mode.
    if values.get("watchNamespaces"):
        assert {r.namespace for r in requests} <= {"", *values["watchNamespaces"]}
        assert all(r.verb in ("list", "watch") for r in requests if not r.namespace)

    # The check can fail: without the right to delete jobs, the TTL deletion is refused.
    for obj in objects:
        for rule in obj.get("rules", []):
            if PLURAL in rule.get("resources", []):
                rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    weaker = grants_for_service_account(objects, SA, SA_NS)
    assert Request("delete", GROUP, PLURAL, "", NS_A, "ok") in denied_requests(weaker, requests)


def test_chart_rbac_and_operator_doc_agree() -> None:
    """docs/operator.md's table of API requests names the same (group, resource, verb) as the chart."""
    doc = (CHART_DIR.parents[1] / "docs" / "operator.md").read_text()
    table = doc.split("## API requests the operator makes", 1)[1]
    documented = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("API group", "---") or set(cells[0]) <= {"-"}:
            continue
        group = "" if cells[0].startswith('""') else cells[0]
        if group == "kopf.dev":
            continue  # peering: only without --standalone, which the chart always passes
        for resource in cells[1].split(","):
            for verb in cells[2].split(","):
                documented.add((group, resource.strip(), verb.strip()))
    granted = set()
    for values in ({}, {"watchNamespaces": ["a"]}):
        for obj in render_chart(values):
            for rule in obj.get("rules", []):
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted.update((group, resource, verb) for verb in rule["verbs"])
    assert granted == documented, json.dumps(
        {"granted only": sorted(granted - documented), "documented only": sorted(documented - granted)},
        indent=1,
    )
