"""kopf is the wiring, not the logic: `handlers.py` is the only module of the operator that imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import mnv2_operator


def kopf_imports(path: Path) -> list[int]:
    """Lines of `path` that import kopf (or a part of it), at any depth."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "kopf" or name.startswith("kopf.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_handlers_imports_kopf() -> None:
    package = Path(mnv2_operator.__file__).parent
    importers = {
        str(path.relative_to(package)): lines
        for path in sorted(package.rglob("*.py"))
        if (lines := kopf_imports(path))
    }
    assert list(importers) == ["handlers.py"], importers
