"""Where a run starts: the checkpoint to resume from, and loading it into the train cell.

``resume`` (config key of ours, default ``auto``) picks the newest checkpoint in ``ckpt_save_dir``
that loads and holds optimizer state; ``never`` starts from scratch; a path resumes from that file.
MindCV's ``ckpt_path`` + ``resume_opt`` is honoured when ``auto`` finds nothing. The schedule position
is mapped by completed epochs (:func:`mnv2_trainer.schedule.resume_position`).
"""

from __future__ import annotations

import os
from typing import Any

from . import checkpoint as ckpt_lib
from .errors import TrainError


def create_resume_state(cfg: dict[str, Any], model_name: str) -> ckpt_lib.TrainState | None:
    """The checkpoint to resume from according to ``resume`` (and MindCV's ``ckpt_path``+``resume_opt``)."""
    resume = str(cfg.get("resume", "auto") or "auto")
    save_dir = str(cfg.get("ckpt_save_dir", "./ckpt"))
    if resume == "never":
        return None
    if resume == "auto":
        state = ckpt_lib.find_resume_checkpoint(save_dir, model_name)
        if state is None and cfg.get("resume_opt") and cfg.get("ckpt_path"):
            return _read_strict(str(cfg["ckpt_path"]), "ckpt_path (with resume_opt)")
        return state
    return _read_strict(resume, "resume")


def _read_strict(path: str, key: str) -> ckpt_lib.TrainState:
    if not os.path.isfile(path):
        raise TrainError(f"config key {key}: checkpoint {path!r} does not exist")
    try:
        return ckpt_lib.read_train_state(path)
    except ckpt_lib.InvalidCheckpoint as exc:
        raise TrainError(f"config key {key}: {exc}") from exc


def load_train_state(train_cell: Any, optimizer: Any, state: ckpt_lib.TrainState, global_step: int) -> None:
    """Load network weights and optimizer state, then place the optimizer at ``global_step``.

    The stored ``learning_rate`` list and ``momentum`` are dropped: they come from the new config.

    Raises:
        TrainError: when network or optimizer parameters are missing from the checkpoint.
    """
    import mindspore as ms
    import numpy as np

    # Hyperparameters come from the new config, not the checkpoint: the lr list is rebuilt and the
    # momentum coefficient may have been changed on purpose.
    derived = ("learning_rate", "momentum")
    params = {k: v for k, v in state.params.items() if k not in derived}
    not_loaded, _unused = ms.load_param_into_net(train_cell, params, strict_load=True)
    # Loss-scale bookkeeping of a TrainOneStepWithLossScaleCell may be absent in older files.
    missing = [n for n in not_loaded if n not in (*derived, "scale_sense", "global_step")]
    if missing:
        raise TrainError(
            f"checkpoint {state.path} does not fit this model/optimizer: {len(missing)} parameters missing "
            f"(e.g. {', '.join(missing[:4])}); was it written for another model or optimizer? "
            "Use another ckpt_save_dir or --resume never"
        )
    optimizer.global_step.set_data(ms.Tensor(np.array([global_step], np.int32)))
