"""Job spec validation: defaults, every kind of invalid input, and the messages users read."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from mnv2_operator import constants as C
from mnv2_operator import spec as S

MINIMAL: dict[str, Any] = {
    "model": {"name": "mobilenet_v2_075"},
    "dataset": {"pvc": {"claimName": "imagenet"}},
    "output": {"pvc": {"claimName": "runs"}},
}

#: `spec.<camelCase path>: <problem>; <fix>`
MESSAGE = re.compile(r"^spec(\.[A-Za-z0-9_]+|\[\d+\])+: .+; .+", re.S)


def with_(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level keys replaced (None deletes)."""
    out = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def problems(mapping: dict[str, Any]) -> list[str]:
    with pytest.raises(S.SpecError) as info:
        S.parse_spec(mapping)
    return info.value.problems


def test_minimal_job_gets_the_documented_defaults() -> None:
    spec = S.parse_spec(MINIMAL)
    assert spec.mode == "train"
    assert spec.recipe == "mobilenet_v2_0.75_ascend"
    assert spec.dataset.type == "imagefolder"
    assert (spec.dataset.train_split, spec.dataset.val_split) == ("train", "val")
    assert (spec.nodes, spec.devices_per_node, spec.world_size) == (1, 8, 8)
    assert spec.accelerator.type == "ascend"
    assert spec.accelerator.resource_name is None  # filled in at render time from OperatorDefaults
    assert spec.resume == "auto"
    assert spec.scale_learning_rate is True
    assert spec.num_classes == 1000
    assert spec.run_policy.backoff_limit == 3
    assert spec.run_policy.clean_pod_policy == "Running"
    assert spec.run_policy.suspend is False
    assert spec.scheduling.gang is False
    assert spec.cluster_timeout_seconds is None and spec.cluster_timeout == 600
    assert spec.warnings() == []


def test_camel_case_in_yaml_and_snake_case_in_python() -> None:
    spec = S.JobSpec(
        model=S.ModelSpec(name="mobilenet_v2_100"),
        dataset=S.DatasetSpec(type="digits"),
        output=S.OutputSpec(pvc=S.PVCSource(claim_name="x")),
        devices_per_node=2,
    )
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["devicesPerNode"] == 2
    assert dumped["output"] == {"pvc": {"claimName": "x"}}
    assert S.parse_spec(dumped) == spec


def test_digits_defaults_to_ten_classes_and_cpu_takes_any_device_count() -> None:
    spec = S.parse_spec(
        with_(
            dataset={"type": "digits"},
            accelerator={"type": "cpu"},
            devicesPerNode=3,
            model={"name": "mobilenet_v2_035_96"},
        )
    )
    assert spec.num_classes == 10
    assert spec.world_size == 3


