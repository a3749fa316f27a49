"""The CRD: generated from the models, structural, valid, and identical to the checked-in copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import write_crd
import yaml
from mnv2_operator import cli, crd
from mnv2_operator import constants as C
from mnv2_operator import spec as S
from support import REPO_ROOT as ROOT

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def schema() -> dict[str, Any]:
    return crd.crd_object()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("rel", write_crd.CRD_PATHS, ids=str)
def test_checked_in_crd_matches_the_models(rel: Path) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} missing: run `python tools/write_crd.py`"
    assert path.read_text() == crd.crd_yaml(), (
        f"{rel} drifted from spec.py: run `python tools/write_crd.py` and commit"
    )


def test_crd_validates_against_kubernetes_schema() -> None:
    kubernetes_validate.validate(crd.crd_object(), "1.37.0", strict=True)


def _walk(node: dict[str, Any], path: str, visit: Any) -> None:
    visit(node, path)
    for name, child in (node.get("properties") or {}).items():
        _walk(child, f"{path}.{name}", visit)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", visit)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", visit)


def test_schema_is_structural() -> None:
    """Kubernetes' rules: a type on every node, no $ref/anyOf/oneOf, additionalProperties not beside properties."""
    problems: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        if not (node.get("type") or node.get("x-kubernetes-int-or-string")):
            problems.append(f"{path}: no type")
        for word in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
            if word in node:
                problems.append(f"{path}: {word}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties")
        if node.get("exclusiveMinimum") not in (None, True, False):
            problems.append(f"{path}: numeric exclusiveMinimum")

    _walk(schema(), "", visit)
    assert problems == []


def test_spec_fields_are_described_and_constrained() -> None:
    spec = schema()["properties"]["spec"]
    undocumented: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        if not node.get("description") and not path.endswith(("[]", "{}")):
            undocumented.append(path)

    _walk(spec, "spec", visit)
    assert undocumented == []
    props = spec["properties"]
    assert spec["required"] == ["model", "dataset"]
    assert props["model"]["properties"]["name"]["enum"][0] == "mobilenet_v2_140"
    assert "mobilenet_v2_075" in props["model"]["properties"]["name"]["enum"]
    assert props["devicesPerNode"]["minimum"] == 1 and props["devicesPerNode"]["maximum"] == 8
    assert props["mode"]["enum"] == ["train", "validate"] and props["mode"]["default"] == "train"
    assert props["config"] == {
        "type": "object",
        "description": props["config"]["description"],
        "maxProperties": 128,
        "x-kubernetes-preserve-unknown-fields": True,
    }
    # Every list and map is bounded, so one stored job cannot make rendering unbounded.
    assert props["env"]["maxProperties"] == 64 and props["imagePullSecrets"]["maxItems"] == 8
    assert props["accelerator"]["properties"]["tolerations"]["maxItems"] == 16
    assert props["accelerator"]["properties"]["nodeSelector"]["maxProperties"] == 16
    assert props["nodes"]["maximum"] == 1024
    assert props["shmSize"]["x-kubernetes-int-or-string"] is True
    assert props["accelerator"]["properties"]["nodeSelector"]["additionalProperties"] == {"type": "string"}
    run = props["runPolicy"]["properties"]
    assert run["backoffLimit"]["default"] == 3 and run["cleanPodPolicy"]["enum"] == ["Running", "All", "None"]
    # Defaults the operator takes from its environment must not be baked into stored objects.
    assert "default" not in props.get("image", {})
    assert "default" not in props["accelerator"]["properties"]["resourceName"]


def test_status_schema_has_both_writers_keys_and_no_defaults() -> None:
    status = schema()["properties"]["status"]
    assert set(status["properties"]) >= {
        "phase",
        "conditions",
        "workers",
        "restarts",
        "startTime",
        "completionTime",
        "observedGeneration",
        "message",
        "progress",
        "metrics",
        "checkpoints",
    }
    assert status["properties"]["phase"]["enum"] == [p.value for p in C.Phase]
    assert status["properties"]["metrics"]["properties"]["top1"]["maximum"] == 1
    assert set(status["properties"]["progress"]["properties"]) == {
        "epoch",
        "totalEpochs",
        "step",
        "loss",
        "lr",
        "imagesPerSecond",
        "updatedAt",
    }
    found: list[str] = []
    _walk(status, "status", lambda node, path: found.append(path) if "default" in node else None)
    assert found == []


def test_names_subresource_and_printer_columns() -> None:
    obj = crd.crd_object()
    assert obj["metadata"]["name"] == "mobilenetv2trainingjobs.training.mnv2.dev"
    names = obj["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "MobileNetV2TrainingJob",
        "mobilenetv2trainingjobs",
        ["mnv2job", "mnv2"],
    )
    version = obj["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == [
        "Phase",
        "Epoch",
        "Epochs",
        "Top-1",
        "Top-5",
        "Loss",
        "Restarts",
        "Age",
    ]
    # Every column points at a field that exists in the schema.
    root = schema()
    for column in columns.values():
        node = {"properties": {**root["properties"], "metadata": {"properties": {"creationTimestamp": {}}}}}
        for part in column["jsonPath"].strip(".").split("."):
            assert part in node.get("properties", {}), (
                f"{column['name']}: {column['jsonPath']} not in the schema"
            )
            node = node["properties"][part]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(example: Path) -> None:
    """What the API server checks (types, enums, bounds) accepts every example, and parse_spec too."""
    doc = yaml.safe_load(example.read_text())
    jsonschema.validate(doc, _jsonschema(schema()))
    S.parse_spec(doc["spec"])


def test_crd_schema_rejects_what_the_api_server_would() -> None:
    bad = {
        "apiVersion": C.API_VERSION,
        "kind": C.KIND,
        "metadata": {"name": "x"},
        "spec": {"model": {"name": "resnet50"}, "dataset": {}},
    }
    with pytest.raises(jsonschema.ValidationError, match="resnet50"):
        jsonschema.validate(bad, _jsonschema(schema()))


def _jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 -> a JSON Schema jsonschema understands (int-or-string, boolean exclusive bounds)."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(key) is True:
            out[key] = out.pop(bound)
    return out


def test_crd_cli_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crd.crd_object()


def test_write_crd_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert write_crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert write_crd.main(["--root", str(tmp_path)]) == 0
    for rel in write_crd.CRD_PATHS:
        assert (tmp_path / rel).read_text() == crd.crd_yaml()
    assert "wrote manifests/crd/mobilenetv2trainingjobs.yaml" in capsys.readouterr().out
    assert write_crd.main(["--check", "--root", str(tmp_path)]) == 0
