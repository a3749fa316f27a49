"""Collective helpers for data-parallel runs, built on one primitive: a float32 SUM all-reduce.

MindSpore's CPU backend all-reduces only with SUM and not int32 (MindCV's train.py fails there for
that reason), so everything here is expressed as float32 sums:

* :func:`gather_values`: one number per rank (a one-hot vector summed);
* :func:`broadcast_parameters`: rank 0's values (rank 0 contributes them, the others zeros). Used
  once at start: MindSpore's initialisers draw different weights on different ranks even with the
  same seed in data-parallel mode, and the replicas must start equal to stay equal;
* :func:`average_parameters`: the mean, for BatchNorm's moving statistics, which every rank
  updates from its own batches. Averaging them before validation and checkpointing makes every
  rank evaluate and save the same model (without it, distributed validation mixes replicas and a
  checkpoint's accuracy differs from the one logged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

AllReduce = Callable[[np.ndarray], np.ndarray]


def create_allreduce() -> AllReduce:
    """A callable summing a numpy vector (as float32) over all ranks; needs communication.init()."""
    import mindspore as ms
    from mindspore import nn, ops

    class _Sum(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.reduce = ops.AllReduce(ops.ReduceOp.SUM)

        def construct(self, x: ms.Tensor) -> ms.Tensor:
            return self.reduce(x)

    cell = _Sum()

    def allreduce(vec: np.ndarray) -> np.ndarray:
        return cell(ms.Tensor(np.ascontiguousarray(vec, dtype=np.float32))).asnumpy()

    return allreduce


def gather_values(value: float, rank: int, group_size: int, allreduce: AllReduce) -> np.ndarray:
    """Every rank's ``value``, indexed by rank."""
    vec = np.zeros(group_size, np.float32)
    vec[rank] = value
    return allreduce(vec)


def _sync(params: list[Any], allreduce: AllReduce, contribute: bool, scale: float) -> None:
    import mindspore as ms

    if not params:
        return
    arrays = [p.asnumpy() for p in params]
    if any(a.dtype != np.float32 for a in arrays):
        bad = [p.name for p, a in zip(params, arrays, strict=True) if a.dtype != np.float32]
        raise TypeError(f"only float32 parameters can be synchronised, not {', '.join(bad[:3])}")
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    summed = allreduce(flat if contribute else np.zeros_like(flat)) * np.float32(scale)
    offset = 0
    for p, a in zip(params, arrays, strict=True):
        p.set_data(ms.Tensor(summed[offset : offset + a.size].reshape(a.shape)))
        offset += a.size


def broadcast_parameters(params: Iterable[Any], rank: int, allreduce: AllReduce) -> None:
    """Give every rank rank 0's values of ``params`` (float32 ``Parameter`` objects)."""
    _sync(list(params), allreduce, contribute=rank == 0, scale=1.0)


def average_parameters(params: Iterable[Any], group_size: int, allreduce: AllReduce) -> None:
    """Replace ``params`` by their mean over ranks."""
    _sync(list(params), allreduce, contribute=True, scale=1.0 / group_size)


def batchnorm_statistics(network: Any) -> list[Any]:
    """BatchNorm moving means and variances of ``network``."""
    return [p for p in network.get_parameters() if p.name.endswith(("moving_mean", "moving_variance"))]
