"""uint8 batches normalised in the network give exactly what MindCV's float pipeline gave.

* the pixels: ``NormalizeInput`` on the new pipeline's uint8 HWC output equals the old pipeline's
  ``Normalize`` + ``HWC2CHW`` output on decoded PNGs and JPEGs, eval and (same seed) train;
* the names: the wrapper adds no parameter and no prefix, so train checkpoints hold the same
  entries as before (MindCV's names for the network);
* the decision: float-space augmentations keep MindCV's float pipeline;
* the results (slow, compiled graphs): evaluating a fixed checkpoint and a train step give the same
  numbers on both paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mindspore

ATOL = 1e-5
CFG = {
    "image_resize": 32,
    "scale": [0.6, 1.0],
    "ratio": [0.75, 1.333],
    "hflip": 0.5,
    "vflip": 0.5,
    "color_jitter": 0.4,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    # not MindCV's ImageNet values, so that a default silently used instead would show
    "mean": [120.0, 110.5, 100.25],
    "std": [60.0, 55.5, 50.25],
}
SMALL = "mobilenet_v2_035_96"


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Encoded images: digits PNGs (32x32) and photo-like JPEGs (500x375)."""
    from mnv2_trainer import data
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    data.ensure_digits(root / "digits")
    files = sorted((root / "digits" / "val").rglob("*.png"))[:6]
    rng = np.random.default_rng(0)
    for i in range(4):
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
        path = root / f"photo_{i}.jpg"
        Image.fromarray(img).save(path, quality=90)
        files.append(path)
    return files


def _normalize(images: np.ndarray, cfg: dict = CFG) -> np.ndarray:
    import mindspore as ms
    from mnv2_trainer import data
    from mnv2_trainer.input_norm import NormalizeInput

    return NormalizeInput(*data.mean_std(cfg))(ms.Tensor(images)).asnumpy()


# --------------------------------------------------------------------------- pixels
def test_eval_pipeline_ends_at_uint8_and_the_network_restores_the_old_output(image_files) -> None:
    from mindspore.dataset import transforms
    from mnv2_trainer import data

    old = transforms.Compose(data.create_transforms(CFG, is_training=False, normalize=True))
    new_ops = data.create_transforms(CFG, is_training=False)
    assert [type(o).__name__ for o in new_ops] == ["Decode", "Resize", "CenterCrop"]
    new = transforms.Compose(new_ops)
    for path in image_files:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        a, b = old(raw), new(raw)
        assert a.shape == (3, 32, 32) and a.dtype == np.float32
        assert b.shape == (32, 32, 3) and b.dtype == np.uint8
        got = _normalize(b[None])[0]
        assert got.dtype == np.float32
        assert np.abs(got - a).max() < ATOL, path.name


def test_train_pipeline_is_the_old_one_without_its_last_two_ops() -> None:
    from mnv2_trainer import data

    old = data.create_transforms(CFG, is_training=True, normalize=True)
    new = data.create_transforms(CFG, is_training=True)
    assert [type(o).__name__ for o in old[-2:]] == ["Normalize", "HWC2CHW"]
    assert [type(o).__name__ for o in new] == [type(o).__name__ for o in old[:-2]]
    assert [type(o).__name__ for o in new] == [
        "RandomCropDecodeResize",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "RandomColorAdjust",
    ]
    norm = old[-2]
    assert list(norm.mean) == CFG["mean"] and list(norm.std) == CFG["std"]


@pytest.mark.parametrize("is_training", [True, False])
def test_loader_batches_normalised_in_the_network_equal_the_float_pipelines(
    image_files, tmp_path: Path, is_training: bool
) -> None:
    """Same seed, same files: old float batches == NormalizeInput(new uint8 batches), augmentation included."""
    import mindspore as ms
    from mnv2_trainer import data

    split = tmp_path / "train"
    for i, path in enumerate(image_files):
        folder = split / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).write_bytes(path.read_bytes())
    cfg = dict(
        CFG, dataset="imagefolder", data_dir=str(tmp_path), batch_size=5, num_parallel_workers=1, seed=3
    )

    def batches(normalize: bool | None) -> tuple[list, data.Loader]:
        ms.dataset.config.set_seed(7)
        loader = data.create_loader(cfg, "train", is_training=is_training, normalize=normalize)
        return list(loader.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)), loader

    old, old_loader = batches(True)
    new, new_loader = batches(None)
    assert old_loader.normalize is None
    assert new_loader.normalize == data.mean_std(cfg)
    assert len(old) == len(new) == 2
    for (a, la), (b, lb) in zip(old, new, strict=True):
        assert a.dtype == np.float32 and a.shape[1:] == (3, 32, 32)
        assert b.dtype == np.uint8 and b.shape[1:] == (32, 32, 3)
        np.testing.assert_array_equal(la, lb)
        assert np.abs(_normalize(b) - a).max() < ATOL


