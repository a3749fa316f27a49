"""The resource's names are written down once, in ``mnv2_operator/constants.py``.

A second definition drifts: a label key changed in one place and not in its copy makes the operator
create pods it then cannot find. So this walks the Python files of the repository and fails, naming
``file:line``, on

* a module- or class-level name bound to one of the names (``GROUP = "training.mnv2.dev"``,
  ``LABEL_JOB = "training.mnv2.dev/job-name"``, ``KIND, PLURAL = "...", "..."``, ``FAILED =
  "Failed"``) or to a key built from the group (``LABEL_X = f"{GROUP}/x"``), anywhere;
* any string literal holding the API group in the code that ships, builds or measures
  (``operator/``, ``trainer/``, ``cluster/``, ``demo/``, ``tools/``, ``benchmarks/``; docstrings and
  comments aside). Tests may spell a name out inside a test: that pins the public name, so that
  changing it in constants.py fails a test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import pytest
from mnv2_operator import constants as C

REPO = Path(__file__).resolve().parents[2]
HOME = REPO / "operator" / "mnv2_operator" / "constants.py"
SHIPPED = ("operator", "trainer", "cluster", "demo", "tools", "benchmarks")
SCANNED = (*SHIPPED, "tests")


def _identifiers() -> set[str]:
    """The resource's names and the label and annotation keys that constants.py defines."""
    named = (
        "GROUP",
        "VERSION",
        "API_VERSION",
        "KIND",
        "PLURAL",
        "SINGULAR",
        "CRD_NAME",
        "INVALID_INPUT_MARKER",
    )
    return {
        value
        for key, value in vars(C).items()
        if isinstance(value, str) and (key in named or key.startswith(("LABEL_", "ANNOTATION_")))
    }


def _status_names() -> set[str]:
    """Phase, condition type and reason names (the enums' values)."""
    enums = [
        v
        for v in vars(C).values()
        if isinstance(v, type) and issubclass(v, Enum) and v.__module__ == C.__name__
    ]
    return {member.value for enum in enums for member in enum}


IDENTIFIERS = _identifiers()
STATUS_NAMES = _status_names()


def _python_files() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if path != HOME and not any(part.startswith(".") or part == "__pycache__" for part in path.parts):
                yield path


def _strings(node: ast.AST) -> Iterator[str]:
    """The string literals of an expression that binds a name: a literal, an f-string's literal parts,
    or the items of a tuple of those (``A, B = "a", "b"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        for part in node.values:
            yield from _strings(part)
    elif isinstance(node, ast.Tuple | ast.List):
        for item in node.elts:
            yield from _strings(item)


def _group_key(node: ast.AST) -> bool:
    """Whether the expression is a key built on ``GROUP``: ``f"{GROUP}/x"``, ``f"{C.GROUP}/x"``."""
    if not isinstance(node, ast.JoinedStr) or len(node.values) < 2:
        return False
    first, second = node.values[0], node.values[1]
    if not isinstance(first, ast.FormattedValue):
        return False
    value = first.value
    name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", None)
    return name == "GROUP" and isinstance(second, ast.Constant) and str(second.value).startswith("/")


def _bindings(tree: ast.Module) -> Iterator[tuple[int, ast.AST, bool]]:
    """(line, value, at module level) of every assignment at module level or directly in a class body."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            yield stmt.lineno, stmt.value, True
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                yield stmt.lineno, stmt.value, False


