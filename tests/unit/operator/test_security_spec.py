"""Hostile job specs: each is refused with the field named, or renders into something inert.

The cases are what an author who may only create MobileNetV2TrainingJobs would try in order to get
more than the pods the admin allows: values the API server refuses (so the job retries forever),
values that are expanded or interpreted inside the pod, loader variables, unbounded sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import pytest
from mnv2_operator import render as R
from mnv2_operator import spec as S
from mnv2_operator import validation as V
from mnv2_operator.policy import OperatorPolicy, PolicyError

MINIMAL: dict[str, Any] = {
    "model": {"name": "mobilenet_v2_075"},
    "dataset": {"pvc": {"claimName": "imagenet"}},
    "output": {"pvc": {"claimName": "runs"}},
}

#: ``spec.<path>: <problem>; <fix>`` (paths may index lists).
MESSAGE = re.compile(r"^spec(\.[A-Za-z0-9_]+|\[\d+\])+: .+; .+", re.S)


def mutated(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with the value at a dotted camelCase path set (intermediate mappings created)."""
    out = copy.deepcopy(MINIMAL)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def refusal(mapping: dict[str, Any]) -> list[str]:
    with pytest.raises(S.SpecError) as info:
        S.parse_spec(mapping)
    for problem in info.value.problems:
        assert MESSAGE.match(problem), f"not 'spec.<field>: <problem>; <fix>': {problem!r}"
    return info.value.problems


