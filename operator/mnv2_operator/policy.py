"""The cluster admin's policy: what a job's author may choose for the pods the operator creates.

Creating a MobileNetV2TrainingJob must not be a way around RBAC and Pod Security: the operator creates
the pods with its own rights, so every pod-level choice a job can make (host folders, image, priority,
scheduler, tolerations, node labels, pull secrets) is limited to what the admin allows in the Helm
chart's ``policy`` values. They reach the operator as one JSON object in ``MNV2_POLICY``; without it the
policy is the strictest one (no hostPath, only the default image, no priority classes, only the Volcano
scheduler for gang jobs and its default queue, no tolerations, node labels or pull secrets of the job's choosing).

``OperatorPolicy.check`` returns one ``spec.<field>: <problem>; <fix>`` line per violation; the
renderer refuses to render a job that has any (so no pod that breaks the policy is ever rendered).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnv2_operator import validation as V

if TYPE_CHECKING:
    from mnv2_operator.spec import JobSpec

ENV_POLICY = "MNV2_POLICY"
#: The default scheduler's name: a job may always ask for it (it is what an unset schedulerName means).
DEFAULT_SCHEDULER = "default-scheduler"
_TOLERATION_KEYS = ("key", "operator", "value", "effect")


class PolicyError(ValueError):
    """The operator's policy configuration (``MNV2_POLICY``) is malformed."""


def _strings(raw: Mapping[str, Any], key: str, check: Any = None) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{ENV_POLICY}: {key} must be a list of strings, not {value!r}")
    for item in value:
        problem = check(item) if check else None
        if problem:
            raise PolicyError(f"{ENV_POLICY}: {key}: {problem}")
    return tuple(value)


def _prefix(value: str) -> str | None:
    return V.absolute_path(value, "/mnt/datasets")


def _image_prefix(value: str) -> str | None:
    if not value or any(c.isspace() for c in value) or "$(" in value:
        return f"{value!r} is not an image prefix; write e.g. registry.example.com/ml/"
    return None


