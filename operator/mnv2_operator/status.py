"""The operator's half of a job's status, and what to do next: a pure function of what is observed.

`reconcile()` takes the job's run policy, the pods that currently exist for the job (as pod-shaped
dicts), the previous status and the current time, and returns a `Decision`: the operator's status
keys (`phase`, `conditions`, `workers`, `restarts`, `startTime`, `completionTime`,
`observedGeneration`, `message`) plus the actions that move the job forward (create pods of the
current attempt, delete pods, delete the job after its TTL) and when to look again.

The decision is made in small parts: what is observed (`Observed`: the pods by attempt and rank),
one function per situation that returns its part (`Step`): `finished`, `suspended`, and for a job
in progress `active`, which picks `deadline_exceeded`, `worker_failure` or `progress` (`waiting`
until every member runs); `decide` adds what all share (the Created condition, the transition
Event, the worker counts, the stale pods) and writes the status as an `OperatorStatus`, a pydantic
model whose `dump()` is the merge patch.

It is level-triggered: the same inputs always give the same decision, so replaying it after an
operator restart, or twice for one event, does no harm. It never reads or writes the trainer's keys
(`progress`, `metrics`, `checkpoints`).

The current attempt is `status.restarts`: pods carry their attempt in a label, and pods of any other
attempt are stale (left over from a gang restart) and only ever deleted. Pods of one rank share a
name across attempts (`<job>-worker-<i>`), so a rank is re-created only once no pod of that name
exists any more, not even a terminating one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mnv2_operator.constants import (
    INVALID_INPUT_MARKER,
    LABEL_ATTEMPT,
    LABEL_INDEX,
    TERMINAL_PHASES,
    ConditionType,
    Phase,
    Reason,
)
from mnv2_operator.spec import WorkerCounts

# The conditions every status carries (SpecInvalid only while a started job's spec does not validate).
CONDITION_TYPES = tuple(t for t in ConditionType if t != ConditionType.SPEC_INVALID)

# Longest termination message quoted per pod in the job's status (one line of it).
MAX_POD_MESSAGE = 300

_ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the job asks for, in the terms this module needs.

    Attributes:
        workers: number of pods in the gang (one per node).
        backoff_limit: gang restarts allowed before the job fails.
        active_deadline_seconds: wall-clock limit for the running job, counted from `startTime`.
        ttl_seconds_after_finished: delete the finished job this long after `completionTime`.
        clean_pod_policy: which pods to delete once the job finished: `Running`, `All` or `None`.
        suspend: delete the pods but keep the job and its other children.
    """

    workers: int
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    clean_pod_policy: str = "Running"
    suspend: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Policy:
        """Build from a spec in its camelCase (YAML) form, e.g. `JobSpec.model_dump(by_alias=True)`."""
        run = spec.get("runPolicy") or {}
        return cls(
            workers=int(spec.get("nodes") or 1),
            backoff_limit=int(3 if run.get("backoffLimit") is None else run["backoffLimit"]),
            active_deadline_seconds=run.get("activeDeadlineSeconds"),
            ttl_seconds_after_finished=run.get("ttlSecondsAfterFinished"),
            clean_pod_policy=str(run.get("cleanPodPolicy") or "Running"),
            suspend=bool(run.get("suspend", False)),
        )


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the job (`type` is Normal or Warning)."""

    type: str
    reason: str
    message: str


class _StatusPart(BaseModel):
    """Part of the status the operator writes: camelCase keys, no extra keys, immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class StatusCondition(_StatusPart):
    """One metav1.Condition as the operator writes it (the CRD's form is `spec.Condition`).

    Times are kept as the RFC 3339 strings they were read or written as, so an unchanged condition
    is written back byte for byte.
    """

    type: ConditionType
    status: Literal["True", "False"]
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int | None = Field(default=None, exclude_if=lambda v: v is None)


class OperatorStatus(_StatusPart):
    """The operator's half of a job's status (`OPERATOR_KEYS`), as one merge patch writes it.

    `dump()` gives the JSON form: every key, in this order, unset ones as null (a merge patch deletes
    them); a condition leaves out `observedGeneration` when the job has no generation.
    """

    phase: Phase
    conditions: tuple[StatusCondition, ...]
    workers: WorkerCounts
    restarts: int
    start_time: str | None
    completion_time: str | None
    observed_generation: int | None
    message: str

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


#: The keys of status the operator owns; everything else belongs to the trainer.
OPERATOR_KEYS = tuple(str(f.alias) for f in OperatorStatus.model_fields.values())


