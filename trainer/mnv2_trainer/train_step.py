"""The train cell: network + loss + optimizer step, as MindCV's ``create_trainer`` gets it built.

MindCV (``mindcv.utils.trainer_factory`` and ``mindcv.utils.train_step``) has MindSpore's
``build_train_network`` put the network behind its loss and wrap both in a one-step cell. This
module builds the same cell explicitly, so the train step is visible and testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mindspore as ms
from mindspore import nn, ops

from .amp import apply_amp
from .input_norm import wrap_network


class WithLossCell(nn.Cell):
    """Loss in float32 whatever the network's output type (MindCV's ``add_loss_network``)."""

    def __init__(self, backbone: Any, loss_fn: Any) -> None:
        super().__init__(auto_prefix=False)
        self._backbone, self._loss_fn = backbone, loss_fn

    def construct(self, data: Any, label: Any) -> Any:
        return self._loss_fn(ops.cast(self._backbone(data), ms.float32), label)


def create_train_cell(
    network: Any,
    loss: Any,
    optimizer: Any,
    amp_level: str,
    scale: tuple,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    cast_list: str | None = None,
) -> Any:
    """Network + loss + optimizer step, as MindSpore's ``build_train_network`` makes it for MindCV.

    AMP is applied to ``network`` in place (:func:`.amp.apply_amp`, ``cast_list`` is the config's
    ``amp_cast_list``), so the optimizer's parameters stay the ones the graph trains.

    ``normalize`` is the training loader's ``Loader.normalize``: with uint8 NHWC batches the network
    is wrapped in the (parameterless, float32) input normalisation after AMP has been applied to it,
    so the network sees exactly the float32 images MindCV's pipeline would have fed it.

    ``scale`` is ``(kind, value, drop_overflow_update)`` (:func:`mnv2_trainer.train.effective_loss_scale`).
    Fixed loss scale without overflow skipping: gradients are computed on ``loss * scale`` and the
    optimizer (created with ``loss_scale=scale``) divides them back. Otherwise the update cell of a
    dynamic/fixed loss-scale manager skips overflowing steps (Ascend/GPU only).
    """
    apply_amp(network, amp_level, cast_list)
    with_loss = WithLossCell(wrap_network(network, normalize), loss)
    kind, value, drop = scale
    if kind == "fixed" and not drop:
        return nn.TrainOneStepCell(with_loss, optimizer, sens=value)
    from mindspore.train import DynamicLossScaleManager, FixedLossScaleManager

    manager = (
        DynamicLossScaleManager(init_loss_scale=value, scale_factor=2, scale_window=2000)
        if kind == "dynamic"
        else FixedLossScaleManager(loss_scale=value, drop_overflow_update=True)
    )
    return nn.TrainOneStepWithLossScaleCell(with_loss, optimizer, scale_sense=manager.get_update_cell())
