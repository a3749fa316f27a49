"""The trainer's pure decisions: unsupported options, CPU fallbacks, weight-decay groups (no MindSpore)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mnv2_trainer import optim, train


def test_unsupported_options_are_named() -> None:
    train.check_supported({"opt": "momentum", "loss": "CE"})
    for key, value in (("ema", True), ("mixup", 0.2), ("auto_augment", "randaug-m9"), ("re_prob", 0.25)):
        with pytest.raises(train.TrainError, match=key):
            train.check_supported({key: value})
    with pytest.raises(train.TrainError, match="opt"):
        train.check_supported({"opt": "adamw"})
    with pytest.raises(train.TrainError, match="loss"):
        train.check_supported({"loss": "BCE"})


def test_cpu_falls_back_to_fp32_with_a_warning() -> None:
    assert train.effective_amp({"amp_level": "O3"}, "Ascend") == ("O3", [])
    level, notes = train.effective_amp({"amp_level": "O3"}, "CPU")
    assert level == "O0" and len(notes) == 1 and "O3" in notes[0]
    assert train.effective_amp({"amp_level": "O0"}, "CPU") == ("O0", [])


def test_loss_scale_fallbacks() -> None:
    recipe = {"loss_scale_type": "fixed", "loss_scale": 1024, "drop_overflow_update": False}
    assert train.effective_loss_scale(recipe, "CPU") == ("fixed", 1024.0, False, [])
    kind, scale, drop, notes = train.effective_loss_scale(dict(recipe, loss_scale_type="dynamic"), "CPU")
    assert (kind, scale, drop) == ("fixed", 1024.0, False) and len(notes) == 1
    assert train.effective_loss_scale(dict(recipe, loss_scale_type="dynamic"), "Ascend")[:3] == (
        "dynamic",
        1024.0,
        False,
    )


def test_weight_decay_groups_follow_mindcv() -> None:
    params = [
        SimpleNamespace(name=n)
        for n in ("features.0.weight", "features.1.gamma", "features.1.beta", "classifier.1.bias")
    ]
    everything = optim.param_groups(params, 3e-5, "disable")  # the recipe: BN and biases decayed too
    assert everything == [{"params": params, "weight_decay": 3e-5}]
    split = optim.param_groups(params, 3e-5, "norm_and_bias")
    assert [p.name for p in split[0]["params"]] == ["features.0.weight"]
    assert split[1]["weight_decay"] == 0.0 and len(split[1]["params"]) == 3
