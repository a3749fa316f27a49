"""The `MobileNetV2TrainingJob` custom resource as pydantic models: the single source of truth.

The CRD (``crd.py``) is generated from these models, so every ``description`` here becomes
``kubectl explain`` text and every constraint here is also enforced by the API server. Field names are
snake_case in Python and camelCase in YAML (``devices_per_node`` <-> ``devicesPerNode``); both are
accepted when building models in Python.

A minimal job names a model and a dataset; everything else has a default::

    spec:
      model: {name: mobilenet_v2_075}
      dataset: {type: imagefolder, pvc: {claimName: imagenet}}
      output: {pvc: {claimName: mnv2-runs}}

``parse_spec`` validates a spec mapping and raises :class:`SpecError` listing every problem as
``spec.<camelCase path>: <problem>; <fix>``. Checks that need several fields (validate mode needs a
checkpoint, devices per node allowed by the accelerator, ...) and the training config (recipe name,
MindCV-key overrides, resolved by ``mnv2_trainer.config``) run after the per-field checks.

Defaults that a cluster administrator may want to change (trainer image, accelerator resource name and
node selector) are not baked into the CRD: they are left empty in a stored job and filled in at render
time from :class:`OperatorDefaults`, which the operator reads from its environment (``MNV2_DEFAULT_*``,
set by the Helm chart's ``jobDefaults``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from mnv2_operator import __version__
from mnv2_operator import constants as C
from mnv2_operator import validation as V
from mnv2_operator.policy import OperatorPolicy

#: Trainer image when neither the job nor the operator's environment names one. Same repository as
#: the Helm chart's ``jobDefaults.trainerImage`` and tagged with this package's version (the chart's
#: appVersion), so chart and operator agree out of the box.
DEFAULT_IMAGE = f"ghcr.io/mnv2-operator/mnv2-trainer:{__version__}"
DEFAULT_RESOURCE_NAME = "huawei.com/Ascend910"
DEFAULT_NODE_SELECTOR: dict[str, str] = {"accelerator": "huawei-Ascend910"}

#: Ascend chip generations a job can ask for, and the value of MindCluster's node label
#: ``accelerator-type`` on the servers that carry them: Atlas 800 training servers (Ascend 910) are
#: labelled ``module``, Atlas 800T A2 servers (Ascend 910B, 8 NPUs) ``module-910b-8``. MindCluster's
#: Volcano NPU plugin also picks its placement rules from this label in the pod's node selector (and
#: falls back to the 910 rules without it), so a job's pods must name it.
ACCELERATOR_TYPE_LABEL = "accelerator-type"
ASCEND_CHIPS = ("Ascend910", "Ascend910B")
DEFAULT_CHIP = "Ascend910"
DEFAULT_ACCELERATOR_TYPES: dict[str, str] = {"Ascend910": "module", "Ascend910B": "module-910b-8"}
#: GID of the NPU driver's run group HwHiAiUser (MindCluster's default, the same on every node). The
#: device nodes /dev/davinci* belong to it (mode 0660); training pods get it as a supplemental group.
DEFAULT_HWHIAIUSER_GID = 1000
#: msrun's --cluster_time_out for one node, and for several (rank 0's window opens when its container
#: starts, while other nodes may still be pulling a 10+ GB CANN image).
DEFAULT_CLUSTER_TIMEOUT = 600
DEFAULT_MULTI_NODE_CLUSTER_TIMEOUT = 1800
DEFAULT_RECIPE = "mobilenet_v2_0.75_ascend"

#: Where the pod mounts things. The trainer gets these paths as command-line flags, so they are part of
#: the contract (docs/interfaces.md).
DATA_MOUNT = "/data"
OUTPUT_MOUNT = "/output"
CONFIG_MOUNT = "/etc/mnv2"

#: Devices one Ascend 910 pod may take: HCCL's rings inside an 8-NPU server are built from 1, 2, 4
#: or all 8 chips (MindX DL rejects other counts). Atlas 800T A2 (910B) servers take any count up to 8.
ASCEND_DEVICE_COUNTS = (1, 2, 4, 8)
ASCEND_DEVICE_COUNTS_BY_CHIP: dict[str, tuple[int, ...]] = {
    "Ascend910": ASCEND_DEVICE_COUNTS,
    "Ascend910B": tuple(range(1, 9)),
}
MAX_DEVICES_PER_NODE = 8

#: Config keys the spec owns: setting them under ``config`` would silently fight the spec's own field.
SPEC_OWNED_CONFIG_KEYS: dict[str, str] = {
    "model": "spec.model.name",
    "num_classes": "spec.model.numClasses",
    "dataset": "spec.dataset.type",
    "data_dir": "spec.dataset (the volume is mounted at /data)",
    "train_split": "spec.dataset.trainSplit",
    "val_split": "spec.dataset.valSplit",
    "ckpt_save_dir": "spec.output (checkpoints go to /output/ckpt)",
    "ckpt_path": "spec.checkpoint",
    "resume": "spec.resume",
    "distribute": "spec.nodes and spec.devicesPerNode",
    "device_target": "spec.accelerator.type",
    "config": "nothing (the operator mounts the config file)",
}


#: Environment variables the operator sets in the trainer container.
RESERVED_ENV: dict[str, str] = {
    "MNV2_JOB_NAME": "the job's name, for status reports",
    "MNV2_JOB_NAMESPACE": "the job's namespace, for status reports",
    "MNV2_NODE_RANK": "the pod's node rank",
    "MNV2_ATTEMPT": "the attempt number",
    "ASCEND_VISIBLE_DEVICES": "the NPUs the device plugin allocated",
    "ASCEND_PROCESS_LOG_PATH": "CANN's process logs, under the attempt's log folder",
}


class SpecError(ValueError):
    """An invalid job spec. ``problems`` holds one ``spec.<path>: <problem>; <fix>`` line each."""

    #: Problems listed at most: the message goes into the job's status and an Event.
    MAX_PROBLEMS = 20

    def __init__(self, problems: list[str]):
        problems = list(problems)
        if len(problems) > self.MAX_PROBLEMS:
            more = len(problems) - self.MAX_PROBLEMS + 1
            problems = problems[: self.MAX_PROBLEMS - 1] + [
                f"spec: {more} more problems not shown; fix the ones above and apply again"
            ]
        self.problems = problems
        super().__init__("invalid MobileNetV2TrainingJob spec:\n" + "\n".join(f"  {p}" for p in problems))


class _Model(BaseModel):
    """camelCase in YAML, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=False
    )


