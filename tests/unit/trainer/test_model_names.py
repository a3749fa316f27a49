"""The model name list: importable without MindSpore, MindCV's spelling, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mnv2_trainer.model_names import MODEL_NAMES, UnknownModelError, check_model_name, model_variant


def test_names_import_without_mindspore_or_numpy() -> None:
    # The operator imports this module; its image has neither MindSpore nor numpy.
    code = (
        "import sys, mnv2_trainer.model_names as m; "
        "bad = [x for x in ('mindspore', 'numpy', 'mindcv') if x in sys.modules]; "
        "assert not bad, bad; print(len(m.MODEL_NAMES))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "22"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mobilenet_v2_075", (0.75, 224)),
        ("mobilenet_v2_075_160", (0.75, 160)),
        ("mobilenet_v2_140", (1.4, 224)),
        ("mobilenet_v2_130_224", (1.3, 224)),
        ("mobilenet_v2_035_96", (0.35, 96)),
        ("mobilenet_v2_050_128", (0.5, 128)),
    ],
)
def test_width_and_resolution(name: str, expected: tuple[float, int]) -> None:
    assert model_variant(name) == expected


def test_every_name_parses_back_from_its_spelling() -> None:
    # Independent of the table: the name encodes width*100 and (optionally) the resolution.
    for name in MODEL_NAMES:
        parts = name.split("_")
        width = int(parts[2]) / 100
        resolution = int(parts[3]) if len(parts) == 4 else 224
        assert model_variant(name) == (width, resolution), name


def test_unknown_name_suggests_mindcv_spelling() -> None:
    # MindCV has no plain "mobilenet_v2_035": the error must point at the _224 name.
    with pytest.raises(UnknownModelError, match="mobilenet_v2_035_224"):
        check_model_name("mobilenet_v2_035")
    with pytest.raises(UnknownModelError, match="did you mean 'mobilenet_v2_075'"):
        check_model_name("mobilenet_v2_075_224")  # older MindCV configs spell it so
    with pytest.raises(UnknownModelError, match="unknown model 'resnet50'"):
        model_variant("resnet50")
