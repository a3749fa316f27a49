"""`spec.recipe` names a built-in recipe only: the operator never reads a file a job names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mnv2_operator import controller, render
from mnv2_operator import spec as S
from mnv2_trainer import config as C

MINIMAL: dict[str, Any] = {
    "model": {"name": "mobilenet_v2_075"},
    "dataset": {"pvc": {"claimName": "imagenet"}},
    "output": {"pvc": {"claimName": "runs"}},
}


def recipe_problems(recipe: Any) -> list[str]:
    with pytest.raises(S.SpecError) as info:
        S.parse_spec({**MINIMAL, "recipe": recipe})
    return info.value.problems


@pytest.mark.parametrize(
    "recipe",
    [
        "/etc/passwd",
        "/proc/self/status",
        "../../x",
        "../recipes/mobilenet_v2_0.75_ascend.yaml",
        str(C.RECIPES_DIR / "mobilenet_v2_0.75_ascend.yaml"),  # even the built-in file, by path
        "mobilenet_v2_0.75_ascend.yaml",
        "mobilenet_v2_0.75_ascend\n",
    ],
)
def test_a_recipe_path_is_refused_and_never_read(recipe: str) -> None:
    (problem,) = recipe_problems(recipe)
    assert problem.startswith("spec.recipe: unknown recipe"), problem
    assert "only built-in recipe names" in problem and "mobilenet_v2_0.75_ascend" in problem
    # Nothing of the named file reaches the message (it would end up in the job's status).
    assert "root:" not in problem and "Name:" not in problem


def test_a_file_named_like_a_recipe_in_the_working_directory_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is looked up among the built-in recipes only, not relative to the operator's cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_bytes(b"\xff\xfe binary \x00")  # would raise UnicodeDecodeError if read
    (problem,) = recipe_problems("mine")
    assert problem.startswith("spec.recipe: unknown recipe 'mine'")
    (tmp_path / "mobilenet_v2_0.75_ascend").write_text("lr: 99\n")
    spec = S.parse_spec({**MINIMAL, "recipe": "mobilenet_v2_0.75_ascend"})
    config, _ = render.training_config(spec)
    assert config["lr"] != 99


def test_every_built_in_recipe_is_accepted() -> None:
    for name in C.available_recipes():
        assert S.parse_spec({**MINIMAL, "recipe": name}).recipe == name
    assert C.load_builtin_recipe("mobilenet_v2_1.4_ascend")["model"] == "mobilenet_v2_140"


def test_the_trainer_still_reads_recipe_files_given_on_its_command_line(tmp_path: Path) -> None:
    """Only the operator's view is restricted: `--config some.yaml` is the trainer's own business."""
    path = tmp_path / "r.yaml"
    path.write_text("lr: 0.5\n")
    assert C.load_recipe(os.fspath(path))["lr"] == 0.5


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (
            S.SpecError(["spec.nodes: must be >= 1; set 1 or more"]),
            "invalid MobileNetV2TrainingJob spec:\n  spec.nodes",
        ),
        (
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            "spec: cannot be read (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff",
        ),
        (RecursionError("maximum recursion depth exceeded"), "spec: cannot be read (RecursionError: "),
    ],
)
def test_any_exception_from_reading_a_spec_becomes_a_message(err: Exception, expected: str) -> None:
    assert controller.spec_problem(err).startswith(expected)