HOSTILE: list[Any] = [
    # Names the API server validates as DNS-1123 subdomains.
    pytest.param("dataset.pvc.claimName", "a..b", "spec.dataset.pvc.claimName", id="claim a..b"),
    pytest.param("dataset.pvc.claimName", "-a", "spec.dataset.pvc.claimName", id="claim leading dash"),
    pytest.param("dataset.pvc.claimName", "A", "spec.dataset.pvc.claimName", id="claim upper case"),
    pytest.param("dataset.pvc.claimName", "imagenet\n", "spec.dataset.pvc.claimName", id="claim newline"),
    pytest.param("env", {"GLOG_v\n": "1"}, "spec.env", id="env name trailing newline"),
    pytest.param("image", "repo/x:1\n", "spec.image", id="image trailing newline"),
    pytest.param("shmSize", "1Gi\n", "spec.shmSize", id="quantity trailing newline"),
    pytest.param(
        "accelerator.resourceName",
        "huawei.com/Ascend910\n",
        "spec.accelerator.resourceName",
        id="resource newline",
    ),
    pytest.param(
        "accelerator.nodeSelector", {"pool": "a\n"}, "spec.accelerator.nodeSelector", id="label value newline"
    ),
    pytest.param("scheduling.queue", "q\n", "spec.scheduling.queue", id="queue newline"),
    pytest.param("output.pvc.claimName", "a" * 254, "spec.output.pvc.claimName", id="claim too long"),
    pytest.param("imagePullSecrets", ["a..b"], "spec.imagePullSecrets", id="secret a..b"),
    pytest.param("imagePullSecrets", ["s"] * 9, "spec.imagePullSecrets", id="too many secrets"),
    pytest.param(
        "scheduling.priorityClassName",
        "x\nmetadata:",
        "spec.scheduling.priorityClassName",
        id="priority newline",
    ),
    pytest.param("scheduling.schedulerName", "My Scheduler", "spec.scheduling.schedulerName", id="scheduler"),
    pytest.param("scheduling.queue", "q_1", "spec.scheduling.queue", id="queue underscore"),
    # Qualified names: a resource name ends up inside a fieldPath.
    pytest.param(
        "accelerator.resourceName",
        "x'],metadata.name",
        "spec.accelerator.resourceName",
        id="resource name fieldPath injection",
    ),
    pytest.param("accelerator.resourceName", "Ascend910", "spec.accelerator.resourceName", id="no domain"),
    pytest.param(
        "accelerator.resourceName", "kubernetes.io/cpu", "spec.accelerator.resourceName", id="reserved domain"
    ),
    pytest.param(
        "accelerator.nodeSelector", {"a b": "x"}, "spec.accelerator.nodeSelector", id="selector key space"
    ),
    pytest.param(
        "accelerator.nodeSelector", {"k": "v" * 64}, "spec.accelerator.nodeSelector", id="label value long"
    ),
    pytest.param(
        "accelerator.nodeSelector",
        {f"k{i}": "v" for i in range(17)},
        "spec.accelerator.nodeSelector",
        id="selector too big",
    ),
    pytest.param(
        "accelerator.tolerations",
        [{"key": "a/b/c", "operator": "Exists"}],
        "spec.accelerator.tolerations[0].key",
        id="toleration key",
    ),
    pytest.param(
        "accelerator.tolerations",
        [{"key": "k", "value": "a b"}],
        "spec.accelerator.tolerations[0].value",
        id="toleration value",
    ),
    pytest.param(
        "accelerator.tolerations",
        [{"key": "k", "effect": "NoExecute", "tolerationSeconds": -1}],
        "spec.accelerator.tolerations[0].tolerationSeconds",
        id="toleration seconds negative",
    ),
    pytest.param(
        "accelerator.tolerations",
        [{"key": "k"}] * 17,
        "spec.accelerator.tolerations",
        id="too many tolerations",
    ),
    # Environment: names the API server refuses, loader and interpreter variables, sizes.
    pytest.param("env", {"A B": "1"}, "spec.env", id="env name with space"),
    pytest.param("env", {"A=B": "1"}, "spec.env", id="env name with ="),
    pytest.param("env", {"1A": "1"}, "spec.env", id="env name digit first"),
    pytest.param("env", {"LD_PRELOAD": "/output/x.so"}, "spec.env", id="LD_PRELOAD"),
    pytest.param("env", {"LD_LIBRARY_PATH": "/output"}, "spec.env", id="LD_LIBRARY_PATH"),
    pytest.param("env", {"LD_AUDIT": "/output/a.so"}, "spec.env", id="LD_AUDIT"),
    pytest.param("env", {"ld_preload": "/output/x.so"}, "spec.env", id="ld_preload lower case"),
    pytest.param("env", {"PYTHONPATH": "/output"}, "spec.env", id="PYTHONPATH"),
    pytest.param("env", {"PYTHONSTARTUP": "/output/x.py"}, "spec.env", id="PYTHONSTARTUP"),
    pytest.param("env", {"PYTHONHOME": "/output"}, "spec.env", id="PYTHONHOME"),
    pytest.param("env", {"PYTHONUSERBASE": "/output"}, "spec.env", id="PYTHONUSERBASE"),
    pytest.param("env", {"PYTHONWARNINGS": "ignore::evil.Warning"}, "spec.env", id="PYTHONWARNINGS"),
    pytest.param("env", {"PATH": "/output/bin"}, "spec.env", id="PATH"),
    pytest.param("env", {"CXX": "/output/cc"}, "spec.env", id="CXX"),
    pytest.param("env", {"CC": "/output/cc"}, "spec.env", id="CC"),
    pytest.param("env", {"HOME": "/output"}, "spec.env", id="HOME"),
    pytest.param("env", {"MNV2_KERNEL_CACHE": "/output"}, "spec.env", id="kernel cache"),
    pytest.param("env", {"GCONV_PATH": "/output"}, "spec.env", id="GCONV_PATH"),
    pytest.param("env", {"ASCEND_CUSTOM_OPP_PATH": "/output"}, "spec.env", id="Ascend custom op path"),
    pytest.param("env", {"KUBECONFIG": "/output/kc"}, "spec.env", id="KUBECONFIG"),
    pytest.param("env", {"KUBERNETES_SERVICE_HOST": "evil"}, "spec.env", id="API server address"),
    pytest.param("env", {"HTTPS_PROXY": "http://evil"}, "spec.env", id="proxy"),
    pytest.param("env", {"MS_WORKER_NUM": "3"}, "spec.env", id="msrun's variable"),
    pytest.param("env", {"MNV2_ATTEMPT": "7"}, "spec.env.MNV2_ATTEMPT", id="operator's variable"),
    pytest.param("env", {f"E{i}": "1" for i in range(65)}, "spec.env", id="too many env entries"),
    pytest.param("env", {"E": "x" * 5000}, "spec.env", id="env value too long"),
    pytest.param("env", {f"E{i}": "x" * 4000 for i in range(9)}, "spec.env", id="env total too big"),
    # Quantities, parsed as the API server does.
    pytest.param("shmSize", "-1", "spec.shmSize", id="negative quantity"),
    pytest.param("shmSize", "1e1000", "spec.shmSize", id="absurd quantity"),
    pytest.param("shmSize", "0", "spec.shmSize", id="zero quantity"),
    pytest.param("shmSize", "Infinity", "spec.shmSize", id="Infinity"),
    pytest.param("shmSize", "1_000", "spec.shmSize", id="underscore number"),
    pytest.param("shmSize", "1 Gi", "spec.shmSize", id="space in quantity"),
    pytest.param("shmSize", "1gi", "spec.shmSize", id="lower-case binary suffix"),
    pytest.param("shmSize", "\u0661Gi", "spec.shmSize", id="arabic digit"),
    pytest.param("shmSize", "1" * 100, "spec.shmSize", id="long quantity"),
    pytest.param("resources.requests.cpu", "2048", "spec.resources.requests.cpu", id="absurd cpu"),
    pytest.param("resources.limits.memory", -5, "spec.resources.limits.memory", id="negative int memory"),
    pytest.param(
        "output", {"emptyDir": {"sizeLimit": "1e1000"}}, "spec.output.emptyDir.sizeLimit", id="sizeLimit"
    ),
    # Paths: newlines, '..', absolute, $( expansion.
    pytest.param("dataset.pvc.subPath", "a\nb", "spec.dataset.pvc.subPath", id="subPath newline"),
    pytest.param("output.pvc.subPath", "../other-job", "spec.output.pvc.subPath", id="subPath .."),
    pytest.param("output.pvc.subPath", "/etc", "spec.output.pvc.subPath", id="subPath absolute"),
    pytest.param("output.pvc.subPath", "$(HOME)", "spec.output.pvc.subPath", id="subPath expansion"),
    pytest.param("dataset.trainSplit", "../../../etc", "spec.dataset.trainSplit", id="trainSplit .."),
    pytest.param("dataset.valSplit", "/etc", "spec.dataset.valSplit", id="valSplit absolute"),
    pytest.param("dataset.valSplit", "val\r", "spec.dataset.valSplit", id="valSplit carriage return"),
    pytest.param("resume", "/output/$(X)/../../etc/passwd", "spec.resume", id="resume expansion"),
    pytest.param("resume", "/output/../etc/passwd", "spec.resume", id="resume .."),
    pytest.param("resume", "/output/ckpt/a\n--ckpt_path=/x", "spec.resume", id="resume newline"),
    pytest.param("checkpoint", "/data/$(MNV2_JOB_NAME)/x.ckpt", "spec.checkpoint", id="checkpoint expansion"),
    pytest.param("checkpoint", "/output//x.ckpt", "spec.checkpoint", id="checkpoint not normalised"),
    pytest.param("dataset", {"hostPath": {"path": "/"}}, "spec.dataset.hostPath.path", id="hostPath root"),
    pytest.param(
        "dataset", {"hostPath": {"path": "/mnt/../etc"}}, "spec.dataset.hostPath.path", id="hostPath .."
    ),
    pytest.param(
        "dataset", {"hostPath": {"path": "/mnt/./x"}}, "spec.dataset.hostPath.path", id="hostPath ."
    ),
    pytest.param(
        "output", {"hostPath": {"path": "/mnt/x/"}}, "spec.output.hostPath.path", id="hostPath slash"
    ),
    pytest.param("output", {"hostPath": {"path": "$(HOME)"}}, "spec.output.hostPath.path", id="hostPath $("),
    # Images: the API server takes any string, the runtime a reference.
    pytest.param("image", "evil image", "spec.image", id="image with space"),
    pytest.param("image", "Registry/X", "spec.image", id="image upper-case repository"),
    pytest.param("image", "a:" + "t" * 200, "spec.image", id="image tag too long"),
    # Sizes and string lengths.
    pytest.param("nodes", 1025, "spec.nodes", id="too many nodes"),
    pytest.param("nodes", 10**20, "spec.nodes", id="huge nodes"),
    pytest.param("devicesPerNode", 9, "spec.devicesPerNode", id="too many devices"),
    pytest.param("recipe", "r" * 129, "spec.recipe", id="recipe too long"),
    pytest.param("model.name", "m" * 10_000, "spec.model.name", id="model name too long"),
    pytest.param("config", {f"k{i}": 1 for i in range(129)}, "spec.config", id="too many config keys"),
    pytest.param("config", {"epoch_size": [1] * 20_000}, "spec.config", id="config too big"),
    # Types (the API server's schema refuses these too; "2" for nodes is read as 2, which is inert).
    pytest.param("env", {"A": 1}, "spec.env.A", id="env value not a string"),
    pytest.param("shmSize", 1.5, "spec.shmSize", id="quantity as float"),
    pytest.param("nodes", 10**5000, "spec.nodes", id="5000-digit nodes"),
    pytest.param("shmSize", 10**5000, "spec.shmSize", id="5000-digit quantity"),
    pytest.param("env", {"A": 10**5000}, "spec.env.A", id="5000-digit env value"),
    pytest.param("config", {"lr": 10**5000}, "spec.config", id="5000-digit config value"),
    pytest.param(
        "runPolicy", {"backoffLimit": 10**5000}, "spec.runPolicy.backoffLimit", id="5000-digit limit"
    ),
]


