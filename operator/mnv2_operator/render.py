"""A job's children, rendered from its spec with jinja2 templates: pure, no API calls.

``render_job`` returns every object the operator creates for one attempt of a job:

* ``objects`` (created once per job): the headless Service ``<job>``, the ConfigMap ``<job>-config``
  with the resolved training config, the ServiceAccount/Role/RoleBinding ``<job>-trainer`` that let
  rank 0 patch this job's status, and a Volcano PodGroup ``<job>`` when gang scheduling is on;
* ``pods`` (created per attempt): ``<job>-worker-<i>`` for every node, each running msrun with the
  command line of docs/interfaces.md.

``mnv2 render -f job.yaml`` prints the same objects as YAML: a dry run a person can read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from mnv2_operator import constants as C
from mnv2_operator import spec as S
from mnv2_operator.constants import (
    ANNOTATION_POD_GROUP,
    LABEL_ATTEMPT,
    LABEL_INDEX,
    LABEL_JOB,
    LABEL_ROLE,
    ROLE_WORKER,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
MASTER_PORT = 8118
TRAIN_ENTRY = "mnv2_trainer.train"
#: The container's main process: starts msrun, turns the kubelet's SIGTERM into the SIGINT msrun
#: handles, and reaps what msrun leaves behind (msrun as PID 1 would ignore SIGTERM).
LAUNCH_ENTRY = "mnv2_trainer.launch"
VALIDATE_ENTRY = "mnv2_trainer.validate"
CONFIG_PATH = f"{S.CONFIG_MOUNT}/config.yaml"
CKPT_DIR = f"{S.OUTPUT_MOUNT}/ckpt"
#: The trainer container's terminationMessagePath (Kubernetes' default); also in env MNV2_TERMINATION_LOG.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
#: Where rank 0's pod mounts its ServiceAccount token (the in-cluster config path of Kubernetes clients).
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Lifetime of that token; the kubelet renews it at 80 %, the client re-reads it.
TOKEN_SECONDS = 3600
#: uid written into owner references by ``mnv2 render`` (a dry run has no real job yet).
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"

#: Longest job name: pod hostnames ``<job>-worker-<i>`` must stay DNS labels (63 characters).
MAX_JOB_NAME = 63 - len("-worker-") - 4
#: Children rendered from the job's name, namespace and uid alone, never from its spec: complete once
#: created, so the operator never patches them (and its RBAC holds no ``patch`` on these kinds). The
#: ConfigMap (resolved config) and the PodGroup (gang size, queue) follow the spec and are brought to
#: the rendered form when an attempt starts.
FIXED_KINDS = frozenset({"Service", "ServiceAccount", "Role", "RoleBinding"})


@dataclass
class RenderedJob:
    """Everything one attempt of a job creates.

    Attributes:
        objects: Service, ConfigMap, ServiceAccount, Role, RoleBinding and (gang) PodGroup, in creation order.
        pods: one worker pod per node (or per rank asked for), rank 0 first.
        config: the resolved training config written into the ConfigMap.
        warnings: ``spec.<path>: ...`` notes on valid but probably unintended settings.
    """

    objects: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def all(self) -> list[dict[str, Any]]:
        """Objects then pods, in the order the operator creates them."""
        return [*self.objects, *self.pods]


def job_labels(name: str) -> dict[str, str]:
    """Labels on every child of job ``name``; ``LABEL_JOB`` alone selects its pods."""
    return {
        "app.kubernetes.io/name": "mnv2-trainer",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "mnv2-operator",
        LABEL_JOB: name,
    }


def pod_selector(name: str) -> dict[str, str]:
    """The label selector of job ``name``'s worker pods (all attempts)."""
    return {LABEL_JOB: name, LABEL_ROLE: ROLE_WORKER}


def pod_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def master_addr(job: str, namespace: str, nodes: int) -> str:
    """msrun's --master_addr: loopback for one node, else rank 0's DNS name via the headless Service."""
    return "127.0.0.1" if nodes == 1 else f"{pod_name(job, 0)}.{job}.{namespace}.svc"


