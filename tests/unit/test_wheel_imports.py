"""The operator, as the wheel installs it, imports nothing the operator image must not carry.

The wheel is built from this checkout (`pip wheel --no-deps`, a few seconds) and unpacked; every
import statement of every module of `mnv2_operator` in it (module level or inside a function, where
the lazy ones are) is followed through the wheel's own modules. None may reach the demo package, the
local cluster's launcher, matplotlib, MindSpore, numpy, a development tool or a test helper. The one
exception is the `mnv2` command dispatching `mnv2 demo | plot | cluster` to the extras that hold
them: there the import sits in a function, under `except ImportError`, and is not followed.

The check reads the wheel, not the checkout: a module that the checkout has but the package does not
declare, or one the wheel carries by mistake, is what the operator image gets.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO_ROOT

# Top-level module -> why the operator must not import it.
FORBIDDEN = {
    "mnv2_demo": "the demo package (the demo extra)",
    "mnv2_cluster": "the local cluster's launcher and nodes (the cluster extra)",
    "matplotlib": "plotting (the demo extra)",
    "mindspore": "the trainer's framework (the trainer extra)",
    "mindcv": "a test dependency",
    "numpy": "a trainer dependency",
    "helm_python": "a development tool's dependency",
    "kubernetes_validate": "a test dependency",
    "kmock": "a test dependency",
    "pytest": "the test runner",
    "support": "the tests' helpers",
    "tests": "the tests",
    "manifests": "the checkout's tools/",
    "write_crd": "the checkout's tools/",
}
# (importing module, imported top-level package): a subcommand handed to an optional extra.
EXTRA_DISPATCH = {
    ("mnv2_operator.cli", "mnv2_demo"),
    ("mnv2_operator.cli", "mnv2_cluster"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the dotted name imported
    line: int
    guarded: bool  # inside a function and a `try` that catches ImportError


def _catches_import_error(node: ast.Try) -> bool:
    names = []
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names += [k.id for k in kinds if isinstance(k, ast.Name)]
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def imports_of(source: str, module: str, is_package: bool) -> Iterator[Import]:
    """Every import a module's source makes, relative ones resolved; dynamic imports are refused.

    Raises:
        AssertionError: `importlib.import_module`/`__import__` with a name this check cannot read.
    """
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool, in_guard: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            guard = in_guard or (isinstance(child, ast.Try) and _catches_import_error(child))
            guarded = function and guard
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, child.lineno, guarded)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - child.level + 1])
                    base = f"{parent}.{base}" if base else parent
                yield Import(base, child.lineno, guarded)
                for alias in child.names:  # `from pkg import submodule`
                    yield Import(f"{base}.{alias.name}", child.lineno, guarded)
            elif isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__"):
                    arg = child.args[0] if child.args else None
                    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                        f"{module}:{child.lineno}: a dynamic import the import check cannot follow; "
                        "import by name"
                    )
                    yield Import(arg.value, child.lineno, guarded)
            yield from visit(child, function, guard)

    yield from visit(ast.parse(source), False, False)


def modules_in(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every Python module under `root` (an unpacked wheel)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and ".dist-info" not in parts[0]:
            found[".".join(parts)] = path
    return found


def forbidden_imports(root: Path, package: str) -> list[str]:
    """Chains from `package`'s modules to a FORBIDDEN module, following the imports through `root`.

    Returns:
        One line per forbidden import reached, e.g. `mnv2_operator.x:12 -> mnv2_trainer.y:3 -> numpy`.
    """
    modules = modules_in(root)
    problems: list[str] = []
    chain_to: dict[str, str] = {}
    queue = sorted(name for name in modules if name == package or name.startswith(package + "."))
    for name in queue:
        chain_to[name] = name
    while queue:
        name = queue.pop(0)
        path = modules[name]
        for imp in imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            top = imp.module.split(".")[0]
            where = f"{chain_to[name]}:{imp.line}"
            if (name, top) in EXTRA_DISPATCH and imp.guarded:
                continue
            if top in FORBIDDEN:
                problems.append(f"{where} -> {imp.module} ({FORBIDDEN[top]})")
                continue
            # Importing a.b.c runs a, a.b and a.b.c: follow each one the wheel holds.
            parts = imp.module.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target not in chain_to:
                    chain_to[target] = f"{where} -> {target}"
                    queue.append(target)
    return sorted(set(problems))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this checkout (the checkout gets no build/ or egg-info), unpacked."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    pyproject = REPO_ROOT / "pyproject.toml"
    shutil.copy(pyproject, source)
    shutil.copy(REPO_ROOT / "README.md", source)
    where = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
    for folder in where:
        # Links (the demo's example) are copied as files, as the wheel holds them.
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--no-index",  # the build uses what is installed; nothing is fetched
            "-w",
            str(tmp / "dist"),
            str(source),  # a path: a bare name would be looked up on the package index
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (whl,) = (tmp / "dist").glob("*.whl")
    unpacked = tmp / "unpacked"
    with zipfile.ZipFile(whl) as archive:
        archive.extractall(unpacked)
    return unpacked


def test_the_operator_imports_nothing_it_does_not_run(wheel: Path) -> None:
    assert (wheel / "mnv2_operator" / "handlers.py").is_file()
    problems = forbidden_imports(wheel, "mnv2_operator")
    assert problems == [], (
        "the operator package imports what the operator image must not carry:\n" + "\n".join(problems)
    )


def test_the_wheel_carries_no_development_tool_or_test_helper(wheel: Path) -> None:
    tops = {name.split(".")[0] for name in modules_in(wheel)}
    assert tops == {"mnv2_operator", "mnv2_trainer", "mnv2_cluster", "mnv2_demo"}
    assert (wheel / "mnv2_demo" / "examples" / "digits-cpu.yaml").read_bytes() == (
        REPO_ROOT / "manifests" / "examples" / "digits-cpu.yaml"
    ).read_bytes()


def test_the_demo_commands_are_the_only_extra_dispatch(wheel: Path) -> None:
    # The exception above is used, and only as declared: the mnv2 command's guarded, lazy imports.
    cli = wheel / "mnv2_operator" / "cli.py"
    dispatched = {
        imp.module.split(".")[0]
        for imp in imports_of(cli.read_text(encoding="utf-8"), "mnv2_operator.cli", False)
        if imp.module.split(".")[0] in FORBIDDEN
    }
    assert dispatched == {top for _, top in EXTRA_DISPATCH}
    assert all(
        imp.guarded
        for imp in imports_of(cli.read_text(encoding="utf-8"), "mnv2_operator.cli", False)
        if imp.module.split(".")[0] in dispatched
    )


def test_the_check_finds_lazy_relative_and_indirect_imports(tmp_path: Path) -> None:
    # The check must be able to fail: a tree whose operator reaches forbidden modules in every way.
    files = {
        "mnv2_operator/__init__.py": "",
        "mnv2_operator/a.py": "def f():\n    import matplotlib.pyplot\n",
        "mnv2_operator/b.py": "from . import c\n",
        "mnv2_operator/c.py": "from mnv2_trainer import deep\n",
        "mnv2_operator/cli.py": (
            "def demo():\n    try:\n        from mnv2_demo import demo\n    except ImportError:\n        pass\n"
            "def unguarded():\n    import mnv2_cluster.simulated\n"
        ),
        "mnv2_operator/d.py": "import importlib\nimportlib.import_module('support.rbac')\n",
        "mnv2_trainer/__init__.py": "import numpy\n",
        "mnv2_trainer/deep.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    assert forbidden_imports(tmp_path, "mnv2_operator") == [
        "mnv2_operator.a:2 -> matplotlib.pyplot (plotting (the demo extra))",
        "mnv2_operator.c:1 -> mnv2_trainer:1 -> numpy (a trainer dependency)",
        "mnv2_operator.cli:7 -> mnv2_cluster.simulated (the local cluster's launcher and nodes (the cluster extra))",
        "mnv2_operator.d:2 -> support.rbac (the tests' helpers)",
    ]
    (tmp_path / "mnv2_operator/e.py").write_text("import importlib\nimportlib.import_module(name)\n")
    with pytest.raises(AssertionError, match="mnv2_operator.e:2: a dynamic import"):
        forbidden_imports(tmp_path, "mnv2_operator")
