"""The training configuration: MindCV's keys and defaults, loaded from YAML, checked, overridable.

A config is a flat ``dict`` whose keys are exactly the options of MindCV 0.3.0's ``config.py``
argument parser (``lr``, ``batch_size``, ``amp_level``, ...) with MindCV's defaults, plus a few keys
of ours (see :data:`EXTRA_KEYS`). Precedence, lowest first, is MindCV's: built-in defaults, then the
YAML file (``-c/--config``), then command-line flags (``--key value``).

Where we are stricter than MindCV:

* an unknown or mistyped key is a :class:`ConfigError` naming the key and the closest valid one
  (MindCV raises a bare ``KeyError`` for YAML keys; a misspelt flag is an argparse usage error);
* every value is type-checked and converted (``lr: fast`` fails; PyYAML reads ``3e-5`` as a string,
  we accept it as the number it is), and choices/ranges are enforced (``amp_level: O4`` fails);
* booleans given on the command line are parsed with MindCV's ``str2bool`` rules for *every* boolean
  key (MindCV's ``--drop_overflow_update False`` is ``True``, because that flag uses ``type=bool``);
* list values (``scale``, ``mean``, ...) can be given on the command line as ``0.08,1.0``,
  ``[0.08, 1.0]`` or ``0.08 1.0`` (MindCV's ``type=tuple`` splits the string into characters).

MindCV's YAML files are flat mappings (its ``parse_args`` passes the file straight to
``parser.set_defaults``), and so are ours: a nested section is reported as an error, not flattened.

Learning-rate scaling: MindCV's recipes are tuned for a global batch of ``batch_size`` x 8 cards and
MindCV's README says to scale the learning rate linearly when the global batch changes.
:func:`load_recipe` records that reference in ``reference_global_batch`` (``batch_size`` x
:data:`REFERENCE_DEVICE_NUM` unless the YAML sets it), and :func:`scale_lr` applies the rule.

This module imports neither MindSpore nor numpy: the operator imports it to resolve recipes.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model_names import MODEL_NAMES, unknown_name_hint

__all__ = [
    "DEFAULT_RECIPE",
    "EXTRA_KEYS",
    "KEYS",
    "RECIPES_DIR",
    "REFERENCE_DEVICE_NUM",
    "ConfigError",
    "Key",
    "available_recipes",
    "defaults",
    "dump_config",
    "load_builtin_recipe",
    "load_recipe",
    "load_yaml",
    "parse_args",
    "resolve_config",
    "scale_lr",
    "str2bool",
]

#: Folder of the built-in recipes (``<name>.yaml``).
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
#: The recipe used when a job names none.
DEFAULT_RECIPE = "mobilenet_v2_0.75_ascend"
#: Cards behind MindCV's published MobileNetV2 results (``msrun --worker_num 8``): a recipe's lr is
#: tuned for a global batch of ``batch_size * REFERENCE_DEVICE_NUM`` unless it says otherwise.
REFERENCE_DEVICE_NUM = 8


class ConfigError(ValueError):
    """An invalid configuration; the message names the key (and the source) and what would fix it."""


def str2bool(value: str | bool) -> bool:
    """MindCV's boolean parsing: yes/true/1 and no/false/0, any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "1"):
        return True
    if text in ("no", "false", "0"):
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