@pytest.mark.parametrize(("path", "value", "field"), HOSTILE)
def test_hostile_value_is_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    found = refusal(mutated(path, value))
    assert any(p.startswith(field + ":") or p.startswith(field + ".") for p in found), found


def test_a_deeply_nested_config_is_refused_not_a_traceback() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    found = refusal(mutated("config", {"epoch_size": deep}))
    assert found[0].startswith("spec.config")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("dataset.pvc.claimName", "imagenet-2012.v2"),
        ("output.pvc.subPath", "team/run-1"),
        ("dataset.trainSplit", "ILSVRC/train"),
        ("shmSize", "1.5Gi"),
        ("shmSize", "2e9"),
        ("resources.requests.cpu", "500m"),
        ("resources.requests.cpu", 4),
        ("accelerator.resourceName", "huawei.com/Ascend910B"),
        ("accelerator.nodeSelector", {"node.kubernetes.io/instance-type": "ascend-910b.8x"}),
        ("accelerator.tolerations", [{"key": "huawei.com/Ascend910", "operator": "Exists"}]),
        ("env", {"GLOG_v": "2", "HCCL_CONNECT_TIMEOUT": "600", "PYTHONFAULTHANDLER": "1"}),
        ("env", {"MNV2_CPU_DEPTHWISE": "fast", "OMP_NUM_THREADS": "4"}),
        ("image", "registry.example.com:5000/ml/mnv2-trainer:0.1.0"),
        ("image", "mnv2-trainer@sha256:" + "a" * 64),
        ("resume", "/output/ckpt/mobilenet_v2_075-3_100.ckpt"),
        ("imagePullSecrets", ["regcred"]),
    ],
)
def test_ordinary_values_stay_valid(path: str, value: Any) -> None:
    S.parse_spec(mutated(path, value))


