"""Fuzzing the spec parser and the renderer with mutated example jobs (seeded, so every run is the same).

Each job is an example from manifests/examples with a few mutations: wrong types, huge sizes, unicode,
hostile paths, injection strings, loader variables, pod-level choices beyond the admin's policy. For
every one, the parser and the renderer must either refuse it cleanly (``SpecError``, each problem
naming a field) or render pods that stay within the policy, checked here independently of
``policy.py``; and no job may make them use unbounded memory.
"""

from __future__ import annotations

import copy
import functools
import pickle
import random
import re
import time
import tracemalloc
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from mnv2_operator import render as R
from mnv2_operator import spec as S
from mnv2_operator import validation as V
from mnv2_operator.policy import OperatorPolicy
from support import REPO_ROOT

ROOT = REPO_ROOT
EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "manifests" / "examples").glob("*.yaml"))]
SEED = 13
JOBS = 600
#: Peak memory one job's parsing and rendering may take (tracemalloc, sampled jobs).
MEMORY_BOUND = 48 * 2**20

DATASET_PREFIX, OUTPUT_PREFIX = "/mnt/datasets", "/mnt/runs"
IMAGE_PREFIX = "registry.example.com/ml/"
POLICY = OperatorPolicy.from_mapping(
    {
        "hostPath": {"datasetPrefixes": [DATASET_PREFIX], "outputPrefixes": [OUTPUT_PREFIX]},
        "imagePrefixes": [IMAGE_PREFIX],
        "priorityClassNames": ["training"],
        "schedulerNames": ["volcano"],
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists"}],
        "nodeSelectorKeys": ["pool"],
        "imagePullSecrets": ["regcred"],
    }
)
DEFAULTS = S.OperatorDefaults(policy=POLICY)
#: Host files the operator itself mounts read-only on Ascend pods (the NPU driver, its install info, the
#: node's time zone), not the job's choice.
OPERATOR_HOST_PATHS = (
    "/usr/local/Ascend/",
    "/etc/ascend_install.info",
    "/usr/local/sbin/npu-smi",
    "/etc/localtime",
)
#: Node label keys the operator's defaults set on Ascend pods (from jobDefaults and the job's chip).
OPERATOR_SELECTOR_KEYS = ("accelerator-type",)

#: ``spec.<path>: ...`` or ``metadata.name: ...``, with list indexes.
NAMED = re.compile(r'^(spec|metadata)(\.[A-Za-z0-9_-]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*: .+', re.S)

