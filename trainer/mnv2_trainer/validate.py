"""Validate a checkpoint: ``python -m mnv2_trainer.validate -c ... --data_dir ... --ckpt_path ...``.

Prints top-1, top-5 and loss (cross entropy with the config's label smoothing, like MindCV's
validate.py) over the ``val_split`` of ``data_dir``, with MindCV's eval transforms (the last
two, ``Normalize`` + ``HWC2CHW``, done by the network on uint8 batches: :mod:`.input_norm`). Accepts our
checkpoints (train checkpoints with optimizer state) and MindCV's (train or pure network files):
``model.load_weights`` matches parameters by MindCV's names and fails loudly on any mismatch, so a
wrong path or model never yields random-weight numbers.

The last line of output is a JSON object with the numbers, for scripts.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

_logger = logging.getLogger("mnv2_trainer")


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``cfg['ckpt_path']`` on the validation split; returns the metrics."""
    import mindspore as ms

    from .amp import apply_amp
    from .data import clamp_parallel_workers, create_loader
    from .evaluate import evaluate
    from .input_norm import wrap_network
    from .model import create_model
    from .train import TrainError, _device_available

    path = cfg.get("ckpt_path") or ""
    if not path:  # never report numbers of random weights
        raise TrainError("--ckpt_path is required: the checkpoint to validate (ours or MindCV's .ckpt)")
    target = str(cfg.get("device_target") or "CPU")
    if not _device_available(target):
        _logger.warning("device_target %s is not available in this MindSpore build: using CPU", target)
        target = "CPU"
    ms.set_context(
        mode=ms.GRAPH_MODE if int(cfg.get("mode", 0)) == 0 else ms.PYNATIVE_MODE, device_target=target
    )
    cfg, workers_note = clamp_parallel_workers(cfg)
    if workers_note:
        _logger.warning(workers_note)
    loader = create_loader(cfg, str(cfg.get("val_split", "val")), is_training=False)
    num_classes = int(cfg.get("num_classes") or loader.num_classes)
    network = create_model(
        str(cfg["model"]), num_classes=num_classes, drop_rate=cfg.get("drop_rate"), checkpoint_path=path
    )
    amp = str(cfg.get("val_amp_level", "O0"))
    if amp != "O0" and target != "CPU":
        apply_amp(network, amp, cfg.get("amp_cast_list"))
    # the loader's uint8 batches are normalised in the graph, in float32 (outside AMP)
    network = wrap_network(network, loader.normalize)
    result = evaluate(network, loader.dataset, float(cfg.get("label_smoothing", 0.0) or 0.0))
    return {
        "checkpoint": path,
        "model": cfg["model"],
        "images": result.num_images,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code.

    0: done. 2 (``termination.EXIT_INVALID_INPUT``): the inputs are wrong (config, ``data_dir``,
    ``ckpt_path`` missing or not fitting the model); the reason also goes to the container's
    termination message, marked as not worth a retry. 1: anything else (a crash).
    """
    from .config import ConfigError, parse_args
    from .logger import create_logger
    from .termination import EXIT_INVALID_INPUT, report_invalid_input

    create_logger(0)
    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        print(f"validate: configuration error: {exc}", file=sys.stderr)
        report_invalid_input(f"configuration error: {exc}")
        return EXIT_INVALID_INPUT
    try:
        out = run(cfg)
    except Exception as exc:  # a clear one-line error; details at DEBUG
        from .train import TrainError

        _logger.error("validation failed: %s", exc)
        _logger.debug("details", exc_info=True)
        if isinstance(exc, (TrainError, ConfigError, ValueError, FileNotFoundError)):
            report_invalid_input(exc)
            return EXIT_INVALID_INPUT
        return 1
    print(
        f"{out['model']} {out['checkpoint']}: {out['images']} images, top-1 {out['top1']:.4f}, "
        f"top-5 {out['top5']:.4f}, loss {out['loss']:.4f}"
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
