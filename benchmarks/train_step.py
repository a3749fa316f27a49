"""One training step of mobilenet_v2_075: ours vs MindCV's model + training cell vs PyTorch (CPU).

    .venv/bin/python benchmarks/train_step.py [--rounds 5] [--steps 3] [--batch 16] [--size 224] [--smoke]

Every peer trains on the same fixed random batch (batch 16 at 224x224 by default) with the recipe's
loss (cross entropy, label smoothing 0.1) and optimizer (Momentum 0.9, weight decay 3e-5, the
recipe's per-step cosine lr list), in float32 (the CPU backend has no float16 kernels, so our trainer
trains at O0 on CPU; MindCV is given O0 too):

* ``ours``: ``mnv2_trainer.model.create_model`` (on CPU its depthwise convolutions run on the C++
  kernel of ``mnv2_trainer.cpu_depthwise``) + the train cell ``mnv2_trainer.train`` builds
  (``loss.create_loss``, ``optim.create_optimizer``, ``train_step.create_train_cell``), graph mode.
* ``mindcv``: ``mindcv.models.create_model`` + ``mindcv.loss.create_loss`` +
  ``mindcv.optim.create_optimizer`` + ``mindcv.utils.create_trainer`` (a ``mindspore.Model``); its
  ``train_network`` is the cell MindCV trains with; graph mode.
* ``torch``, ``torch-cl``: a MobileNetV2 0.75 written here with PyTorch (torchvision cannot be
  installed beside torch 2.13), eager mode, default (NCHW) and channels-last memory layout.

Each peer lives in its own process; graph compilation and two warm-up steps are excluded. The peers
then run ``--steps`` steps each, in turn (rotating order), for ``--rounds`` rounds; the table shows
median images per CPU-second of each worker process and median images/s (wall clock), each with its
spread over the rounds, and ours' ratios on both clocks. Per CPU-second is the headline: on a machine
shared with other work it changes little with their load, while the wall clock measures them too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

MODEL = "mobilenet_v2_075"
RECIPE = "mobilenet_v2_0.75_ascend"
#: steps per epoch assumed for the lr list (only its length matters for speed)
STEPS_PER_EPOCH = 100
PEERS = ("ours", "mindcv", "torch", "torch-cl")
#: Not run by default: ``ours-threads`` = ours with MindSpore's CPU kernel pool sized to the cores
#: (a proposed trainer change, measured with ``--peers ours,ours-threads``). ``ours-native`` = ours
#: with MindSpore's own depthwise convolutions (``MNV2_CPU_DEPTHWISE=native``) instead of the C++
#: kernel of ``mnv2_trainer.cpu_depthwise`` that ``ours`` uses on CPU.
#: ``ours-cell+mindcv-net`` / ``mindcv-cell+ours-net`` swap the networks between the two MindSpore
#: train cells, to tell whether a difference comes from the network or from the cell around it.
EXPERIMENTS = ("ours-threads", "ours-native", "ours-cell+mindcv-net", "mindcv-cell+ours-net")


# --------------------------------------------------------------------------- recipe values
def recipe_settings(batch: int, size: int) -> dict[str, Any]:
    """The recipe's loss/optimizer/schedule settings every peer uses (resolved by our config module)."""
    from mnv2_trainer.config import load_recipe, resolve_config

    cfg = resolve_config(
        load_recipe(RECIPE),
        {"batch_size": batch, "image_resize": size, "distribute": False, "amp_level": "O0"},
    )
    return cfg


def batch_arrays(batch: int, size: int, num_classes: int = 1000, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, num_classes, size=(batch,)).astype(np.int32)
    return images, labels


# --------------------------------------------------------------------------- MindSpore peers
def _ms_context() -> None:
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)


