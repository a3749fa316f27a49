"""The digits image folder: layout, split, and safe generation by several processes at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from mnv2_trainer import data


def _count(root: Path) -> dict[str, int]:
    return {split: len(list((root / split).glob("*/*.png"))) for split in ("train", "val")}


def _ensure(root: str) -> str:
    return data.ensure_digits(root)


def test_digits_layout(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "digits"
    data.ensure_digits(root)
    assert _count(root) == {"train": 1437, "val": 360}  # every 5th image to val
    samples, classes = data.list_image_folder(str(root / "val"))
    assert classes == [str(i) for i in range(10)]
    assert Path(samples[0][0]).name == "0000.png"  # index 0 is a val image
    img = Image.open(samples[0][0])
    assert img.size == (32, 32) and img.mode == "RGB"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    root = str(tmp_path / "shared")
    ctx = mp.get_context("spawn")  # like msrun's separate worker processes
    with ctx.Pool(4) as pool:
        assert pool.map(_ensure, [root] * 4) == [root] * 4
    assert _count(Path(root)) == {"train": 1437, "val": 360}
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".")]


def test_existing_split_is_reused(tmp_path: Path) -> None:
    root = tmp_path / "d"
    data.ensure_digits(root)
    marker = root / "train" / "0" / "keep.txt"
    marker.write_text("mine")
    data.ensure_digits(root)
    assert marker.read_text() == "mine"


def test_missing_split_folder_error_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ImageNet layout"):
        data.list_image_folder(str(tmp_path / "train"))
