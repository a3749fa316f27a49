"""Datasets, MindCV's transforms and rank sharding for the trainer.

Three datasets, chosen by the config key ``dataset``:

* ``imagenet`` / ``imagefolder`` (or any other name): an ImageNet-layout folder,
  ``<data_dir>/<split>/<class>/<image>``; class indices follow the sorted class folder names, as in
  MindSpore's ``ImageFolderDataset``.
* ``digits``: scikit-learn's bundled 8x8 digits written as RGB PNGs (upscaled 4x by nearest to
  32x32) into ``<data_dir>/train`` and ``<data_dir>/val``; every 5th image goes to val
  (1437 train / 360 val). Generated on first use; see :func:`ensure_digits`.
* ``synthetic``: random decoded images for throughput runs (no files).

The transforms are MindCV 0.3.0's ``transforms_imagenet_train`` / ``transforms_imagenet_eval``
rebuilt from ``mindspore.dataset.vision`` (MindCV is not imported at run time), except that by
default they stop before MindCV's last two ops, ``Normalize`` and ``HWC2CHW``: batches leave the
pipeline as uint8 NHWC (a quarter of the bytes, less CPU per image) and the network normalises them
in its graph with the same values (:mod:`.input_norm`; ``Loader.normalize`` says what to apply).
Options that MindCV applies to normalised float images (random erasing, mixup, cutmix; see
:func:`needs_float_pipeline`) keep MindCV's float pipeline.

Sharding: instead of MindSpore's ``num_shards``/``shard_id`` we feed the image folder a small
Python sampler whose order comes from :func:`shard_indices`. The math is the same as MindSpore's
``DistributedSampler`` (one global permutation per epoch from a seed shared by all ranks, padded to
a multiple of the rank count, rank ``r`` takes every ``n``-th index starting at ``r``), but it is a
pure function of ``(epoch, seed)`` so that (a) a resumed run sees exactly the data order it would
have seen, (b) the shards can be logged and checked, and (c) validation shards are not padded, so
metrics summed over ranks are exact.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

# MindCV's defaults (mindcv/data/constants.py), on the 0..255 HWC scale.
IMAGENET_DEFAULT_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_DEFAULT_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
DEFAULT_CROP_PCT = 0.875

DIGITS_NUM_CLASSES = 10
DIGITS_IMAGE_SIZE = 32
DIGITS_VAL_EVERY = 5
#: Below this many samples per shard, the per-rank log lists every sample index of every epoch.
LOG_INDICES_MAX = 5000
#: (config key, value that means "off") of MindCV augmentations that work on normalised float
#: images: random erasing (after ``HWC2CHW``, fills with normal noise) and mixup / cutmix (blend
#: whole batches). With any of them on, the pipeline must normalise as MindCV's does.
FLOAT_SPACE_AUGMENTATIONS = (("re_prob", 0.0), ("mixup", 0.0), ("cutmix", 0.0))


# --------------------------------------------------------------------------- pure sharding math
def shard_indices(
    num_samples: int,
    num_shards: int,
    shard_id: int,
    *,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    pad: bool = True,
    limit: int | None = None,
) -> list[int]:
    """Sample indices one rank reads in one epoch.

    Args:
        num_samples: size of the whole split.
        num_shards: number of ranks (1 when not distributed).
        shard_id: this rank, ``0 <= shard_id < num_shards``.
        epoch: 0-based epoch; with ``shuffle`` every epoch has its own permutation, the same on
            all ranks.
        seed: shared by all ranks.
        shuffle: permute the split (training) or keep file order (validation).
        pad: repeat the first indices of the permutation so every rank gets the same count
            (training: all ranks must run the same number of steps). Without padding the shards
            are an exact partition (validation: summed metrics count every image once).

    Returns:
        The indices for ``shard_id``, in reading order.
    """
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    order = list(range(num_samples))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if limit is not None:
        order = order[:limit]
        num_samples = len(order)
    if pad and num_samples:
        total = math.ceil(num_samples / num_shards) * num_shards
        order += (order * math.ceil(total / num_samples))[: total - num_samples]
    return order[shard_id::num_shards]


def shard_size(num_samples: int, num_shards: int, shard_id: int, pad: bool = True) -> int:
    """``len(shard_indices(...))`` without building the list."""
    if pad:
        return math.ceil(num_samples / num_shards) if num_samples else 0
    return len(range(shard_id, num_samples, num_shards))


def steps_per_epoch(num_samples: int, num_shards: int, batch_size: int) -> int:
    """Training steps per epoch: padded shard size, whole batches only (drop_remainder)."""
    return shard_size(num_samples, num_shards, 0, pad=True) // batch_size


# --------------------------------------------------------------------------- digits on disk
def _digits_split(index: int) -> str:
    return "val" if index % DIGITS_VAL_EVERY == 0 else "train"


def ensure_digits(data_dir: str | os.PathLike[str]) -> str:
    """Write scikit-learn's digits as an image folder under ``data_dir`` unless already there.

    Each split is written into a private temporary folder inside ``data_dir`` and then renamed into
    place in one ``os.rename``: a split folder that exists is complete. When several ranks (or pods
    sharing a volume) start at once, they all generate (it takes a second) and the first rename
    wins; the others find the target present and discard their copy. ``data_dir`` itself is never
    replaced, so it may be a mount point.

    Returns:
        ``data_dir`` as a string.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = os.fspath(data_dir)
    missing = [s for s in ("train", "val") if not os.path.isdir(os.path.join(root, s))]
    if not missing:
        return root
    os.makedirs(root, exist_ok=True)
    digits = load_digits()
    tmp = tempfile.mkdtemp(prefix=".digits-tmp-", dir=root)
    try:
        scale = DIGITS_IMAGE_SIZE // 8
        for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            split = _digits_split(i)
            if split not in missing:
                continue
            folder = os.path.join(tmp, split, str(int(label)))
            os.makedirs(folder, exist_ok=True)
            pixels = np.round(img * 255.0 / 16.0).astype(np.uint8)
            pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))  # nearest upscaling
            Image.fromarray(np.stack([pixels] * 3, axis=-1), "RGB").save(os.path.join(folder, f"{i:04d}.png"))
        for split in missing:
            try:
                os.rename(os.path.join(tmp, split), os.path.join(root, split))
                _logger.info("wrote the digits %s split to %s", split, os.path.join(root, split))
            except OSError:
                if not os.path.isdir(os.path.join(root, split)):
                    raise
                # another process renamed its copy first: identical content, keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def list_image_folder(split_dir: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Files and labels of an ImageNet-layout split, in MindSpore ``ImageFolderDataset`` order.

    Returns:
        ``([(path, label), ...], class_names)`` with classes sorted by folder name and files sorted
        by name within a class.
    """
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(
            f"dataset split folder {split_dir!r} does not exist: --data_dir must hold <split>/<class>/<image> "
            "folders (ImageNet layout), or set dataset to 'digits' or 'synthetic'"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"dataset split folder {split_dir!r} has no class subfolders")
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        folder = os.path.join(split_dir, cls)
        for name in sorted(os.listdir(folder)):
            if not name.startswith("."):
                samples.append((os.path.join(folder, name), label))
    if not samples:
        raise FileNotFoundError(f"dataset split folder {split_dir!r} has class folders but no images")
    return samples, classes


# --------------------------------------------------------------------------- MindSpore pipelines
@dataclass
class Loader:
    """A batched dataset and what the training loop needs to know about it.

    Attributes:
        dataset: the ``mindspore.dataset`` pipeline yielding ``(image, label)`` batches.
        num_samples: images in the whole split (all ranks).
        shard_samples: images this rank reads per epoch.
        num_batches: batches this rank yields per epoch.
        num_classes: classes in the split.
        normalize: ``(mean, std)`` (0..255 scale) the network must apply to the batches, which are
            uint8 NHWC (see :func:`.input_norm.wrap_network`); ``None`` when the pipeline already
            normalised them (float32 NCHW, MindCV's layout).
    """

    dataset: Any
    num_samples: int
    shard_samples: int
    num_batches: int
    num_classes: int
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def _interpolation(name: str) -> Any:
    from mindspore.dataset.vision import Inter

    return getattr(Inter, str(name).upper(), Inter.BILINEAR)


def mean_std(cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The config's ``mean`` and ``std`` (0..255 scale; MindCV's ImageNet defaults when unset)."""
    mean = tuple(float(v) for v in (cfg.get("mean") or IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in (cfg.get("std") or IMAGENET_DEFAULT_STD))
    return mean, std


def needs_float_pipeline(cfg: dict[str, Any], is_training: bool) -> list[str]:
    """Why this pipeline must normalise (MindCV's float32 CHW output) instead of ending at uint8.

    An augmentation that MindCV applies after ``Normalize`` sees normalised float images (random
    erasing fills with normal noise in that space; mixup/cutmix blend images into values no uint8
    holds), so moving the normalisation into the network would change its results. Evaluation has
    none of them.

    Returns:
        The active float-space options as ``"key=value"`` (empty: uint8 batches are exact).
    """
    if not is_training:
        return []
    return [f"{key}={cfg[key]!r}" for key, off in FLOAT_SPACE_AUGMENTATIONS if (cfg.get(key) or off) != off]


def create_transforms(
    cfg: dict[str, Any], is_training: bool, decode: bool = True, normalize: bool | None = None
) -> list[Any]:
    """MindCV's ImageNet train or eval transforms for the config.

    Train: RandomCropDecodeResize(image_resize, scale, ratio), RandomHorizontalFlip(hflip),
    RandomVerticalFlip(vflip), RandomColorAdjust(color_jitter), [Normalize(mean, std), HWC2CHW].
    Eval: Decode, Resize(floor(image_resize / crop_pct)), CenterCrop(image_resize), [Normalize,
    HWC2CHW].

    Args:
        cfg: the resolved config (MindCV keys).
        is_training: train or eval pipeline.
        decode: ``False`` for already decoded images (the synthetic dataset).
        normalize: end with MindCV's ``Normalize`` + ``HWC2CHW`` (float32 CHW images) or stop
            before them (uint8 HWC, normalised by the network). ``None``: only when
            :func:`needs_float_pipeline` says so.
    """
    from mindspore.dataset import vision

    if normalize is None:
        normalize = bool(needs_float_pipeline(cfg, is_training))
    size = int(cfg.get("image_resize", 224))
    interp = _interpolation(cfg.get("interpolation", "bilinear"))
    mean, std = (list(v) for v in mean_std(cfg))
    if is_training:
        if cfg.get("auto_augment"):
            raise ValueError("config key auto_augment is not supported by this trainer; set it to null")
        scale = tuple(cfg.get("scale") or (0.08, 1.0))
        ratio = tuple(cfg.get("ratio") or (0.75, 1.333))
        crop_cls = vision.RandomCropDecodeResize if decode else vision.RandomResizedCrop
        ops: list[Any] = [crop_cls(size=size, scale=scale, ratio=ratio, interpolation=interp)]
        hflip, vflip = float(cfg.get("hflip", 0.5) or 0), float(cfg.get("vflip", 0.0) or 0)
        if hflip > 0:
            ops.append(vision.RandomHorizontalFlip(prob=hflip))
        if vflip > 0:
            ops.append(vision.RandomVerticalFlip(prob=vflip))
        jitter = cfg.get("color_jitter")
        if jitter:  # MindCV adds RandomColorAdjust for any non-None value; 0 is a no-op either way
            jitter = tuple(jitter) if isinstance(jitter, list | tuple) else (float(jitter),) * 3
            ops.append(vision.RandomColorAdjust(*jitter))
    else:
        crop_pct = float(cfg.get("crop_pct", DEFAULT_CROP_PCT))
        ops = [vision.Decode()] if decode else []
        ops += [
            vision.Resize(int(math.floor(size / crop_pct)), interpolation=interp),
            vision.CenterCrop(size),
        ]
    if normalize:
        ops += [vision.Normalize(mean=mean, std=std), vision.HWC2CHW()]
    return ops


def _make_sampler(
    num_samples: int,
    num_shards: int,
    shard_id: int,
    *,
    shuffle: bool,
    pad: bool,
    seed: int,
    start_epoch: int,
    limit: int | None = None,
    label: str = "",
) -> Any:
    import mindspore.dataset as ds

    class ShardSampler(ds.Sampler):
        """Feeds :func:`shard_indices`; MindSpore calls ``__iter__`` once per epoch."""

        def __init__(self) -> None:
            used = num_samples if limit is None else min(limit, num_samples)
            super().__init__(num_samples=shard_size(used, num_shards, shard_id, pad))
            self.epoch = start_epoch

        def __iter__(self) -> Iterator[int]:
            idx = shard_indices(
                num_samples,
                num_shards,
                shard_id,
                epoch=self.epoch,
                seed=seed,
                shuffle=shuffle,
                pad=pad,
                limit=limit,
            )
            if len(idx) <= LOG_INDICES_MAX:
                _logger.debug(
                    "%s shard %d/%d epoch %d indices %s", label, shard_id, num_shards, self.epoch + 1, idx
                )
            self.epoch += 1
            return iter(idx)

    return ShardSampler()


def _synthetic_source(num: int, size: int, num_classes: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(num,), dtype=np.int32)
    return images, labels


class _ArraySource:
    """Random-access source for ``GeneratorDataset`` (so that our sampler applies)."""

    def __init__(self, images: Any, labels: Any) -> None:
        self.images, self.labels = images, labels

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.images[i], self.labels[i]

    def __len__(self) -> int:
        return len(self.labels)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. after msrun --bind_core), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, os.cpu_count() or cores))


