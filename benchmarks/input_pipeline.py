"""Input pipeline: decode + augment ImageNet-like JPEGs, ours vs MindCV's, images/s per core.

    .venv/bin/python benchmarks/input_pipeline.py [--rounds 5] [--images 400] [--smoke]

Generates ``--images`` JPEGs of 500x375 (ImageNet's typical size; smooth random content with mild
noise, ~40-80 KB each like real photos) in an ImageNet-layout folder under a temp dir, then times a
full pass of the training pipeline over them, batch 32, with one map worker per pipeline:

* ``ours``: ``mnv2_trainer.data.create_loader(cfg, "train", is_training=True)`` with the recipe's
  augmentation keys (RandomCropDecodeResize 224, scale/ratio, hflip 0.5, colour jitter, our shard
  sampler). It ends at uint8 HWC: the trainer's network does MindCV's ``Normalize`` + ``HWC2CHW``
  in its graph (``mnv2_trainer.input_norm``; same values, a quarter of the bytes per image).
* ``mindcv``: ``mindcv.data.create_dataset`` + ``create_transforms(is_training=True)`` +
  ``create_loader`` with the same keys (MindCV's train.py's calls).
* ``ours-float``: ours with ``normalize=True``, i.e. ending with ``Normalize`` + ``HWC2CHW`` like
  MindCV's (float32 CHW batches): what the trainer uses when a float-space augmentation (random
  erasing, mixup, cutmix) is on.

"Per core" is images per CPU-second of the whole worker process (all pipeline threads), so it does not
depend on how busy the shared machine is; wall-clock images/s with one map worker is shown too. The
cores needed to feed one Ascend card at 1,650 images/s (13,133 images/s over 8 cards) are
1,650 / (images per CPU-second).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TARGET_PER_CARD = 1650.0  # images/s: 13,133 images/s / 8 cards (the seed's 8-card Ascend throughput)
RECIPE = "mobilenet_v2_0.75_ascend"
PEERS = ("ours", "mindcv", "ours-float")


def make_jpegs(
    root: Path, count: int, classes: int = 10, size: tuple[int, int] = (500, 375), seed: int = 0
) -> Path:
    """Write ``count`` JPEGs into ``root/train/<class>/`` (quality 90); returns ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth content (a coarse random image upscaled) plus mild noise: photo-like JPEG sizes
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:05d}.jpg", quality=90)
    return root


def recipe_cfg(data_dir: str, batch: int, workers: int) -> dict[str, Any]:
    from mnv2_trainer.config import load_recipe, resolve_config

    return resolve_config(
        load_recipe(RECIPE),
        {"data_dir": data_dir, "batch_size": batch, "num_parallel_workers": workers, "distribute": False},
    )


def build_ours(cfg: dict[str, Any], normalize: bool | None) -> Any:
    """The trainer's pipeline; ``normalize=True``: ending with Normalize + HWC2CHW (float32 CHW)."""
    from mnv2_trainer import data

    return data.create_loader(cfg, str(cfg["train_split"]), is_training=True, normalize=normalize).dataset


def build_mindcv(cfg: dict[str, Any]) -> Any:
    from mindcv.data import create_dataset, create_loader, create_transforms

    workers = int(cfg["num_parallel_workers"])
    dataset = create_dataset(
        name="imagenet",
        root=cfg["data_dir"],
        split=cfg["train_split"],
        shuffle=True,
        num_parallel_workers=workers,
    )
    transforms = create_transforms(
        dataset_name="imagenet",
        is_training=True,
        image_resize=cfg["image_resize"],
        scale=cfg["scale"],
        ratio=cfg["ratio"],
        hflip=cfg["hflip"],
        vflip=cfg["vflip"],
        color_jitter=cfg["color_jitter"],
        interpolation=cfg["interpolation"],
        auto_augment=cfg["auto_augment"],
        mean=cfg["mean"],
        std=cfg["std"],
        re_prob=cfg["re_prob"],
    )
    return create_loader(
        dataset=dataset,
        batch_size=int(cfg["batch_size"]),
        drop_remainder=True,
        is_training=True,
        num_classes=1000,
        transform=transforms,
        num_parallel_workers=workers,
    )


