"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) and checked against Kubernetes' schemas."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from mnv2_operator import spec
from mnv2_operator.cli import build_parser
from mnv2_operator.crd import crd_object
from mnv2_operator.spec import OperatorDefaults
from support import REPO_ROOT

from manifests import CHART_DIR, chart_crds, render_chart, render_chart_files

KUBE_VERSION = "1.37.0"
CI_VALUES = sorted(CHART_DIR.glob("ci/*-values.yaml"))


def load_values(path: Path | None) -> dict[str, Any] | None:
    return yaml.safe_load(path.read_text()) if path else None


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    return operator


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container(objects)["env"]}


def test_ci_values_files_exist() -> None:
    names = {path.name for path in CI_VALUES}
    assert {"namespaced-values.yaml", "no-rbac-values.yaml"} <= names


def test_chart_versions_follow_the_package() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    package_version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert meta["appVersion"] == package_version
    assert meta["version"] == "0.1.0"
    assert meta["name"] == "mnv2-operator"


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_lint_is_clean(values_file: Path | None) -> None:
    report = helm.lint(str(CHART_DIR), load_values(values_file), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_every_rendered_object_validates_against_kubernetes_schemas(values_file: Path | None) -> None:
    objects = render_chart(load_values(values_file))
    assert by_kind(objects, "Deployment"), "the chart must always render the operator Deployment"
    for obj in objects:
        # strict: unknown fields are errors too, as with `kubectl apply --validate=strict`.
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_kubernetes_validation_catches_a_misspelled_field() -> None:
    # The check above must be able to fail: the same Deployment with one field misspelled is refused.
    deployment = by_kind(render_chart(), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = (
        True
    )
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(
    ("set_expression", "complaint"),
    [
        ("rbac.creat=false", "additional properties 'creat' not allowed"),
        ("serviceacount.create=false", "additional properties 'serviceacount' not allowed"),
        ("image.pullPolicy=Sometimes", "value must be one of"),
        ("watchNamespaces={Team_A}", "does not match pattern"),
        ("jobDefaults.acceleratorResourceName=Ascend910", "does not match pattern"),
        ("healthPort=http", "got string, want integer"),
        ("securityContext.readOnlyRootFileSystem=true", "'readOnlyRootFileSystem' not allowed"),
        ("policy.hostPath.datasetPrefixes={/}", "does not match pattern"),
        ("policy.hostPath.outputPrefixes={/mnt/../etc}", "'not' failed"),
        ("policy.imagePrefix={x}", "additional properties 'imagePrefix' not allowed"),
        ("policy.tolerations[0].operator=Maybe", "value must be one of"),
    ],
)
def test_schema_refuses_a_misspelled_or_wrong_value(set_expression: str, complaint: str) -> None:
    values = helm.parse_set_string(set_expression)
    with pytest.raises(helm.HelmValuesError) as exc:
        render_chart_files(values)
    assert complaint in str(exc.value)
    # `helm lint` reports the same as an error.
    assert helm.lint(str(CHART_DIR), values)["errors"]


def test_schema_is_draft_07_and_closed_at_the_top() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    # Every default has a schema entry (else additionalProperties would refuse the chart's own defaults)
    # and every schema entry but Helm's `global` has a default a user can read in values.yaml.
    assert set(schema["properties"]) - {"global"} == set(defaults)


# Values whose children are Kubernetes fields (documented by Kubernetes), not the chart's own keys.
KUBERNETES_SHAPED = (
    "resources",
    "podSecurityContext",
    "securityContext",
    "jobDefaults.acceleratorNodeSelector",
)


def test_every_value_in_values_yaml_is_commented() -> None:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if any(path.startswith(prefix + ".") for prefix in KUBERNETES_SHAPED):
            continue
        previous = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        if not previous.startswith("#"):
            uncommented.append(path)
    assert uncommented == []


def test_deployment_defaults() -> None:
    objects = render_chart()
    (deployment,) = by_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    operator = container(objects)
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["allowPrivilegeEscalation"] is False
    assert operator["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert operator["resources"]["requests"] and operator["resources"]["limits"]["memory"]
    assert operator["image"] == "ghcr.io/mnv2-operator/mnv2-operator:0.1.0"
    assert pod["serviceAccountName"] == "mnv2-operator"


def test_operator_args_are_accepted_by_the_mnv2_command_and_match_the_probe() -> None:
    operator = container(render_chart())
    assert operator["command"] == ["mnv2"]
    args = build_parser().parse_args(operator["args"])
    assert args.command == "operator"
    assert args.standalone is True
    assert args.namespace == []  # cluster-wide
    probe = operator["livenessProbe"]["httpGet"]
    (port,) = [p for p in operator["ports"] if p["name"] == probe["port"]]
    assert args.liveness == f"http://0.0.0.0:{port['containerPort']}{probe['path']}"
    assert probe["path"] == "/healthz" and port["containerPort"] == 8080


def test_namespaced_mode_passes_each_namespace_to_the_operator() -> None:
    operator = container(render_chart({"watchNamespaces": ["team-a", "team-b"]}))
    args = build_parser().parse_args(operator["args"])
    assert args.namespace == ["team-a", "team-b"]


def test_job_defaults_reach_the_operator_as_environment() -> None:
    # Read back by the operator's own parser of its environment, so chart and operator agree on names.
    defaults = OperatorDefaults.from_env(env_of(render_chart()))
    assert defaults.image == "ghcr.io/mnv2-operator/mnv2-trainer:0.1.0" == spec.DEFAULT_IMAGE
    assert defaults.resource_name == "huawei.com/Ascend910" == spec.DEFAULT_RESOURCE_NAME
    assert defaults.node_selector == {"accelerator": "huawei-Ascend910"} == spec.DEFAULT_NODE_SELECTOR
    custom_env = env_of(render_chart(load_values(CHART_DIR / "ci/custom-values.yaml")))
    custom = OperatorDefaults.from_env(custom_env)
    assert custom.image == "registry.example.com/ai/mnv2-trainer:0.1.0-cann8"
    assert custom.node_selector == {"accelerator": "huawei-Ascend910", "accelerator-type": "module-910b-8"}
    assert custom_env["HTTPS_PROXY"] == "http://proxy.example.com:3128"


def test_policy_reaches_the_operator_as_environment() -> None:
    from mnv2_operator.policy import OperatorPolicy

    # The defaults are the operator's own strictest policy.
    assert OperatorDefaults.from_env(env_of(render_chart())).policy == OperatorPolicy()
    custom = OperatorDefaults.from_env(env_of(render_chart(load_values(CHART_DIR / "ci/custom-values.yaml"))))
    assert custom.policy.host_path_dataset_prefixes == ("/mnt/datasets",)
    assert custom.policy.host_path_output_prefixes == ()
    assert custom.policy.image_prefixes == ("registry.example.com/ai/",)
    assert custom.policy.scheduler_names == ()  # no Volcano on that site
    assert custom.policy.queue_names == ()
    assert custom.policy.tolerations == (
        {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"},
    )
    assert custom.policy.image_pull_secrets == ("regcred",)


def test_no_rbac_mode_renders_only_the_deployment_with_the_given_account() -> None:
    objects = render_chart(load_values(CHART_DIR / "ci/no-rbac-values.yaml"))
    assert [obj["kind"] for obj in objects] == ["Deployment"]
    assert objects[0]["spec"]["template"]["spec"]["serviceAccountName"] == "mnv2-operator"


def test_notes_tell_how_to_submit_a_job_and_read_its_status() -> None:
    notes = render_chart_files()["mnv2-operator/templates/NOTES.txt"]
    assert "kubectl apply" in notes and "kubectl get mnv2" in notes
    assert "kubectl apply -f charts/mnv2-operator/crds/" in notes
    # The example the notes point at is shipped.
    (example,) = re.findall(r"-f (manifests/examples/\S+)", notes)
    assert (REPO_ROOT / example).is_file(), f"NOTES.txt names {example}, which does not exist"
    # ... and the claim it writes to, which the user must create on a real cluster.
    claim = yaml.safe_load((REPO_ROOT / example).read_text())["spec"]["output"]["pvc"]["claimName"]
    assert f'PersistentVolumeClaim "{claim}"' in notes


def test_chart_ships_the_generated_crd() -> None:
    # Helm installs crds/ before the templates; it must hold exactly the CRD `python tools/write_crd.py` generates.
    crds = chart_crds()
    assert [crd["metadata"]["name"] for crd in crds] == ["mobilenetv2trainingjobs.training.mnv2.dev"]
    kubernetes_validate.validate(crds[0], KUBE_VERSION, strict=True)
    chart_copy = (CHART_DIR / "crds" / "mobilenetv2trainingjobs.yaml").read_text()
    assert chart_copy == (REPO_ROOT / "manifests" / "crd" / "mobilenetv2trainingjobs.yaml").read_text()
    assert yaml.safe_load(chart_copy) == crd_object()