@dataclasses.dataclass(frozen=True)
class Decision:
    """The operator's next status and the actions that follow from it.

    Attributes:
        status: the operator's status keys (all of `OPERATOR_KEYS` that apply), to merge-patch:
            `OperatorStatus.dump()`.
        attempt: the attempt that pods should be created for (`status.restarts`).
        create_ranks: ranks whose pod of `attempt` should be created now.
        delete_pods: names of pods to delete (stale attempts, suspend, restart, clean-up).
        delete_job: the job's TTL after finishing has passed: delete the job itself.
        events: transitions to announce as Kubernetes Events.
        requeue_after: seconds until a time-based transition (deadline, TTL) or a re-check is due.
    """

    status: dict[str, Any]
    attempt: int
    create_ranks: tuple[int, ...] = ()
    delete_pods: tuple[str, ...] = ()
    delete_job: bool = False
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None


# ---------------------------------------------------------------------------------------------
# Small readers of pod-shaped dicts.


def format_time(t: dt.datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """Parse a Kubernetes timestamp; None for missing or malformed values."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def pod_name(pod: Mapping[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


def pod_attempt(pod: Mapping[str, Any]) -> int:
    """The attempt label of a pod; -1 when missing or unreadable (treated as stale)."""
    value = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_ATTEMPT)
    if value is None:
        return -1
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def pod_rank(pod: Mapping[str, Any]) -> int:
    """The node rank of a pod, from its label or else from the `-worker-<i>` name suffix."""
    value = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_INDEX)
    if value is None:
        value = pod_name(pod).rsplit("-", 1)[-1]
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def pod_deleting(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


# A pod still there this long after its deletion deadline (deletionTimestamp = request + grace
# period) is not being finished by its kubelet: its node is most likely down or cut off.
STUCK_TERMINATING_SECONDS = 60.0


def stuck_terminating(pods: Iterable[Mapping[str, Any]], now: dt.datetime) -> str | None:
    """What to tell the user about pods whose deletion the kubelet is not finishing, or None.

    Pods of one rank share a name across attempts, so a new attempt waits until the old pod is
    gone. On an unreachable node that never happens by itself (Kubernetes keeps the pod until its
    kubelet confirms). The operator does not force-delete: if the node is only cut off, the old
    workers may still run and write checkpoints. The user (or a node-fencing tool) confirms it.
    The text holds no running count, so the status does not change while it waits.
    """
    stuck = []
    for pod in pods:
        past = _elapsed((pod.get("metadata") or {}).get("deletionTimestamp"), now)
        if past is not None and past >= STUCK_TERMINATING_SECONDS:
            node = (pod.get("spec") or {}).get("nodeName")
            stuck.append((pod_name(pod), f" on node {node}" if node else ""))
    if not stuck:
        return None
    return (
        f"{', '.join(name + where for name, where in stuck)} still terminating "
        f"{int(STUCK_TERMINATING_SECONDS)}s after its grace period: the node may be down or "
        f"unreachable; once it is confirmed down, `kubectl delete pod {' '.join(n for n, _ in stuck)} "
        f"--force --grace-period=0` lets the gang restart"
    )


def pod_phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first container's non-zero terminated state (current, else the last one)."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term and term.get("exitCode", 0) != 0:
            return term
    return None


def termination_summary(message: str | None, limit: int = MAX_POD_MESSAGE) -> str:
    """One line of a container's termination message, at most `limit` characters.

    The line with `INVALID_INPUT_MARKER` if there is one (from the marker on), else the last non-empty
    line: a message taken from the log (terminationMessagePolicy FallbackToLogsOnError) ends with
    the error, and a one-line message is its own last line.
    """
    lines = [" ".join(line.split()) for line in str(message or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    marked = next((line for line in lines if INVALID_INPUT_MARKER in line), None)
    line = marked[marked.index(INVALID_INPUT_MARKER) :] if marked else lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def pod_message(pod: Mapping[str, Any]) -> str:
    """The failed container's termination message, as `termination_summary` shortens it ('' if none)."""
    term = _terminated(pod)
    return termination_summary(term.get("message")) if term else ""


def pod_invalid_input(pod: Mapping[str, Any]) -> bool:
    """Whether the pod failed on an input error that a restart cannot fix (the marker's message)."""
    return pod_message(pod).startswith(INVALID_INPUT_MARKER)


def pod_failure(pod: Mapping[str, Any]) -> str:
    """Why a failed pod failed, e.g. `exit code 1 (Error)`, from its terminated container state.

    With a termination message its summary follows: `exit code 1 (Error): mnv2: invalid input ...`.
    """
    status = pod.get("status") or {}
    term = _terminated(pod)
    if term is not None:
        reason = term.get("reason") or "Error"
        text = f"exit code {term.get('exitCode')} ({reason})"
        message = termination_summary(term.get("message"))
        return f"{text}: {message}" if message else text
    return str(status.get("reason") or status.get("message") or "pod failed")


def describe_failures(failed: Sequence[Mapping[str, Any]], lost: Sequence[str] = ()) -> str:
    """`<pod> failed: <why>` per failure; pods that failed alike share one entry (a gang of 8 ranks
    rejecting the same data_dir says so once)."""
    by_text: dict[str, list[str]] = {}
    for p in failed:
        by_text.setdefault(pod_failure(p), []).append(pod_name(p))
    parts = [f"{', '.join(names)} failed: {text}" for text, names in by_text.items()]
    return "; ".join(parts + [f"{n} was lost" for n in lost])


def worker_pod_name(job: str, rank: int) -> str:
    return f"{job}-worker-{rank}"


# ---------------------------------------------------------------------------------------------
# Ownership: which existing objects are the job's.


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference with `controller: true` of an object (Kubernetes allows at most one)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, Mapping) and r.get("controller") is True), None)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether `obj` is the job's: its controller owner reference carries the job's uid.

    Nothing else counts: not the name, not the labels, not a non-controller owner reference. Those
    anyone who may create the object can set; a controller reference to a job only the job's
    creator (or its operator) would make, and the garbage collector deletes the object with the job.
    """
    ref = controller_ref(obj)
    return bool(uid) and ref is not None and ref.get("uid") == uid


def conflict(kind: str, name: str, existing: Mapping[str, Any], job_kind: str, job: str) -> str:
    """One existing object of a child's name that is not job `job`'s, and whose it is."""
    ref = controller_ref(existing)
    if ref is None:
        whose = "no controller owner reference"
    elif ref.get("kind") == job_kind and ref.get("name") == job:
        whose = (
            f"an earlier {job_kind} of the same name (uid {ref.get('uid')}), which the garbage "
            "collector removes shortly"
        )
    else:
        whose = f"controlled by {ref.get('kind')} {ref.get('name')}"
    return f"{kind} {name} ({whose})"


def conflicts_message(conflicts: Sequence[str]) -> str:
    """What blocks a job (`conflict()` each), and what the user can do about it."""
    one = len(conflicts) == 1
    return (
        f"{'; '.join(conflicts)} {'exists' if one else 'exist'} already and "
        f"{'is' if one else 'are'} not this job's: the operator leaves "
        f"{'it' if one else 'them'} untouched and creates no pods while {'it is' if one else 'they are'} "
        f"there; delete or rename {'it' if one else 'them'}, or re-create this job under another name"
    )


# ---------------------------------------------------------------------------------------------
# Conditions.


def _transition_time(old: Mapping[str, Any] | None, status: str, now: dt.datetime) -> str:
    """A condition's lastTransitionTime: kept while its status stays the same, else now."""
    if old and old.get("status") == status and old.get("lastTransitionTime"):
        return str(old["lastTransitionTime"])
    return format_time(now)