def test_default_mean_std_are_mindcvs_imagenet_values() -> None:
    from mnv2_trainer import data

    mean, std = data.mean_std({"mean": None, "std": None})
    np.testing.assert_allclose(mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(std, [58.395, 57.12, 57.375])


def test_synthetic_batches_are_uint8_nhwc() -> None:
    from mnv2_trainer import data

    cfg = dict(CFG, dataset="synthetic", batch_size=4, num_classes=7, num_parallel_workers=1, seed=1)
    for is_training in (True, False):
        loader = data.create_loader(cfg, "train", is_training=is_training)
        images, _ = next(loader.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
        assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
        assert loader.normalize == data.mean_std(cfg)


# --------------------------------------------------------------------------- the decision
def test_float_space_augmentations_keep_the_float_pipeline() -> None:
    from mnv2_trainer import data

    base = dict(CFG, re_prob=0.0, mixup=0.0, cutmix=0.0, auto_augment=None)
    assert data.needs_float_pipeline(base, is_training=True) == []
    assert data.needs_float_pipeline({}, is_training=True) == []
    assert data.needs_float_pipeline(dict(base, re_prob=None, mixup=None), is_training=True) == []
    for key, value in (("re_prob", 0.25), ("mixup", 0.2), ("cutmix", 1.0)):
        cfg = dict(base, **{key: value})
        assert data.needs_float_pipeline(cfg, is_training=True) == [f"{key}={value!r}"]
        assert data.needs_float_pipeline(cfg, is_training=False) == []  # eval has no such options
        ops = data.create_transforms(cfg, is_training=True)
        assert [type(o).__name__ for o in ops[-2:]] == ["Normalize", "HWC2CHW"]
        assert type(data.create_transforms(cfg, is_training=False)[-1]).__name__ == "CenterCrop"
    both = dict(base, re_prob=0.25, mixup=0.2)
    assert data.needs_float_pipeline(both, is_training=True) == ["re_prob=0.25", "mixup=0.2"]


def test_loader_with_a_float_space_augmentation_gives_float_batches() -> None:
    from mnv2_trainer import data

    cfg = dict(
        CFG, dataset="synthetic", batch_size=4, num_classes=7, num_parallel_workers=1, seed=1, mixup=0.2
    )
    train = data.create_loader(cfg, "train", is_training=True)
    images, _ = next(train.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32
    assert train.normalize is None
    val = data.create_loader(cfg, "val", is_training=False)
    assert val.normalize == data.mean_std(cfg)


# --------------------------------------------------------------------------- the cells
def test_normalize_input_has_no_parameters_and_validates_its_arguments() -> None:
    from mnv2_trainer.input_norm import NormalizeInput

    assert list(NormalizeInput([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]).get_parameters()) == []
    with pytest.raises(ValueError, match="channels"):
        NormalizeInput([1.0, 2.0, 3.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="0"):
        NormalizeInput([1.0, 2.0, 3.0], [1.0, 0.0, 1.0])


def test_wrap_network_keeps_names_and_passes_through_without_normalisation() -> None:
    from mnv2_trainer.input_norm import NormalizedNetwork, wrap_network
    from mnv2_trainer.model import create_model

    net = create_model(SMALL, num_classes=10)
    before = [(p.name, tuple(p.shape)) for p in net.get_parameters()]
    assert wrap_network(net, None) is net
    wrapped = wrap_network(net, ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)))
    assert isinstance(wrapped, NormalizedNetwork)
    assert [(p.name, tuple(p.shape)) for p in wrapped.get_parameters()] == before
    assert [(p.name, tuple(p.shape)) for p in net.get_parameters()] == before
    assert [p.name for p in wrapped.trainable_params()] == [p.name for p in net.trainable_params()]


def _train_cell(normalize, model: str = SMALL, num_classes: int = 10):
    import mindspore as ms
    from mnv2_trainer.loss import create_loss
    from mnv2_trainer.model import create_model
    from mnv2_trainer.optim import create_optimizer
    from mnv2_trainer.train_step import create_train_cell

    ms.set_seed(5)
    net = create_model(model, num_classes=num_classes)
    cfg = {"opt": "momentum", "momentum": 0.9, "weight_decay": 1e-4, "weight_decay_filter": "disable"}
    opt = create_optimizer(cfg, net, [0.05, 0.05, 0.05], 8.0)
    loss = create_loss({"label_smoothing": 0.1})
    return net, create_train_cell(net, loss, opt, "O0", ("fixed", 8.0, False), normalize)


def test_train_checkpoint_entries_are_unchanged_and_mindcvs(tmp_path: Path) -> None:
    import mindspore as ms
    from mnv2_trainer import checkpoint as ckpt_lib

    reference = Path(__file__).parent / "data" / "mindcv-mobilenet_v2_075-params.tsv"
    mindcv_names = [
        line.split("\t")[0]
        for line in reference.read_text().splitlines()
        if line and not line.startswith(("#", "name\t"))
    ]
    entries = {}
    for label, normalize in (("old", None), ("new", ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)))):
        _net, cell = _train_cell(normalize, "mobilenet_v2_075", 1000)
        path = ckpt_lib.save_checkpoint(cell, str(tmp_path / f"{label}.ckpt"), {"epoch_num": 1})
        entries[label] = [(k, tuple(v.shape)) for k, v in ms.load_checkpoint(path).items()]
    assert entries["new"] == entries["old"]
    names = [k for k, _ in entries["new"]]
    network = [n for n in names if n.startswith(("features.", "classifier."))]
    assert len(mindcv_names) == 262 and sorted(network) == sorted(mindcv_names)
    assert not [n for n in names if "normal" in n.lower() or n.startswith("network.")]


