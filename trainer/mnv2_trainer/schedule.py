"""Per-step learning-rate schedule (MindCV's) and the mapping of a resumed run onto it.

Pure Python: no MindSpore, so the operator side and fast unit tests can use it.

The schedule is MindCV 0.3.0's ``create_scheduler`` for ``lr_epoch_stair: False`` (one value per
step): a linear warmup from ``lr * warmup_factor`` to ``lr`` over ``warmup_epochs``, then for
``cosine_decay`` a cosine from ``lr`` to ``min_lr`` over ``decay_epochs`` (after which it stays at
``min_lr``), computed for ``num_epochs * steps_per_epoch`` steps. The optimizer indexes the list by
its ``global_step``, so the learning rate of a step depends only on the global step.

Resume mapping. A checkpoint records the number of completed epochs ``k``. A resumed run, whatever
its new ``epoch_size`` or card count, rebuilds the schedule from its own config and its own steps
per epoch, starts at epoch ``k + 1`` and sets the global step to ``k * steps_per_epoch_new``. The
position is therefore mapped by *completed epochs*: the learning rate of the first resumed step is
the one the new schedule gives at the start of epoch ``k + 1``. With the same card count and batch
size this is exactly the interrupted run's global step. With a different card count the images seen
per epoch stay the same (one pass over the data), so "epochs done" is also "images seen / dataset
size"; mapping by raw step count would instead jump the schedule forward or back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUPPORTED_SCHEDULERS = ("cosine_decay", "warmup_cosine_decay", "constant")


def warmup_lrs(lr: float, warmup_factor: float, warmup_epochs: int, steps_per_epoch: int) -> list[float]:
    """MindCV's ``linear_refined_lr`` warmup: per step from ``lr*warmup_factor`` towards ``lr``."""
    if warmup_epochs <= 0:
        return []
    start = lr * warmup_factor
    steps = steps_per_epoch * warmup_epochs
    return [
        start + min(i / steps_per_epoch, warmup_epochs) / warmup_epochs * (lr - start) for i in range(steps)
    ]


def cosine_lrs(
    lr: float,
    min_lr: float,
    decay_epochs: int,
    steps_per_epoch: int,
    epochs: int,
    num_cycles: int = 1,
    cycle_decay: float = 1.0,
) -> list[float]:
    """MindCV's ``cosine_decay_refined_lr``: per-step cosine over ``decay_epochs``, then ``min_lr``."""
    total = steps_per_epoch * epochs
    out: list[float] = []
    for c in range(num_cycles):
        delta = 0.5 * (lr * cycle_decay**c - min_lr)
        for i in range(steps_per_epoch * decay_epochs):
            if len(out) >= total:
                break
            t = min(i / steps_per_epoch, decay_epochs)
            out.append(min_lr + delta * (1.0 + math.cos(math.pi * t / decay_epochs)))
    if epochs > num_cycles * decay_epochs:
        out += [min_lr] * ((epochs - num_cycles * decay_epochs) * steps_per_epoch)
    return out


def create_lr_schedule(cfg: dict, steps_per_epoch: int, num_epochs: int | None = None) -> list[float]:
    """The learning rate of every training step, from the config's MindCV scheduler keys.

    Args:
        cfg: uses ``scheduler``, ``lr``, ``min_lr``, ``warmup_epochs``, ``warmup_factor``,
            ``decay_epochs``, ``num_cycles``, ``cycle_decay``, ``lr_epoch_stair`` and ``epoch_size``.
        steps_per_epoch: optimizer steps per epoch on this run's card count.
        num_epochs: defaults to ``epoch_size``.

    Returns:
        ``num_epochs * steps_per_epoch`` floats (MindCV returns exactly this length for every
        supported scheduler and valid config).

    Raises:
        ValueError: naming the config key that this trainer does not support.
    """
    name = str(cfg.get("scheduler", "cosine_decay"))
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"config key scheduler: {name!r} is not supported; use one of {', '.join(SUPPORTED_SCHEDULERS)}"
        )
    if cfg.get("lr_epoch_stair"):
        raise ValueError("config key lr_epoch_stair: only False (per-step schedule) is supported")
    epochs = int(cfg.get("epoch_size", 200) if num_epochs is None else num_epochs)
    lr = float(cfg.get("lr", 0.001))
    warmup_epochs = int(cfg.get("warmup_epochs", 0) or 0)
    lrs = warmup_lrs(lr, float(cfg.get("warmup_factor", 0.0) or 0.0), warmup_epochs, steps_per_epoch)
    main_epochs = epochs - warmup_epochs
    if name == "constant":
        lrs += [lr] * (steps_per_epoch * main_epochs)
    else:
        decay_epochs = int(cfg.get("decay_epochs", main_epochs) or main_epochs)
        lrs += cosine_lrs(
            lr,
            float(cfg.get("min_lr", 0.0) or 0.0),
            decay_epochs,
            steps_per_epoch,
            main_epochs,
            int(cfg.get("num_cycles", 1) or 1),
            float(cfg.get("cycle_decay", 1.0) or 1.0),
        )
    # MindCV pads nothing: a warmup longer than the run gives a longer list; trim to the run.
    total = epochs * steps_per_epoch
    lrs = lrs[:total]
    if len(lrs) < total:  # decay_epochs shorter than MindCV expects: hold the last value
        lrs += [lrs[-1] if lrs else lr] * (total - len(lrs))
    return lrs


@dataclass(frozen=True)
class ResumePosition:
    """Where a resumed run starts.

    Attributes:
        start_epoch: completed epochs; training continues with epoch ``start_epoch + 1``.
        global_step: optimizer step of the first resumed step (index into the new schedule).
        finished: the checkpoint already covers all epochs of the new config.
    """

    start_epoch: int
    global_step: int
    finished: bool


def resume_position(completed_epochs: int, steps_per_epoch: int, num_epochs: int) -> ResumePosition:
    """Map a checkpoint's completed epochs onto the new run (see the module docstring).

    Args:
        completed_epochs: ``epoch_num`` stored in the checkpoint.
        steps_per_epoch: steps per epoch of the new run.
        num_epochs: ``epoch_size`` of the new run.
    """
    if completed_epochs < 0:
        raise ValueError(f"completed_epochs must be >= 0, got {completed_epochs}")
    start = min(completed_epochs, num_epochs)
    return ResumePosition(start, start * steps_per_epoch, completed_epochs >= num_epochs)
