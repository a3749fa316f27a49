"""Train MobileNetV2 with MindCV's recipe: ``python -m mnv2_trainer.train --config ... --data_dir ...``.

The entry point only wires the factories: :mod:`.config` (recipe + flags), :mod:`.data` (datasets,
transforms, shards), :mod:`.model`, :mod:`.schedule` (per-step lr, resume mapping),
:mod:`.checkpoint`, :mod:`.evaluate`, :mod:`.report`, :mod:`.logger`.

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
from .logger import create_logger

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


class TrainError(RuntimeError):
    """A problem with the run's inputs; the message names the key or path and the fix."""


@dataclass
class Env:
    """Where this process runs."""

    device: str
    rank: int = 0
    group_size: int = 1
    distributed: bool = False


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


# --------------------------------------------------------------------------- factories
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


env_notes: list[str] = []  # warnings found before the logger exists; logged once it does


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
    env = Env(device=target)
    if cfg.get("distribute"):
        from mindspore.communication import get_group_size, get_rank, init

        check_launched_distributed()

        init()
        env = Env(target, get_rank(), get_group_size(), True)
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=env.group_size
        )
    seed = int(cfg.get("seed", 42) or 0)
    ms.set_seed(seed)  # the same initial weights on every rank
    ms.dataset.config.set_seed(seed + env.rank)  # augmentation: a different stream per rank
    env_notes.extend(notes)
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


def create_loss(cfg: dict[str, Any]) -> Any:
    """MindCV's CrossEntropySmooth (mean reduction) is ``nn.CrossEntropyLoss`` with label smoothing."""
    from mindspore import nn

    return nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0) or 0.0))


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


def create_train_cell(
    network: Any,
    loss: Any,
    optimizer: Any,
    amp_level: str,
    scale: tuple,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    cast_list: str | None = None,
) -> Any:
    """Network + loss + optimizer step, as MindSpore's ``build_train_network`` makes it for MindCV.

    AMP is applied to ``network`` in place (:func:`.amp.apply_amp`, ``cast_list`` is the config's
    ``amp_cast_list``), so the optimizer's parameters stay the ones the graph trains.

    ``normalize`` is the training loader's ``Loader.normalize``: with uint8 NHWC batches the network
    is wrapped in the (parameterless, float32) input normalisation after AMP has been applied to it,
    so the network sees exactly the float32 images MindCV's pipeline would have fed it.

    Fixed loss scale without overflow skipping: gradients are computed on ``loss * scale`` and the
    optimizer (created with ``loss_scale=scale``) divides them back. Otherwise the update cell of a
    dynamic/fixed loss-scale manager skips overflowing steps (Ascend/GPU only).
    """
    import mindspore as ms
    from mindspore import nn, ops

    from .amp import apply_amp
    from .input_norm import wrap_network

    apply_amp(network, amp_level, cast_list)

    class WithLossCell(nn.Cell):
        """Loss in float32 whatever the network's output type (MindCV's add_loss_network)."""

        def __init__(self, backbone: Any, loss_fn: Any) -> None:
            super().__init__(auto_prefix=False)
            self._backbone, self._loss_fn = backbone, loss_fn

        def construct(self, data: Any, label: Any) -> Any:
            return self._loss_fn(ops.cast(self._backbone(data), ms.float32), label)

    with_loss = WithLossCell(wrap_network(network, normalize), loss)
    kind, value, drop = scale
    if kind == "fixed" and not drop:
        return nn.TrainOneStepCell(with_loss, optimizer, sens=value)
    from mindspore.train import DynamicLossScaleManager, FixedLossScaleManager

    manager = (
        DynamicLossScaleManager(init_loss_scale=value, scale_factor=2, scale_window=2000)
        if kind == "dynamic"
        else FixedLossScaleManager(loss_scale=value, drop_overflow_update=True)
    )
    return nn.TrainOneStepWithLossScaleCell(with_loss, optimizer, scale_sense=manager.get_update_cell())


