"""`mnv2 plot`: a job's loss and accuracy curves, from its metrics.jsonl, as a PNG (matplotlib).

`read_metrics` and `curves` are pure (records in, series out); `plot_curves` draws them. The demo
package holds this so that the operator package, and the operator image, never carry matplotlib.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Imported here, not where it draws: without the demo extra `mnv2 plot` then says which extra to install.
import matplotlib
from mnv2_operator import show
from mnv2_operator.show import ShowError, finite_number

# The trainer's report.py owns the record's key names; these alternatives keep `mnv2 plot` working
# with MindCV-style names too (`val_top1`, `train_loss`).
_KEYS = {
    "epoch": ("epoch",),
    "loss": ("loss", "train_loss"),
    "top1": ("top1", "val_top1", "acc1"),
    "top5": ("top5", "val_top5", "acc5"),
}


def _pick(record: Mapping[str, Any], names: Iterable[str]) -> float | None:
    for key in names:
        if key in record:
            return finite_number(record[key])
    return None


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (one JSON object per line; blank lines skipped).

    Raises:
        ShowError: the file is missing, or a line is not a JSON object (the message gives the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ShowError(f"{path}: no such metrics file (the trainer writes metrics.jsonl in --ckpt_save_dir)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            # A line cut short by a killed writer is the last one; anything else is a real problem.
            raise ShowError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ShowError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    return records


def curves(records: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-epoch series from metrics records: `epoch`, `loss`, `top1`, `top5` (equal lengths).

    A resumed run writes the epochs after its checkpoint again; the last record of an epoch wins, so
    the curve shows what the finished run did. Records without an epoch are ignored. Missing values
    are NaN (matplotlib leaves a gap).
    """
    by_epoch: dict[float, Mapping[str, Any]] = {}
    for record in records:
        epoch = _pick(record, _KEYS["epoch"])
        if epoch is not None:
            by_epoch[epoch] = record
    out: dict[str, list[float]] = {"epoch": [], "loss": [], "top1": [], "top5": []}
    for epoch in sorted(by_epoch):
        record = by_epoch[epoch]
        out["epoch"].append(epoch)
        for key in ("loss", "top1", "top5"):
            value = _pick(record, _KEYS[key])
            out[key].append(math.nan if value is None else value)
    return out


def plot_curves(
    series: Mapping[str, Sequence[float]], output: str | os.PathLike[str], title: str = ""
) -> Path:
    """Write a PNG: training loss (left) and validation top-1/top-5 (right) against the epoch.

    Raises:
        ShowError: there is no epoch to plot.
    """
    if not series.get("epoch"):
        raise ShowError("no epoch records to plot yet (the trainer writes one line per finished epoch)")
    matplotlib.use("Agg")  # no display here, and none needed for a file
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        ax_loss.plot(series["epoch"], series["loss"], marker="o", color="tab:red")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("training loss")
        ax_loss.grid(alpha=0.3)
        ax_acc.plot(series["epoch"], series["top1"], marker="o", label="top-1")
        ax_acc.plot(series["epoch"], series["top5"], marker="s", label="top-5")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("validation accuracy")
        ax_acc.set_ylim(0, 1.02)
        ax_acc.grid(alpha=0.3)
        ax_acc.legend(loc="lower right")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=100)
    finally:
        plt.close(fig)
    return output


def metrics_path_from_status(job: Mapping[str, Any]) -> Path | None:
    """Where the job's metrics.jsonl should be, from the checkpoint paths in its status.

    The trainer writes metrics.jsonl next to its checkpoints (in --ckpt_save_dir). Those paths are inside
    the pod's volume (`/output/ckpt/...`); on this machine only when the volume is mounted at that path.
    """
    checkpoints = (job.get("status") or {}).get("checkpoints") or {}
    for key in ("latest", "best"):
        value = checkpoints.get(key)
        if isinstance(value, str) and value:
            return Path(value).parent / "metrics.jsonl"
    return None


def plot_cli(
    source: str, output: str | None = None, namespace: str = "default", kubeconfig: str | None = None
) -> int:
    """`mnv2 plot <job | metrics.jsonl>`: write the curves PNG and print its path.

    A path to an existing file (or anything ending in `.jsonl`) is read directly. Otherwise `source` is
    a job name: its metrics.jsonl is found next to the checkpoints its status names, which works when
    that folder is reachable from here; otherwise the error says how to copy the file out.
    """
    try:
        if source.endswith(".jsonl") or Path(source).is_file():
            metrics_file = Path(source)
            title = metrics_file.parent.name or str(metrics_file)
            default_output = metrics_file.with_name("curves.png")
        else:
            job = show.get_job(show.load_api_client(kubeconfig), source, namespace)
            found = metrics_path_from_status(job)
            if found is None:
                raise ShowError(
                    f"job {namespace}/{source} has no checkpoint in its status yet, so its metrics.jsonl "
                    "cannot be located; try again after its first epoch"
                )
            metrics_file = found
            if not metrics_file.is_file():
                raise ShowError(
                    f"job {namespace}/{source} writes its metrics to {metrics_file}, which is on the job's "
                    f"volume, not on this machine: copy it (`kubectl cp {source}-worker-0:{metrics_file} "
                    "metrics.jsonl`) and run `mnv2 plot metrics.jsonl`"
                )
            title = f"{namespace}/{source}"
            default_output = Path(f"{source}-curves.png")
        path = plot_curves(curves(read_metrics(metrics_file)), output or default_output, title=title)
    except ShowError as exc:
        print(f"mnv2 plot: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
