"""Mixed precision is applied in place, cell by cell, exactly as MindCV's ``auto_mixed_precision``."""

from __future__ import annotations

import pytest

ms = pytest.importorskip("mindspore", reason="the trainer extra (MindSpore) is not installed")
mindcv_amp = pytest.importorskip("mindcv.utils.amp", reason="the dev extra (mindcv) is not installed")

from mnv2_trainer.amp import AmpError, apply_amp, cast_classes  # noqa: E402
from mnv2_trainer.model import create_model  # noqa: E402

pytestmark = pytest.mark.mindspore


def _precision_map(network: ms.nn.Cell) -> list[tuple[str, str, str]]:
    """(cell path, wrapper or class name, precision flag) for every sub-cell, in order."""
    rows = []
    for name, cell in network.cells_and_names():
        kind = (
            "cast"
            if type(cell).__name__ in ("_CastOutput", "_OutputTo16", "_OutputTo32")
            else type(cell).__name__
        )
        rows.append((name, kind, str(cell.mixed_precision_type)))
    return rows


@pytest.mark.parametrize(
    ("level", "cast_list"),
    [
        ("O0", None),
        ("O1", None),
        ("O2", None),
        ("O3", None),
        ("O1", "[nn.Conv2d]"),
        ("O2", "[nn.BatchNorm2d, nn.Dense]"),
    ],
)
def test_same_cells_and_precisions_as_mindcv(level: str, cast_list: str | None) -> None:
    ours, theirs = (create_model("mobilenet_v2_035_96", num_classes=10) for _ in range(2))
    params_before = {p.name: id(p) for p in ours.get_parameters()}
    apply_amp(ours, level, cast_list)
    mindcv_amp.auto_mixed_precision(theirs, level, cast_list)
    assert _precision_map(ours) == _precision_map(theirs)
    # in place: the optimizer built from the network's parameters trains the graph's parameters
    assert {p.name: id(p) for p in ours.get_parameters()} == params_before


def test_o1_casts_every_convolution_and_the_classifier() -> None:
    net = create_model("mobilenet_v2_035_96", num_classes=10)
    convs = [c for _, c in net.cells_and_names() if isinstance(c, ms.nn.Conv2d | ms.nn.Dense)]
    apply_amp(net, "O1")
    assert {str(c.mixed_precision_type) for c in convs} == {"MixedPrecisionType.FP16"}
    wrappers = [c for _, c in net.cells_and_names() if type(c).__name__ == "_CastOutput"]
    assert len(wrappers) == len(convs)


def test_cast_list_and_level_errors_name_the_key() -> None:
    assert cast_classes(None) is None
    assert cast_classes("[nn.Conv2d, nn.Dense]") == (ms.nn.Conv2d, ms.nn.Dense)
    with pytest.raises(AmpError, match=r"amp_cast_list: unknown cells \['nn\.Conv9d'\]"):
        cast_classes("[nn.Conv9d]")
    with pytest.raises(AmpError, match=r"amp_level: 'O4' is not supported"):
        apply_amp(create_model("mobilenet_v2_035_96", num_classes=10), "O4")