def load_train_state(train_cell: Any, optimizer: Any, state: ckpt_lib.TrainState, global_step: int) -> None:
    """Load network weights and optimizer state, then place the optimizer at ``global_step``.

    The stored ``learning_rate`` list and ``momentum`` are dropped: they come from the new config.

    Raises:
        TrainError: when network or optimizer parameters are missing from the checkpoint.
    """
    import mindspore as ms
    import numpy as np

    # Hyperparameters come from the new config, not the checkpoint: the lr list is rebuilt and the
    # momentum coefficient may have been changed on purpose.
    derived = ("learning_rate", "momentum")
    params = {k: v for k, v in state.params.items() if k not in derived}
    not_loaded, _unused = ms.load_param_into_net(train_cell, params, strict_load=True)
    # Loss-scale bookkeeping of a TrainOneStepWithLossScaleCell may be absent in older files.
    missing = [n for n in not_loaded if n not in (*derived, "scale_sense", "global_step")]
    if missing:
        raise TrainError(
            f"checkpoint {state.path} does not fit this model/optimizer: {len(missing)} parameters missing "
            f"(e.g. {', '.join(missing[:4])}); was it written for another model or optimizer? "
            "Use another ckpt_save_dir or --resume never"
        )
    optimizer.global_step.set_data(ms.Tensor(np.array([global_step], np.int32)))


def create_resume_state(cfg: dict[str, Any], model_name: str) -> ckpt_lib.TrainState | None:
    """The checkpoint to resume from according to ``resume`` (and MindCV's ``ckpt_path``+``resume_opt``)."""
    resume = str(cfg.get("resume", "auto") or "auto")
    save_dir = str(cfg.get("ckpt_save_dir", "./ckpt"))
    if resume == "never":
        return None
    if resume == "auto":
        state = ckpt_lib.find_resume_checkpoint(save_dir, model_name)
        if state is None and cfg.get("resume_opt") and cfg.get("ckpt_path"):
            return _read_strict(str(cfg["ckpt_path"]), "ckpt_path (with resume_opt)")
        return state
    return _read_strict(resume, "resume")


def _read_strict(path: str, key: str) -> ckpt_lib.TrainState:
    if not os.path.isfile(path):
        raise TrainError(f"config key {key}: checkpoint {path!r} does not exist")
    try:
        return ckpt_lib.read_train_state(path)
    except ckpt_lib.InvalidCheckpoint as exc:
        raise TrainError(f"config key {key}: {exc}") from exc


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