def test_a_maximal_job_renders_in_bounded_memory() -> None:
    """Every size at its bound: the rendering of one pod stays small (the pods are alike)."""
    import tracemalloc

    env = {f"E{i:02d}": "x" * (S.MAX_ENV_BYTES // S.MAX_ENV_ENTRIES - 4) for i in range(S.MAX_ENV_ENTRIES)}
    mapping = mutated("env", env)
    mapping["nodes"] = 8
    spec = S.parse_spec(mapping)
    tracemalloc.start()
    try:
        rendered = R.render_job("big", "default", "uid", spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(rendered.pods) == 8
    # ~32 KiB of env per pod: far below a MiB per pod even with the YAML text and parse trees.
    assert peak < 8 * 2**20, peak


def test_quantity_parser_matches_the_api_servers_grammar() -> None:
    from decimal import Decimal

    assert V.parse_quantity("16Gi") == 16 * 2**30
    assert V.parse_quantity("500m") == Decimal("0.5")
    assert V.parse_quantity("2e3") == 2000
    assert V.parse_quantity(".5") == Decimal("0.5")
    for bad in ("1K", "1 ", " 1", "1.2.3", "0x10", "NaN", "1e", "--1", "Gi", ""):
        with pytest.raises(ValueError, match="not a Kubernetes quantity"):
            V.parse_quantity(bad)


def test_every_denied_env_name_has_a_reason_and_is_refused() -> None:
    for name in [*V.DENIED_ENV, "LD_BIND_NOW", "PYTHONINSPECT", "TBE_IMPL_PATH", "ASCEND_HOME"]:
        assert V.denied_env(name), name
    for name in V.ALLOWED_ENV:
        assert V.denied_env(name) is None


# --------------------------------------------------------------------------------------------------
# The admin's policy: enforced when rendering, so no pod beyond it is ever rendered
# --------------------------------------------------------------------------------------------------

SITE = OperatorPolicy.from_mapping(
    {
        "hostPath": {"datasetPrefixes": ["/mnt/datasets"], "outputPrefixes": ["/mnt/runs"]},
        "imagePrefixes": ["registry.example.com/ml/"],
        "priorityClassNames": ["training"],
        "schedulerNames": ["volcano"],
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists"}],
        "nodeSelectorKeys": ["pool"],
        "imagePullSecrets": ["regcred"],
    }
)


def render(mapping: dict[str, Any], policy: OperatorPolicy = SITE) -> R.RenderedJob:
    spec = S.parse_spec(mapping)
    return R.render_job("job", "team", "uid", spec, defaults=S.OperatorDefaults(policy=policy))


def policy_refusal(mapping: dict[str, Any], policy: OperatorPolicy = SITE) -> list[str]:
    with pytest.raises(S.SpecError) as info:
        render(mapping, policy)
    for problem in info.value.problems:
        assert MESSAGE.match(problem), problem
        assert "policy." in problem, problem  # says which Helm value would allow it
    return info.value.problems


POLICY_HOSTILE: list[Any] = [
    pytest.param("dataset", {"hostPath": {"path": "/etc"}}, "spec.dataset.hostPath.path", id="hostPath /etc"),
    pytest.param(
        "dataset",
        {"hostPath": {"path": "/mnt/datasets-other"}},
        "spec.dataset.hostPath.path",
        id="hostPath sibling of a prefix",
    ),
    pytest.param(
        "dataset",
        {"hostPath": {"path": "/mnt/runs/a"}},
        "spec.dataset.hostPath.path",
        id="dataset from output",
    ),
    pytest.param(
        "output",
        {"hostPath": {"path": "/mnt/datasets/x"}},
        "spec.output.hostPath.path",
        id="write to datasets",
    ),
    pytest.param(
        "output", {"hostPath": {"path": "/var/lib/kubelet"}}, "spec.output.hostPath.path", id="kubelet"
    ),
    pytest.param("image", "docker.io/attacker/miner:1", "spec.image", id="foreign image"),
    pytest.param("image", "registry.example.com/ml-evil/x:1", "spec.image", id="image prefix sibling"),
    pytest.param("image", "registry.example.com/mlx:1", "spec.image", id="image prefix no boundary"),
    pytest.param(
        "scheduling",
        {"priorityClassName": "system-node-critical"},
        "spec.scheduling.priorityClassName",
        id="prio",
    ),
    pytest.param(
        "scheduling", {"schedulerName": "my-scheduler"}, "spec.scheduling.schedulerName", id="scheduler"
    ),
    pytest.param(
        "scheduling",
        {"gang": True, "queue": "other-team"},
        "spec.scheduling.queue",
        id="another team's queue",
    ),
    pytest.param(
        "accelerator",
        {"tolerations": [{"operator": "Exists"}]},
        "spec.accelerator.tolerations[0]",
        id="tolerate every taint",
    ),
    pytest.param(
        "accelerator",
        {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
        "spec.accelerator.tolerations[0]",
        id="tolerate control plane",
    ),
    pytest.param(
        "accelerator",
        {"tolerations": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]},
        "spec.accelerator.tolerations[0]",
        id="tolerate unreachable",
    ),
    pytest.param(
        "accelerator",
        {"nodeSelector": {"kubernetes.io/hostname": "control-plane-1"}},
        "spec.accelerator.nodeSelector",
        id="pick a node",
    ),
    pytest.param(
        "accelerator", {"nodeSelector": {}}, "spec.accelerator.nodeSelector", id="drop default selector"
    ),
    pytest.param("imagePullSecrets", ["other-teams-secret"], "spec.imagePullSecrets[0]", id="pull secret"),
]


@pytest.mark.parametrize(("path", "value", "field"), POLICY_HOSTILE)
def test_policy_refuses_what_the_admin_does_not_allow(path: str, value: Any, field: str) -> None:
    found = policy_refusal(mutated(path, value))
    assert any(p.startswith(field + ":") for p in found), found


def test_policy_allows_what_the_admin_allows() -> None:
    mapping = mutated("dataset", {"hostPath": {"path": "/mnt/datasets/imagenet"}})
    mapping["output"] = {"hostPath": {"path": "/mnt/runs"}}
    mapping["image"] = "registry.example.com/ml/mnv2-trainer:2"
    mapping["scheduling"] = {"gang": True, "priorityClassName": "training"}
    mapping["accelerator"] = {
        "nodeSelector": {"accelerator": "huawei-Ascend910", "pool": "a"},
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}],
    }
    mapping["imagePullSecrets"] = ["regcred"]
    pod = render(mapping).pods[0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["hostPath"] == {"path": "/mnt/datasets/imagenet", "type": "Directory"}
    # The output folder must exist: the kubelet never creates root-owned folders for a job.
    assert volumes["output"]["hostPath"] == {"path": "/mnt/runs", "type": "Directory"}
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["data"]["readOnly"] is True


def test_a_job_beyond_every_policy_area_gets_one_refusal_per_area_in_spec_order() -> None:
    """Every area is checked (none stops the others), each refusal once, in the order of the spec's fields."""
    mapping = {
        **MINIMAL,
        "dataset": {"hostPath": {"path": "/etc"}},
        "output": {"hostPath": {"path": "/var/lib/kubelet"}},
        "image": "docker.io/attacker/miner:1",
        "scheduling": {"gang": True, "priorityClassName": "system-node-critical", "queue": "other-team"},
        "accelerator": {
            "type": "ascend",
            "nodeSelector": {"kubernetes.io/hostname": "control-plane-1"},
            "tolerations": [{"operator": "Exists"}],
            "hwHiAiUserGid": 4242,
        },
        "imagePullSecrets": ["other-teams-secret"],
    }
    found = policy_refusal(mapping, dataclasses.replace(SITE, scheduler_names=("kai",)))
    assert [p.split(":", 1)[0] for p in found] == [
        "spec.dataset.hostPath.path",
        "spec.output.hostPath.path",
        "spec.image",
        "spec.scheduling.priorityClassName",
        "spec.scheduling.queue",
        "spec.scheduling.gang",
        "spec.accelerator.tolerations[0]",
        "spec.accelerator.nodeSelector",
        "spec.accelerator.nodeSelector",
        "spec.accelerator.hwHiAiUserGid",
        "spec.imagePullSecrets[0]",
    ]


def test_the_built_in_policy_allows_no_pod_level_choice() -> None:
    strict = OperatorPolicy()
    for path, value, field in [
        ("dataset", {"hostPath": {"path": "/mnt/datasets"}}, "spec.dataset.hostPath.path"),
        ("image", "registry.example.com/ml/x:1", "spec.image"),
        ("scheduling", {"priorityClassName": "training"}, "spec.scheduling.priorityClassName"),
        (
            "accelerator",
            {"tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists"}]},
            "spec.accelerator",
        ),
        ("imagePullSecrets", ["regcred"], "spec.imagePullSecrets[0]"),
    ]:
        found = policy_refusal(mutated(path, value), strict)
        assert found[0].startswith(field), found
    # ... but every example job and the default image render.
    render(mutated("image", S.DEFAULT_IMAGE), strict)
    render(mutated("scheduling", {"gang": True}), strict)  # volcano for gang jobs


