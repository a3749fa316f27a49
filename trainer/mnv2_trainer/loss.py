"""The loss, as MindCV's ``mindcv.loss.create_loss`` builds it for the MobileNetV2 recipe.

MindCV's ``CrossEntropySmooth`` with mean reduction and no auxiliary head is MindSpore's
``nn.CrossEntropyLoss`` with label smoothing. Other losses are refused by
:func:`mnv2_trainer.train.check_supported` before anything is built.
"""

from __future__ import annotations

from typing import Any


def create_loss(cfg: dict[str, Any]) -> Any:
    """Cross entropy with the config's ``label_smoothing`` (mean reduction)."""
    from mindspore import nn

    return nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0) or 0.0))
