"""Normalisation of uint8 image batches inside the compiled network.

The input pipeline (:mod:`.data`) ends at uint8 HWC images, so batches leave it as uint8 NHWC: a
quarter of the bytes of the float32 NCHW batches that MindCV's ``Normalize`` + ``HWC2CHW`` produce,
and less CPU per image in the pipeline. The network then does what those two ops did, in the graph:

    (float32(x) - mean) / std, then NHWC -> NCHW

with MindCV's mean and std on the 0..255 scale (the config's ``mean`` / ``std``). The values are
those of ``mindspore.dataset.vision.Normalize`` + ``HWC2CHW`` (a unit test compares them on decoded
images).

:class:`NormalizeInput` holds no parameters (mean and std are constants of the graph), and
:class:`NormalizedNetwork` does not prefix its child's parameter names, so the wrapped network's
parameters, the optimizer's moments and every checkpoint keep MindCV's names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["NormalizeInput", "NormalizedNetwork", "wrap_network"]


class NormalizeInput(nn.Cell):
    """uint8 (or any numeric) NHWC images -> normalised float32 NCHW; no parameters.

    Args:
        mean: per-channel mean, 0..255 scale (MindCV's ``mean``).
        std: per-channel standard deviation, 0..255 scale (MindCV's ``std``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(float(s) == 0.0 for s in std):
            raise ValueError(f"std must not contain 0, got {list(std)}")
        # Tensors, not Parameters: graph constants that no checkpoint or optimizer sees.
        self.mean = Tensor(np.asarray(mean, np.float32).reshape(1, 1, 1, -1))
        self.std = Tensor(np.asarray(std, np.float32).reshape(1, 1, 1, -1))

    def construct(self, x: Tensor) -> Tensor:
        x = (ops.cast(x, ms.float32) - self.mean) / self.std
        return ops.transpose(x, (0, 3, 1, 2))


class NormalizedNetwork(nn.Cell):
    """``network(NormalizeInput(mean, std)(images))``, with the network's parameter names unchanged."""

    def __init__(self, network: nn.Cell, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(auto_prefix=False)  # no "network." prefix on the parameters
        self.normalize = NormalizeInput(mean, std)
        self.network = network

    def construct(self, x: Tensor) -> Tensor:
        return self.network(self.normalize(x))


def wrap_network(network: Any, normalize: Any) -> Any:
    """The network a loader's batches go into.

    Args:
        network: the model (already under AMP, if any: the normalisation stays float32).
        normalize: ``Loader.normalize`` of the loader feeding the network: ``(mean, std)`` when its
            batches are uint8 NHWC, ``None`` when the pipeline already normalised (float32 NCHW).
    """
    if normalize is None:
        return network
    mean, std = normalize
    return NormalizedNetwork(network, mean, std)
