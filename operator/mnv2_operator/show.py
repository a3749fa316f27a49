"""Reading a job the way a person does: `mnv2 status` (a table) and the demo's progress line.

The formatting functions are pure (a job dict in, text out) so they are tested without a cluster. The
curves of `mnv2 plot` (matplotlib) live in the demo package, `mnv2_demo.plot`, which the operator
never imports. Only `load_api_client` and `get_job` talk to the API; the cluster is found by the
project's one client bootstrap, `kube.client_configuration` (`--kubeconfig`, else $KUBECONFIG read at
call time, else the pod's ServiceAccount, else ~/.kube/config), so the same code reads any cluster,
the demo's local one included.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from mnv2_operator import kube
from mnv2_operator.constants import GROUP, KIND, PLURAL, VERSION, Phase


class ShowError(Exception):
    """A problem the user can fix (no such job, no cluster, no metrics); the message says how."""


# --------------------------------------------------------------------------------------------------
# Small formatting helpers (pure)
# --------------------------------------------------------------------------------------------------


def finite_number(value: Any) -> float | None:
    """A finite float from a status field, or None when absent or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt_fraction(value: Any) -> str:
    """An accuracy in 0..1 as `0.956`; `-` when unknown."""
    number = finite_number(value)
    return "-" if number is None else f"{number:.3f}"


def fmt_loss(value: Any) -> str:
    number = finite_number(value)
    return "-" if number is None else f"{number:.4f}"


def fmt_lr(value: Any) -> str:
    number = finite_number(value)
    return "-" if number is None else f"{number:.3g}"


def fmt_rate(value: Any) -> str:
    number = finite_number(value)
    return "-" if number is None else f"{number:.1f}"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it (`2026-11-27T18:00:00Z`), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def fmt_duration(seconds: float | None) -> str:
    """`1h02m`, `4m05s`, `12s` — like kubectl's AGE column, a little more precise."""
    if seconds is None or seconds < 0:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


# --------------------------------------------------------------------------------------------------
# The status table (pure)
# --------------------------------------------------------------------------------------------------


def format_status(job: Mapping[str, Any], now: datetime | None = None) -> str:
    """A job object (as the API returns it) as a readable multi-line table.

    Args:
        job: the MobileNetV2TrainingJob, with `metadata`, `spec` and (maybe partial) `status`.
        now: the time ages are measured against; the current time when None.

    Returns:
        Text with sections for the phase, workers, progress, metrics, checkpoints and conditions.
        Fields the status does not have yet print as `-`, so a fresh job reads fine too.
    """
    now = now or datetime.now(UTC)
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    rows = [
        *_state_rows(meta, status),
        *_time_rows(meta, status, now),
        _progress_row(status.get("progress") or {}, now),
        _metrics_row(status.get("metrics") or {}),
        *_checkpoint_rows(status.get("checkpoints") or {}),
    ]
    lines = [*_table(rows, indent=""), *_condition_lines(status.get("conditions") or [], now)]
    return "\n".join(lines) + "\n"


def _state_rows(meta: Mapping[str, Any], status: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The Job, Phase, Message (when there is one) and Workers rows."""
    workers = status.get("workers") or {}
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    rows: list[tuple[str, str]] = [("Job", name)]
    phase = status.get("phase") or "Pending (not yet seen by the operator)"
    rows.append(("Phase", f"{phase}   restarts: {status.get('restarts', 0) or 0}"))
    if status.get("message"):
        rows.append(("Message", str(status["message"])))
    rows.append(
        (
            "Workers",
            f"active {workers.get('active', 0) or 0}, succeeded {workers.get('succeeded', 0) or 0}, "
            f"failed {workers.get('failed', 0) or 0}",
        )
    )
    return rows


def _time_rows(meta: Mapping[str, Any], status: Mapping[str, Any], now: datetime) -> list[tuple[str, str]]:
    """The Age, Started and Completed rows, each only when its time is known."""
    rows: list[tuple[str, str]] = []
    started = parse_time(status.get("startTime"))
    completed = parse_time(status.get("completionTime"))
    created = parse_time(meta.get("creationTimestamp"))
    if created:
        rows.append(("Age", fmt_duration((now - created).total_seconds())))
    if started:
        end = completed or now
        label = "ran" if completed else "running for"
        rows.append(
            ("Started", f"{status['startTime']}   ({label} {fmt_duration((end - started).total_seconds())})")
        )
    if completed:
        rows.append(("Completed", str(status["completionTime"])))
    return rows


def _progress_row(progress: Mapping[str, Any], now: datetime) -> tuple[str, str]:
    """Epoch, step, loss, learning rate, throughput and the age of the trainer's last report."""
    epoch, total = progress.get("epoch"), progress.get("totalEpochs")
    epoch_text = "-" if epoch is None else f"{epoch}/{total if total is not None else '?'}"
    updated = parse_time(progress.get("updatedAt"))
    updated_text = f"   (updated {fmt_duration((now - updated).total_seconds())} ago)" if updated else ""
    return (
        "Progress",
        f"epoch {epoch_text}   step {progress.get('step', '-')}   loss {fmt_loss(progress.get('loss'))}   "
        f"lr {fmt_lr(progress.get('lr'))}   images/s {fmt_rate(progress.get('imagesPerSecond'))}"
        f"{updated_text}",
    )


def _metrics_row(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """Top-1, top-5 and the best top-1 with its epoch."""
    best_epoch = metrics.get("bestEpoch")
    best = fmt_fraction(metrics.get("bestTop1"))
    if best_epoch is not None and best != "-":
        best += f" (epoch {best_epoch})"
    return (
        "Metrics",
        f"top-1 {fmt_fraction(metrics.get('top1'))}   top-5 {fmt_fraction(metrics.get('top5'))}   best top-1 {best}",
    )


def _checkpoint_rows(checkpoints: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The latest and the best checkpoint's paths."""
    return [
        ("Checkpoints", f"latest {checkpoints.get('latest') or '-'}"),
        ("", f"best   {checkpoints.get('best') or '-'}"),
    ]


def _condition_lines(conditions: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    """The Conditions section: a table of type, status, reason, age and message, or ``-``."""
    lines = ["Conditions"]
    if not conditions:
        lines.append("  -")
        return lines
    table = [("TYPE", "STATUS", "REASON", "SINCE", "MESSAGE")]
    for cond in conditions:
        since = parse_time(cond.get("lastTransitionTime"))
        table.append(
            (
                str(cond.get("type", "?")),
                str(cond.get("status", "?")),
                str(cond.get("reason", "") or "-"),
                fmt_duration((now - since).total_seconds()) + " ago" if since else "-",
                str(cond.get("message", "") or ""),
            )
        )
    lines.extend(_table(table))
    return lines


def format_progress_line(job: Mapping[str, Any], width: int = 20, elapsed: float | None = None) -> str:
    """One line for a terminal progress bar: `[######....] epoch 6/15  loss 0.61  top-1 0.902  Running`.

    Args:
        job: the job object.
        width: characters inside the bar.
        elapsed: seconds since the demo applied the job, shown at the end when given.
    """
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    epoch = finite_number(progress.get("epoch"))
    total = finite_number(progress.get("totalEpochs"))
    if epoch is not None and total:
        done = max(0.0, min(1.0, epoch / total))
        filled = int(round(done * width))
        bar = "[" + "#" * filled + "." * (width - filled) + "]"
        epoch_text = f"epoch {int(epoch)}/{int(total)}"
    else:
        bar = "[" + "." * width + "]"
        epoch_text = "epoch -/-"
    parts = [
        bar,
        epoch_text,
        f"loss {fmt_loss(progress.get('loss'))}",
        f"top-1 {fmt_fraction(metrics.get('top1'))}",
        str(status.get("phase") or Phase.PENDING),
    ]
    restarts = status.get("restarts") or 0
    if restarts:
        parts.append(f"restarts {restarts}")
    if elapsed is not None:
        parts.append(fmt_duration(elapsed))
    return "  ".join(parts)


# --------------------------------------------------------------------------------------------------
# Talking to a cluster
# --------------------------------------------------------------------------------------------------


def load_api_client(kubeconfig: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient` for the cluster that `kube.client_configuration` finds.

    Raises:
        ShowError: the kubeconfig cannot be used, or there is none and this is not a pod.
    """
    try:
        return kube.api_client(kubeconfig)
    except kube.NoCredentials as exc:
        raise ShowError(
            "no cluster configured: pass --kubeconfig, set KUBECONFIG, or run `mnv2 demo --keep` and "
            "use the kubeconfig it prints"
        ) from exc
    except kube.KubeConfigError as exc:
        raise ShowError(str(exc)) from exc


def get_job(api_client: Any, name: str, namespace: str) -> dict[str, Any]:
    """The job object as a dict.

    Raises:
        ShowError: the job (or the CRD) does not exist, or the API cannot be reached.
    """
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)
    host = api_client.configuration.host
    try:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return cast(dict[str, Any], job)  # the client types it as object
    except ApiException as exc:
        if exc.status != 404:
            raise ShowError(
                f"reading job {namespace}/{name} from {host}: HTTP {exc.status} {exc.reason}"
            ) from exc
        # Same 404 for "no such job" and "no such resource type": tell them apart for the user.
        try:
            api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, limit=1)
        except ApiException as list_exc:
            if list_exc.status == 404:
                raise ShowError(
                    f"the cluster at {host} does not know {KIND} ({PLURAL}.{GROUP}): install the CRD "
                    "(`mnv2 crd | kubectl apply -f -` or the Helm chart)"
                ) from exc
        raise ShowError(
            f"job {name!r} not found in namespace {namespace!r} at {host} "
            f"(`kubectl get mnv2 -n {namespace}` lists the jobs there)"
        ) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ShowError(f"cannot reach the Kubernetes API at {host}: {exc}") from exc


def status_cli(job: str, namespace: str = "default", kubeconfig: str | None = None) -> int:
    """`mnv2 status <job>`: print the table; exit 1 with a message when the job cannot be read."""
    try:
        api_client = load_api_client(kubeconfig)
        obj = get_job(api_client, job, namespace)
    except ShowError as exc:
        print(f"mnv2 status: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_status(obj))
    return 0
