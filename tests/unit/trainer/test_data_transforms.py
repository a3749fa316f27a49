"""Our transforms are MindCV's: the eval pipeline gives identical pixels, the train pipeline the same ops.

By default ours stop before MindCV's last two ops (``Normalize``, ``HWC2CHW``), which the network
does (``mnv2_trainer.input_norm``); with ``normalize=True`` they are MindCV's list exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mindspore

CFG = {
    "image_resize": 32,
    "scale": [0.6, 1.0],
    "ratio": [0.75, 1.333],
    "hflip": 0.5,
    "vflip": 0.0,
    "color_jitter": 0.4,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
}


def _attrs(op) -> dict:
    return {
        k: v
        for k, v in vars(op).items()
        if not k.startswith("_") and isinstance(v, int | float | str | tuple | list)
    }


def test_eval_transforms_equal_mindcvs(tmp_path: Path) -> None:
    from mindcv.data import create_transforms as mindcv_transforms
    from mindspore.dataset import transforms
    from mnv2_trainer import data

    root = tmp_path / "digits"
    data.ensure_digits(root)
    import mindspore as ms
    from mnv2_trainer.input_norm import NormalizeInput

    float_ops = transforms.Compose(data.create_transforms(CFG, is_training=False, normalize=True))
    uint8_ops = transforms.Compose(data.create_transforms(CFG, is_training=False))
    in_network = NormalizeInput(*data.mean_std(CFG))
    theirs = transforms.Compose(
        mindcv_transforms("imagenet", image_resize=32, is_training=False, crop_pct=0.875)
    )
    for path in sorted((root / "val" / "3").glob("*.png"))[:5]:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        a, b = float_ops(raw), theirs(raw)
        assert a.shape == (3, 32, 32) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        c = in_network(ms.Tensor(uint8_ops(raw)[None])).asnumpy()[0]
        assert np.abs(c - b).max() < 1e-5


def test_train_transforms_are_mindcvs_ops() -> None:
    from mindcv.data import create_transforms as mindcv_transforms
    from mnv2_trainer import data

    ours = data.create_transforms(CFG, is_training=True, normalize=True)
    theirs = mindcv_transforms(
        "imagenet",
        image_resize=32,
        is_training=True,
        scale=(0.6, 1.0),
        ratio=(0.75, 1.333),
        hflip=0.5,
        color_jitter=0.4,
        interpolation="bilinear",
    )
    assert (
        [type(o).__name__ for o in ours]
        == [type(o).__name__ for o in theirs]
        == [
            "RandomCropDecodeResize",
            "RandomHorizontalFlip",
            "RandomColorAdjust",
            "Normalize",
            "HWC2CHW",
        ]
    )
    for a, b in zip(ours, theirs, strict=True):
        assert _attrs(a) == _attrs(b), type(a).__name__
    # the default (uint8 batches) is the same list without the last two
    default = data.create_transforms(CFG, is_training=True)
    assert [type(o).__name__ for o in default] == [type(o).__name__ for o in theirs[:-2]]
    for a, b in zip(default, theirs, strict=False):
        assert _attrs(a) == _attrs(b), type(a).__name__


def test_synthetic_loader_batches() -> None:
    from mnv2_trainer import data

    cfg = dict(CFG, dataset="synthetic", batch_size=4, num_classes=7, num_parallel_workers=1, seed=1)
    loader = data.create_loader(cfg, "train", is_training=True, num_shards=2, shard_id=1)
    assert loader.num_batches == 20 and loader.num_classes == 7
    images, labels = next(loader.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8  # normalised by the network
    assert loader.normalize == data.mean_std(cfg)
    assert labels.dtype == np.int32 and labels.max() < 7


def test_synthetic_loader_defaults_to_1000_classes_when_the_config_leaves_num_classes_unset() -> None:
    from mnv2_trainer import data

    # A resolved config always holds num_classes, as None when the recipe leaves it unset.
    cfg = dict(CFG, dataset="synthetic", batch_size=2, num_classes=None, num_parallel_workers=1, seed=1)
    loader = data.create_loader(cfg, "val", is_training=False)
    assert loader.num_classes == 1000
