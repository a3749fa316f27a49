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


def test_listing_newest_epoch_first(tmp_path: Path) -> None:
    for epoch in (1, 2, 10, 3):
        _touch(tmp_path, C.checkpoint_name(M, epoch, 7), age=100 - epoch)
    _touch(tmp_path, C.best_name(M))
    _touch(tmp_path, ".tmp-99-" + C.checkpoint_name(M, 11, 7))
    listed = [Path(p).name for p in C.list_checkpoints(str(tmp_path), M)]
    assert listed == [C.checkpoint_name(M, e, 7) for e in (10, 3, 2, 1)]  # numeric, not lexical
    assert C.prune_checkpoints(str(tmp_path), M, keep=0) == []  # 0 keeps everything, unread
    assert len(list(tmp_path.glob("*.ckpt"))) == 6  # 4 epochs, best, a temporary
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


def _train_cell() -> object:
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    net = nn.Dense(4, 3)
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    cell(ms.Tensor(np.ones((2, 4), np.float32)), ms.Tensor(np.array([0, 1], np.int32)))
    return cell


def _save(cell: object, folder: Path, epoch: int, age: float) -> Path:
    path = Path(C.save_checkpoint(cell, str(folder / C.checkpoint_name(M, epoch, 1)), {"epoch_num": epoch}))
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":  # one byte inside the tensor data: only the CRC notices
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(b"")


@pytest.mark.mindspore
def test_pruning_never_costs_a_valid_checkpoint_for_damaged_newer_ones(tmp_path: Path) -> None:
    cell = _train_cell()
    paths = {epoch: _save(cell, tmp_path, epoch, age=100 - epoch) for epoch in range(1, 6)}
    best = Path(C.save_checkpoint(cell, str(tmp_path / C.best_name(M)), {"epoch_num": 5}))
    # The two newest are damaged after the fact (as a full disk or a bad copy would).
    _damage(paths[5], "flip")
    _damage(paths[4], "truncate")
    removed = C.prune_checkpoints(str(tmp_path), M, keep=2)
    # Epochs 3 and 2 are the newest valid ones and stay; only epoch 1 is deleted.
    assert [Path(p).name for p in removed] == [paths[1].name]
    assert [Path(p).name for p in C.list_checkpoints(str(tmp_path), M)] == [paths[3].name, paths[2].name]
    # The damaged files are set aside, not deleted, and no longer listed.
    assert (tmp_path / (paths[5].name + ".corrupt")).exists()
    assert (tmp_path / (paths[4].name + ".corrupt")).exists()
    assert best.exists()
    state = C.find_resume_checkpoint(str(tmp_path), M)
    assert state is not None and state.epoch == 3


@pytest.mark.mindspore
def test_pruning_sets_aside_a_second_damaged_file_of_the_same_name(tmp_path: Path) -> None:
    cell = _train_cell()
    first = _save(cell, tmp_path, 2, age=10)
    _damage(first, "empty")
    assert C.prune_checkpoints(str(tmp_path), M, keep=1) == []
    again = _save(cell, tmp_path, 2, age=5)
    _damage(again, "flip")
    assert C.prune_checkpoints(str(tmp_path), M, keep=1) == []
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [first.name + ".1.corrupt", first.name + ".corrupt"]


@pytest.mark.mindspore
def test_pruning_keeps_readable_weights_only_files_out_of_the_count(tmp_path: Path) -> None:
    import mindspore as ms
    from mindspore import nn

    cell = _train_cell()
    old = [_save(cell, tmp_path, epoch, age=100 - epoch) for epoch in (1, 2)]
    weights = tmp_path / C.checkpoint_name(M, 3, 1)
    ms.save_checkpoint(nn.Dense(4, 3), str(weights))  # someone's weights, not a resume point
    assert C.prune_checkpoints(str(tmp_path), M, keep=2) == []
    assert weights.exists() and all(p.exists() for p in old)


@pytest.mark.mindspore
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("flip", "corrupt: its CRC does not match its content"),
        ("truncate", "corrupt: truncated or not a MindSpore checkpoint"),
        ("empty", "corrupt: it holds no parameters"),
    ],
)
def test_damage_is_reported_as_corrupt(tmp_path: Path, how: str, reason: str) -> None:
    path = _save(_train_cell(), tmp_path, 1, age=0)
    _damage(path, how)
    with pytest.raises(C.CorruptCheckpoint) as info:
        C.read_train_state(str(path))
    assert reason in str(info.value) and "permission" not in str(info.value)


@pytest.mark.mindspore
def test_an_unreadable_file_is_not_called_corrupt(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    path = _save(_train_cell(), tmp_path, 1, age=0)
    path.chmod(0)
    try:
        with pytest.raises(C.InvalidCheckpoint, match="cannot be read") as info:
            C.read_train_state(str(path))
        assert not isinstance(info.value, C.CorruptCheckpoint)
        assert C.prune_checkpoints(str(tmp_path), M, keep=1) == [] and path.exists()  # not set aside
    finally:
        path.chmod(0o644)


def test_pruning_with_a_run_s_memory_reads_each_unchanged_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's VerifiedCheckpoints spares re-reading valid files at every epoch end; a changed file,
    another run (another memory) and a call without memory read again."""
    reads: list[str] = []
    monkeypatch.setattr(C, "read_train_state", lambda path: reads.append(os.path.basename(path)))
    files = [_touch(tmp_path, C.checkpoint_name(M, epoch, 7), age=100 - epoch) for epoch in (1, 2, 3)]
    verified = C.VerifiedCheckpoints()
    assert C.prune_checkpoints(str(tmp_path), M, keep=3, verified=verified) == []
    assert C.prune_checkpoints(str(tmp_path), M, keep=3, verified=verified) == []
    assert sorted(reads) == sorted(f.name for f in files)  # each read once
    files[2].write_bytes(b"xy")  # changed: read again
    removed = C.prune_checkpoints(str(tmp_path), M, keep=2, verified=verified)
    assert reads[3:] == [files[2].name] and removed == [str(files[0])]
    reads.clear()
    C.prune_checkpoints(str(tmp_path), M, keep=2, verified=C.VerifiedCheckpoints())
    C.prune_checkpoints(str(tmp_path), M, keep=2)
    assert len(reads) == 4  # a fresh memory and no memory read both files
