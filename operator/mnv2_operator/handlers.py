"""The operator's kopf wiring: settings, login, the pod index and the watch-event handlers.

This is the only module that imports kopf (a unit test checks it). It is thin on purpose: each
handler hands what kopf delivers to `controller.Controller` (which decides with the pure
`status.reconcile` and renders with the pure `render.render_job`) and returns at once.

- Watch events of jobs and of their worker pods only *schedule* a reconcile of that job
  (`kopf.on.event` handlers are fire-and-forget and cheap); the controller's per-job scheduler
  runs at most one reconcile per job at a time. Nothing runs for an idle job.
- Pods are found through a kopf index keyed by (namespace, job name), fed by a watch with a
  server-side label selector; only pods owned by the job's uid count. kopf fills every index from a
  full LIST before any handler runs, so after an operator restart the first reconcile of each job
  already sees all its pods: nothing is duplicated and the status continues from what is observed.
- kopf's watches and the controller's own requests use the same credentials, found by
  `kube.client_configuration` ($KUBECONFIG, else the pod's ServiceAccount, else `~/.kube/config`).
- No finalizer: children carry owner references and are garbage-collected with the job. kopf's
  progress and diff-base storage are set to annotations (the status is shared with the trainer), but
  with only event and index handlers kopf writes neither.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from mnv2_operator import kube
from mnv2_operator.constants import GROUP, LABEL_JOB, LABEL_ROLE, PLURAL, ROLE_WORKER, VERSION
from mnv2_operator.controller import Controller, slim_pod
from mnv2_operator.scheduler import Key


def _post_event(job: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue an Event on the job for kopf's poster (the controller's `post_event`)."""
    kopf.event(cast(Any, job), type=type_, reason=reason, message=message)


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
        try:
            client = kube.api_client(connection_pool_maxsize=32)
        except kube.KubeConfigError as err:
            raise kopf.PermanentError(str(err)) from err
        memo.mnv2 = Controller(kube.Api(client), post_event=_post_event)


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials, from the same bootstrap as the controller's (`kube.client_configuration`).

    kopf's own `login_via_client` would take the `kubernetes` package's default kubeconfig, which
    that package reads from $KUBECONFIG once, at import; the bootstrap reads it when called.
    """
    try:
        cfg = kube.client_configuration()
    except kube.KubeConfigError as err:
        raise kopf.LoginError(str(err)) from err
    return kopf.ConnectionInfo(**kube.connection_fields(cfg), trust_env=settings.networking.trust_env)


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