def setup_ours(
    batch: int, size: int, threads: int | None = None, mindcv_net: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Our train cell; ``threads`` sets MindSpore's CPU kernel thread pool, ``mindcv_net`` puts
    MindCV's network into it (experiments, see EXPERIMENTS)."""
    import mindspore as ms
    from mnv2_trainer import cpu_depthwise, schedule
    from mnv2_trainer import train as ours
    from mnv2_trainer.loss import create_loss
    from mnv2_trainer.model import create_model
    from mnv2_trainer.optim import create_optimizer
    from mnv2_trainer.train_step import create_train_cell

    cfg = recipe_settings(batch, size)
    _ms_context()
    if threads:
        # MindSpore's CPU kernels default to a pool of 25-30 threads whatever the core count
        ms.device_context.cpu.op_tuning.threads_num(threads)
    if mindcv_net:
        import mindcv.models

        net = mindcv.models.create_model(MODEL, num_classes=1000)
    else:
        net = create_model(MODEL, num_classes=1000, drop_rate=cfg.get("drop_rate"))
    lrs = schedule.create_lr_schedule(cfg, STEPS_PER_EPOCH, int(cfg["epoch_size"]))
    amp, _ = ours.effective_amp(cfg, "CPU")
    kind, scale, drop, _ = ours.effective_loss_scale(cfg, "CPU")
    opt = create_optimizer(cfg, net, lrs, scale if kind == "fixed" and not drop else 1.0)
    cell = create_train_cell(net, create_loss(cfg), opt, amp, (kind, scale, drop))
    cell.set_train(True)
    x, y = batch_arrays(batch, size)
    depthwise = "native" if mindcv_net or cpu_depthwise.library() is None else "C++ kernel"
    return _ms_runner(cell, ms.Tensor(x), ms.Tensor(y)), {
        "amp": amp,
        "loss_scale": scale,
        "depthwise": depthwise,
    }


def setup_mindcv(batch: int, size: int, our_net: bool = False) -> tuple[Any, dict[str, Any]]:
    import mindspore as ms
    from mindcv.loss import create_loss
    from mindcv.models import create_model
    from mindcv.optim import create_optimizer
    from mindcv.scheduler import create_scheduler
    from mindcv.utils import create_trainer, get_metrics

    cfg = recipe_settings(batch, size)
    _ms_context()
    if our_net:
        from mnv2_trainer.model import create_model as our_create_model

        net = our_create_model(MODEL, num_classes=1000)
    else:
        net = create_model(MODEL, num_classes=1000)
    loss = create_loss(name="CE", label_smoothing=float(cfg["label_smoothing"]))
    lrs = create_scheduler(
        STEPS_PER_EPOCH,
        scheduler=cfg["scheduler"],
        lr=cfg["lr"],
        min_lr=cfg["min_lr"],
        warmup_epochs=cfg["warmup_epochs"],
        warmup_factor=cfg["warmup_factor"],
        decay_epochs=cfg["decay_epochs"],
        num_epochs=cfg["epoch_size"],
    )
    # MindCV's train.py: the optimizer divides by the loss scale when it is fixed without overflow drop
    opt = create_optimizer(
        net.trainable_params(),
        opt=cfg["opt"],
        lr=lrs,
        weight_decay=cfg["weight_decay"],
        momentum=cfg["momentum"],
        nesterov=cfg["use_nesterov"],
        weight_decay_filter=cfg["weight_decay_filter"],
        loss_scale=cfg["loss_scale"],
    )
    model = create_trainer(
        net,
        loss,
        opt,
        get_metrics(1000),
        amp_level="O0",
        amp_cast_list=None,
        loss_scale_type="fixed",
        loss_scale=cfg["loss_scale"],
        drop_overflow_update=False,
    )
    # mindspore.Model builds this cell (amp.build_train_network) in its constructor; Model.train runs it.
    cell = model.train_network
    cell.set_train(True)
    x, y = batch_arrays(batch, size)
    return _ms_runner(cell, ms.Tensor(x), ms.Tensor(y)), {"amp": "O0", "loss_scale": cfg["loss_scale"]}


def _ms_runner(cell: Any, x: Any, y: Any) -> Any:
    t0 = time.perf_counter()
    loss = cell(x, y).asnumpy()  # compiles the graph
    compile_s = time.perf_counter() - t0
    cell(x, y).asnumpy()  # warm-up

    def run(n: int) -> dict[str, Any]:
        out = None
        for _ in range(n):
            out = cell(x, y)
        return {"loss": float(out.asnumpy())} if out is not None else {}

    run.compile_seconds = compile_s  # type: ignore[attr-defined]
    run.first_loss = float(loss)  # type: ignore[attr-defined]
    return run


# --------------------------------------------------------------------------- PyTorch peers
def torch_mobilenet_v2(alpha: float = 0.75, num_classes: int = 1000, drop_rate: float = 0.2) -> Any:
    """MobileNetV2 in PyTorch with the layout of MindCV's (and torchvision's) model."""
    import torch
    from mnv2_trainer.architecture import INVERTED_RESIDUAL_SETTING, make_divisible  # no MindSpore
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list:
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6(inplace=True)] if relu else [])

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = round(cin * t)
            self.res = stride == 1 and cin == cout
            layers = conv_bn(cin, hidden, 1) if t != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, relu=False)
            self.layers = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.layers(x) if self.res else self.layers(x)

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ch = make_divisible(32 * alpha)
            last = make_divisible(1280 * max(1.0, alpha))
            feats: list[nn.Module] = conv_bn(3, ch, 3, 2)
            for t, c, n, s in INVERTED_RESIDUAL_SETTING:
                out = make_divisible(c * alpha)
                for i in range(n):
                    feats.append(InvertedResidual(ch, out, s if i == 0 else 1, t))
                    ch = out
            feats += conv_bn(ch, last, 1)
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(last, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).mean((2, 3)))

    return MobileNetV2()


