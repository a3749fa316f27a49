"""The operator process's memory of its jobs: what it created, and the newest copy of each job.

Unlike `status.py`, which decides from what is observed alone, these hold what one operator process
has done and seen, so a reconcile needs neither a GET of the job nor a second create while the pod
index catches up. Both are optimisations: lost with an operator restart, the level-triggered
reconcile still converges. The values are plain state changed by their own methods; no API calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from mnv2_operator.constants import TERMINAL_PHASES
from mnv2_operator.status import Decision, worker_pod_name

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
