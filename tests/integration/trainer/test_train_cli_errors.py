"""The entry points fail with a non-zero exit code and a message naming the fix, and keep checkpoints.

Input errors exit 2 and write the reason to the termination-message file (`MNV2_TERMINATION_LOG`),
marked as not worth a retry.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mnv2_trainer import termination
from trainer_cli import explain, run_cli, train, write_config


@pytest.fixture
def term_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    path.touch()
    monkeypatch.setenv(termination.ENV, str(path))  # the child processes inherit it
    return path


def test_unknown_flag_exits_2_naming_the_key(tmp_path: Path, term_log: Path) -> None:
    proc, _ = train(write_config(tmp_path / "c.yaml"), tmp_path / "data", tmp_path / "out", "--lrr", "0.1")
    assert proc.returncode == 2, explain(proc)
    assert "--lrr" in proc.stderr and "'lr'" in proc.stderr
    assert term_log.read_text().startswith(termination.PREFIX + "configuration error:")


@pytest.mark.slow
@pytest.mark.mindspore
def test_input_error_exits_2_and_keeps_checkpoints(tmp_path: Path, term_log: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    kept = out / "mobilenet_v2_035_96-3_44.ckpt"
    kept.write_bytes(b"not really a checkpoint")
    config = write_config(tmp_path / "c.yaml", dataset="imagefolder")
    proc, _ = train(config, tmp_path / "missing", out)
    assert proc.returncode == termination.EXIT_INVALID_INPUT, explain(proc)
    assert "missing/train" in proc.stdout and "ImageNet layout" in proc.stdout
    reason = term_log.read_text()
    assert reason.startswith(termination.PREFIX) and "missing/train" in reason and reason.count("\n") == 1
    assert "skipping checkpoint" in proc.stdout  # the damaged file was not resumed from ...
    assert kept.read_bytes() == b"not really a checkpoint"  # ... and not deleted either


@pytest.mark.slow
@pytest.mark.mindspore
def test_validate_rejects_a_wrong_checkpoint_path(tmp_path: Path, term_log: Path) -> None:
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
    assert proc.returncode == termination.EXIT_INVALID_INPUT, explain(proc)
    assert "nope.ckpt" in proc.stdout + proc.stderr  # never numbers from random weights
    assert term_log.read_text().startswith(termination.PREFIX) and "nope.ckpt" in term_log.read_text()


@pytest.mark.mindspore
def test_distribute_without_msrun_says_how_to_launch(tmp_path: Path, term_log: Path) -> None:
    """The recipes set distribute: True; started without msrun, one line says what to do (MindSpore's
    own error is a long traceback about mpirun)."""
    config = write_config(tmp_path / "c.yaml", distribute=True)
    proc, _ = train(config, tmp_path / "digits", tmp_path / "out", timeout=300)
    assert proc.returncode == termination.EXIT_INVALID_INPUT, explain(proc)
    said = proc.stdout + proc.stderr
    assert "not started by msrun" in said and "--distribute False" in said, explain(proc)
    assert "mpirun" not in said and "Traceback" not in said, explain(proc)
    reason = term_log.read_text()
    assert "launch it with `msrun" in reason and reason.count("\n") == 1


@pytest.mark.slow
@pytest.mark.mindspore
def test_more_data_workers_than_cores_are_lowered_with_one_line(tmp_path: Path) -> None:
    """A recipe for a big server (num_parallel_workers 8) runs on a small machine: MindSpore refuses
    more workers than cores, so the trainer lowers the count and says so once."""
    import os

    too_many = (os.cpu_count() or 1) + 6
    config = write_config(tmp_path / "c.yaml", num_parallel_workers=too_many, epoch_size=1, decay_epochs=1)
    proc, _ = train(config, tmp_path / "digits", tmp_path / "out", "--num_samples", "256")
    assert proc.returncode == 0, explain(proc)
    said = proc.stdout + proc.stderr
    assert said.count(f"num_parallel_workers {too_many} is more than the") == 1, explain(proc)
    assert "exceeds the boundary" not in said
