"""Train MobileNetV2 with MindCV's recipe: ``python -m mnv2_trainer.train --config ... --data_dir ...``.

The entry point only wires the factories, laid out as MindCV lays out its own: :mod:`.config`
(recipe + flags), :mod:`.data` (datasets, transforms, shards), :mod:`.model`, :mod:`.loss`,
:mod:`.optim`, :mod:`.schedule` (per-step lr, resume mapping), :mod:`.train_step` (the train cell),
:mod:`.resume`, :mod:`.callbacks` (the epoch-end callback), :mod:`.checkpoint`, :mod:`.evaluate`,
:mod:`.report`, :mod:`.logger`.

What it does, in MindCV's terms: graph mode, ``CrossEntropySmooth``, ``Momentum`` with weight decay
and a per-step cosine schedule with warmup, AMP with a fixed loss scale, validation every
``val_interval`` epochs, checkpoints ``{model}-{epoch}_{steps}.ckpt`` (latest k) and
``{model}_best.ckpt``, data parallel under ``msrun`` with averaged gradients.

Where it differs from MindCV's train.py (on purpose):

* ``resume`` (config key of ours, default ``auto``): continue from the newest checkpoint in
  ``ckpt_save_dir`` that loads and holds optimizer state, with the optimizer's moments, the global
  step and the schedule position, also when ``epoch_size`` or the card count changed (the position
  is mapped by completed epochs, see :mod:`.schedule`). Truncated or corrupt files are skipped.
* Checkpoints are written atomically; a failure never deletes one.
* The input pipeline hands uint8 NHWC batches to the network, which normalises them in its graph
  (:mod:`.input_norm`; same values as MindCV's ``Normalize`` + ``HWC2CHW``, a quarter of the bytes).
* Nothing is all-reduced as int32 (MindCV's callback does, which fails on the CPU backend).
* Where the backend cannot do what the recipe asks (fp16 AMP levels or overflow-skipping loss
  scale on CPU) it falls back with one warning instead of failing.
* Ranks other than 0 write only their last checkpoint, to ``ckpt_save_dir/rank_<r>/`` (so that the
  replicas can be compared); rank 0's files are the resume source for all ranks, and the ranks
  check that they agree on the resume epoch.

Config keys of MindCV that this trainer does not implement (EMA, gradient clipping/accumulation,
mixup/cutmix, auto-augment, random erasing, optimizers other than momentum/SGD, BCE loss, schedulers
other than cosine/constant) are rejected with an error naming the key when set to a non-default
value, rather than silently ignored.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import checkpoint as ckpt_lib
from . import data as data_lib
from . import schedule as schedule_lib
from .errors import TrainError
from .logger import create_logger
from .resume import create_resume_state

__all__ = [
    "Env",
    "RunState",
    "TrainError",
    "check_supported",
    "create_env",
    "effective_amp",
    "effective_loss_scale",
    "main",
    "run",
]

_logger = logging.getLogger("mnv2_trainer")

# (key, value that means "off") of MindCV features this trainer does not implement.
_UNSUPPORTED_OFF = (
    ("ema", False),
    ("clip_grad", False),
    ("gradient_accumulation_steps", 1),
    ("mixup", 0.0),
    ("cutmix", 0.0),
    ("auto_augment", None),
    ("re_prob", 0.0),
    ("aug_repeats", 0),
    ("aug_splits", 0),
    ("layer_decay", None),
    ("aux_factor", 0.0),
    ("pretrained", False),  # MindCV downloads weights; here: download them and set ckpt_path
)


@dataclass
class Env:
    """Where this process runs.

    ``notes`` are warnings found while setting it up, before the logger exists; the run logs them
    once it does.
    """

    device: str
    rank: int = 0
    group_size: int = 1
    distributed: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class RunState:
    """Mutable state shared with the epoch callback."""

    start_epoch: int
    global_step: int
    best_top1: float = -1.0
    best_epoch: int | None = None
    best_path: str | None = None
    latest_path: str | None = None
    last_eval: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- settings
def check_supported(cfg: dict[str, Any]) -> None:
    """Reject MindCV options this trainer would otherwise ignore silently."""
    for key, off in _UNSUPPORTED_OFF:
        value = cfg.get(key, off)
        if value not in (off, None) and not (off is None and value in ("", 0)):
            raise TrainError(
                f"config key {key}: {value!r} is not supported by this trainer; set it to {off!r}"
            )
    if str(cfg.get("opt", "momentum")).lower() not in ("momentum", "sgd", "nesterov"):
        raise TrainError(
            f"config key opt: {cfg.get('opt')!r} is not supported; use 'momentum' (MindCV's recipe)"
        )
    if str(cfg.get("loss", "CE")).upper() != "CE":
        raise TrainError(f"config key loss: {cfg.get('loss')!r} is not supported; use 'CE'")
    if str(cfg.get("reduction", "mean")) != "mean":
        raise TrainError(f"config key reduction: {cfg.get('reduction')!r} is not supported; use 'mean'")


def _device_available(target: str) -> bool:
    import mindspore as ms

    try:
        return bool(ms.hal.is_available(target))
    except Exception:  # older/newer APIs: assume the build's default device is the available one
        return ms.get_context("device_target") == target


#: Environment variables by which MindSpore's launchers tell a process its place in the cluster: msrun
#: (dynamic networking), a rank table file, or OpenMPI's mpirun.
LAUNCHER_ENV = ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE")


def check_launched_distributed(environ: dict[str, str] | None = None) -> None:
    """Raise a one-line TrainError when ``distribute`` is on but no launcher started this process
    (MindSpore itself would fail with a long traceback about mpirun)."""
    env = os.environ if environ is None else environ
    if not any(env.get(name) for name in LAUNCHER_ENV):
        raise TrainError(
            "distribute is True but this process was not started by msrun: launch it with "
            "`msrun --worker_num=N --local_worker_num=N --join=True python -m mnv2_trainer.train ...`, "
            "or pass --distribute False to train on one device"
        )


def create_env(cfg: dict[str, Any]) -> Env:
    """Set MindSpore's context (mode, device, data parallel) and initialise communication."""
    import mindspore as ms

    target = str(cfg.get("device_target") or "CPU")
    notes = []
    if not _device_available(target):
        notes.append(f"device_target {target} is not available in this MindSpore build: using CPU")
        target = "CPU"
    ms.set_context(
        mode=ms.GRAPH_MODE if int(cfg.get("mode", 0)) == 0 else ms.PYNATIVE_MODE, device_target=target
    )
    if target == "Ascend" and int(cfg.get("mode", 0)) == 0:
        ms.set_context(jit_config={"jit_level": "O2"})  # MindCV's graph-mode setting on Ascend
    env = Env(device=target, notes=notes)
    if cfg.get("distribute"):
        from mindspore.communication import get_group_size, get_rank, init

        check_launched_distributed()

        init()
        env = Env(target, get_rank(), get_group_size(), True, notes)
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=env.group_size
        )
    seed = int(cfg.get("seed", 42) or 0)
    ms.set_seed(seed)  # the same initial weights on every rank
    ms.dataset.config.set_seed(seed + env.rank)  # augmentation: a different stream per rank
    return env