# --------------------------------------------------------------------------- the epoch callback
def create_callback(**kwargs: Any) -> Any:
    """The per-step/per-epoch callback (defined lazily: it subclasses MindSpore's ``Callback``)."""
    from mindspore.train import Callback

    class EpochEnd(Callback):
        """Validation, checkpoints, logging and reporting at the end of each epoch."""

        def __init__(self, k: dict[str, Any]) -> None:
            super().__init__()
            self.__dict__.update(k)
            self.losses: list[float] = []
            self.epoch_start = time.time()
            self.steps_in_epoch = 0

        def on_train_epoch_begin(self, run_context: Any) -> None:
            self.epoch_start = time.time()
            self.losses = []
            self.steps_in_epoch = 0

        def on_train_step_end(self, run_context: Any) -> None:
            cb = run_context.original_args()
            loss = float(cb.net_outputs.asnumpy()) if hasattr(cb.net_outputs, "asnumpy") else float("nan")
            self.losses.append(loss)
            self.steps_in_epoch = self.spe if self.sink else self.steps_in_epoch + 1
            step = self.state.global_step + self.steps_in_epoch
            if self.reporter is not None:
                elapsed = max(time.time() - self.epoch_start, 1e-9)
                # progress.epoch counts completed epochs (the CRD's column), so a running epoch
                # shows as the one before it until its last step.
                completed = cb.cur_epoch_num if self.steps_in_epoch >= self.spe else cb.cur_epoch_num - 1
                self.reporter.step(
                    epoch=completed,
                    step=step,
                    loss=loss,
                    lr=self.lrs[min(step, len(self.lrs)) - 1],
                    images_per_second=self.steps_in_epoch * self.global_batch / elapsed,
                )
            if not self.sink and self.log_interval and self.steps_in_epoch % self.log_interval == 0:
                _logger.info(
                    "epoch %d/%d step %d/%d loss %.4f lr %.6f",
                    cb.cur_epoch_num,
                    self.epochs,
                    self.steps_in_epoch,
                    self.spe,
                    loss,
                    self.lrs[step - 1],
                )

        def on_train_epoch_end(self, run_context: Any) -> None:
            from .distributed import average_parameters, batchnorm_statistics
            from .evaluate import evaluate
            from .report import metrics_line

            cb = run_context.original_args()
            epoch = int(cb.cur_epoch_num)
            seconds = time.time() - self.epoch_start
            state = self.state
            state.global_step = epoch * self.spe
            last_lr = self.lrs[state.global_step - 1]
            loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
            ips = self.spe * self.global_batch / seconds if seconds > 0 else None
            result = None
            if self.allreduce is not None:  # every rank validates and saves the same model
                average_parameters(batchnorm_statistics(self.network), self.env.group_size, self.allreduce)
            if self.val_loader is not None and (epoch % self.val_interval == 0 or epoch == self.epochs):
                t0 = time.time()
                result = evaluate(
                    self.eval_network, self.val_loader.dataset, self.label_smoothing, self.allreduce
                )
                self.train_cell.set_train(True)
                state.last_eval = result
                _logger.debug("validation took %.1fs", time.time() - t0)
            improved = result is not None and result.top1 > state.best_top1
            if improved:
                state.best_top1, state.best_epoch = result.top1, epoch
            meta = {
                "epoch_num": epoch,
                "step_num": state.global_step,
                "mnv2_steps_per_epoch": self.spe,
                "mnv2_global_batch_size": self.global_batch,
                "mnv2_num_epochs": self.epochs,
                "mnv2_best_top1": float(state.best_top1),
                "mnv2_best_epoch": int(state.best_epoch or 0),
            }
            model = self.model_name
            if self.env.rank == 0:
                if epoch % self.save_interval == 0 or epoch == self.epochs:
                    path = os.path.join(self.save_dir, ckpt_lib.checkpoint_name(model, epoch, self.spe))
                    state.latest_path = ckpt_lib.save_checkpoint(self.train_cell, path, meta)
                    for old in ckpt_lib.prune_checkpoints(self.save_dir, model, self.keep):
                        _logger.debug("removed old checkpoint %s", old)
                if improved:
                    best = os.path.join(self.save_dir, ckpt_lib.best_name(model))
                    state.best_path = ckpt_lib.save_checkpoint(self.train_cell, best, meta)
            elif epoch == self.epochs:
                rank_dir = os.path.join(self.save_dir, f"rank_{self.env.rank}")
                path = os.path.join(rank_dir, ckpt_lib.checkpoint_name(model, epoch, self.spe))
                state.latest_path = ckpt_lib.save_checkpoint(self.train_cell, path, meta)
                ckpt_lib.prune_checkpoints(rank_dir, model, 1)
            acc = (
                f" val top1 {result.top1:.4f} top5 {result.top5:.4f} loss {result.loss:.4f}"
                if result is not None
                else ""
            )
            _logger.info(
                "epoch %d/%d step %d loss %.4f lr %.6f%s | %.1fs %.1f img/s%s",
                epoch,
                self.epochs,
                state.global_step,
                loss,
                last_lr,
                acc,
                seconds,
                ips or 0.0,
                f" | saved {os.path.basename(state.latest_path)}" if state.latest_path else "",
            )
            record = metrics_line(
                epoch=epoch,
                total_epochs=self.epochs,
                step=state.global_step,
                loss=loss,
                lr=last_lr,
                top1=result.top1 if result else None,
                top5=result.top5 if result else None,
                val_loss=result.loss if result else None,
                images_per_second=ips,
                epoch_seconds=seconds,
                latest=state.latest_path,
                best=state.best_path,
                best_top1=state.best_top1 if state.best_epoch is not None else None,
                best_epoch=state.best_epoch,
            )
            state.history.append(record)
            if self.reporter is not None:
                self.reporter.epoch_end(record)

    return EpochEnd(kwargs)