def test_quantities_accept_numbers_and_suffixes() -> None:
    spec = S.parse_spec(
        with_(resources={"requests": {"cpu": 4, "memory": "16Gi"}, "limits": {"cpu": "500m"}})
    )
    assert spec.resources is not None and spec.resources.requests is not None
    assert spec.resources.requests.cpu == "4"


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        pytest.param(
            with_(modle={"name": "mobilenet_v2_075"}, model=None),
            ["spec.modle: unknown field; did you mean 'model'?", "spec.model: required"],
            id="top-level typo",
        ),
        pytest.param(
            with_(dataset={"pvc": {"claimname": "x"}}),
            ["spec.dataset.pvc.claimname: unknown field; did you mean 'claimName'?"],
            id="nested typo",
        ),
        pytest.param(
            with_(accelerator={"tolerations": [{"efect": "NoSchedule"}]}),
            ["spec.accelerator.tolerations[0].efect: unknown field; did you mean 'effect'?"],
            id="typo in list item",
        ),
        pytest.param(
            with_(model={"name": "mobilenet_v2_035"}),
            ["spec.model.name: unknown model 'mobilenet_v2_035'", "mobilenet_v2_035_224"],
            id="unknown model",
        ),
        pytest.param(
            with_(model={"name": "mobilenet_v2_075", "numClasses": 1}),
            ["spec.model.numClasses: 1 is invalid; input should be greater than or equal to 2"],
            id="one class",
        ),
        pytest.param(
            with_(mode="trian"),
            ["spec.mode: \"trian\" is not allowed; use 'train' or 'validate'"],
            id="mode enum",
        ),
        pytest.param(
            with_(nodes=0),
            ["spec.nodes: 0 is invalid; input should be greater than or equal to 1"],
            id="zero nodes",
        ),
        pytest.param(
            with_(devicesPerNode=16),
            ["spec.devicesPerNode: 16 is invalid; input should be less than or equal to 8"],
            id="too many devices",
        ),
        pytest.param(
            with_(devicesPerNode=3),
            ["spec.devicesPerNode: 3 NPUs per node is not a valid Ascend910 group; use one of 1, 2, 4, 8"],
            id="ascend group",
        ),
        pytest.param(with_(nodes="two"), ['spec.nodes: "two" is invalid'], id="wrong type"),
        pytest.param(with_(output=None), ["spec.output: required in train mode"], id="train needs output"),
        pytest.param(
            with_(output={"emptyDir": {}}),
            ["spec.output.emptyDir: checkpoints are deleted with the pods", "runPolicy.backoffLimit: 0"],
            id="emptyDir with restarts",
        ),
        pytest.param(
            with_(output={"pvc": {"claimName": "a"}, "hostPath": {"path": "/x"}}),
            ["spec.output: exactly one of pvc, hostPath, emptyDir is needed (got pvc, hostPath)"],
            id="two outputs",
        ),
        pytest.param(
            with_(output={"hostPath": {"path": "runs"}}),
            ["spec.output.hostPath.path: 'runs' is not absolute"],
            id="relative hostPath",
        ),
        pytest.param(
            with_(dataset={"type": "imagefolder"}),
            ["spec.dataset: an imagefolder dataset needs exactly one of pvc or hostPath"],
            id="imagefolder without volume",
        ),
        pytest.param(
            with_(dataset={"type": "digits", "pvc": {"claimName": "x"}}),
            ["spec.dataset: type digits generates its data and takes no volume"],
            id="digits with volume",
        ),
        pytest.param(
            with_(dataset={"pvc": {"claimName": "ImageNet"}}),
            ["spec.dataset.pvc.claimName: 'ImageNet' is not a valid claim name"],
            id="claim name",
        ),
        pytest.param(
            with_(dataset={"pvc": {"claimName": "x", "subPath": "../etc"}}),
            ["spec.dataset.pvc.subPath: '../etc' contains '..'; write a relative path"],
            id="subPath escape",
        ),
        pytest.param(
            with_(mode="validate", devicesPerNode=1),
            ["spec.checkpoint: validate mode evaluates a checkpoint; set it"],
            id="validate needs checkpoint",
        ),
        pytest.param(
            with_(mode="validate", checkpoint="/output/a.ckpt"),
            ["spec.devicesPerNode: validate mode runs one process", "set nodes: 1 and devicesPerNode: 1"],
            id="validate one process",
        ),
        pytest.param(
            with_(checkpoint="ckpt/best.ckpt"),
            [
                "spec.checkpoint: 'ckpt/best.ckpt' is not inside a mounted volume; use a checkpoint path under /data/... or /output/..."
            ],
            id="checkpoint outside mounts",
        ),
        pytest.param(
            with_(resume="latest"),
            ["spec.resume: 'latest' is not inside a mounted volume; use auto, never, or a checkpoint path"],
            id="resume word",
        ),
        pytest.param(
            with_(accelerator={"type": "cpu", "resourceName": "huawei.com/Ascend910"}),
            ["spec.accelerator.resourceName: cpu jobs request no device resource"],
            id="cpu with device",
        ),
        pytest.param(
            with_(scheduling={"gang": True, "schedulerName": "default-scheduler"}),
            ["spec.scheduling.schedulerName: gang scheduling uses Volcano"],
            id="gang scheduler",
        ),
        pytest.param(
            with_(scheduling={"queue": "research"}),
            ["spec.scheduling.queue: a Volcano queue needs a PodGroup; set scheduling.gang: true"],
            id="queue without gang",
        ),
        pytest.param(
            with_(shmSize="lots"), ["spec.shmSize: 'lots' is not a Kubernetes quantity"], id="quantity"
        ),
        pytest.param(
            with_(runPolicy={"cleanPodPolicy": "Some"}),
            ["spec.runPolicy.cleanPodPolicy: \"Some\" is not allowed; use 'Running', 'All' or 'None'"],
            id="cleanPodPolicy",
        ),
        pytest.param(
            with_(config={"lrr": 0.1}),
            ["spec.config.lrr: is not a config key; did you mean 'lr'?"],
            id="config typo",
        ),
        pytest.param(
            with_(config={"lr": "fast"}), ["spec.config.lr: must be a number, got 'fast'"], id="config value"
        ),
        pytest.param(
            with_(config={"model": "mobilenet_v2_100"}),
            ["spec.config.model: set by the spec; use spec.model.name instead"],
            id="config owned key",
        ),
        pytest.param(
            with_(config={"device_target": "CPU"}),
            ["spec.config.device_target: set by the spec; use spec.accelerator.type instead"],
            id="config device",
        ),
        pytest.param(
            with_(recipe="mobilenet_v2_0.75"),
            ["spec.recipe: unknown recipe 'mobilenet_v2_0.75'", "did you mean 'mobilenet_v2_0.75_ascend'?"],
            id="recipe",
        ),
    ],
)
def test_invalid_spec_names_the_field_and_the_fix(mapping: dict[str, Any], expected: list[str]) -> None:
    found = problems(mapping)
    text = "\n".join(found)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    for line in found:
        assert MESSAGE.match(line), f"not 'spec.<path>: <problem>; <fix>': {line!r}"


