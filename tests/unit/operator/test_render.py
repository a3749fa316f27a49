"""Rendering a job into Kubernetes objects: golden files, schema validity, msrun lines, lr scaling.

Golden files live in tests/unit/operator/golden/. After an intended change of the rendered output
(templates, render.py, the trainer's recipes or config keys), regenerate them and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/operator/test_render.py
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from mnv2_operator import cli, render
from mnv2_operator import constants as C
from mnv2_operator import spec as S
from mnv2_operator.policy import OperatorPolicy, PolicyError
from support import REPO_ROOT

ROOT = REPO_ROOT
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
K8S_VERSION = "1.37.0"
UID = "5b0c8a8e-4d51-4c1b-9d1e-0f6f2a7c9e11"


def job(name: str, spec: dict[str, Any], namespace: str = "ml") -> dict[str, Any]:
    return {
        "apiVersion": C.API_VERSION,
        "kind": C.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": UID},
        "spec": spec,
    }


CASES: dict[str, dict[str, Any]] = {
    "cpu-1x1": job(
        "digits-cpu",
        {
            "model": {"name": "mobilenet_v2_035_96"},
            "dataset": {"type": "digits"},
            "output": {"pvc": {"claimName": "runs", "subPath": "digits"}},
            "accelerator": {"type": "cpu"},
            "nodes": 1,
            "devicesPerNode": 1,
            "config": {
                "batch_size": 32,
                "image_resize": 32,
                "lr": 0.03,
                "epoch_size": 15,
                "warmup_epochs": 1,
            },
            "shmSize": "1Gi",
        },
    ),
    "ascend-1x8": job(
        "mnv2-075",
        {
            "model": {"name": "mobilenet_v2_075"},
            "dataset": {"type": "imagefolder", "pvc": {"claimName": "imagenet"}},
            "output": {"pvc": {"claimName": "runs", "subPath": "mnv2-075"}},
            "nodes": 1,
            "devicesPerNode": 8,
            "resources": {"requests": {"cpu": 64, "memory": "256Gi"}, "limits": {"memory": "512Gi"}},
        },
    ),
    "ascend-1x8-910b": job(
        "mnv2-075-910b",
        {
            "model": {"name": "mobilenet_v2_075"},
            "dataset": {"type": "imagefolder", "hostPath": {"path": "/mnt/imagenet"}},
            "output": {"pvc": {"claimName": "runs", "subPath": "mnv2-075-910b"}},
            "nodes": 1,
            "devicesPerNode": 8,
            "accelerator": {"chip": "Ascend910B", "hwHiAiUserGid": 1001},
        },
    ),
    "ascend-2x8": job(
        "mnv2-075-2x8",
        {
            "model": {"name": "mobilenet_v2_075"},
            "dataset": {"type": "imagefolder", "pvc": {"claimName": "imagenet"}},
            "output": {"pvc": {"claimName": "runs-rwx"}},
            "nodes": 2,
            "devicesPerNode": 8,
            "image": "registry.local/mnv2-trainer:0.1.0",
            "accelerator": {
                "volcanoNpuPlugin": True,
                "tolerations": [
                    {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "scheduling": {"gang": True, "queue": "research", "priorityClassName": "training-high"},
            "runPolicy": {"backoffLimit": 5},
            "env": {"GLOG_v": "2"},
        },
    ),
    "ascend-2x8-910b": job(
        "mnv2-075-2x8-910b",
        {
            "model": {"name": "mobilenet_v2_075"},
            "dataset": {"type": "imagefolder", "pvc": {"claimName": "imagenet"}},
            "output": {"pvc": {"claimName": "runs-rwx"}},
            "nodes": 2,
            "devicesPerNode": 8,
            "accelerator": {"chip": "Ascend910B", "bindCore": False},
            "scheduling": {"gang": True},
            "clusterTimeoutSeconds": 3600,
        },
    ),
}


#: An admin policy that allows what the cases ask for (the built-in policy allows none of it).
POLICY = OperatorPolicy.from_mapping(
    {
        "hostPath": {"datasetPrefixes": ["/mnt"]},
        "imagePrefixes": ["registry.local/", "mine"],
        "priorityClassNames": ["training-high"],
        "queueNames": ["default", "research"],
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists"}],
        "nodeSelectorKeys": ["accelerator", "npu"],
        "hwHiAiUserGids": [1001],
    }
)
DEFAULTS = S.OperatorDefaults(policy=POLICY)
POLICY_JSON = json.dumps(
    {
        "hostPath": {"datasetPrefixes": ["/mnt"]},
        "imagePrefixes": ["registry.local/"],
        "priorityClassNames": ["training-high"],
        "queueNames": ["default", "research"],
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists"}],
    }
)


def rendered_case(case: str, attempt: int = 0) -> render.RenderedJob:
    manifest = CASES[case]
    spec = S.parse_spec(manifest["spec"])
    meta = manifest["metadata"]
    return render.render_job(meta["name"], meta["namespace"], meta["uid"], spec, attempt, DEFAULTS)


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod)["env"]}


# --------------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    text = render.to_yaml(render.render_manifest(CASES[case], DEFAULTS), CASES[case])
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), (
        f"{path.name} differs; if intended, regenerate with UPDATE_GOLDEN=1 and review"
    )


# --------------------------------------------------------------------------------------------------
# Schema validity
# --------------------------------------------------------------------------------------------------


def _validate_all(objs: list[dict[str, Any]]) -> int:
    checked = 0
    for obj in objs:
        if obj["kind"] == "PodGroup":
            # A Volcano CRD: kubernetes-validate only knows the built-in kinds. test_gang checks its fields.
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    return checked


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_validates_against_kubernetes_schemas(case: str) -> None:
    result = rendered_case(case)
    assert _validate_all(result.all()) == len(result.all()) - len(of_kind(result.objects, "PodGroup"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_render_to_valid_objects(example: Path) -> None:
    manifest = render.load_job_manifest(str(example))
    result = render.render_manifest(manifest, DEFAULTS)
    assert _validate_all(result.all()) >= 6


def test_the_validator_is_strict() -> None:
    """The schema check above would catch a misspelt or mistyped field (it is not a no-op)."""
    pod = copy.deepcopy(rendered_case("cpu-1x1").pods[0])
    container(pod)["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    pod = copy.deepcopy(rendered_case("cpu-1x1").pods[0])
    pod["spec"]["restartPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def test_children_and_names() -> None:
    result = rendered_case("ascend-2x8")
    assert [(o["kind"], o["metadata"]["name"]) for o in result.objects] == [
        ("Service", "mnv2-075-2x8"),
        ("ConfigMap", "mnv2-075-2x8-config"),
        ("ServiceAccount", "mnv2-075-2x8-trainer"),
        ("Role", "mnv2-075-2x8-trainer"),
        ("RoleBinding", "mnv2-075-2x8-trainer"),
        ("PodGroup", "mnv2-075-2x8"),
    ]
    assert [p["metadata"]["name"] for p in result.pods] == [f"mnv2-075-2x8-worker-{i}" for i in range(2)]
    for obj in result.all():
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "training.mnv2.dev/v1alpha1",
                "kind": "MobileNetV2TrainingJob",
                "name": "mnv2-075-2x8",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert obj["metadata"]["labels"][render.LABEL_JOB] == "mnv2-075-2x8"


def test_headless_service_selects_the_pods_and_gives_them_dns_names() -> None:
    result = rendered_case("ascend-2x8")
    (svc,) = of_kind(result.objects, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    for i, pod in enumerate(result.pods):
        labels = pod["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert labels[render.LABEL_INDEX] == str(i)
        assert pod["spec"]["hostname"] == pod["metadata"]["name"]
        assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
        assert pod["spec"]["restartPolicy"] == "Never"


def test_fixed_kinds_do_not_depend_on_the_spec() -> None:
    """The operator never patches FIXED_KINDS (and holds no patch on them): every spec of a job of a
    given name renders them the same, at every attempt."""
    forms: dict[str, list[list[dict[str, Any]]]] = {}
    for case in sorted(CASES):
        for attempt in (0, 3):
            meta = CASES[case]["metadata"]
            spec = S.parse_spec(CASES[case]["spec"])
            result = render.render_job("same-name", "team-x", UID, spec, attempt, DEFAULTS)
            for kind in ("ConfigMap", *sorted(render.FIXED_KINDS)):
                forms.setdefault(kind, []).append(of_kind(result.objects, kind))
            assert meta["name"] != "same-name"
    for kind in render.FIXED_KINDS:
        first = forms[kind][0]
        assert len(first) == 1, kind
        assert all(form == first for form in forms[kind]), f"{kind} follows the spec: it must be patched"
    # The comparison can tell: the ConfigMap (resolved config) differs between the specs.
    assert any(form != forms["ConfigMap"][0] for form in forms["ConfigMap"])
    assert {o["kind"] for o in rendered_case("ascend-2x8").objects} - render.FIXED_KINDS == {
        "ConfigMap",
        "PodGroup",
    }


def test_trainer_may_patch_only_its_own_jobs_status() -> None:
    result = rendered_case("cpu-1x1")
    (role,) = of_kind(result.objects, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["training.mnv2.dev"],
            "resources": ["mobilenetv2trainingjobs/status"],
            "resourceNames": ["digits-cpu"],
            "verbs": ["patch"],
        }
    ]
    (binding,) = of_kind(result.objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "digits-cpu-trainer", "namespace": "ml"}
    ]
    assert result.pods[0]["spec"]["serviceAccountName"] == "digits-cpu-trainer"
    env = env_of(result.pods[0])
    assert env["MNV2_JOB_NAME"] == "digits-cpu" and env["MNV2_JOB_NAMESPACE"] == "ml"


def test_msrun_line_of_the_imagenet_8card_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`mnv2 render` of the 8-card example: MindCV's `msrun --worker_num 8 ... train --config --data_dir`."""
    assert cli.main(["render", "-f", str(ROOT / "manifests/examples/imagenet-8card.yaml")]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert container(pod)["command"] == [
        "python",
        "-m",
        "mnv2_trainer.launch",
        "msrun",
        "--worker_num=8",
        "--local_worker_num=8",
        "--node_rank=0",
        "--master_addr=127.0.0.1",
        "--master_port=8118",
        "--join=True",
        "--cluster_time_out=600",
        "--log_dir=/output/logs/0",
        "--tail_worker_log=0",
        "--bind_core=True",
        "python",
        "-m",
        "mnv2_trainer.train",
        "--config",
        "/etc/mnv2/config.yaml",
        "--data_dir",
        "/data",
        "--ckpt_save_dir",
        "/output/ckpt",
        "--resume",
        "auto",
        "--distribute",
        "True",
    ]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    # The seed's recipe, unscaled: 8 cards x 256 is the recipe's own global batch.
    assert (config["model"], config["batch_size"], config["lr"], config["epoch_size"]) == (
        "mobilenet_v2_075",
        256,
        0.3,
        400,
    )
    assert config["device_target"] == "Ascend" and config["distribute"] is True


def test_multi_node_msrun_lines() -> None:
    result = rendered_case("ascend-2x8", attempt=2)
    for i, pod in enumerate(result.pods):
        cmd = container(pod)["command"]
        assert cmd[:15] == [
            "python",
            "-m",
            "mnv2_trainer.launch",
            "msrun",
            "--worker_num=16",
            "--local_worker_num=8",
            f"--node_rank={i}",
            "--master_addr=mnv2-075-2x8-worker-0.mnv2-075-2x8.ml.svc",
            "--master_port=8118",
            "--join=True",
            # Several nodes: rank 0's window also covers the other nodes' image pulls.
            "--cluster_time_out=1800",
            "--log_dir=/output/logs/2",
            # Each pod's log shows its node's first rank: rank 0 on worker 0, rank 8 on worker 1.
            f"--tail_worker_log={8 * i}",
            "--bind_core=True",
            "python",
        ]
        assert pod["metadata"]["labels"][render.LABEL_ATTEMPT] == "2"


def test_multi_node_pods_of_an_attempt_never_share_a_node() -> None:
    """`nodes: 2` means two machines: without it the scheduler may put both pods (CPU, or Ascend pods that
    fit one node's devices) on one node. A previous attempt's terminating pods do not block the next."""
    result = rendered_case("ascend-2x8", attempt=2)
    for pod in result.pods:
        (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term == {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {render.LABEL_JOB: "mnv2-075-2x8", render.LABEL_ATTEMPT: "2"}},
        }
        assert term["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    single = [c for c in sorted(CASES) if CASES[c]["spec"].get("nodes", 1) == 1]
    assert single
    for case in single:
        for pod in rendered_case(case).pods:
            assert "affinity" not in pod["spec"], case


def _catches_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (15 - 1)))