@dataclass(frozen=True)
class OperatorPolicy:
    """What jobs may choose. Empty tuples allow nothing (except where said)."""

    #: Folders on the nodes a job may mount its dataset from (read-only), and their subfolders.
    host_path_dataset_prefixes: tuple[str, ...] = ()
    #: Folders on the nodes a job may write its output to (read-write), and their subfolders.
    host_path_output_prefixes: tuple[str, ...] = ()
    #: Image prefixes spec.image may start with; the operator's default trainer image is always allowed.
    image_prefixes: tuple[str, ...] = ()
    #: PriorityClasses a job may name.
    priority_class_names: tuple[str, ...] = ()
    #: Schedulers a job may name (gang jobs use volcano); the default scheduler is always allowed.
    scheduler_names: tuple[str, ...] = ("volcano",)
    #: Volcano queues a gang job may name (a queue carries another team's share of the cluster).
    queue_names: tuple[str, ...] = ("default",)
    #: Tolerations a job may set: each must match one of these (a field left out here matches any value).
    tolerations: tuple[Mapping[str, str], ...] = ()
    #: Node label keys a job's accelerator.nodeSelector may set or change.
    node_selector_keys: tuple[str, ...] = ()
    #: Secrets a job may name in imagePullSecrets.
    image_pull_secrets: tuple[str, ...] = ()
    #: GIDs a job's accelerator.hwHiAiUserGid may name besides the operator's default (a supplemental
    #: group of the pods: it opens whatever that group may open on the node).
    hw_hi_ai_user_gids: tuple[int, ...] = ()
    #: Where the policy came from, for messages.
    source: str = field(default="the operator's built-in policy", compare=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "") -> OperatorPolicy:
        """Read the Helm chart's ``policy`` values (camelCase keys).

        Raises:
            PolicyError: unknown keys, wrong types, or invalid entries (e.g. a hostPath prefix of "/").
        """
        if not isinstance(raw, Mapping):
            raise PolicyError(f"{ENV_POLICY} must be a JSON object, not {type(raw).__name__}")
        known = {
            "hostPath",
            "imagePrefixes",
            "priorityClassNames",
            "schedulerNames",
            "queueNames",
            "tolerations",
            "nodeSelectorKeys",
            "imagePullSecrets",
            "hwHiAiUserGids",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PolicyError(f"{ENV_POLICY}: unknown keys {unknown}; known are {sorted(known)}")
        host = raw.get("hostPath", {})
        if not isinstance(host, Mapping) or set(host) - {"datasetPrefixes", "outputPrefixes"}:
            raise PolicyError(
                f"{ENV_POLICY}: hostPath takes datasetPrefixes and outputPrefixes, not {host!r}"
            )
        tolerations = raw.get("tolerations", [])
        if not isinstance(tolerations, list) or not all(
            isinstance(t, Mapping)
            and set(t) <= set(_TOLERATION_KEYS)
            and all(isinstance(v, str) for v in t.values())
            for t in tolerations
        ):
            raise PolicyError(
                f"{ENV_POLICY}: tolerations must be a list of {{key, operator, value, effect}} objects of "
                f"strings, not {tolerations!r}"
            )
        gids = raw.get("hwHiAiUserGids", [])
        if not isinstance(gids, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= 2147483647 for g in gids
        ):
            raise PolicyError(
                f"{ENV_POLICY}: hwHiAiUserGids must be a list of group ids (1 and up), not {gids!r}"
            )
        return cls(
            host_path_dataset_prefixes=_strings(host, "datasetPrefixes", _prefix),
            host_path_output_prefixes=_strings(host, "outputPrefixes", _prefix),
            image_prefixes=_strings(raw, "imagePrefixes", _image_prefix),
            priority_class_names=_strings(raw, "priorityClassNames"),
            scheduler_names=_strings(raw, "schedulerNames") if "schedulerNames" in raw else ("volcano",),
            queue_names=_strings(raw, "queueNames") if "queueNames" in raw else ("default",),
            tolerations=tuple(dict(t) for t in tolerations),
            node_selector_keys=_strings(raw, "nodeSelectorKeys"),
            image_pull_secrets=_strings(raw, "imagePullSecrets"),
            hw_hi_ai_user_gids=tuple(gids),
            source=source or "the operator's policy",
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorPolicy:
        """Read ``MNV2_POLICY`` (JSON, set by the Helm chart); unset or empty gives the strictest policy.

        Raises:
            PolicyError: the variable is not valid JSON or not a valid policy.
        """
        env = os.environ if environ is None else environ
        text = env.get(ENV_POLICY, "").strip()
        if not text:
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise PolicyError(f"{ENV_POLICY} is not JSON: {err}") from None
        return cls.from_mapping(raw, source="the operator's policy (Helm values policy.*)")

    # ----------------------------------------------------------------------------------------------

    def _refused(self, where: str, what: str, allowed: tuple[str, ...] | str, value: str) -> str:
        listed = allowed if isinstance(allowed, str) else (", ".join(allowed) or "none")
        return (
            f"{where}: {what} is not allowed by {self.source} (allowed: {listed}); use an allowed one, "
            f"or ask the cluster admin to allow it in the Helm value {value}"
        )

    def toleration_allowed(self, toleration: Mapping[str, Any]) -> bool:
        """Whether a job's toleration (camelCase keys) matches one the admin allows."""
        wanted = {
            "key": toleration.get("key") or "",
            "operator": toleration.get("operator") or "Equal",
            "value": toleration.get("value") or "",
            "effect": toleration.get("effect") or "",
        }
        # A key-less toleration tolerates every taint: it matches only a pattern that says key: "".
        return any(
            all(k not in pattern or pattern[k] == wanted[k] for k in _TOLERATION_KEYS)
            and ("key" in pattern or wanted["key"])
            for pattern in self.tolerations
        )

    def check(
        self,
        spec: JobSpec,
        default_image: str,
        default_node_selector: Mapping[str, str] | None = None,
        default_hw_hi_ai_user_gid: int | None = None,
    ) -> list[str]:
        """Every way ``spec`` goes beyond this policy, as ``spec.<field>: <problem>; <fix>`` lines.

        Args:
            spec: the parsed spec.
            default_image: the operator's default trainer image (always allowed).
            default_node_selector: the operator's default node selector of Ascend jobs; its keys stay in
                a job's selector unless the policy lets jobs change them.
            default_hw_hi_ai_user_gid: the operator's default HwHiAiUser GID (always allowed).
        """
        return [
            *self._check_host_paths(spec),
            *self._check_image(spec, default_image),
            *self._check_priority_class(spec),
            *self._check_queue(spec),
            *self._check_scheduler(spec),
            *self._check_tolerations(spec),
            *self._check_node_selector(spec, default_node_selector),
            *self._check_hw_hi_ai_user_gid(spec, default_hw_hi_ai_user_gid),
            *self._check_image_pull_secrets(spec),
        ]

    def _check_host_paths(self, spec: JobSpec) -> list[str]:
        """The dataset's and the output's host folders lie under the allowed prefixes."""
        problems: list[str] = []
        ds, out = spec.dataset, spec.output
        for where, source, prefixes, value in (
            ("spec.dataset.hostPath.path", ds.host_path, self.host_path_dataset_prefixes, "datasetPrefixes"),
            (
                "spec.output.hostPath.path",
                out.host_path if out is not None else None,
                self.host_path_output_prefixes,
                "outputPrefixes",
            ),
        ):
            if source is not None and not V.under(source.path, prefixes):
                problems.append(
                    self._refused(where, f"host folder {source.path!r}", prefixes, f"policy.hostPath.{value}")
                    + " (or use a pvc)"
                )
        return problems

    def _check_image(self, spec: JobSpec, default_image: str) -> list[str]:
        """spec.image is the default image or starts with an allowed prefix."""
        image = spec.image
        if image is None or image == default_image or _image_allowed(image, self.image_prefixes):
            return []
        return [
            self._refused(
                "spec.image",
                f"image {image!r}",
                (default_image, *self.image_prefixes),
                "policy.imagePrefixes",
            )
            + " (or remove spec.image for the default)"
        ]

    def _check_priority_class(self, spec: JobSpec) -> list[str]:
        """spec.scheduling.priorityClassName is one the admin allows."""
        name = spec.scheduling.priority_class_name
        if name is None or name in self.priority_class_names:
            return []
        return [
            self._refused(
                "spec.scheduling.priorityClassName",
                f"PriorityClass {name!r}",
                self.priority_class_names,
                "policy.priorityClassNames",
            )
        ]

    def _check_queue(self, spec: JobSpec) -> list[str]:
        """spec.scheduling.queue is a Volcano queue the admin allows."""
        queue = spec.scheduling.queue
        if queue is None or queue in self.queue_names:
            return []
        return [
            self._refused(
                "spec.scheduling.queue",
                f"Volcano queue {queue!r}",
                self.queue_names,
                "policy.queueNames",
            )
        ]

    def _check_scheduler(self, spec: JobSpec) -> list[str]:
        """The scheduler the pods get (named, or volcano for gang and NPU-plugin jobs) is allowed."""
        sched = spec.scheduling
        npu_plugin = bool(spec.accelerator.volcano_npu_plugin)
        scheduler = sched.scheduler_name or ("volcano" if sched.gang or npu_plugin else None)
        if scheduler in (None, DEFAULT_SCHEDULER) or scheduler in self.scheduler_names:
            return []
        where = (
            "spec.scheduling.schedulerName"
            if sched.scheduler_name
            else "spec.scheduling.gang"
            if sched.gang
            else "spec.accelerator.volcanoNpuPlugin"
        )
        return [
            self._refused(where, f"scheduler {scheduler!r}", self.scheduler_names, "policy.schedulerNames")
        ]

    def _check_tolerations(self, spec: JobSpec) -> list[str]:
        """Each of spec.accelerator.tolerations matches a toleration the admin allows."""
        problems: list[str] = []
        for i, toleration in enumerate(spec.accelerator.tolerations):
            dumped = toleration.model_dump(by_alias=True, exclude_none=True)
            if not self.toleration_allowed(dumped):
                allowed = ", ".join(json.dumps(t, sort_keys=True) for t in self.tolerations) or "none"
                problems.append(
                    self._refused(
                        f"spec.accelerator.tolerations[{i}]",
                        f"toleration {json.dumps(dumped, sort_keys=True)}",
                        allowed,
                        "policy.tolerations",
                    )
                )
        return problems

    def _check_node_selector(
        self, spec: JobSpec, default_node_selector: Mapping[str, str] | None
    ) -> list[str]:
        """Every node label the job's selector sets, changes or drops (against the default) is allowed."""
        selector = spec.accelerator.node_selector
        if selector is None:
            return []
        base = dict(default_node_selector or {}) if spec.accelerator.type == "ascend" else {}
        changed = sorted(
            {k for k, v in selector.items() if base.get(k) != v} | {k for k in base if k not in selector}
        )
        return [
            self._refused(
                "spec.accelerator.nodeSelector",
                f"node label {key!r}" + (" (the operator's default selector sets it)" if key in base else ""),
                self.node_selector_keys,
                "policy.nodeSelectorKeys",
            )
            for key in changed
            if key not in self.node_selector_keys
        ]

    def _check_hw_hi_ai_user_gid(self, spec: JobSpec, default_gid: int | None) -> list[str]:
        """spec.accelerator.hwHiAiUserGid is the operator's default or one the admin allows."""
        gid = spec.accelerator.hw_hi_ai_user_gid
        if gid is None or gid == default_gid or gid in self.hw_hi_ai_user_gids:
            return []
        return [
            self._refused(
                "spec.accelerator.hwHiAiUserGid",
                f"supplemental group {gid}",
                tuple(str(g) for g in (default_gid, *self.hw_hi_ai_user_gids) if g),
                "policy.hwHiAiUserGids",
            )
            + " (or remove it for the cluster's jobDefaults.hwHiAiUserGid)"
        ]

    def _check_image_pull_secrets(self, spec: JobSpec) -> list[str]:
        """Every Secret in spec.imagePullSecrets is one the admin allows."""
        return [
            self._refused(
                f"spec.imagePullSecrets[{i}]",
                f"Secret {secret!r}",
                self.image_pull_secrets,
                "policy.imagePullSecrets",
            )
            for i, secret in enumerate(spec.image_pull_secrets)
            if secret not in self.image_pull_secrets
        ]


def _image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``image`` starts with one of ``prefixes`` at a boundary of the reference.

    ``registry.example.com/ml`` allows ``registry.example.com/ml/trainer:1`` and
    ``registry.example.com/ml:1`` but not ``registry.example.com/ml-other/x``; a prefix ending in
    ``/``, ``:`` or ``@`` ends at a boundary by itself.
    """
    for prefix in prefixes:
        if image == prefix:
            return True
        if image.startswith(prefix) and (prefix[-1] in "/:@" or image[len(prefix)] in "/:@"):
            return True
    return False
