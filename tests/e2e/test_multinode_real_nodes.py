"""A multi-node job trained for real on two real Nodes (the upstream kubelet on containerd + runc, pod
networking, CoreDNS), in the trainer image.

The digits example as 2 nodes x 1 CPU worker: the two pods run on different nodes with their own
addresses, each waits in its init container until rank 0's DNS name resolves, and msrun's rendezvous goes
through that name (`--master_addr`, `--node_rank`) across the pod network. Once the first checkpoint is in
the job's status, `kubectl delete pod` of worker 1: its container ends within seconds (not at the pod's
60 s grace period), the gang restarts once, the new attempt resumes from the latest checkpoint (the
trainer logs which one; epoch 1 is not trained again), and the job reaches Succeeded with top-1 >= 0.90.

The operator runs as a process of this test (kopf, `--namespace`) with exactly the chart's RBAC, as the
operator's integration tests run it: installing it from its image would add the operator image's import
(~20 s per node) and a Helm install to a module whose time goes into importing the trainer image (~105 s
per node, both nodes at once) and training; tests/integration/chart/test_chart_on_real_nodes.py covers
the operator's own image. The output volume is a hostPath PersistentVolume on a folder of this machine:
the nodes' mount namespaces see the host's folders (only their kubelet, log and CNI folders are their
own), so both pods write to the same folder, which outlives the pods, and the test reads it directly.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from mnv2_cluster import imagebuild
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import NodeError
from mnv2_operator import crd
from mnv2_operator.constants import GROUP, LABEL_JOB, PLURAL, VERSION
from support import REPO_ROOT
from support.cluster import real_node_cluster, wait_for
from support.operator import OPERATOR_USER, grant_chart_rbac, operator

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

NODES = ["real-1", "real-2"]
NS, JOB = "default", "mn-digits"
# The demo's digits settings (global batch 32, lr 0.01, cosine) over the calibrated 15 epochs: runs end at
# 0.92-0.97 (reference digits calibration: 0.94-0.96). A 10-epoch schedule ended at 0.908-0.928 on two real
# nodes, too close to MIN_TOP1 for a test that must not fail by chance.
EPOCHS = 15
MIN_TOP1 = 0.90
# Bounds on waits, not targets (2 shared cores, other builds and tests on them).
JOB_TIMEOUT = 1500.0
DELETE_BOUND = 20.0  # the pod's grace period is 60 s: a container that ignored SIGTERM would take that long


@dataclass
class Env:
    cluster: Cluster
    output: Path
    timings: dict[str, float] = field(default_factory=dict)


def _timed(timings: dict[str, float], what: str, started: float) -> None:
    timings[what] = time.monotonic() - started
    # sys.__stdout__: while the operator (kopf's runner) runs, sys.stdout is its captured output.
    print(f"{what}: {timings[what]:.1f} s", file=sys.__stdout__, flush=True)


def digits_job() -> dict[str, Any]:
    """The CPU digits example as 2 nodes x 1 worker for EPOCHS epochs (in the operator's default trainer
    image)."""
    (job,) = [
        d
        for d in yaml.safe_load_all((REPO_ROOT / "manifests" / "examples" / "digits-cpu.yaml").read_text())
        if isinstance(d, dict) and d.get("kind") == "MobileNetV2TrainingJob"
    ]
    job["metadata"] = {"name": JOB, "namespace": NS}
    spec = job["spec"]
    spec.update(
        nodes=2,
        devicesPerNode=1,
        imagePullPolicy="Never",
        output={"pvc": {"claimName": "runs"}},
        runPolicy={"backoffLimit": 2},
        # Each node is the whole machine (2 cores), shared with the other node and CoreDNS.
        resources={"requests": {"cpu": "500m", "memory": "2Gi"}},
    )
    warmup = int(spec["config"].get("warmup_epochs") or 0)
    spec["config"].update(epoch_size=EPOCHS, decay_epochs=EPOCHS - warmup)
    return job


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Env]:
    if kubeconfig_option:
        pytest.skip(
            "--kubeconfig names another cluster: the trainer image is imported only into the local cluster's real nodes"
        )
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        archive = imagebuild.build("mnv2-trainer")
    except imagebuild.ImageBuildError as err:
        pytest.fail(f"the trainer image (mnv2_cluster.imagebuild, `make images`) cannot be built: {err}")
    _timed(timings, "trainer image built or found in the cache", started)
    tmp = tmp_path_factory.mktemp("multinode-real")
    started = time.monotonic()
    try:
        with real_node_cluster(tmp / "state", NODES, crds=[crd.crd_yaml()]) as (cluster, nodes):
            _timed(timings, "control plane, 2 nodes, CoreDNS", started)
            started = time.monotonic()
            # Each node has its own containerd (content store, socket): the imports are independent.
            with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
                ref = imagebuild.image_ref("mnv2-trainer")
                for done in [pool.submit(node.import_image, archive, ref) for node in nodes]:
                    done.result()
            _timed(
                timings,
                f"trainer image imported into both nodes ({archive.stat().st_size / 2**20:.0f} MiB)",
                started,
            )
            admin = cluster.api_client()
            grant_chart_rbac(admin, OPERATOR_USER)
            output = cluster.create_local_claim(NS, "runs")
            output.chmod(0o777)  # the trainer runs as a non-root user; a hostPath volume gets no fsGroup
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("KUBECONFIG", str(cluster.kubeconfig_for_user(OPERATOR_USER)))
                # As the chart's jobDefaults.trainerImage sets it: the image the nodes hold.
                mp.setenv("MNV2_DEFAULT_TRAINER_IMAGE", ref)
                with operator(NS):
                    yield Env(cluster, output, timings)
    except NodeError as err:
        pytest.fail(f"a real node cannot run here: {err}")


def epochs_in(metrics: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if line.strip()]


def test_two_node_job_resumes_after_a_deleted_pod_and_reaches_top1_090(env: Env) -> None:
    cluster, timings = env.cluster, env.timings
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    custom = kubernetes.client.CustomObjectsApi(cluster.api_client())

    def job_status() -> dict[str, Any]:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, JOB).get("status") or {}
        if status.get("phase") == "Failed":
            raise AssertionError(f"the job failed: {json.dumps(status, indent=1)[-3000:]}")
        return status

    def pods(attempt: int) -> list[Any]:
        job_status()  # fails the wait at once when the job failed
        return [
            p
            for p in core.list_namespaced_pod(NS, label_selector=f"{LABEL_JOB}={JOB}").items
            if p.metadata.labels.get("training.mnv2.dev/attempt") == str(attempt)
            and p.metadata.deletion_timestamp is None
        ]

    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, digits_job())

    running = wait_for(
        "both workers Running",
        lambda: ps if len(ps := pods(0)) == 2 and all(p.status.phase == "Running" for p in ps) else None,
        300.0,
        interval=1.0,
    )
    _timed(timings, "job create -> both pods Running", started)
    by_rank = {int(p.metadata.name.rsplit("-", 1)[1]): p for p in running}
    assert {p.spec.node_name for p in running} == set(NODES), [
        (p.metadata.name, p.spec.node_name) for p in running
    ]
    assert len({p.status.pod_ip for p in running}) == 2
    rank0_dns = f"{JOB}-worker-0.{JOB}.{NS}.svc"
    for rank, pod in by_rank.items():
        container = pod.spec.containers[0]
        assert container.image == imagebuild.image_ref("mnv2-trainer"), container.image
        args = " ".join((container.command or []) + (container.args or []))
        assert f"--node_rank={rank}" in args and f"--master_addr={rank0_dns}" in args, args
        (init,) = pod.spec.init_containers
        assert rank0_dns in init.command, init.command
        assert pod.spec.termination_grace_period_seconds == 60

    def checkpointed() -> dict[str, Any] | None:
        status = job_status()
        latest = (status.get("checkpoints") or {}).get("latest")
        return status if latest and ((status.get("progress") or {}).get("epoch") or 0) >= 1 else None

    status = wait_for("the first checkpoint in the job's status", checkpointed, JOB_TIMEOUT, interval=1.0)
    _timed(timings, "job create -> first checkpoint in status", started)
    assert status["phase"] == "Running" and (status.get("restarts") or 0) == 0, status
    checkpoint_at_kill = int(status["progress"]["epoch"])

    # Delete worker 1 (not rank 0): its container ends on SIGTERM, and the pod is gone once the kubelet
    # saw it end.
    victim = by_rank[1]
    deleted = time.monotonic()
    core.delete_namespaced_pod(victim.metadata.name, NS)

    def gone() -> bool:
        try:
            pod = core.read_namespaced_pod(victim.metadata.name, NS)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return True
            raise
        return pod.metadata.uid != victim.metadata.uid

    wait_for("the deleted pod gone", gone, 60.0, interval=0.2)
    stopped = time.monotonic() - deleted
    _timed(timings, "kubectl delete pod worker-1 -> its container ended and the pod gone", deleted)
    assert stopped < DELETE_BOUND, f"{stopped:.1f} s: the container waited for the grace period"

    wait_for(
        "the gang restarted (attempt 1 Running on both nodes)",
        lambda: (len(ps := pods(1)) == 2 and all(p.status.phase == "Running" for p in ps)) or None,
        300.0,
        interval=1.0,
    )
    _timed(timings, "delete -> new attempt's pods Running", deleted)

    def succeeded() -> dict[str, Any] | None:
        status = job_status()
        return status if status.get("phase") == "Succeeded" else None

    done = wait_for("the job Succeeded", succeeded, JOB_TIMEOUT, interval=2.0)
    _timed(timings, "job create -> Succeeded", started)
    assert done["restarts"] == 1, done
    assert done["progress"]["epoch"] == EPOCHS == done["progress"]["totalEpochs"], done
    assert done["metrics"]["top1"] >= MIN_TOP1, done["metrics"]

    # The output folder (both pods wrote there): one metrics line per epoch, epoch 1 trained once; the
    # second attempt went on from a checkpoint at or after the one in the status when the pod was deleted.
    metrics = env.output / "ckpt" / "metrics.jsonl"
    epochs = epochs_in(metrics)
    print(f"epochs in metrics.jsonl: {epochs}; top-1 {done['metrics']['top1']:.4f}", file=sys.__stdout__)
    assert epochs.count(1) == 1, f"the restarted job trained epoch 1 again instead of resuming: {epochs}"
    assert epochs[-1] == EPOCHS and sorted(set(epochs)) == list(range(1, EPOCHS + 1)), epochs
    logs = sorted((env.output / "logs" / "1").glob("*.log"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    resumed = re.findall(r"resume\s*: /output/ckpt/\S+ \(epoch (\d+), step \d+.*\) -> epoch (\d+)", text)
    assert resumed, f"no resume line in the second attempt's logs {logs}:\n{text[-3000:]}"
    for epoch, next_epoch in resumed:
        assert int(epoch) >= checkpoint_at_kill and int(next_epoch) == int(epoch) + 1, resumed
    first_logs = sorted((env.output / "logs" / "0").glob("*.log"))
    assert len(first_logs) >= 2, first_logs  # both ranks of the first attempt wrote to the shared folder
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), file=sys.__stdout__)