@dataclass(frozen=True)
class Key:
    """One configuration key.

    Attributes:
        name: the key, as in MindCV's ``config.py``.
        kind: ``int``, ``float``, ``bool``, ``str``, ``floats`` or ``ints`` (lists), or ``any``.
        default: MindCV's default (lists instead of tuples, so the config dumps to plain YAML).
        help: one line of documentation.
        group: MindCV's argument group (for ``--help``).
        choices: allowed values, if restricted.
        nullable: ``None`` (YAML ``null``, command line ``None``) is allowed.
        length: required list length for ``floats``/``ints``.
        check: extra validation; returns an error text or ``None``.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    length: int | None = None
    check: Callable[[Any], str | None] | None = None


def _positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must be >= 0"


def _probability(value: Any) -> str | None:
    return None if value is None or 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _fraction_open(value: Any) -> str | None:
    return None if value is None or 0.0 <= value < 1.0 else "must be in [0, 1)"


def _crop_pct(value: Any) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def _ordered_pair(value: Any) -> str | None:
    return None if 0 < value[0] <= value[1] else "must be [low, high] with 0 < low <= high"


def _model_name(value: Any) -> str | None:
    return None if value in MODEL_NAMES else f"is not a supported MobileNetV2 name{unknown_name_hint(value)}"


def _resume(value: Any) -> str | None:
    return None if value.strip() else "must be 'auto', 'never' or a checkpoint path"


_AMP_LEVELS = ("O0", "O1", "O2", "O3")
# cells amp_cast_list may name (mnv2_trainer.amp maps them to MindSpore classes; MindCV eval()s the text)
AMP_CAST_CELLS = (
    "nn.Dense",
    "nn.Conv1d",
    "nn.Conv2d",
    "nn.Conv3d",
    "nn.Conv1dTranspose",
    "nn.Conv2dTranspose",
    "nn.Conv3dTranspose",
    "nn.BatchNorm1d",
    "nn.BatchNorm2d",
    "nn.BatchNorm3d",
    "nn.LayerNorm",
)


def cast_list_names(text: Any) -> list[str]:
    """``"[nn.Conv2d, nn.Dense]"`` -> ``["nn.Conv2d", "nn.Dense"]``; ``[]`` for None/empty."""
    if text is None:
        return []
    return [name.strip().strip("'\"") for name in str(text).strip().strip("[]()").split(",") if name.strip()]


def _cast_list(value: Any) -> str | None:
    names = cast_list_names(value)
    unknown = [name for name in names if name not in AMP_CAST_CELLS]
    if value is not None and (unknown or not names):
        return f"names unknown cells {unknown}; use a list of {list(AMP_CAST_CELLS)}, e.g. '[nn.Conv2d, nn.Dense]'"
    return None


_INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "linear", "cubic", "pilcubic", "antialias")
#: Datasets: MindCV's ``imagenet`` plus ours (see data.py). ``imagenet`` and ``imagefolder`` both read
#: ``<data_dir>/<split>/<class>/<image>``; ``synthetic`` and ``digits`` need no data on disk.
DATASETS = ("imagenet", "imagefolder", "synthetic", "digits")

# fmt: off
_KEY_LIST: list[Key] = [
    Key("config", "str", "", "YAML config file the values were read from (-c/--config)", "System parameters"),
    # System parameters
    Key("mode", "int", 0, "GRAPH_MODE (0) or PYNATIVE_MODE (1)", "System parameters", choices=(0, 1)),
    Key("distribute", "bool", False, "run data-parallel under msrun (mindspore.communication.init())",
        "System parameters"),
    Key("val_while_train", "bool", False, "validate while training", "System parameters"),
    Key("val_interval", "int", 1, "validation interval in epochs", "System parameters", check=_positive),
    Key("log_interval", "int", 100, "training log interval in steps", "System parameters", check=_positive),
    Key("seed", "int", 42, "seed for numpy, random and MindSpore", "System parameters"),
    Key("device_target", "str", "Ascend", "Ascend, GPU or CPU", "System parameters",
        choices=("Ascend", "GPU", "CPU")),
    # Dataset parameters
    Key("dataset", "str", "imagenet", f"dataset type: {', '.join(DATASETS)}", "Dataset parameters",
        choices=DATASETS),
    Key("data_dir", "str", "./", "path to the dataset", "Dataset parameters"),
    Key("train_split", "str", "train", "train split (sub-folder) name", "Dataset parameters"),
    Key("val_split", "str", "val", "validation split (sub-folder) name", "Dataset parameters"),
    Key("dataset_download", "bool", False, "download the dataset (MindCV: Mnist/Cifar only; unused here)",
        "Dataset parameters"),
    Key("num_parallel_workers", "int", 8, "data pipeline workers", "Dataset parameters", check=_positive),
    Key("shuffle", "bool", True, "shuffle the training data", "Dataset parameters"),
    Key("num_samples", "int", None, "number of elements to sample (None: all)", "Dataset parameters",
        nullable=True, check=_positive),
    Key("batch_size", "int", 128, "batch size per card", "Dataset parameters", check=_positive),
    Key("drop_remainder", "bool", True, "drop the last incomplete batch", "Dataset parameters"),
    # Augmentation parameters
    Key("image_resize", "int", 224, "training crop size", "Augmentation parameters", check=_positive),
    Key("scale", "floats", [0.08, 1.0], "random resized crop area range", "Augmentation parameters",
        length=2, check=_ordered_pair),
    Key("ratio", "floats", [0.75, 1.333], "random resized crop aspect ratio range", "Augmentation parameters",
        length=2, check=_ordered_pair),
    Key("hflip", "float", 0.5, "horizontal flip probability", "Augmentation parameters", check=_probability),
    Key("vflip", "float", 0.0, "vertical flip probability", "Augmentation parameters", check=_probability),
    Key("color_jitter", "float", 0.4, "brightness/contrast/saturation jitter (None: off)",
        "Augmentation parameters", nullable=True, check=_non_negative),
    Key("interpolation", "str", "bilinear", "resize interpolation", "Augmentation parameters",
        choices=_INTERPOLATIONS),
    Key("auto_augment", "str", None, "AutoAugment policy, e.g. randaug-m7-mstd0.5 (None: off)",
        "Augmentation parameters", nullable=True),
    Key("aug_splits", "int", 0, "augmentation splits (0 or 3)", "Augmentation parameters", choices=(0, 3)),
    Key("re_prob", "float", 0.0, "random erasing probability", "Augmentation parameters", check=_probability),
    Key("re_scale", "floats", [0.02, 0.33], "random erasing area range", "Augmentation parameters",
        length=2, check=_ordered_pair),
    Key("re_ratio", "floats", [0.3, 3.3], "random erasing aspect ratio range", "Augmentation parameters",
        length=2, check=_ordered_pair),
    Key("re_value", "any", 0, "random erasing fill value (number, list or 'random')", "Augmentation parameters"),
    Key("re_max_attempts", "int", 10, "random erasing attempts", "Augmentation parameters", check=_positive),
    Key("mean", "floats", [0.485 * 255, 0.456 * 255, 0.406 * 255], "per-channel mean (0..255 scale)",
        "Augmentation parameters", length=3),
    Key("std", "floats", [0.229 * 255, 0.224 * 255, 0.225 * 255], "per-channel std (0..255 scale)",
        "Augmentation parameters", length=3, check=lambda v: None if min(v) > 0 else "must be > 0"),
    Key("crop_pct", "float", 0.875, "validation center-crop fraction", "Augmentation parameters",
        check=_crop_pct),
    Key("mixup", "float", 0.0, "mixup beta parameter (0: off)", "Augmentation parameters", check=_non_negative),
    Key("cutmix", "float", 0.0, "cutmix beta parameter (0: off)", "Augmentation parameters", check=_non_negative),
    Key("cutmix_prob", "float", 1.0, "probability of mixup/cutmix", "Augmentation parameters",
        check=_probability),
    Key("aug_repeats", "int", 0, "repeated augmentation count (0/1: off)", "Augmentation parameters",
        check=_non_negative),
    # Model parameters
    Key("model", "str", "mobilenet_v2_035_224", "model name (MindCV's)", "Model parameters", check=_model_name),
    Key("num_classes", "int", None, "number of classes (None: from the dataset)", "Model parameters",
        nullable=True, check=_positive),
    Key("in_channels", "int", 3, "input channels", "Model parameters", check=_positive),
    Key("drop_rate", "float", None, "dropout before the classifier (None: the model's 0.2)", "Model parameters",
        nullable=True, check=_fraction_open),
    Key("drop_path_rate", "float", None, "drop path rate (unused by MobileNetV2)", "Model parameters",
        nullable=True, check=_fraction_open),
    Key("pretrained", "bool", False, "load MindCV's published weights (needs the download URL reachable)",
        "Model parameters"),
    Key("ckpt_path", "str", "", "initialise the model from this checkpoint", "Model parameters"),
    Key("resume_opt", "bool", False, "with ckpt_path: also restore optimizer state and lr position",
        "Model parameters"),
    Key("keep_checkpoint_max", "int", 10, "checkpoints kept", "Model parameters", check=_positive),
    Key("ckpt_save_dir", "str", "./ckpt", "checkpoint (and log, metrics) folder", "Model parameters"),
    Key("ckpt_save_interval", "int", 1, "checkpoint interval in epochs", "Model parameters", check=_positive),
    Key("ckpt_save_policy", "str", "latest_k", "None, top_k or latest_k", "Model parameters",
        nullable=True, choices=("top_k", "latest_k")),
    Key("epoch_size", "int", 90, "training epochs", "Model parameters", check=_positive),
    Key("dataset_sink_mode", "bool", True, "dataset sink mode", "Model parameters"),
    Key("ema", "bool", False, "keep an exponential moving average of the weights", "Model parameters"),
    Key("ema_decay", "float", 0.9999, "EMA decay", "Model parameters", check=_probability),
    Key("clip_grad", "bool", False, "clip gradients", "Model parameters"),
    Key("clip_value", "float", 15.0, "gradient clip value", "Model parameters", check=_positive),
    Key("layer_decay", "float", None, "layer-wise lr decay (None: off)", "Model parameters", nullable=True),
    Key("gradient_accumulation_steps", "int", 1, "accumulate gradients over this many batches",
        "Model parameters", check=_positive),
    # Optimizer parameters
    Key("opt", "str", "adam", "optimizer", "Optimizer parameters",
        choices=("sgd", "momentum", "adam", "adamw", "lion", "rmsprop", "adagrad", "lamb", "nadam")),
    Key("momentum", "float", 0.9, "momentum", "Optimizer parameters", check=_non_negative),
    Key("weight_decay", "float", 1e-6, "weight decay", "Optimizer parameters", check=_non_negative),
    Key("use_nesterov", "bool", False, "Nesterov momentum", "Optimizer parameters"),
    Key("weight_decay_filter", "str", "disable", "parameters exempt from weight decay",
        "Optimizer parameters", choices=("disable", "auto", "norm_and_bias")),
    Key("eps", "float", 1e-10, "optimizer epsilon", "Optimizer parameters", check=_positive),
    # Scheduler parameters
    Key("scheduler", "str", "cosine_decay", "learning-rate schedule", "Scheduler parameters",
        choices=("constant", "cosine_decay", "exponential_decay", "step_decay", "multi_step_decay",
                 "one_cycle", "cyclic")),
    Key("lr", "float", 0.001, "peak learning rate", "Scheduler parameters", check=_non_negative),
    Key("min_lr", "float", 1e-6, "final learning rate", "Scheduler parameters", check=_non_negative),
    Key("warmup_epochs", "int", 3, "linear warmup epochs", "Scheduler parameters", check=_non_negative),
    Key("warmup_factor", "float", 0.0, "warmup starts at lr * warmup_factor", "Scheduler parameters",
        check=_non_negative),
    Key("decay_epochs", "int", 100, "epochs of decay after warmup", "Scheduler parameters", check=_non_negative),
    Key("decay_rate", "float", 0.9, "decay rate (step/exponential schedules)", "Scheduler parameters"),
    Key("multi_step_decay_milestones", "ints", [30, 60, 90], "milestones of multi_step_decay (epochs)",
        "Scheduler parameters"),
    Key("lr_epoch_stair", "bool", False, "update lr once per epoch instead of every step",
        "Scheduler parameters"),
    Key("num_cycles", "int", 1, "cosine/cyclic cycles", "Scheduler parameters", check=_positive),
    Key("cycle_decay", "float", 1.0, "lr decay per cosine cycle", "Scheduler parameters"),
    # Loss parameters
    Key("loss", "str", "CE", "CE (cross entropy) or BCE", "Loss parameters", choices=("BCE", "CE")),
    Key("label_smoothing", "float", 0.0, "label smoothing", "Loss parameters", check=_fraction_open),
    Key("aux_factor", "float", 0.0, "auxiliary loss factor", "Loss parameters", check=_non_negative),
    Key("reduction", "str", "mean", "loss reduction", "Loss parameters", choices=("mean", "sum", "none")),
    # Auto mixing precision parameters
    Key("amp_level", "str", "O0", "AMP level for training: O0 fp32 .. O3 all fp16",
        "Auto mixing precision parameters", choices=_AMP_LEVELS),
    Key("val_amp_level", "str", "O0", "AMP level for validation", "Auto mixing precision parameters",
        choices=_AMP_LEVELS),
    Key("amp_cast_list", "str", None, "cells to cast for O1/O2, e.g. '[nn.Conv2d]' (None: built-in lists)",
        "Auto mixing precision parameters", nullable=True, check=_cast_list),
    Key("loss_scale_type", "str", "fixed", "fixed, dynamic or auto", "Auto mixing precision parameters",
        choices=("fixed", "dynamic", "auto")),
    Key("loss_scale", "float", 1.0, "(initial) loss scale", "Auto mixing precision parameters", check=_positive),
    Key("drop_overflow_update", "bool", False, "skip the update on overflow",
        "Auto mixing precision parameters"),
    Key("eval_shuffle", "bool", False, "shuffle the validation data", "Auto mixing precision parameters"),
]

#: Keys of ours, not MindCV's (kept few; each is documented in ``--help`` and here).
_EXTRA_KEY_LIST: list[Key] = [
    Key("resume", "str", "auto",
        "'auto': continue from the newest valid checkpoint in ckpt_save_dir (else start fresh); "
        "'never': start fresh; or a checkpoint path to continue from", "mnv2 extensions", check=_resume),
    Key("ignore_classifier", "bool", False,
        "with ckpt_path: load everything except classifier.* (fine-tune a checkpoint, e.g. MindCV's "
        "1000-class weights, to another num_classes); when off, a classifier of another size is an error",
        "mnv2 extensions"),
    Key("reference_global_batch", "int", None,
        "global batch (batch_size x cards) the recipe's lr is tuned for; scale_lr() scales lr from it. "
        f"load_recipe() sets it to batch_size x {REFERENCE_DEVICE_NUM} when the YAML leaves it out",
        "mnv2 extensions", nullable=True, check=_positive),
]
# fmt: on

#: Every key, by name: MindCV's parser options in MindCV's order, then ours.
KEYS: dict[str, Key] = {k.name: k for k in _KEY_LIST + _EXTRA_KEY_LIST}
#: The names of our extension keys.
EXTRA_KEYS: tuple[str, ...] = tuple(k.name for k in _EXTRA_KEY_LIST)


def defaults() -> dict[str, Any]:
    """A fresh config holding every key's default (MindCV's defaults, plus ours)."""
    return {name: (list(k.default) if isinstance(k.default, list) else k.default) for name, k in KEYS.items()}


# Keys of older MindCV versions that MindCV 0.3.0 no longer accepts, and what replaced them.
_RENAMED = {
    "filter_bias_and_bn": "MindCV 0.3.0 replaced it by weight_decay_filter "
    "('norm_and_bias' for True, 'disable' for False)",
    "dynamic_loss_scale": "MindCV 0.3.0 replaced it by loss_scale_type ('dynamic' for True, 'fixed' for False)",
}


def _closest(name: str) -> str:
    if name in _RENAMED:
        return f"; {_RENAMED[name]}"
    close = difflib.get_close_matches(name, list(KEYS), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "; run with --help for the valid keys"


def _fail(key: str, source: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key!r} {problem}")


def _number(key: Key, value: Any, source: str, want: type) -> int | float:
    if isinstance(value, bool):  # bool is an int in Python; `lr: true` is a mistake, not 1
        raise _fail(key.name, source, f"must be {'an integer' if want is int else 'a number'}, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip()) if want is int else float(value.strip())
        except ValueError:
            kind = "an integer" if want is int else "a number"
            raise _fail(key.name, source, f"must be {kind}, got {value!r}") from None
    if want is int:
        if not isinstance(value, int):
            raise _fail(key.name, source, f"must be an integer, got {value!r}")
        return value
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(key.name, source, f"must be a finite number, got {value!r}")
    return float(value)


def _list(key: Key, value: Any, source: str) -> list[Any]:
    if isinstance(value, str):  # command line: "0.08,1.0", "[0.08, 1.0]" or "(0.08, 1.0)"
        text = value.strip()
        if text[:1] in "[(" and text[-1:] in "])":
            text = text[1:-1]
        value = [part for part in text.replace(",", " ").split()]
    if not isinstance(value, list | tuple):
        raise _fail(key.name, source, f"must be a list, got {value!r}")
    want = int if key.kind == "ints" else float
    items = [_number(key, item, source, want) for item in value]
    if key.length is not None and len(items) != key.length:
        raise _fail(key.name, source, f"must have {key.length} values, got {len(items)}: {list(value)!r}")
    return items


def coerce_value(name: str, value: Any, source: str = "config") -> Any:
    """Check one value against its key and convert it to the key's type.

    Strings are accepted for every kind (they are what the command line gives). ``source`` names where
    the value came from in error messages, e.g. ``recipe.yaml`` or ``command line``.

    Raises:
        ConfigError: unknown key (naming the closest valid one), wrong type, value out of range.
    """
    key = KEYS.get(name)
    if key is None:
        raise _fail(name, source, f"is not a config key{_closest(name)}")
    if (
        isinstance(value, str)
        and key.nullable
        and key.kind != "str"
        and value.strip().lower() in ("none", "null")
    ):
        value = None
    if isinstance(value, str) and key.nullable and key.kind == "str" and value.strip() in ("None", "null"):
        value = None
    if value is None:
        if key.nullable:
            return None
        raise _fail(name, source, f"must not be null (default: {key.default!r})")
    if isinstance(value, Mapping):
        raise _fail(
            name,
            source,
            "is a nested mapping; MindCV configs are flat (write each option as a top-level key)",
        )
    if key.kind == "bool":
        if not isinstance(value, bool | str):
            raise _fail(name, source, f"must be true or false, got {value!r}")
        try:
            out: Any = str2bool(value)
        except ValueError:
            raise _fail(name, source, f"must be true or false, got {value!r}") from None
    elif key.kind == "int":
        out = _number(key, value, source, int)
    elif key.kind == "float":
        out = _number(key, value, source, float)
    elif key.kind in ("floats", "ints"):
        out = _list(key, value, source)
    elif key.kind == "str":
        if not isinstance(value, str):
            raise _fail(name, source, f"must be a string, got {value!r} ({type(value).__name__})")
        out = value
    else:  # "any": keep YAML's reading; parse command-line text the same way
        out = yaml.safe_load(value) if isinstance(value, str) else value
    if key.choices is not None and out not in key.choices:
        allowed = ", ".join(repr(c) for c in key.choices) + (", None" if key.nullable else "")
        raise _fail(name, source, f"must be one of {allowed}; got {out!r}")
    if key.check is not None and (problem := key.check(out)) is not None:
        raise _fail(name, source, f"{problem} (got {out!r})")
    return out


def _validate(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = [k for k in values if k not in KEYS]
    if unknown:
        k = unknown[0]
        if isinstance(values[k], Mapping):
            raise _fail(
                str(k),
                source,
                "is a nested section; MindCV configs are flat: write its options as top-level keys",
            )
        more = (
            f" (and {len(unknown) - 1} more: {', '.join(map(str, unknown[1:]))})" if len(unknown) > 1 else ""
        )
        raise _fail(str(k), source, f"is not a config key{_closest(str(k))}{more}")
    return {k: coerce_value(k, v, source) for k, v in values.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key written twice (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a config YAML file (MindCV's or ours) and check its keys and values.

    Returns only the keys the file sets, converted to their types.

    Raises:
        ConfigError: missing file, invalid YAML, not a flat mapping, unknown key, invalid value.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    # The operator resolves the same recipe for every job it renders: parse each file version once.
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _YAML_CACHE:
        _YAML_CACHE[key] = _load_yaml_uncached(path)
    return copy.deepcopy(_YAML_CACHE[key])


_YAML_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


def _load_yaml_uncached(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file must be a mapping of keys to values, got {type(data).__name__}"
        )
    return _validate(data, str(path))


def available_recipes() -> list[str]:
    """Names of the built-in recipes (file names in :data:`RECIPES_DIR` without ``.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A YAML path as given, else a built-in recipe by name (with or without ``.yaml``)."""
    text = os.fspath(name_or_path)
    if Path(text).is_file():
        return Path(text)
    if "/" not in text and os.sep not in text:
        builtin = RECIPES_DIR / (text if text.endswith(".yaml") else f"{text}.yaml")
        if builtin.is_file():
            return builtin
        if not text.endswith((".yaml", ".yml")):
            names = available_recipes()
            close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigError(
                f"unknown recipe {text!r}{hint} Built-in recipes: {', '.join(names)}; or give a YAML file path"
            )
    raise ConfigError(f"config file {text!r} does not exist")


def load_builtin_recipe(name: str) -> dict[str, Any]:
    """Load a built-in recipe by its name only, never a file path: what a job's ``spec.recipe`` may name.

    The operator resolves recipes for specs written by others: a path (``/etc/passwd``,
    ``../x.yaml``) or a name that happens to be a file in the working directory must never be read.

    Returns:
        The complete config, as :func:`load_recipe` returns it.

    Raises:
        ConfigError: ``name`` is not one of :func:`available_recipes`.
    """
    names = available_recipes()
    if not isinstance(name, str) or name not in names:
        text = str(name)[:100]
        close = difflib.get_close_matches(text, names, n=1, cutoff=0.5) if isinstance(name, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown recipe {text!r}{hint} (only built-in recipe names are accepted, not file paths: "
            f"{', '.join(names)})"
        )
    return load_recipe(RECIPES_DIR / f"{name}.yaml")


def load_recipe(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a recipe: a built-in name (``mobilenet_v2_0.75_ascend``) or a YAML path (ours or MindCV's).

    Returns:
        The complete config: every key, MindCV's defaults overridden by the file, with
        ``reference_global_batch`` filled in (``batch_size * REFERENCE_DEVICE_NUM``) when the file does
        not set it.

    Raises:
        ConfigError: unknown recipe name, unreadable file, unknown key, invalid value.
    """
    path = _recipe_path(name_or_path)
    config = defaults()
    config.update(load_yaml(path))
    if config["reference_global_batch"] is None:
        config["reference_global_batch"] = config["batch_size"] * REFERENCE_DEVICE_NUM
    return config


def resolve_config(recipe: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply overrides to a recipe and check the result.

    Args:
        recipe: a config from :func:`load_recipe`, or any mapping of config keys (missing keys take
            MindCV's defaults).
        overrides: keys to change, e.g. a job's ``config`` overrides; values may be strings.

    Returns:
        The complete, type-checked config. ``reference_global_batch`` comes from the recipe (the
        recipe's ``batch_size`` x :data:`REFERENCE_DEVICE_NUM` when it has none), not from an
        overridden ``batch_size``: it records what the recipe's lr was tuned for.

    Raises:
        ConfigError: an unknown key (naming the closest valid one) or an invalid value.
    """
    config = defaults()
    config.update(_validate(recipe, "recipe"))
    if config["reference_global_batch"] is None:
        config["reference_global_batch"] = config["batch_size"] * REFERENCE_DEVICE_NUM
    config.update(_validate(overrides or {}, "config override"))
    return config


def scale_lr(config: Mapping[str, Any], global_batch: int) -> dict[str, Any]:
    """Scale the learning rate linearly to a new global batch (the rule MindCV's README gives).

    ``lr`` and ``min_lr`` are multiplied by ``global_batch / reference_global_batch`` (both ends of the
    schedule, so a scaled-down lr never falls below an unscaled floor), and ``reference_global_batch``
    becomes ``global_batch``, so scaling twice to the same batch changes nothing. Whether to scale
    at all (e.g. not when the user set ``lr`` explicitly) is the caller's decision.

    Args:
        config: a resolved config.
        global_batch: ``batch_size`` x number of data-parallel workers of the run.

    Returns:
        A new config.

    Raises:
        ConfigError: ``global_batch`` is not a positive integer or the config has no reference batch.
    """
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch <= 0:
        raise ConfigError(f"global_batch must be a positive integer, got {global_batch!r}")
    reference = config.get("reference_global_batch")
    if not reference:
        raise ConfigError(
            "config has no 'reference_global_batch' (the global batch its lr was tuned for); "
            "resolve it with resolve_config() or set the key"
        )
    factor = global_batch / reference
    scaled = dict(config)
    scaled["lr"] = config["lr"] * factor
    scaled["min_lr"] = config["min_lr"] * factor
    scaled["reference_global_batch"] = global_batch
    return scaled


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text (key order kept), e.g. for the job's ConfigMap; loads back unchanged."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def _build_parser(config_default: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mnv2_trainer.train",
        description="MobileNetV2 training config: MindCV's options; -c YAML, then --key value overrides",
        allow_abbrev=False,  # `--lr` must never silently mean `--lr_epoch_stair` or the reverse
    )
    parser.add_argument(
        "-c", "--config", default=config_default, help="YAML config file or built-in recipe name"
    )
    groups: dict[str, Any] = {}
    for key in KEYS.values():
        if key.name == "config":
            continue
        group = groups.setdefault(key.group, parser.add_argument_group(key.group))
        extra: dict[str, Any] = {}
        if key.kind == "bool":
            extra = {"nargs": "?", "const": "true"}  # `--distribute` alone means True, as in MindCV
        elif key.kind in ("floats", "ints"):
            extra = {"nargs": "+"}
        group.add_argument(
            f"--{key.name}", default=argparse.SUPPRESS, help=f"{key.help} (default: {key.default!r})", **extra
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse a MindCV-style command line into a complete config.

    ``-c/--config`` names a YAML file (MindCV's or ours) or a built-in recipe; every key can be given
    as ``--key value`` and overrides the file. Booleans take MindCV's str2bool words
    (``--distribute False``); list keys take ``0.08,1.0`` or ``0.08 1.0``; nullable keys take ``None``.

    Args:
        argv: the arguments (without the program name); ``None`` reads ``sys.argv[1:]``.

    Returns:
        The config dict; ``config`` holds the file's path (``""`` without one).

    Raises:
        ConfigError: unknown flag (naming the closest key), unknown key in the file, invalid value.
        SystemExit: for ``--help`` and argparse usage errors such as a flag without its value.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", default="")
    known, _ = pre.parse_known_args(argv)
    parser = _build_parser(known.config)
    args, unknown = parser.parse_known_args(argv)
    flags = [a for a in unknown if a.startswith("-")]
    if flags or unknown:
        bad = (flags or unknown)[0]
        name = bad.lstrip("-").split("=", 1)[0]
        hint = _closest(name) if bad.startswith("-") else "; values must follow a --key"
        raise ConfigError(f"command line: unrecognised argument {bad!r}{hint}")
    given = vars(args)
    config_path = given.pop("config")
    base = load_recipe(config_path) if config_path else resolve_config({})
    overrides: dict[str, Any] = {}
    for name, value in given.items():
        if isinstance(value, list):  # nargs="+": one token may itself be "0.08,1.0"
            value = value[0] if len(value) == 1 else value
        overrides[name] = value
    config = resolve_config(base, _validate(overrides, "command line"))
    config["config"] = str(config_path)
    return config
