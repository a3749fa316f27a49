"""The Dockerfiles agree with the chart and the package, checked without building them
(tests/integration/images builds and runs them).

What can be checked without building: the operator image installs only the core dependencies and the
operator's code imports no MindSpore/numpy with them; its user, port and command are the ones the
chart's Deployment relies on; the trainer image takes its base as a build argument and installs the
`trainer` extra.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml
from support import REPO_ROOT

from manifests import CHART_DIR, render_chart

OPERATOR_DOCKERFILE = REPO_ROOT / "docker" / "operator.Dockerfile"
TRAINER_DOCKERFILE = REPO_ROOT / "docker" / "trainer.Dockerfile"


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_core_dependencies_have_no_mindspore() -> None:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() for dep in deps}
    assert not names & {"mindspore", "numpy", "mindcv"}, names


def test_operator_code_imports_no_mindspore() -> None:
    # What the operator image runs: `mnv2 operator` imports the handlers. MindSpore is installed in this
    # venv, so check what actually got imported rather than whether the import succeeds.
    code = (
        "import sys, mnv2_operator.cli, mnv2_operator.handlers, mnv2_operator.render, mnv2_trainer.config;"
        "print(sorted({'mindspore', 'numpy', 'mindcv'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_operator_image_import_check_passes_and_covers_the_optional_packages() -> None:
    # The image build runs this check after `pip install .`; run the same code here.
    runs = " ".join(args for keyword, args in instructions(OPERATOR_DOCKERFILE) if keyword == "RUN")
    (code,) = re.findall(r'python -c "([^"]+)"', runs)
    for forbidden in ("mindspore", "numpy", "mnv2_demo", "mnv2_cluster", "matplotlib", "support"):
        assert f"'{forbidden}'" in code, f"the operator image's import check does not refuse {forbidden}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_operator_image_matches_the_chart() -> None:
    steps = instructions(OPERATOR_DOCKERFILE)
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the operator image installs the package without extras"
    assert "[trainer]" not in runs
    (user,) = [args for keyword, args in steps if keyword == "USER"]
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    assert ("EXPOSE", str(values["healthPort"])) in steps
    assert ("ENTRYPOINT", '["mnv2"]') in steps
    (deployment,) = [obj for obj in render_chart() if obj["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == ["mnv2"]


def test_trainer_image_takes_an_ascend_base_and_the_trainer_extra() -> None:
    steps = instructions(TRAINER_DOCKERFILE)
    assert steps[0] == ("ARG", "BASE_IMAGE")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert 'pip install ".[trainer]"' in runs
    assert "command -v msrun" in runs
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("mindspore") for dep in extras["trainer"])