def effective_amp(cfg: dict[str, Any], device: str) -> tuple[str, list[str]]:
    """AMP level to use and warnings: the CPU backend trains in float32 only (O0)."""
    level = str(cfg.get("amp_level", "O0"))
    if device == "CPU" and level != "O0":
        return "O0", [
            f"amp_level {level} needs float16 kernels the CPU backend lacks: training in float32 (O0)"
        ]
    return level, []


def effective_loss_scale(cfg: dict[str, Any], device: str) -> tuple[str, float, bool, list[str]]:
    """``(type, value, drop_overflow_update, warnings)`` for the device."""
    kind = str(cfg.get("loss_scale_type", "fixed")).lower()
    scale = float(cfg.get("loss_scale", 1.0) or 1.0)
    drop = bool(cfg.get("drop_overflow_update", False))
    if kind == "auto":
        kind = "fixed"
    if device == "CPU" and (kind == "dynamic" or drop):
        return (
            "fixed",
            scale,
            False,
            [
                f"loss_scale_type {kind} / drop_overflow_update {drop} need overflow detection the CPU backend "
                f"lacks: using a fixed loss scale {scale} without skipping steps"
            ],
        )
    return kind, scale, drop, []


def agree_across_ranks(value: float, env: Env) -> tuple[float, float]:
    """``(min, max)`` of ``value`` over all ranks."""
    if not env.distributed:
        return value, value
    from .distributed import create_allreduce, gather_values

    values = gather_values(value, env.rank, env.group_size, create_allreduce())
    return float(values.min()), float(values.max())


