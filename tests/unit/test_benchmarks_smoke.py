"""Keep the benchmarks (benchmarks/*.py, not timed tests) from rotting.

Fast tests cover their pure parts (statistics, tables, ratios, data generators, the PyTorch model's
size); the slow ones run each benchmark's ``--smoke`` mode end to end, which takes seconds to a
minute: a broken import, a changed trainer/MindCV/cluster API or a crashed worker fails them.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
common = importlib.import_module("_common")


def _bench(name: str):
    return importlib.import_module(name)


def _run(script: str, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, (
        f"{script} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


# --------------------------------------------------------------------------- pure helpers
def test_median_ratio_rotate() -> None:
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(common.median([]))
    assert common.ratio(3.0, 2.0) == 1.5
    assert math.isnan(common.ratio(1.0, 0.0))
    assert math.isnan(common.ratio(float("nan"), 1.0))
    assert common.rotate(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert common.rotate(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert common.rotate(["a", "b", "c"], 5) == ["c", "a", "b"]
    # every peer goes first equally often over len(peers) rounds
    firsts = [common.rotate(["a", "b", "c"], r)[0] for r in range(3)]
    assert sorted(firsts) == ["a", "b", "c"]


def test_format_table() -> None:
    table = common.format_table(["peer", "img/s"], [["ours", 12.345], ["torch", float("nan")], ["x", 1234.5]])
    lines = table.splitlines()
    assert lines[0].startswith("| peer ") and "img/s" in lines[0]
    assert set(lines[1]) <= {"|", "-"}
    assert "12.3" in lines[2] and "-" in lines[3].split("|")[2] and "1234" in lines[4]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_train_step_summary_ratios() -> None:
    ts = _bench("train_step")
    rows, ratios = ts.summarize(
        {"ours": [10.0, 12.0, 11.0], "mindcv": [5.0, 5.5, 6.0], "torch": [20.0], "torch-cl": [44.0]},
        {"ours": {"compile_seconds": 30.0}},
        {"ours": [5.0, 6.0, 7.0]},
    )
    assert rows[0][:6] == ["ours", 6.0, "5-7", 11.0, "10-12", 3]
    assert ratios["ours/mindcv"]["wall"].value == pytest.approx(2.0)
    # per round: 10/5, 12/5.5, 11/6
    assert ratios["ours/mindcv"]["wall"].low == pytest.approx(11 / 6)
    assert ratios["ours/mindcv"]["wall"].high == pytest.approx(12 / 5.5)
    assert math.isnan(ratios["ours/mindcv"]["per CPU-s"].value)  # no CPU reading of mindcv
    assert ratios["ours/torch-cl"]["wall"].value == pytest.approx(0.25)
    assert "ours/best PyTorch (torch-cl)" not in ratios  # best PyTorch is chosen per CPU-second


def test_train_step_ratios_per_cpu_second() -> None:
    ts = _bench("train_step")
    rows, ratios = ts.summarize(
        {"ours": [10.0, 20.0], "mindcv": [5.0, 5.0], "torch": [30.0, 30.0], "torch-cl": [40.0, 40.0]},
        per_cpu={"ours": [6.0, 6.0], "mindcv": [3.0, 2.0], "torch": [8.0, 8.0], "torch-cl": [7.0, 7.0]},
    )
    assert ratios["ours/mindcv"]["per CPU-s"].value == pytest.approx(6.0 / 2.5)
    assert (ratios["ours/mindcv"]["per CPU-s"].low, ratios["ours/mindcv"]["per CPU-s"].high) == (2.0, 3.0)
    assert str(ratios["ours/mindcv"]["per CPU-s"]) == "2.4 (2-3)"
    assert ratios["ours/mindcv"]["wall"].value == pytest.approx(3.0)
    assert ratios["ours/best PyTorch (torch)"]["per CPU-s"].value == pytest.approx(0.75)


def test_round_ratios_and_spread() -> None:
    r = common.round_ratios([4.0, 6.0, 5.0], [2.0, 2.0, 5.0])
    assert r.value == pytest.approx(2.5) and (r.low, r.high) == (1.0, 3.0)
    assert str(r) == "2.5 (1-3)"
    assert str(common.round_ratios([4.0], [2.0])) == "2"  # one round: no spread to show
    assert str(common.round_ratios([], [2.0])) == "-"
    assert common.spread([3.0, float("nan"), 1.0]) == "1-3"
    assert common.spread([]) == "-"


def test_print_report_shows_both_clocks(capsys: pytest.CaptureFixture[str]) -> None:
    ratios = {"ours/mindcv": {"per CPU-s": common.Ratio(1.78, 1.7, 1.9), "wall": common.Ratio(1.77)}}
    common.print_report(["peer", "img/s"], [["ours", 1.0]], ratios)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| ratio"))
    assert "per CPU-s" in header and "wall" in header
    assert "1.78 (1.7-1.9)" in out and "lowest and highest ratio of a single round" in out


def test_train_step_torch_model_matches_mindcv_size() -> None:
    pytest.importorskip("torch", reason="PyTorch is in the bench extra only (make bench installs it)")
    ts = _bench("train_step")
    import torch

    net = ts.torch_mobilenet_v2(0.75)
    # MindCV's mobilenet_v2_075: 2,663,064 values incl. BN statistics (reference params TSV)
    assert ts.torch_param_count(net) == 2_663_064
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)


def test_input_pipeline_jpegs_and_summary(tmp_path: Path) -> None:
    ip = _bench("input_pipeline")
    root = ip.make_jpegs(tmp_path, 4, classes=2)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 4 and len({f.parent.name for f in files}) == 2
    from PIL import Image

    with Image.open(files[0]) as img:
        assert img.size == (500, 375) and img.format == "JPEG"
    runs = {
        "ours": [{"images": 100, "cpu": 0.5, "seconds": 1.0, "bytes_per_image": 602112}],
        "mindcv": [{"images": 100, "cpu": 1.0, "seconds": 1.0, "bytes_per_image": 602112}],
    }
    rows, ratios = ip.summarize(runs)
    assert rows[0][1] == 200.0 and rows[0][5] == pytest.approx(1650 / 200)
    assert ratios["ours/mindcv"]["per CPU-s"].value == pytest.approx(2.0)
    assert ratios["ours/mindcv"]["wall"].value == pytest.approx(1.0)


def test_epoch_derive_and_summary(tmp_path: Path) -> None:
    ep = _bench("epoch")
    marks = {
        "process_start": 0.0,
        "train_call": 5.0,
        "first_step_end": 25.0,
        "last_step_end": 35.0,
        "epoch_end": 35.5,
        "train_return": 40.0,
        "steps": 11,
        "batch_size": 32,
    }
    d = ep.derive(marks, wall=41.0, cpu=60.0)
    assert d["cpu"] == 60.0 and d["startup"] == 5.0 and d["first_step"] == 20.0 and d["epoch_end"] == 4.5
    assert d["steady_ips"] == pytest.approx(10 * 32 / 10.0)
    rows, ratios = ep.summarize({"ours": [d], "mindcv": [dict(d, cpu=90.0, wall=82.0, steady_ips=16.0)]})
    whole = ratios["ours/mindcv whole run (mindcv s / ours s)"]
    assert whole["wall"].value == pytest.approx(2.0) and whole["per CPU-s"].value == pytest.approx(1.5)
    assert ratios["ours/mindcv steady img/s"]["wall"].value == pytest.approx(2.0)
    root = ep.make_image_folder(tmp_path, train=20, val=10, classes=10, size=64)
    assert len(list((root / "train").rglob("*.jpg"))) == 20
    assert len(list((root / "val").iterdir())) == 10


def test_operator_scale_request_breakdown() -> None:
    os_ = _bench("operator_scale")

    def rec(verb: str, res: str, sub: str = "", code: int = 200) -> SimpleNamespace:
        return SimpleNamespace(verb=verb, resource=res, subresource=sub, code=code)

    records = [
        rec("create", "mobilenetv2trainingjobs"),  # the benchmark's own creation: not counted
        rec("create", "pods"),
        rec("create", "pods", code=409),
        rec("patch", "mobilenetv2trainingjobs", "status"),
        rec("watch", "pods"),
    ]
    total, by = os_.request_breakdown(records, jobs=1)
    assert total == 4
    assert by == {
        "create pods": 1,
        "create pods (409)": 1,
        "patch mobilenetv2trainingjobs/status": 1,
        "watch pods": 1,
    }
    assert os_.percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and math.isnan(os_.percentile([], 0.5))
    from mnv2_operator.spec import parse_spec

    parse_spec(os_.job_body("bench-00001")["spec"])  # the benchmark's job is valid


# --------------------------------------------------------------------------- --smoke runs
@pytest.mark.slow
@pytest.mark.cluster
def test_operator_scale_smoke() -> None:
    out = _run("operator_scale.py", "--smoke", timeout=300)
    assert "requests/job" in out and "goal (10 jobs)" in out


@pytest.mark.slow
@pytest.mark.mindspore
def test_input_pipeline_smoke() -> None:
    out = _run("input_pipeline.py", "--smoke", "--peers", "ours,mindcv", timeout=300)
    ratio_header = next(line for line in out.splitlines() if line.startswith("| ratio"))
    assert "per CPU-s" in ratio_header and "| ours/mindcv" in out


@pytest.mark.slow
@pytest.mark.mindspore
def test_train_step_smoke() -> None:
    peers = "ours,mindcv"
    try:
        import torch  # noqa: F401

        peers += ",torch,torch-cl"
    except ImportError:  # the bench extra is not installed (make test installs trainer,dev only)
        pass
    out = _run("train_step.py", "--smoke", "--peers", peers, timeout=600)
    assert "ours/mindcv" in out


@pytest.mark.slow
@pytest.mark.mindspore
def test_epoch_smoke_mindcv_reconstruction() -> None:
    """The reconstructed MindCV loop (ours is covered by the trainer's own tests) still runs."""
    out = _run("epoch.py", "--smoke", "--images", "32", "--peers", "mindcv", timeout=600)
    assert "mindcv (reconstructed train.py)" in out
