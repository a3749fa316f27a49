"""The kopf controller: the only module that imports kopf. Thin: parse, render, apply, patch status.

How it works (see docs/operator.md for the whole story):

- Every job is reconciled by one level-triggered function, `Controller.reconcile`: take the newest
  copy of the job (`controller.JobView`: the last watch event or the answer to the operator's own status
  patch; a GET only when neither is known to be current), read its pods from an in-memory kopf
  index, let the pure `status.reconcile()` decide, then apply the decision (merge-patch the status
  subresource, post Events, delete and create pods, create the other children). Running it twice,
  or after an operator restart, does no harm: names are deterministic, a 409 on create means
  "already there" when the object's controller owner reference is the job's (anything else of that
  name is left untouched and blocks the job: `status.owned_by`), and pods of the current attempt are never created twice because the decision
  only creates ranks that have no pod at all.
- The pod index lags the creates a little (it is fed by a watch). What this process created and the
  index does not show yet is remembered per job (`controller.Created`, keyed by job uid and attempt), so
  a reconcile in that window creates nothing twice; the memory is dropped when the job finishes or
  goes, and after an operator restart the index (filled by a full LIST first) is enough.
- Watch events of jobs and of pods labelled with a job name only *schedule* a reconcile of that job
  (`kopf.on.event` handlers are fire-and-forget and cheap). A per-job scheduler coalesces bursts and
  runs at most one reconcile per job at a time, so two events of one job never race; jobs run
  concurrently. Time-based transitions (activeDeadlineSeconds, ttlSecondsAfterFinished) and retries
  after API errors are scheduled with timers. Nothing runs for an idle job: 1000 jobs cost 1000
  dict entries, not 1000 polling loops.
- Pods are found through a kopf index keyed by (namespace, job name), fed by a watch with a
  server-side label selector; only pods owned by the job's uid count. kopf fills every index from a
  full LIST before any handler runs, so after an operator restart the first reconcile of each job
  already sees all its pods: nothing is duplicated and the status continues from what is observed.
- No finalizer: children carry owner references and are garbage-collected with the job. kopf's
  progress and diff-base storage are set to annotations (the status is shared with the trainer), but
  with only event and index handlers kopf writes neither.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote

import kopf
import urllib3

from mnv2_operator import controller as mem
from mnv2_operator import status as st
from mnv2_operator.constants import (
    ANNOTATION_SPEC_HASH,
    GROUP,
    KIND,
    LABEL_JOB,
    LABEL_ROLE,
    PLURAL,
    ROLE_WORKER,
    VERSION,
)
from mnv2_operator.render import FIXED_KINDS, RenderedJob, render_job
from mnv2_operator.spec import OperatorDefaults, SpecError, parse_spec

# Kinds that render.py emits -> (plural, namespaced). Everything the operator creates is namespaced.
_PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodGroup": "podgroups",
}

logger = logging.getLogger("mnv2_operator")


# ---------------------------------------------------------------------------------------------
# A small JSON client over the `kubernetes` package's connection handling (auth, TLS, proxies).


class ApiError(Exception):
    """An HTTP error from the API server."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {body[:300]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The API server's own message (a Status object's `message`), else the body's start."""
        try:
            message = json.loads(self.body).get("message")
        except (ValueError, AttributeError):
            message = None
        return str(message or self.body[:300] or f"HTTP {self.status}")


# The API server refuses an object as invalid: retrying the same object cannot help. After this many
# tries in a row (a few seconds of backoff, in case an admission webhook was briefly wrong) the job
# fails with the API's message; a new spec generation starts it again.
MAX_REFUSALS = 3


class _Refused(Exception):
    """The API server refused to create a rendered object (400 Bad Request or 422 Invalid)."""

    def __init__(self, kind: str, name: str, err: ApiError) -> None:
        super().__init__(f"the API server refused {kind} {name}: {err.message}")
        self.err = err


class Api:
    """Blocking JSON requests, run in a thread pool so the event loop never waits on the network."""

    def __init__(self, api_client: Any, workers: int = 16) -> None:
        self._client = api_client
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mnv2-api")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _request_sync(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, headers, body, post = self._client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self._client.call_api(m, url, headers, body, post, _request_timeout=(10, 60))
        data = resp.read()
        if resp.status >= 400:
            text = data.decode("utf-8", "replace") if data else ""
            raise ApiError(resp.status, resp.reason or "", text)
        return json.loads(data) if data else None

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self._request_sync(method, path, body, content_type)
        )


