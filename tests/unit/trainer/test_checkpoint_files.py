"""Checkpoint names, listing, keep-last-k, and skipping damaged files on resume."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mnv2_trainer import checkpoint as C

M = "mobilenet_v2_075"


def _touch(folder: Path, name: str, age: float = 0.0) -> Path:
    p = folder / name
    p.write_bytes(b"x")
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def test_names_are_mindcvs() -> None:
    assert C.checkpoint_name(M, 400, 625) == "mobilenet_v2_075-400_625.ckpt"
    assert C.best_name(M) == "mobilenet_v2_075_best.ckpt"
    assert C.parse_checkpoint_name("/x/mobilenet_v2_075-12_625.ckpt", M) == (12, 625)
    assert C.parse_checkpoint_name("mobilenet_v2_075_best.ckpt", M) is None
    assert C.parse_checkpoint_name("mobilenet_v2_075_96-12_625.ckpt", M) is None  # another model
    assert C.parse_checkpoint_name(".tmp-1-mobilenet_v2_075-12_625.ckpt", M) is None


def test_listing_newest_epoch_first_and_pruning(tmp_path: Path) -> None:
    for epoch in (1, 2, 10, 3):
        _touch(tmp_path, C.checkpoint_name(M, epoch, 7), age=100 - epoch)
    _touch(tmp_path, C.best_name(M))
    _touch(tmp_path, ".tmp-99-" + C.checkpoint_name(M, 11, 7))
    listed = [Path(p).name for p in C.list_checkpoints(str(tmp_path), M)]
    assert listed == [C.checkpoint_name(M, e, 7) for e in (10, 3, 2, 1)]  # numeric, not lexical
    removed = C.prune_checkpoints(str(tmp_path), M, keep=2)
    assert sorted(Path(p).name for p in removed) == sorted(C.checkpoint_name(M, e, 7) for e in (1, 2))
    assert (tmp_path / C.best_name(M)).exists()  # never pruned
    assert C.stale_checkpoints(str(tmp_path), M, keep=0) == []  # 0 keeps everything
    C.remove_temporaries(str(tmp_path))
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_folder_lists_nothing(tmp_path: Path) -> None:
    assert C.list_checkpoints(str(tmp_path / "nope"), M) == []
    assert C.find_resume_checkpoint(str(tmp_path / "nope"), M) is None


@pytest.mark.mindspore
def test_resume_skips_damaged_and_weights_only_files(tmp_path: Path) -> None:
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    net = nn.Dense(4, 3)
    opt = nn.Momentum(net.trainable_params(), learning_rate=[0.1, 0.2, 0.3], momentum=0.9)
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    cell(ms.Tensor(np.ones((2, 4), np.float32)), ms.Tensor(np.array([0, 1], np.int32)))
    good = C.save_checkpoint(
        cell,
        str(tmp_path / C.checkpoint_name(M, 1, 1)),
        {"epoch_num": 1, "step_num": 1, "mnv2_steps_per_epoch": 1},
    )
    data = Path(good).read_bytes()
    (tmp_path / C.checkpoint_name(M, 2, 1)).write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / C.checkpoint_name(M, 3, 1)).write_bytes(bytes(flipped))  # corrupt (CRC)
    ms.save_checkpoint(net, str(tmp_path / C.checkpoint_name(M, 4, 1)))  # weights only
    state = C.find_resume_checkpoint(str(tmp_path), M)
    assert state is not None and state.path == good
    assert (state.epoch, state.global_step, state.steps_per_epoch) == (1, 1, 1)
    assert "epoch_num" not in state.params and "moments.weight" in state.params
    with pytest.raises(C.InvalidCheckpoint, match="weights only"):
        C.read_train_state(str(tmp_path / C.checkpoint_name(M, 4, 1)))
    assert not list(tmp_path.glob(".tmp-*"))
