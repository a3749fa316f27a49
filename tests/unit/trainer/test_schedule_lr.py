"""The per-step schedule equals MindCV's, and resume maps onto it by completed epochs (no MindSpore)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from mnv2_trainer.schedule import create_lr_schedule, resume_position


def _mindcv_dynamic_lr():
    """MindCV's pure-Python lr functions, loaded from the file (importing mindcv pulls in MindSpore)."""
    spec = importlib.util.find_spec("mindcv")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mindcv (the dev extra) is not installed: nothing to compare with")
    path = Path(next(iter(spec.submodule_search_locations))) / "scheduler" / "dynamic_lr.py"
    mod_spec = importlib.util.spec_from_file_location("_mindcv_dynamic_lr", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _mindcv_schedule(cfg: dict, steps_per_epoch: int) -> list[float]:
    """MindCV's create_scheduler for cosine_decay, per step (its own code paths)."""
    dyn = _mindcv_dynamic_lr()
    warm = []
    if cfg["warmup_epochs"] > 0:
        warm = dyn.linear_refined_lr(
            start_factor=cfg["warmup_factor"],
            end_factor=1.0,
            total_iters=cfg["warmup_epochs"],
            lr=cfg["lr"],
            steps_per_epoch=steps_per_epoch,
            epochs=cfg["warmup_epochs"],
        )
    main = dyn.cosine_decay_refined_lr(
        decay_epochs=cfg["decay_epochs"],
        eta_min=cfg["min_lr"],
        eta_max=cfg["lr"],
        steps_per_epoch=steps_per_epoch,
        epochs=cfg["epoch_size"] - cfg["warmup_epochs"],
    )
    return warm + main


RECIPE = {
    "scheduler": "cosine_decay",
    "lr": 0.3,
    "min_lr": 0.0,
    "warmup_epochs": 4,
    "warmup_factor": 0.0,
    "decay_epochs": 396,
    "epoch_size": 400,
}


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the mobilenet_v2_075 recipe, 625 steps/epoch is too long for a unit test: 7 steps
        {"epoch_size": 15, "decay_epochs": 14, "warmup_epochs": 1, "lr": 0.03},  # digits
        {"epoch_size": 10, "decay_epochs": 5, "warmup_epochs": 2, "warmup_factor": 0.1, "min_lr": 1e-4},
        {"epoch_size": 6, "decay_epochs": 20, "warmup_epochs": 0},  # decay longer than the run
    ],
)
def test_schedule_equals_mindcv(overrides: dict) -> None:
    cfg = dict(RECIPE, **overrides)
    ours = create_lr_schedule(cfg, steps_per_epoch=7)
    theirs = _mindcv_schedule(cfg, 7)
    assert len(ours) == cfg["epoch_size"] * 7 == len(theirs)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_recipe_shape() -> None:
    lrs = create_lr_schedule(RECIPE, steps_per_epoch=625)
    assert len(lrs) == 400 * 625
    assert lrs[0] == 0.0  # warmup from 0 (warmup_factor 0)
    assert lrs[4 * 625] == pytest.approx(0.3)  # peak right after the 4 warmup epochs
    assert lrs[-1] == pytest.approx(0.5 * 0.3 * (1 + math.cos(math.pi * (396 * 625 - 1) / 625 / 396)))
    assert all(a <= b for a, b in zip(lrs[: 4 * 625], lrs[1 : 4 * 625], strict=False))  # rising warmup
    assert all(a >= b for a, b in zip(lrs[4 * 625 :], lrs[4 * 625 + 1 :], strict=False))  # falling decay


def test_unsupported_scheduler_names_the_key() -> None:
    with pytest.raises(ValueError, match="scheduler"):
        create_lr_schedule(dict(RECIPE, scheduler="one_cycle"), 10)
    with pytest.raises(ValueError, match="lr_epoch_stair"):
        create_lr_schedule(dict(RECIPE, lr_epoch_stair=True), 10)


def test_resume_same_config_is_the_exact_step() -> None:
    pos = resume_position(completed_epochs=2, steps_per_epoch=44, num_epochs=15)
    assert (pos.start_epoch, pos.global_step, pos.finished) == (2, 88, False)


def test_resume_other_card_count_maps_by_epochs() -> None:
    """8 cards -> 4 cards: twice the steps per epoch; epoch 3 still starts where epoch 3 starts."""
    cfg = dict(RECIPE, epoch_size=10, decay_epochs=8, warmup_epochs=2)
    old = create_lr_schedule(cfg, steps_per_epoch=5)
    new = create_lr_schedule(cfg, steps_per_epoch=10)
    pos = resume_position(3, steps_per_epoch=10, num_epochs=10)
    assert pos.global_step == 30
    assert new[pos.global_step] == pytest.approx(old[3 * 5])  # same point of the schedule


def test_resume_other_epoch_count_uses_the_new_schedule() -> None:
    short = dict(RECIPE, epoch_size=2, decay_epochs=1, warmup_epochs=1, lr=0.1)
    longer = dict(short, epoch_size=3, decay_epochs=2)
    pos = resume_position(2, steps_per_epoch=4, num_epochs=3)
    lrs = create_lr_schedule(longer, 4)
    assert pos.global_step == 8
    # first step of epoch 3 in a 3-epoch schedule: halfway through the 2-epoch cosine
    assert lrs[pos.global_step] == pytest.approx(0.05 * (1 + math.cos(math.pi * 4 / 4 / 2)))
    assert lrs[pos.global_step] != create_lr_schedule(short, 4)[-1]


def test_resume_past_the_end_is_finished() -> None:
    pos = resume_position(5, steps_per_epoch=10, num_epochs=3)
    assert pos.finished and pos.start_epoch == 3 and pos.global_step == 30
