"""Every API request the operator makes is allowed by the RBAC the chart renders, in both modes.

The chart's ServiceAccount, Roles and bindings are installed in the local control plane (the real API
server, RBAC on), and the operator (kopf, in this process via KopfRunner, with the same flags as the
chart's Deployment) runs as that ServiceAccount, with a bound token. It goes through a scenario that
exercises every kind of request it can make: watching jobs and pods, creating every child (a gang job
gets a Volcano PodGroup), a worker failure with a gang restart (pod deletes; the job's own children
are read and patched again), a job blocked by someone else's pod, success, deletion of the job by
ttlSecondsAfterFinished, an invalid spec (status patch + Events). Pods run on two simulated nodes,
which end them when the test says.

The API server's audit log holds every request with the user who made it and the answer: none of the
operator's may be refused (a missing permission is a real 403), and each one is evaluated against the
chart's rendered rules with the pure evaluator in `support.rbac`, which must agree. Conversely
every granted verb must have been used, except the few listed in NOT_EXERCISED with the reason.
The test's own requests (setup, reads) go through the admin's credentials, so they are not the
operator's in the audit log.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner
from mnv2_operator import render
from mnv2_operator.constants import GROUP, PLURAL, VERSION
from support import REPO_ROOT
from support.cluster import LocalCluster, local_cluster, object_requests, wait_for
from support.rbac import Request, denied_requests, grants_for_service_account, unused_rules
from volcano import PODGROUP_CRD

from manifests import CHART_DIR, render_chart

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SA, SA_NS = "mnv2-operator", "mnv2-system"
SA_USER = f"system:serviceaccount:{SA_NS}:{SA}"
NS_A, NS_B = "team-a", "team-b"

# Granted but not exercised by the scenario, and why they are granted anyway.
NOT_EXERCISED = {
    # Never called: held so the operator may create the trainer's Role, which grants get + patch on
    # the job's status (Kubernetes refuses to create a Role granting rights its creator lacks).
    (GROUP, f"{PLURAL}/status", "get"),
    # Only a fallback: a reconcile takes the job from its watch events and from the answers to the
    # operator's own status patches, and reads it only when neither is known to be current (see
    # controller.JobView). Whether the scenario needs it depends on timing.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Store:
    """The test's reads, as the cluster's admin (not the operator's requests in the audit log)."""

    def __init__(self, local: LocalCluster) -> None:
        client = local.control_plane.api_client()
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    def get(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if group == "":
                assert plural == "pods"
                return self.core.api_client.sanitize_for_serialization(  # type: ignore[no-any-return]
                    self.core.read_namespaced_pod(name, namespace)
                )
            version = VERSION if group == GROUP else "v1beta1"
            return self.custom.get_namespaced_custom_object(group, version, namespace, plural, name)  # type: ignore[no-any-return]
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def bind(self, namespace: str, pod: str, node: str) -> None:
        """Bind a pod to a node, as a scheduler does."""
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}  # fmt: skip
        # The client cannot read the API server's answer to a Binding (a Status): skip decoding it.
        self.core.create_namespaced_pod_binding(pod, namespace, body, _preload_content=False)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.get(GROUP, PLURAL, namespace, name) or {}).get("status") or {}

    def pods(self, namespace: str, job_name: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{render.LABEL_JOB}={job_name}").items
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def running(self, namespace: str, job_name: str, n: int, attempt: int) -> bool:
        pods = self.pods(namespace, job_name)
        return len(pods) == n and all(
            p.status.phase == "Running" and p.metadata.labels[render.LABEL_ATTEMPT] == str(attempt)
            for p in pods
        )


def operator_requests(local: LocalCluster) -> list[tuple[Request, int]]:
    """The operator's requests for objects, with the API server's answer, from the audit log."""
    return [
        (Request(verb, ref.get("apiGroup", ""), ref.get("resource", ""), ref.get("subresource", ""),
                 ref.get("namespace", ""), ref.get("name", "")), code)
        for verb, ref, code in object_requests(local.control_plane.audit_events(), SA_USER)
    ]  # fmt: skip


def run_scenario(
    local: LocalCluster,
    values: dict[str, Any],
    kopf_namespace_args: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set up as the admin, then run the operator as the chart's ServiceAccount through the scenario."""
    cluster = local.control_plane
    kubectl_apply = lambda docs: cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))  # noqa: E731
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                  for ns in (SA_NS, NS_A, NS_B, "elsewhere")]  # fmt: skip
    rbac = [o for o in render_chart(values) if o["kind"] != "Deployment"]
    kubectl_apply(namespaces + rbac)
    for ns in (NS_A, NS_B):
        cluster.create_local_claim(ns, "runs")
    # Someone else's pod under a worker's name: the job "held" creates its other children, then finds
    # the pod in its way (create -> 409 -> get: not the job's) and stays blocked, the pod untouched.
    # The other children's get and patch come from the gang restart below: a new attempt makes sure
    # of the job's own children again (create -> 409 -> get: the job's -> merge patch).
    held_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "held-worker-0", "namespace": NS_A, "labels": {"app": "someone-else"}},
        "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]},
    }
    kubectl_apply([
        held_pod,
        job(NS_A, "ok", runPolicy={"backoffLimit": 1, "ttlSecondsAfterFinished": 1}),
        job(NS_A, "held", nodes=1),
        job(NS_B, "bad", mode="validate", nodes=1),  # validate mode without a checkpoint: InvalidSpec
        job(NS_B, "gang", scheduling={"gang": True}, runPolicy={"backoffLimit": 1}),
    ])  # fmt: skip
    store = Store(local)
    # The operator's credentials: a bound token of the chart's ServiceAccount. kopf and the operator's
    # client both read $KUBECONFIG (the kubernetes package at import).
    import kubernetes.config.kube_config as kube_config

    kubeconfig = str(cluster.kubeconfig_for_service_account(SA_NS, SA))
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    port = free_port()
    args = ["run", "--standalone", f"--liveness=http://127.0.0.1:{port}/healthz", *kopf_namespace_args]
    with KopfRunner([*args, "-m", "mnv2_operator.handlers"], timeout=60) as runner:
        # kopf's liveness endpoint, which the chart's probe calls, answers.
        health = wait_for("kopf's /healthz", lambda: _get(f"http://127.0.0.1:{port}/healthz"))
        assert health == 200

        wait_for("ok: attempt 0 running", lambda: store.running(NS_A, "ok", 2, 0), timeout=60)
        held = wait_for(
            "held: blocked by the pod",
            lambda: "Pod held-worker-0" in (s := store.status(NS_A, "held")).get("message", "") and s,
        )
        assert held["phase"] == "Pending"
        pod = store.get("", "pods", NS_A, "held-worker-0")
        assert pod is not None and not pod["metadata"].get("ownerReferences"), (
            "the pod in the way was changed"
        )
        local.finish(NS_A, "ok-worker-1", exit_code=1)
        wait_for("ok: attempt 1 running", lambda: store.running(NS_A, "ok", 2, 1), timeout=60)
        for rank in (0, 1):
            local.finish(NS_A, f"ok-worker-{rank}", exit_code=0)
        wait_for("ok deleted by its TTL", lambda: store.get(GROUP, PLURAL, NS_A, "ok") is None)

        failed = wait_for(
            "bad: Failed", lambda: (s := store.status(NS_B, "bad")).get("phase") == "Failed" and s
        )
        assert "checkpoint" in failed["message"]
        group = wait_for(
            "gang: PodGroup", lambda: store.get("scheduling.volcano.sh", "podgroups", NS_B, "gang")
        )
        assert group["spec"]["minMember"] == 2

        # The gang's pods name Volcano's scheduler, which this cluster does not run: the test binds them
        # as Volcano would once it admits the group (a Binding, as the admin), one per node.
        def bind_gang(attempt: int) -> None:
            pods = wait_for(
                f"gang: attempt {attempt}'s pods",
                lambda: len(p := [x for x in store.pods(NS_B, "gang")
                                  if x.metadata.labels[render.LABEL_ATTEMPT] == str(attempt)]) == 2 and p,
            )  # fmt: skip
            assert {p.spec.scheduler_name for p in pods} == {"volcano"}
            for pod, node in zip(sorted(pods, key=lambda p: p.metadata.name), local.nodes, strict=False):
                store.bind(NS_B, pod.metadata.name, node)

        bind_gang(0)
        wait_for("gang: running", lambda: store.running(NS_B, "gang", 2, 0), timeout=60)
        # A gang restart of the gang job: its pods are deleted and created again.
        local.finish(NS_B, "gang-worker-0", exit_code=1)
        bind_gang(1)
        wait_for("gang: attempt 1 running", lambda: store.running(NS_B, "gang", 2, 1), timeout=60)
        wait_for("gang: phase Running", lambda: store.status(NS_B, "gang").get("phase") == "Running")
        # Let the last status patches and Events go out before stopping.
        time.sleep(1.0)
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output


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
    crds = [
        (CHART_DIR / "crds" / f).read_text() for f in sorted(p.name for p in (CHART_DIR / "crds").iterdir())
    ]
    with local_cluster(
        tmp_path / "cluster", crds=[*crds, yaml.safe_dump(PODGROUP_CRD)], simulated=["sim-0", "sim-1"]
    ) as local:
        cluster = local.control_plane
        run_scenario(local, values, kopf_namespace_args, monkeypatch)
        answered = operator_requests(local)

        # The real API server refused nothing the operator asked for.
        refused = sorted({str(r) for r, code in answered if code == 403})
        assert refused == [], "requests the API server refused (403):\n" + "\n".join(refused)
        requests = [r for r, _ in answered]
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

        # The check can fail: without the right to delete jobs, the TTL deletion is refused, by the
        # evaluator and by the real API server (the chart's rules applied without that verb).
        for obj in objects:
            for rule in obj.get("rules", []):
                if PLURAL in rule.get("resources", []):
                    rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
        weaker = grants_for_service_account(objects, SA, SA_NS)
        assert Request("delete", GROUP, PLURAL, "", NS_A, "ok") in denied_requests(weaker, requests)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([o for o in objects if "rules" in o]))
        operator_kubeconfig = cluster.kubeconfig_for_service_account(SA_NS, SA)
        wait_for(
            "the API server to refuse the operator's delete",
            lambda: (
                "no"
                in cluster.kubectl(
                    "auth", "can-i", "delete", PLURAL, "-n", NS_A, kubeconfig=operator_kubeconfig, check=False
                ).stdout
            ),
        )
        deleted = cluster.kubectl(
            "delete", PLURAL, "held", "-n", NS_A, kubeconfig=operator_kubeconfig, check=False
        )
        assert deleted.returncode != 0 and "Forbidden" in deleted.stderr, deleted


def test_chart_rbac_and_operator_doc_agree() -> None:
    """docs/operator.md's table of API requests names the same (group, resource, verb) as the chart."""
    doc = (REPO_ROOT / "docs" / "operator.md").read_text()
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
