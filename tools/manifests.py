"""Render the Helm chart into the plain manifests under `manifests/rbac/` and `manifests/operator/`.

The chart is the single source of the operator's Deployment and RBAC; the plain manifests are the chart
rendered with its default values (release `mnv2-operator` in namespace `mnv2-system`), for clusters
installed without Helm. `python tools/manifests.py` rewrites them; `--check` reports drift (a test
runs the check, so a chart change without regenerated manifests fails). The tests render the chart
with the same functions (`render_chart`).

A development tool of the source checkout (it is not part of the installed package): it needs the
`helm-python-sdk` package (the `dev` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# This script's checkout: tools/ is a folder of the repository.
REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_ROOT / "charts" / "mnv2-operator"
RELEASE_NAME = "mnv2-operator"
NAMESPACE = "mnv2-system"

# Where each kind goes in the plain install, in the order `kubectl apply -f manifests/rbac/ -f
# manifests/operator/` must create them (kubectl applies a folder's files in name order, hence the
# number prefixes): the namespace first, then identity and rights, then the workload.
FILE_OF_KIND = {
    "Namespace": "rbac/00-namespace.yaml",
    "ServiceAccount": "rbac/10-serviceaccount.yaml",
    "ClusterRole": "rbac/20-clusterrole.yaml",
    "ClusterRoleBinding": "rbac/30-clusterrolebinding.yaml",
    "Role": "rbac/40-role.yaml",
    "RoleBinding": "rbac/50-rolebinding.yaml",
    "Deployment": "operator/deployment.yaml",
}
# Labels that claim Helm manages the object: wrong for objects applied with kubectl.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

HEADER = (
    "# Generated from charts/mnv2-operator (default values, release {release!r}, namespace {namespace!r})\n"
    "# by `python tools/manifests.py`. Do not edit: change the chart and regenerate.\n"
)


class ChartError(RuntimeError):
    """The chart could not be loaded or rendered."""


def _helm() -> Any:
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ChartError(
            "helm-python-sdk is not installed: install the dev extra (pip install -e '.[dev]')"
        ) from exc
    return helm_python


def render_chart_files(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE_NAME,
    namespace: str = NAMESPACE,
    chart_dir: Path = CHART_DIR,
) -> dict[str, str]:
    """Render the chart offline with Helm's own engine.

    Args:
        values: user values, as with `helm install -f` (validated against values.schema.json).
        release: release name.
        namespace: release namespace.
        chart_dir: the chart directory.

    Returns:
        Template path (e.g. `mnv2-operator/templates/rbac.yaml`) to rendered text, NOTES.txt included.

    Raises:
        ChartError: the chart directory is missing.
        helm_python.HelmValuesError: the values break the chart's schema.
    """
    if not (chart_dir / "Chart.yaml").is_file():
        raise ChartError(f"no chart at {chart_dir}: run from a source checkout of mnv2-operator")
    helm = _helm()
    with helm.Chart.load(str(chart_dir)) as chart:
        rendered: dict[str, str] = chart.render(
            dict(values) if values is not None else None,
            name=release,
            namespace=namespace,
            is_install=True,
        )
    return rendered


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE_NAME,
    namespace: str = NAMESPACE,
    chart_dir: Path = CHART_DIR,
) -> list[dict[str, Any]]:
    """Render the chart's templates into Kubernetes objects (CRDs and NOTES.txt excluded).

    Objects come in template order (sorted by path) and in document order within a template.
    """
    files = render_chart_files(values, release=release, namespace=namespace, chart_dir=chart_dir)
    return [obj for obj, _ in rendered_documents(files)]


def chart_crds(chart_dir: Path = CHART_DIR) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in the chart's `crds/` directory, as Helm loads them."""
    helm = _helm()
    with helm.Chart.load(str(chart_dir)) as chart:
        return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


