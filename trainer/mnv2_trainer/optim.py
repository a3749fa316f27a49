"""The optimizer, as MindCV's ``mindcv.optim.create_optimizer`` builds it for the recipe.

Momentum (or SGD, or Nesterov momentum) over the per-step learning-rate list of :mod:`.schedule`;
the optimizer's ``global_step`` indexes the list, so a resumed run continues the schedule by placing
it (:func:`mnv2_trainer.resume.load_train_state`). Weight decay is grouped as MindCV's
``init_group_params`` does. Imports MindSpore only when an optimizer is built.
"""

from __future__ import annotations

from typing import Any


def param_groups(params: list[Any], weight_decay: float, weight_decay_filter: str) -> list[dict[str, Any]]:
    """MindCV's ``init_group_params``: ``disable`` decays everything; ``norm_and_bias`` spares BN and biases."""
    if weight_decay_filter == "norm_and_bias":
        decay = [p for p in params if not any(t in p.name for t in ("beta", "gamma", "bias"))]
        no_decay = [p for p in params if any(t in p.name for t in ("beta", "gamma", "bias"))]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [{"params": params, "weight_decay": weight_decay}]


def create_optimizer(cfg: dict[str, Any], network: Any, lrs: list[float], loss_scale: float) -> Any:
    """Momentum (or SGD) over the per-step lr list; ``global_step`` indexes the list."""
    import mindspore as ms
    from mindspore import nn

    wd = float(cfg.get("weight_decay", 0.0) or 0.0)
    wd_filter = str(cfg.get("weight_decay_filter", "disable"))
    params = network.trainable_params()
    lr = ms.Tensor(lrs, ms.float32)
    if wd_filter == "auto":  # MindSpore's own filter (norm parameters excluded)
        groups: Any = params
    else:
        groups, wd = param_groups(params, wd, wd_filter), 0.0
    opt = str(cfg.get("opt", "momentum")).lower()
    nesterov = bool(cfg.get("use_nesterov", False)) or opt == "nesterov"
    if opt == "sgd":
        return nn.SGD(
            groups,
            learning_rate=lr,
            momentum=float(cfg.get("momentum", 0.0)),
            weight_decay=wd,
            nesterov=nesterov,
            loss_scale=loss_scale,
        )
    return nn.Momentum(
        groups,
        learning_rate=lr,
        momentum=float(cfg.get("momentum", 0.9)),
        weight_decay=wd,
        use_nesterov=nesterov,
        loss_scale=loss_scale,
    )
