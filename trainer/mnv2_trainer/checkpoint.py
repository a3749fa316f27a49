"""Checkpoints: MindCV's names, atomic writes, keep-last-k, and finding the newest valid one.

Names are MindCV's: ``{model}-{epoch}_{steps}.ckpt`` (``steps`` = steps per epoch, as MindCV's
``ModelCheckpoint`` writes them) and ``{model}_best.ckpt``. A checkpoint holds the train network:
the network parameters under MindCV's names, the optimizer state (``moments.*``, ``global_step``,
``learning_rate``, ``momentum``) and our bookkeeping (:data:`META_KEYS`). MindCV and
``model.load_weights`` load such files as they are.

Writes go to a hidden temporary file in the same folder and are renamed into place, so a crash
never leaves a truncated file under a checkpoint name; resume still verifies each candidate,
newest first, because files can also be damaged after the fact (full disk, copy, bit rot).
Keep-last-k counts only checkpoints that load: a damaged file never costs a valid one. Pruning
renames damaged files to ``<name>.corrupt`` (kept for inspection, never listed again) and deletes
only valid checkpoints older than the newest ``k`` valid ones.

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


#: Suffix of quarantined (damaged) checkpoints.
CORRUPT_SUFFIX = ".corrupt"


class VerifiedCheckpoints:
    """Checkpoints already found valid, by path -> (size, mtime_ns), so that pruning after every epoch
    does not load the same files again. A run keeps one (the epoch-end callback); a changed file
    (other size or modification time) is checked again."""

    def __init__(self) -> None:
        self._stamps: dict[str, tuple[int, int]] = {}

    def holds(self, path: str, stamp: tuple[int, int] | None) -> bool:
        return stamp is not None and self._stamps.get(path) == stamp

    def add(self, path: str, stamp: tuple[int, int] | None) -> None:
        if stamp is not None:
            self._stamps[path] = stamp

    def forget(self, path: str) -> None:
        self._stamps.pop(path, None)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def check_checkpoint(path: str, verified: VerifiedCheckpoints | None = None) -> None:
    """Check that ``path`` can be resumed from; with ``verified``, a file found valid before and
    unchanged since is not read again.

    Raises:
        InvalidCheckpoint: as :func:`read_train_state` (``CorruptCheckpoint`` for a damaged file).
    """
    stamp = _stamp(path)
    if verified is not None and verified.holds(path, stamp):
        return
    read_train_state(path)
    if verified is not None:
        verified.add(path, stamp)


def quarantine(path: str, reason: str, verified: VerifiedCheckpoints | None = None) -> str | None:
    """Rename a damaged checkpoint to ``<path>.corrupt`` (``<path>.<n>.corrupt`` if taken); returns the new name."""
    target = path + CORRUPT_SUFFIX
    n = 1
    while os.path.exists(target):
        target = f"{path}.{n}{CORRUPT_SUFFIX}"
        n += 1
    try:
        os.replace(path, target)
    except OSError as exc:
        _logger.warning("could not set damaged checkpoint %s aside: %s", path, exc)
        return None
    if verified is not None:
        verified.forget(path)
    _logger.warning("set damaged checkpoint aside as %s: %s", target, reason)
    return target


def prune_checkpoints(
    folder: str, model: str, keep: int, verified: VerifiedCheckpoints | None = None
) -> list[str]:
    """Keep the newest ``keep`` valid epoch checkpoints; returns the paths deleted.

    Newest first, each file is checked until ``keep`` valid ones are found: a damaged file is renamed
    to ``<name>.corrupt`` and does not count, a readable file that cannot be resumed from (weights
    only) is left alone and does not count. Only valid checkpoints older than those are deleted, so
    damaged files never cost a valid one. The best checkpoint is never touched; ``keep <= 0`` keeps all.
    ``verified`` (see :class:`VerifiedCheckpoints`) spares reading files checked at an earlier call.
    """
    if keep <= 0:
        return []
    removed: list[str] = []
    valid = 0
    for path in list_checkpoints(folder, model):
        try:
            check_checkpoint(path, verified)
        except CorruptCheckpoint as exc:
            quarantine(path, str(exc), verified)
            continue
        except InvalidCheckpoint as exc:
            _logger.warning("keeping %s, which is not counted as a checkpoint to resume from: %s", path, exc)
            continue
        valid += 1
        if valid <= keep:
            continue
        try:
            os.remove(path)
            removed.append(path)
            if verified is not None:
                verified.forget(path)
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


class CorruptCheckpoint(InvalidCheckpoint):
    """A damaged file: CRC mismatch, truncated, or not a MindSpore checkpoint at all."""


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

    # Read access first: MindSpore words every failure alike ("may not have permission"), so the
    # reasons are told apart here.
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise InvalidCheckpoint(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        params = ms.load_checkpoint(path, crc_check=True)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/protobuf errors
        text = str(exc)
        if "permission" in text.lower():  # the file is readable (above): the CRC did not match
            why = "corrupt: its CRC does not match its content"
        elif "empty" in text.lower():
            why = "corrupt: it holds no parameters (empty or cut short)"
        elif "parse" in text.lower():
            why = "corrupt: truncated or not a MindSpore checkpoint"
        else:
            why = f"corrupt: {type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
        raise CorruptCheckpoint(f"{path}: {why}") from exc
    if not params:
        raise CorruptCheckpoint(f"{path}: corrupt: it holds no parameters")
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