def test_every_problem_is_reported_at_once() -> None:
    found = problems(with_(nodes=0, devicesPerNode=99, mode="x", bogus=1))
    assert [p.split(":")[0] for p in found] == [
        "spec.mode",
        "spec.nodes",
        "spec.devicesPerNode",
        "spec.bogus",
    ]


def test_every_cross_field_rule_is_checked_and_reported_in_rule_order() -> None:
    found = problems(
        with_(
            mode="validate",
            nodes=2,
            devicesPerNode=1,
            dataset={"type": "synthetic", "pvc": {"claimName": "imagenet"}},
            output=None,
            resume="/tmp/x.ckpt",
            accelerator={"type": "cpu", "chip": "Ascend910B"},
            scheduling={"queue": "default"},
            env={"MNV2_NODE_RANK": "0"},
        )
    )
    assert [p.split(":")[0] for p in found] == [
        "spec.dataset",
        "spec.devicesPerNode",
        "spec.checkpoint",
        "spec.resume",
        "spec.accelerator.chip",
        "spec.scheduling.queue",
        "spec.env.MNV2_NODE_RANK",
    ]


def test_spec_error_message_lists_every_problem() -> None:
    with pytest.raises(S.SpecError) as info:
        S.parse_spec(with_(nodes=0, mode="x"))
    message = str(info.value)
    assert message.startswith("invalid MobileNetV2TrainingJob spec:")
    assert "spec.nodes" in message and "spec.mode" in message


