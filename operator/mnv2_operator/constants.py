"""The names of the `MobileNetV2TrainingJob` resource: the one place each is written down.

API group, version, kind and plural; the labels and annotations the operator puts on a job's
children and reads back; the phases, condition types and reasons of the job's status. The operator,
`mnv2 status`, the trainer's status reporter, the benchmarks and the tests all import them from
here (a unit test fails on a second definition anywhere in the repository).

This module imports only the standard library: no pydantic, kopf or kubernetes client. The trainer
(``mnv2_trainer.report``) imports it inside training pods, where importing the operator's
dependencies would cost start-up time and memory for nothing; keep it that way.

Phases, condition types and reasons are ``StrEnum`` members: each is its string (``Phase.RUNNING ==
"Running"``, ``f"{Phase.RUNNING}"`` is ``Running``, JSON encodes it as ``"Running"``), so status
written with them is byte-identical to status written with plain strings.
"""

from __future__ import annotations

from enum import StrEnum

# -- The resource --------------------------------------------------------------------------------

GROUP = "training.mnv2.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MobileNetV2TrainingJob"
PLURAL = "mobilenetv2trainingjobs"
SINGULAR = "mobilenetv2trainingjob"
SHORT_NAMES = ("mnv2job", "mnv2")
#: The CRD's metadata.name.
CRD_NAME = f"{PLURAL}.{GROUP}"

# -- Labels on a job's children ------------------------------------------------------------------

#: The job's name, on every child; with ``LABEL_ROLE`` it selects the job's worker pods.
LABEL_JOB = f"{GROUP}/job-name"
#: A worker pod's node rank (``<job>-worker-<i>`` carries ``i``).
LABEL_INDEX = f"{GROUP}/replica-index"
#: The attempt (``status.restarts``) a worker pod was created for; other attempts' pods are stale.
LABEL_ATTEMPT = f"{GROUP}/attempt"
#: ``worker`` on worker pods.
LABEL_ROLE = f"{GROUP}/role"
ROLE_WORKER = "worker"

# -- Annotations ---------------------------------------------------------------------------------

#: Hash of the spec a worker pod was rendered from (the operator's own bookkeeping).
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
#: Volcano's pod annotation naming the PodGroup of a gang-scheduled pod.
ANNOTATION_POD_GROUP = "scheduling.k8s.io/group-name"

# -- The trainer's termination message -----------------------------------------------------------

#: A worker container's termination message that starts with this says that the trainer's input is
#: wrong (data_dir, ckpt_path, config): the operator fails the job at once instead of restarting the
#: gang (``mnv2_trainer.termination`` writes it, ``mnv2_operator.status`` reads it).
INVALID_INPUT_MARKER = "mnv2: invalid input (not retried):"

# -- Status --------------------------------------------------------------------------------------


class Phase(StrEnum):
    """``status.phase``, as the operator writes it."""

    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


#: The phases a job does not leave (by itself: a fixed spec restarts a job Failed with InvalidSpec).
TERMINAL_PHASES = (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    """``status.conditions[].type``: one per phase after ``Created``, plus ``SpecInvalid``."""

    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    #: Present only while a started job's current spec does not validate but it goes on with its pods.
    SPEC_INVALID = "SpecInvalid"


class Reason(StrEnum):
    """Reasons of conditions and of the Events the operator posts on a job (CamelCase, as
    metav1.Condition requires). A phase's name is also used as a reason; those are not repeated."""

    CHILDREN_CREATED = "ChildrenCreated"
    ALL_WORKERS_RUNNING = "AllWorkersRunning"
    ALL_WORKERS_SUCCEEDED = "AllWorkersSucceeded"
    WORKER_FAILED = "WorkerFailed"
    JOB_SUSPENDED = "JobSuspended"
    INVALID_SPEC = "InvalidSpec"
    INVALID_INPUT = "InvalidInput"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    CHILD_CONFLICT = "ChildConflict"
    CREATE_FAILED = "CreateFailed"
    #: Event: the operator created worker pods of the current attempt.
    PODS_CREATED = "PodsCreated"
    POD_STUCK_TERMINATING = "PodStuckTerminating"
    #: Event: the spec changed while pods run; the change applies when pods are next created.
    SPEC_CHANGE_DEFERRED = "SpecChangeDeferred"
    #: Event: the job's ttlSecondsAfterFinished passed and the operator deletes it.
    DELETED = "Deleted"