def _strip_helm_labels(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop Helm's ownership labels from an object and its pod template (kubectl will own it)."""
    for meta in (obj.get("metadata", {}), obj.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels")
        if labels:
            for key in HELM_ONLY_LABELS:
                labels.pop(key, None)
    return obj


# A line of a rendered template that sets one of HELM_ONLY_LABELS.
_HELM_LABEL_LINE = re.compile(
    r"^[ \t]+(?:" + "|".join(re.escape(key) for key in HELM_ONLY_LABELS) + r"):.*\n", re.MULTILINE
)
_DOCUMENT_START = re.compile(r"^---[ \t]*$\n?", re.MULTILINE)


def rendered_documents(files: Mapping[str, str]) -> list[tuple[dict[str, Any], str]]:
    """The YAML documents of rendered templates as (object, text), the text with its comments.

    Templates come in path order, documents in their order within a template; NOTES.txt and empty
    documents are skipped.
    """
    documents = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")):
            continue
        for text in _DOCUMENT_START.split(files[path]):
            obj = yaml.safe_load(text)
            if obj:
                documents.append((obj, text.strip("\n") + "\n"))
    return documents


def _plain_text(obj: dict[str, Any], text: str) -> str:
    """The rendered text of `obj` without Helm's ownership labels, its comments kept.

    Raises:
        ChartError: removing those label lines did not give the object without them (a template
            wrote them in a form this line edit does not handle).
    """
    plain = _HELM_LABEL_LINE.sub("", text)
    want = _strip_helm_labels(yaml.safe_load(yaml.safe_dump(obj)))  # deep copy
    if yaml.safe_load(plain) != want:
        raise ChartError(
            f"could not remove Helm's labels {HELM_ONLY_LABELS} from the rendered text of "
            f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r}: write each as one "
            "`key: value` line in the template"
        )
    return plain


def plain_manifests(
    files: Mapping[str, str], *, release: str = RELEASE_NAME, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Lay rendered templates out as the plain install's files.

    Each object keeps the text Helm rendered, comments included (the RBAC rules say why each is
    needed), without Helm's ownership labels.

    Args:
        files: the chart's rendered templates (`render_chart_files`).
        release: the release name they were rendered with.
        namespace: the release namespace.

    Returns:
        Path relative to the repository root (e.g. `manifests/rbac/20-clusterrole.yaml`) to YAML text.
        A Namespace object for the release namespace is added to `manifests/rbac/`.

    Raises:
        ChartError: an object of a kind that has no place in the plain install.
    """
    namespace_obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    by_file: dict[str, list[str]] = {}
    for obj, text in [(namespace_obj, yaml.safe_dump(namespace_obj, sort_keys=False))] + rendered_documents(
        files
    ):
        kind = obj["kind"]
        if kind not in FILE_OF_KIND:
            raise ChartError(
                f"the chart renders a {kind}, which has no file in manifests/: add it to FILE_OF_KIND"
            )
        by_file.setdefault(f"manifests/{FILE_OF_KIND[kind]}", []).append(_plain_text(obj, text))
    header = HEADER.format(release=release, namespace=namespace)
    return {path: header + "---\n".join(docs) for path, docs in sorted(by_file.items())}


def expected_files() -> dict[str, str]:
    """The plain manifests the chart's default values produce right now."""
    return plain_manifests(render_chart_files())


def write_manifests(root: Path = REPO_ROOT) -> list[Path]:
    """Regenerate the plain manifests under `root`, removing stale generated files.

    Returns:
        The files written.
    """
    files = expected_files()
    for folder in ("rbac", "operator"):
        for old in (root / "manifests" / folder).glob("*.yaml"):
            if f"manifests/{folder}/{old.name}" not in files:
                old.unlink()
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def drifted_files(root: Path = REPO_ROOT) -> list[str]:
    """Plain manifest files that differ from the chart's rendering (missing, changed or stale)."""
    files = expected_files()
    drifted = [rel for rel, text in files.items() if _read(root / rel) != text]
    for folder in ("rbac", "operator"):
        for present in sorted((root / "manifests" / folder).glob("*.yaml")):
            rel = f"manifests/{folder}/{present.name}"
            if rel not in files:
                drifted.append(rel)
    return drifted


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/manifests.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        drifted = drifted_files()
        for rel in drifted:
            print(f"out of date: {rel} (run: python tools/manifests.py)", file=sys.stderr)
        return 1 if drifted else 0
    for path in write_manifests():
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