def clamp_parallel_workers(
    cfg: dict[str, Any], cores: int | None = None
) -> tuple[dict[str, Any], str | None]:
    """``cfg`` with ``num_parallel_workers`` at most the available cores, and a note when it was lowered.

    MindSpore refuses more workers than the machine's cores ("num_parallel_workers exceeds the boundary
    between 1 and N"), and more than the process's own cores only adds contention; a recipe written for
    a large server (8 workers) must still run on a small one.
    """
    requested = int(cfg.get("num_parallel_workers") or 1)
    cores = available_cores() if cores is None else cores
    if requested <= cores:
        return cfg, None
    note = (
        f"num_parallel_workers {requested} is more than the {cores} CPU core(s) available to this process: "
        f"using {cores}"
    )
    return dict(cfg, num_parallel_workers=cores), note


def create_loader(
    cfg: dict[str, Any],
    split: str,
    *,
    is_training: bool,
    num_shards: int = 1,
    shard_id: int = 0,
    start_epoch: int = 0,
    num_samples: int | None = None,
    normalize: bool | None = None,
) -> Loader:
    """Build the batched pipeline of one split for one rank.

    Args:
        cfg: resolved config; uses ``dataset``, ``data_dir``, ``batch_size``, ``num_parallel_workers``,
            ``seed``, ``num_classes`` (synthetic) and the transform keys.
        split: folder name under ``data_dir`` (``train_split`` / ``val_split``).
        is_training: shuffle, pad shards, random augmentation, drop the last partial batch (unless
            ``drop_remainder`` is False).
        num_shards, shard_id: data-parallel rank layout.
        start_epoch: 0-based epoch the first iteration belongs to (resume), so the data order
            continues where the interrupted run was.
        normalize: see :func:`create_transforms`; by default uint8 NHWC batches unless a
            float-space augmentation is on. ``Loader.normalize`` tells the network what to apply.
    """
    name = str(cfg.get("dataset", "imagenet")).lower()
    batch_size = int(cfg["batch_size"])
    workers = int(cfg.get("num_parallel_workers") or 1)
    seed = int(cfg.get("seed", 42) or 0)
    shuffle = is_training and bool(cfg.get("shuffle", True))

    def sampler_for(count: int) -> Any:
        return _make_sampler(
            count,
            num_shards,
            shard_id,
            shuffle=shuffle,
            pad=is_training,
            seed=seed,
            start_epoch=start_epoch,
            limit=num_samples,
            label=split,
        )

    if name == "synthetic":
        count = batch_size * num_shards * (20 if is_training else 2)
        dataset, num_classes = _synthetic_split(cfg, count, seed + (0 if is_training else 1), sampler_for)
        decode = False
    else:
        dataset, count, num_classes = _image_folder_split(cfg, name, split, workers, sampler_for)
        decode = True
    if num_samples is not None and num_samples < count:
        count = num_samples
    shard_samples = shard_size(count, num_shards, shard_id, pad=is_training)
    _logger.info(
        "%s split %r: %d images, %d classes; shard %d/%d reads %d per epoch",
        name,
        split,
        count,
        num_classes,
        shard_id,
        num_shards,
        shard_samples,
    )
    if normalize is None:
        normalize = _pipeline_normalises(cfg, is_training, f"{name} split {split!r}")
    # MindCV drops the last partial training batch by default (drop_remainder: True); validation
    # always keeps it so that every image is counted.
    drop = is_training and bool(cfg.get("drop_remainder", True))
    dataset = _transform_and_batch(cfg, dataset, is_training, decode, normalize, workers, drop)
    num_batches = shard_samples // batch_size if drop else math.ceil(shard_samples / batch_size)
    if is_training and num_batches == 0:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {shard_samples} training images each of the "
            f"{num_shards} rank(s) reads: lower batch_size"
        )
    return Loader(
        dataset, count, shard_samples, num_batches, num_classes, None if normalize else mean_std(cfg)
    )


