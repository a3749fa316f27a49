"""The operator's half of a job's status, and what to do next: a pure function of what is observed.

`reconcile()` takes the job's run policy, the pods that currently exist for the job (as pod-shaped
dicts), the previous status and the current time, and returns a `Decision`: the operator's status
keys (`phase`, `conditions`, `workers`, `restarts`, `startTime`, `completionTime`,
`observedGeneration`, `message`) plus the actions that move the job forward (create pods of the
current attempt, delete pods, delete the job after its TTL) and when to look again.

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mnv2_operator.constants import LABEL_ATTEMPT, LABEL_INDEX, TERMINAL_PHASES, ConditionType, Phase, Reason

PENDING = Phase.PENDING
RUNNING = Phase.RUNNING
RESTARTING = Phase.RESTARTING
SUCCEEDED = Phase.SUCCEEDED
FAILED = Phase.FAILED
SUSPENDED = Phase.SUSPENDED
PHASES = tuple(Phase)
TERMINAL = TERMINAL_PHASES

CONDITION_TYPES = tuple(t for t in ConditionType if t != ConditionType.SPEC_INVALID)

REASON_INVALID_SPEC = Reason.INVALID_SPEC
REASON_BACKOFF = Reason.BACKOFF_LIMIT_EXCEEDED
REASON_DEADLINE = Reason.DEADLINE_EXCEEDED
REASON_INVALID_INPUT = Reason.INVALID_INPUT
# A condition present only while the job's current spec does not validate but the job goes on with
# the pods it has (see `spec_invalid_deferred`).
CONDITION_SPEC_INVALID = ConditionType.SPEC_INVALID

# A container termination message that starts with this says a retry cannot help (the trainer's
# `mnv2_trainer.termination.PREFIX`; a unit test checks they agree).
PERMANENT_MARKER = "mnv2: invalid input (not retried):"
# Longest termination message quoted per pod in the job's status (one line of it).
MAX_POD_MESSAGE = 300

# The keys of status this module owns; everything else belongs to the trainer.
OPERATOR_KEYS = (
    "phase",
    "conditions",
    "workers",
    "restarts",
    "startTime",
    "completionTime",
    "observedGeneration",
    "message",
)

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


@dataclasses.dataclass(frozen=True)
class Decision:
    """The operator's next status and the actions that follow from it.

    Attributes:
        status: the operator's status keys (all of `OPERATOR_KEYS` that apply), to merge-patch.
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

    The line with `PERMANENT_MARKER` if there is one (from the marker on), else the last non-empty
    line: a message taken from the log (terminationMessagePolicy FallbackToLogsOnError) ends with
    the error, and a one-line message is its own last line.
    """
    lines = [" ".join(line.split()) for line in str(message or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    marked = next((line for line in lines if PERMANENT_MARKER in line), None)
    line = marked[marked.index(PERMANENT_MARKER) :] if marked else lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def pod_message(pod: Mapping[str, Any]) -> str:
    """The failed container's termination message, as `termination_summary` shortens it ('' if none)."""
    term = _terminated(pod)
    return termination_summary(term.get("message")) if term else ""


def pod_invalid_input(pod: Mapping[str, Any]) -> bool:
    """Whether the pod failed on an input error that a restart cannot fix (the marker's message)."""
    return pod_message(pod).startswith(PERMANENT_MARKER)


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

REASON_CHILD_CONFLICT = Reason.CHILD_CONFLICT
REASON_CREATE_FAILED = Reason.CREATE_FAILED


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


def build_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    phase: str,
    reasons: Mapping[str, tuple[str, str]],
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Every condition type; those in `reasons` True, `lastTransitionTime` kept when unchanged.

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
        if ctype in reasons:
            status, (reason, message) = "True", reasons[ctype]
        else:
            status, reason, message = "False", phase, f"the job is {phase}"
        old = prev.get(ctype)
        transition = (
            old.get("lastTransitionTime")
            if old and old.get("status") == status and old.get("lastTransitionTime")
            else format_time(now)
        )
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": transition,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


