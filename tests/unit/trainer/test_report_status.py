"""Reporting: metrics.jsonl lines, status bodies, throttling, once-only failure logs (no MindSpore, no API)."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from mnv2_trainer import report


def _record(epoch: int = 3, **kw) -> dict:
    base = dict(
        epoch=epoch,
        total_epochs=15,
        step=epoch * 44,
        loss=0.9,
        lr=0.0123,
        top1=0.95,
        top5=1.0,
        val_loss=0.6,
        images_per_second=250.0,
        epoch_seconds=5.5,
        latest=f"/out/m-{epoch}_44.ckpt",
        best="/out/m_best.ckpt",
        best_top1=0.96,
        best_epoch=2,
        time_="2026-11-27T19:00:00Z",
    )
    base.update(kw)
    return report.metrics_line(**base)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_metrics_line_fields_and_json_safety() -> None:
    rec = _record(loss=float("nan"), top1=None)
    assert rec["loss"] is None and rec["top1"] is None  # JSON has no NaN
    json.dumps(rec, allow_nan=False)
    for key in ("epoch", "step", "loss", "lr", "top1", "top5", "images_per_second", "checkpoint", "time"):
        assert key in rec


def test_epoch_body_matches_the_contract() -> None:
    body = report.epoch_body(_record())
    assert set(body) == {"progress", "metrics", "checkpoints"}
    assert body["progress"] == {
        "epoch": 3,
        "totalEpochs": 15,
        "step": 132,
        "loss": 0.9,
        "lr": 0.0123,
        "imagesPerSecond": 250.0,
        "updatedAt": "2026-11-27T19:00:00Z",
    }
    assert body["metrics"] == {"top1": 0.95, "top5": 1.0, "bestTop1": 0.96, "bestEpoch": 2}
    assert body["checkpoints"] == {"latest": "/out/m-3_44.ckpt", "best": "/out/m_best.ckpt"}


def test_epoch_body_without_validation_sends_no_metrics() -> None:
    body = report.epoch_body(_record(top1=None, top5=None, best_top1=None, best_epoch=None, best=None))
    assert "metrics" not in body
    assert body["checkpoints"] == {"latest": "/out/m-3_44.ckpt"}


def test_throttle() -> None:
    clock = FakeClock()
    t = report.Throttle(5.0, clock)
    assert t.ready()
    clock.now += 4.9
    assert not t.ready()
    assert t.ready(force=True)  # epoch ends always go
    clock.now += 4.9
    assert not t.ready()
    clock.now += 0.2
    assert t.ready()


def test_merge_keeps_newest_values() -> None:
    pending = report.merge({}, {"progress": {"step": 1, "loss": 2.0}})
    report.merge(pending, {"progress": {"step": 2}, "metrics": {"top1": 0.5}})
    assert pending == {"progress": {"step": 2, "loss": 2.0}, "metrics": {"top1": 0.5}}


def test_once_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test-once")
    once = report.OnceLogger(log, "reporting")
    with caplog.at_level(logging.DEBUG, logger="test-once"):
        for _ in range(5):
            once.failed(ConnectionError("refused"))
        once.succeeded()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused" in warnings[0].getMessage()
    assert once.failures == 5
    assert any("works again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_reporter_throttles_steps_and_always_sends_epochs(tmp_path) -> None:
    sent: list[dict] = []
    gate = threading.Event()
    gate.set()

    def patch(body: dict) -> None:
        gate.wait(5)
        sent.append(body)

    clock = FakeClock()
    rep = report.Reporter(str(tmp_path), 15, report.StatusSender(patch), min_interval=5.0, clock=clock)
    queued = []
    for step in range(1, 101):  # a fast run: 100 steps within 1 s
        clock.now += 0.01
        queued.append(rep.step(epoch=1, step=step, loss=1.0, lr=0.1, images_per_second=300.0))
    assert queued.count(True) == 1
    rep.epoch_end(_record(epoch=1))
    rep.close(5)
    assert len(sent) <= 2 and sent[-1]["progress"]["epoch"] == 1 and "metrics" in sent[-1]
    lines = (tmp_path / report.METRICS_FILE).read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]


def test_reporter_coalesces_while_a_patch_is_in_flight(tmp_path) -> None:
    sent: list[dict] = []
    gate = threading.Event()

    def patch(body: dict) -> None:
        gate.wait(5)
        sent.append(body)

    sender = report.StatusSender(patch)
    rep = report.Reporter(str(tmp_path), 15, sender, min_interval=0.0)
    for epoch in range(1, 6):
        rep.epoch_end(_record(epoch=epoch))
    gate.set()
    rep.close(5)
    # the first patch was in flight; the next four merged into one carrying the newest values
    assert 2 <= len(sent) <= 3
    assert sent[-1]["progress"]["epoch"] == 5
    assert len((tmp_path / report.METRICS_FILE).read_text().splitlines()) == 5


def test_failing_api_never_raises_and_logs_once(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def patch(body: dict) -> None:
        calls.append(body)
        raise ConnectionRefusedError("API down")

    rep = report.Reporter(str(tmp_path), 3, report.StatusSender(patch), min_interval=0.0)
    with caplog.at_level(logging.DEBUG):
        for epoch in range(1, 4):
            rep.epoch_end(_record(epoch=epoch))
            rep.sender.flush(5)
        rep.close(5)
    assert len(calls) == 3
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "API down" in r.getMessage()]
    assert len(warnings) == 1
    assert len((tmp_path / report.METRICS_FILE).read_text().splitlines()) == 3


def test_create_reporter_by_rank_and_env(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    assert report.create_reporter(str(tmp_path), 3, rank=1, env={"MNV2_JOB_NAME": "j"}) is None
    rep = report.create_reporter(str(tmp_path), 3, rank=0, env={})
    assert rep is not None and rep.sender is None  # metrics.jsonl only
    with caplog.at_level(logging.WARNING):
        rep = report.create_reporter(str(tmp_path), 3, rank=0, env={"MNV2_JOB_NAME": "j"})
    assert rep.sender is None and "MNV2_JOB_NAMESPACE" in caplog.text
    rep = report.create_reporter(
        str(tmp_path), 3, env={"MNV2_JOB_NAME": "j", "MNV2_JOB_NAMESPACE": "n"}, patch=lambda b: None
    )
    assert rep.sender is not None
    rep.close(1)
