"""The controller: one level-triggered reconcile per job, and the operator process's memory.

How it works (see docs/operator.md for the whole story):

- Every job is reconciled by one function, `Controller.reconcile`: take the newest copy of the job
  (`JobView`: the last watch event or the answer to the operator's own status patch; a GET only
  when neither is known to be current), read its pods from the pod index, let the pure
  `status.reconcile()` decide, then apply the decision (merge-patch the status subresource, post
  Events, delete and create pods, create the other children; the objects come from the pure
  `render.render_job`). Running it twice, or after an operator restart, does no harm: names are
  deterministic, a 409 on create means "already there" when the object's controller owner
  reference is the job's (anything else of that name is left untouched and blocks the job:
  `status.owned_by`), and pods of the current attempt are never created twice because the
  decision only creates ranks that have no pod at all.
- The pod index lags the creates a little (it is fed by a watch). What this process created and the
  index does not show yet is remembered per job (`Created`, keyed by job uid and attempt), so a
  reconcile in that window creates nothing twice; the memory is dropped when the job finishes or
  goes, and after an operator restart the index (filled by a full LIST first) is enough.
- Watch events of jobs and of their pods only *kick* a job; the per-job `scheduler.Scheduler`
  coalesces bursts and runs at most one reconcile per job at a time, and `reconcile` returns when
  it wants to run again (a deadline, a TTL, a re-check).

It imports no kopf: `handlers.py` feeds it the watch events and the pod index (a kopf index, used
as a mapping of (namespace, job name) to the job's slim pods) and posts its Events. Its requests go
through `kube.Api`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from mnv2_operator import status as st
from mnv2_operator.constants import ANNOTATION_SPEC_HASH, API_VERSION, KIND, TERMINAL_PHASES, Phase, Reason
from mnv2_operator.kube import Api, ApiError, job_path, object_path
from mnv2_operator.render import FIXED_KINDS, RenderedJob, render_job
from mnv2_operator.scheduler import Key, Scheduler
from mnv2_operator.spec import JobSpec, OperatorDefaults, SpecError, parse_spec
from mnv2_operator.status import Decision, worker_pod_name

logger = logging.getLogger("mnv2_operator")

PostEvent = Callable[[Mapping[str, Any], str, str, str], None]
"""Posts an Event on a job: (job, type, reason, message)."""


# The API server refuses an object as invalid: retrying the same object cannot help. After this many
# tries in a row (a few seconds of backoff, in case an admission webhook was briefly wrong) the job
# fails with the API's message; a new spec generation starts it again.
MAX_REFUSALS = 3


class _Refused(Exception):
    """The API server refused to create a rendered object (400 Bad Request or 422 Invalid)."""

    def __init__(self, kind: str, name: str, err: ApiError) -> None:
        super().__init__(f"the API server refused {kind} {name}: {err.message}")
        self.err = err


def _spec_hash(spec_json: Mapping[str, Any]) -> str:
    """Hash of everything in the spec that shapes the pods (runPolicy does not)."""
    shaping = {k: v for k, v in spec_json.items() if k != "runPolicy"}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def _from_other_spec(pods: Iterable[Mapping[str, Any]], attempt: int, spec_hash: str) -> bool:
    """Whether pods of `attempt` were created from a spec other than the one hashed `spec_hash`."""
    return any(
        (p["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) not in (None, spec_hash)
        for p in pods
        if st.pod_attempt(p) == attempt
    )


def spec_problem(err: Exception) -> str:
    """What to say about a spec that parsing or rendering raised `err` for.

    `SpecError` names each field already. Anything else (a value of an unexpected type or encoding
    that slipped past the checks, a bug) still makes the spec unusable, not the operator: it becomes
    the job's InvalidSpec message instead of an endless retry, and the traceback goes to the log.
    """
    if isinstance(err, SpecError):
        return str(err)
    logger.warning("unexpected error while reading a job spec", exc_info=err)
    text = " ".join(str(err).split())[:300]
    return f"spec: cannot be read ({type(err).__name__}: {text}); check the values' types and text"


class _JobGone(Exception):
    """The job was deleted after the copy a reconcile decided on was taken (404 on its status)."""


def _owner_ref(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned(obj: Mapping[str, Any], job: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A copy of a rendered object that is sure to be in the job's namespace and owned by it."""
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    meta = copy.setdefault("metadata", {})
    meta["namespace"] = namespace
    refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != job["metadata"]["uid"]]
    meta["ownerReferences"] = [*refs, _owner_ref(job)]
    return copy


