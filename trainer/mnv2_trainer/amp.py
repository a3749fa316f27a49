"""Mixed precision as MindCV applies it: in place, cell by cell.

MindSpore's own ``ms.amp.auto_mixed_precision`` returns a new network for O1 (built by its
``rewrite`` module, which regenerates the model's source and fails on a package-relative import)
and ignores ``amp_cast_list``. MindCV's ``mindcv.utils.amp`` changes the cells in place instead,
so the parameters (and their names, which checkpoints use) stay the network's own. This module
does the same; ``amp_cast_list`` names cells from a fixed table (MindCV ``eval``s the text).
"""

from __future__ import annotations

from typing import Any

import mindspore as ms
from mindspore import nn, ops

from .config import AMP_CAST_CELLS, cast_list_names

AMP_LEVELS = ("O0", "O1", "O2", "O3")

# O1 casts these to float16; O2 casts everything else and keeps these in float32 (MindCV's lists)
WHITE_LIST = (
    nn.Dense,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Conv1dTranspose,
    nn.Conv2dTranspose,
    nn.Conv3dTranspose,
)
BLACK_LIST = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)


class AmpError(ValueError):
    """A bad ``amp_level`` or ``amp_cast_list``; the message names the key and the fix."""


class _CastOutput(nn.Cell):
    """Runs a cell and casts its output (MindCV's ``_OutputTo16`` / ``_OutputTo32``)."""

    def __init__(self, cell: nn.Cell, dtype: Any) -> None:
        super().__init__(auto_prefix=False)  # the wrapped cell's parameters keep their names
        self._op = cell
        self._dtype = dtype

    def construct(self, x: Any) -> Any:
        return ops.cast(self._op(x), self._dtype)


def cast_classes(text: str | None) -> tuple[type, ...] | None:
    """``"[nn.Conv2d, nn.Dense]"`` -> the cell classes; None keeps the built-in list.

    :mod:`.config` has already checked the names against ``AMP_CAST_CELLS``.
    """
    names = cast_list_names(text)
    unknown = [name for name in names if name not in AMP_CAST_CELLS]
    if unknown:
        raise AmpError(
            f"config key amp_cast_list: unknown cells {unknown}; use names from {list(AMP_CAST_CELLS)}"
        )
    return tuple(getattr(nn, name.split(".", 1)[1]) for name in names) or None


def _wrap_matching(network: nn.Cell, classes: tuple[type, ...], to: Any, output: Any) -> None:
    """Casts every sub-cell of ``classes`` to ``to`` and its output to ``output``, recursively."""
    cells = network.name_cells()
    changed = False
    for name, cell in cells.items():
        if cell is network:
            continue
        if isinstance(cell, classes):
            network._cells[name] = _CastOutput(cell.to_float(to), output)
            changed = True
        else:
            _wrap_matching(cell, classes, to, output)
    if isinstance(network, nn.SequentialCell) and changed:
        network.cell_list = list(network.cells())


def apply_amp(network: nn.Cell, level: str, cast_list: str | None = None) -> None:
    """Applies ``level`` to ``network`` in place, as MindCV's ``auto_mixed_precision`` does.

    O0 nothing; O1 the white-list cells in float16 (outputs back to float32); O2 everything in
    float16 except the black-list cells (BatchNorm, LayerNorm) in float32; O3 all in float16.
    ``cast_list`` replaces the white list (O1) or the black list (O2).
    """
    if level not in AMP_LEVELS:
        raise AmpError(f"config key amp_level: {level!r} is not supported; use one of {list(AMP_LEVELS)}")
    classes = cast_classes(cast_list)
    if level == "O1":
        _wrap_matching(network, classes or WHITE_LIST, ms.float16, ms.float32)
    elif level == "O2":
        network.to_float(ms.float16)
        _wrap_matching(network, classes or BLACK_LIST, ms.float32, ms.float16)
    elif level == "O3":
        network.to_float(ms.float16)