def _synthetic_split(
    cfg: dict[str, Any], count: int, seed: int, sampler_for: Callable[[int], Any]
) -> tuple[Any, int]:
    """``count`` random images at ``image_resize`` (a throughput smoke test: 20 training steps per
    rank, or 2 validation batches); returns the dataset and its number of classes."""
    import mindspore.dataset as ds

    size = int(cfg.get("image_resize", 224))
    num_classes = int(cfg.get("num_classes") or 1000)
    images, labels = _synthetic_source(count, size, num_classes, seed)
    dataset = ds.GeneratorDataset(
        _ArraySource(images, labels), column_names=["image", "label"], sampler=sampler_for(count)
    )
    return dataset, num_classes


def _image_folder_split(
    cfg: dict[str, Any], name: str, split: str, workers: int, sampler_for: Callable[[int], Any]
) -> tuple[Any, int, int]:
    """The split's folder of ``<class>/<image>`` files (written first for ``digits``); returns the
    dataset, its number of files and of classes, as MindSpore counts them."""
    import mindspore.dataset as ds

    data_dir = cfg.get("data_dir")
    if not data_dir:
        raise ValueError(f"dataset {name!r} needs --data_dir (the folder that holds {split}/<class>/...)")
    if name == "digits":
        ensure_digits(data_dir)
    split_dir = os.path.join(os.fspath(data_dir), split)
    samples, classes = list_image_folder(split_dir)  # clear errors for a wrong layout
    # The sampler indexes MindSpore's own file list, so its count is the one that matters (it
    # may differ from ours, e.g. for hidden files).
    probe = ds.ImageFolderDataset(split_dir, shuffle=False)
    count, num_classes = probe.get_dataset_size(), len(probe.get_class_indexing())
    if count != len(samples):
        _logger.warning(
            "%s: MindSpore reads %d files, %d of them look like images; check for stray files",
            split_dir,
            count,
            len(samples),
        )
    dataset = ds.ImageFolderDataset(split_dir, sampler=sampler_for(count), num_parallel_workers=workers)
    return dataset, count, num_classes