def _docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the bare string statements (docstrings, attribute docs): prose, not code."""
    return {
        id(stmt.value)
        for stmt in ast.walk(tree)
        if isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    }


def second_definitions(path: Path, source: str) -> list[str]:
    """``file:line: what`` for each second definition of a name of constants.py in one file."""
    tree = ast.parse(source, filename=str(path))
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found: dict[int, str] = {}
    for line, value, module_level in _bindings(tree):
        strings = list(_strings(value))
        ours = [s for s in strings if s in IDENTIFIERS or C.GROUP in s]
        # Pod phases share names with job phases ("Running", "Failed"), and a field's default may be
        # one: only a module-level name for a status name, or for a tuple of nothing else, counts.
        status = module_level and bool(strings) and all(s in STATUS_NAMES for s in strings)
        if ours:
            found.setdefault(
                line, f"{where}:{line}: binds {ours[0]!r}; import it from mnv2_operator.constants"
            )
        elif status and isinstance(value, ast.Constant | ast.Tuple | ast.List):
            found.setdefault(
                line, f"{where}:{line}: binds the status name {strings[0]!r}; use Phase/ConditionType/Reason"
            )
        elif _group_key(value):
            found.setdefault(
                line, f"{where}:{line}: builds a key from GROUP; define it in mnv2_operator.constants"
            )
    if where.parts[0] in SHIPPED:
        prose = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and C.GROUP in node.value
                and id(node) not in prose
            ):
                found.setdefault(
                    node.lineno,
                    f"{where}:{node.lineno}: spells out {C.GROUP!r}; import the name from mnv2_operator.constants",
                )
    return [found[line] for line in sorted(found)]


def test_the_names_are_defined_once() -> None:
    problems = [
        p for path in _python_files() for p in second_definitions(path, path.read_text(encoding="utf-8"))
    ]
    assert not problems, "second definitions of the resource's names:\n" + "\n".join(problems)


def test_non_python_sources_do_not_spell_out_the_group() -> None:
    """Templates and other files that ship are given the names by the code that renders them.

    Example manifests (``examples/``) are what a user writes, apiVersion included: they are not code.
    """
    problems = []
    for top in SHIPPED:
        for path in sorted((REPO / top).rglob("*")):
            skipped = "__pycache__" in path.parts or "examples" in path.parts
            if path.suffix in (".py", ".pyc", ".md") or not path.is_file() or skipped:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if C.GROUP in line:
                    problems.append(f"{path.relative_to(REPO)}:{n}")
    assert not problems, f"{C.GROUP} spelt out in: " + ", ".join(problems)


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ('GROUP = "training.mnv2.dev"\n', "binds 'training.mnv2.dev'"),
        ('GROUP, VERSION = "training.mnv2.dev", "v1alpha1"\n', "binds 'training.mnv2.dev'"),
        ('LABEL = "training.mnv2.dev/job-name"\n', "binds 'training.mnv2.dev/job-name'"),
        ('KIND: str = "MobileNetV2TrainingJob"\n', "binds 'MobileNetV2TrainingJob'"),
        ('class K:\n    PLURAL = "mobilenetv2trainingjobs"\n', "binds 'mobilenetv2trainingjobs'"),
        ('LABEL_X = f"{GROUP}/x"\n', "builds a key from GROUP"),
        ('FAILED = "Failed"\n', "binds the status name 'Failed'"),
        ('REASONS = ("WorkerFailed", "InvalidSpec")\n', "binds the status name 'WorkerFailed'"),
        ('def f():\n    return {"k": "training.mnv2.dev/attempt"}\n', "spells out 'training.mnv2.dev'"),
    ],
)
def test_a_second_definition_is_found_and_named(source: str, what: str) -> None:
    problems = second_definitions(REPO / "operator" / "mnv2_operator" / "x.py", source)
    assert len(problems) == 1 and what in problems[0], problems
    assert problems[0].startswith("operator/mnv2_operator/x.py:"), problems


@pytest.mark.parametrize(
    "source",
    [
        '"""Docs may name training.mnv2.dev/job-name."""\n',
        "from mnv2_operator.constants import GROUP\nLABELS = {GROUP: 1}\n",
        'GROUP = "contract.mnv2.dev"\n',  # another group (the contract suite's own CRDs)
        'TITLE = "Running jobs"\n',
        '_ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")\n',  # pod phases
        'class Policy:\n    clean_pod_policy: str = "Running"\n',  # a field's default
        'CRD = f"""name: widgets.{GROUP}"""\n',
    ],
)
def test_what_is_not_a_definition(source: str) -> None:
    assert second_definitions(REPO / "operator" / "mnv2_operator" / "x.py", source) == []


def test_tests_may_spell_a_name_out_inside_a_test() -> None:
    source = 'def test_name():\n    assert crd_name() == "mobilenetv2trainingjobs.training.mnv2.dev"\n'
    assert second_definitions(REPO / "tests" / "unit" / "test_x.py", source) == []


def test_constants_and_the_trainers_reporters_import_only_the_standard_library() -> None:
    """The trainer's pods import constants.py (report.py, termination.py): no operator dependencies."""
    code = (
        "import sys, mnv2_operator.constants, mnv2_trainer.report, mnv2_trainer.termination; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'kopf', 'kubernetes', 'yaml', 'jinja2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