def check_job_name(name: str) -> None:
    """Raise SpecError when the job's name cannot name its Service and pod hostnames."""
    import re

    if len(name) > MAX_JOB_NAME or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise S.SpecError(
            [
                f"metadata.name: {name!r} cannot name the job's Service and pod hostnames; use at most "
                f"{MAX_JOB_NAME} lower-case letters, digits and '-', starting with a letter"
            ]
        )


# --------------------------------------------------------------------------------------------------
# Training config
# --------------------------------------------------------------------------------------------------


def training_config(spec: S.JobSpec) -> tuple[dict[str, Any], str]:
    """The resolved training config of a job, and a one-line note on the learning rate.

    The recipe, then the job's ``config`` overrides, then the keys the spec owns (model, dataset,
    device, paths), then linear lr scaling: when ``scaleLearningRate`` is on, the job does not set
    ``lr`` itself, and its global batch (batch_size x nodes x devicesPerNode) differs from the
    recipe's ``reference_global_batch``.

    Raises:
        SpecError: unknown recipe or invalid override (``parse_spec`` has normally caught these).
    """
    from mnv2_trainer.config import ConfigError, load_builtin_recipe, resolve_config, scale_lr

    owned: dict[str, Any] = {
        "model": spec.model.name,
        "num_classes": spec.num_classes,
        "dataset": spec.dataset.type,
        "data_dir": S.DATA_MOUNT,
        "train_split": spec.dataset.train_split,
        "val_split": spec.dataset.val_split,
        "device_target": "Ascend" if spec.accelerator.type == "ascend" else "CPU",
        "distribute": spec.mode == "train",
        "ckpt_save_dir": CKPT_DIR,
        "resume": spec.resume,
    }
    if spec.checkpoint:
        owned["ckpt_path"] = spec.checkpoint
    try:
        recipe = load_builtin_recipe(spec.recipe)
        config = resolve_config(recipe, {**spec.config, **owned})
    except ConfigError as err:
        raise S.SpecError([f"spec.config: {err}"]) from None
    config.pop("config", None)  # the file's own path: the trainer fills it in from --config
    global_batch = config["batch_size"] * spec.world_size
    reference = config["reference_global_batch"]
    if "lr" in spec.config:
        note = f"lr {config['lr']:g} as set in spec.config (not scaled)"
    elif not spec.scale_learning_rate:
        note = f"lr {config['lr']:g} from recipe {spec.recipe} (scaleLearningRate: false)"
    elif global_batch == reference:
        note = f"lr {config['lr']:g} from recipe {spec.recipe} (global batch {global_batch} = the recipe's)"
    else:
        base = config["lr"]
        config = scale_lr(config, global_batch)
        note = (
            f"lr {config['lr']:g} = recipe {spec.recipe}'s {base:g} x global batch {global_batch} "
            f"({config['batch_size']} x {spec.nodes} nodes x {spec.devices_per_node} devices) / {reference}"
        )
    return config, note


# --------------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------------


def log_dir(spec: S.JobSpec, attempt: int) -> str:
    """msrun's --log_dir: the attempt's folder on the output volume (scratch without one)."""
    return f"{S.OUTPUT_MOUNT}/logs/{attempt}" if spec.output else "/tmp/msrun-logs"


