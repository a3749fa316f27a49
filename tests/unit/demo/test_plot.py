"""`mnv2 plot`: metrics parsing, the curves, the PNG and the error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from mnv2_demo import plot
from mnv2_operator.show import ShowError

FINISHED = {
    "status": {
        "checkpoints": {
            "latest": "/out/ckpt/mobilenet_v2_035-15_45.ckpt",
            "best": "/out/ckpt/mobilenet_v2_035_best.ckpt",
        },
    },
}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n", encoding="utf-8")
    return path


def test_curves_keep_the_last_record_of_each_epoch(tmp_path: Path) -> None:
    # A run killed after epoch 3 and resumed from its epoch-2 checkpoint writes epoch 3 again.
    records = [
        {"epoch": 1, "loss": 2.0, "top1": 0.3, "top5": 0.7},
        {"epoch": 2, "loss": 1.5, "top1": 0.5, "top5": 0.9},
        {"epoch": 3, "loss": 1.4, "top1": 0.55, "top5": 0.92},
        {"epoch": 3, "loss": 1.2, "top1": 0.6, "top5": 0.93},
        {"epoch": 4, "train_loss": 1.0, "val_top1": 0.7},
        {"note": "no epoch: ignored"},
    ]
    series = plot.curves(plot.read_metrics(write_jsonl(tmp_path / "metrics.jsonl", records)))
    assert series["epoch"] == [1, 2, 3, 4]
    assert series["loss"] == [2.0, 1.5, 1.2, 1.0]
    assert series["top1"] == [0.3, 0.5, 0.6, 0.7]
    assert series["top5"][:3] == [0.7, 0.9, 0.93] and math.isnan(series["top5"][3])


def test_read_metrics_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "loss": \n', encoding="utf-8")
    with pytest.raises(ShowError, match=r"metrics.jsonl:2: not JSON"):
        plot.read_metrics(path)
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ShowError, match=r":1: expected a JSON object per line, got list"):
        plot.read_metrics(path)
    with pytest.raises(ShowError, match="no such metrics file"):
        plot.read_metrics(tmp_path / "missing.jsonl")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    series = {"epoch": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "top1": [0.4, 0.8, 0.9], "top5": [0.8, 0.95, 1.0]}
    out = plot.plot_curves(series, tmp_path / "sub" / "curves.png", title="demo/digits-cpu")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 400)


def test_plot_without_epochs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ShowError, match="no epoch records"):
        plot.plot_curves({"epoch": [], "loss": [], "top1": [], "top5": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_cli_from_a_metrics_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(
        tmp_path / "metrics.jsonl", [{"epoch": e, "loss": 1 / e, "top1": e / 4} for e in (1, 2, 3)]
    )
    assert plot.plot_cli(str(path)) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert plot.plot_cli(str(tmp_path / "nope.jsonl")) == 1
    assert "no such metrics file" in capsys.readouterr().err


def test_metrics_path_is_next_to_the_checkpoints() -> None:
    assert plot.metrics_path_from_status(FINISHED) == Path("/out/ckpt/metrics.jsonl")
    assert plot.metrics_path_from_status({"status": {"checkpoints": {"latest": None}}}) is None
