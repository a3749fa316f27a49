"""A whole small training epoch: our ``train.py`` vs MindCV's training loop, same recipe.

    .venv/bin/python benchmarks/epoch.py [--rounds 3] [--images 2000] [--smoke]

The data is an ImageNet-layout folder of 64x64 JPEGs (``--images`` train images in 10 classes and a
val split of a tenth of that), the recipe ``mobilenet_v2_0.75_ascend`` with ``image_resize 64``,
``batch_size 32``, ``epoch_size 1``, ``num_parallel_workers 2``, ``distribute False``, ``amp_level O0``
(the CPU backend has no float16 kernels: our trainer falls back to O0 by itself, MindCV is given
O0), validation after the epoch and checkpoints as in the recipe.

MindCV 0.3.0's wheel does not ship ``train.py`` (it lives in the repository, outside the package).
The ``mindcv`` peer is therefore a **reconstruction of MindCV's train.py** from the installed package:
the same calls in the same order (``create_dataset``, ``create_transforms``, ``create_loader`` for
train and val, ``create_model``, ``create_loss``, ``create_scheduler``, ``create_optimizer`` with the
loss scale, ``create_trainer``, the ``StateMonitor`` callback, ``Model.train``), with the recipe's
values. It is labelled "mindcv (reconstructed train.py)" in the output.

Every run is a fresh process (so compile time counts, as it does for a user). A timing callback is
put first in ``Model.train``'s callback list of both peers (the only change to either loop), giving:
process start -> ``Model.train`` (imports, data listing, model build), ``Model.train`` -> end of the
first step (pipeline start + graph compile + one step), steady-state images/s over the remaining
steps, and the epoch-end work (validation, checkpoint). The parent also takes each run's CPU seconds
(the child and the processes it waited for): the whole-run ratio per CPU-second is the headline, as
it depends little on the other work of a shared machine. Peers alternate over ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

RECIPE = "mobilenet_v2_0.75_ascend"
PEERS = ("ours", "mindcv")
#: ``mindcv-nocb``: the MindCV loop without its StateMonitor callback (an experiment, not MindCV)
EXPERIMENTS = ("mindcv-nocb",)
LABELS = {
    "ours": "ours (mnv2_trainer.train)",
    "mindcv": "mindcv (reconstructed train.py)",
    "mindcv-nocb": "mindcv without StateMonitor (experiment)",
}


def make_image_folder(
    root: Path, train: int, val: int, classes: int = 10, size: int = 64, seed: int = 0
) -> Path:
    """``root/{train,val}/<class>/*.jpg`` of ``size``x``size`` JPEGs whose class shows in their colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            label = i % classes
            folder = root / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([label * 25, 255 - label * 25, (label * 70) % 256], dtype=np.int16)
            img = np.clip(base + rng.integers(-60, 61, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def overrides(data_dir: str, out_dir: str, batch: int, workers: int) -> dict[str, Any]:
    return {
        "data_dir": data_dir,
        "ckpt_save_dir": out_dir,
        "image_resize": 64,
        "batch_size": batch,
        "epoch_size": 1,
        "num_parallel_workers": workers,
        "distribute": False,
        "amp_level": "O0",
        "num_classes": 10,
        "val_while_train": True,
    }


# --------------------------------------------------------------------------- the timing callback
def install_timer(path: str, t_process: float) -> None:
    """Patch ``mindspore.train.Model.train`` to put a timing callback first; results go to ``path``."""
    from mindspore.train import Callback, Model

    marks: dict[str, Any] = {"process_start": t_process, "steps": 0}

    class Timer(Callback):
        def on_train_step_end(self, run_context: Any) -> None:
            now = time.perf_counter()
            marks["steps"] += 1
            marks.setdefault("first_step_end", now)
            marks["last_step_end"] = now

        def on_train_epoch_end(self, run_context: Any) -> None:
            marks.setdefault("epoch_end", time.perf_counter())

    original = Model.train

    def train(self: Any, epoch: int, train_dataset: Any, callbacks: Any = None, **kw: Any) -> Any:
        cbs = (
            []
            if callbacks is None
            else list(callbacks)
            if isinstance(callbacks, list | tuple)
            else [callbacks]
        )
        marks["train_call"] = time.perf_counter()
        marks["batch_size"] = train_dataset.get_batch_size()
        marks["sink"] = bool(kw.get("dataset_sink_mode", True))
        try:
            return original(self, epoch, train_dataset, callbacks=[Timer(), *cbs], **kw)
        finally:
            marks["train_return"] = time.perf_counter()
            Path(path).write_text(json.dumps(marks))

    Model.train = train


# --------------------------------------------------------------------------- the peers
def run_ours(cfg_args: list[str]) -> int:
    from mnv2_trainer.train import main

    return main(cfg_args)


def run_mindcv(cfg: dict[str, Any], state_monitor: bool = True) -> int:
    """MindCV 0.3.0's train.py, reconstructed from the installed package (see the module docstring).

    ``state_monitor=False`` (the ``mindcv-nocb`` experiment) trains without MindCV's callback, to
    measure what the callback costs; it is not what MindCV's train.py does.
    """
    import mindspore as ms
    from mindcv.data import create_dataset, create_loader, create_transforms
    from mindcv.loss import create_loss
    from mindcv.models import create_model
    from mindcv.optim import create_optimizer
    from mindcv.scheduler import create_scheduler
    from mindcv.utils import StateMonitor, create_trainer, get_metrics, set_seed

    a = SimpleNamespace(**cfg)
    ms.set_context(mode=a.mode)
    device_num, rank_id = None, None  # distribute False
    set_seed(a.seed)
    dataset_train = create_dataset(
        name=a.dataset,
        root=a.data_dir,
        split=a.train_split,
        shuffle=a.shuffle,
        num_samples=a.num_samples,
        num_shards=device_num,
        shard_id=rank_id,
        num_parallel_workers=a.num_parallel_workers,
        download=a.dataset_download,
        num_aug_repeats=a.aug_repeats,
    )
    num_classes = a.num_classes if a.num_classes is not None else dataset_train.num_classes()
    transform_list = create_transforms(
        dataset_name=a.dataset,
        is_training=True,
        image_resize=a.image_resize,
        scale=a.scale,
        ratio=a.ratio,
        hflip=a.hflip,
        vflip=a.vflip,
        color_jitter=a.color_jitter,
        interpolation=a.interpolation,
        auto_augment=a.auto_augment,
        mean=a.mean,
        std=a.std,
        re_prob=a.re_prob,
        re_scale=a.re_scale,
        re_ratio=a.re_ratio,
        re_value=a.re_value,
        re_max_attempts=a.re_max_attempts,
    )
    loader_train = create_loader(
        dataset=dataset_train,
        batch_size=a.batch_size,
        drop_remainder=a.drop_remainder,
        is_training=True,
        mixup=a.mixup,
        cutmix=a.cutmix,
        cutmix_prob=a.cutmix_prob,
        num_classes=num_classes,
        transform=transform_list,
        num_parallel_workers=a.num_parallel_workers,
    )
    loader_eval = None
    if a.val_while_train:
        dataset_eval = create_dataset(
            name=a.dataset,
            root=a.data_dir,
            split=a.val_split,
            num_shards=device_num,
            shard_id=rank_id,
            num_parallel_workers=a.num_parallel_workers,
            download=a.dataset_download,
        )
        transform_list_eval = create_transforms(
            dataset_name=a.dataset,
            is_training=False,
            image_resize=a.image_resize,
            crop_pct=a.crop_pct,
            interpolation=a.interpolation,
            mean=a.mean,
            std=a.std,
        )
        loader_eval = create_loader(
            dataset=dataset_eval,
            batch_size=a.batch_size,
            drop_remainder=False,
            is_training=False,
            transform=transform_list_eval,
            num_parallel_workers=a.num_parallel_workers,
        )
    num_batches = loader_train.get_dataset_size()
    network = create_model(
        model_name=a.model,
        num_classes=num_classes,
        in_channels=a.in_channels,
        drop_rate=a.drop_rate,
        drop_path_rate=a.drop_path_rate,
        pretrained=a.pretrained,
        checkpoint_path=a.ckpt_path,
    )
    loss = create_loss(
        name=a.loss, reduction=a.reduction, label_smoothing=a.label_smoothing, aux_factor=a.aux_factor
    )
    lr_scheduler = create_scheduler(
        num_batches,
        scheduler=a.scheduler,
        lr=a.lr,
        min_lr=a.min_lr,
        warmup_epochs=a.warmup_epochs,
        warmup_factor=a.warmup_factor,
        decay_epochs=a.decay_epochs,
        decay_rate=a.decay_rate,
        milestones=a.multi_step_decay_milestones,
        num_epochs=a.epoch_size,
        lr_epoch_stair=a.lr_epoch_stair,
        num_cycles=a.num_cycles,
        cycle_decay=a.cycle_decay,
    )
    fixed = a.loss_scale_type == "fixed" and not a.drop_overflow_update
    optimizer = create_optimizer(
        network.trainable_params(),
        opt=a.opt,
        lr=lr_scheduler,
        weight_decay=a.weight_decay,
        momentum=a.momentum,
        nesterov=a.use_nesterov,
        weight_decay_filter=a.weight_decay_filter,
        loss_scale=a.loss_scale if fixed else 1.0,
        eps=a.eps,
    )
    metrics = get_metrics(num_classes)
    trainer = create_trainer(
        network,
        loss,
        optimizer,
        metrics,
        amp_level=a.amp_level,
        amp_cast_list=a.amp_cast_list,
        loss_scale_type=a.loss_scale_type,
        loss_scale=a.loss_scale,
        drop_overflow_update=a.drop_overflow_update,
        ema=a.ema,
        ema_decay=a.ema_decay,
        clip_grad=a.clip_grad,
        clip_value=a.clip_value,
        gradient_accumulation_steps=a.gradient_accumulation_steps,
    )
    state_cb = StateMonitor(
        trainer,
        model_name=a.model,
        model_ema=a.ema,
        last_epoch=0,
        dataset_sink_mode=a.dataset_sink_mode,
        dataset_val=loader_eval,
        metric_name=list(metrics.keys()),
        val_interval=a.val_interval,
        ckpt_save_dir=a.ckpt_save_dir,
        ckpt_save_interval=a.ckpt_save_interval,
        ckpt_save_policy=a.ckpt_save_policy,
        ckpt_keep_max=a.keep_checkpoint_max,
        summary_dir=os.path.join(a.ckpt_save_dir, "summary"),
        log_interval=a.log_interval,
        rank_id=rank_id,
        device_num=device_num,
    )
    callbacks = [state_cb] if state_monitor else []
    trainer.train(a.epoch_size, loader_train, callbacks=callbacks, dataset_sink_mode=a.dataset_sink_mode)
    return 0


def child(peer: str, data_dir: str, out_dir: str, batch: int, workers: int, marks: str) -> int:
    """One training run in this process (the parent starts a fresh process per run)."""
    t_process = time.perf_counter()
    install_timer(marks, t_process)
    ov = overrides(data_dir, out_dir, batch, workers)
    if peer == "ours":
        argv = ["--config", RECIPE]
        for k, v in ov.items():
            argv += [f"--{k}", str(v)]
        return run_ours(argv)
    from mnv2_trainer.config import load_recipe, resolve_config

    cfg = resolve_config(load_recipe(RECIPE), ov)
    # keys MindCV's parser has that ours does not need defaults for
    for key, default in (("amp_cast_list", None), ("ckpt_save_policy", "latest_k"), ("eps", 1e-10)):
        cfg.setdefault(key, default)
    return run_mindcv(cfg, state_monitor=peer != "mindcv-nocb")


# --------------------------------------------------------------------------- report
def children_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes this process has waited for."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def derive(marks: dict[str, Any], wall: float, cpu: float = float("nan")) -> dict[str, float]:
    """Seconds and rates from the timing marks of one run (pure); ``cpu`` is the run's CPU seconds
    (the process and the processes it waited for)."""
    nan = float("nan")
    steps = int(marks.get("steps", 0))
    batch = int(marks.get("batch_size") or 0)
    steady_s = marks.get("last_step_end", nan) - marks.get("first_step_end", nan)
    return {
        "wall": wall,
        "cpu": cpu,
        "startup": marks.get("train_call", nan) - marks.get("process_start", nan),
        "first_step": marks.get("first_step_end", nan) - marks.get("train_call", nan),
        "steady_ips": (steps - 1) * batch / steady_s if steps > 1 and steady_s > 0 else nan,
        "epoch_end": marks.get("train_return", nan) - marks.get("epoch_end", nan),
        "train_ips": steps * batch / (marks.get("epoch_end", nan) - marks.get("train_call", nan))
        if steps
        else nan,
        "steps": float(steps),
    }


def summarize(
    runs: dict[str, list[dict[str, float]]],
) -> tuple[list[list[Any]], dict[str, dict[str, common.Ratio]]]:
    """The results table (medians) and ours' ratios to MindCV's loop.

    The whole-run ratio is a speed (MindCV's seconds / ours) on both clocks: CPU seconds of the run's
    processes (the headline on a shared machine) and wall seconds. The rates inside the run are
    wall-clock only (the timing marks have no CPU clock).
    """
    cols = ("cpu", "wall", "startup", "first_step", "steady_ips", "train_ips", "epoch_end")
    med = {
        peer: {c: common.median(r.get(c, float("nan")) for r in rs) for c in cols}
        for peer, rs in runs.items()
    }
    rows = [[LABELS.get(p, p), *(m[c] for c in cols), len(runs[p])] for p, m in med.items()]
    ours, peer = runs.get("ours", []), runs.get("mindcv", [])

    def series(rs: list[dict[str, float]], col: str) -> list[float]:
        return [r.get(col, float("nan")) for r in rs]

    ratios = {
        "ours/mindcv whole run (mindcv s / ours s)": {
            "per CPU-s": common.round_ratios(series(peer, "cpu"), series(ours, "cpu")),
            "wall": common.round_ratios(series(peer, "wall"), series(ours, "wall")),
        },
        "ours/mindcv steady img/s": {
            "wall": common.round_ratios(series(ours, "steady_ips"), series(peer, "steady_ips"))
        },
        "ours/mindcv epoch img/s (incl. compile)": {
            "wall": common.round_ratios(series(ours, "train_ips"), series(peer, "train_ips"))
        },
    }
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=2000, help="training images (val: a tenth)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="num_parallel_workers")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--smoke", action="store_true", help="tiny run: 128 images, batch 16, 1 round")
    p.add_argument("--json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--marks", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.images, args.batch = 1, min(args.images, 128), 16
    if args.child:
        return child(args.child, args.data_dir, args.out_dir, args.batch, args.workers, args.marks)

    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    print(
        common.machine_header(
            f"epoch: one epoch of {args.images} 64x64 JPEGs (+{args.images // 10} val), batch {args.batch}, "
            f"recipe {RECIPE}, CPU",
            ["mindspore", "mindcv"],
        )
    )
    log_dir = common.default_log_dir("epoch")
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    errors: list[str] = []
    env = dict(os.environ, GLOG_v="3")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="mnv2-bench-epoch-") as tmp:
        data = make_image_folder(Path(tmp) / "data", args.images, max(args.images // 10, 10))
        for r in range(args.rounds):
            for name in common.rotate(names, r):
                out = Path(tmp) / f"out-{name}-{r}"
                marks = Path(tmp) / f"marks-{name}-{r}.json"
                log = log_dir / f"{name}-{r}.log"
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--data-dir",
                    str(data),
                    "--out-dir",
                    str(out),
                ]
                cmd += ["--batch", str(args.batch), "--workers", str(args.workers), "--marks", str(marks)]
                t0, c0 = time.perf_counter(), children_cpu_seconds()
                with open(log, "w") as fh:
                    rc = subprocess.run(
                        cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=common.REPO
                    ).returncode
                wall, cpu = time.perf_counter() - t0, children_cpu_seconds() - c0
                if rc != 0 or not marks.exists():
                    errors.append(f"{name} round {r + 1}: exit {rc}, see {log}")
                    print(f"[round {r + 1}] {name} FAILED (exit {rc}), see {log}", file=sys.stderr)
                    continue
                d = derive(json.loads(marks.read_text()), wall, cpu)
                runs[name].append(d)
                print(
                    f"[round {r + 1}/{args.rounds}] {name}: wall {wall:.1f}s, first step {d['first_step']:.1f}s, "
                    f"steady {d['steady_ips']:.1f} img/s, load {common.load_average()}",
                    file=sys.stderr,
                    flush=True,
                )
    rows, ratios = summarize(runs)
    headers = [
        "peer",
        "CPU s",
        "wall s",
        "start-up s",
        "compile+1st step s",
        "steady img/s",
        "epoch img/s",
        "epoch-end s",
    ]
    common.print_report([*headers, "runs"], rows, ratios, errors)
    if args.json:
        flat = {k: {c: vars(r) for c, r in v.items()} for k, v in ratios.items()}
        Path(args.json).write_text(json.dumps({"runs": runs, "ratios": flat}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