def trainer_command(name: str, namespace: str, spec: S.JobSpec, index: int, attempt: int) -> list[str]:
    """The container command of worker ``index``: the launcher starting msrun, which starts the trainer
    (docs/interfaces.md)."""
    msrun = [
        "python",
        "-m",
        LAUNCH_ENTRY,
        "msrun",
        f"--worker_num={spec.world_size}",
        f"--local_worker_num={spec.devices_per_node}",
        f"--node_rank={index}",
        f"--master_addr={master_addr(name, namespace, spec.nodes)}",
        f"--master_port={MASTER_PORT}",
        # Without --join msrun returns at once and the pod's exit code says nothing about training.
        "--join=True",
        f"--cluster_time_out={spec.cluster_timeout}",
        f"--log_dir={log_dir(spec, attempt)}",
        # kubectl logs shows this node's first rank (rank 0 on worker 0) instead of all its workers
        # interleaved; every rank keeps its own worker_<rank>.log in --log_dir. msrun compares this
        # value with global rank ids.
        f"--tail_worker_log={index * spec.devices_per_node}",
    ]
    if spec.accelerator.type == "ascend" and spec.accelerator.bind_core:
        # Pins each worker to the cores of its NPU's NUMA node, as MindCV's distributed commands do.
        msrun.append("--bind_core=True")
    # Paths go as flags (never only in the config file): the command line shows where everything is.
    if spec.mode == "train":
        trainer = ["python", "-m", TRAIN_ENTRY, "--config", CONFIG_PATH, "--data_dir", S.DATA_MOUNT]
        trainer += ["--ckpt_save_dir", CKPT_DIR, "--resume", spec.resume]
        if spec.checkpoint:
            trainer += ["--ckpt_path", spec.checkpoint]
    else:
        trainer = ["python", "-m", VALIDATE_ENTRY, "--config", CONFIG_PATH, "--data_dir", S.DATA_MOUNT]
        trainer += ["--ckpt_path", spec.checkpoint or ""]
        if spec.output:
            trainer += ["--ckpt_save_dir", CKPT_DIR]
        return msrun + trainer  # one process (parse_spec checks): nothing to distribute
    return msrun + trainer + ["--distribute", "True"]


# Waits until a host name resolves (argv: host, timeout in seconds); exits non-zero after the timeout.
_WAIT_FOR_DNS = """\
import signal, socket, sys, time
# PID 1 of its container: without a handler SIGTERM would be ignored until the grace period ends.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
host, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        socket.getaddrinfo(host, None)
        break
    except OSError as err:
        if time.monotonic() > deadline:
            sys.exit(f"{host} did not resolve within {timeout:g}s: {err}")
        time.sleep(2)
print(f"{host} resolves")
"""


def wait_command(name: str, namespace: str, spec: S.JobSpec) -> list[str] | None:
    """The init container's command of multi-node pods: wait until rank 0's DNS name resolves."""
    if spec.nodes == 1:
        return None
    host = master_addr(name, namespace, spec.nodes)
    return ["python", "-c", _WAIT_FOR_DNS, host, str(spec.cluster_timeout)]


@dataclass(frozen=True)
class VolumeView:
    """A dataset or output volume as the templates need it."""

    pvc: str | None = None
    host_path: str | None = None
    host_path_type: str = "Directory"
    size_limit: str | None = None
    sub_path: str | None = None
    read_only: bool = False


def _data_volume(spec: S.JobSpec) -> VolumeView:
    ds = spec.dataset
    if ds.pvc is not None:
        ro = True if ds.pvc.read_only is None else ds.pvc.read_only
        return VolumeView(pvc=ds.pvc.claim_name, sub_path=ds.pvc.sub_path, read_only=ro)
    if ds.host_path is not None:
        return VolumeView(host_path=ds.host_path.path, read_only=True)
    # synthetic / digits make their data: a scratch /data keeps --data_dir valid (and writable for caches).
    return VolumeView()


def _output_volume(spec: S.JobSpec) -> VolumeView | None:
    out = spec.output
    if out is None:
        return None
    if out.pvc is not None:
        return VolumeView(
            pvc=out.pvc.claim_name, sub_path=out.pvc.sub_path, read_only=bool(out.pvc.read_only)
        )
    if out.host_path is not None:
        # Directory, not DirectoryOrCreate: the admin prepares the folder (with the owner the trainer
        # runs as); the kubelet would otherwise create root-owned folders on the node wherever a job
        # names one, which the CPU trainer (uid 1000) could not even write to.
        return VolumeView(host_path=out.host_path.path, host_path_type="Directory")
    assert out.empty_dir is not None
    size = out.empty_dir.size_limit
    return VolumeView(size_limit=None if size is None else str(size))


def _resources(spec: S.JobSpec, resource_name: str) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    if spec.resources is not None:
        for part in ("requests", "limits"):
            amounts = getattr(spec.resources, part)
            if amounts is not None:
                out[part] = amounts.model_dump(exclude_none=True)
    if spec.accelerator.type == "ascend":
        # Extended resources cannot be overcommitted: requests must equal limits.
        for part in ("requests", "limits"):
            out.setdefault(part, {})[resource_name] = str(spec.devices_per_node)
    return {k: v for k, v in out.items() if v}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML; every value goes through `tojson`
    )