def weights_digest(network: Any) -> str:
    """SHA-256 of all network parameters (names and values), to compare replicas in logs."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(network.get_parameters(), key=lambda q: q.name):
        h.update(p.name.encode())
        h.update(p.asnumpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the run, step by step
@dataclass
class Plan:
    """What the data and the config decide before anything is built."""

    model_name: str
    epochs: int
    save_dir: str
    resume_from: ckpt_lib.TrainState | None
    train_loader: data_lib.Loader
    val_loader: data_lib.Loader | None
    steps_per_epoch: int
    global_batch: int
    position: schedule_lib.ResumePosition
    lrs: list[float]
    num_classes: int


@dataclass
class Built:
    """The network and what trains it."""

    network: Any
    optimizer: Any
    train_cell: Any
    eval_network: Any
    allreduce: Any
    amp_level: str
    loss_scale: tuple[str, float, bool]


def _start(cfg: dict[str, Any]) -> tuple[dict[str, Any], Env]:
    """Check the config, set up the device and the log; ``ckpt_save_dir`` becomes absolute."""
    check_supported(cfg)
    env = create_env(cfg)
    save_dir = os.path.abspath(str(cfg.get("ckpt_save_dir", "./ckpt")))
    cfg, workers_note = data_lib.clamp_parallel_workers(dict(cfg, ckpt_save_dir=save_dir))
    if workers_note:
        env.notes.append(workers_note)
    create_logger(env.rank, save_dir)
    for note in env.notes:
        _logger.warning(note)
    if env.rank == 0:
        ckpt_lib.remove_temporaries(save_dir)
    if cfg.get("ckpt_save_policy") == "top_k":
        _logger.warning(
            "ckpt_save_policy top_k is treated as latest_k (resume needs the newest checkpoints); "
            "the best one is always kept as %s",
            ckpt_lib.best_name(str(cfg["model"])),
        )
    return cfg, env


def _plan(cfg: dict[str, Any], env: Env) -> Plan:
    """The resume point all ranks agree on, the loaders, the schedule and the number of classes."""
    model_name, epochs, save_dir = str(cfg["model"]), int(cfg["epoch_size"]), str(cfg["ckpt_save_dir"])
    resume_from = create_resume_state(cfg, model_name)
    completed = resume_from.epoch if resume_from else 0
    low, high = agree_across_ranks(float(completed), env)
    if low != high:
        raise TrainError(
            f"ranks found different resume points in {save_dir} (epochs {low:.0f}..{high:.0f}); ckpt_save_dir "
            "must be one volume shared by all nodes"
        )
    train_loader = data_lib.create_loader(
        cfg,
        str(cfg.get("train_split", "train")),
        is_training=True,
        num_shards=env.group_size,
        shard_id=env.rank,
        start_epoch=completed,
        num_samples=cfg.get("num_samples"),
    )
    val_loader = None
    if cfg.get("val_while_train"):
        val_loader = data_lib.create_loader(
            cfg,
            str(cfg.get("val_split", "val")),
            is_training=False,
            num_shards=env.group_size,
            shard_id=env.rank,
        )
    spe = train_loader.num_batches
    num_classes = int(cfg.get("num_classes") or train_loader.num_classes)
    position = schedule_lib.resume_position(completed, spe, epochs)
    lrs = schedule_lib.create_lr_schedule(cfg, spe, epochs)
    if num_classes < train_loader.num_classes:
        raise TrainError(
            f"config key num_classes: {num_classes} but the training split has {train_loader.num_classes} classes"
        )
    return Plan(
        model_name,
        epochs,
        save_dir,
        resume_from,
        train_loader,
        val_loader,
        spe,
        int(cfg["batch_size"]) * env.group_size,
        position,
        lrs,
        num_classes,
    )


def _build(cfg: dict[str, Any], env: Env, plan: Plan) -> Built:
    """Model, loss, optimizer and train cell; the resumed state loaded; replicas made equal."""
    from .distributed import broadcast_parameters, create_allreduce
    from .input_norm import wrap_network
    from .loss import create_loss
    from .model import create_model
    from .optim import create_optimizer
    from .resume import load_train_state
    from .train_step import create_train_cell

    network = create_model(
        plan.model_name,
        num_classes=plan.num_classes,
        drop_rate=cfg.get("drop_rate"),
        checkpoint_path=None if plan.resume_from else (cfg.get("ckpt_path") or None),
        ignore_classifier=bool(cfg.get("ignore_classifier")),
    )
    amp_level, amp_notes = effective_amp(cfg, env.device)
    kind, scale, drop, scale_notes = effective_loss_scale(cfg, env.device)
    for note in amp_notes + scale_notes:
        _logger.warning(note)
    optimizer = create_optimizer(cfg, network, plan.lrs, scale if kind == "fixed" and not drop else 1.0)
    train_cell = create_train_cell(
        network,
        create_loss(cfg),
        optimizer,
        amp_level,
        (kind, scale, drop),
        plan.train_loader.normalize,
        cfg.get("amp_cast_list"),
    )
    # validation batches may be laid out differently from training ones (float-space augmentations)
    eval_network = wrap_network(network, plan.val_loader.normalize) if plan.val_loader is not None else None
    if plan.resume_from is not None and not plan.position.finished:
        load_train_state(train_cell, optimizer, plan.resume_from, plan.position.global_step)
    allreduce = create_allreduce() if env.distributed else None
    if allreduce is not None:  # replicas must start equal (initialisers differ per rank)
        broadcast_parameters(network.get_parameters(), env.rank, allreduce)
    return Built(network, optimizer, train_cell, eval_network, allreduce, amp_level, (kind, scale, drop))


def _summary(lines: dict[str, Any]) -> str:
    width = max(len(k) for k in lines)
    return "\n".join(f"  {k:<{width}} : {v}" for k, v in lines.items())


def _log_configuration(cfg: dict[str, Any], env: Env, plan: Plan, built: Built) -> None:
    """One block in the log that says what this run trains, how, and from where."""
    from .model import param_count

    n_tensors, n_values = param_count(built.network)
    ckpt, position, lrs = plan.resume_from, plan.position, plan.lrs
    resume_text = (
        "no checkpoint: from scratch"
        if ckpt is None
        else (
            f"{ckpt.path} (epoch {ckpt.epoch}, step {ckpt.global_step}"
            + (f", {ckpt.steps_per_epoch} steps/epoch" if ckpt.steps_per_epoch else "")
            + f") -> epoch {position.start_epoch + 1}, global step {position.global_step}"
            + (f", lr {lrs[position.global_step]:.6g}" if not position.finished else "")
        )
    )
    train_loader, val_loader = plan.train_loader, plan.val_loader
    kind, scale, drop = built.loss_scale
    _logger.info(
        "configuration (%s):\n%s",
        cfg.get("config") or "defaults + flags",
        _summary(
            {
                "model": f"{plan.model_name}, {plan.num_classes} classes, {n_tensors} tensors / {n_values:,} values",
                "data": f"{cfg.get('dataset')} at {cfg.get('data_dir')}: {train_loader.num_samples} train"
                + (f" / {val_loader.num_samples} val" if val_loader else "")
                + f" images, {cfg.get('image_resize')}px, "
                + (
                    "uint8 batches normalised in the network" if train_loader.normalize else "float32 batches"
                ),
                "batch": f"{cfg['batch_size']} per card x {env.group_size} card(s) = {plan.global_batch}, "
                f"{plan.steps_per_epoch} steps/epoch",
                "epochs": f"{plan.epochs}, validate every {cfg.get('val_interval', 1)}"
                if val_loader
                else f"{plan.epochs}, no validation",
                "lr": f"{cfg.get('scheduler')} peak {cfg.get('lr')} min {cfg.get('min_lr')}, warmup "
                f"{cfg.get('warmup_epochs')} epochs from x{cfg.get('warmup_factor')}, decay {cfg.get('decay_epochs')}",
                "optimizer": f"{cfg.get('opt')} momentum {cfg.get('momentum')} weight_decay "
                f"{cfg.get('weight_decay')} ({cfg.get('weight_decay_filter')}), label_smoothing "
                f"{cfg.get('label_smoothing')}",
                "precision": f"amp {built.amp_level}"
                + (f" (recipe {cfg.get('amp_level')})" if built.amp_level != cfg.get("amp_level") else "")
                + f", loss scale {kind} {scale}"
                + (" drop overflow" if drop else ""),
                "device": f"{env.device}, {'graph' if int(cfg.get('mode', 0)) == 0 else 'pynative'} mode, "
                f"rank {env.rank}/{env.group_size}, sink {bool(cfg.get('dataset_sink_mode'))}",
                "resume": resume_text,
                "output": f"{plan.save_dir} (keep {cfg.get('keep_checkpoint_max')})",
            }
        ),
    )


def _initial_state(plan: Plan) -> RunState:
    """Where training starts, with the best result so far when resuming."""
    state = RunState(plan.position.start_epoch, plan.position.global_step)
    ckpt = plan.resume_from
    if ckpt is not None and ckpt.best_epoch:
        best_file = os.path.join(plan.save_dir, ckpt_lib.best_name(plan.model_name))
        state.best_top1, state.best_epoch = ckpt.best_top1, ckpt.best_epoch
        state.best_path = best_file if os.path.isfile(best_file) else None
    return state


def _train(cfg: dict[str, Any], env: Env, plan: Plan, built: Built, state: RunState) -> None:
    """Run ``Model.train`` from the start epoch with the epoch-end callback; report to the job."""
    import mindspore as ms

    from .callbacks import EpochEnd
    from .report import create_reporter

    reporter = create_reporter(plan.save_dir, plan.epochs, env.rank)
    sink = bool(cfg.get("dataset_sink_mode", False))
    callback = EpochEnd(
        state=state,
        env=env,
        steps_per_epoch=plan.steps_per_epoch,
        sink=sink,
        epochs=plan.epochs,
        lrs=plan.lrs,
        global_batch=plan.global_batch,
        network=built.network,
        eval_network=built.eval_network,
        train_cell=built.train_cell,
        val_loader=plan.val_loader,
        val_interval=int(cfg.get("val_interval", 1) or 1),
        label_smoothing=float(cfg.get("label_smoothing", 0.0) or 0.0),
        allreduce=built.allreduce,
        reporter=reporter,
        model_name=plan.model_name,
        save_dir=plan.save_dir,
        save_interval=int(cfg.get("ckpt_save_interval", 1) or 1),
        keep=int(cfg.get("keep_checkpoint_max", 10) or 0),
        log_interval=int(cfg.get("log_interval", 100) or 0),
    )
    model = ms.train.Model(built.train_cell)
    t0 = time.time()
    try:
        model.train(
            plan.epochs,
            plan.train_loader.dataset,
            callbacks=[callback],
            dataset_sink_mode=sink,
            initial_epoch=plan.position.start_epoch,
        )
    finally:
        if reporter is not None:
            reporter.close()
    _logger.info(
        "finished %d epochs in %.1fs; weights %s; best top1 %s",
        plan.epochs - plan.position.start_epoch,
        time.time() - t0,
        weights_digest(built.network),
        f"{state.best_top1:.4f} (epoch {state.best_epoch})" if state.best_epoch else "n/a",
    )


def run(cfg: dict[str, Any]) -> RunState:
    """Train according to the resolved config; returns the final state (for tests and main)."""
    cfg, env = _start(cfg)
    plan = _plan(cfg, env)
    built = _build(cfg, env, plan)
    _log_configuration(cfg, env, plan, built)
    state = _initial_state(plan)
    if plan.position.finished:
        _logger.info("the checkpoint already covers all %d epochs: nothing to train", plan.epochs)
        return state
    _train(cfg, env, plan, built, state)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``mnv2-train``; returns the process exit code.

    0: done. 2 (``termination.EXIT_INVALID_INPUT``): the inputs are wrong (config, ``data_dir``,
    ``ckpt_path``); the reason is also written to the container's termination message, marked as not
    worth a retry. 1: anything else (a crash, a lost peer), which the operator retries.
    """
    from .config import ConfigError, parse_args
    from .termination import EXIT_INVALID_INPUT, report_invalid_input

    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        print(f"mnv2-train: configuration error: {exc}", file=sys.stderr)
        report_invalid_input(f"configuration error: {exc}")
        return EXIT_INVALID_INPUT
    try:
        run(cfg)
    except (TrainError, ConfigError, ValueError, FileNotFoundError) as exc:
        if not _logger.handlers:
            create_logger(0)
        _logger.error("training failed: %s", exc)
        report_invalid_input(exc)
        return EXIT_INVALID_INPUT
    except Exception:
        if not _logger.handlers:
            create_logger(0)
        _logger.exception("training failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