def torch_param_count(net: Any) -> int:
    """Parameters plus BN running statistics (how MindCV counts its 2.66 M)."""
    params = sum(p.numel() for p in net.parameters())
    stats = sum(b.numel() for n, b in net.named_buffers() if not n.endswith("num_batches_tracked"))
    return params + stats


def setup_torch(batch: int, size: int, channels_last: bool) -> tuple[Any, dict[str, Any]]:
    import torch

    cfg = recipe_settings(batch, size)
    torch.manual_seed(0)
    net = torch_mobilenet_v2(0.75)
    x_np, y_np = batch_arrays(batch, size)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np).long()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg["label_smoothing"]))
    opt = torch.optim.SGD(
        net.parameters(),
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight_decay"]),
        nesterov=bool(cfg["use_nesterov"]),
    )
    net.train()

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for _ in range(2):
        step()
    warm = time.perf_counter() - t0

    def run(n: int) -> dict[str, Any]:
        loss = None
        for _ in range(n):
            loss = step()
        return {"loss": float(loss.detach())} if loss is not None else {}

    run.compile_seconds = warm  # type: ignore[attr-defined]
    return run, {"threads": torch.get_num_threads(), "params": torch_param_count(net)}


def worker(name: str, batch: int, size: int) -> None:
    def setup() -> tuple[Any, dict[str, Any]]:
        if name == "ours":
            run, info = setup_ours(batch, size)
        elif name == "ours-native":
            os.environ["MNV2_CPU_DEPTHWISE"] = "native"
            run, info = setup_ours(batch, size)
        elif name == "ours-threads":
            run, info = setup_ours(batch, size, threads=os.cpu_count() or 1)
        elif name == "ours-cell+mindcv-net":
            run, info = setup_ours(batch, size, mindcv_net=True)
        elif name == "mindcv":
            run, info = setup_mindcv(batch, size)
        elif name == "mindcv-cell+ours-net":
            run, info = setup_mindcv(batch, size, our_net=True)
        elif name in ("torch", "torch-cl"):
            run, info = setup_torch(batch, size, channels_last=name == "torch-cl")
        else:
            raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(PEERS + EXPERIMENTS)}")
        return run, dict(info, compile_seconds=getattr(run, "compile_seconds", None))

    common.worker_loop(setup)