_ENV = _environment()
# libyaml's safe loader when PyYAML has it: with the pure-Python loader, parsing rendered templates
# is most of the operator's CPU per job (benchmarks/operator_scale.py --profile); both give the same
# objects.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _render(template: str, **context: Any) -> dict[str, Any]:
    text = _ENV.get_template(template).render(**context)
    obj = yaml.load(text, Loader=_SAFE_LOADER)
    if not isinstance(obj, dict):
        raise RuntimeError(f"template {template} rendered no object")
    return obj


@dataclass(frozen=True)
class _PodSettings:
    """The pod-level choices of a job, its spec resolved against the cluster defaults."""

    ascend: bool
    resource_name: str
    node_selector: dict[str, str]
    chip: str
    npu_plugin: bool
    hw_hi_ai_user_gid: int | None
    scheduler_name: str | None
    image: str
    tolerations: list[dict[str, Any]]
    resources: dict[str, Any]


def _node_selector(spec: S.JobSpec, defaults: S.OperatorDefaults, chip: str) -> dict[str, str]:
    """The job's selector, else the default one of Ascend jobs, plus the chip's accelerator-type label."""
    ascend = spec.accelerator.type == "ascend"
    if spec.accelerator.node_selector is not None:
        node_selector = dict(spec.accelerator.node_selector)
    else:
        node_selector = dict(defaults.node_selector) if ascend else {}
    accelerator_type = defaults.accelerator_types.get(chip, "")
    if ascend and accelerator_type:
        # A selector that names the label itself wins (e.g. module-910b-16 servers).
        node_selector.setdefault(S.ACCELERATOR_TYPE_LABEL, accelerator_type)
    return node_selector


def _scheduler_name(spec: S.JobSpec, npu_plugin: bool) -> str | None:
    """The pods' scheduler: the named one, else volcano for gang and NPU-plugin jobs.

    Raises:
        SpecError: the NPU plugin is on and the job names a scheduler other than volcano.
    """
    named = spec.scheduling.scheduler_name
    if npu_plugin and named not in (None, "volcano"):
        raise S.SpecError(
            [
                f"spec.scheduling.schedulerName: the Volcano NPU plugin (on by the operator's default) only "
                f"annotates pods that volcano schedules, not {named!r}; remove "
                "schedulerName or set accelerator.volcanoNpuPlugin: false"
            ]
        )
    return named or ("volcano" if spec.scheduling.gang or npu_plugin else None)


def _pod_settings(spec: S.JobSpec, defaults: S.OperatorDefaults) -> _PodSettings:
    """Resolve the spec's pod-level fields against ``defaults`` (raises SpecError like ``_scheduler_name``)."""
    acc = spec.accelerator
    ascend = acc.type == "ascend"
    resource_name = acc.resource_name or defaults.resource_name
    chip = acc.chip or defaults.chip
    node_selector = _node_selector(spec, defaults, chip)
    npu_plugin = ascend and (
        defaults.volcano_npu_plugin if acc.volcano_npu_plugin is None else acc.volcano_npu_plugin
    )
    return _PodSettings(
        ascend=ascend,
        resource_name=resource_name,
        node_selector=node_selector,
        chip=chip,
        npu_plugin=npu_plugin,
        hw_hi_ai_user_gid=acc.hw_hi_ai_user_gid or defaults.hw_hi_ai_user_gid,
        scheduler_name=_scheduler_name(spec, npu_plugin),
        image=spec.image or defaults.image,
        tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in acc.tolerations],
        resources=_resources(spec, resource_name),
    )


def _config_text(name: str, namespace: str, spec: S.JobSpec, config: Mapping[str, Any], lr_note: str) -> str:
    """The ConfigMap's config.yaml: a header saying where the values come from, then the config."""
    return (
        f"# Resolved training config of MobileNetV2TrainingJob {namespace}/{name} (MindCV key names):\n"
        f"# recipe {spec.recipe} + spec.config overrides + the spec's own keys.\n"
        f"# {lr_note}\n"
        "# Paths are also given as command-line flags, which take precedence.\n"
    ) + _dump_config(config)