STRINGS = [
    "",
    " ",
    "ü",
    "\u202eevil",
    "\x00",
    "😀",
    "a\nb",
    "\t",
    "x" * 300,
    "x" * 70_000,
    "/",
    "/etc",
    "/etc/shadow",
    "..",
    "../../../etc",
    "a/../../b",
    "/mnt/datasets/../../etc",
    "/mnt/datasets-x",
    "/mnt/runs/$(HOME)",
    "$(HOME)",
    "$$(HOME)",
    "${HOME}",
    "//x",
    "/output/ckpt/../../etc/passwd",
    "/output/ckpt/x.ckpt\n--resume=/etc",
    "x'],metadata.name",
    "metadata.annotations['x']",
    "{{ 7*7 }}",
    "{% raw %}",
    "a: b\nc: d",
    '"; rm -rf / #',
    "--ckpt_path=/etc/passwd",
    "LD_PRELOAD",
    "A B",
    "a..b",
    "-a",
    "A",
    "huawei.com/Ascend910",
    "kubernetes.io/cpu",
    "system-node-critical",
    "default-scheduler",
    "my-scheduler",
    "docker.io/attacker/miner:latest",
    "registry.example.com/ml/trainer:1",
    "registry.example.com/ml-evil/x",
    "Registry/X",
    "1e1000",
    "-1",
    "Infinity",
    "NaN",
    "16Gi",
    "500m",
    "0",
    "1_000",
    "\u0661",
    "training",
    "regcred",
    "volcano",
]
SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 7, 1024, 1025, 2**63, -(2**63), 10**5000, 1.5, float("inf"), float("nan"), [], {},
]  # fmt: skip
HOSTILE_ENV = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PATH",
    "CXX",
    "CC",
    "HOME",
    "KUBECONFIG",
    "GCONV_PATH",
    "ASCEND_CUSTOM_OPP_PATH",
    "KUBERNETES_SERVICE_HOST",
    "HTTPS_PROXY",
    "MNV2_ATTEMPT",
    "A B",
    "1X",
    "X=Y",
    "ü",
    "GLOG_v",
    "OMP_NUM_THREADS",
]
#: Dotted spec paths the mutations aim at (besides whatever the example already has).
PATHS = [
    "mode",
    "model",
    "model.name",
    "model.numClasses",
    "recipe",
    "config",
    "config.batch_size",
    "config.lr",
    "dataset",
    "dataset.type",
    "dataset.pvc.claimName",
    "dataset.pvc.subPath",
    "dataset.hostPath",
    "dataset.hostPath.path",
    "dataset.trainSplit",
    "dataset.valSplit",
    "output",
    "output.pvc.claimName",
    "output.pvc.subPath",
    "output.hostPath.path",
    "output.emptyDir.sizeLimit",
    "resume",
    "checkpoint",
    "nodes",
    "devicesPerNode",
    "accelerator.type",
    "accelerator.resourceName",
    "accelerator.nodeSelector",
    "accelerator.tolerations",
    "image",
    "imagePullPolicy",
    "imagePullSecrets",
    "resources.requests.cpu",
    "resources.limits.memory",
    "shmSize",
    "env",
    "clusterTimeoutSeconds",
    "runPolicy.backoffLimit",
    "runPolicy.activeDeadlineSeconds",
    "scheduling.schedulerName",
    "scheduling.priorityClassName",
    "scheduling.queue",
    "scheduling.gang",
    "serviceAccountName",
    "hostNetwork",
]