def test_multi_node_pods_wait_for_rank_0_dns(tmp_path: Path) -> None:
    import subprocess
    import sys

    (init,) = rendered_case("ascend-2x8").pods[1]["spec"]["initContainers"]
    assert init["command"][:2] == ["python", "-c"]
    assert init["command"][3:] == ["mnv2-075-2x8-worker-0.mnv2-075-2x8.ml.svc", "1800"]
    assert "initContainers" not in rendered_case("ascend-1x8").pods[0]["spec"]
    # The script itself: a name that resolves passes at once, one that never does fails after the timeout.
    script = init["command"][2]
    ok = subprocess.run(
        [sys.executable, "-c", script, "localhost", "5"], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0 and "localhost resolves" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-c", script, "no-such-host.invalid", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "did not resolve within 0s" in bad.stderr
    # PID 1 of its container: it must handle SIGTERM itself (the default would be ignored there).
    waiting = subprocess.Popen([sys.executable, "-c", script, "no-such-host.invalid", "600"])
    deadline = time.monotonic() + 30
    while not _catches_sigterm(waiting.pid):  # the handler is installed (SigCgt in /proc)
        assert waiting.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    waiting.terminate()
    assert waiting.wait(timeout=10) == 143  # the handler's exit, not death by the default action (-15)


def test_ascend_pods_get_devices_driver_and_mounts() -> None:
    pod = rendered_case("ascend-1x8").pods[0]
    res = container(pod)["resources"]
    assert res["requests"]["huawei.com/Ascend910"] == res["limits"]["huawei.com/Ascend910"] == "8"
    assert res["requests"]["cpu"] == "64" and res["limits"]["memory"] == "512Gi"
    assert pod["spec"]["nodeSelector"] == {"accelerator": "huawei-Ascend910", "accelerator-type": "module"}
    mounts = {m["mountPath"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["/usr/local/Ascend/driver"]["readOnly"] is True
    assert mounts["/etc/localtime"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["ascend-driver"]["hostPath"]["path"] == "/usr/local/Ascend/driver"
    assert volumes["localtime"]["hostPath"] == {"path": "/etc/localtime", "type": "File"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "imagenet", "readOnly": True}
    assert mounts["/data"]["readOnly"] is True and mounts["/output"]["subPath"] == "mnv2-075"


@pytest.mark.parametrize("case", ["ascend-1x8", "ascend-1x8-910b", "ascend-2x8", "ascend-2x8-910b"])
def test_ascend_device_access_is_a_group_not_a_capability(case: str) -> None:
    """The device nodes are crw-rw---- HwHiAiUser:HwHiAiUser: the group opens them, no capability."""
    result = rendered_case(case)
    gid = CASES[case]["spec"].get("accelerator", {}).get("hwHiAiUserGid", S.DEFAULT_HWHIAIUSER_GID)
    for pod in result.pods:
        assert pod["spec"]["securityContext"]["supplementalGroups"] == [gid]
        sc = container(pod)["securityContext"]
        assert sc == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert "privileged" not in json.dumps(pod)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_visible_devices_env_unless_the_volcano_npu_plugin_is_on(case: str) -> None:
    """Only MindCluster's Volcano NPU plugin writes the NPU annotation; anywhere else an env entry read
    from it would be empty and, coming after the device plugin's own, make the runtime mount no NPU."""
    on = bool(CASES[case]["spec"].get("accelerator", {}).get("volcanoNpuPlugin"))
    for pod in rendered_case(case).pods:
        assert ("ASCEND_VISIBLE_DEVICES" in env_of(pod)) is on
        if on:
            assert env_of(pod)["ASCEND_VISIBLE_DEVICES"] == {
                "fieldRef": {"fieldPath": "metadata.annotations['huawei.com/Ascend910']"}
            }
            assert pod["spec"]["schedulerName"] == "volcano"


def test_volcano_npu_plugin_from_the_operator_default_and_per_job() -> None:
    spec = S.parse_spec(CASES["ascend-1x8"]["spec"])
    on = S.OperatorDefaults(volcano_npu_plugin=True, policy=POLICY)
    pod = render.render_job("j", "ns", UID, spec, 0, on).pods[0]
    assert "ASCEND_VISIBLE_DEVICES" in env_of(pod) and pod["spec"]["schedulerName"] == "volcano"
    # A job can turn it off where the operator's default has it on...
    off = S.parse_spec({**CASES["ascend-1x8"]["spec"], "accelerator": {"volcanoNpuPlugin": False}})
    pod = render.render_job("j", "ns", UID, off, 0, on).pods[0]
    assert "ASCEND_VISIBLE_DEVICES" not in env_of(pod) and "schedulerName" not in pod["spec"]
    # ...and another scheduler with the plugin on is refused, naming both ways out.
    other = S.parse_spec({**CASES["ascend-1x8"]["spec"], "scheduling": {"schedulerName": "kai"}})
    kai_allowed = S.OperatorDefaults(
        volcano_npu_plugin=True, policy=OperatorPolicy.from_mapping({"schedulerNames": ["volcano", "kai"]})
    )
    with pytest.raises(S.SpecError, match=r"schedulerName: .*volcanoNpuPlugin: false"):
        render.render_job("j", "ns", UID, other, 0, kai_allowed)
    with pytest.raises(S.SpecError, match=r"spec.scheduling.schedulerName: the Volcano NPU plugin"):
        S.parse_spec(
            {
                **CASES["ascend-1x8"]["spec"],
                "accelerator": {"volcanoNpuPlugin": True},
                "scheduling": {"schedulerName": "kai"},
            }
        )
    # CPU pods never get it.
    cpu = S.parse_spec(CASES["cpu-1x1"]["spec"])
    assert "ASCEND_VISIBLE_DEVICES" not in env_of(render.render_job("j", "ns", UID, cpu, 0, on).pods[0])


@pytest.mark.parametrize(
    ("case", "label"),
    [("ascend-1x8", "module"), ("ascend-2x8", "module"), ("ascend-1x8-910b", "module-910b-8"),
     ("ascend-2x8-910b", "module-910b-8")],
)  # fmt: skip
def test_chip_generation_selects_mindclusters_accelerator_type_label(case: str, label: str) -> None:
    for pod in rendered_case(case).pods:
        assert pod["spec"]["nodeSelector"]["accelerator-type"] == label


def test_accelerator_type_label_defaults_and_overrides() -> None:
    spec = S.parse_spec(CASES["ascend-1x8"]["spec"])
    b_default = S.OperatorDefaults(chip="Ascend910B", policy=POLICY)
    assert render.render_job("j", "ns", UID, spec, 0, b_default).pods[0]["spec"]["nodeSelector"] == {
        "accelerator": "huawei-Ascend910",
        "accelerator-type": "module-910b-8",
    }
    # A cluster without MindCluster's labels maps the chip to "" and gets no label.
    unlabelled = S.OperatorDefaults(accelerator_types={"Ascend910": "", "Ascend910B": ""}, policy=POLICY)
    assert (
        "accelerator-type"
        not in render.render_job("j", "ns", UID, spec, 0, unlabelled).pods[0]["spec"]["nodeSelector"]
    )
    # A selector naming the label itself wins (e.g. 16-NPU 910B servers).
    own = S.parse_spec(
        {
            **CASES["ascend-1x8"]["spec"],
            "accelerator": {"chip": "Ascend910B", "nodeSelector": {"accelerator-type": "module-910b-16"}},
        }
    )
    # (Choosing the label is a node-selector choice: the admin's policy must allow the key.)
    may_label = OperatorPolicy.from_mapping(
        {"hostPath": {"datasetPrefixes": ["/mnt"]}, "nodeSelectorKeys": ["accelerator", "accelerator-type"]}
    )
    pods = render.render_job("j", "ns", UID, own, 0, S.OperatorDefaults(policy=may_label)).pods
    assert pods[0]["spec"]["nodeSelector"] == {"accelerator-type": "module-910b-16"}


def test_a_jobs_hwhiaiuser_gid_is_limited_by_the_policy() -> None:
    """The GID becomes a supplemental group of the pods: a job may only name the default or an allowed one."""
    spec = S.parse_spec({**CASES["ascend-1x8"]["spec"], "accelerator": {"hwHiAiUserGid": 0o777}})
    with pytest.raises(S.SpecError, match=r"spec.accelerator.hwHiAiUserGid: supplemental group 511 .*"
                       r"policy.hwHiAiUserGids"):  # fmt: skip
        render.render_job("j", "ns", UID, spec, 0, DEFAULTS)
    same = S.parse_spec({**CASES["ascend-1x8"]["spec"], "accelerator": {"hwHiAiUserGid": 1000}})
    pod = render.render_job("j", "ns", UID, same, 0, S.OperatorDefaults()).pods[0]
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [1000]
    with pytest.raises(PolicyError, match="hwHiAiUserGids must be a list of group ids"):
        OperatorPolicy.from_mapping({"hwHiAiUserGids": ["1000"]})


def test_device_counts_per_chip() -> None:
    base = CASES["ascend-1x8"]["spec"]
    with pytest.raises(S.SpecError, match=r"3 NPUs per node is not a valid Ascend910 group; use one of 1, 2, 4, 8 "
                       r"\(or set accelerator.chip: Ascend910B"):  # fmt: skip
        S.parse_spec({**base, "devicesPerNode": 3})
    assert (
        S.parse_spec({**base, "devicesPerNode": 3, "accelerator": {"chip": "Ascend910B"}}).devices_per_node
        == 3
    )
    with pytest.raises(S.SpecError, match=r"spec.accelerator.chip: cpu jobs use no NPU"):
        S.parse_spec({**CASES["cpu-1x1"]["spec"], "accelerator": {"type": "cpu", "chip": "Ascend910B"}})


def test_bind_core_for_ascend_only_and_switchable() -> None:
    assert "--bind_core=True" in container(rendered_case("ascend-1x8").pods[0])["command"]
    assert "--bind_core=True" not in container(rendered_case("ascend-2x8-910b").pods[0])["command"]
    assert not any("bind_core" in a for a in container(rendered_case("cpu-1x1").pods[0])["command"])


def test_cann_process_logs_go_to_the_attempts_log_folder() -> None:
    for i, pod in enumerate(rendered_case("ascend-2x8", attempt=3).pods):
        assert env_of(pod)["ASCEND_PROCESS_LOG_PATH"] == f"/output/logs/3/ascend/node-{i}"
        assert "--log_dir=/output/logs/3" in container(pod)["command"]
    assert "ASCEND_PROCESS_LOG_PATH" not in env_of(rendered_case("cpu-1x1").pods[0])


@pytest.mark.parametrize(("nodes", "given", "expected"), [(1, None, 600), (2, None, 1800), (2, 300, 300)])
def test_cluster_timeout_default_covers_other_nodes_image_pulls(
    nodes: int, given: int | None, expected: int
) -> None:
    spec = {**CASES["ascend-1x8"]["spec"], "nodes": nodes}
    if given is not None:
        spec["clusterTimeoutSeconds"] = given
    pods = render.render_job("j", "ns", UID, S.parse_spec(spec), 0).pods
    assert all(f"--cluster_time_out={expected}" in container(p)["command"] for p in pods)


def test_operator_defaults_fill_empty_fields() -> None:
    spec = S.parse_spec(CASES["ascend-1x8"]["spec"])
    defaults = S.OperatorDefaults(
        image="r/t:9",
        resource_name="huawei.com/Ascend910B",
        node_selector={"npu": "b"},
        volcano_npu_plugin=True,
        hw_hi_ai_user_gid=2000,
        policy=POLICY,
    )
    pod = render.render_job("j", "ns", UID, spec, 0, defaults).pods[0]
    assert container(pod)["image"] == "r/t:9"
    assert container(pod)["resources"]["limits"]["huawei.com/Ascend910B"] == "8"
    assert pod["spec"]["nodeSelector"] == {"npu": "b", "accelerator-type": "module"}
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [2000]
    assert (
        env_of(pod)["ASCEND_VISIBLE_DEVICES"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['huawei.com/Ascend910B']"
    )
    # The job's own values win over the operator's.
    spec = S.parse_spec(
        {
            **CASES["ascend-1x8"]["spec"],
            "image": "mine:1",
            "accelerator": {"nodeSelector": {}, "hwHiAiUserGid": 1001},
        }
    )
    pod = render.render_job("j", "ns", UID, spec, 0, defaults).pods[0]
    assert container(pod)["image"] == "mine:1"
    assert pod["spec"]["nodeSelector"] == {"accelerator-type": "module"}
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [1001]


def test_operator_defaults_from_env() -> None:
    env = {
        "MNV2_DEFAULT_ACCELERATOR_CHIP": "Ascend910B",
        "MNV2_DEFAULT_ACCELERATOR_TYPES": '{"Ascend910B": "module-910b-16"}',
        "MNV2_DEFAULT_VOLCANO_NPU_PLUGIN": "true",
        "MNV2_DEFAULT_HWHIAIUSER_GID": "1200",
    }
    d = S.OperatorDefaults.from_env(env)
    assert (d.chip, d.accelerator_types, d.volcano_npu_plugin, d.hw_hi_ai_user_gid) == (
        "Ascend910B",
        {"Ascend910": "module", "Ascend910B": "module-910b-16"},
        True,
        1200,
    )
    assert S.OperatorDefaults.from_env({}) == S.OperatorDefaults()
    for name, value, message in [
        ("MNV2_DEFAULT_ACCELERATOR_CHIP", "Ascend310", "not one of Ascend910, Ascend910B"),
        ("MNV2_DEFAULT_ACCELERATOR_TYPES", '{"A5": "x"}', "unknown chip A5"),
        ("MNV2_DEFAULT_VOLCANO_NPU_PLUGIN", "yes", "not true or false"),
        ("MNV2_DEFAULT_HWHIAIUSER_GID", "HwHiAiUser", "not a positive group id"),
    ]:
        with pytest.raises(ValueError, match=f"{name}: .*{message}"):
            S.OperatorDefaults.from_env({name: value})


@pytest.mark.mindspore
@pytest.mark.parametrize("case", ["ascend-1x8", "ascend-2x8", "ascend-2x8-910b", "cpu-1x1"])
def test_msrun_accepts_the_rendered_flags(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """msrun's own parser (MindSpore 2.10) reads every rendered flag: names and value formats."""
    pytest.importorskip("mindspore")
    from mindspore.parallel.cluster import run as msrun

    for pod in rendered_case(case).pods:
        cmd = container(pod)["command"]
        assert cmd[:4] == ["python", "-m", "mnv2_trainer.launch", "msrun"]
        monkeypatch.setattr("sys.argv", cmd[3:])
        args = msrun.get_args()
        index = int(pod["metadata"]["labels"][render.LABEL_INDEX])
        per_node = CASES[case]["spec"]["devicesPerNode"]
        assert (args.join, args.node_rank, args.tail_worker_log) == (True, index, str(index * per_node))
        assert (args.task_script, args.task_script_args[:2]) == ("python", ["-m", "mnv2_trainer.train"])
        assert bool(args.bind_core) is ("--bind_core=True" in cmd)


def test_cpu_pods_have_no_device_resources_selector_or_ascend_mounts() -> None:
    pod = rendered_case("cpu-1x1").pods[0]
    text = json.dumps(pod)
    assert "Ascend" not in text and "huawei" not in text
    assert "nodeSelector" not in pod["spec"]
    assert "resources" not in container(pod)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}  # digits makes its own data


def test_gang_scheduling() -> None:
    result = rendered_case("ascend-2x8")
    (group,) = of_kind(result.objects, "PodGroup")
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"] == {
        "minMember": 2,
        "queue": "research",
        "priorityClassName": "training-high",
        "minResources": {"huawei.com/Ascend910": "16"},
    }
    for pod in result.pods:
        assert pod["metadata"]["annotations"] == {"scheduling.k8s.io/group-name": "mnv2-075-2x8"}
        assert pod["spec"]["schedulerName"] == "volcano"
        assert pod["spec"]["priorityClassName"] == "training-high"
        assert pod["spec"]["tolerations"] == [
            {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}
        ]
    plain = rendered_case("ascend-1x8")
    assert not of_kind(plain.objects, "PodGroup")
    assert "schedulerName" not in plain.pods[0]["spec"] and "annotations" not in plain.pods[0]["metadata"]


def test_validate_mode_runs_the_validator_on_the_checkpoint() -> None:
    spec = S.parse_spec(
        {
            **CASES["ascend-1x8"]["spec"],
            "mode": "validate",
            "checkpoint": "/output/ckpt/best.ckpt",
            "devicesPerNode": 1,
        }
    )
    cmd = container(render.render_job("v", "ns", UID, spec).pods[0])["command"]
    trainer = cmd[cmd.index("python", 1) :]
    assert trainer[:3] == ["python", "-m", "mnv2_trainer.validate"]
    assert trainer[trainer.index("--ckpt_path") + 1] == "/output/ckpt/best.ckpt"
    assert "--distribute" not in trainer and cmd[4:6] == ["--worker_num=1", "--local_worker_num=1"]


def test_config_map_holds_a_config_the_trainer_loads(tmp_path: Path) -> None:
    from mnv2_trainer.config import load_yaml

    (cm,) = of_kind(rendered_case("cpu-1x1").objects, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    config = load_yaml(path)  # rejects unknown keys and wrong types
    assert config["model"] == "mobilenet_v2_035_96" and config["num_classes"] == 10
    assert config["dataset"] == "digits" and config["device_target"] == "CPU"
    assert (config["batch_size"], config["image_resize"], config["lr"]) == (32, 32, 0.03)
    assert config["ckpt_save_dir"] == "/output/ckpt" and config["data_dir"] == "/data"


# --------------------------------------------------------------------------------------------------
# Learning-rate scaling
# --------------------------------------------------------------------------------------------------


def lr_of(**changes: Any) -> tuple[float, float]:
    spec_map = {**CASES["ascend-1x8"]["spec"], **changes}
    config, _ = render.training_config(S.parse_spec(spec_map))
    return config["lr"], config["min_lr"]


@pytest.mark.parametrize(
    ("changes", "lr"),
    [
        ({}, 0.3),  # 1 x 8 x 256 = the recipe's 2048
        ({"nodes": 2}, 0.6),  # 4096
        ({"nodes": 4}, 1.2),  # 8192
        ({"devicesPerNode": 1}, 0.0375),  # 256
        ({"config": {"batch_size": 128}}, 0.15),  # 1024
        ({"nodes": 2, "scaleLearningRate": False}, 0.3),
        ({"nodes": 2, "config": {"lr": 0.4}}, 0.4),  # an explicit lr is taken as given
    ],
)
def test_lr_scaling(changes: dict[str, Any], lr: float) -> None:
    assert lr_of(**changes)[0] == pytest.approx(lr)


def test_lr_note_in_config_map_explains_the_scaling() -> None:
    spec = S.parse_spec({**CASES["ascend-1x8"]["spec"], "nodes": 2})
    (cm,) = of_kind(render.render_job("j", "ns", UID, spec).objects, "ConfigMap")
    assert (
        "# lr 0.6 = recipe mobilenet_v2_0.75_ascend's 0.3 x global batch 4096 (256 x 2 nodes x 8 devices) / 2048"
        in (cm["data"]["config.yaml"])
    )


# --------------------------------------------------------------------------------------------------
# Errors and the CLI
# --------------------------------------------------------------------------------------------------


def test_job_name_too_long_for_hostnames_is_a_spec_error() -> None:
    spec = S.parse_spec(CASES["cpu-1x1"]["spec"])
    with pytest.raises(S.SpecError, match=r"metadata.name: .* at most 51"):
        render.render_job("j" * 52, "ns", UID, spec)
    render.render_job("j" * 51, "ns", UID, spec)


def test_render_cli_invalid_spec_exits_1_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = copy.deepcopy(CASES["ascend-1x8"])
    bad["spec"]["modle"] = bad["spec"].pop("model")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli.main(["render", "-f", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "spec.modle: unknown field; did you mean 'model'?" in captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: Pod\n", "expected one MobileNetV2TrainingJob document, found 0"),
        (
            "apiVersion: training.mnv2.dev/v1\nkind: MobileNetV2TrainingJob\nmetadata: {name: a}\n",
            "apiVersion",
        ),
        (
            "apiVersion: training.mnv2.dev/v1alpha1\nkind: MobileNetV2TrainingJob\nspec: {}\n",
            "metadata.name: required",
        ),
        ("a: [", "not valid YAML"),
    ],
)
def test_render_cli_bad_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(content)
    assert cli.main(["render", "-f", str(path)]) == 1
    assert message in capsys.readouterr().err
    assert cli.main(["render", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_render_cli_json_and_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNV2_POLICY", POLICY_JSON)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(CASES["ascend-2x8"]))
    assert cli.main(["render", "-f", str(path), "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["kind"] for i in listed["items"]].count("Pod") == 2
    assert cli.main(["render", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "# Objects the operator creates for MobileNetV2TrainingJob ml/mnv2-075-2x8 (attempt 0)."
    )
    assert sum(1 for d in yaml.safe_load_all(out) if d) == 8


def test_render_cli_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(CASES["cpu-1x1"])))
    assert cli.main(["render", "-f", "-"]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert kinds == ["Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Pod"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainer_accepts_the_rendered_command_line(case: str, tmp_path: Path) -> None:
    """The flags after `python -m mnv2_trainer.train` parse with the trainer's own parser (no MindSpore)."""
    from mnv2_trainer.config import parse_args

    result = rendered_case(case)
    (cm,) = of_kind(result.objects, "ConfigMap")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cm["data"]["config.yaml"])
    cmd = container(result.pods[0])["command"]
    argv = cmd[cmd.index("mnv2_trainer.train") + 1 :]
    argv[argv.index("--config") + 1] = str(config_file)
    parsed = parse_args(argv)
    assert parsed["distribute"] is True
    assert (parsed["data_dir"], parsed["ckpt_save_dir"], parsed["resume"]) == (
        "/data",
        "/output/ckpt",
        "auto",
    )
    expected = {k: v for k, v in result.config.items()}
    assert {k: parsed[k] for k in expected} == expected
