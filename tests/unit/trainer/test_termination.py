"""The trainer's termination message: written on input errors only, one bounded line, first writer wins."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from mnv2_trainer import termination, train, validate


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    path.touch()  # the kubelet creates it empty
    monkeypatch.setenv(termination.ENV, str(path))
    return path


def test_message_is_one_bounded_line_with_the_marker() -> None:
    text = termination.format_message("config key data_dir:\n  '/data/train' does not exist\n")
    assert text == termination.PREFIX + "config key data_dir: '/data/train' does not exist"
    long = termination.format_message("é" * 5000)
    assert long.startswith(termination.PREFIX) and long.endswith("...")
    assert len(long.encode()) <= termination.MAX_BYTES < 4096 and "\n" not in long


def test_first_writer_wins(log: Path) -> None:
    assert termination.report_invalid_input("first")
    assert not termination.report_invalid_input("second")
    assert log.read_text() == termination.PREFIX + "first\n"


def _write(path: str, i: int) -> bool:
    return termination.write_termination_message(termination.format_message(f"rank {i} " + "x" * 900), path)


def test_concurrent_ranks_leave_one_whole_line(log: Path) -> None:
    with multiprocessing.get_context("fork").Pool(4) as pool:
        wrote = pool.starmap(_write, [(str(log), i) for i in range(8)])
    assert wrote.count(True) == 1
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(termination.PREFIX + "rank ")


def test_no_file_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(termination.ENV, raising=False)
    monkeypatch.setattr(termination, "DEFAULT_PATH", str(tmp_path / "absent"))
    assert termination.termination_log_path() is None
    assert not termination.report_invalid_input("nowhere to write")
    assert not (tmp_path / "absent").exists()
    # an unwritable target is not an error either
    assert not termination.write_termination_message("x", str(tmp_path / "no" / "such" / "dir" / "f"))


def test_train_main_writes_the_reason_on_input_errors(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(cfg: dict[str, Any]) -> None:
        raise FileNotFoundError("dataset folder '/data/train' does not exist: mount an ImageNet layout")

    monkeypatch.setattr(train, "run", bad)
    assert train.main(["--dataset", "digits"]) == termination.EXIT_INVALID_INPUT
    assert (
        log.read_text()
        == termination.PREFIX + "dataset folder '/data/train' does not exist: mount an ImageNet layout\n"
    )


def test_train_main_writes_on_config_errors(log: Path) -> None:
    assert train.main(["--lrr", "0.1"]) == termination.EXIT_INVALID_INPUT
    text = log.read_text()
    assert text.startswith(termination.PREFIX + "configuration error:") and "--lrr" in text


def test_train_main_crash_is_retryable_and_silent(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(cfg: dict[str, Any]) -> None:
        raise RuntimeError("Distributed communication timed out")

    monkeypatch.setattr(train, "run", crash)
    assert train.main(["--dataset", "digits"]) == 1
    assert log.read_text() == ""  # the kubelet falls back to the log tail


def test_train_main_success_writes_nothing(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "run", lambda cfg: None)
    assert train.main(["--dataset", "digits"]) == 0
    assert log.read_text() == ""


def test_validate_main_classifies_like_train(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(cfg: dict[str, Any]) -> None:
        raise train.TrainError("--ckpt_path is required: the checkpoint to validate")

    monkeypatch.setattr(validate, "run", bad)
    assert validate.main(["--dataset", "digits"]) == termination.EXIT_INVALID_INPUT
    assert "--ckpt_path is required" in log.read_text()
    log.write_text("")

    def crash(cfg: dict[str, Any]) -> None:
        raise RuntimeError("device lost")

    monkeypatch.setattr(validate, "run", crash)
    assert validate.main(["--dataset", "digits"]) == 1
    assert log.read_text() == ""