# --------------------------------------------------------------------------- the run
def _summary(lines: dict[str, Any]) -> str:
    width = max(len(k) for k in lines)
    return "\n".join(f"  {k:<{width}} : {v}" for k, v in lines.items())


def run(cfg: dict[str, Any]) -> RunState:
    """Train according to the resolved config; returns the final state (for tests and main)."""
    import mindspore as ms

    from .distributed import broadcast_parameters, create_allreduce
    from .input_norm import wrap_network
    from .model import create_model, param_count
    from .report import create_reporter

    check_supported(cfg)
    env = create_env(cfg)
    save_dir = os.path.abspath(str(cfg.get("ckpt_save_dir", "./ckpt")))
    cfg, workers_note = data_lib.clamp_parallel_workers(dict(cfg, ckpt_save_dir=save_dir))
    if workers_note:
        env_notes.append(workers_note)
    create_logger(env.rank, save_dir)
    for note in env_notes:
        _logger.warning(note)
    env_notes.clear()
    if env.rank == 0:
        ckpt_lib.remove_temporaries(save_dir)
    model_name = str(cfg["model"])
    epochs = int(cfg["epoch_size"])
    if cfg.get("ckpt_save_policy") == "top_k":
        _logger.warning(
            "ckpt_save_policy top_k is treated as latest_k (resume needs the newest checkpoints); "
            "the best one is always kept as %s",
            ckpt_lib.best_name(model_name),
        )

    state_ckpt = create_resume_state(cfg, model_name)
    completed = state_ckpt.epoch if state_ckpt else 0
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
    global_batch = int(cfg["batch_size"]) * env.group_size
    position = schedule_lib.resume_position(completed, spe, epochs)
    lrs = schedule_lib.create_lr_schedule(cfg, spe, epochs)

    num_classes = int(cfg.get("num_classes") or train_loader.num_classes)
    if num_classes < train_loader.num_classes:
        raise TrainError(
            f"config key num_classes: {num_classes} but the training split has {train_loader.num_classes} classes"
        )
    init_ckpt = None if state_ckpt else (cfg.get("ckpt_path") or None)
    network = create_model(
        model_name,
        num_classes=num_classes,
        drop_rate=cfg.get("drop_rate"),
        checkpoint_path=init_ckpt,
        ignore_classifier=bool(cfg.get("ignore_classifier")),
    )
    amp_level, amp_notes = effective_amp(cfg, env.device)
    kind, scale, drop, scale_notes = effective_loss_scale(cfg, env.device)
    for note in amp_notes + scale_notes:
        _logger.warning(note)
    opt_scale = scale if kind == "fixed" and not drop else 1.0
    optimizer = create_optimizer(cfg, network, lrs, opt_scale)
    train_cell = create_train_cell(
        network,
        create_loss(cfg),
        optimizer,
        amp_level,
        (kind, scale, drop),
        train_loader.normalize,
        cfg.get("amp_cast_list"),
    )
    # validation batches may be laid out differently from training ones (float-space augmentations)
    eval_network = wrap_network(network, val_loader.normalize) if val_loader is not None else None
    if state_ckpt is not None and not position.finished:
        load_train_state(train_cell, optimizer, state_ckpt, position.global_step)
    allreduce = create_allreduce() if env.distributed else None
    if allreduce is not None:  # replicas must start equal (initialisers differ per rank)
        broadcast_parameters(network.get_parameters(), env.rank, allreduce)
    n_tensors, n_values = param_count(network)

    resume_text = (
        "no checkpoint: from scratch"
        if state_ckpt is None
        else (
            f"{state_ckpt.path} (epoch {state_ckpt.epoch}, step {state_ckpt.global_step}"
            + (f", {state_ckpt.steps_per_epoch} steps/epoch" if state_ckpt.steps_per_epoch else "")
            + f") -> epoch {position.start_epoch + 1}, global step {position.global_step}"
            + (f", lr {lrs[position.global_step]:.6g}" if not position.finished else "")
        )
    )
    _logger.info(
        "configuration (%s):\n%s",
        cfg.get("config") or "defaults + flags",
        _summary(
            {
                "model": f"{model_name}, {num_classes} classes, {n_tensors} tensors / {n_values:,} values",
                "data": f"{cfg.get('dataset')} at {cfg.get('data_dir')}: {train_loader.num_samples} train"
                + (f" / {val_loader.num_samples} val" if val_loader else "")
                + f" images, {cfg.get('image_resize')}px, "
                + (
                    "uint8 batches normalised in the network" if train_loader.normalize else "float32 batches"
                ),
                "batch": f"{cfg['batch_size']} per card x {env.group_size} card(s) = {global_batch}, "
                f"{spe} steps/epoch",
                "epochs": f"{epochs}, validate every {cfg.get('val_interval', 1)}"
                if val_loader
                else f"{epochs}, no validation",
                "lr": f"{cfg.get('scheduler')} peak {cfg.get('lr')} min {cfg.get('min_lr')}, warmup "
                f"{cfg.get('warmup_epochs')} epochs from x{cfg.get('warmup_factor')}, decay {cfg.get('decay_epochs')}",
                "optimizer": f"{cfg.get('opt')} momentum {cfg.get('momentum')} weight_decay "
                f"{cfg.get('weight_decay')} ({cfg.get('weight_decay_filter')}), label_smoothing "
                f"{cfg.get('label_smoothing')}",
                "precision": f"amp {amp_level}"
                + (f" (recipe {cfg.get('amp_level')})" if amp_level != cfg.get("amp_level") else "")
                + f", loss scale {kind} {scale}"
                + (" drop overflow" if drop else ""),
                "device": f"{env.device}, {'graph' if int(cfg.get('mode', 0)) == 0 else 'pynative'} mode, "
                f"rank {env.rank}/{env.group_size}, sink {bool(cfg.get('dataset_sink_mode'))}",
                "resume": resume_text,
                "output": f"{save_dir} (keep {cfg.get('keep_checkpoint_max')})",
            }
        ),
    )
    state = RunState(position.start_epoch, position.global_step)
    if state_ckpt is not None and state_ckpt.best_epoch:
        best_file = os.path.join(save_dir, ckpt_lib.best_name(model_name))
        state.best_top1, state.best_epoch = state_ckpt.best_top1, state_ckpt.best_epoch
        state.best_path = best_file if os.path.isfile(best_file) else None
    if position.finished:
        _logger.info("the checkpoint already covers all %d epochs: nothing to train", epochs)
        return state

    reporter = create_reporter(save_dir, epochs, env.rank)
    sink = bool(cfg.get("dataset_sink_mode", False))
    callback = create_callback(
        state=state,
        env=env,
        spe=spe,
        sink=sink,
        epochs=epochs,
        lrs=lrs,
        global_batch=global_batch,
        network=network,
        eval_network=eval_network,
        train_cell=train_cell,
        val_loader=val_loader,
        val_interval=int(cfg.get("val_interval", 1) or 1),
        label_smoothing=float(cfg.get("label_smoothing", 0.0) or 0.0),
        allreduce=allreduce,
        reporter=reporter,
        model_name=model_name,
        save_dir=save_dir,
        save_interval=int(cfg.get("ckpt_save_interval", 1) or 1),
        keep=int(cfg.get("keep_checkpoint_max", 10) or 0),
        log_interval=int(cfg.get("log_interval", 100) or 0),
    )
    model = ms.train.Model(train_cell)
    t0 = time.time()
    try:
        model.train(
            epochs,
            train_loader.dataset,
            callbacks=[callback],
            dataset_sink_mode=sink,
            initial_epoch=position.start_epoch,
        )
    finally:
        if reporter is not None:
            reporter.close()
    _logger.info(
        "finished %d epochs in %.1fs; weights %s; best top1 %s",
        epochs - position.start_epoch,
        time.time() - t0,
        weights_digest(network),
        f"{state.best_top1:.4f} (epoch {state.best_epoch})" if state.best_epoch else "n/a",
    )
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