def _pipeline_normalises(cfg: dict[str, Any], is_training: bool, what: str) -> bool:
    """Whether the pipeline must normalise (float32 CHW batches): only for float-space augmentations."""
    reasons = needs_float_pipeline(cfg, is_training)
    if reasons:
        _logger.info("%s: the pipeline normalises (float32 CHW batches) for %s", what, ", ".join(reasons))
    return bool(reasons)


def _transform_and_batch(
    cfg: dict[str, Any],
    dataset: Any,
    is_training: bool,
    decode: bool,
    normalize: bool,
    workers: int,
    drop: bool,
) -> Any:
    """Labels to int32, the split's image transforms, batches of ``batch_size``."""
    import mindspore as ms
    from mindspore.dataset import transforms

    dataset = dataset.map(
        operations=transforms.TypeCast(ms.int32), input_columns="label", num_parallel_workers=workers
    )
    dataset = dataset.map(
        operations=create_transforms(cfg, is_training, decode=decode, normalize=normalize),
        input_columns="image",
        num_parallel_workers=workers,
    )
    return dataset.batch(int(cfg["batch_size"]), drop_remainder=drop)


def describe_transforms(ops: Sequence[Any]) -> str:
    """One-line summary of a transform list for the start-of-run log."""
    return ", ".join(type(op).__name__ for op in ops)