# ---------------------------------------------------------------------------------------------
# The decision.


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
    status = {
        "phase": FAILED,
        "conditions": build_conditions(
            prev.get("conditions"), FAILED, {FAILED: (REASON_INVALID_SPEC, text)}, generation, now
        ),
        "workers": {"active": 0, "succeeded": 0, "failed": 0},
        "restarts": int(prev.get("restarts") or 0),
        "startTime": prev.get("startTime"),
        "completionTime": prev.get("completionTime") or format_time(now),
        "observedGeneration": generation,
        "message": text,
    }
    events: tuple[Event, ...] = ()
    if prev.get("phase") != FAILED or prev.get("message") != text:
        events = (Event("Warning", REASON_INVALID_SPEC, text),)
    return Decision(
        status=status,
        attempt=int(prev.get("restarts") or 0),
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
    prev_conds = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    old = prev_conds.get(CONDITION_SPEC_INVALID) or {}
    text = (
        f"the spec (generation {generation}) does not validate: {problem}; the pods keep the spec "
        "they started with, and the job fails with InvalidSpec when it next has to create pods "
        "(gang restart, resume) unless the spec is fixed first"
    )
    cond: dict[str, Any] = {
        "type": CONDITION_SPEC_INVALID,
        "status": "True",
        "reason": REASON_INVALID_SPEC,
        "message": text,
        "lastTransitionTime": old.get("lastTransitionTime")
        if old.get("status") == "True" and old.get("lastTransitionTime")
        else format_time(now),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    status = dict(decision.status)
    status["conditions"] = [*status["conditions"], cond]
    status["message"] = f"{status.get('message') or ''}; {text}".lstrip("; ")
    events = list(decision.events)
    if old.get("message") != text:
        events.append(Event("Warning", CONDITION_SPEC_INVALID, text))
    return dataclasses.replace(decision, status=status, create_ranks=(), events=tuple(events))


def failed_by_invalid_spec(prev: Mapping[str, Any]) -> bool:
    """Whether the status says Failed because the spec did not validate."""
    if prev.get("phase") != FAILED:
        return False
    return any(
        c.get("type") == FAILED and c.get("status") == "True" and c.get("reason") == REASON_INVALID_SPEC
        for c in prev.get("conditions") or []
    )


def _elapsed(since: str | None, now: dt.datetime) -> float | None:
    t = parse_time(since)
    return None if t is None else (now - t).total_seconds()


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
    pods = list(pods)
    attempt = int(prev.get("restarts") or 0)
    prev_phase = prev.get("phase")
    start_time = prev.get("startTime")
    completion = prev.get("completionTime")

    current = [p for p in pods if pod_attempt(p) == attempt]
    stale = [p for p in pods if pod_attempt(p) != attempt]
    live = {pod_rank(p): p for p in current if not pod_deleting(p)}
    names_present = {pod_name(p) for p in pods}

    counts = {
        "active": sum(pod_phase(p) in _ACTIVE_POD_PHASES for p in live.values()),
        "succeeded": sum(pod_phase(p) == "Succeeded" for p in live.values()),
        "failed": sum(pod_phase(p) == "Failed" for p in live.values()),
    }
    delete: list[str] = [pod_name(p) for p in stale if not pod_deleting(p)]
    create: list[int] = []
    events: list[Event] = []
    requeue: float | None = None
    delete_job = False
    restarts = attempt
    conds: dict[str, tuple[str, str]] = {}

    def delete_all(which: Iterable[Mapping[str, Any]]) -> None:
        for p in which:
            if not pod_deleting(p) and pod_name(p) not in delete:
                delete.append(pod_name(p))

    # The spec is valid, so the handler creates the children on this pass if they are missing.
    conds["Created"] = (
        "ChildrenCreated",
        f"service, config, RBAC and {policy.workers} worker pod(s) managed",
    )

    if prev_phase in TERMINAL:
        phase = prev_phase
        message = prev.get("message") or ""
        reason = next(
            (
                c.get("reason", "")
                for c in prev.get("conditions") or []
                if c.get("type") == phase and c.get("status") == "True"
            ),
            phase,
        )
        conds[phase] = (reason, message)
        completion = completion or format_time(now)
        # Active pods of a finished gang can never make progress (msrun needs every member), so
        # they go whatever cleanPodPolicy says; the policy decides about the finished ones.
        delete_all(p for p in current if pod_phase(p) in _ACTIVE_POD_PHASES)
        if policy.clean_pod_policy == "All":
            delete_all(current)
        if policy.ttl_seconds_after_finished is not None:
            waited = _elapsed(completion, now) or 0.0
            left = policy.ttl_seconds_after_finished - waited
            if left <= 0:
                delete_job = True
                events.append(
                    Event(
                        "Normal",
                        "Deleted",
                        f"ttlSecondsAfterFinished ({policy.ttl_seconds_after_finished}s) passed",
                    )
                )
            else:
                requeue = left
    elif policy.suspend:
        phase = SUSPENDED
        delete_all(current)
        message = "suspended: pods deleted; set runPolicy.suspend to false to resume"
        conds[SUSPENDED] = ("JobSuspended", message)
        # Like a Kubernetes Job, the deadline clock stops while suspended and restarts on resume.
        start_time = None
    else:
        failed = [p for p in live.values() if pod_phase(p) == "Failed"]
        lost: list[str] = []
        if prev_phase == RUNNING:
            # Every member was running: a missing or terminating member was lost under our feet
            # (evicted, deleted by someone). msrun cannot continue without it.
            lost = [worker_pod_name(job, r) for r in range(policy.workers) if r not in live]
        if start_time is None:
            start_time = format_time(now)
        elapsed = _elapsed(start_time, now) or 0.0
        deadline = policy.active_deadline_seconds
        if deadline is not None and elapsed >= deadline:
            phase = FAILED
            message = f"activeDeadlineSeconds ({deadline}s) exceeded; pods deleted"
            conds[FAILED] = (REASON_DEADLINE, message)
            completion = format_time(now)
            delete_all(current)
        elif failed or lost:
            permanent = [p for p in failed if pod_invalid_input(p)]
            what = describe_failures(permanent or failed, [] if permanent else lost)
            if not permanent and attempt < policy.backoff_limit:
                restarts = attempt + 1
                phase = RESTARTING
                message = (
                    f"{what}; restarting the gang from the latest checkpoint "
                    f"(restart {restarts} of {policy.backoff_limit})"
                )
                conds[RESTARTING] = ("WorkerFailed", message)
                delete_all(current)
            else:
                # Out of restarts, or the trainer said its inputs are wrong (data_dir, ckpt_path,
                # config), so every attempt would fail alike. Checkpoints on the volume are untouched.
                phase = FAILED
                if permanent:
                    message = f"{what}; not retried: fix the input, then delete and re-create the job"
                    conds[FAILED] = (REASON_INVALID_INPUT, message)
                else:
                    message = f"{what}; backoffLimit ({policy.backoff_limit}) reached"
                    conds[FAILED] = (REASON_BACKOFF, message)
                completion = format_time(now)
                delete_all(p for p in current if pod_phase(p) in _ACTIVE_POD_PHASES)
                if policy.clean_pod_policy == "All":
                    delete_all(current)
        else:
            create = [
                r
                for r in range(policy.workers)
                if r not in live and worker_pod_name(job, r) not in names_present
            ]
            n = policy.workers
            if len(live) == n and all(pod_phase(p) == "Succeeded" for p in live.values()):
                phase = SUCCEEDED
                message = f"all {n} worker(s) succeeded"
                conds[SUCCEEDED] = ("AllWorkersSucceeded", message)
                completion = format_time(now)
                if policy.clean_pod_policy == "All":
                    delete_all(current)
            elif len(live) == n and all(pod_phase(p) in ("Running", "Succeeded") for p in live.values()):
                phase = RUNNING
                message = f"{counts['active']} worker(s) running, {counts['succeeded']} succeeded"
                conds[RUNNING] = ("AllWorkersRunning", message)
            else:
                phase = RESTARTING if prev_phase == RESTARTING else PENDING
                waiting = n - sum(pod_phase(p) in ("Running", "Succeeded") for p in live.values())
                message = f"waiting for {waiting} of {n} worker(s) to start (attempt {attempt})"
                if phase == RESTARTING:
                    # Keep saying why the gang restarts until it runs again.
                    why = next(
                        (
                            c.get("message") or ""
                            for c in prev.get("conditions") or []
                            if c.get("type") == RESTARTING and c.get("status") == "True"
                        ),
                        f"restart {attempt} of {policy.backoff_limit}",
                    )
                    conds[RESTARTING] = ("WorkerFailed", why)
                    message = f"{message}; {why}"
                stuck = stuck_terminating(
                    (p for p in pods if pod_deleting(p) and pod_rank(p) not in live), now
                )
                if stuck is not None:
                    message = f"{message}; {stuck}"
                    if stuck not in (prev.get("message") or ""):
                        events.append(Event("Warning", "PodStuckTerminating", stuck))
            if deadline is not None and phase not in TERMINAL:
                requeue = max(deadline - elapsed, 0.0)
        if phase in TERMINAL and policy.ttl_seconds_after_finished is not None:
            requeue = float(policy.ttl_seconds_after_finished)

    if phase != prev_phase or restarts != attempt:
        kind = "Warning" if phase in (FAILED, RESTARTING) else "Normal"
        # An input error is announced under its own reason (findable with a field selector).
        event_reason = REASON_INVALID_INPUT if conds.get(FAILED, ("",))[0] == REASON_INVALID_INPUT else phase
        events.insert(0, Event(kind, event_reason, message))
    # A rank whose old pod is still terminating must be created once it is gone. The pod's DELETED
    # event normally triggers that; this is the safety net if the event is missed.
    if phase in (PENDING, RESTARTING) and (stale or any(pod_deleting(p) for p in current)):
        requeue = 1.0 if requeue is None else min(requeue, 1.0)

    status = {
        "phase": phase,
        "conditions": build_conditions(prev.get("conditions"), phase, conds, generation, now),
        "workers": counts,
        "restarts": restarts,
        "startTime": start_time,
        "completionTime": completion if phase in TERMINAL else None,
        "observedGeneration": generation,
        "message": message,
    }
    return Decision(
        status=status,
        attempt=restarts,
        create_ranks=tuple(create) if phase in (PENDING, RESTARTING) else (),
        delete_pods=tuple(delete),
        delete_job=delete_job,
        events=tuple(events),
        requeue_after=requeue,
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
    if api.get("phase") in TERMINAL:
        if active:
            out["phase"] = None
            out["completionTime"] = None
    elif claimed > attempt:
        # A restart the status announces whose old pods are all still there (an operator that
        # died between the status patch and the deletes, or a rewrite): decided again, as the
        # running gang it was, from what caused it: a failed pod, or a member that is missing.
        out["phase"] = RUNNING
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
