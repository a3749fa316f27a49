"""manifests/rbac and manifests/operator are the chart rendered with its defaults, and stay so."""

from __future__ import annotations

import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support import REPO_ROOT

import manifests


def test_plain_manifests_match_the_chart() -> None:
    drifted = manifests.drifted_files()
    assert drifted == [], f"regenerate with `python tools/manifests.py`: {drifted}"


def test_drift_is_detected(tmp_path: Path) -> None:
    # The drift check must be able to fail: a changed, a missing and a stale file are all reported.
    for folder in ("rbac", "operator"):
        shutil.copytree(REPO_ROOT / "manifests" / folder, tmp_path / "manifests" / folder)
    assert manifests.drifted_files(tmp_path) == []
    role = tmp_path / "manifests/rbac/20-clusterrole.yaml"
    role.write_text(role.read_text().replace(', "watch"]', "]", 1))
    (tmp_path / "manifests/operator/deployment.yaml").unlink()
    (tmp_path / "manifests/operator/old.yaml").write_text("{}\n")
    assert sorted(manifests.drifted_files(tmp_path)) == [
        "manifests/operator/deployment.yaml",
        "manifests/operator/old.yaml",
        "manifests/rbac/20-clusterrole.yaml",
    ]
    manifests.write_manifests(tmp_path)
    assert manifests.drifted_files(tmp_path) == []


def test_plain_manifests_are_valid_and_not_helm_labelled() -> None:
    files = manifests.expected_files()
    kinds = []
    for text in files.values():
        for obj in yaml.safe_load_all(text):
            kubernetes_validate.validate(obj, "1.37.0", strict=True)
            assert "app.kubernetes.io/managed-by" not in obj["metadata"].get("labels", {})
            kinds.append(obj["kind"])
    assert sorted(kinds) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Namespace", "ServiceAccount"]
    # kubectl applies a folder's files in name order: the namespace must come first.
    rbac = sorted(p for p in files if p.startswith("manifests/rbac/"))
    assert rbac[0] == "manifests/rbac/00-namespace.yaml"


def test_every_rule_of_the_plain_rbac_says_why() -> None:
    """The plain manifests keep the chart's comments: each RBAC rule is preceded by its reason."""
    files = manifests.expected_files()
    rules = 0
    for rel in ("manifests/rbac/20-clusterrole.yaml",):
        lines = files[rel].splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith("- apiGroups:"):
                rules += 1
                assert lines[i - 1].lstrip().startswith("#"), f"{rel}: rule without a reason: {line}"
    rendered = [o for o in manifests.render_chart() if o["kind"] == "ClusterRole"]
    assert rules == len(rendered[0]["rules"]) > 5


def test_helm_labels_written_otherwise_are_refused() -> None:
    # The label lines are removed from the text; a form that edit cannot handle fails loudly.
    labels = {"app.kubernetes.io/managed-by": "Helm", "a": "b"}
    obj = {"kind": "Role", "metadata": {"name": "x", "labels": labels}}
    text = "kind: Role\nmetadata: {name: x, labels: {app.kubernetes.io/managed-by: Helm, a: b}}\n"
    with pytest.raises(manifests.ChartError, match="Role 'x'"):
        manifests.plain_manifests({"t/templates/x.yaml": text})
    block = "kind: Role\nmetadata:\n  name: x\n  labels:\n    app.kubernetes.io/managed-by: Helm\n    a: b\n"
    assert manifests._plain_text(obj, block) == "kind: Role\nmetadata:\n  name: x\n  labels:\n    a: b\n"
