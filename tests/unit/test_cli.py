"""The `mnv2` console script: every subcommand is wired and documented."""

import subprocess
import sys

import pytest
from mnv2_operator.cli import build_parser

SUBCOMMANDS = ["operator", "demo", "render", "crd", "status", "plot", "cluster"]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mnv2_operator.cli", name, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"mnv2 {name}" in out


def test_unknown_subcommand_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["frobnicate"])
    assert exc.value.code == 2


def test_stdlib_operator_module_is_not_shadowed() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.add(2, 3))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "5"


# Runs `mnv2` with the given modules unimportable, as in an install without the extra that brings them.
WITHOUT = """
import sys
from importlib.abc import MetaPathFinder
from mnv2_operator.cli import main

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("blocked", "args"),
    [
        ({"matplotlib"}, ["plot", "metrics.jsonl"]),
        ({"mnv2_demo"}, ["plot", "metrics.jsonl"]),
        ({"mnv2_demo"}, ["demo"]),
    ],
)
def test_demo_commands_name_the_extra_when_it_is_missing(
    blocked: set[str], args: list[str], tmp_path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT.format(blocked=blocked), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"mnv2 {args[0]} needs the demo extra (pip install 'mnv2-operator[demo]')" in result.stderr
    assert sorted(blocked)[0] in result.stderr
