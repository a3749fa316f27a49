"""docs/interfaces.md names real functions and constants, with the parameters the code has.

Every backticked ``mnv2_trainer.x.y`` / ``mnv2_operator.x.y`` in the doc must import; when it is
written as a call, ``name(a, b=1, *, c=False) -> R``, the parameters must be the function's, in order,
with the same kinds and defaults, and ``R`` its return type.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from typing import Any

import pytest
from support import REPO_ROOT

DOC = REPO_ROOT / "docs" / "interfaces.md"
#: `mnv2_x.a.b` optionally followed by `(params)` and `-> Return`.
REFERENCE = re.compile(r"`(mnv2_(?:trainer|operator)(?:\.\w+)+)(?:\(([^)`]*)\))?(?:\s*->\s*([\w.]+))?`")


def references() -> list[tuple[str, str | None, str | None]]:
    """(dotted path, parameter text or None when not written as a call, return type or None)."""
    found = {
        (m.group(1), m.group(2) if "(" in m.group(0) else None, m.group(3))
        for m in REFERENCE.finditer(DOC.read_text())
    }
    return sorted(found, key=str)


def resolve(dotted: str) -> Any:
    """Import the longest importable module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in {"mindspore", "numpy", "mindcv"}:
                pytest.skip(f"{dotted} needs {exc.name}, which is not installed")
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def documented_parameters(text: str) -> list[tuple[str, Any, Any]]:
    """``a, b=1, *, c=False`` -> [(name, kind, default or inspect.Parameter.empty)]."""
    params: list[tuple[str, Any, Any]] = []
    keyword_only = False
    for item in filter(None, (p.strip() for p in text.split(","))):
        if item == "*":
            keyword_only = True
            continue
        name, _, default = item.partition("=")
        kind = inspect.Parameter.KEYWORD_ONLY if keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(
            (name.strip(), kind, ast.literal_eval(default.strip()) if default else inspect.Parameter.empty)
        )
    return params


def test_the_doc_names_the_seams() -> None:
    paths = {path for path, _, _ in references()}
    for expected in (
        "mnv2_trainer.config.load_recipe",
        "mnv2_trainer.config.resolve_config",
        "mnv2_trainer.model.create_model",
        "mnv2_operator.spec.parse_spec",
        "mnv2_operator.render.render_job",
    ):
        assert expected in paths, f"docs/interfaces.md does not document {expected}"


@pytest.mark.parametrize(("path", "params", "ret"), references(), ids=lambda v: str(v))
def test_documented_reference_matches_the_code(path: str, params: str | None, ret: str | None) -> None:
    obj = resolve(path)
    if params is None:
        return
    signature = inspect.signature(obj)
    actual = [
        (p.name, p.kind, p.default)
        for p in signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    assert documented_parameters(params) == actual, (
        f"docs/interfaces.md: {path}({params}) but the code has {signature}"
    )
    if ret:
        annotation = signature.return_annotation
        name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        assert re.split(r"[\[ |]", name)[0].split(".")[-1] == ret.split(".")[-1], (
            f"docs/interfaces.md: {path} returns {ret} but the code says {name}"
        )
