"""The entry points fail with a non-zero exit code and a message naming the fix, and keep checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from trainer_cli import explain, run_cli, train, write_config


def test_unknown_flag_exits_2_naming_the_key(tmp_path: Path) -> None:
    proc, _ = train(write_config(tmp_path / "c.yaml"), tmp_path / "data", tmp_path / "out", "--lrr", "0.1")
    assert proc.returncode == 2, explain(proc)
    assert "--lrr" in proc.stderr and "'lr'" in proc.stderr


@pytest.mark.slow
@pytest.mark.mindspore
def test_failure_exits_1_and_keeps_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    kept = out / "mobilenet_v2_035_96-3_44.ckpt"
    kept.write_bytes(b"not really a checkpoint")
    config = write_config(tmp_path / "c.yaml", dataset="imagefolder")
    proc, _ = train(config, tmp_path / "missing", out)
    assert proc.returncode == 1, explain(proc)
    assert "missing/train" in proc.stdout and "ImageNet layout" in proc.stdout
    assert "skipping checkpoint" in proc.stdout  # the damaged file was not resumed from ...
    assert kept.read_bytes() == b"not really a checkpoint"  # ... and not deleted either


@pytest.mark.slow
@pytest.mark.mindspore
def test_validate_rejects_a_wrong_checkpoint_path(tmp_path: Path) -> None:
    proc, _ = run_cli(
        [
            sys.executable,
            "-m",
            "mnv2_trainer.validate",
            "-c",
            str(write_config(tmp_path / "c.yaml")),
            "--data_dir",
            str(tmp_path / "digits"),
            "--ckpt_path",
            str(tmp_path / "nope.ckpt"),
        ],
        timeout=300,
    )
    assert proc.returncode == 1, explain(proc)
    assert "nope.ckpt" in proc.stdout + proc.stderr  # never numbers from random weights