# --------------------------------------------------------------------------- compiled results
@pytest.mark.slow
def test_graph_mode_normalisation_equals_the_pipelines(image_files) -> None:
    import mindspore as ms
    from mindspore.dataset import transforms
    from mnv2_trainer import data

    old = transforms.Compose(data.create_transforms(CFG, is_training=False, normalize=True))
    new = transforms.Compose(data.create_transforms(CFG, is_training=False))
    raws = [np.frombuffer(p.read_bytes(), dtype=np.uint8) for p in image_files]
    expected = np.stack([old(r) for r in raws])
    batch = np.stack([new(r) for r in raws])
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = _normalize(batch)
    finally:
        ms.set_context(mode=mode)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < ATOL


@pytest.mark.slow
def test_fixed_checkpoint_evaluates_the_same_on_both_paths(tmp_path: Path) -> None:
    import mindspore as ms
    from mnv2_trainer import data
    from mnv2_trainer.evaluate import evaluate
    from mnv2_trainer.input_norm import wrap_network
    from mnv2_trainer.model import create_model

    cfg = dict(
        CFG,
        mean=None,
        std=None,
        dataset="digits",
        data_dir=str(tmp_path / "digits"),
        batch_size=32,
        num_parallel_workers=1,
        seed=1,
    )
    ms.set_seed(11)
    path = str(tmp_path / "fixed.ckpt")
    ms.save_checkpoint(create_model(SMALL, num_classes=10), path)
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        results = {}
        for label, normalize in (("old", True), ("new", None)):
            loader = data.create_loader(cfg, "val", is_training=False, normalize=normalize, num_samples=96)
            net = wrap_network(create_model(SMALL, num_classes=10, checkpoint_path=path), loader.normalize)
            results[label] = evaluate(net, loader.dataset, label_smoothing=0.1)
    finally:
        ms.set_context(mode=mode)
    old, new = results["old"], results["new"]
    assert old.num_images == new.num_images == 96
    assert new.top1 == old.top1 and new.top5 == old.top5
    assert new.loss == pytest.approx(old.loss, rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_train_steps_are_the_same_on_both_paths() -> None:
    import mindspore as ms
    from mindspore import dataset as ds
    from mindspore.dataset import vision
    from mnv2_trainer import data

    rng = np.random.default_rng(2)
    uint8 = [rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    labels = [rng.integers(0, 10, size=(8,)).astype(np.int32) for _ in range(2)]
    mean, std = data.mean_std(CFG)
    # what the old pipeline's last two ops made of the same images
    tail = ds.transforms.Compose([vision.Normalize(list(mean), list(std)), vision.HWC2CHW()])
    floats = [np.stack([tail(img) for img in batch]) for batch in uint8]
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        runs = {}
        for label, normalize, batches in (("old", None, floats), ("new", (mean, std), uint8)):
            net, cell = _train_cell(normalize)
            cell.set_train(True)
            losses = [
                float(cell(ms.Tensor(x), ms.Tensor(y)).asnumpy())
                for x, y in zip(batches, labels, strict=True)
            ]
            runs[label] = losses, {p.name: p.asnumpy() for p in net.get_parameters()}
    finally:
        ms.set_context(mode=mode)
    (old_losses, old_params), (new_losses, new_params) = runs["old"], runs["new"]
    np.testing.assert_allclose(new_losses, old_losses, rtol=1e-6, atol=1e-6)
    assert new_params.keys() == old_params.keys()
    for name, value in old_params.items():
        np.testing.assert_allclose(new_params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