def build_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    phase: Phase,
    reasons: Mapping[ConditionType, tuple[str, str]],
    generation: int | None,
    now: dt.datetime,
) -> tuple[StatusCondition, ...]:
    """Every condition type but SpecInvalid; those in `reasons` True, `lastTransitionTime` kept when unchanged.

    Args:
        previous: the conditions in the current status.
        phase: the new phase; False conditions name it as their reason (metav1 wants a reason).
        reasons: condition type -> (reason, message) for the conditions that are True now.
        generation: the job's metadata.generation.
        now: the time of this evaluation.
    """
    prev = {c.get("type"): c for c in previous or []}
    out = []
    for ctype in CONDITION_TYPES:
        status: Literal["True", "False"]
        if ctype in reasons:
            status, (reason, message) = "True", reasons[ctype]
        else:
            status, reason, message = "False", phase, f"the job is {phase}"
        out.append(
            StatusCondition(
                type=ctype,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=_transition_time(prev.get(ctype), status, now),
                observed_generation=generation,
            )
        )
    return tuple(out)


def _true_condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The first condition of type `ctype` that is True in `status`, if any."""
    return next(
        (c for c in status.get("conditions") or [] if c.get("type") == ctype and c.get("status") == "True"),
        None,
    )


# ---------------------------------------------------------------------------------------------
# A job whose spec does not validate.


def invalid_spec(
    previous: Mapping[str, Any] | None,
    message: str,
    generation: int | None,
    now: dt.datetime,
    pods: Iterable[Mapping[str, Any]] = (),
) -> Decision:
    """The status of a job whose spec does not validate: Failed, nothing created.

    Called for a job that has not started, or at a started job's next start (see
    `spec_invalid_deferred`); any pods it still has go: a Failed job with training pods still
    running would say one thing and do another.
    """
    prev = dict(previous or {})
    text = f"invalid spec: {message}"
    restarts = int(prev.get("restarts") or 0)
    status = OperatorStatus(
        phase=Phase.FAILED,
        conditions=build_conditions(
            prev.get("conditions"),
            Phase.FAILED,
            {ConditionType.FAILED: (Reason.INVALID_SPEC, text)},
            generation,
            now,
        ),
        workers=WorkerCounts(),
        restarts=restarts,
        start_time=prev.get("startTime"),
        completion_time=prev.get("completionTime") or format_time(now),
        observed_generation=generation,
        message=text,
    )
    events: tuple[Event, ...] = ()
    if prev.get("phase") != Phase.FAILED or prev.get("message") != text:
        events = (Event("Warning", Reason.INVALID_SPEC, text),)
    return Decision(
        status=status.dump(),
        attempt=restarts,
        delete_pods=tuple(pod_name(p) for p in pods if not pod_deleting(p)),
        events=events,
    )


def _lenient_int(value: Any, default: int | None, low: int = 0) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if number >= low else default


def gang_size(pods: Iterable[Mapping[str, Any]], attempt: int) -> int | None:
    """The size of the gang that pods of `attempt` were created for (highest rank + 1), or None.

    A running gang cannot change size (msrun's worker count is fixed when it starts): an edit of
    `nodes` applies at the next attempt, like any other spec change.
    """
    ranks = [pod_rank(p) for p in pods if pod_attempt(p) == attempt and pod_rank(p) >= 0]
    return max(ranks) + 1 if ranks else None


def lenient_policy(spec: Any, pods: Iterable[Mapping[str, Any]], attempt: int) -> Policy:
    """The run policy of a job whose spec does not validate, read field by field with defaults.

    Used for a job that has started (it goes on with its pods) or finished (its TTL and cleanup still
    apply): whatever the spec holds, this never raises. The gang is the one that runs: its size comes
    from the pods of the current attempt (the highest rank + 1), so an edit of `nodes` in an invalid
    spec neither adds nor drops members; without such pods, from `nodes` if it is a positive integer.
    """
    spec = spec if isinstance(spec, Mapping) else {}
    run = spec.get("runPolicy")
    run = run if isinstance(run, Mapping) else {}
    workers = gang_size(pods, attempt) or _lenient_int(spec.get("nodes"), 1, low=1)
    clean = run.get("cleanPodPolicy")
    return Policy(
        workers=workers or 1,
        backoff_limit=_lenient_int(run.get("backoffLimit"), 3) or 0,
        active_deadline_seconds=_lenient_int(run.get("activeDeadlineSeconds"), None, low=1),
        ttl_seconds_after_finished=_lenient_int(run.get("ttlSecondsAfterFinished"), None),
        clean_pod_policy=clean if clean in ("Running", "All", "None") else "Running",
        suspend=run.get("suspend") is True,
    )


def spec_invalid_deferred(
    decision: Decision,
    previous: Mapping[str, Any] | None,
    problem: str,
    generation: int | None,
    now: dt.datetime,
) -> Decision:
    """A started job whose spec no longer validates: it goes on, and says so.

    The spec was edited into an invalid one (or a recipe went away, or an operator upgrade checks
    more strictly). The job's pods were created from a valid spec and keep running as they are; the
    decision (made with `lenient_policy`) is carried out, except that it must create nothing: the
    caller fails the job with InvalidSpec instead when pods are to be created (the next start: a
    gang restart, a resume). Until then the condition SpecInvalid (True, reason InvalidSpec) and the
    message say what is wrong, and a Warning Event says it once per problem.
    """
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}.get(
        ConditionType.SPEC_INVALID
    ) or {}
    text = (
        f"the spec (generation {generation}) does not validate: {problem}; the pods keep the spec "
        "they started with, and the job fails with InvalidSpec when it next has to create pods "
        "(gang restart, resume) unless the spec is fixed first"
    )
    cond = StatusCondition(
        type=ConditionType.SPEC_INVALID,
        status="True",
        reason=Reason.INVALID_SPEC,
        message=text,
        last_transition_time=_transition_time(old, "True", now),
        observed_generation=generation,
    )
    status = OperatorStatus.model_validate(decision.status)
    status = status.model_copy(
        update={
            "conditions": (*status.conditions, cond),
            "message": f"{status.message or ''}; {text}".lstrip("; "),
        }
    )
    events = list(decision.events)
    if old.get("message") != text:
        events.append(Event("Warning", ConditionType.SPEC_INVALID, text))
    return dataclasses.replace(decision, status=status.dump(), create_ranks=(), events=tuple(events))


def failed_by_invalid_spec(prev: Mapping[str, Any]) -> bool:
    """Whether the status says Failed because the spec did not validate."""
    if prev.get("phase") != Phase.FAILED:
        return False
    return any(
        c.get("type") == ConditionType.FAILED
        and c.get("status") == "True"
        and c.get("reason") == Reason.INVALID_SPEC
        for c in prev.get("conditions") or []
    )


def _elapsed(since: str | None, now: dt.datetime) -> float | None:
    t = parse_time(since)
    return None if t is None else (now - t).total_seconds()


# ---------------------------------------------------------------------------------------------
# The decision: what is observed, one function per situation, and the assembly.


@dataclasses.dataclass(frozen=True)
class Observed:
    """The job's pods as one decision sees them.

    Attributes:
        pods: every pod of the job, of any attempt, terminating ones included.
        attempt: the current attempt (`status.restarts`).
        current: the pods of the current attempt.
        stale: the pods of any other attempt (left from a gang restart: only ever deleted).
        live: rank -> the pod of the current attempt that is not terminating.
    """

    pods: tuple[Mapping[str, Any], ...]
    attempt: int
    current: tuple[Mapping[str, Any], ...]
    stale: tuple[Mapping[str, Any], ...]
    live: Mapping[int, Mapping[str, Any]]

    @classmethod
    def of(cls, pods: Iterable[Mapping[str, Any]], attempt: int) -> Observed:
        pods = tuple(pods)
        current = tuple(p for p in pods if pod_attempt(p) == attempt)
        return cls(
            pods=pods,
            attempt=attempt,
            current=current,
            stale=tuple(p for p in pods if pod_attempt(p) != attempt),
            live={pod_rank(p): p for p in current if not pod_deleting(p)},
        )

    def counts(self) -> WorkerCounts:
        """The live pods by state (`status.workers`)."""
        phases = [pod_phase(p) for p in self.live.values()]
        return WorkerCounts(
            active=sum(p in _ACTIVE_POD_PHASES for p in phases),
            succeeded=phases.count("Succeeded"),
            failed=phases.count("Failed"),
        )

    def all_live(self, workers: int, phases: Collection[str]) -> bool:
        """Whether every one of `workers` ranks has a live pod, each in one of `phases`."""
        return len(self.live) == workers and all(pod_phase(p) in phases for p in self.live.values())

    def missing(self, job: str, workers: int) -> tuple[int, ...]:
        """Ranks with no pod at all: not live, and no pod of their name (not even a terminating one)."""
        names = {pod_name(p) for p in self.pods}
        return tuple(r for r in range(workers) if r not in self.live and worker_pod_name(job, r) not in names)


@dataclasses.dataclass(frozen=True)
class Step:
    """One situation's part of the decision; `reconcile` adds what every situation shares.

    Attributes:
        phase: the new phase.
        message: the new `status.message`.
        condition: (type, reason, message) of the condition that is True now besides Created.
        start_time: the new `status.startTime`.
        completion_time: the new `status.completionTime` (written for a finished job only).
        restarts: the new attempt, when the gang restarts; None keeps the current one.
        create: ranks whose pod of the attempt to create.
        delete: pods to delete (terminating ones are skipped when the decision is made).
        delete_job: delete the job itself (its TTL after finishing has passed).
        events: Events besides the phase transition's.
        requeue_after: seconds until a time-based transition is due.
    """

    phase: Phase
    message: str
    condition: tuple[ConditionType, str, str] | None = None
    start_time: str | None = None
    completion_time: str | None = None
    restarts: int | None = None
    create: tuple[int, ...] = ()
    delete: tuple[Mapping[str, Any], ...] = ()
    delete_job: bool = False
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None


def _finished_pods(policy: Policy, current: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    """The pods of a failed gang to delete.

    Active pods of a finished gang can never make progress (msrun needs every member), so they go
    whatever cleanPodPolicy says; the policy decides about the finished ones.
    """
    active = tuple(p for p in current if pod_phase(p) in _ACTIVE_POD_PHASES)
    return (*active, *current) if policy.clean_pod_policy == "All" else active


def finished(policy: Policy, observed: Observed, prev: Mapping[str, Any], now: dt.datetime) -> Step:
    """A job that Succeeded or Failed stays so: it cleans up its pods and waits for its TTL."""
    phase = Phase(prev["phase"])
    message = prev.get("message") or ""
    cond = _true_condition(prev, phase)
    reason = cond.get("reason", "") if cond is not None else phase
    completion = prev.get("completionTime") or format_time(now)
    step = Step(
        phase,
        message,
        condition=(ConditionType(phase), reason, message),
        start_time=prev.get("startTime"),
        completion_time=completion,
        delete=_finished_pods(policy, observed.current),
    )
    ttl = policy.ttl_seconds_after_finished
    if ttl is None:
        return step
    left = ttl - (_elapsed(completion, now) or 0.0)
    if left > 0:
        return dataclasses.replace(step, requeue_after=left)
    event = Event("Normal", Reason.DELETED, f"ttlSecondsAfterFinished ({ttl}s) passed")
    return dataclasses.replace(step, delete_job=True, events=(event,))


def suspended(observed: Observed) -> Step:
    """runPolicy.suspend: the pods go, the job and its other children stay.

    Like a Kubernetes Job, the deadline clock stops while suspended (no startTime) and restarts on
    resume.
    """
    message = "suspended: pods deleted; set runPolicy.suspend to false to resume"
    return Step(
        Phase.SUSPENDED,
        message,
        condition=(ConditionType.SUSPENDED, Reason.JOB_SUSPENDED, message),
        delete=observed.current,
    )


def deadline_exceeded(observed: Observed, deadline: int, now: dt.datetime) -> Step:
    """activeDeadlineSeconds passed: Failed, every pod of the attempt deleted."""
    message = f"activeDeadlineSeconds ({deadline}s) exceeded; pods deleted"
    return Step(
        Phase.FAILED,
        message,
        condition=(ConditionType.FAILED, Reason.DEADLINE_EXCEEDED, message),
        completion_time=format_time(now),
        delete=observed.current,
    )


def worker_failure(
    policy: Policy,
    observed: Observed,
    failed: Sequence[Mapping[str, Any]],
    lost: Sequence[str],
    now: dt.datetime,
) -> Step:
    """A member failed or was lost: restart the gang from the latest checkpoint, or fail the job.

    The job fails when it is out of restarts, or when the trainer said its inputs are wrong
    (data_dir, ckpt_path, config), so that every attempt would fail alike. Checkpoints on the volume
    are untouched either way.
    """
    permanent = [p for p in failed if pod_invalid_input(p)]
    what = describe_failures(permanent or failed, [] if permanent else lost)
    attempt = observed.attempt
    if not permanent and attempt < policy.backoff_limit:
        message = (
            f"{what}; restarting the gang from the latest checkpoint "
            f"(restart {attempt + 1} of {policy.backoff_limit})"
        )
        return Step(
            Phase.RESTARTING,
            message,
            condition=(ConditionType.RESTARTING, Reason.WORKER_FAILED, message),
            restarts=attempt + 1,
            delete=observed.current,
        )
    if permanent:
        message = f"{what}; not retried: fix the input, then delete and re-create the job"
        reason = Reason.INVALID_INPUT
    else:
        message = f"{what}; backoffLimit ({policy.backoff_limit}) reached"
        reason = Reason.BACKOFF_LIMIT_EXCEEDED
    return Step(
        Phase.FAILED,
        message,
        condition=(ConditionType.FAILED, reason, message),
        completion_time=format_time(now),
        delete=_finished_pods(policy, observed.current),
    )


def waiting(job: str, policy: Policy, observed: Observed, prev: Mapping[str, Any], now: dt.datetime) -> Step:
    """Not every member runs yet: Pending (Restarting after a gang restart); create the missing ranks.

    A rank whose old pod is still terminating waits for it to go (pods of a rank share a name); one
    that stays long after its grace period is named, with what the user can do.
    """
    n = policy.workers
    started = sum(pod_phase(p) in ("Running", "Succeeded") for p in observed.live.values())
    message = f"waiting for {n - started} of {n} worker(s) to start (attempt {observed.attempt})"
    phase, condition = Phase.PENDING, None
    if prev.get("phase") == Phase.RESTARTING:
        # Keep saying why the gang restarts until it runs again.
        cond = _true_condition(prev, ConditionType.RESTARTING)
        why = (
            (cond.get("message") or "")
            if cond is not None
            else f"restart {observed.attempt} of {policy.backoff_limit}"
        )
        phase, condition = Phase.RESTARTING, (ConditionType.RESTARTING, Reason.WORKER_FAILED, why)
        message = f"{message}; {why}"
    terminating = (p for p in observed.pods if pod_deleting(p) and pod_rank(p) not in observed.live)
    stuck = stuck_terminating(terminating, now)
    events: tuple[Event, ...] = ()
    if stuck is not None:
        message = f"{message}; {stuck}"
        if stuck not in (prev.get("message") or ""):
            events = (Event("Warning", Reason.POD_STUCK_TERMINATING, stuck),)
    return Step(phase, message, condition=condition, create=observed.missing(job, n), events=events)


def progress(job: str, policy: Policy, observed: Observed, prev: Mapping[str, Any], now: dt.datetime) -> Step:
    """No member failed: Succeeded when all have, Running when all run, else waiting for them."""
    n = policy.workers
    if observed.all_live(n, ("Succeeded",)):
        message = f"all {n} worker(s) succeeded"
        return Step(
            Phase.SUCCEEDED,
            message,
            condition=(ConditionType.SUCCEEDED, Reason.ALL_WORKERS_SUCCEEDED, message),
            completion_time=format_time(now),
            delete=observed.current if policy.clean_pod_policy == "All" else (),
        )
    if observed.all_live(n, ("Running", "Succeeded")):
        counts = observed.counts()
        message = f"{counts.active} worker(s) running, {counts.succeeded} succeeded"
        return Step(
            Phase.RUNNING, message, condition=(ConditionType.RUNNING, Reason.ALL_WORKERS_RUNNING, message)
        )
    return waiting(job, policy, observed, prev, now)


def active(job: str, policy: Policy, observed: Observed, prev: Mapping[str, Any], now: dt.datetime) -> Step:
    """A job that has not finished and is not suspended: deadline, then failures, then progress.

    The deadline counts from startTime (set now if the job has none). A job still making progress
    is looked at again when its deadline is due (a gang restart is, once its new pods report); one
    that finishes on this pass, when its TTL is.
    """
    start_time = prev.get("startTime")
    if start_time is None:
        start_time = format_time(now)
    elapsed = _elapsed(start_time, now) or 0.0
    deadline = policy.active_deadline_seconds
    failed = [p for p in observed.live.values() if pod_phase(p) == "Failed"]
    lost: list[str] = []
    if prev.get("phase") == Phase.RUNNING:
        # Every member was running: a missing or terminating member was lost under our feet
        # (evicted, deleted by someone). msrun cannot continue without it.
        lost = [worker_pod_name(job, r) for r in range(policy.workers) if r not in observed.live]
    progressing = False
    if deadline is not None and elapsed >= deadline:
        step = deadline_exceeded(observed, deadline, now)
    elif failed or lost:
        step = worker_failure(policy, observed, failed, lost, now)
    else:
        step, progressing = progress(job, policy, observed, prev, now), True
    requeue = step.requeue_after
    if progressing and deadline is not None and step.phase not in TERMINAL_PHASES:
        requeue = max(deadline - elapsed, 0.0)
    if step.phase in TERMINAL_PHASES and policy.ttl_seconds_after_finished is not None:
        requeue = float(policy.ttl_seconds_after_finished)
    return dataclasses.replace(step, start_time=start_time, requeue_after=requeue)


def transition_event(step: Step, prev_phase: Any, attempt: int) -> Event | None:
    """The Event announcing a new phase or a gang restart, if this step makes one."""
    restarts = attempt if step.restarts is None else step.restarts
    if step.phase == prev_phase and restarts == attempt:
        return None
    kind = "Warning" if step.phase in (Phase.FAILED, Phase.RESTARTING) else "Normal"
    # An input error is announced under its own reason (findable with a field selector).
    invalid_input = step.condition is not None and step.condition[:2] == (
        ConditionType.FAILED,
        Reason.INVALID_INPUT,
    )
    return Event(kind, Reason.INVALID_INPUT if invalid_input else step.phase, step.message)


def recheck_after(step: Step, observed: Observed) -> float | None:
    """When to look again: the step's time-based transition, or in 1 s while a rank waits for its old pod.

    A rank whose old pod is still terminating must be created once it is gone. The pod's DELETED
    event normally triggers that; this is the safety net if the event is missed.
    """
    requeue = step.requeue_after
    waiting_for_pods = observed.stale or any(pod_deleting(p) for p in observed.current)
    if step.phase in (Phase.PENDING, Phase.RESTARTING) and waiting_for_pods:
        requeue = 1.0 if requeue is None else min(requeue, 1.0)
    return requeue


def deletions(observed: Observed, step: Step) -> tuple[str, ...]:
    """Names of the pods to delete: stale ones, then the step's; terminating ones are left alone."""
    names = [pod_name(p) for p in observed.stale if not pod_deleting(p)]
    for pod in step.delete:
        if not pod_deleting(pod) and pod_name(pod) not in names:
            names.append(pod_name(pod))
    return tuple(names)


def reconcile(
    job: str,
    policy: Policy,
    pods: Iterable[Mapping[str, Any]],
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: dt.datetime,
) -> Decision:
    """Decide the operator's status and next actions for one job.

    Args:
        job: the job's name (pods are named `<job>-worker-<rank>`).
        policy: what the spec asks for.
        pods: every pod that exists for the job, of any attempt, including terminating ones.
        previous: the job's current status (trainer keys are ignored).
        generation: the job's metadata.generation, copied to `observedGeneration`.
        now: the current time (timezone-aware).

    Returns:
        The decision; applying its actions and then calling again converges to a fixed point.
    """
    prev = dict(previous or {})
    if failed_by_invalid_spec(prev) and prev.get("observedGeneration") != generation:
        # The spec was fixed (a new generation that validates): start as a new job. The same
        # generation stays Failed: the API server refused what it renders (see handlers).
        prev = {"conditions": prev.get("conditions")}
    observed = Observed.of(pods, int(prev.get("restarts") or 0))
    if prev.get("phase") in TERMINAL_PHASES:
        step = finished(policy, observed, prev, now)
    elif policy.suspend:
        step = suspended(observed)
    else:
        step = active(job, policy, observed, prev, now)
    return decide(step, observed, policy, prev, generation, now)


def decide(
    step: Step,
    observed: Observed,
    policy: Policy,
    prev: Mapping[str, Any],
    generation: int | None,
    now: dt.datetime,
) -> Decision:
    """The decision from a situation's step and what every situation shares: the Created condition
    (the spec is valid, so the children are created on this pass if missing), the transition Event,
    the worker counts, the stale pods' deletion."""
    restarts = observed.attempt if step.restarts is None else step.restarts
    reasons: dict[ConditionType, tuple[str, str]] = {
        ConditionType.CREATED: (
            Reason.CHILDREN_CREATED,
            f"service, config, RBAC and {policy.workers} worker pod(s) managed",
        )
    }
    if step.condition is not None:
        reasons[step.condition[0]] = step.condition[1:]
    status = OperatorStatus(
        phase=step.phase,
        conditions=build_conditions(prev.get("conditions"), step.phase, reasons, generation, now),
        workers=observed.counts(),
        restarts=restarts,
        start_time=step.start_time,
        completion_time=step.completion_time if step.phase in TERMINAL_PHASES else None,
        observed_generation=generation,
        message=step.message,
    )
    transition = transition_event(step, prev.get("phase"), observed.attempt)
    return Decision(
        status=status.dump(),
        attempt=restarts,
        create_ranks=step.create if step.phase in (Phase.PENDING, Phase.RESTARTING) else (),
        delete_pods=deletions(observed, step),
        delete_job=step.delete_job,
        events=(*([transition] if transition else []), *step.events),
        requeue_after=recheck_after(step, observed),
    )


def trusted_status(
    api: Mapping[str, Any] | None,
    remembered: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The job's status as the operator can trust it: the input of `reconcile()`.

    The status subresource has two writers, and the trainer (any code in the job's rank-0 pod, so
    whoever chose the image) may patch every key of it, the operator's included. What the operator
    decides from must not be one of those keys as someone else wrote them: a rewritten `phase`
    (Failed, Succeeded) would make it delete running pods or start the TTL, a lower `restarts`
    would reset the backoff count, a higher one would make it delete the running gang as stale.

    So the operator's keys come from what this operator process last wrote (`remembered`): whatever
    else the API shows for them is ignored, and the next status patch writes them back. The trainer
    cannot touch that memory (nor the pods). Only after an operator restart, when nothing is
    remembered, does the API's copy serve, checked against the pods, which only the operator
    creates and whose attempt label the trainer cannot change:

    - `restarts` is the attempt of the live (not terminating) pods when they disagree: never
      backwards, never ahead of them (a gang restart that the status announces but whose old pods
      are not being deleted yet is decided again, as the running gang it was, from the failed or
      missing member that caused it: counted once, as before);
    - a finished `phase` is not believed while a pod of the current attempt is still active (the
      operator deletes those when a job finishes): the phase is decided again from the pods.

    A status annotation kept on the job would survive operator restarts, but the operator would
    need write access to the jobs themselves and one more write per transition; the pods carry
    what matters already.

    Args:
        api: the job's status as the API server returned it (trainer keys included).
        remembered: the operator keys this process last wrote for this job (same uid), or None.
        pods: the job's pods (owned by its uid).
    """
    api = dict(api or {})
    if remembered is not None:
        return {**api, **{k: remembered.get(k) for k in OPERATOR_KEYS}}
    live = [p for p in pods if not pod_deleting(p) and pod_attempt(p) >= 0]
    claimed = api.get("restarts")
    claimed = claimed if isinstance(claimed, int) and not isinstance(claimed, bool) and claimed >= 0 else 0
    attempt = claimed
    if live:
        attempt = max(pod_attempt(p) for p in live)
    out = {**api, "restarts": attempt}
    active = [p for p in live if pod_attempt(p) == attempt and pod_phase(p) in _ACTIVE_POD_PHASES]
    if api.get("phase") in TERMINAL_PHASES:
        if active:
            out["phase"] = None
            out["completionTime"] = None
    elif claimed > attempt:
        # A restart the status announces whose old pods are all still there (an operator that
        # died between the status patch and the deletes, or a rewrite): decided again, as the
        # running gang it was, from what caused it: a failed pod, or a member that is missing.
        out["phase"] = Phase.RUNNING
    return out


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether any operator key differs (the trainer's keys are not compared)."""
    old = old or {}
    return any(old.get(k) != new.get(k) for k in OPERATOR_KEYS)


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of the operator's keys that changed (None deletes a key)."""
    old = old or {}
    return {k: new.get(k) for k in OPERATOR_KEYS if old.get(k) != new.get(k)}


def operator_status(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator's keys of a status, without the unset ones."""
    status = status or {}
    return {k: status[k] for k in OPERATOR_KEYS if status.get(k) is not None}
