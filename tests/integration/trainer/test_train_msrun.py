"""Data-parallel training under msrun with 2 CPU workers (the command line the operator renders).

Checks: msrun --join=True exits 0; the ranks read disjoint shards (from the sample indices each
rank logs to its own file); the replicas end with identical weights (rank 0's checkpoint equals
rank 1's, BatchNorm statistics included); the sharded validation during training equals validate.py
on the saved checkpoint (every image counted once, float32 sums only). Then the 2-card run is
resumed on 1 card with one more epoch: steps per epoch double, the position maps by epochs.
"""

from __future__ import annotations

import ast
import re
import socket
import sys
from pathlib import Path

import pytest
from mnv2_trainer.schedule import create_lr_schedule
from trainer_cli import (
    DIGITS_CONFIG,
    MODEL,
    VAL_IMAGES,
    explain,
    metrics,
    run_cli,
    train,
    validate,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.mindspore]

# 1408 = 22 steps x 2 ranks x 32: every rank reads whole batches, no padding, nothing dropped.
NUM_SAMPLES = 1408
STEPS = NUM_SAMPLES // 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _indices(log: str, split: str, epoch: int) -> list[int]:
    m = re.search(rf"DEBUG: {split} shard \d+/2 epoch {epoch} indices (\[[^\]]*\])", log)
    assert m, f"no {split} indices for epoch {epoch} in the rank log"
    return ast.literal_eval(m.group(1))


def test_msrun_two_cpu_workers(tmp_path: Path, digits_dir: Path) -> None:
    import mindspore as ms
    import numpy as np

    config = write_config(tmp_path / "digits.yaml", epoch_size=2, decay_epochs=1, num_samples=NUM_SAMPLES)
    out = tmp_path / "ckpt"
    proc, seconds = run_cli(
        [
            str(Path(sys.executable).parent / "msrun"),
            "--worker_num=2",
            "--local_worker_num=2",
            "--node_rank=0",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "--join=True",
            "--cluster_time_out=300",
            f"--log_dir={tmp_path / 'logs'}",
            "python",
            "-m",
            "mnv2_trainer.train",
            "--config",
            str(config),
            "--data_dir",
            str(digits_dir),
            "--ckpt_save_dir",
            str(out),
            "--resume",
            "auto",
            "--distribute",
            "True",
        ],
        timeout=600,
    )
    worker_logs = "".join(
        p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("*.log"))
    )
    assert proc.returncode == 0, explain(proc) + worker_logs
    print(f"msrun 2 workers, 2 epochs: {seconds:.0f}s")

    logs = [(out / f"train_rank{r}.log").read_text() for r in (0, 1)]
    for epoch in (1, 2):
        a, b = (_indices(log, "train", epoch) for log in logs)
        assert len(a) == len(b) == NUM_SAMPLES // 2
        assert not set(a) & set(b), f"epoch {epoch}: ranks share samples"
    assert _indices(logs[0], "train", 1) != _indices(logs[0], "train", 2)  # reshuffled per epoch
    va, vb = (_indices(log, "val", 1) for log in logs)
    assert sorted(va + vb) == list(range(VAL_IMAGES))  # validation: an exact partition
    for log in logs:
        assert f"32 per card x 2 card(s) = 64, {STEPS} steps/epoch" in log
        assert f"epoch 2/2 step {2 * STEPS}" in log

    digests = [re.search(r"finished 2 epochs .*; weights (\w+);", log).group(1) for log in logs]
    assert digests[0] == digests[1]
    rank0 = ms.load_checkpoint(str(out / f"{MODEL}-2_{STEPS}.ckpt"))
    rank1 = ms.load_checkpoint(str(out / "rank_1" / f"{MODEL}-2_{STEPS}.ckpt"))
    network = [k for k in rank0 if k.startswith(("features.", "classifier."))]
    assert len(network) == 262
    different = [k for k in network if not np.array_equal(rank0[k].asnumpy(), rank1[k].asnumpy())]
    assert not different, f"replicas differ in {different[:5]}"

    last = metrics(out)[-1]
    single = validate(write_config(tmp_path / "val.yaml"), digits_dir, out / f"{MODEL}-2_{STEPS}.ckpt")
    assert single["top1"] == pytest.approx(last["top1"], abs=1e-6)
    assert single["loss"] == pytest.approx(last["val_loss"], rel=1e-4)

    # Resume the 2-card run on 1 card with 3 epochs: 44 steps per epoch now, epoch 3 starts at step 88.
    proc, _ = train(config, digits_dir, out, "--epoch_size", "3", "--decay_epochs", "2")
    assert proc.returncode == 0, explain(proc)
    one_card = 2 * STEPS
    m = re.search(
        rf"\(epoch 2, step {2 * STEPS}, {STEPS} steps/epoch\) -> epoch 3, global step (\d+), lr (\S+)",
        proc.stdout,
    )
    assert m, proc.stdout[-3000:]
    lrs = create_lr_schedule(
        {
            "scheduler": "cosine_decay",
            "lr": DIGITS_CONFIG["lr"],
            "min_lr": 0.0,
            "warmup_epochs": 1,
            "decay_epochs": 2,
        },
        one_card,
        3,
    )
    assert int(m.group(1)) == 2 * one_card
    assert float(m.group(2)) == pytest.approx(lrs[2 * one_card], rel=1e-5)
    assert f"INFO: epoch 3/3 step {3 * one_card} " in proc.stdout
    assert [x["epoch"] for x in metrics(out)] == [1, 2, 3]
