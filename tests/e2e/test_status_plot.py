"""`mnv2 status` and `mnv2 plot` as a user runs them, against the local control plane (the real API
server) with a hand-made job status.

No operator and no training here: the job's status is written the way the operator and the trainer
write it (merge patches of /status), then the commands read it back through a kubeconfig, as they
would on a real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from mnv2_cluster.launcher import Cluster
from mnv2_demo import demo
from mnv2_operator import constants as C
from mnv2_operator import crd
from support.cluster import local_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

JOB = {
    "apiVersion": "training.mnv2.dev/v1alpha1",
    "kind": "MobileNetV2TrainingJob",
    "metadata": {"name": "hand-made", "namespace": "default"},
    "spec": {
        "model": {"name": "mobilenet_v2_035_96"},
        "dataset": {"type": "digits"},
        "output": {"pvc": {"claimName": "hand-made-output"}},
        "accelerator": {"type": "cpu"},
        "devicesPerNode": 2,
    },
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), crds=[crd.crd_yaml()]) as local:
        demo.wait_served(local.control_plane.api_client())
        yield local.control_plane


def mnv2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mnv2_operator.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_status_and_plot_read_a_job_back(cluster: Cluster, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(JOB), encoding="utf-8")
    applied = cluster.kubectl("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr

    # The trainer's metrics.jsonl, next to the checkpoints the status names (as on the job's output volume).
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    records = [
        {"epoch": e, "loss": round(2.3 / e, 4), "top1": round(0.3 + 0.1 * e, 3), "top5": 0.9}
        for e in range(1, 6)
    ]
    (ckpt / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    api = client.CustomObjectsApi(cluster.api_client())
    for body in (
        {  # the operator's part
            "status": {
                "phase": "Running",
                "restarts": 1,
                "workers": {"active": 1, "succeeded": 0, "failed": 0},
                "conditions": [
                    {
                        "type": "Running",
                        "status": "True",
                        "reason": "PodsRunning",
                        "message": "1/1 pods running",
                        "lastTransitionTime": "2026-11-27T18:00:00Z",
                    }
                ],
            }
        },
        {  # the trainer's part
            "status": {
                "progress": {"epoch": 5, "totalEpochs": 15, "step": 225, "loss": 0.46, "lr": 0.0123},
                "metrics": {"top1": 0.8, "top5": 0.9, "bestTop1": 0.8, "bestEpoch": 5},
                "checkpoints": {"latest": str(ckpt / "mobilenet_v2_035_96-5_45.ckpt")},
            }
        },
    ):
        api.patch_namespaced_custom_object_status(C.GROUP, C.VERSION, "default", C.PLURAL, "hand-made", body)

    status = mnv2("status", "hand-made", "--kubeconfig", str(cluster.kubeconfig))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["Job", "default/hand-made"]
    assert "Running   restarts: 1" in status.stdout
    assert "epoch 5/15   step 225   loss 0.4600   lr 0.0123" in status.stdout
    assert "top-1 0.800   top-5 0.900   best top-1 0.800 (epoch 5)" in status.stdout
    assert any(line.split()[:3] == ["Running", "True", "PodsRunning"] for line in lines)

    # kubectl's printer columns show the same numbers.
    table = cluster.kubectl("get", "mnv2", "hand-made").stdout.splitlines()
    row = dict(zip(table[0].split(), table[1].split(), strict=False))
    assert (row["PHASE"], row["EPOCH"], row["EPOCHS"], row["TOP-1"], row["RESTARTS"]) == (
        "Running",
        "5",
        "15",
        "0.8",
        "1",
    )

    png = tmp_path / "curves.png"
    plotted = mnv2("plot", "hand-made", "-o", str(png), "--kubeconfig", str(cluster.kubeconfig))
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_job_is_a_clear_error(cluster: Cluster) -> None:
    result = mnv2("status", "no-such-job", "-n", "default", "--kubeconfig", str(cluster.kubeconfig))
    assert result.returncode == 1
    assert "job 'no-such-job' not found in namespace 'default'" in result.stderr
    assert "kubectl get mnv2 -n default" in result.stderr
    result = mnv2("plot", "no-such-job", "--kubeconfig", str(cluster.kubeconfig))
    assert result.returncode == 1 and "not found" in result.stderr


def test_status_uses_kubeconfig_from_the_environment_at_run_time(cluster: Cluster) -> None:
    # KUBECONFIG set for the command only: read when the command runs, not when the module was imported.
    result = subprocess.run(
        [sys.executable, "-m", "mnv2_operator.cli", "status", "no-such-job"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    assert result.returncode == 1
    assert f"at {cluster.server}" in result.stderr