def owned_pods(pods: Iterable[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The pods controlled by the job with this uid (`status.owned_by`).

    A job deleted and re-created under the same name shares the pod label with its predecessor,
    whose pods may still be around until the garbage collector gets to them: they are not ours.
    Nor is a pod someone made with the job's labels and name: labels prove nothing.
    """
    return [p for p in pods if st.owned_by(p, uid)]


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod that status.py reads (keeps the index small for thousands of pods)."""
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    containers = []
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            slim = {k: term.get(k) for k in ("exitCode", "reason")}
            if term.get("message"):  # up to 4 KiB each: keep only the line status.py quotes
                slim["message"] = st.termination_summary(term["message"])
            containers.append({"name": cs.get("name"), "state": {"terminated": slim}})
    return {
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k == ANNOTATION_SPEC_HASH
            },
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "ownerReferences": [
                {k: r.get(k) for k in ("kind", "name", "uid", "controller")}
                for r in meta.get("ownerReferences") or []
            ],
        },
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": status.get("phase"),
            "reason": status.get("reason"),
            "message": status.get("message"),
            "containerStatuses": containers,
        },
    }


# ---------------------------------------------------------------------------------------------
# The operator process's memory (plain state, no API calls; held by `Controller`).

CREATE_TRUST_SECONDS = 60.0
"""How long a pod this process created is taken to exist while the pod index does not show it yet."""


@dataclasses.dataclass(frozen=True)
class Created:
    """What this operator process created for one job, kept until its pod index catches up.

    The pod index is fed by a watch: it shows a new pod a little after the create returned. A
    reconcile in that window (the job's own status patch, the trainer or a pod event wake one) would
    see the rank as missing and create every child again: six 409 Conflicts and five merge patches
    per job. This memory closes the window. It is an optimisation only: when it is lost (operator
    restart) or too old, the level-triggered path still converges, a 409 on create meaning "there".

    Attributes:
        uid: the job's uid; a job re-created under the same name starts with an empty memory.
        children: (spec hash, attempt) for which this process created (or patched to the
            rendered form) the other children: Service, ConfigMap, RBAC, PodGroup. Within one
            attempt there is nothing to create or patch for the same hash. A new attempt (gang
            restart) makes sure of them again: the operator does not watch them, and a ConfigMap
            deleted by hand would otherwise leave the new pods unable to start.
        pods: pod name -> (attempt, pod uid, monotonic time of the create) for pods created and not
            yet seen by the pod index (or by a watch event of that pod, DELETED included).
    """

    uid: str
    children: tuple[str, int] | None = None
    pods: Mapping[str, tuple[int, str, float]] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, created: Created | None, uid: str) -> Created:
        """The memory for the job with this uid (empty if `created` is about another job)."""
        return created if created is not None and created.uid == uid else cls(uid)

    def seen(self, name: str, pod_uid: str | None) -> Created:
        """A watch event of pod `name` (uid `pod_uid`) arrived: the index shows that pod now."""
        entry = self.pods.get(name)
        if entry is None or entry[1] != pod_uid:
            return self
        return dataclasses.replace(self, pods={k: v for k, v in self.pods.items() if k != name})

    def seen_in(self, pods: Iterable[Mapping[str, Any]]) -> Created:
        """Forget the created pods that the index shows (same uid)."""
        uids = {p.get("metadata", {}).get("uid") for p in pods}
        if not any(entry[1] in uids for entry in self.pods.values()):
            return self
        return dataclasses.replace(self, pods={k: v for k, v in self.pods.items() if v[1] not in uids})

    def made_children(self, spec_hash: str, attempt: int) -> Created:
        """The children were created or patched to their rendered form for this spec and attempt."""
        return dataclasses.replace(self, children=(spec_hash, attempt))

    def made_pods(self, attempt: int, pods: Mapping[str, str], now: float) -> Created:
        """These pods (name -> uid) of `attempt` were created at `now` (monotonic seconds)."""
        return dataclasses.replace(
            self, pods={**self.pods, **{name: (attempt, uid, now) for name, uid in pods.items()}}
        )

    def after(self, decision: Decision) -> Created | None:
        """What is still worth remembering once `decision` is carried out (None: nothing)."""
        if decision.status.get("phase") in TERMINAL_PHASES:
            return None  # a finished job creates nothing any more
        return self


@dataclasses.dataclass(frozen=True)
class CreatePlan:
    """What to create in this reconcile, with the process's memory taken into account.

    Attributes:
        children: create the other children (patch them to the rendered form if they exist).
        ranks: ranks whose pod to create now.
        recheck_after: seconds until a pod skipped as "created, not yet seen" stops being trusted;
            reconcile again then, in case its watch event never comes.
    """

    children: bool = False
    ranks: tuple[int, ...] = ()
    recheck_after: float | None = None


def plan_creates(
    job: str,
    decision: Decision,
    created: Created,
    spec_hash: str,
    first_pass: bool,
    now: float,
    trust: float = CREATE_TRUST_SECONDS,
) -> CreatePlan:
    """Which of `decision.create_ranks` (and whether the children) really need a create.

    Args:
        job: the job's name.
        decision: `reconcile()`'s decision.
        created: this process's memory of the job (`Created.of(...).seen_in(index pods)`).
        spec_hash: hash of the spec that shapes the children and pods (runPolicy excluded).
        first_pass: the job has no status yet (children are made even for a job created suspended).
        now: monotonic seconds (the clock of `Created.pods`).
        trust: how long a created pod that the index does not show is taken to exist.
    """
    ranks = []
    expiries = []
    for rank in decision.create_ranks:
        entry = created.pods.get(worker_pod_name(job, rank))
        if entry is not None and entry[0] == decision.attempt and now - entry[2] < trust:
            expiries.append(entry[2] + trust - now)  # created by us a moment ago; the index lags
        else:
            ranks.append(rank)
    wants_children = first_pass or bool(decision.create_ranks)
    return CreatePlan(
        children=wants_children and created.children != (spec_hash, decision.attempt),
        ranks=tuple(ranks),
        recheck_after=min(expiries) if expiries else None,
    )