Quantity = str | int

# Upper bounds of every size in a spec: one job must not be able to make the operator (or the API
# server) spend unbounded memory or CPU rendering it. Generous for real jobs.
#: Largest CPU amount of one container (cores).
MAX_CPU = Decimal(1024)
#: Largest memory amount of one container, /dev/shm or scratch volume (16 TiB).
MAX_MEMORY = Decimal(16 * 2**40)
MAX_ENV_ENTRIES = 64
#: Largest total size of spec.env (names and values, bytes of UTF-8).
MAX_ENV_BYTES = 32 * 1024
MAX_ENV_VALUE = 4096
MAX_CONFIG_KEYS = 128
#: Largest spec.config as JSON (bytes).
MAX_CONFIG_BYTES = 64 * 1024
MAX_TOLERATIONS = 16
MAX_NODE_SELECTOR = 16
MAX_PULL_SECRETS = 8
MAX_NODES = 1024


def _quantity(value: Quantity | None, maximum: Decimal, unit: str, example: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) > 64:
        raise ValueError(f"{value[:20]!r}... is not a Kubernetes quantity; write e.g. {example}")
    return V.bounded_quantity(value, maximum, unit, example)


def _memory(value: Quantity | None) -> str | None:
    return _quantity(value, MAX_MEMORY, "amount of memory (16Ti)", "16Gi")


