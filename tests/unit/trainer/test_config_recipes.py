"""Recipes and config: MindCV's keys, defaults and YAML values; strict checking; CLI precedence.

MindCV's pip package ships neither its ``config.py`` nor its YAML files, so what MindCV says is
written down here independently of ``mnv2_trainer.config``: the YAML texts as MindCV publishes them
(mindspore-lab/mindcv, configs/mobilenetv2/), the parser defaults read from MindCV's config.py at the
version matching mindcv 0.3.0, and the recipe table of the design reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mnv2_trainer.config import (
    EXTRA_KEYS,
    KEYS,
    RECIPES_DIR,
    ConfigError,
    available_recipes,
    dump_config,
    load_recipe,
    load_yaml,
    parse_args,
    resolve_config,
    scale_lr,
)

# MindCV configs/mobilenetv2/mobilenet_v2_0.75_ascend.yaml (commit b63150f), verbatim.
MINDCV_075_YAML = """\
# system
mode: 0
distribute: True
num_parallel_workers: 8
val_while_train: True

# dataset
dataset: 'imagenet'
data_dir: '/path/to/imagenet'
shuffle: True
dataset_download: False
batch_size: 256
drop_remainder: True
train_split: 'train'

# augmentation
image_resize: 224
scale: [0.08, 1.0]
ratio: [0.75, 1.333]
hflip: 0.5
interpolation: 'bilinear'
crop_pct: 0.875

# model
model: 'mobilenet_v2_075'
num_classes: 1000
pretrained: False
ckpt_path: ''
keep_checkpoint_max: 50
ckpt_save_dir: './ckpt'
epoch_size: 400
dataset_sink_mode: True
amp_level: 'O3'

# loss
loss: 'CE'
label_smoothing: 0.1

# lr scheduler
scheduler: 'cosine_decay'
min_lr: 0.0
lr: 0.3
warmup_epochs: 4
decay_epochs: 396

