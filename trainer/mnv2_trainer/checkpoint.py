"""Checkpoints: MindCV's names, atomic writes, keep-last-k, and finding the newest valid one.

Names are MindCV's: ``{model}-{epoch}_{steps}.ckpt`` (``steps`` = steps per epoch, as MindCV's
``ModelCheckpoint`` writes them) and ``{model}_best.ckpt``. A checkpoint holds the train network:
the network parameters under MindCV's names, the optimizer state (``moments.*``, ``global_step``,
``learning_rate``, ``momentum``) and our bookkeeping (:data:`META_KEYS`). MindCV and
``model.load_weights`` load such files as they are.

Writes go to a hidden temporary file in the same folder and are renamed into place, so a crash
never leaves a truncated file under a checkpoint name; resume still verifies each candidate,
newest first, because files can also be damaged after the fact (full disk, copy, bit rot).

The name handling and listing are pure; MindSpore is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

#: Bookkeeping stored next to the parameters. ``epoch_num``/``step_num`` are MindCV's own keys
#: (``ModelCheckpoint(append_info=["epoch_num", "step_num"])``); ``step_num`` is the global step.
#: ``mnv2_best_top1``/``mnv2_best_epoch`` carry the best validation so far (-1/0: none yet), so that a
#: resumed run does not overwrite ``{model}_best.ckpt`` with a worse model.
META_KEYS = (
    "epoch_num",
    "step_num",
    "mnv2_steps_per_epoch",
    "mnv2_global_batch_size",
    "mnv2_num_epochs",
    "mnv2_best_top1",
    "mnv2_best_epoch",
)
_TMP_PREFIX = ".tmp-"


def checkpoint_name(model: str, epoch: int, steps_per_epoch: int) -> str:
    """``{model}-{epoch}_{steps}.ckpt``, MindCV's name for the checkpoint after ``epoch``."""
    return f"{model}-{epoch}_{steps_per_epoch}.ckpt"


def best_name(model: str) -> str:
    """``{model}_best.ckpt``."""
    return f"{model}_best.ckpt"


def parse_checkpoint_name(filename: str, model: str) -> tuple[int, int] | None:
    """``(epoch, steps)`` of an epoch checkpoint name of ``model``, else ``None``."""
    m = re.fullmatch(re.escape(model) + r"-(\d+)_(\d+)\.ckpt", os.path.basename(filename))
    return (int(m.group(1)), int(m.group(2))) if m else None


def list_checkpoints(folder: str, model: str) -> list[str]:
    """Epoch checkpoints of ``model`` in ``folder``, newest (highest epoch, then newest file) first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for entry in os.scandir(folder):
        parsed = parse_checkpoint_name(entry.name, model)
        if parsed and entry.is_file():
            found.append((parsed[0], entry.stat().st_mtime, entry.path))
    return [p for _, _, p in sorted(found, reverse=True)]


def stale_checkpoints(folder: str, model: str, keep: int) -> list[str]:
    """The epoch checkpoints beyond the newest ``keep`` (never the best one); ``keep <= 0`` keeps all."""
    return list_checkpoints(folder, model)[keep:] if keep > 0 else []


def prune_checkpoints(folder: str, model: str, keep: int) -> list[str]:
    """Delete the checkpoints :func:`stale_checkpoints` names; returns what was deleted."""
    removed = []
    for path in stale_checkpoints(folder, model, keep):
        try:
            os.remove(path)
            removed.append(path)
        except OSError as exc:  # a missing file is fine; anything else is worth a line
            _logger.warning("could not delete old checkpoint %s: %s", path, exc)
    return removed


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(cell: Any, path: str, meta: Mapping[str, int | float] | None = None) -> str:
    """Write ``cell``'s parameters (+ ``meta``) to ``path`` atomically.

    Args:
        cell: the train network (network + optimizer), or any ``nn.Cell``.
        path: final file name, ending in ``.ckpt``.
        meta: scalar bookkeeping stored as extra entries.

    Returns:
        ``path``.
    """
    import mindspore as ms

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # MindSpore appends ".ckpt" to names without it, so the temporary name keeps the suffix.
    tmp = os.path.join(folder, f"{_TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")
    try:
        ms.save_checkpoint(cell, tmp, append_dict=dict(meta or {}), crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)
    return path


def remove_temporaries(folder: str) -> None:
    """Delete temporary files a killed writer left behind (they never carry a checkpoint name)."""
    if os.path.isdir(folder):
        for entry in os.scandir(folder):
            if entry.name.startswith(_TMP_PREFIX) and entry.name.endswith(".ckpt"):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)


@dataclass
class TrainState:
    """A checkpoint read for resuming.

    Attributes:
        path: the file.
        params: name -> ``mindspore.Parameter`` (bookkeeping entries removed).
        epoch: completed epochs.
        global_step: optimizer steps taken.
        steps_per_epoch, global_batch_size, num_epochs: of the run that wrote it (0 if unknown).
        best_top1, best_epoch: best validation up to this checkpoint (-1.0 and 0 if none).
    """

    path: str
    params: dict[str, Any]
    epoch: int
    global_step: int
    steps_per_epoch: int = 0
    global_batch_size: int = 0
    num_epochs: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0


class InvalidCheckpoint(ValueError):
    """A file that cannot serve as a resume point; the message says why."""


def _scalar(param: Any) -> float:
    return float(param.asnumpy().reshape(-1)[0])


def read_train_state(path: str) -> TrainState:
    """Read and check a resumable checkpoint.

    Raises:
        InvalidCheckpoint: unreadable (truncated, corrupt, CRC mismatch) or without the optimizer
            state and epoch a resume needs (e.g. a pure weights file such as MindCV's published ones:
            use it as ``ckpt_path`` instead).
    """
    import mindspore as ms

    try:
        params = ms.load_checkpoint(path, crc_check=True)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/protobuf errors
        raise InvalidCheckpoint(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    missing = [k for k in ("epoch_num", "global_step") if k not in params]
    if missing or not any(k.startswith("moments.") for k in params):
        raise InvalidCheckpoint(
            f"{path}: no optimizer state/epoch ({', '.join(missing) or 'moments.*'} missing); it holds weights "
            "only: start from it with ckpt_path instead of resume"
        )
    epoch = int(_scalar(params["epoch_num"]))
    step = int(_scalar(params["step_num"])) if "step_num" in params else int(_scalar(params["global_step"]))
    meta = {k: _scalar(params[k]) for k in META_KEYS[2:] if k in params}
    for k in META_KEYS:
        params.pop(k, None)
    return TrainState(
        path,
        params,
        epoch,
        step,
        int(meta.get("mnv2_steps_per_epoch", 0)),
        int(meta.get("mnv2_global_batch_size", 0)),
        int(meta.get("mnv2_num_epochs", 0)),
        float(meta.get("mnv2_best_top1", -1.0)),
        int(meta.get("mnv2_best_epoch", 0)),
    )


def find_resume_checkpoint(folder: str, model: str) -> TrainState | None:
    """The newest valid epoch checkpoint of ``model`` in ``folder``; invalid ones are logged and skipped."""
    for path in list_checkpoints(folder, model):
        try:
            return read_train_state(path)
        except InvalidCheckpoint as exc:
            _logger.warning("skipping checkpoint that cannot be resumed from: %s", exc)
    return None