def _make_api_client() -> Any:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    import kubernetes

    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    except kubernetes.config.ConfigException:
        # The package reads $KUBECONFIG once, at import: read it now (tests and the demo set it later).
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            kubernetes.config.load_kube_config(config_file=path, client_configuration=cfg)
        except (kubernetes.config.ConfigException, OSError) as err:
            raise kopf.PermanentError(
                f"no cluster credentials: not in a pod, and no usable kubeconfig at {path} ({err}); "
                "set KUBECONFIG"
            ) from err
    cfg.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(cfg)


def job_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


def object_path(obj: Mapping[str, Any], namespace: str, named: bool = False) -> str:
    """The collection path of a rendered object (or its own path with `named`)."""
    api_version = obj["apiVersion"]
    kind = obj["kind"]
    plural = _PLURALS.get(kind, kind.lower() + "s")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace)}/{plural}"
    if named:
        path += f"/{quote(obj['metadata']['name'])}"
    return path


# ---------------------------------------------------------------------------------------------
# Per-job scheduling: coalesce events, one reconcile at a time per job, timers for later.

Key = tuple[str, str]


class Scheduler:
    """Runs `fn(key)` for keys on demand: never twice at once for one key, again if kicked meanwhile.

    `fn` returns the seconds after which it wants to run again (or None).
    """

    def __init__(self, fn: Callable[[Key], Any]) -> None:
        self._fn = fn
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}

    def kick(self, key: Key, delay: float | None = None) -> None:
        if delay is not None and delay > 0:
            loop = asyncio.get_running_loop()
            when = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None and not timer.cancelled() and timer.when() <= when:
                return  # an earlier wake-up is already planned
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(when, self._fire, key)
            return
        if key in self._tasks:
            self._dirty.add(key)
            return
        self._tasks[key] = asyncio.create_task(self._run(key), name=f"mnv2-reconcile-{key[0]}/{key[1]}")

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.kick(key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    async def _run(self, key: Key) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    again = await self._fn(key)
                    self._failures.pop(key, None)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # an API hiccup must not stop the job's handling
                    n = self._failures.get(key, 0) + 1
                    self._failures[key] = n
                    again = min(0.5 * 2 ** (n - 1), 30.0)
                    # API and connection errors (5xx, 429, timeouts, refused connections) are expected
                    # now and then: one line; anything else is a bug (traceback). Both back off.
                    logger.warning(
                        "reconcile of %s/%s failed (%s); retrying in %.1fs",
                        *key,
                        err,
                        again,
                        exc_info=not isinstance(err, ApiError | OSError | urllib3.exceptions.HTTPError),
                    )
                if again is not None:
                    self.kick(key, again)
                if key not in self._dirty:
                    return
        finally:
            self._tasks.pop(key, None)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def busy(self) -> int:
        return len(self._tasks)


# ---------------------------------------------------------------------------------------------
# The controller: one reconcile function.


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
        "apiVersion": f"{GROUP}/{VERSION}",
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


class Controller:
    """Reconciles jobs; holds the API client, the pod index and the scheduler of one operator run."""

    def __init__(self, api: Api, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.api = api
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
        self._views: dict[Key, mem.JobView] = {}  # job -> its newest known copy
        self._created: dict[Key, mem.Created] = {}  # job -> what was created, not yet in the index
        self.monotonic: Callable[[], float] = time.monotonic  # the clock of `controller.Created`

    def kick(self, key: Key, pods_index: Any) -> None:
        self.pods_index = pods_index
        self.scheduler.kick(key)

    def job_event(self, key: Key, body: Mapping[str, Any], listing: bool, pods_index: Any) -> None:
        """A watch event of the job: keep its copy, and reconcile unless it is our own write's echo."""
        if self._views.setdefault(key, mem.JobView()).on_event(body, listing):
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
        if self.pods_index is None or key not in self.pods_index:
            return []
        return list(self.pods_index[key])

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        view = self._views.setdefault(key, mem.JobView())
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
        namespace, name = key
        meta = job.get("metadata", {})
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes the children with the job
        generation = meta.get("generation")
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
            # Off the event loop, like rendering below: other jobs' reconciles never wait on a spec.
            spec = await asyncio.to_thread(parse_spec, raw)
        except Exception as err:  # any exception: an unusable spec, never a retry loop
            problem = spec_problem(err)
            if (previous.get("phase") is None and not pods) or st.failed_by_invalid_spec(previous):
                await self._invalid(job, previous, problem, pods)  # never started: Failed, at once
                return None
            # A job that has started goes on with its pods (created from a valid spec); a finished
            # one keeps its outcome. Its run policy (TTL, cleanup, deadline, backoff) is read
            # leniently from the raw spec. The problem applies at the next start.
            attempt = int(previous.get("restarts") or 0)
            policy = st.lenient_policy(raw, pods, attempt)
            decision = st.reconcile(name, policy, pods, previous, generation, now)
            if previous.get("phase") not in st.TERMINAL:
                if decision.create_ranks:
                    await self._invalid(job, previous, problem, pods)  # the next start is now
                    return None
                if decision.status["phase"] not in st.TERMINAL:  # (a job that just finished: done)
                    decision = st.spec_invalid_deferred(decision, previous, problem, generation, now)
            return await self._apply(job, previous, decision, pods, None, "", {}, mem.CreatePlan())

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
        # the index does not show yet are not created again (controller.Created, controller.plan_creates).
        created = mem.Created.of(self._created.get(key), meta.get("uid", "")).seen_in(pods)
        if key in self._created:
            self._created[key] = created  # (entries are made by _create, for jobs that create)
        plan = mem.plan_creates(
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
        plan: mem.CreatePlan,
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
            try:
                retry, conflicts = await self._create(job, rendered, decision, spec_hash, foreign, plan)
            except _Refused as refused:
                # Counted per job and spec: a bounded number of tries, then Failed (InvalidSpec)
                # with the API's message; never an endless CreateFailed loop.
                uid = job["metadata"]["uid"]
                prior = self._refusals.get(key)
                n = prior[2] + 1 if prior is not None and prior[:2] == (uid, spec_hash) else 1
                self._refusals[key] = (uid, spec_hash, n)
                if n >= MAX_REFUSALS:
                    self._refusals.pop(key, None)
                    self._create_errors.pop(key, None)
                    self._created.pop(key, None)
                    await self._invalid(job, decision.status, str(refused), pods)
                    return None
                message = f"cannot create the job's children: {refused} (try {n} of {MAX_REFUSALS})"
                await self._report_not_created(job, key, decision.status, st.REASON_CREATE_FAILED, message)
                raise refused.err from None  # retried with backoff
            except ApiError as err:
                if err.status in (403, 404, 409, 422):
                    message = f"cannot create the job's children: {err}"
                    await self._report_not_created(
                        job, key, decision.status, st.REASON_CREATE_FAILED, message
                    )
                raise  # retried with backoff: the cause may be fixed (RBAC granted, CRD installed)
            if conflicts:
                # Blocked, not failed: the job starts by itself once the objects in its way are gone
                # (a deleted predecessor's children are, within seconds). The operator watches none of
                # these kinds, so it looks again, backing off to every 30 s.
                await self._report_not_created(
                    job, key, decision.status, st.REASON_CHILD_CONFLICT, st.conflicts_message(conflicts)
                )
                n = self._blocked[key] = self._blocked.get(key, 0) + 1
                retry_in = min(2.0 ** (n - 1), 30.0)
                requeue = retry_in if requeue is None else min(requeue, retry_in)
            else:
                self._create_errors.pop(key, None)
                self._blocked.pop(key, None)
                self._refusals.pop(key, None)
                if retry:
                    requeue = 1.0 if requeue is None else min(requeue, 1.0)
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
            kopf.event(cast(Any, job), type=ev.type, reason=ev.reason, message=ev.message[:1000])
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
        if decision.status["phase"] not in (st.PENDING, st.RUNNING, st.RESTARTING):
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
                    "SpecChangeDeferred",
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
        plan: mem.CreatePlan,
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
            created = []
            for obj in rendered.objects:
                made, conflict = await self._apply_child(_owned(obj, job, namespace), namespace, job)
                if made:
                    created.append(f"{obj['kind']} {obj['metadata']['name']}")
                if conflict:
                    conflicts.append(conflict)
            if created:
                self._post(job, [st.Event("Normal", "ChildrenCreated", "created " + ", ".join(created))])
            if conflicts:
                return False, conflicts
            self._created[key] = mem.Created.of(self._created.get(key), uid).made_children(
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
                    retry = True  # gone meanwhile, ours, or on its way out: look again shortly
                else:
                    conflicts.append(st.conflict("Pod", name, existing, KIND, job_name))
                continue
            made_pods.append(name)
            pod_uid = str(((answer or {}).get("metadata") or {}).get("uid") or "")
            self._created[key] = mem.Created.of(self._created.get(key), uid).made_pods(
                decision.attempt, {name: pod_uid}, self.monotonic()
            )
        if made_pods:
            text = f"attempt {decision.attempt}: created {', '.join(made_pods)}"
            self._post(job, [st.Event("Normal", "PodsCreated", text)])
        return retry, conflicts

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


# ---------------------------------------------------------------------------------------------
# kopf wiring.


@kopf.on.startup()
async def _configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The status belongs to two writers (operator, trainer): kopf must keep its own bookkeeping out
    # of it. Annotations it is (unused by event/index handlers, but never status if that changes).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # The operator posts its Events explicitly (kopf.event); kopf's own per-object log lines
    # ("handler succeeded") would otherwise become an Event on every pod and job at INFO.
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    # Re-establish watches now and then, so a silently dropped connection cannot stall the operator.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Only the job's worker pods are streamed from the API server (server-side label selector), so a
    # cluster-wide operator does not receive every pod of the cluster. The handlers filter again.
    settings.watching.label_selectors["pods"] = f"{LABEL_JOB},{LABEL_ROLE}={ROLE_WORKER}"
    # Events and index updates are cheap; let many objects be processed at once.
    settings.queueing.worker_limit = None
    if getattr(memo, "mnv2", None) is None:
        memo.mnv2 = Controller(Api(_make_api_client()))


@kopf.on.login()
def _login(**kwargs: Any) -> Any:
    """kopf's usual login through the `kubernetes` package, unless $KUBECONFIG changed since its import.

    The package reads $KUBECONFIG once, when imported; when it was set later (the tests and the demo
    point it at the local control plane), kopf's own kubeconfig reader is used instead.
    """
    from kubernetes.config import kube_config

    env = os.environ.get("KUBECONFIG")
    if env and os.path.expanduser(env) != os.path.expanduser(kube_config.KUBE_CONFIG_DEFAULT_LOCATION):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_via_client(**kwargs)


@kopf.on.cleanup()
async def _shutdown(memo: kopf.Memo, **_: Any) -> None:
    controller = getattr(memo, "mnv2", None)
    if controller is not None:
        await controller.close()


_POD_LABELS: Mapping[str, Any] = {LABEL_JOB: kopf.PRESENT, LABEL_ROLE: ROLE_WORKER}

# kopf's handler protocols list every keyword a handler may receive; handlers that name only the
# ones they use (kopf's own style, `**_` for the rest) do not match them for mypy, hence the ignores.


@kopf.index("pods", labels=_POD_LABELS)  # type: ignore[arg-type]
async def mnv2_pods(
    namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Pods by (namespace, job name): the operator's view of every job's gang.

    Async on purpose: kopf runs sync handlers in a thread pool, too slow for thousands of pods.
    """
    return {(namespace, labels[LABEL_JOB]): slim_pod(body)}


@kopf.on.event("pods", labels=_POD_LABELS)  # type: ignore[arg-type]
async def _pod_event(
    namespace: str,
    name: str,
    uid: str | None,
    labels: Mapping[str, str],
    memo: kopf.Memo,
    mnv2_pods: kopf.Index,
    **_: Any,
) -> None:
    # kopf updates the index from this event before calling event handlers.
    memo.mnv2.pod_event((namespace, labels[LABEL_JOB]), name, uid, mnv2_pods)


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
async def _job_event(
    type: str | None,
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    mnv2_pods: kopf.Index,
    **_: Any,
) -> None:
    if type == "DELETED":
        memo.mnv2.forget((namespace, name))
        return
    memo.mnv2.job_event((namespace, name), body, type is None, mnv2_pods)


def run_operator(namespaces: list[str], liveness: str | None, standalone: bool) -> int:
    """Run the operator until interrupted (`mnv2 operator`).

    Args:
        namespaces: watch only these namespaces; empty means cluster-wide.
        liveness: URL of kopf's liveness endpoint (e.g. `http://0.0.0.0:8080/healthz`); empty: none.
        standalone: no peering with other replicas (no kopfpeerings objects needed).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per watch event ("Handler '_pod_event' succeeded") and per liveness probe would drown
    # the operator's own lines (one per transition, logger `mnv2_operator`) with thousands of jobs.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kopf.run(
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
    )
    return 0