# --------------------------------------------------------------------------- report
def summarize(
    results: dict[str, list[float]],
    infos: dict[str, dict[str, Any]] | None = None,
    per_cpu: dict[str, list[float]] | None = None,
) -> tuple[list[list[Any]], dict[str, dict[str, common.Ratio]]]:
    """The results table and ours' ratios to every other peer, on both clocks.

    Args:
        results: images/s (wall clock) of every round, by peer.
        infos: the workers' ready messages (compile/warm-up seconds).
        per_cpu: images per CPU-second of the worker process of every round, by peer (NaN for a
            round without a CPU reading).

    Returns:
        Rows of (peer, img per CPU-s median, its spread, img/s median, its spread, rounds, compile s),
        and ``ours/<peer>`` -> {"per CPU-s": Ratio, "wall": Ratio}. Per CPU-second comes first: on a
        shared machine it depends little on the other processes, the wall clock a lot.
    """
    infos, per_cpu = infos or {}, per_cpu or {}
    rows = [
        [
            k,
            common.median(per_cpu.get(k, [])),
            common.spread(per_cpu.get(k, [])),
            common.median(v),
            common.spread(v),
            len(v),
            float(infos.get(k, {}).get("compile_seconds") or float("nan")),
        ]
        for k, v in results.items()
    ]

    def both(peer: str) -> dict[str, common.Ratio]:
        return {
            "per CPU-s": common.round_ratios(per_cpu.get("ours", []), per_cpu.get(peer, [])),
            "wall": common.round_ratios(results.get("ours", []), results.get(peer, [])),
        }

    ratios = {f"ours/{k}": both(k) for k in results if k != "ours"}
    torch_peers = [k for k in results if k.startswith("torch") and k in per_cpu]
    if torch_peers:
        best = max(torch_peers, key=lambda k: common.median(per_cpu[k]))
        ratios[f"ours/best PyTorch ({best})"] = both(best)
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per peer per round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated, of {','.join(PEERS + EXPERIMENTS)}"
    )
    p.add_argument("--smoke", action="store_true", help="tiny run (batch 2, 32x32, 1 round of 1 step)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.batch, args.size = 1, 1, 2, 32
    if args.worker:
        worker(args.worker, args.batch, args.size)
        return 0

    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    peers = [
        common.Peer(
            n,
            [sys.executable, __file__, "--worker", n, "--batch", str(args.batch), "--size", str(args.size)],
            # one MindSpore/torch thread pool per worker sized to the machine; they never run together
            env={"GLOG_v": "3"},
        )
        for n in names
    ]
    print(
        common.machine_header(
            f"train_step: {MODEL}, batch {args.batch} at {args.size}x{args.size}, float32, CPU",
            ["mindspore", "mindcv", "torch"],
        )
    )
    common.alternate(peers, args.rounds, args.steps, common.default_log_dir("train_step"))
    results = {peer.name: [args.batch * args.steps / r["seconds"] for r in peer.results] for peer in peers}
    per_cpu = {
        peer.name: [
            args.batch * args.steps / r["cpu"] if r["cpu"] > 0 else float("nan") for r in peer.results
        ]
        for peer in peers
    }
    infos = {peer.name: peer.info for peer in peers}
    rows, ratios = summarize(results, infos, per_cpu)
    common.print_report(
        ["peer", "img per CPU-s", "spread", "img/s (wall)", "spread", "rounds", "compile/warm-up s"],
        rows,
        ratios,
        [
            f"{p.name}: depthwise convolutions on {p.info['depthwise']}"
            for p in peers
            if (p.info or {}).get("depthwise")
        ]
        + [f"\n{p.name}: {p.error}" for p in peers if p.error],
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": results,
                    "per_cpu": per_cpu,
                    "infos": infos,
                    "ratios": {k: {c: vars(r) for c, r in v.items()} for k, v in ratios.items()},
                },
                indent=1,
            )
        )
    return 1 if any(peer.error for peer in peers) else 0


if __name__ == "__main__":
    sys.exit(main())
