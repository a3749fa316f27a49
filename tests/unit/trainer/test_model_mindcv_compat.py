"""Our MobileNetV2 against MindCV 0.3.0's: names, shapes, init, checkpoints both ways, strict loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

ms = pytest.importorskip("mindspore", reason="the trainer extra (MindSpore) is not installed")
mindcv = pytest.importorskip("mindcv", reason="the dev extra (mindcv, for cross-checks) is not installed")
np = pytest.importorskip("numpy")

from mindspore import nn  # noqa: E402
from mnv2_trainer.model import (  # noqa: E402
    MODEL_NAMES,
    CheckpointMismatchError,
    create_model,
    load_weights,
    param_count,
)

pytestmark = pytest.mark.mindspore

# Copied from the design reference (shared/reference/): dumped from MindCV 0.3.0 by the design author.
REFERENCE_TSV = Path(__file__).parent / "data" / "mindcv-mobilenet_v2_075-params.tsv"
# Small enough to run quickly, deep enough to exercise every block (the net reduces by 32).
SMALL = "mobilenet_v2_035_96"


def _shapes(net: nn.Cell) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {p.name: (tuple(p.shape), p.requires_grad) for p in net.get_parameters()}


def _randomize_bn_statistics(net: nn.Cell, seed: int) -> None:
    # Fresh BN statistics (0 and 1) and unit gammas would hide a swapped mean/variance or gamma/beta.
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith(("moving_mean", "beta", "bias")):
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
        elif p.name.endswith(("moving_variance", "gamma")):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))


def _logits(net: nn.Cell, x: np.ndarray) -> np.ndarray:
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)


def test_model_names_are_mindcvs_registry() -> None:
    assert sorted(MODEL_NAMES) == sorted(mindcv.models.list_models("mobilenet_v2*"))


@pytest.mark.slow  # builds 44 networks, ~7 s
def test_all_variants_match_mindcv_names_and_shapes() -> None:
    for name in MODEL_NAMES:
        ours = _shapes(create_model(name))
        theirs = _shapes(mindcv.models.create_model(name))
        assert list(ours) == list(theirs), name  # same order, too: MindSpore saves in this order
        assert ours == theirs, name


def test_mobilenet_v2_075_equals_reference_table() -> None:
    net = create_model("mobilenet_v2_075")
    assert param_count(net) == (262, 2_663_064)
    rows = [
        line.split("\t")
        for line in REFERENCE_TSV.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    expected = [(r[0], r[1], r[3] == "requires_grad=True") for r in rows]
    ours = [(p.name, str(tuple(p.shape)), p.requires_grad) for p in net.get_parameters()]
    assert ours == expected
    trainable = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    assert trainable == 2_636_424  # the TSV footer's trainable_elements


def test_initialisation_follows_mindcv() -> None:
    net = create_model("mobilenet_v2_075")
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    last_conv = params["features.20.weight"]  # 1x1, 1280 outputs: He-normal with fan-out 1280
    assert last_conv.std() == pytest.approx(math.sqrt(2.0 / 1280), rel=0.05)
    assert abs(last_conv.mean()) < 0.002
    dw = params["features.3.layers.0.weight"]  # depthwise 3x3 over 24 channels: fan-out 9*24
    assert dw.std() == pytest.approx(math.sqrt(2.0 / (9 * 24)), rel=0.3)
    assert params["classifier.1.weight"].std() == pytest.approx(0.01, rel=0.05)
    assert not params["classifier.1.bias"].any()
    assert (params["features.1.gamma"] == 1).all() and not params["features.1.beta"].any()


def test_drop_rate_default_and_none_mean_mindcvs_02() -> None:
    assert create_model(SMALL, num_classes=10).classifier[0].p == pytest.approx(0.2)
    assert create_model(SMALL, num_classes=10, drop_rate=None).classifier[0].p == pytest.approx(0.2)
    assert create_model(SMALL, num_classes=10, drop_rate=0.0).classifier[0].p == 0.0


def test_mindcv_checkpoint_gives_identical_logits(tmp_path: Path, images: np.ndarray) -> None:
    theirs = mindcv.models.create_model(SMALL, num_classes=10)
    _randomize_bn_statistics(theirs, seed=1)
    path = tmp_path / "mindcv.ckpt"
    ms.save_checkpoint(theirs, str(path))

    ours = create_model(SMALL, num_classes=10, checkpoint_path=path)
    expected = _logits(theirs, images)
    np.testing.assert_allclose(_logits(ours, images), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() > 1e-3  # not a degenerate all-zero output


def test_our_checkpoint_loads_into_mindcv(tmp_path: Path, images: np.ndarray) -> None:
    ours = create_model(SMALL, num_classes=10)
    _randomize_bn_statistics(ours, seed=2)
    path = tmp_path / "ours.ckpt"
    ms.save_checkpoint(ours, str(path))

    theirs = mindcv.models.create_model(SMALL, num_classes=10)
    not_loaded, unused = ms.load_param_into_net(theirs, ms.load_checkpoint(str(path)), strict_load=True)
    assert not_loaded == [] and unused == []
    np.testing.assert_allclose(_logits(theirs, images), _logits(ours, images), rtol=1e-5, atol=1e-6)


def test_train_checkpoint_with_optimizer_state_loads(tmp_path: Path, images: np.ndarray) -> None:
    net = create_model(SMALL, num_classes=10)
    _randomize_bn_statistics(net, seed=3)
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9, weight_decay=3e-5)
    train_net = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    path = tmp_path / "train.ckpt"
    ms.save_checkpoint(train_net, str(path))

    fresh = create_model(SMALL, num_classes=10)
    result = load_weights(fresh, path)
    assert len(result.loaded) == param_count(net)[0]
    assert {"global_step", "learning_rate", "momentum"} <= set(result.ignored)
    assert any(name.startswith("moments.") for name in result.ignored)
    np.testing.assert_array_equal(_logits(fresh, images), _logits(net, images))


def test_other_num_classes_is_a_clear_error_or_an_explicit_new_head(tmp_path: Path) -> None:
    path = tmp_path / "ten.ckpt"
    ms.save_checkpoint(create_model(SMALL, num_classes=10), str(path))

    with pytest.raises(CheckpointMismatchError, match=r"num_classes=10.*ignore_classifier=True"):
        create_model(SMALL, num_classes=5, checkpoint_path=path)

    net = create_model(SMALL, num_classes=5, checkpoint_path=path, ignore_classifier=True)
    result = load_weights(net, path, ignore_classifier=True)
    assert result.skipped_head == ["classifier.1.bias", "classifier.1.weight"]
    assert tuple(net.classifier[1].weight.shape) == (5, 1280)


def test_other_width_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w050.ckpt"
    ms.save_checkpoint(create_model("mobilenet_v2_050_96", num_classes=10), str(path))
    with pytest.raises(
        CheckpointMismatchError,
        match=r"shape mismatches: features\.4\.layers\.6\.weight network \(8, 48, 1, 1\) vs checkpoint \(16, 48, 1, 1\).*model name",
    ):
        create_model(SMALL, num_classes=10, checkpoint_path=path)


def test_checkpoint_without_network_weights_fails(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    ms.save_checkpoint(
        [{"name": "backbone.conv1.weight", "data": ms.Tensor(np.ones((2, 2), np.float32))}], str(path)
    )
    with pytest.raises(CheckpointMismatchError, match="holds none of the network's"):
        create_model(SMALL, num_classes=10, checkpoint_path=path)


def test_missing_parameter_is_named(tmp_path: Path) -> None:
    net = create_model(SMALL, num_classes=10)
    entries = [
        {"name": p.name, "data": p} for p in net.get_parameters() if p.name != "features.5.layers.4.gamma"
    ]
    path = tmp_path / "partial.ckpt"
    ms.save_checkpoint(entries, str(path))
    with pytest.raises(
        CheckpointMismatchError, match=r"1 network parameters missing.*features\.5\.layers\.4\.gamma"
    ):
        load_weights(create_model(SMALL, num_classes=10), path)


def test_missing_or_corrupt_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model(SMALL, num_classes=10, checkpoint_path=tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read checkpoint"):
        create_model(SMALL, num_classes=10, checkpoint_path=bad)


def test_float16_checkpoint_is_cast_to_the_network_dtype(tmp_path: Path, images: np.ndarray) -> None:
    net = create_model(SMALL, num_classes=10)
    entries = [
        {"name": p.name, "data": ms.Tensor(p.asnumpy().astype(np.float16))} for p in net.get_parameters()
    ]
    path = tmp_path / "fp16.ckpt"
    ms.save_checkpoint(entries, str(path))
    fresh = create_model(SMALL, num_classes=10, checkpoint_path=path)
    assert all(p.dtype == ms.float32 for p in fresh.get_parameters())
    np.testing.assert_allclose(_logits(fresh, images), _logits(net, images), rtol=1e-2, atol=1e-3)


def test_in_channels_matches_mindcv() -> None:
    ours = _shapes(create_model(SMALL, num_classes=10, in_channels=1))
    assert ours == _shapes(mindcv.models.create_model(SMALL, num_classes=10, in_channels=1))
    assert ours["features.0.weight"][0] == (16, 1, 3, 3)


def test_backbone_only_checkpoint_needs_ignore_classifier(tmp_path: Path) -> None:
    net = create_model(SMALL, num_classes=10)
    entries = [
        {"name": p.name, "data": p} for p in net.get_parameters() if not p.name.startswith("classifier.")
    ]
    path = tmp_path / "backbone.ckpt"
    ms.save_checkpoint(entries, str(path))
    with pytest.raises(
        CheckpointMismatchError, match="has no classifier: load it with ignore_classifier=True"
    ):
        load_weights(create_model(SMALL, num_classes=10), path)
    assert len(load_weights(create_model(SMALL, num_classes=10), path, ignore_classifier=True).loaded) == len(
        entries
    )
