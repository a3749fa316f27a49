"""`mnv2 status`: the pure formatting and the error paths of reading a job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from mnv2_operator import constants as C
from mnv2_operator import show

NOW = datetime(2026, 11, 27, 19, 0, 0, tzinfo=UTC)


def finished_job() -> dict[str, Any]:
    return {
        "apiVersion": "training.mnv2.dev/v1alpha1",
        "kind": "MobileNetV2TrainingJob",
        "metadata": {"name": "digits-cpu", "namespace": "demo", "creationTimestamp": "2026-11-27T18:50:00Z"},
        "status": {
            "phase": "Succeeded",
            "restarts": 1,
            "message": "all 1 workers succeeded",
            "workers": {"active": 0, "succeeded": 1, "failed": 0},
            "startTime": "2026-11-27T18:50:02Z",
            "completionTime": "2026-11-27T18:55:32Z",
            "conditions": [
                {
                    "type": "Restarting",
                    "status": "False",
                    "reason": "WorkerFailed",
                    "message": "pod digits-cpu-worker-0 exited 137",
                    "lastTransitionTime": "2026-11-27T18:52:00Z",
                },
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "AllWorkersSucceeded",
                    "message": "",
                    "lastTransitionTime": "2026-11-27T18:55:32Z",
                },
            ],
            "progress": {
                "epoch": 15,
                "totalEpochs": 15,
                "step": 675,
                "loss": 0.52345,
                "lr": 0.000123,
                "imagesPerSecond": 110.27,
                "updatedAt": "2026-11-27T18:55:30Z",
            },
            "metrics": {"top1": 0.9556, "top5": 0.9972, "bestTop1": 0.9583, "bestEpoch": 14},
            "checkpoints": {
                "latest": "/out/ckpt/mobilenet_v2_035-15_45.ckpt",
                "best": "/out/ckpt/mobilenet_v2_035_best.ckpt",
            },
        },
    }


def test_status_table_shows_every_section() -> None:
    text = show.format_status(finished_job(), now=NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["Job", "demo/digits-cpu"]
    phase_line = next(line for line in lines if line.startswith("Phase"))
    assert "Succeeded" in phase_line and "restarts: 1" in phase_line
    assert "all 1 workers succeeded" in text
    assert "active 0, succeeded 1, failed 0" in text
    assert "(ran 5m30s)" in text
    progress = next(line for line in lines if line.startswith("Progress"))
    for part in (
        "epoch 15/15",
        "step 675",
        "loss 0.5234",
        "lr 0.000123",
        "images/s 110.3",
        "updated 4m30s ago",
    ):
        assert part in progress
    metrics = next(line for line in lines if line.startswith("Metrics"))
    assert "top-1 0.956" in metrics and "top-5 0.997" in metrics and "best top-1 0.958 (epoch 14)" in metrics
    assert "latest /out/ckpt/mobilenet_v2_035-15_45.ckpt" in text
    assert "best   /out/ckpt/mobilenet_v2_035_best.ckpt" in text
    # Conditions as an aligned table: header, then one row per condition, columns lined up.
    header_index = lines.index(next(line for line in lines if line.strip().startswith("TYPE")))
    header, restarting, succeeded = lines[header_index : header_index + 3]
    assert restarting.split()[:4] == ["Restarting", "False", "WorkerFailed", "8m00s"]
    assert succeeded.split()[:3] == ["Succeeded", "True", "AllWorkersSucceeded"]
    assert header.index("REASON") == restarting.index("WorkerFailed") == succeeded.index("AllWorkers")
    assert restarting.endswith("pod digits-cpu-worker-0 exited 137")


def test_status_table_of_a_fresh_job_has_placeholders() -> None:
    job = {"metadata": {"name": "new", "namespace": "default"}}
    text = show.format_status(job, now=NOW)
    assert "Pending (not yet seen by the operator)" in text
    assert "epoch -   step -   loss -" in text
    assert "top-1 -   top-5 -   best top-1 -" in text
    assert "latest -" in text
    assert text.rstrip().endswith("Conditions\n  -")


def test_status_table_ignores_non_numbers() -> None:
    job = finished_job()
    job["status"]["metrics"] = {"top1": "n/a", "top5": float("nan"), "bestTop1": True}
    text = show.format_status(job, now=NOW)
    assert "top-1 -   top-5 -   best top-1 -" in text


@pytest.mark.parametrize(
    ("epoch", "total", "filled"),
    [(0, 15, 0), (3, 15, 4), (15, 15, 20), (20, 15, 20)],
)
def test_progress_line_bar_follows_epochs(epoch: int, total: int, filled: int) -> None:
    job = {"status": {"phase": "Running", "progress": {"epoch": epoch, "totalEpochs": total, "loss": 1.5}}}
    line = show.format_progress_line(job, width=20, elapsed=65)
    bar = line.split()[0]
    assert bar == "[" + "#" * filled + "." * (20 - filled) + "]"
    assert f"epoch {epoch}/{total}" in line
    assert "loss 1.5000" in line and "top-1 -" in line and "Running" in line and line.endswith("1m05s")


def test_progress_line_before_any_report_and_with_restarts() -> None:
    line = show.format_progress_line({"status": {"phase": "Restarting", "restarts": 2}})
    assert line.startswith("[" + "." * 20 + "]  epoch -/-")
    assert "Restarting" in line and "restarts 2" in line


def test_status_without_a_cluster_says_how_to_point_at_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(show.ShowError, match="no cluster configured: pass --kubeconfig, set KUBECONFIG"):
        show.load_api_client(None)
    with pytest.raises(show.ShowError, match="kubeconfig /nonexistent: no such file"):
        show.load_api_client("/nonexistent")


class FakeCustomObjects:
    """Stands in for kubernetes.client.CustomObjectsApi: the job and the CRD may or may not exist."""

    def __init__(self, jobs: dict[str, dict[str, Any]], crd_installed: bool) -> None:
        self.jobs, self.crd_installed = jobs, crd_installed

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):  # noqa: ANN001
        assert (group, version, plural) == (C.GROUP, C.VERSION, C.PLURAL)
        if not self.crd_installed or name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self.jobs[name]

    def list_namespaced_custom_object(self, group, version, namespace, plural, limit=None):  # noqa: ANN001
        if not self.crd_installed:
            raise ApiException(status=404, reason="Not Found")
        return {"items": list(self.jobs.values())[:limit]}


@pytest.mark.parametrize(
    ("crd_installed", "message"),
    [
        (True, "job 'missing' not found in namespace 'demo' at http://api.example:6443"),
        (
            False,
            "does not know MobileNetV2TrainingJob (mobilenetv2trainingjobs.training.mnv2.dev): install the CRD",
        ),
    ],
)
def test_missing_job_or_crd_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, crd_installed: bool, message: str
) -> None:
    from kubernetes import client

    fake = FakeCustomObjects({"digits-cpu": finished_job()}, crd_installed)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda _api_client: fake)
    api_client = SimpleNamespace(configuration=SimpleNamespace(host="http://api.example:6443"))
    with pytest.raises(show.ShowError) as exc:
        show.get_job(api_client, "missing", "demo")
    assert message in str(exc.value)
    if crd_installed:
        assert show.get_job(api_client, "digits-cpu", "demo")["status"]["phase"] == "Succeeded"


def test_status_cli_reports_an_unreachable_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 on localhost: nothing listens there, the connection is refused at once.
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        ),
        encoding="utf-8",
    )
    assert show.status_cli("digits-cpu", namespace="default", kubeconfig=str(cfg)) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnv2 status: cannot reach the Kubernetes API at http://127.0.0.1:9")