def test_not_a_mapping() -> None:
    assert problems(["model"])[0].startswith("spec: must be a mapping")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"output": {"emptyDir": {"sizeLimit": "5Gi"}}, "runPolicy": {"backoffLimit": 0}},
        {"mode": "validate", "output": None, "checkpoint": "/data/pretrained/mnv2.ckpt", "devicesPerNode": 1},
        {"resume": "/output/ckpt/mobilenet_v2_075-10_625.ckpt"},
        {"resume": "never"},
        {"scheduling": {"gang": True, "queue": "research", "schedulerName": "volcano"}},
        {
            "accelerator": {
                "type": "ascend",
                "nodeSelector": {},
                "tolerations": [{"key": "npu", "operator": "Exists"}],
            }
        },
        {"config": {"epoch_size": 15, "batch_size": 64, "lr": "0.1", "amp_level": "O2"}},
        {"dataset": {"hostPath": {"path": "/mnt/imagenet"}, "trainSplit": "training"}},
    ],
)
def test_valid_variants(changes: dict[str, Any]) -> None:
    S.parse_spec(with_(**changes))


def test_warnings_for_valid_but_risky_settings() -> None:
    spec = S.parse_spec(with_(nodes=2, devicesPerNode=4, output={"hostPath": {"path": "/runs"}}))
    notes = spec.warnings()
    assert any(n.startswith("spec.devicesPerNode:") for n in notes)
    assert any(n.startswith("spec.output.hostPath:") for n in notes)
    assert any(n.startswith("spec.scheduling.gang:") for n in notes)


def test_every_field_is_described() -> None:
    """Descriptions become `kubectl explain` text: none may be missing."""
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            assert info.description, f"{model.__name__}.{name} has no description"
            for arg in _model_args(info.annotation):
                walk(arg)

    walk(S.JobSpec)
    walk(S.JobStatus)
    assert S.Toleration in seen and S.Condition in seen


def _model_args(annotation: Any) -> list[type]:
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _model_args(a)]


def test_status_reads_both_writers_and_ignores_unknown_keys() -> None:
    status = S.parse_status(
        {
            "phase": "Running",
            "restarts": 1,
            "workers": {"active": 2},
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "PodsRunning",
                    "lastTransitionTime": "2026-11-27T19:00:00Z",
                }
            ],
            "progress": {"epoch": 3, "totalEpochs": 15, "loss": 1.2, "imagesPerSecond": 110.5},
            "metrics": {"top1": 0.9, "top5": 0.99, "bestTop1": 0.91, "bestEpoch": 2},
            "checkpoints": {"latest": "/output/ckpt/a.ckpt"},
            "somethingNew": {"x": 1},
        }
    )
    assert status.phase == "Running"
    assert status.progress is not None and status.progress.total_epochs == 15
    assert status.metrics is not None and status.metrics.best_top1 == 0.91
    assert status.conditions[0].last_transition_time is not None
    assert set(S.TRAINER_STATUS_KEYS) <= set(S.JobStatus.model_fields)
    assert tuple(C.Phase) == ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")


def test_operator_defaults_from_env() -> None:
    assert S.OperatorDefaults.from_env({}) == S.OperatorDefaults()
    assert S.OperatorDefaults().image == f"ghcr.io/mnv2-operator/mnv2-trainer:{S.__version__}"
    custom = S.OperatorDefaults.from_env(
        {
            "MNV2_DEFAULT_TRAINER_IMAGE": "registry.local/mnv2-trainer:dev",
            "MNV2_DEFAULT_ACCELERATOR_RESOURCE_NAME": "huawei.com/Ascend910B",
            "MNV2_DEFAULT_ACCELERATOR_NODE_SELECTOR": '{"node-type": "npu"}',
        }
    )
    assert custom.image == "registry.local/mnv2-trainer:dev"
    assert custom.resource_name == "huawei.com/Ascend910B"
    assert custom.node_selector == {"node-type": "npu"}
    for bad in ("not json", '["a"]', '{"a": 1}'):
        with pytest.raises(ValueError, match="MNV2_DEFAULT_ACCELERATOR_NODE_SELECTOR"):
            S.OperatorDefaults.from_env({"MNV2_DEFAULT_ACCELERATOR_NODE_SELECTOR": bad})