def _value(rng: random.Random, path: str) -> Any:
    """A hostile or odd value, sometimes shaped for the field at ``path``."""
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(STRINGS)
    if roll < 0.55:
        return copy.deepcopy(rng.choice(SCALARS))
    if path.endswith("env") or roll < 0.62:
        n = rng.choice([1, 3, 65, 2000])
        return {
            rng.choice(HOSTILE_ENV) if i < 3 else f"E{i}": rng.choice(["1", "x" * rng.choice([10, 5000])])
            for i in range(n)
        }
    if path.endswith("tolerations") or roll < 0.7:
        patterns = [
            {"operator": "Exists"},
            {"key": "huawei.com/Ascend910", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
            {"key": rng.choice(STRINGS), "value": rng.choice(STRINGS)},
            {"key": "k", "tolerationSeconds": rng.choice([-1, 10, 2**40])},
        ]
        return [rng.choice(patterns) for _ in range(rng.choice([1, 2, 17, 5000]))]
    if path.endswith("nodeSelector") or roll < 0.78:
        return rng.choice(
            [
                {},
                {"pool": "a"},
                {"kubernetes.io/hostname": "master-1"},
                {rng.choice(STRINGS): rng.choice(STRINGS)},
                {f"k{i}": "v" for i in range(rng.choice([2, 40]))},
            ]
        )
    if path.endswith("hostPath") or roll < 0.86:
        return {
            "path": rng.choice(
                [
                    DATASET_PREFIX + "/imagenet",
                    OUTPUT_PREFIX + "/job",
                    DATASET_PREFIX,
                    "/",
                    "/etc",
                    "/var/run/docker.sock",
                    DATASET_PREFIX + "/../../etc",
                    DATASET_PREFIX + "/a/./b",
                    OUTPUT_PREFIX + "/$(X)",
                    rng.choice(STRINGS),
                ]
            )
        }
    if roll < 0.92:
        return [rng.choice(STRINGS) for _ in range(rng.choice([1, 9, 3000]))]
    return {rng.choice(STRINGS): rng.choice(STRINGS + SCALARS[:8]) for _ in range(rng.choice([1, 5, 200]))}


#: Well-formed values: they pass the parser, so the policy decides (in or out of what it allows).
PLAUSIBLE: list[tuple[str, Any]] = [
    ("dataset", {"type": "imagefolder", "hostPath": {"path": DATASET_PREFIX + "/imagenet"}}),
    ("dataset", {"type": "imagefolder", "hostPath": {"path": "/etc"}}),
    ("dataset", {"type": "imagefolder", "hostPath": {"path": OUTPUT_PREFIX + "/x"}}),
    ("dataset", {"type": "imagefolder", "hostPath": {"path": "/mnt/datasets-other"}}),
    ("output", {"hostPath": {"path": OUTPUT_PREFIX + "/job-1"}}),
    ("output", {"hostPath": {"path": "/var/lib/kubelet"}}),
    ("output", {"hostPath": {"path": DATASET_PREFIX}}),
    ("image", IMAGE_PREFIX + "mnv2-trainer:2"),
    ("image", "docker.io/attacker/miner:latest"),
    ("image", "registry.example.com/ml-evil/x:1"),
    ("image", S.DEFAULT_IMAGE),
    ("scheduling.priorityClassName", "training"),
    ("scheduling.priorityClassName", "system-node-critical"),
    ("scheduling.schedulerName", "volcano"),
    ("scheduling.schedulerName", "default-scheduler"),
    ("scheduling.schedulerName", "my-scheduler"),
    ("accelerator.tolerations", [{"key": "huawei.com/Ascend910", "operator": "Exists"}]),
    ("accelerator.tolerations", [{"operator": "Exists"}]),
    ("accelerator.tolerations", [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
    ("accelerator.nodeSelector", {"accelerator": "huawei-Ascend910", "pool": "b"}),
    ("accelerator.nodeSelector", {"kubernetes.io/hostname": "master-1"}),
    ("accelerator.nodeSelector", {}),
    ("accelerator.type", "cpu"),
    ("accelerator.resourceName", "huawei.com/Ascend910B"),
    ("imagePullSecrets", ["regcred"]),
    ("scheduling", {"gang": True, "queue": "default"}),
    ("scheduling", {"gang": True, "queue": "other-team"}),
    ("imagePullSecrets", ["other-secret"]),
    ("env", {"GLOG_v": "2", "OMP_NUM_THREADS": "4"}),
    ("env", {"ü": "1"}),
    ("nodes", 3),
    ("nodes", 1024),
    ("devicesPerNode", 4),
    ("shmSize", "2Gi"),
    ("resources", {"requests": {"cpu": "500m", "memory": "1Gi"}}),
    ("resume", "/output/ckpt/mobilenet_v2_075-3_100.ckpt"),
    ("output", {"pvc": {"claimName": "runs", "subPath": "team/a"}}),
]


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    node = tree
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _existing_paths(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return []
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.append(path)
        out += _existing_paths(value, path + ".")
    return out


def mutated_jobs(seed: int = SEED, count: int = JOBS) -> list[tuple[str, dict[str, Any]]]:
    """``count`` (name, spec) pairs, each an example with 1..4 mutations."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        example = copy.deepcopy(rng.choice(EXAMPLES))
        spec = example["spec"]
        name = example["metadata"]["name"]
        for path, value in rng.sample(PLAUSIBLE, rng.randint(0, 3)):
            _set(spec, path, copy.deepcopy(value))
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            if rng.random() < 0.04:
                name = rng.choice(["a" * 60, "A", "x.y", "-x", "ü", "x" * 52, "ok-name"])
                continue
            path = rng.choice(PATHS + _existing_paths(spec))
            if rng.random() < 0.1:
                node = spec
                *parents, last = path.split(".")
                for part in parents:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(last, None)
                continue
            _set(spec, path, _value(rng, path))
        jobs.append((name, spec))
    return jobs


def _show(obj: Any, limit: int) -> str:
    """``repr`` up to about ``limit`` characters; integers too long for ``repr`` are described instead."""
    pickled = pickle.loads(pickle.dumps(obj))  # a copy to shorten in place

    def shorten(node: Any) -> Any:
        if isinstance(node, int) and not isinstance(node, bool) and node.bit_length() > 64:
            return f"<{node.bit_length()}-bit int>"
        if isinstance(node, dict):
            return {shorten(k): shorten(v) for k, v in node.items()}
        if isinstance(node, list):
            return [shorten(v) for v in node]
        return node

    return repr(shorten(pickled))[:limit]


# --------------------------------------------------------------------------------------------------
# The independent policy check of rendered pods
# --------------------------------------------------------------------------------------------------


def violations(pod: dict[str, Any], job: str, user_env: Any = ()) -> list[str]:
    """How a rendered pod breaks the admin's policy or the operator's own rules (empty: it does not).

    ``user_env``: the names the job's spec.env asked for (the operator's own variables are its business).
    """
    found = []
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    containers = spec["containers"] + spec.get("initContainers", [])
    mounts = {m["name"]: m for c in containers for m in c.get("volumeMounts", [])}
    for name, volume in volumes.items():
        if "hostPath" not in volume:
            continue
        path = volume["hostPath"]["path"]
        if path.startswith(OPERATOR_HOST_PATHS):
            if not mounts[name].get("readOnly"):
                found.append(f"driver hostPath {path} writable")
            continue
        if name == "data" and not (V.under(path, (DATASET_PREFIX,)) and mounts[name].get("readOnly")):
            found.append(f"dataset hostPath {path}")
        elif name == "output" and not V.under(path, (OUTPUT_PREFIX,)):
            found.append(f"output hostPath {path}")
        elif name not in ("data", "output"):
            found.append(f"unexpected hostPath {name}: {path}")
        if (
            path == "/"
            or ".." in path.split("/")
            or "$(" in path
            or volume["hostPath"].get("type") != "Directory"
        ):
            found.append(f"hostPath {path} {volume['hostPath'].get('type')}")
    for c in containers:
        image = c["image"]
        if image != S.DEFAULT_IMAGE and not image.startswith(IMAGE_PREFIX):
            found.append(f"image {image}")
        for arg in c.get("command", []) + c.get("args", []):
            if "$(" in arg:
                found.append(f"expandable argument {arg!r}")
        sc = c.get("securityContext") or {}
        if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False:
            found.append("privilege escalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            found.append("capabilities")
        for env in c.get("env", []):
            if env["name"] in user_env and (
                V.denied_env(env["name"]) or not V.ENV_NAME.fullmatch(env["name"])
            ):
                found.append(f"env {env['name']}")
    if spec.get("priorityClassName") not in (None, "training"):
        found.append(f"priorityClassName {spec['priorityClassName']}")
    if spec.get("schedulerName") not in (None, "volcano", "default-scheduler"):
        found.append(f"schedulerName {spec['schedulerName']}")
    for t in spec.get("tolerations", []):
        if t.get("key") != "huawei.com/Ascend910" or t.get("operator") != "Exists":
            found.append(f"toleration {t}")
    selector = spec.get("nodeSelector", {})
    ascend = any(
        v.get("hostPath", {}).get("path", "").startswith("/usr/local/Ascend") for v in volumes.values()
    )
    for key in set(selector) | set(S.DEFAULT_NODE_SELECTOR):
        default = S.DEFAULT_NODE_SELECTOR.get(key) if ascend else None
        if key != "pool" and key not in OPERATOR_SELECTOR_KEYS and selector.get(key) != default:
            found.append(f"nodeSelector {key}")
    for secret in spec.get("imagePullSecrets", []):
        if secret["name"] != "regcred":
            found.append(f"imagePullSecret {secret['name']}")
    if spec["serviceAccountName"] != f"{job}-trainer":
        found.append(f"serviceAccountName {spec['serviceAccountName']}")
    if (
        spec.get("automountServiceAccountToken") is not False
        or spec.get("hostNetwork")
        or spec.get("hostPID")
    ):
        found.append("automount token / host namespaces")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(key)
    return found


# --------------------------------------------------------------------------------------------------


def test_mutated_jobs_are_refused_cleanly_or_rendered_within_the_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # kubernetes-validate parses its JSON schema files on every call: parse each once here.
    monkeypatch.setattr(
        kubernetes_validate.utils,
        "schema_contents",
        functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents),
    )
    started = time.perf_counter()
    jobs = mutated_jobs()
    assert len(jobs) >= 500
    refused = rendered = 0
    problems: list[str] = []
    peaks: list[int] = []
    for n, (name, spec) in enumerate(jobs):
        sampled = n % 10 == 0 or len(pickle.dumps(spec)) > 50_000
        if sampled:
            tracemalloc.start()
        try:
            try:
                parsed = S.parse_spec(spec)
                nodes = parsed.nodes
                # The first and the last pod: the pods differ only in rank (rank 0 holds the token).
                result = R.render_job(name, "team", "uid", parsed, defaults=DEFAULTS, ranks={0, nodes - 1})
            except S.SpecError as err:
                refused += 1
                assert err.problems, f"job {n}: a refusal without problems"
                # The message goes into the job's status and an Event: bounded whatever the input.
                assert len(str(err)) < 16 * 1024, f"job {n}: a {len(str(err))}-character message"
                for problem in err.problems:
                    if not NAMED.match(problem):
                        problems.append(f"job {n}: refusal names no field: {problem[:200]!r}")
                continue
            finally:
                if sampled:
                    peaks.append(tracemalloc.get_traced_memory()[1])
                    tracemalloc.stop()
        except Exception as err:  # anything but a clean refusal is a finding
            raise AssertionError(
                f"job {n} raised {type(err).__name__}: {err}\nspec: {_show(spec, 2000)}"
            ) from err
        rendered += 1
        # What the API server would refuse by its schema (types, required fields): the rank-0 pod of
        # every job, every object of every tenth (PodGroups are Volcano's, not in the schemas).
        checked = result.all() if rendered % 10 == 0 else result.pods[:1]
        for obj in checked:
            if obj["kind"] != "PodGroup":
                try:
                    kubernetes_validate.validate(obj, "1.37.0", strict=True)
                except kubernetes_validate.ValidationError as err:
                    problems.append(f"job {n}: {obj['kind']} the API server would refuse: {err}")
        for group in (o for o in result.objects if o["kind"] == "PodGroup"):
            if group["spec"].get("queue", "default") != "default":
                problems.append(f"job {n}: PodGroup in queue {group['spec']['queue']}")
        for pod in result.pods:
            for v in violations(pod, name, set(parsed.env)):
                problems.append(f"job {n}: rendered pod breaks the policy: {v}")
    assert problems == []
    # Both outcomes are exercised (a fuzzer that only produces refusals proves little).
    assert refused >= 100 and rendered >= 50, (refused, rendered)
    assert max(peaks) < MEMORY_BOUND, max(peaks)
    assert time.perf_counter() - started < 120  # ~15 s on a loaded 2-core machine


def test_the_fuzzer_is_seeded() -> None:
    assert pickle.dumps(mutated_jobs(count=20)) == pickle.dumps(mutated_jobs(count=20))
    assert pickle.dumps(mutated_jobs(count=20)) != pickle.dumps(mutated_jobs(seed=SEED + 1, count=20))


def test_the_policy_check_of_rendered_pods_can_fail() -> None:
    """The independent checker notices a pod beyond the policy (else the fuzz test proves nothing)."""
    spec = S.parse_spec(copy.deepcopy(EXAMPLES[0]["spec"]))
    (pod,) = R.render_job("j", "team", "uid", spec, defaults=DEFAULTS).pods
    assert violations(pod, "j") == []
    bad = copy.deepcopy(pod)
    bad["spec"]["volumes"].append({"name": "data", "hostPath": {"path": "/etc", "type": "Directory"}})
    bad["spec"]["containers"][0]["image"] = "docker.io/x/y"
    bad["spec"]["priorityClassName"] = "system-node-critical"
    bad["spec"]["tolerations"] = [{"operator": "Exists"}]
    bad["spec"]["containers"][0]["env"].append({"name": "LD_PRELOAD", "value": "/x.so"})
    bad["spec"]["serviceAccountName"] = "default"
    found = " ".join(violations(bad, "j", {"LD_PRELOAD"}))
    for word in (
        "hostPath /etc",
        "image",
        "priorityClassName",
        "toleration",
        "LD_PRELOAD",
        "serviceAccountName",
    ):
        assert word in found, (word, found)
