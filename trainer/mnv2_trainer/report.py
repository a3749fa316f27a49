"""Progress and metrics: one JSON line per epoch in ``metrics.jsonl`` and the job's status.

Rank 0 creates a :class:`Reporter` (other ranks get one that does nothing). It

* appends one JSON line per epoch to ``<ckpt_save_dir>/metrics.jsonl`` (the durable record;
  written synchronously and flushed, it never depends on the API);
* when ``MNV2_JOB_NAME`` and ``MNV2_JOB_NAMESPACE`` are set, JSON-merge-patches the job's
  ``status`` subresource with ``progress``, ``metrics`` and ``checkpoints`` (docs/interfaces.md).
  Patches are sent by a background thread with short timeouts; step progress is throttled to one
  patch per ``min_interval`` seconds (the newest values win), epoch ends are always sent. When the
  API is unreachable or refuses, the first failure is logged once as a warning, later ones only
  at DEBUG, and training goes on.

The body builders and :class:`Throttle` are pure and unit-tested without MindSpore or an API.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from mnv2_operator.constants import GROUP, PLURAL, VERSION

_logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
ENV_JOB_NAME, ENV_JOB_NAMESPACE = "MNV2_JOB_NAME", "MNV2_JOB_NAMESPACE"
#: Seconds between two step-progress patches.
DEFAULT_MIN_INTERVAL = 5.0
#: (connect, read) timeout of one patch, seconds.
REQUEST_TIMEOUT = (3.0, 5.0)


def utc_now() -> str:
    """RFC 3339 UTC timestamp with second precision, as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: float | None, digits: int = 7) -> float | None:
    """JSON-safe number: ``None`` for missing/NaN/inf (JSON has no NaN), else ``digits`` significant digits."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(f"{float(value):.{digits}g}")


def metrics_line(
    *,
    epoch: int,
    total_epochs: int,
    step: int,
    loss: float | None,
    lr: float | None,
    top1: float | None,
    top5: float | None,
    val_loss: float | None,
    images_per_second: float | None,
    epoch_seconds: float | None,
    latest: str | None,
    best: str | None,
    best_top1: float | None,
    best_epoch: int | None,
    time_: str | None = None,
) -> dict[str, Any]:
    """One ``metrics.jsonl`` record (accuracies are fractions in 0..1)."""
    return {
        "epoch": epoch,
        "total_epochs": total_epochs,
        "step": step,
        "loss": _num(loss),
        "lr": _num(lr),
        "top1": _num(top1),
        "top5": _num(top5),
        "val_loss": _num(val_loss),
        "best_top1": _num(best_top1),
        "best_epoch": best_epoch,
        "images_per_second": _num(images_per_second, 5),
        "epoch_seconds": _num(epoch_seconds, 5),
        "checkpoint": latest,
        "best_checkpoint": best,
        "time": time_ or utc_now(),
    }


def progress_body(
    *,
    epoch: int,
    total_epochs: int,
    step: int,
    loss: float | None,
    lr: float | None,
    images_per_second: float | None,
    updated_at: str | None = None,
) -> dict[str, Any]:
    """The ``status.progress`` object (camelCase, as in the CRD)."""
    return {
        "progress": {
            "epoch": epoch,
            "totalEpochs": total_epochs,
            "step": step,
            "loss": _num(loss),
            "lr": _num(lr),
            "imagesPerSecond": _num(images_per_second, 5),
            "updatedAt": updated_at or utc_now(),
        }
    }


def epoch_body(record: Mapping[str, Any]) -> dict[str, Any]:
    """Status patch for an epoch end, from a :func:`metrics_line` record."""
    body = progress_body(
        epoch=record["epoch"],
        total_epochs=record["total_epochs"],
        step=record["step"],
        loss=record["loss"],
        lr=record["lr"],
        images_per_second=record["images_per_second"],
        updated_at=record["time"],
    )
    metrics = {
        "top1": record["top1"],
        "top5": record["top5"],
        "bestTop1": record["best_top1"],
        "bestEpoch": record["best_epoch"],
    }
    body["metrics"] = {k: v for k, v in metrics.items() if v is not None}
    checkpoints = {"latest": record["checkpoint"], "best": record["best_checkpoint"]}
    body["checkpoints"] = {k: v for k, v in checkpoints.items() if v}
    return {k: v for k, v in body.items() if v}


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-merge ``update`` into ``base`` (nested dicts merged, the rest replaced)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


class Throttle:
    """Lets an event through at most once per ``min_interval`` seconds (forced events always)."""

    def __init__(self, min_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self._clock = clock
        self._last: float | None = None

    def ready(self, force: bool = False) -> bool:
        """True when an event may go now; records it as sent."""
        now = self._clock()
        if force or self._last is None or now - self._last >= self.min_interval:
            self._last = now
            return True
        return False


class OnceLogger:
    """Logs the first failure as a warning, the rest at DEBUG; one INFO line when it recovers."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger, self._what = logger, what
        self.failures = 0
        self._warned = False
        self._failing = False

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._failing = True
        if not self._warned:
            self._warned = True
            self._logger.warning(
                "%s failed (%s: %s); training continues, metrics.jsonl is still written; "
                "further failures are not logged",
                self._what,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
            )
        else:
            self._logger.debug("%s failed again: %s", self._what, exc)

    def succeeded(self) -> None:
        if self._failing:
            self._failing = False
            self._logger.info("%s works again", self._what)


