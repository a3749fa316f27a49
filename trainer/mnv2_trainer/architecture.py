"""MobileNetV2's layout as plain numbers: the stage table and the channel rounding.

No MindSpore here, so other implementations of the same network (the PyTorch peer of
``benchmarks/train_step.py``) build exactly the widths :mod:`.model` builds.
"""

from __future__ import annotations

__all__ = ["INVERTED_RESIDUAL_SETTING", "make_divisible"]

# (expansion t, output channels c, repeats n, first stride s) of the inverted residual stages.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% down.

    Same rule as MindCV's and TF-slim's ``make_divisible``, so widths give identical channel counts.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded
