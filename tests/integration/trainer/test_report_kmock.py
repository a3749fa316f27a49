"""report.py patches a job's status on a Kubernetes API (kmock's KubernetesEmulator) and survives it going down.

The real path: `create_reporter` reads MNV2_JOB_NAME/MNV2_JOB_NAMESPACE, the patcher loads $KUBECONFIG
(the in-cluster config is absent here) and sends JSON merge patches to the status subresource with
the `kubernetes` client. The emulator merges patches like the API server's status subresource for
these plain fields, so the operator's keys written before must survive the trainer's patches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from mnv2_trainer import report

pytestmark = pytest.mark.cluster

NS, NAME = "team-a", "digits-1"


class Emulator:
    """kmock's KubernetesEmulator served on a random port from a background event loop."""

    def __init__(self) -> None:
        import kmock

        self._kmock = kmock
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.url = ""

    async def _serve(self) -> None:
        async with self._kmock.KubernetesEmulator() as k, self._kmock.Server(k):
            self.url = str(k.url).rstrip("/")
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Emulator:
        self._thread.start()
        assert self._ready.wait(20), "kmock did not start"
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[Emulator, Any, str]]:
    import kubernetes

    emu = Emulator().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": emu.url}}],
                "users": [{"name": "trainer", "user": {"token": "x"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "trainer"}}],
                "current-context": "kmock",
            }
        )
    )
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(
        report.GROUP,
        report.VERSION,
        NS,
        report.PLURAL,
        {
            "apiVersion": f"{report.GROUP}/{report.VERSION}",
            "kind": "MobileNetV2TrainingJob",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {"dataset": {"type": "digits"}},
            "status": {"phase": "Running", "restarts": 0},
        },
    )
    try:
        yield emu, custom, str(kubeconfig)
    finally:
        emu.stop()


def _record(epoch: int) -> dict:
    return report.metrics_line(
        epoch=epoch,
        total_epochs=3,
        step=epoch * 44,
        loss=1.0 / epoch,
        lr=0.01,
        top1=0.5 + epoch / 10,
        top5=0.99,
        val_loss=0.7,
        images_per_second=200.0,
        epoch_seconds=5.0,
        latest=f"/output/ckpt/m-{epoch}_44.ckpt",
        best="/output/ckpt/m_best.ckpt",
        best_top1=0.5 + epoch / 10,
        best_epoch=epoch,
    )


def test_patches_status_and_survives_the_api_going_down(api, tmp_path, monkeypatch, caplog) -> None:
    emu, custom, kubeconfig = api
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rep = report.create_reporter(
        str(tmp_path), 3, rank=0, env={"MNV2_JOB_NAME": NAME, "MNV2_JOB_NAMESPACE": NS}, min_interval=0.0
    )
    assert rep is not None and rep.sender is not None
    assert rep.step(epoch=1, step=10, loss=2.0, lr=0.005, images_per_second=150.0)
    rep.sender.flush(10)
    status = custom.get_namespaced_custom_object(report.GROUP, report.VERSION, NS, report.PLURAL, NAME)[
        "status"
    ]
    assert status["progress"]["step"] == 10 and status["progress"]["totalEpochs"] == 3
    rep.epoch_end(_record(1))
    rep.sender.flush(10)
    status = custom.get_namespaced_custom_object(report.GROUP, report.VERSION, NS, report.PLURAL, NAME)[
        "status"
    ]
    assert status["phase"] == "Running" and status["restarts"] == 0  # the operator's keys are kept
    assert status["progress"]["epoch"] == 1 and status["progress"]["step"] == 44
    assert status["metrics"] == {"top1": 0.6, "top5": 0.99, "bestTop1": 0.6, "bestEpoch": 1}
    assert status["checkpoints"]["latest"] == "/output/ckpt/m-1_44.ckpt"
    assert rep.sender.errors.failures == 0

    emu.stop()  # the API goes away mid-training
    with caplog.at_level(logging.DEBUG):
        for epoch in (2, 3):
            rep.epoch_end(_record(epoch))
            rep.sender.flush(30)
        rep.close(10)
    assert rep.sender.errors.failures == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line, also no urllib3 retry noise
    assert "job's status failed" in warnings[0].getMessage()
    lines = [json.loads(x) for x in (tmp_path / report.METRICS_FILE).read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]  # the file record never depends on the API