def kubernetes_patcher(name: str, namespace: str) -> Callable[[dict[str, Any]], None]:
    """A function that merge-patches the job's status; configured lazily on first use.

    It takes the status fields (``{"progress": ...}``) and sends ``{"status": {...}}``.

    The cluster and credentials come from the project's one bootstrap,
    :func:`mnv2_operator.kube.client_configuration`: ``$KUBECONFIG`` when set (as for every client of
    the project, e.g. a trainer run by hand), else the pod's ServiceAccount.
    """
    state: dict[str, Any] = {}

    def patch(body: dict[str, Any]) -> None:
        if "api" not in state:
            from kubernetes import client

            # The trainer image installs the same distribution as the operator's, and
            # `mnv2_operator.kube` imports only the standard library (kubernetes when called): no
            # kopf, pydantic or jinja2 enter a training pod through it.
            from mnv2_operator import kube

            # A private client configuration (the library's global default is never touched), and
            # no urllib3 retries: each would log its own warning, and the next patch comes anyway.
            state["api"] = client.CustomObjectsApi(kube.api_client(retries=False))
        state["api"].patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": body},  # the status subresource takes the whole object; only status is applied
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )

    return patch


class StatusSender:
    """Sends status patches from a daemon thread, coalescing what piles up while one is in flight."""

    def __init__(self, patch: Callable[[dict[str, Any]], None], logger: logging.Logger | None = None) -> None:
        self._patch = patch
        self._pending: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self.sent = 0
        self.errors = OnceLogger(logger or _logger, "reporting to the job's status")
        self._thread = threading.Thread(target=self._run, name="mnv2-status", daemon=True)
        self._thread.start()

    def submit(self, body: Mapping[str, Any]) -> None:
        """Queue ``body``; merged into a pending patch that was not sent yet."""
        with self._cond:
            self._pending = merge(self._pending or {}, body)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                body, self._pending, self._busy = self._pending, None, True
            try:
                self._patch(body)
                self.sent += 1
                self.errors.succeeded()
            except Exception as exc:  # anything: reporting must never stop training
                self.errors.failed(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until nothing is pending; True when drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending (bounded by ``timeout``) and stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)


class Reporter:
    """Rank 0's reporting: ``metrics.jsonl`` plus, when configured, the job's status.

    Args:
        output_dir: ``ckpt_save_dir``; ``metrics.jsonl`` is appended there.
        total_epochs: ``epoch_size`` of this run.
        sender: a :class:`StatusSender`, or ``None`` when the job is unknown.
        min_interval: seconds between step-progress patches.
        clock: for tests.
    """

    def __init__(
        self,
        output_dir: str | None,
        total_epochs: int,
        sender: StatusSender | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.path.join(output_dir, METRICS_FILE) if output_dir else None
        self.total_epochs = total_epochs
        self.sender = sender
        self.throttle = Throttle(min_interval, clock)
        self.file_errors = OnceLogger(_logger, f"writing {self.path}")

    def step(
        self, *, epoch: int, step: int, loss: float | None, lr: float | None, images_per_second: float | None
    ) -> bool:
        """Report step progress if the throttle allows; True when a patch was queued."""
        if self.sender is None or not self.throttle.ready():
            return False
        self.sender.submit(
            progress_body(
                epoch=epoch,
                total_epochs=self.total_epochs,
                step=step,
                loss=loss,
                lr=lr,
                images_per_second=images_per_second,
            )
        )
        return True

    def epoch_end(self, record: dict[str, Any]) -> None:
        """Append ``record`` (from :func:`metrics_line`) and always send it to the status."""
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                self.file_errors.failed(exc)
        if self.sender is not None:
            self.throttle.ready(force=True)
            self.sender.submit(epoch_body(record))

    def close(self, timeout: float = 10.0) -> None:
        """Flush pending status patches (bounded)."""
        if self.sender is not None:
            self.sender.close(timeout)


def create_reporter(
    output_dir: str | None,
    total_epochs: int,
    rank: int = 0,
    env: Mapping[str, str] | None = None,
    min_interval: float = DEFAULT_MIN_INTERVAL,
    patch: Callable[[dict[str, Any]], None] | None = None,
) -> Reporter | None:
    """The reporter for this rank: ``None`` on ranks other than 0.

    Args:
        output_dir: where ``metrics.jsonl`` goes.
        total_epochs: for ``progress.totalEpochs``.
        rank: only rank 0 reports.
        env: defaults to ``os.environ``; ``MNV2_JOB_NAME``/``MNV2_JOB_NAMESPACE`` enable status patches.
        min_interval: seconds between step-progress patches.
        patch: replaces the Kubernetes patch function (tests).
    """
    if rank != 0:
        return None
    env = os.environ if env is None else env
    name, namespace = env.get(ENV_JOB_NAME), env.get(ENV_JOB_NAMESPACE)
    sender = None
    if name and namespace:
        sender = StatusSender(patch or kubernetes_patcher(name, namespace))
        _logger.info("reporting progress to %s/%s %s/%s status", GROUP, VERSION, namespace, name)
    elif name or namespace:
        _logger.warning(
            "only one of %s and %s is set: not reporting to the job's status", ENV_JOB_NAME, ENV_JOB_NAMESPACE
        )
    return Reporter(output_dir, total_epochs, sender, min_interval)