def _common_context(name: str, namespace: str, uid: str, spec: S.JobSpec) -> dict[str, Any]:
    """What every template sees: the job's identity, its spec, the children's labels, the master port."""
    job = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "api_version": C.API_VERSION,
        "kind": C.KIND,
        "group": C.GROUP,
        "plural": C.PLURAL,
    }
    return {"job": job, "spec": spec, "labels": job_labels(name), "master_port": MASTER_PORT}


def _render_objects(
    name: str, spec: S.JobSpec, settings: _PodSettings, config_text: str, common: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The job's Service, ConfigMap, ServiceAccount, Role, RoleBinding and (gang) PodGroup."""
    objects = [
        _render("service.yaml.j2", selector=pod_selector(name), **common),
        _render("configmap.yaml.j2", config_text=config_text, **common),
        _render("serviceaccount.yaml.j2", **common),
        _render("role.yaml.j2", **common),
        _render("rolebinding.yaml.j2", **common),
    ]
    if spec.scheduling.gang:
        # minResources lets Volcano hold the whole gang's devices before binding any pod.
        min_resources = {
            k: str(_times(v, spec.nodes))
            for k, v in settings.resources.get("requests", {}).items()
            if k == settings.resource_name
        }
        objects.append(_render("podgroup.yaml.j2", min_resources=min_resources, **common))
    return objects


def _render_pod(
    name: str,
    namespace: str,
    spec: S.JobSpec,
    index: int,
    attempt: int,
    settings: _PodSettings,
    common: Mapping[str, Any],
) -> dict[str, Any]:
    """Worker ``index``'s pod of attempt ``attempt``."""
    pod_labels = {
        **common["labels"],
        **pod_selector(name),
        LABEL_INDEX: str(index),
        LABEL_ATTEMPT: str(attempt),
    }
    return _render(
        "pod.yaml.j2",
        pod_name=pod_name(name, index),
        pod_labels=pod_labels,
        anti_affinity_keys=[LABEL_JOB, LABEL_ATTEMPT],
        pod_annotations={ANNOTATION_POD_GROUP: name} if spec.scheduling.gang else {},
        index=index,
        attempt=attempt,
        command=trainer_command(name, namespace, spec, index, attempt),
        wait_command=wait_command(name, namespace, spec),
        termination_message_path=TERMINATION_MESSAGE_PATH,
        token_dir=TOKEN_DIR,
        token_seconds=TOKEN_SECONDS,
        ascend=settings.ascend,
        resource_name=settings.resource_name,
        process_log_path=f"{log_dir(spec, attempt)}/ascend/node-{index}",
        chip=settings.chip,
        npu_plugin=settings.npu_plugin,
        hw_hi_ai_user_gid=settings.hw_hi_ai_user_gid,
        image=settings.image,
        scheduler_name=settings.scheduler_name,
        node_selector=settings.node_selector,
        tolerations=settings.tolerations,
        resources=settings.resources,
        data_volume=_data_volume(spec),
        output_volume=_output_volume(spec),
        **common,
    )


def render_job(
    name: str,
    namespace: str,
    uid: str,
    spec: S.JobSpec,
    attempt: int = 0,
    defaults: S.OperatorDefaults | None = None,
    ranks: Collection[int] | None = None,
) -> RenderedJob:
    """Render every child of a job for one attempt.

    Args:
        name: the job's name (names every child).
        namespace: the job's namespace (every child lives there).
        uid: the job's uid, for the children's owner references.
        spec: the parsed spec (``parse_spec``).
        attempt: 0 for the first run, +1 for each gang restart (labels, log folder).
        defaults: cluster defaults for fields the spec leaves empty; ``None`` uses the built-in ones
            (the operator passes ``OperatorDefaults.from_env()``).
        ranks: render only these workers' pods (those about to be created); ``None`` renders all.

    Raises:
        SpecError: the job's name is too long for its pods' hostnames, the config does not resolve, or
            the spec asks for something the admin's policy (``defaults.policy``) does not allow.
    """
    check_job_name(name)
    defaults = defaults or S.OperatorDefaults()
    refused = defaults.policy.check(spec, defaults.image, defaults.node_selector, defaults.hw_hi_ai_user_gid)
    if refused:
        raise S.SpecError(refused)
    settings = _pod_settings(spec, defaults)
    config, lr_note = training_config(spec)
    common = _common_context(name, namespace, uid, spec)
    objects = _render_objects(
        name, spec, settings, _config_text(name, namespace, spec, config, lr_note), common
    )
    indices = range(spec.nodes) if ranks is None else sorted(r for r in set(ranks) if 0 <= r < spec.nodes)
    pods = [_render_pod(name, namespace, spec, index, attempt, settings, common) for index in indices]
    return RenderedJob(objects=objects, pods=pods, config=config, warnings=spec.warnings())


def _times(quantity: str, n: int) -> int:
    # Device counts are plain integers ("8"), never suffixed quantities.
    return int(quantity) * n


def _dump_config(config: Mapping[str, Any]) -> str:
    from mnv2_trainer.config import dump_config  # the trainer's format, which it loads back unchanged

    return dump_config(config)


# --------------------------------------------------------------------------------------------------
# mnv2 render
# --------------------------------------------------------------------------------------------------


def load_job_manifest(filename: str) -> dict[str, Any]:
    """Read one MobileNetV2TrainingJob from a YAML file (``-`` for stdin).

    Raises:
        SpecError: unreadable file, not YAML, no or several jobs, wrong apiVersion, no name.
    """
    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
    except OSError as err:
        raise S.SpecError([f"{filename}: cannot read: {err.strerror or err}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise S.SpecError([f"{filename}: not valid YAML: {err}"]) from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == C.KIND]
    if len(jobs) != 1:
        raise S.SpecError([f"{filename}: expected one {C.KIND} document, found {len(jobs)}"])
    job = jobs[0]
    if job.get("apiVersion") != C.API_VERSION:
        raise S.SpecError([f"apiVersion: {job.get('apiVersion')!r} is not served; use {C.API_VERSION}"])
    meta = job.get("metadata") or {}
    if not meta.get("name"):
        raise S.SpecError(["metadata.name: required; name the job"])
    return job


def render_manifest(job: Mapping[str, Any], defaults: S.OperatorDefaults | None = None) -> RenderedJob:
    """Parse and render a job manifest (a dry run: placeholder uid, attempt 0)."""
    meta = job.get("metadata") or {}
    spec = S.parse_spec(job.get("spec") or {})
    return render_job(
        meta["name"],
        meta.get("namespace") or "default",
        meta.get("uid") or PLACEHOLDER_UID,
        spec,
        attempt=0,
        defaults=defaults,
    )


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the ConfigMap's config.yaml) as literal blocks a person can read."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_yaml(obj: Any) -> str:
    """One object as YAML, key order kept, multi-line strings as blocks."""
    return yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=True)


def to_yaml(rendered: RenderedJob, job: Mapping[str, Any]) -> str:
    """The rendered objects as one multi-document YAML with an explanatory header."""
    meta = job.get("metadata") or {}
    ns = meta.get("namespace") or "default"
    header = [
        f"# Objects the operator creates for {C.KIND} {ns}/{meta['name']} (attempt 0).",
        "# The ownerReferences' uid is a placeholder until the job exists; defaults left empty in the",
        "# spec come from this shell's MNV2_DEFAULT_* variables or the built-in ones, as in the operator.",
    ]
    header += [f"# warning: {w}" for w in rendered.warnings]
    docs = [dump_yaml(obj) for obj in rendered.all()]
    return "\n".join(header) + "\n---\n" + "---\n".join(docs)


def render_cli(filename: str, output: str = "yaml") -> int:
    """``mnv2 render -f job.yaml [-o json]``: print what the operator would create; 1 on an invalid job."""
    try:
        job = load_job_manifest(filename)
        rendered = render_manifest(job, S.OperatorDefaults.from_env())
    except S.SpecError as err:
        print(f"mnv2 render: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a malformed MNV2_DEFAULT_* variable
        print(f"mnv2 render: {err}", file=sys.stderr)
        return 1
    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": rendered.all()}, indent=2))
    else:
        sys.stdout.write(to_yaml(rendered, job))
    return 0