def _check(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------


class ModelSpec(_Model):
    """Which MobileNetV2 to train."""

    name: str = Field(
        max_length=64,
        description=(
            "MindCV model name, e.g. mobilenet_v2_075 (width 0.75, 224x224 input) or "
            "mobilenet_v2_035_96. Every MobileNetV2 name MindCV registers is accepted."
        ),
    )
    num_classes: int | None = Field(
        default=None,
        ge=2,
        le=100000,
        description="Number of output classes. Default: 10 for the digits dataset, else 1000 (ImageNet-1K).",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from mnv2_trainer.model_names import UnknownModelError, check_model_name

        try:
            return check_model_name(name)
        except UnknownModelError as err:
            raise ValueError(str(err)) from None


class PVCSource(_Model):
    """A PersistentVolumeClaim in the job's namespace."""

    claim_name: str = Field(
        min_length=1, max_length=V.DNS1123_SUBDOMAIN_MAX, description="Name of the PersistentVolumeClaim."
    )
    sub_path: str | None = Field(
        default=None,
        max_length=V.PATH_MAX,
        description="Folder inside the volume to mount instead of its root (relative, no '..').",
    )
    read_only: bool | None = Field(
        default=None,
        description="Mount read-only. Default: true for the dataset, false for the output.",
    )

    @field_validator("claim_name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        _check(V.dns1123_subdomain(value, "claim name"))
        return value

    @field_validator("sub_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None:
            _check(V.relative_path(value))
        return value


class HostPathSource(_Model):
    """A folder on the node (every node of a multi-node job must have it).

    Refused unless the cluster admin allows a prefix of it in the operator's policy
    (``policy.hostPath`` of the Helm chart); see docs/install.md.
    """

    path: str = Field(
        min_length=1,
        max_length=V.PATH_MAX,
        description=(
            "Absolute, normalised path of an existing folder on the node, under a prefix the cluster admin "
            "allows (policy.hostPath of the operator's chart); without such a prefix hostPath is refused."
        ),
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        _check(V.absolute_path(value, "/mnt/imagenet"))
        return value


class EmptyDirSource(_Model):
    """A scratch folder that lives as long as the pod."""

    size_limit: Quantity | None = Field(default=None, description="Size limit, e.g. 10Gi.")

    @field_validator("size_limit")
    @classmethod
    def _quantity(cls, value: Quantity | None) -> str | None:
        return _memory(value)


class DatasetSpec(_Model):
    """The training and validation data, mounted at /data in every pod."""

    type: Literal["imagefolder", "synthetic", "digits"] = Field(
        default="imagefolder",
        description=(
            "imagefolder: ImageNet layout, <root>/<trainSplit>/<class>/*.JPEG and <root>/<valSplit>/...; "
            "synthetic: random images of the model's input size (throughput tests, no volume); "
            "digits: scikit-learn's 8x8 handwritten digits as 32x32 images (smoke tests, no volume)."
        ),
    )
    pvc: PVCSource | None = Field(
        default=None,
        description="Read the data from this PersistentVolumeClaim (ReadOnlyMany for several nodes).",
    )
    host_path: HostPathSource | None = Field(
        default=None, description="Read the data from a folder on the node."
    )
    train_split: str = Field(
        default="train",
        min_length=1,
        max_length=V.PATH_MAX,
        description="Sub-folder with the training images (relative, no '..').",
    )
    val_split: str = Field(
        default="val",
        min_length=1,
        max_length=V.PATH_MAX,
        description="Sub-folder with the validation images (relative, no '..').",
    )

    @field_validator("train_split", "val_split")
    @classmethod
    def _relative(cls, value: str) -> str:
        _check(V.relative_path(value, "train"))
        return value


class OutputSpec(_Model):
    """Where checkpoints, metrics.jsonl and logs go, mounted at /output in every pod.

    Checkpoints go to /output/ckpt, msrun's logs to /output/logs/<attempt>.
    """

    pvc: PVCSource | None = Field(
        default=None,
        description=(
            "Write to this PersistentVolumeClaim (recommended: checkpoints survive restarts, so a failed "
            "attempt resumes; ReadWriteMany when the job has several nodes)."
        ),
    )
    host_path: HostPathSource | None = Field(
        default=None,
        description="Write to a folder on the node (single-node jobs: a restart may land on another node).",
    )
    empty_dir: EmptyDirSource | None = Field(
        default=None,
        description=(
            "Write to a scratch folder deleted with the pod: checkpoints are lost, so a restart cannot "
            "resume. Allowed only with runPolicy.backoffLimit 0."
        ),
    )


class Toleration(_Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(
        default=None,
        max_length=V.DNS1123_SUBDOMAIN_MAX + 1 + V.QUALIFIED_NAME_MAX,
        description="Taint key to tolerate; empty with operator Exists matches all.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(
        default=None, max_length=V.LABEL_VALUE_MAX, description="Taint value to match with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31536000,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value:
            _check(V.qualified_name(value, "taint key"))
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str | None) -> str | None:
        if value:
            _check(V.label_value(value))
        return value


class AcceleratorSpec(_Model):
    """The device each worker process runs on."""

    type: Literal["ascend", "cpu"] = Field(
        default="ascend",
        description="ascend: one Ascend NPU per worker process; cpu: plain CPU processes (tests and demos).",
    )
    resource_name: str | None = Field(
        default=None,
        max_length=V.DNS1123_SUBDOMAIN_MAX + 1 + V.QUALIFIED_NAME_MAX,
        description=(
            "Extended resource the Ascend device plugin advertises; each pod requests devicesPerNode of it. "
            f"Default: the operator's configured default ({DEFAULT_RESOURCE_NAME} unless changed)."
        ),
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_NODE_SELECTOR,
        description=(
            "Labels the training nodes must have. Default: the operator's configured default "
            "(accelerator: huawei-Ascend910 unless changed); {} for none. Also used in cpu mode when given."
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_TOLERATIONS,
        description=(
            "Tolerations of the training pods, e.g. for tainted NPU nodes; only those the cluster admin "
            "allows (policy.tolerations of the operator's chart)."
        ),
    )
    chip: Literal["Ascend910", "Ascend910B"] | None = Field(
        default=None,
        description=(
            "Ascend chip generation: Ascend910 (Atlas 800 training server) or Ascend910B (Atlas 800T A2). "
            "Adds MindCluster's node label accelerator-type (module, module-910b-8) to the node selector, "
            "so every pod of a job lands on the same generation. Default: the operator's configured "
            f"default ({DEFAULT_CHIP} unless changed)."
        ),
    )
    volcano_npu_plugin: bool | None = Field(
        default=None,
        description=(
            "true when the cluster runs MindCluster's Volcano with the NPU plugin (and its device plugin "
            "with -volcanoType=true): the pods are scheduled by volcano and take ASCEND_VISIBLE_DEVICES "
            "from the NPU annotation Volcano writes. false: the device plugin's own ASCEND_VISIBLE_DEVICES "
            "is left alone (with any other scheduler that annotation is never written). Default: the "
            "operator's configured default (false unless changed)."
        ),
    )
    hw_hi_ai_user_gid: int | None = Field(
        default=None,
        ge=1,
        le=2147483647,
        description=(
            "GID of the NPU driver's run group HwHiAiUser on the nodes (the same on every node). The "
            "device nodes /dev/davinci* belong to it with mode 0660; the trainer gets it as a supplemental "
            f"group and needs no capability. Default: the operator's configured default "
            f"({DEFAULT_HWHIAIUSER_GID} unless changed)."
        ),
    )
    bind_core: bool = Field(
        default=True,
        description=(
            "Ascend: start msrun with --bind_core=True, which pins each worker process to CPU cores, those "
            "of its NPU's NUMA node where the image has npu-smi and lspci (as MindCV's distributed launch "
            "commands do). false turns it off."
        ),
    )

    @field_validator("resource_name")
    @classmethod
    def _resource_name(cls, value: str | None) -> str | None:
        if value is not None:
            _check(V.extended_resource_name(value))
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, label in (value or {}).items():
            _check(V.qualified_name(key, "node label key"))
            _check(V.label_value(label))
        return value


class ResourceList(_Model):
    """CPU and memory amounts (Kubernetes quantities)."""

    cpu: Quantity | None = Field(default=None, description="CPU cores, e.g. 24 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 256Gi.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: Quantity | None, info: ValidationInfo) -> str | None:
        if info.field_name == "cpu":
            return _quantity(value, MAX_CPU, "number of cores (1024)", "4 or 500m")
        return _memory(value)


class ResourcesSpec(_Model):
    """CPU and memory of each training container (the NPUs are added by the operator)."""

    requests: ResourceList | None = Field(
        default=None, description="Guaranteed amounts, used for scheduling."
    )
    limits: ResourceList | None = Field(default=None, description="Upper bounds.")


class RunPolicy(_Model):
    """How failures, time limits and cleanup are handled (as Kubeflow's training operators do)."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description=(
            "Gang restarts after a failure before the job is Failed. msrun cannot lose a member, so any "
            "failed pod restarts all pods, resuming from the latest checkpoint."
        ),
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job when it has been running longer than this, restarts included.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the job (and its children) this long after it Succeeded or Failed.",
    )
    clean_pod_policy: Literal["Running", "All", "None"] = Field(
        default="Running",
        description=(
            "Which pods to delete when the job finishes: Running (those still running), All, or None "
            "(keep them for their logs)."
        ),
    )
    suspend: bool = Field(
        default=False,
        description="true deletes the pods and keeps the job (phase Suspended); false again resumes from the latest checkpoint.",
    )


class SchedulingSpec(_Model):
    """Scheduler, priority and gang scheduling."""

    scheduler_name: str | None = Field(
        default=None,
        max_length=V.DNS1123_SUBDOMAIN_MAX,
        description=(
            "Scheduler of the pods. Default: the cluster's; volcano when gang is true. Only schedulers the "
            "cluster admin allows (policy.schedulerNames of the operator's chart)."
        ),
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=V.DNS1123_SUBDOMAIN_MAX,
        description=(
            "PriorityClass of the pods (and the PodGroup); only those the cluster admin allows "
            "(policy.priorityClassNames of the operator's chart)."
        ),
    )
    queue: str | None = Field(
        default=None,
        max_length=V.DNS1123_SUBDOMAIN_MAX,
        description="Volcano queue of the PodGroup; needs gang: true.",
    )
    gang: bool = Field(
        default=False,
        description=(
            "Gang scheduling with a Volcano PodGroup (minMember = nodes): all pods start together or none "
            "does, so a half-placed job never holds NPUs. Needs Volcano installed."
        ),
    )

    @field_validator("scheduler_name", "priority_class_name", "queue")
    @classmethod
    def _dns_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            what = {"scheduler_name": "scheduler name", "priority_class_name": "PriorityClass name"}
            _check(V.dns1123_subdomain(value, what.get(info.field_name or "", "queue name")))
        return value


class JobSpec(_Model):
    """What to train, on what data, where to write, and on which hardware."""

    mode: Literal["train", "validate"] = Field(
        default="train",
        description="train: train (and validate every epoch); validate: evaluate spec.checkpoint on the validation split.",
    )
    model: ModelSpec = Field(
        description="The network: a MindCV model name and the class count, e.g. {name: mobilenet_v2_075}."
    )
    recipe: str = Field(
        default=DEFAULT_RECIPE,
        min_length=1,
        max_length=128,
        description=(
            "Built-in training recipe (MindCV's YAML config, same keys), e.g. mobilenet_v2_0.75_ascend "
            "(8 cards x batch 256, 400 epochs, lr 0.3)."
        ),
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_CONFIG_KEYS,
        description=(
            "Overrides of recipe keys in MindCV's names, e.g. {epoch_size: 15, batch_size: 64, lr: 0.1}. "
            "Unknown keys are refused. An lr given here is used as is (never scaled)."
        ),
    )
    scale_learning_rate: bool = Field(
        default=True,
        description=(
            "Scale the recipe's learning rate linearly with the global batch "
            "(batch_size x nodes x devicesPerNode) relative to the recipe's (batch_size x 8 cards)."
        ),
    )
    dataset: DatasetSpec = Field(
        description="The data: an ImageNet-layout folder on a pvc or hostPath, or generated (synthetic, digits)."
    )
    output: OutputSpec | None = Field(
        default=None,
        description="Volume for checkpoints, metrics and logs. Required for train mode; validate mode may omit it.",
    )
    resume: str = Field(
        default="auto",
        min_length=1,
        max_length=V.PATH_MAX,
        description=(
            "auto: continue from the newest valid checkpoint in /output/ckpt, else start fresh; never: always "
            "start fresh; or the path of a checkpoint inside the pod (under /output/ or /data/)."
        ),
    )
    checkpoint: str | None = Field(
        default=None,
        max_length=V.PATH_MAX,
        description=(
            "Checkpoint to start from (train: pretrained weights) or to evaluate (validate: required), as a "
            "path inside the pod under /output/ or /data/, e.g. /output/ckpt/mobilenet_v2_075_best.ckpt."
        ),
    )
    nodes: int = Field(default=1, ge=1, le=MAX_NODES, description="Number of nodes, one pod each.")
    devices_per_node: int = Field(
        default=8,
        ge=1,
        le=MAX_DEVICES_PER_NODE,
        description=(
            "Worker processes (and NPUs) per pod. Ascend 910: 1, 2, 4 or 8. The global batch is "
            "batch_size x nodes x devicesPerNode."
        ),
    )
    accelerator: AcceleratorSpec = Field(
        default_factory=AcceleratorSpec, description="Device type and placement."
    )
    image: str | None = Field(
        default=None,
        max_length=V.IMAGE_MAX,
        description=(
            f"Trainer image (MindSpore + CANN + mnv2-trainer). Default: the operator's configured default "
            f"({DEFAULT_IMAGE} unless changed). Other images only under a prefix the cluster admin allows "
            "(policy.imagePrefixes of the operator's chart)."
        ),
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the trainer image."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        max_length=MAX_PULL_SECRETS,
        description=(
            "Names of Secrets for pulling the trainer image from a private registry; only those the cluster "
            "admin allows (policy.imagePullSecrets of the operator's chart)."
        ),
    )
    resources: ResourcesSpec | None = Field(
        default=None, description="CPU and memory of each training container (NPUs are added automatically)."
    )
    shm_size: Quantity = Field(
        default="16Gi",
        description="Size of the memory-backed /dev/shm (the data pipeline's worker processes share batches through it).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ENV_ENTRIES,
        description=(
            "Extra environment variables of the trainer, e.g. {GLOG_v: '2'}. Names are C identifiers; "
            "variables that make the pod load code from elsewhere than the image (LD_*, PYTHON*, PATH, "
            "CXX, ...) are refused. At most 32 KiB in total."
        ),
    )
    cluster_timeout_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86400,
        description=(
            "How long msrun waits for every node's workers to join (msrun --cluster_time_out). Rank 0's "
            "window opens when its container starts, while other nodes may still be pulling the image. "
            f"Default: {DEFAULT_CLUSTER_TIMEOUT} for one node, {DEFAULT_MULTI_NODE_CLUSTER_TIMEOUT} for "
            "several (pre-pull the trainer image to need less)."
        ),
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, time limits and cleanup.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Scheduler, priority, gang scheduling."
    )

    @field_validator("shm_size")
    @classmethod
    def _quantity(cls, value: Quantity) -> str | None:
        return _memory(value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None:
            _check(V.image_reference(value))
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            _check(V.dns1123_subdomain(name, "Secret name"))
        return value

    @field_validator("resume", "checkpoint")
    @classmethod
    def _pod_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.startswith("/"):
            return value  # auto/never, or a relative path (_cross_checks says where paths may point)
        _check(V.absolute_path(value, f"{OUTPUT_MOUNT}/ckpt/mobilenet_v2_075_best.ckpt"))
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        total = 0
        for name, text in value.items():
            _check(V.env_name(name))
            if name not in RESERVED_ENV and (why := V.denied_env(name)) is not None:
                raise ValueError(f"{name} may not be set by a job ({why}); remove it")
            if len(text) > MAX_ENV_VALUE:
                raise ValueError(f"the value of {name} is longer than {MAX_ENV_VALUE} characters; shorten it")
            total += len(name.encode()) + len(text.encode())
        if total > MAX_ENV_BYTES:
            raise ValueError(
                f"{total} bytes in total is more than {MAX_ENV_BYTES}; put large settings in spec.config"
            )
        return value

    @field_validator("config")
    @classmethod
    def _config_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, default=str))
        except RecursionError:
            raise ValueError("is nested too deeply; use MindCV's flat keys, e.g. {epoch_size: 15}") from None
        except ValueError as err:  # e.g. an integer of thousands of digits
            raise ValueError(
                f"holds a value JSON cannot carry ({err}); use MindCV's values, e.g. {{lr: 0.1}}"
            ) from None
        if size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"is {size} bytes as JSON, more than {MAX_CONFIG_BYTES}; set only the keys that differ from "
                "the recipe"
            )
        return value

    @property
    def num_classes(self) -> int:
        """The model's class count, defaulted from the dataset."""
        if self.model.num_classes is not None:
            return self.model.num_classes
        return 10 if self.dataset.type == "digits" else 1000

    @property
    def cluster_timeout(self) -> int:
        """msrun's --cluster_time_out: the spec's value, else the default for the node count."""
        if self.cluster_timeout_seconds is not None:
            return self.cluster_timeout_seconds
        return DEFAULT_CLUSTER_TIMEOUT if self.nodes == 1 else DEFAULT_MULTI_NODE_CLUSTER_TIMEOUT

    @property
    def world_size(self) -> int:
        """Worker processes of the whole job (msrun --worker_num)."""
        return self.nodes * self.devices_per_node

    def warnings(self) -> list[str]:
        """Valid but probably unintended settings, as ``spec.<path>: <why>`` lines (for Events and render)."""
        notes = []
        if self.nodes > 1 and self.accelerator.type == "ascend" and self.devices_per_node != 8:
            notes.append(
                "spec.devicesPerNode: multi-node Ascend 910 jobs normally use all 8 NPUs of each node "
                "(HCCL's inter-node rings are built for 8)"
            )
        if self.nodes > 1 and self.output is not None and self.output.host_path is not None:
            notes.append(
                "spec.output.hostPath: each node writes its own folder; after a restart rank 0 may land on a "
                "node without the checkpoints, so prefer a ReadWriteMany pvc"
            )
        if self.nodes > 1 and not self.scheduling.gang:
            notes.append(
                "spec.scheduling.gang: without gang scheduling a partly placed job holds devices while it "
                "waits for its other pods"
            )
        return notes


# --------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------


class _StatusModel(BaseModel):
    """Status parts are read leniently: a field added by a newer writer must not break an older reader."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_StatusModel):
    """A metav1.Condition."""

    type: str = Field(description="Created, Running, Restarting, Succeeded, Failed or Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason of the last transition.")
    message: str = Field(default="", description="Human-readable details of the last transition.")
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this condition is about."
    )


class WorkerCounts(_StatusModel):
    """Pods of the current attempt by state."""

    active: int = Field(default=0, ge=0, description="Pods pending or running.")
    succeeded: int = Field(default=0, ge=0, description="Pods that exited 0.")
    failed: int = Field(default=0, ge=0, description="Pods that failed.")


class Progress(_StatusModel):
    """Training progress, written by the trainer's rank 0."""

    epoch: int | None = Field(default=None, ge=0, description="Epochs completed.")
    total_epochs: int | None = Field(default=None, ge=0, description="Epochs the job will train.")
    step: int | None = Field(default=None, ge=0, description="Global steps completed.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    lr: float | None = Field(default=None, description="Current learning rate.")
    images_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput of the whole job."
    )
    updated_at: datetime | None = Field(default=None, description="When the trainer last reported.")


class Metrics(_StatusModel):
    """Validation accuracy (fractions in 0..1), written by the trainer's rank 0."""

    top1: float | None = Field(
        default=None, ge=0, le=1, description="Top-1 accuracy of the latest validation."
    )
    top5: float | None = Field(
        default=None, ge=0, le=1, description="Top-5 accuracy of the latest validation."
    )
    best_top1: float | None = Field(default=None, ge=0, le=1, description="Best top-1 accuracy so far.")
    best_epoch: int | None = Field(default=None, ge=0, description="Epoch of the best top-1 accuracy.")


class Checkpoints(_StatusModel):
    """Checkpoint paths inside the pods, written by the trainer's rank 0."""

    latest: str | None = Field(default=None, description="Newest checkpoint.")
    best: str | None = Field(default=None, description="Checkpoint with the best top-1 accuracy.")


class JobStatus(_StatusModel):
    """Observed state. The operator writes phase..message; the trainer writes progress, metrics, checkpoints."""

    phase: C.Phase | None = Field(
        default=None, description="Pending, Running, Restarting, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Latest observations of the job's state."
    )
    workers: WorkerCounts | None = Field(default=None, description="Pods of the current attempt by state.")
    restarts: int | None = Field(
        default=None,
        ge=0,
        description="Gang restarts so far; also the index of the current attempt (pods carry it in a label).",
    )
    start_time: datetime | None = Field(default=None, description="When the first pods were created.")
    completion_time: datetime | None = Field(default=None, description="When the job Succeeded or Failed.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation the operator last acted on."
    )
    message: str | None = Field(default=None, description="Human-readable summary of the current state.")
    progress: Progress | None = Field(default=None, description="Training progress (trainer).")
    metrics: Metrics | None = Field(default=None, description="Validation accuracy (trainer).")
    checkpoints: Checkpoints | None = Field(default=None, description="Checkpoint paths (trainer).")


#: Status keys each writer owns (merge patches never touch the other's).
TRAINER_STATUS_KEYS = ("progress", "metrics", "checkpoints")


# --------------------------------------------------------------------------------------------------
# Operator-wide defaults
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorDefaults:
    """Cluster-wide defaults for fields a job leaves empty (the Helm chart's ``jobDefaults``), and the
    admin's policy on what a job may choose (the chart's ``policy``, see ``policy.py``)."""

    image: str = DEFAULT_IMAGE
    resource_name: str = DEFAULT_RESOURCE_NAME
    node_selector: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NODE_SELECTOR))
    policy: OperatorPolicy = field(default_factory=OperatorPolicy)
    chip: str = DEFAULT_CHIP
    #: chip -> value of the accelerator-type node label; an empty value adds no label for that chip.
    accelerator_types: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ACCELERATOR_TYPES))
    volcano_npu_plugin: bool = False
    hw_hi_ai_user_gid: int = DEFAULT_HWHIAIUSER_GID

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorDefaults:
        """Read ``MNV2_DEFAULT_TRAINER_IMAGE``, ``MNV2_DEFAULT_ACCELERATOR_RESOURCE_NAME``,
        ``MNV2_DEFAULT_ACCELERATOR_NODE_SELECTOR`` (a JSON object), ``MNV2_DEFAULT_ACCELERATOR_CHIP``,
        ``MNV2_DEFAULT_ACCELERATOR_TYPES`` (a JSON object: chip -> accelerator-type label),
        ``MNV2_DEFAULT_VOLCANO_NPU_PLUGIN`` (true/false) and ``MNV2_DEFAULT_HWHIAIUSER_GID``; unset or
        empty keeps the built-in value. The policy comes from ``MNV2_POLICY`` (``OperatorPolicy.from_env``).

        Raises:
            ValueError: naming the variable, when one is malformed, or when the policy is invalid.
        """
        env = os.environ if environ is None else environ
        base = cls()
        selector = _env_string_map(
            env,
            "MNV2_DEFAULT_ACCELERATOR_NODE_SELECTOR",
            base.node_selector,
            '{"accelerator": "huawei-Ascend910"}',
        )
        types = _env_string_map(
            env, "MNV2_DEFAULT_ACCELERATOR_TYPES", base.accelerator_types, '{"Ascend910": "module"}'
        )
        chip = _env_chip(env, base.chip)
        _check_type_chips(types)
        plugin = _env_text(env, "MNV2_DEFAULT_VOLCANO_NPU_PLUGIN", "false").lower()
        if plugin not in ("true", "false"):
            raise ValueError(f"MNV2_DEFAULT_VOLCANO_NPU_PLUGIN: {plugin!r} is not true or false")
        gid = _env_gid(env, base.hw_hi_ai_user_gid)
        return cls(
            image=_env_text(env, "MNV2_DEFAULT_TRAINER_IMAGE", base.image),
            resource_name=_env_text(env, "MNV2_DEFAULT_ACCELERATOR_RESOURCE_NAME", base.resource_name),
            node_selector=selector,
            policy=OperatorPolicy.from_env(env),
            chip=chip,
            accelerator_types={**base.accelerator_types, **types},
            volcano_npu_plugin=plugin == "true",
            hw_hi_ai_user_gid=gid,
        )


def _env_text(env: Mapping[str, str], name: str, default: str) -> str:
    """Variable ``name``, stripped; ``default`` when unset or empty."""
    return env.get(name, "").strip() or default


def _env_string_map(
    env: Mapping[str, str], name: str, default: dict[str, str], example: str
) -> dict[str, str]:
    """Variable ``name`` as a JSON object of strings; ``default`` when unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not JSON: {err}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name} must be a JSON object of strings, e.g. {example}")
    return value


def _env_chip(env: Mapping[str, str], default: str) -> str:
    """``MNV2_DEFAULT_ACCELERATOR_CHIP``, one of ``ASCEND_CHIPS``."""
    chip = _env_text(env, "MNV2_DEFAULT_ACCELERATOR_CHIP", default)
    if chip not in ASCEND_CHIPS:
        raise ValueError(f"MNV2_DEFAULT_ACCELERATOR_CHIP: {chip!r} is not one of {', '.join(ASCEND_CHIPS)}")
    return chip


def _check_type_chips(types: Mapping[str, str]) -> None:
    """Every chip ``MNV2_DEFAULT_ACCELERATOR_TYPES`` names is one of ``ASCEND_CHIPS``."""
    unknown = sorted(set(types) - set(ASCEND_CHIPS))
    if unknown:
        raise ValueError(
            f"MNV2_DEFAULT_ACCELERATOR_TYPES: unknown chip {', '.join(unknown)}; use {', '.join(ASCEND_CHIPS)}"
        )


def _env_gid(env: Mapping[str, str], default: int) -> int:
    """``MNV2_DEFAULT_HWHIAIUSER_GID``, a positive group id."""
    gid_text = _env_text(env, "MNV2_DEFAULT_HWHIAIUSER_GID", str(default))
    if not gid_text.isdigit() or int(gid_text) < 1:
        raise ValueError(f"MNV2_DEFAULT_HWHIAIUSER_GID: {gid_text!r} is not a positive group id")
    return int(gid_text)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    """``spec.a.b[0]``; a key that is not a plain name is quoted, e.g. ``spec.env["A B"]``."""
    out = "spec"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]{1,100}", str(part)):
            out += f".{part}"
        else:
            text = str(part)
            out += f"[{json.dumps(text if len(text) <= 100 else text[:80] + '...')}]"
    return out


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at ``loc`` (camelCase aliases), for typo suggestions."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        by_alias = {(f.alias or n): f for n, f in current.model_fields.items()}
        info = by_alias.get(part) or current.model_fields.get(part)
        if info is None:
            return None
        current = info.annotation
        # Unwrap Optional[X] and list[X] down to the model class.
        for _ in range(3):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if isinstance(current, type) and issubclass(current, BaseModel):
                break
            if not args:
                break
            current = args[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _fields_help(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe_error(err: Mapping[str, Any], missing: Collection[tuple[Any, ...]] = ()) -> str:
    """One ``spec.<path>: <problem>; <fix>`` line for a pydantic error.

    ``missing`` holds the locations of missing fields, so that a typo next to a missing required field
    suggests that field first (``modle`` -> ``model``, not ``mode``).
    """
    loc = tuple(err["loc"])
    kind = err["type"]
    where = _path(loc)
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        parent = _model_at(JobSpec, loc[:-1])
        valid = _fields_help(parent) if parent else []
        absent = [m[-1] for m in missing if m[:-1] == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), absent, n=1, cutoff=0.5) or difflib.get_close_matches(
            str(loc[-1]), valid, n=1, cutoff=0.5
        )
        hint = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"{where}: unknown field; {hint} (valid here: {', '.join(valid)})"
    if kind == "missing":
        parent = _model_at(JobSpec, loc[:-1]) or JobSpec
        info = {(f.alias or n): f for n, f in parent.model_fields.items()}.get(str(loc[-1]))
        desc = f" ({info.description})" if info is not None and info.description else ""
        return f"{where}: required; add it{desc}"
    if kind == "value_error":
        text = msg.removeprefix("Value error, ")
        return f"{where}: {text}" if ";" in text else f"{where}: {text}; fix the value"
    value = err.get("input")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        shown = f"a {value.bit_length()}-bit integer"  # (str() of a huge int raises ValueError)
    elif isinstance(value, str | int | float | bool) or value is None:
        shown = json.dumps(value)
    else:
        shown = type(value).__name__
    if len(shown) > 80:  # the message goes into the job's status and Events: never echo a huge value
        shown = shown[:60] + f"... ({len(shown)} characters)"
    if kind in ("literal_error", "enum"):
        return f"{where}: {shown} is not allowed; {msg.replace('Input should be', 'use')}"
    return f"{where}: {shown} is invalid; {msg[0].lower() + msg[1:] if msg else kind}"


def _cross_checks(spec: JobSpec) -> list[str]:
    """Checks that involve several fields (pydantic has checked each field already)."""
    return [problem for rule in _CROSS_CHECK_RULES for problem in rule(spec)]


def _check_dataset_volume(spec: JobSpec) -> list[str]:
    """An imagefolder dataset has exactly one volume; a generated dataset has none."""
    ds = spec.dataset
    if ds.type == "imagefolder":
        if (ds.pvc is None) == (ds.host_path is None):
            return [
                "spec.dataset: an imagefolder dataset needs exactly one of pvc or hostPath; "
                "e.g. dataset: {type: imagefolder, pvc: {claimName: imagenet}}"
            ]
    elif ds.pvc is not None or ds.host_path is not None:
        return [f"spec.dataset: type {ds.type} generates its data and takes no volume; remove pvc/hostPath"]
    return []


def _check_output_volume(spec: JobSpec) -> list[str]:
    """Train mode has an output; an output has exactly one volume, and a restartable one keeps checkpoints."""
    out = spec.output
    if out is None:
        if spec.mode == "train":
            return [
                "spec.output: required in train mode (checkpoints, metrics, logs); "
                "e.g. output: {pvc: {claimName: mnv2-runs}}"
            ]
        return []
    given = [k for k in ("pvc", "hostPath", "emptyDir") if getattr(out, to_snake(k)) is not None]
    if len(given) != 1:
        return [
            f"spec.output: exactly one of pvc, hostPath, emptyDir is needed (got {', '.join(given) or 'none'}); keep one"
        ]
    if out.empty_dir is not None and spec.mode == "train" and spec.run_policy.backoff_limit > 0:
        return [
            "spec.output.emptyDir: checkpoints are deleted with the pods, so a restart could not resume; "
            "use output.pvc, or set runPolicy.backoffLimit: 0"
        ]
    return []


def _check_validate_mode(spec: JobSpec) -> list[str]:
    """Validate mode runs one process and evaluates a given checkpoint."""
    if spec.mode != "validate":
        return []
    problems: list[str] = []
    if spec.world_size != 1:
        problems.append(
            f"spec.devicesPerNode: validate mode runs one process (mnv2_trainer.validate is not distributed), "
            f"not {spec.nodes} x {spec.devices_per_node}; set nodes: 1 and devicesPerNode: 1"
        )
    if spec.checkpoint is None:
        problems.append(
            "spec.checkpoint: validate mode evaluates a checkpoint; set it, e.g. /output/ckpt/mobilenet_v2_075_best.ckpt"
        )
    return problems


def _check_checkpoint_paths(spec: JobSpec) -> list[str]:
    """spec.checkpoint and a path in spec.resume lie inside a mounted volume."""
    mounts = [DATA_MOUNT] + ([OUTPUT_MOUNT] if spec.output is not None else [])
    problems: list[str] = []
    for name, value in (("checkpoint", spec.checkpoint), ("resume", spec.resume)):
        if value is None or (name == "resume" and value in ("auto", "never")):
            continue
        if not any(value.startswith(m + "/") for m in mounts) or ".." in value.split("/"):
            fix = " or ".join(m + "/..." for m in mounts)
            what = "auto, never, or a checkpoint path" if name == "resume" else "a checkpoint path"
            problems.append(f"spec.{name}: {value!r} is not inside a mounted volume; use {what} under {fix}")
    return problems


def _check_ascend_devices(spec: JobSpec) -> list[str]:
    """An Ascend job's devicesPerNode is a device group its chip can allocate."""
    acc = spec.accelerator
    # A job that names no chip is held to the 910's groups (valid on every generation).
    counts = ASCEND_DEVICE_COUNTS_BY_CHIP[acc.chip or "Ascend910"]
    if acc.type != "ascend" or spec.devices_per_node in counts:
        return []
    hint = "" if acc.chip else " (or set accelerator.chip: Ascend910B, which takes 1 to 8)"
    return [
        f"spec.devicesPerNode: {spec.devices_per_node} NPUs per node is not a valid "
        f"{acc.chip or 'Ascend910'} group; use one of {', '.join(map(str, counts))}{hint}"
    ]


def _check_cpu_accelerator(spec: JobSpec) -> list[str]:
    """A cpu job sets none of the NPU-only accelerator fields."""
    acc = spec.accelerator
    if acc.type != "cpu":
        return []
    problems: list[str] = []
    if acc.resource_name is not None:
        problems.append(
            "spec.accelerator.resourceName: cpu jobs request no device resource; remove it or use type ascend"
        )
    for key, value in (
        ("chip", acc.chip),
        ("volcanoNpuPlugin", acc.volcano_npu_plugin or None),
        ("hwHiAiUserGid", acc.hw_hi_ai_user_gid),
    ):
        if value is not None:
            problems.append(f"spec.accelerator.{key}: cpu jobs use no NPU; remove it or use type ascend")
    return problems


def _check_scheduling(spec: JobSpec) -> list[str]:
    """The NPU plugin and gang scheduling need volcano; a queue needs gang scheduling."""
    sched = spec.scheduling
    problems: list[str] = []
    if spec.accelerator.volcano_npu_plugin and sched.scheduler_name not in (None, "volcano"):
        problems.append(
            f"spec.scheduling.schedulerName: the Volcano NPU plugin only annotates pods that volcano "
            f"schedules, not {sched.scheduler_name!r}; remove schedulerName or set "
            "accelerator.volcanoNpuPlugin: false"
        )
    if sched.gang and sched.scheduler_name not in (None, "volcano"):
        problems.append(
            f"spec.scheduling.schedulerName: gang scheduling uses Volcano, not {sched.scheduler_name!r}; "
            "remove schedulerName or set it to volcano"
        )
    if sched.queue is not None and not sched.gang:
        problems.append("spec.scheduling.queue: a Volcano queue needs a PodGroup; set scheduling.gang: true")
    return problems


def _check_operator_owned_keys(spec: JobSpec) -> list[str]:
    """spec.env and spec.config set no key the operator or the spec's own fields set."""
    return [
        *(
            f"spec.env.{key}: set by the operator ({RESERVED_ENV[key]}); remove it"
            for key in sorted(set(spec.env) & set(RESERVED_ENV))
        ),
        *(
            f"spec.config.{key}: set by the spec; use {SPEC_OWNED_CONFIG_KEYS[key]} instead"
            for key in sorted(set(spec.config) & set(SPEC_OWNED_CONFIG_KEYS))
        ),
    ]


#: The rules of ``_cross_checks``, in the order their messages are listed.
_CROSS_CHECK_RULES: tuple[Callable[[JobSpec], list[str]], ...] = (
    _check_dataset_volume,
    _check_output_volume,
    _check_validate_mode,
    _check_checkpoint_paths,
    _check_ascend_devices,
    _check_cpu_accelerator,
    _check_scheduling,
    _check_operator_owned_keys,
)


def to_snake(camel: str) -> str:
    """``hostPath`` -> ``host_path``."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


def _config_checks(spec: JobSpec) -> list[str]:
    """Resolve the recipe and the overrides with the trainer's own config code."""
    from mnv2_trainer.config import ConfigError, load_builtin_recipe, resolve_config

    try:
        recipe = load_builtin_recipe(spec.recipe)
    except ConfigError as err:
        return [f"spec.recipe: {err}; use a built-in recipe name such as {DEFAULT_RECIPE}"]
    try:
        resolve_config(recipe, dict(spec.config))
    except ConfigError as err:
        # The trainer's messages read "<source>: '<key>' <problem>".
        found = re.match(r"^[^:]*: '([^']+)' (.*)$", str(err), re.S)
        if found:
            key, problem = found[1], found[2]
            if ";" not in problem and key in recipe:
                problem += f"; the recipe has {key}: {json.dumps(recipe[key])}"
            elif ";" not in problem:
                problem += "; fix the value"
            return [f"{_path(('config', key))}: {problem}"]
        return [f"spec.config: {err}"]
    return []


def parse_spec(mapping: Mapping[str, Any]) -> JobSpec:
    """Validate a job's ``spec`` (camelCase keys, as stored in the cluster) into a :class:`JobSpec`.

    Raises:
        SpecError: listing every problem found, each naming the field and the fix.
    """
    if not isinstance(mapping, Mapping):
        raise SpecError([f"spec: must be a mapping, not {type(mapping).__name__}; see manifests/examples/"])
    try:
        spec = JobSpec.model_validate(dict(mapping))
    except ValidationError as err:
        errors = err.errors()
        missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
        raise SpecError([_describe_error(e, missing) for e in errors]) from None
    problems = _cross_checks(spec)
    if not any(p.startswith(("spec.config", "spec.recipe")) for p in problems):
        problems += _config_checks(spec)
    if problems:
        raise SpecError(problems)
    return spec


def parse_status(mapping: Mapping[str, Any] | None) -> JobStatus:
    """Read a job's ``status`` leniently (unknown keys ignored); raises pydantic's ValidationError on wrong types."""
    return JobStatus.model_validate(dict(mapping or {}))