def test_no_spec_field_picks_the_trainers_service_account() -> None:
    found = refusal(mutated("serviceAccountName", "admin"))
    assert found[0].startswith("spec.serviceAccountName: unknown field")
    for pod in render(mutated("nodes", 2)).pods:
        assert pod["spec"]["serviceAccountName"] == "job-trainer"


@pytest.mark.parametrize(
    "raw",
    [
        '{"hostPath": {"datasetPrefixes": ["/"]}}',
        '{"hostPath": {"outputPrefixes": ["/mnt/../etc"]}}',
        '{"hostPath": {"outputPrefixes": ["relative"]}}',
        '{"imagePrefix": []}',
        '{"tolerations": [{"key": 1}]}',
        "[1]",
        "not json",
    ],
)
def test_a_malformed_policy_stops_the_operator_at_start(raw: str) -> None:
    with pytest.raises(PolicyError, match="MNV2_POLICY"):
        OperatorPolicy.from_env({"MNV2_POLICY": raw})


# --------------------------------------------------------------------------------------------------
# Credentials: only the pod that reports holds a token
# --------------------------------------------------------------------------------------------------


def test_only_rank_0_mounts_the_service_account_token() -> None:
    rendered = render(mutated("nodes", 3))
    for index, pod in enumerate(rendered.pods):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {
            m["name"]: m
            for c in spec["containers"] + spec.get("initContainers", [])
            for m in c.get("volumeMounts", [])
        }
        if index == 0:
            sources = volumes["trainer-token"]["projected"]["sources"]
            token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
            assert token["expirationSeconds"] == 3600 and "audience" not in token
            assert mounts["trainer-token"]["readOnly"] is True
        else:
            assert "trainer-token" not in volumes and "trainer-token" not in mounts
            assert not any("serviceaccount" in m["mountPath"] for m in mounts.values())