# optimizer
opt: 'momentum'
momentum: 0.9
weight_decay: 0.00003
loss_scale: 1024
use_nesterov: False
"""

# The 1.0 and 1.4 files differ from the 0.75 one only in these lines (commits b63150f, 062fe1a).
MINDCV_100_YAML = (
    MINDCV_075_YAML.replace("mobilenet_v2_075", "mobilenet_v2_100")
    .replace("keep_checkpoint_max: 50", "keep_checkpoint_max: 100")
    .replace("epoch_size: 400", "epoch_size: 320")
    .replace("lr: 0.3", "lr: 0.4")
    .replace("decay_epochs: 396", "decay_epochs: 316")
    .replace("weight_decay: 0.00003", "weight_decay: 0.00004")
)
MINDCV_140_YAML = (
    MINDCV_075_YAML.replace("mobilenet_v2_075", "mobilenet_v2_140")
    .replace("epoch_size: 400", "epoch_size: 300")
    .replace("lr: 0.3", "lr: 0.4")
    .replace("decay_epochs: 396", "decay_epochs: 296")
    .replace("opt: 'momentum'\n", "opt: 'momentum'\nweight_decay_filter: 'auto'\n")
    .replace("weight_decay: 0.00003", "weight_decay: 0.00004")
)

# Every option of MindCV's config.py parser (mindcv 0.3.0) with its default; tuples written as lists.
MINDCV_PARSER_DEFAULTS = {
    "config": "", "mode": 0, "distribute": False, "val_while_train": False, "val_interval": 1,
    "log_interval": 100, "seed": 42, "device_target": "Ascend",
    "dataset": "imagenet", "data_dir": "./", "train_split": "train", "val_split": "val",
    "dataset_download": False, "num_parallel_workers": 8, "shuffle": True, "num_samples": None,
    "batch_size": 128, "drop_remainder": True,
    "image_resize": 224, "scale": [0.08, 1.0], "ratio": [0.75, 1.333], "hflip": 0.5, "vflip": 0.0,
    "color_jitter": 0.4, "interpolation": "bilinear", "auto_augment": None, "aug_splits": 0,
    "re_prob": 0.0, "re_scale": [0.02, 0.33], "re_ratio": [0.3, 3.3], "re_value": 0, "re_max_attempts": 10,
    "mean": [0.485 * 255, 0.456 * 255, 0.406 * 255], "std": [0.229 * 255, 0.224 * 255, 0.225 * 255],
    "crop_pct": 0.875, "mixup": 0.0, "cutmix": 0.0, "cutmix_prob": 1.0, "aug_repeats": 0,
    "model": "mobilenet_v2_035_224", "num_classes": None, "in_channels": 3, "drop_rate": None,
    "drop_path_rate": None, "pretrained": False, "ckpt_path": "", "resume_opt": False,
    "keep_checkpoint_max": 10, "ckpt_save_dir": "./ckpt", "ckpt_save_interval": 1,
    "ckpt_save_policy": "latest_k", "epoch_size": 90, "dataset_sink_mode": True, "ema": False,
    "ema_decay": 0.9999, "clip_grad": False, "clip_value": 15.0, "layer_decay": None,
    "gradient_accumulation_steps": 1,
    "opt": "adam", "momentum": 0.9, "weight_decay": 1e-6, "use_nesterov": False,
    "weight_decay_filter": "disable", "eps": 1e-10,
    "scheduler": "cosine_decay", "lr": 0.001, "min_lr": 1e-6, "warmup_epochs": 3, "warmup_factor": 0.0,
    "decay_epochs": 100, "decay_rate": 0.9, "multi_step_decay_milestones": [30, 60, 90],
    "lr_epoch_stair": False, "num_cycles": 1, "cycle_decay": 1.0,
    "loss": "CE", "label_smoothing": 0.0, "aux_factor": 0.0, "reduction": "mean",
    "amp_level": "O0", "val_amp_level": "O0", "amp_cast_list": None, "loss_scale_type": "fixed",
    "loss_scale": 1.0, "drop_overflow_update": False, "eval_shuffle": False,
}  # fmt: skip

# The design reference's recipe table for mobilenet_v2_075 (values MindCV's train.py ends up using).
REFERENCE_TABLE_075 = {
    "mode": 0, "distribute": True, "num_parallel_workers": 8, "val_while_train": True, "val_interval": 1,
    "dataset": "imagenet", "train_split": "train", "val_split": "val", "batch_size": 256,
    "drop_remainder": True, "image_resize": 224, "scale": [0.08, 1.0], "ratio": [0.75, 1.333],
    "hflip": 0.5, "vflip": 0.0, "color_jitter": 0.4, "auto_augment": None, "re_prob": 0.0, "mixup": 0.0,
    "cutmix": 0.0, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "crop_pct": 0.875,
    "model": "mobilenet_v2_075", "num_classes": 1000, "epoch_size": 400, "dataset_sink_mode": True,
    "amp_level": "O3", "loss": "CE", "label_smoothing": 0.1, "scheduler": "cosine_decay", "lr": 0.3,
    "min_lr": 0.0, "warmup_epochs": 4, "warmup_factor": 0.0, "decay_epochs": 396, "opt": "momentum",
    "momentum": 0.9, "use_nesterov": False, "weight_decay": 3e-5, "weight_decay_filter": "disable",
    "loss_scale": 1024, "loss_scale_type": "fixed", "drop_overflow_update": False, "ema": False,
    "clip_grad": False, "seed": 42, "keep_checkpoint_max": 50, "ckpt_save_policy": "latest_k",
}  # fmt: skip


def _same(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=0)
    return a == b and type(a) is type(b)


def _assert_same(ours: dict, expected: dict) -> None:
    diff = {k: (ours.get(k, "<missing>"), v) for k, v in expected.items() if not _same(ours.get(k), v)}
    assert not diff, f"differs (ours, expected): {diff}"


def test_keys_and_defaults_are_mindcvs_plus_documented_extras() -> None:
    assert [k for k in KEYS if k not in EXTRA_KEYS] == list(MINDCV_PARSER_DEFAULTS)
    assert set(EXTRA_KEYS) == {"resume", "ignore_classifier", "reference_global_batch"}
    _assert_same(resolve_config({}), MINDCV_PARSER_DEFAULTS)
    for name in EXTRA_KEYS:
        assert KEYS[name].help, name


@pytest.mark.parametrize(
    ("recipe", "mindcv_yaml"),
    [
        ("mobilenet_v2_0.75_ascend", MINDCV_075_YAML),
        ("mobilenet_v2_1.0_ascend", MINDCV_100_YAML),
        ("mobilenet_v2_1.4_ascend", MINDCV_140_YAML),
    ],
)
def test_recipe_equals_mindcv_yaml_key_by_key(recipe: str, mindcv_yaml: str) -> None:
    theirs = yaml.safe_load(mindcv_yaml)
    file_keys = load_yaml(RECIPES_DIR / f"{recipe}.yaml")
    assert list(file_keys) == list(theirs)  # the same keys, in MindCV's order, nothing added
    ours = load_recipe(recipe)
    _assert_same(
        {k: ours[k] for k in theirs}, {k: (float(v) if k == "loss_scale" else v) for k, v in theirs.items()}
    )
    rest = {k: v for k, v in MINDCV_PARSER_DEFAULTS.items() if k not in theirs}
    _assert_same(ours, rest)  # everything else: MindCV's defaults
    assert ours["reference_global_batch"] == 256 * 8
    assert ours["resume"] == "auto" and ours["ignore_classifier"] is False


def test_075_recipe_matches_reference_table() -> None:
    ours = load_recipe("mobilenet_v2_0.75_ascend")
    _assert_same(ours, {k: (float(v) if k == "loss_scale" else v) for k, v in REFERENCE_TABLE_075.items()})


def test_builtin_recipes_are_listed() -> None:
    assert available_recipes() == [
        "mobilenet_v2_0.75_ascend",
        "mobilenet_v2_1.0_ascend",
        "mobilenet_v2_1.4_ascend",
    ]


def test_mindcv_yaml_loads_unchanged_by_path_and_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2_1.4_ascend.yaml"
    path.write_text(MINDCV_140_YAML)
    by_path = load_recipe(path)
    assert by_path["weight_decay_filter"] == "auto" and by_path["model"] == "mobilenet_v2_140"
    cli = parse_args(["-c", str(path)])
    assert cli["config"] == str(path)
    assert {k: v for k, v in cli.items() if k != "config"} == {
        k: v for k, v in by_path.items() if k != "config"
    }


def test_unknown_yaml_key_names_key_closest_and_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(MINDCV_075_YAML.replace("label_smoothing:", "label_smoothin:"))
    with pytest.raises(
        ConfigError, match=r"typo\.yaml: 'label_smoothin' is not a config key; did you mean 'label_smoothing'"
    ):
        load_recipe(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("lr: fast", r"'lr' must be a number, got 'fast'"),
        ("lr: true", r"'lr' must be a number, got True"),
        ("batch_size: 25.5", r"'batch_size' must be an integer"),
        ("amp_level: O4", r"'amp_level' must be one of 'O0', 'O1', 'O2', 'O3'"),
        ("distribute: maybe", r"'distribute' must be true or false"),
        ("scale: [0.08]", r"'scale' must have 2 values"),
        (
            "model: mobilenet_v2_035",
            r"'model' is not a supported MobileNetV2 name; did you mean 'mobilenet_v2_035_224'",
        ),
        ("model: mobilenet_v2_075_224", r"'model' is not a supported .*did you mean 'mobilenet_v2_075'"),
        (
            "filter_bias_and_bn: True",
            r"'filter_bias_and_bn' is not a config key; MindCV 0\.3\.0 replaced it by weight_decay_filter",
        ),
        ("dataset: cifar10", r"'dataset' must be one of 'imagenet', 'imagefolder', 'synthetic', 'digits'"),
        ("hflip: 1.5", r"'hflip' must be in \[0, 1\]"),
        (
            "amp_cast_list: '[nn.Conv2D]'",
            r"'amp_cast_list' names unknown cells \['nn\.Conv2D'\]; use a list of",
        ),
        ("amp_cast_list: '[]'", r"'amp_cast_list' names unknown cells \[\]"),
        ("optimizer:\n  opt: sgd", r"'optimizer' is a nested section; MindCV configs are flat"),
        ("lr: 0.1\nlr: 0.2", r"key 'lr' appears twice \(line 2\)"),
        ("- lr", r"must be a mapping"),
    ],
)
def test_invalid_values_fail_naming_the_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


def test_yaml_exponent_numbers_are_numbers(tmp_path: Path) -> None:
    # PyYAML reads 3e-5 (no dot) as a string; MindCV would then pass a string on to the optimizer.
    path = tmp_path / "exp.yaml"
    path.write_text("weight_decay: 3e-5\nloss_scale: 1024\n")
    config = load_recipe(path)
    assert config["weight_decay"] == 3e-5 and config["loss_scale"] == 1024.0
    assert isinstance(config["loss_scale"], float)


def test_unknown_recipe_name_and_missing_file() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown recipe 'mobilenet_v2_075_ascend'; did you mean 'mobilenet_v2_0\.75_ascend'",
    ):
        load_recipe("mobilenet_v2_075_ascend")
    with pytest.raises(ConfigError, match=r"config file '/nonexistent/x\.yaml' does not exist"):
        load_recipe("/nonexistent/x.yaml")


def test_command_line_overrides_yaml_overrides_defaults() -> None:
    config = parse_args(
        [
            "-c", "mobilenet_v2_0.75_ascend",
            "--data_dir", "/data",
            "--distribute", "False",
            "--ckpt_path", "/output/ckpt/mobilenet_v2_075-3_10.ckpt",
            "--lr", "0.1",
            "--scale", "0.6", "1.0",
            "--mean=1,2,3",
            "--num_classes", "None",
            "--resume", "never",
            "--val_while_train",
        ]
    )  # fmt: skip
    assert config["data_dir"] == "/data"
    assert config["distribute"] is False  # YAML says True
    assert config["ckpt_path"] == "/output/ckpt/mobilenet_v2_075-3_10.ckpt"
    assert config["lr"] == 0.1 and config["scale"] == [0.6, 1.0] and config["mean"] == [1.0, 2.0, 3.0]
    assert config["num_classes"] is None and config["resume"] == "never" and config["val_while_train"] is True
    assert config["batch_size"] == 256  # from the YAML
    assert config["color_jitter"] == 0.4  # MindCV's default
    assert config["reference_global_batch"] == 2048  # the recipe's, whatever the flags


def test_command_line_without_config_uses_mindcv_defaults() -> None:
    config = parse_args(["--drop_overflow_update", "False", "--distribute"])
    assert config["drop_overflow_update"] is False  # MindCV's type=bool would make this True
    assert config["distribute"] is True  # a bare flag means True, as in MindCV
    assert config["model"] == "mobilenet_v2_035_224" and config["config"] == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrr", "0.1"], r"unrecognised argument '--lrr'; did you mean 'lr'"),
        (["--lr_epoch", "true"], r"unrecognised argument '--lr_epoch'; did you mean 'lr_epoch_stair'"),
        (["--lr", "fast"], r"command line: 'lr' must be a number"),
        (["--distribute", "maybe"], r"command line: 'distribute' must be true or false"),
        (["-c", "nope_recipe"], r"unknown recipe 'nope_recipe'"),
    ],
)
def test_command_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_resolve_config_checks_overrides_and_keeps_recipe_reference() -> None:
    recipe = load_recipe("mobilenet_v2_0.75_ascend")
    config = resolve_config(recipe, {"batch_size": "32", "epoch_size": 15, "dataset": "digits"})
    assert config["batch_size"] == 32 and config["epoch_size"] == 15 and config["dataset"] == "digits"
    assert config["reference_global_batch"] == 2048
    assert recipe["batch_size"] == 256  # the recipe is not modified
    with pytest.raises(
        ConfigError,
        match=r"config override: 'warmup_epoch' is not a config key; did you mean 'warmup_epochs'",
    ):
        resolve_config(recipe, {"warmup_epoch": 1})
    # A bare mapping without reference: the recipe's own batch x 8 cards.
    assert resolve_config({"batch_size": 64}, {"batch_size": 8})["reference_global_batch"] == 512


def test_scale_lr_is_linear_in_global_batch_and_idempotent() -> None:
    config = resolve_config(load_recipe("mobilenet_v2_0.75_ascend"), {"min_lr": 0.001})
    same = scale_lr(config, 2048)
    assert same["lr"] == pytest.approx(0.3) and same["min_lr"] == pytest.approx(0.001)
    one_card = scale_lr(config, 256)
    assert one_card["lr"] == pytest.approx(0.0375) and one_card["min_lr"] == pytest.approx(0.000125)
    assert one_card["reference_global_batch"] == 256
    assert scale_lr(one_card, 256) == one_card
    assert config["lr"] == 0.3  # input untouched
    with pytest.raises(ConfigError, match="global_batch must be a positive integer"):
        scale_lr(config, 0)
    with pytest.raises(ConfigError, match="no 'reference_global_batch'"):
        scale_lr({**config, "reference_global_batch": None}, 256)


def test_dump_config_round_trips(tmp_path: Path) -> None:
    config = resolve_config(
        load_recipe("mobilenet_v2_0.75_ascend"), {"data_dir": "/data", "num_classes": None}
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_recipe(path) == config
    assert parse_args(["-c", str(path)]) == {**config, "config": str(path)}


def test_help_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    missing = [k for k in KEYS if k != "config" and f"--{k}" not in out]
    assert not missing


def test_config_imports_without_mindspore_or_numpy() -> None:
    code = textwrap.dedent(
        """
        import sys
        import mnv2_trainer.config as c
        c.load_recipe(c.DEFAULT_RECIPE)
        bad = [m for m in ("mindspore", "numpy", "mindcv") if m in sys.modules]
        assert not bad, bad
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_yaml_rereads_a_changed_file_and_hands_out_private_copies(tmp_path: Path) -> None:
    from mnv2_trainer.config import load_yaml

    path = tmp_path / "r.yaml"
    path.write_text("lr: 0.1\nbatch_size: 32\n")
    first = load_yaml(path)
    first["lr"] = 99.0  # a caller's change must not reach the next caller
    assert load_yaml(path)["lr"] == 0.1
    path.write_text("lr: 0.25\nbatch_size: 32\n")  # same size: the mtime tells the versions apart
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert load_yaml(path)["lr"] == 0.25