def worker(name: str, data_dir: str, batch: int, workers: int) -> None:
    def setup() -> tuple[Any, dict[str, Any]]:
        import mindspore as ms

        ms.dataset.config.set_seed(0)
        cfg = recipe_cfg(data_dir, batch, workers)
        if name == "mindcv":
            dataset = build_mindcv(cfg)
        elif name in ("ours", "ours-float"):
            dataset = build_ours(cfg, normalize=True if name == "ours-float" else None)
        else:
            raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")

        def one_pass(passes: int) -> dict[str, Any]:
            images, nbytes = 0, 0
            for _ in range(passes):
                # a fresh iterator per pass, consumed to the end: nothing is prefetched while other
                # peers run
                for image, _label in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
                    images += image.shape[0]
                    nbytes = image.nbytes // image.shape[0]
            return {"images": images, "bytes_per_image": nbytes}

        one_pass(1)  # warm-up: file cache, thread start
        return one_pass, {}

    common.worker_loop(setup)


def summarize(
    results: dict[str, list[dict[str, Any]]],
) -> tuple[list[list[Any]], dict[str, dict[str, common.Ratio]]]:
    """Rows of (peer, img/CPU-s, its spread, img/s wall, its spread, cores for 1,650 img/s, bytes/image,
    rounds) and ours' ratios to the other peers per CPU-second (the headline) and on the wall clock."""
    nan = float("nan")
    rows = []
    per_cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    for name, runs in results.items():
        per_cpu[name] = [r["images"] / r["cpu"] if r["cpu"] > 0 else nan for r in runs]
        wall[name] = [r["images"] / r["seconds"] if r["seconds"] > 0 else nan for r in runs]
        cpu = common.median(per_cpu[name])
        cores = TARGET_PER_CARD / cpu if cpu == cpu and cpu > 0 else nan
        rows.append(
            [
                name,
                cpu,
                common.spread(per_cpu[name]),
                common.median(wall[name]),
                common.spread(wall[name]),
                cores,
                runs[0].get("bytes_per_image", 0) if runs else 0,
                len(runs),
            ]
        )
    ratios = {
        f"ours/{name}": {
            "per CPU-s": common.round_ratios(per_cpu.get("ours", []), per_cpu[name]),
            "wall": common.round_ratios(wall.get("ours", []), wall[name]),
        }
        for name in results
        if name != "ours"
    }
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="map workers per pipeline (1 = per-core numbers)")
    p.add_argument("--passes", type=int, default=1, help="passes over the images per peer per round")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--smoke", action="store_true", help="tiny run: 48 images, batch 8, 1 round")
    p.add_argument("--json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.images, args.batch = 1, 48, 8
    if args.worker:
        worker(args.worker, args.data_dir, args.batch, args.workers)
        return 0

    print(
        common.machine_header(
            f"input_pipeline: {args.images} JPEGs 500x375 -> 224x224 train augmentation, batch {args.batch}, "
            f"{args.workers} map worker(s)",
            ["mindspore", "mindcv", "pillow"],
        )
    )
    with tempfile.TemporaryDirectory(prefix="mnv2-bench-jpeg-") as tmp:
        root = make_jpegs(Path(tmp), args.images)
        sizes = [f.stat().st_size for f in root.rglob("*.jpg")]
        print(f"data: {len(sizes)} JPEGs, mean {sum(sizes) / len(sizes) / 1024:.0f} KB")
        names = [n.strip() for n in args.peers.split(",") if n.strip()]
        peers = [
            common.Peer(
                n,
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    n,
                    "--data-dir",
                    str(root),
                    "--batch",
                    str(args.batch),
                    "--workers",
                    str(args.workers),
                ],
                env={"GLOG_v": "3", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
            for n in names
        ]
        common.alternate(peers, args.rounds, args.passes, common.default_log_dir("input_pipeline"))
    results = {peer.name: peer.results for peer in peers}
    rows, ratios = summarize(results)
    common.print_report(
        [
            "pipeline",
            "img per CPU-s",
            "spread",
            "img/s wall",
            "spread",
            f"cores for {TARGET_PER_CARD:.0f} img/s",
            "bytes/img",
            "rounds",
        ],
        rows,
        ratios,
        [f"\n{peer.name}: {peer.error}" for peer in peers if peer.error],
    )
    if args.json:
        flat = {k: {c: vars(r) for c, r in v.items()} for k, v in ratios.items()}
        Path(args.json).write_text(json.dumps({"results": results, "ratios": flat}, indent=1))
    return 1 if any(peer.error for peer in peers) else 0


if __name__ == "__main__":
    sys.exit(main())