def test_the_status_reporter_finds_rank_0s_token(tmp_path: Any) -> None:
    """The files of the projected volume, at its mount path, are what the reporter's in-cluster config reads."""
    from kubernetes import client
    from kubernetes.config import incluster_config

    pod = render(MINIMAL).pods[0]
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "trainer-token")
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "trainer-token"]
    files = set()
    for source in volume["projected"]["sources"]:
        if "serviceAccountToken" in source:
            files.add(source["serviceAccountToken"]["path"])
        for kind in ("configMap", "downwardAPI"):
            files |= {item["path"] for item in (source.get(kind) or {}).get("items", [])}
    assert f"{mount['mountPath']}/token" == incluster_config.SERVICE_TOKEN_FILENAME
    assert f"{mount['mountPath']}/ca.crt" == incluster_config.SERVICE_CERT_FILENAME
    assert {"token", "ca.crt", "namespace"} <= files
    # The same loader report.py calls, pointed at a copy of the volume's files.
    (tmp_path / "token").write_text("rank0-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    conf = client.Configuration()
    incluster_config.InClusterConfigLoader(
        token_filename=str(tmp_path / "token"),
        cert_filename=str(tmp_path / "ca.crt"),
        environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
    ).load_and_set(conf)
    assert conf.host == "https://10.96.0.1:443"
    assert "rank0-token" in str(conf.api_key)


def test_refusals_stay_short_whatever_the_input() -> None:
    """The message goes into the job's status and an Event: it never echoes a huge value or key."""
    mapping = mutated("model.name", "m" * 70_000)
    for i in range(200):
        mapping["dataset"][f"junk{i}"] = 1
    mapping["dataset"]["k" * 70_000] = 1
    with pytest.raises(S.SpecError) as info:
        S.parse_spec(mapping)
    problems = info.value.problems
    assert len(problems) == S.SpecError.MAX_PROBLEMS
    assert problems[-1].startswith("spec: ") and "more problems not shown" in problems[-1]
    assert len(str(info.value)) < 8 * 1024
    assert all(MESSAGE.match(p) or p.startswith("spec: ") for p in problems)


def test_a_job_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(S.SpecError, match="metadata.name"):
        R.render_job("job\n", "team", "uid", S.parse_spec(MINIMAL))
