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