def _resource_version(body: Mapping[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("resourceVersion")


@dataclasses.dataclass
class JobView:
    """The newest copy of one job that this operator process knows: a reconcile's input without a GET.

    Fed by the job's watch events and by the API's answers to the operator's own status patches
    (which return the whole job) and GETs. kopf hands one object's watch events to the handler in
    the stream's order, and resumes a broken watch where it stopped, so the events form one gapless
    ordered sequence, except after a re-list (events of type None, after "410 Gone"). Hence:

    - with no answer pending, the last event's copy is the newest there is;
    - an answer with resourceVersion R is newer than every event until R's own event arrives (an
      event of the stream with another resourceVersion meanwhile comes before R in it: older);
    - a re-listed copy in that window may be older or newer: nothing usable is known, GET;
    - if R's event arrived before the answer was taken in, the last event is the newest copy.

    resourceVersions are only compared for equality, as the API conventions require.

    Why this is safe: the decision is a pure function of the job's status, its spec and the pods.
    The copy used always includes this operator's last status write, so no transition is taken
    twice (a gang restart is never counted twice). Changes by others that the copy may not show yet
    (a spec edit, the trainer's progress) arrive as watch events, each of which schedules another
    reconcile: the job converges as it would after a GET that raced with the edit.
    """

    RECENT = 64  # events remembered to match answers against

    body: Mapping[str, Any] | None = None  # the copy to use; None: GET
    latest_event: Mapping[str, Any] | None = None
    pending: list[tuple[str | None, bool]] = dataclasses.field(default_factory=list)
    """(resourceVersion, is our own status patch) of answers whose event has not come, oldest first."""
    seq: int = 0  # watch events taken so far
    recent: list[tuple[int, str | None]] = dataclasses.field(default_factory=list)  # (seq, rv)

    def mark(self) -> int:
        """Call before sending a request whose answer is given to `on_answer`."""
        return self.seq

    def on_event(self, body: Mapping[str, Any], listing: bool = False) -> bool:
        """Take a watch event's copy (`listing`: from a (re-)list, kopf's type None).

        Returns False for the echo of the operator's own status patch: that needs no reconcile, as
        the reconcile that wrote it decided on exactly this status and carried the decision out;
        anything that changed since has its own event.
        """
        rv = _resource_version(body)
        self.seq += 1
        self.recent = [*self.recent[-(self.RECENT - 1) :], (self.seq, rv)]
        self.latest_event = body
        versions = [version for version, _ in self.pending]
        kick = True
        if rv in versions:
            i = versions.index(rv)
            kick = not self.pending[i][1]
            del self.pending[: i + 1]
            if not self.pending:
                self.body = body
        elif not self.pending:
            self.body = body
        elif listing:
            self.body, self.pending = None, []  # older or newer than our answers: GET to be sure
        # else: an event of the stream before our answers' own: older than `body`, which stays.
        if not self.pending and (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
            # A finished job is seldom reconciled again (its TTL, an edit): keep no copy of
            # thousands of them, GET then.
            self.body = self.latest_event = None
        return kick

    def on_answer(self, body: Mapping[str, Any], mark: int, own_write: bool) -> None:
        """The API's answer (the whole job) to a request sent when `mark()` returned `mark`."""
        rv = _resource_version(body)
        if self.seq - mark >= self.RECENT:
            self.body, self.pending = None, []  # too many events meanwhile to tell: GET next time
            return
        if rv is not None and rv in (version for seq, version in self.recent if seq >= mark):
            # Its event came already (for a GET, maybe just before the request): the last event is
            # at least as new as the answer.
            self.body, self.pending = self.latest_event, []
            return
        self.pending.append((rv, own_write))
        self.body = body


# ---------------------------------------------------------------------------------------------
# The controller.


class Controller:
    """Reconciles jobs; holds the API client, the pod index and the scheduler of one operator run."""

    def __init__(
        self,
        api: Api,
        clock: Callable[[], dt.datetime] | None = None,
        post_event: PostEvent | None = None,
    ) -> None:
        self.api = api
        # Events reach the API through kopf's poster (`handlers.py` passes it); without one they are
        # only logged.
        self.post_event: PostEvent = post_event or (lambda job, type_, reason, message: None)
        self.pods_index: Any = None  # kopf.Index[(namespace, job), slim pod], set by the first event
        self.scheduler = Scheduler(self.reconcile)
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        # The Helm chart's jobDefaults reach the operator as MNV2_DEFAULT_* environment variables.
        self.defaults = OperatorDefaults.from_env()
        self._warned: dict[Key, str] = {}  # job -> spec hash last warned about (SpecChangeDeferred)
        # job -> (reason, message): why its children cannot be created (said once, then kept in the
        # status until they can), and how many times in a row (the re-check backs off).
        self._create_errors: dict[Key, tuple[str, str]] = {}
        self._blocked: dict[Key, int] = {}
        self._refusals: dict[Key, tuple[str, str, int]] = {}  # job -> (uid, spec hash, refusals in a row)
        self._written: dict[Key, tuple[str, dict[str, Any]]] = {}  # job -> (uid, operator keys written)
        self._views: dict[Key, JobView] = {}  # job -> its newest known copy
        self._created: dict[Key, Created] = {}  # job -> what was created, not yet in the index
        self.monotonic: Callable[[], float] = time.monotonic  # the clock of `controller.Created`

    def kick(self, key: Key, pods_index: Any) -> None:
        """Schedule a reconcile of the job (`pods_index`: kopf's current pod index)."""
        self.pods_index = pods_index
        self.scheduler.kick(key)

    def job_event(self, key: Key, body: Mapping[str, Any], listing: bool, pods_index: Any) -> None:
        """A watch event of the job: keep its copy, and reconcile unless it is our own write's echo."""
        if self._views.setdefault(key, JobView()).on_event(body, listing):
            self.kick(key, pods_index)

    def pod_event(self, key: Key, name: str, uid: str | None, pods_index: Any) -> None:
        """A watch event of one of the job's pods (the index has taken it in already)."""
        created = self._created.get(key)
        if created is not None:
            self._created[key] = created.seen(name, uid)
        self.kick(key, pods_index)

    def forget(self, key: Key) -> None:
        """The job is gone: drop its timers and memory."""
        self.scheduler.forget(key)
        self._warned.pop(key, None)
        self._create_errors.pop(key, None)
        self._blocked.pop(key, None)
        self._refusals.pop(key, None)
        self._written.pop(key, None)
        self._views.pop(key, None)
        self._created.pop(key, None)

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        """The job's labelled pods (slim copies) as the index shows them now."""
        if self.pods_index is None or key not in self.pods_index:
            return []
        return list(self.pods_index[key])

    async def reconcile(self, key: Key) -> float | None:
        """Reconcile one job (the scheduler's function); returns when to run again (seconds) or None."""
        namespace, name = key
        view = self._views.setdefault(key, JobView())
        job = view.body
        if job is None:
            # No copy known to include our last status write (see controller.JobView): read it.
            mark = view.mark()
            try:
                job = await self.api.request("GET", job_path(namespace, name))
            except ApiError as err:
                if err.status == 404:
                    self.forget(key)
                    return None
                raise
            view.on_answer(job, mark, own_write=False)
        try:
            return await self._reconcile(key, job)
        except _JobGone:
            self.forget(key)
            return None

    async def _reconcile(self, key: Key, job: Mapping[str, Any]) -> float | None:
        """Decide on this copy of the job and its pods, and carry the decision out."""
        meta = job.get("metadata", {})
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes the children with the job
        now = self.clock()

        labelled = self.pods_of(key)
        pods = owned_pods(labelled, meta.get("uid", ""))
        # Pods with the job's labels and name but another owner (a deleted job's of the same name):
        # never ours to count, replace or delete; the garbage collector removes them with time.
        foreign = {st.pod_name(p): p for p in labelled if p not in pods}
        # The operator's keys as this process last wrote them, not as the trainer may have
        # rewritten them (status.trusted_status); status patches also write back what differs.
        written = self._written.get(key)
        remembered = written[1] if written is not None and written[0] == meta.get("uid") else None
        previous = st.trusted_status(job.get("status"), remembered, pods)
        raw = job.get("spec") or {}
        try:
            # Off the event loop, like rendering: other jobs' reconciles never wait on a spec.
            spec = await asyncio.to_thread(parse_spec, raw)
        except Exception as err:  # any exception: an unusable spec, never a retry loop
            return await self._reconcile_unreadable(key, job, previous, pods, raw, spec_problem(err), now)
        return await self._reconcile_spec(key, job, previous, pods, foreign, spec, now)

    async def _reconcile_unreadable(
        self,
        key: Key,
        job: Mapping[str, Any],
        previous: Mapping[str, Any],
        pods: list[dict[str, Any]],
        raw: Mapping[str, Any],
        problem: str,
        now: dt.datetime,
    ) -> float | None:
        """Reconcile a job whose spec does not parse (`problem` says why)."""
        name, generation = key[1], job.get("metadata", {}).get("generation")
        if (previous.get("phase") is None and not pods) or st.failed_by_invalid_spec(previous):
            await self._invalid(job, previous, problem, pods)  # never started: Failed, at once
            return None
        # A job that has started goes on with its pods (created from a valid spec); a finished one
        # keeps its outcome. Its run policy (TTL, cleanup, deadline, backoff) is read leniently
        # from the raw spec. The problem applies at the next start.
        attempt = int(previous.get("restarts") or 0)
        policy = st.lenient_policy(raw, pods, attempt)
        decision = st.reconcile(name, policy, pods, previous, generation, now)
        if previous.get("phase") not in TERMINAL_PHASES:
            if decision.create_ranks:
                await self._invalid(job, previous, problem, pods)  # the next start is now
                return None
            if decision.status["phase"] not in TERMINAL_PHASES:  # (a job that just finished: done)
                decision = st.spec_invalid_deferred(decision, previous, problem, generation, now)
        return await self._apply(job, previous, decision, pods, None, "", {}, CreatePlan())

    async def _reconcile_spec(
        self,
        key: Key,
        job: Mapping[str, Any],
        previous: Mapping[str, Any],
        pods: list[dict[str, Any]],
        foreign: Mapping[str, Mapping[str, Any]],
        spec: JobSpec,
        now: dt.datetime,
    ) -> float | None:
        """Reconcile a job with a valid spec (`spec`, the parsed model): decide, render, apply."""
        namespace, name = key
        meta = job.get("metadata", {})
        generation = meta.get("generation")
        spec_json = spec.model_dump(by_alias=True, mode="json")
        policy = st.Policy.from_spec(spec_json)
        spec_hash = _spec_hash(spec_json)
        attempt = int(previous.get("restarts") or 0)
        gang = st.gang_size(pods, attempt)
        if gang is not None and gang != policy.workers and _from_other_spec(pods, attempt, spec_hash):
            # `nodes` was edited while this attempt's pods run: they keep their gang (msrun's
            # worker count is fixed); the new size applies at the next start, like any spec change.
            policy = dataclasses.replace(policy, workers=gang)
        decision = st.reconcile(name, policy, pods, previous, generation, now)
        # Children are made on the first pass (even for a job created suspended) and again when pods
        # are created from a spec they were not made for. Pods this process created a moment ago and
        # the index does not show yet are not created again (Created, plan_creates).
        created = Created.of(self._created.get(key), meta.get("uid", "")).seen_in(pods)
        if key in self._created:
            self._created[key] = created  # (entries are made by _create, for jobs that create)
        plan = plan_creates(
            name, decision, created, spec_hash, previous.get("phase") is None, self.monotonic()
        )
        # Rendering can still find the spec unusable (name too long for pod hostnames, a config that
        # does not resolve): that is an invalid spec.
        rendered = None
        if plan.children or plan.ranks:
            try:
                # Only what is about to be created (the pods of `plan.ranks`), and off the event
                # loop: a big gang takes a while to render, and other jobs' reconciles (and kopf's
                # watches) must not wait on it.
                rendered = await asyncio.to_thread(
                    render_job,
                    name,
                    namespace,
                    meta["uid"],
                    spec,
                    attempt=decision.attempt,
                    defaults=self.defaults,
                    ranks=plan.ranks,
                )
            except Exception as err:
                await self._invalid(job, previous, spec_problem(err), pods)
                return None
        self._warn_spec_change(job, previous, decision, pods, spec_hash)
        return await self._apply(job, previous, decision, pods, rendered, spec_hash, foreign, plan)

    async def _apply(
        self,
        job: Mapping[str, Any],
        previous: Mapping[str, Any],
        decision: st.Decision,
        pods: list[dict[str, Any]],
        rendered: RenderedJob | None,
        spec_hash: str,
        foreign: Mapping[str, Mapping[str, Any]],
        plan: CreatePlan,
    ) -> float | None:
        """Carry out a decision; returns when to reconcile again (seconds) or None.

        `foreign` maps names of pods with the job's labels that are not the job's to those pods
        (slim copies). `plan` says what of the decision's creates is still to be done.
        """
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        key = (namespace, name)
        view = self._views.get(key)
        if decision.create_ranks and key in self._create_errors:
            # Keep showing why pods cannot be created instead of flipping back to "waiting".
            self._mark_not_created(decision.status, previous, *self._create_errors[key])

        # Order matters for crash safety: the status (with the new attempt) is written before pods
        # of the old attempt are deleted, so a crash in between replays the same restart.
        await self._patch_status(job, previous, decision)
        self._post(job, decision.events)
        requeue = decision.requeue_after
        if plan.recheck_after is not None:
            # Pods created a moment ago that the index does not show yet: their watch events wake
            # the job; this wake-up is only in case those events never come.
            requeue = plan.recheck_after if requeue is None else min(requeue, plan.recheck_after)
        for pod in pods:
            if st.pod_name(pod) in decision.delete_pods:
                await self._delete_pod(namespace, pod)
        if rendered is not None and self._views.get(key) is view:  # (not if the job went meanwhile)
            failed, retry_in = await self._create_reporting_failures(
                job, rendered, decision, pods, spec_hash, foreign, plan
            )
            if failed:
                return None
            if retry_in is not None:
                requeue = retry_in if requeue is None else min(requeue, retry_in)
        if decision.delete_job:
            try:
                await self.api.request(
                    "DELETE", job_path(namespace, name), {"propagationPolicy": "Background"}
                )
            except ApiError as err:
                if err.status != 404:
                    raise
            self.forget(key)
            return None
        created = self._created.get(key)
        if created is not None:
            remembered = created.after(decision)
            if remembered is None:
                self._created.pop(key, None)
            else:
                self._created[key] = remembered
        return requeue

    async def _create_reporting_failures(
        self,
        job: Mapping[str, Any],
        rendered: RenderedJob,
        decision: st.Decision,
        pods: list[dict[str, Any]],
        spec_hash: str,
        foreign: Mapping[str, Mapping[str, Any]],
        plan: CreatePlan,
    ) -> tuple[bool, float | None]:
        """Create what `plan` says, and say in the status why it cannot be created when it cannot.

        Returns:
            (failed, retry_in): `failed` when the API server refused the job's objects
            `MAX_REFUSALS` times in a row (the job is Failed now); `retry_in`, seconds until the job
            should be looked at again (None: no need).

        Raises:
            ApiError: the creates failed and are retried with backoff (the cause may be fixed: RBAC
                granted, a CRD installed, an admission webhook back).
        """
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        try:
            retry, conflicts = await self._create(job, rendered, decision, spec_hash, foreign, plan)
        except _Refused as refused:
            # Counted per job and spec: a bounded number of tries, then Failed (InvalidSpec) with
            # the API's message; never an endless CreateFailed loop.
            uid = job["metadata"]["uid"]
            prior = self._refusals.get(key)
            n = prior[2] + 1 if prior is not None and prior[:2] == (uid, spec_hash) else 1
            self._refusals[key] = (uid, spec_hash, n)
            if n >= MAX_REFUSALS:
                self._refusals.pop(key, None)
                self._create_errors.pop(key, None)
                self._created.pop(key, None)
                await self._invalid(job, decision.status, str(refused), pods)
                return True, None
            message = f"cannot create the job's children: {refused} (try {n} of {MAX_REFUSALS})"
            await self._report_not_created(job, key, decision.status, Reason.CREATE_FAILED, message)
            raise refused.err from None  # retried with backoff
        except ApiError as err:
            if err.status in (403, 404, 409, 422):
                message = f"cannot create the job's children: {err}"
                await self._report_not_created(job, key, decision.status, Reason.CREATE_FAILED, message)
            raise
        if conflicts:
            # Blocked, not failed: the job starts by itself once the objects in its way are gone (a
            # deleted predecessor's children are, within seconds). The operator watches none of
            # these kinds, so it looks again, backing off to every 30 s.
            await self._report_not_created(
                job, key, decision.status, Reason.CHILD_CONFLICT, st.conflicts_message(conflicts)
            )
            n = self._blocked[key] = self._blocked.get(key, 0) + 1
            return False, min(2.0 ** (n - 1), 30.0)
        self._create_errors.pop(key, None)
        self._blocked.pop(key, None)
        self._refusals.pop(key, None)
        return False, 1.0 if retry else None

    async def _invalid(
        self, job: Mapping[str, Any], previous: Mapping[str, Any], message: str, pods: list[dict[str, Any]]
    ) -> None:
        """Failed with the validation message; nothing created, nothing retried."""
        decision = st.invalid_spec(previous, message, job["metadata"].get("generation"), self.clock(), pods)
        await self._patch_status(job, previous, decision)
        self._post(job, decision.events)
        for pod in pods:
            if st.pod_name(pod) in decision.delete_pods:
                await self._delete_pod(job["metadata"]["namespace"], pod)

    def _mark_not_created(
        self, status: dict[str, Any], previous: Mapping[str, Any], reason: str, message: str
    ) -> None:
        """Put a creation failure into a computed status: message, and condition Created False."""
        status["message"] = message
        old = {c.get("type"): c for c in previous.get("conditions") or []}.get("Created") or {}
        for cond in status["conditions"]:
            if cond["type"] == "Created":
                cond.update(status="False", reason=reason, message=message)
                if old.get("status") == "False" and old.get("lastTransitionTime"):
                    cond["lastTransitionTime"] = old["lastTransitionTime"]

    async def _report_not_created(
        self, job: Mapping[str, Any], key: Key, status: dict[str, Any], reason: str, message: str
    ) -> None:
        """Say in the status and an Event why children cannot be created (needs a human to fix)."""
        if self._create_errors.get(key) == (reason, message):
            return  # said already; the retries stay quiet
        self._create_errors[key] = (reason, message)
        new = json.loads(json.dumps(status))
        self._mark_not_created(new, status, reason, message)
        await self._patch_status(job, status, st.Decision(status=new, attempt=0))
        self._post(job, [st.Event("Warning", reason, message)])

    async def _patch_status(
        self, job: Mapping[str, Any], previous: Mapping[str, Any], decision: st.Decision
    ) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        # Every key that differs from what the decision started from or from the API's copy: a
        # trainer's rewrite of an operator key is written back.
        patch = st.status_patch(previous, decision.status) | st.status_patch(
            job.get("status"), decision.status
        )
        if not patch:
            self._written[key] = (meta["uid"], st.operator_status(decision.status))
            return  # nothing changed: no request at all
        # A JSON merge patch of only the operator's keys: the trainer's progress/metrics/checkpoints
        # are never sent, so they can never be overwritten.
        view = self._views.get((meta["namespace"], meta["name"]))
        mark = view.mark() if view is not None else 0
        try:
            answer = await self.api.request(
                "PATCH",
                job_path(meta["namespace"], meta["name"], "status"),
                {"status": patch},
                content_type="application/merge-patch+json",
            )
        except ApiError as err:
            if err.status == 404:
                raise _JobGone from err  # deleted since the copy we decided on was taken
            raise
        self._written[key] = (meta["uid"], st.operator_status(decision.status))
        if view is not None and isinstance(answer, dict) and answer.get("metadata"):
            view.on_answer(answer, mark, own_write=True)  # the whole job now, our write included

    def _post(self, job: Mapping[str, Any], events: Iterable[st.Event]) -> None:
        for ev in events:
            self.post_event(job, ev.type, ev.reason, ev.message[:1000])
            log = logger.warning if ev.type == "Warning" else logger.info
            log("%s/%s: %s: %s", job["metadata"]["namespace"], job["metadata"]["name"], ev.reason, ev.message)

    def _warn_spec_change(
        self,
        job: Mapping[str, Any],
        previous: Mapping[str, Any],
        decision: st.Decision,
        pods: list[dict[str, Any]],
        spec_hash: str,
    ) -> None:
        """Tell the user once per edit that running pods keep the spec they started with."""
        generation = job["metadata"].get("generation")
        if previous.get("observedGeneration") in (None, generation):
            return
        if decision.status["phase"] not in (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING):
            return
        hashes = {(p["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) for p in pods}
        hashes.discard(None)
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        # Remembered in memory only: after an operator restart the warning may come once more.
        if not hashes or hashes == {spec_hash} or self._warned.get(key) == spec_hash:
            return
        self._warned[key] = spec_hash
        self._post(
            job,
            [
                st.Event(
                    "Warning",
                    Reason.SPEC_CHANGE_DEFERRED,
                    f"spec changed (generation {generation}) while the job is "
                    f"{decision.status['phase']}: running pods keep the spec they started with; "
                    "the change applies when pods are next created (after a gang restart, or "
                    "suspend and resume the job to apply it now). runPolicy changes apply at once.",
                )
            ],
        )

    async def _delete_pod(self, namespace: str, pod: Mapping[str, Any]) -> None:
        # The uid precondition makes sure a newer pod that reuses the name is never deleted.
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        uid = pod["metadata"].get("uid")
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.api.request(
                "DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(st.pod_name(pod))}", body
            )
        except ApiError as err:
            if err.status not in (404, 409):
                raise

    async def _create(
        self,
        job: Mapping[str, Any],
        rendered: RenderedJob,
        decision: st.Decision,
        spec_hash: str,
        foreign: Mapping[str, Mapping[str, Any]],
        plan: CreatePlan,
    ) -> tuple[bool, list[str]]:
        """Make sure of the children and create the planned pods.

        Returns:
            (look again soon, conflicts): whether a pod's create must be retried shortly, and what
            stands in the job's way: existing objects of a child's name that are not the job's
            (`status.owned_by`). Those are never modified, and no pod is created while any child
            is not the job's (a pod would mount someone else's ConfigMap, or run as someone else's
            ServiceAccount).
        """
        namespace, job_name = job["metadata"]["namespace"], job["metadata"]["name"]
        key = (namespace, job_name)
        uid = job["metadata"]["uid"]
        conflicts: list[str] = []
        if plan.children:
            conflicts = await self._make_children(job, rendered)
            if conflicts:
                return False, conflicts
            self._created[key] = Created.of(self._created.get(key), uid).made_children(
                spec_hash, decision.attempt
            )
        retry = False
        made_pods: list[str] = []
        for pod in rendered.pods:
            if st.pod_rank(pod) not in plan.ranks:
                continue
            name = pod["metadata"]["name"]
            if name in foreign:
                # A pod with the job's labels that is not the job's: a deleted predecessor's on its
                # way out (look again shortly), or someone else's in the way.
                if st.pod_deleting(foreign[name]):
                    retry = True
                else:
                    conflicts.append(st.conflict("Pod", name, foreign[name], KIND, job_name))
                continue
            pod_uid, conflict = await self._create_pod(job, pod, spec_hash)
            if pod_uid is None:
                if conflict is None:
                    retry = True  # gone meanwhile, ours, or on its way out: look again shortly
                else:
                    conflicts.append(conflict)
                continue
            made_pods.append(name)
            self._created[key] = Created.of(self._created.get(key), uid).made_pods(
                decision.attempt, {name: pod_uid}, self.monotonic()
            )
        if made_pods:
            text = f"attempt {decision.attempt}: created {', '.join(made_pods)}"
            self._post(job, [st.Event("Normal", Reason.PODS_CREATED, text)])
        return retry, conflicts

    async def _create_pod(
        self, job: Mapping[str, Any], pod: Mapping[str, Any], spec_hash: str
    ) -> tuple[str | None, str | None]:
        """Create one of the job's rendered pods, owned by the job and marked with the spec's hash.

        Returns:
            (uid, conflict): the new pod's uid (empty if the answer has none) when it was created.
            Otherwise None and, when an object that is not the job's holds the name, why; None
            when it is the job's own (the index lags), gone meanwhile or on its way out.

        Raises:
            _Refused: the API server refused the pod as invalid.
        """
        namespace, job_name, uid = (job["metadata"][k] for k in ("namespace", "name", "uid"))
        name = pod["metadata"]["name"]
        pod = _owned(pod, job, namespace)
        pod["metadata"].setdefault("annotations", {})[ANNOTATION_SPEC_HASH] = spec_hash
        try:
            answer = await self.api.request("POST", object_path(pod, namespace), pod)
        except ApiError as err:
            if err.status in (400, 422):
                raise _Refused("Pod", name, err) from err
            if err.status != 409:
                raise
            # A pod of that name exists that the index does not show: ours (the index lags a
            # create before an operator restart) or one without the job's labels.
            existing = await self._get(object_path(pod, namespace, named=True))
            if existing is None or st.owned_by(existing, uid) or st.pod_deleting(existing):
                return None, None
            return None, st.conflict("Pod", name, existing, KIND, job_name)
        return str(((answer or {}).get("metadata") or {}).get("uid") or ""), None

    async def _make_children(self, job: Mapping[str, Any], rendered: RenderedJob) -> list[str]:
        """Create the children other than pods, or bring the job's own to their rendered form.

        Returns:
            Why objects of a child's name that are not the job's stand in the way (`_apply_child`).
        """
        namespace = job["metadata"]["namespace"]
        created, conflicts = [], []
        for obj in rendered.objects:
            made, conflict = await self._apply_child(_owned(obj, job, namespace), namespace, job)
            if made:
                created.append(f"{obj['kind']} {obj['metadata']['name']}")
            if conflict:
                conflicts.append(conflict)
        if created:
            self._post(job, [st.Event("Normal", Reason.CHILDREN_CREATED, "created " + ", ".join(created))])
        return conflicts

    async def _get(self, path: str) -> dict[str, Any] | None:
        """GET an object; None when it does not exist."""
        try:
            answer = await self.api.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return answer if isinstance(answer, dict) else None

    async def _apply_child(
        self, obj: dict[str, Any], namespace: str, job: Mapping[str, Any]
    ) -> tuple[bool, str | None]:
        """Create a child, or bring the job's own existing one to its rendered form (`FIXED_KINDS`
        are left as they are: their rendered form never changes).

        Returns:
            (created, conflict): `conflict` says why an existing object of the child's name is
            left alone: it is not the job's (no controller owner reference with the job's uid). Such
            an object is never patched, adopted or deleted: it may be another application's.
        """
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            await self.api.request("POST", object_path(obj, namespace), obj)
            return True, None
        except ApiError as err:
            if err.status in (400, 422):
                raise _Refused(kind, name, err) from err
            if err.status == 404:
                raise ApiError(
                    404,
                    "Not Found",
                    f"{kind} ({obj['apiVersion']}) is not served by this cluster; "
                    + (
                        "gang scheduling (spec.scheduling.gang) needs Volcano installed"
                        if kind == "PodGroup"
                        else "is its CRD installed?"
                    ),
                ) from err
            if err.status != 409:
                raise
        existing = await self._get(object_path(obj, namespace, named=True))
        if existing is None:
            raise ApiError(409, "Conflict", f"{kind} {name} was deleted while being created; trying again")
        if not st.owned_by(existing, job["metadata"]["uid"]):
            return False, st.conflict(kind, name, existing, KIND, job["metadata"]["name"])
        if kind in FIXED_KINDS:
            # The job's own, and nothing in its rendered form can have changed since its create.
            return False, None
        # The job's own child (from before an operator restart or a spec change): patch it to the
        # rendered form. Its owner references stay as they are, and the resourceVersion read above
        # is a precondition: should the object be replaced meanwhile, the patch fails (409) and the
        # reconcile runs again, reading it anew.
        patch = json.loads(json.dumps(obj))
        patch["metadata"].pop("ownerReferences", None)
        patch["metadata"]["resourceVersion"] = (existing.get("metadata") or {}).get("resourceVersion")
        try:
            await self.api.request(
                "PATCH",
                object_path(obj, namespace, named=True),
                patch,
                content_type="application/merge-patch+json",
            )
        except ApiError as err:
            if err.status in (400, 422):  # e.g. a field that cannot change once set
                raise _Refused(kind, name, err) from err
            raise
        return False, None

    async def close(self) -> None:
        await self.scheduler.close()
        self.api.close()
