"""Tell Kubernetes why the trainer gave up, through the container's termination message.

When a run ends on an input error that no retry can fix (a missing or empty ``data_dir``, a
``ckpt_path`` that does not exist or does not fit the model, a config value the trainer rejects),
the entry points write one line to the container's termination-message file and exit with
:data:`EXIT_INVALID_INPUT`. The kubelet copies the file into the pod's
``status.containerStatuses[].state.terminated.message``; the operator reads it there, and a message
that starts with :data:`PREFIX` fails the job at once instead of restarting the gang.

The exit code alone cannot carry this: ``msrun --join=True`` exits 1 whatever code a worker exits
with (its launcher raises ``RuntimeError("Distributed job exited with exception ...")``), and the
pod's container is msrun. msrun's workers share the container, so every failing rank may write:
the first writer wins (an exclusive ``flock``, then write only into an empty file), and a later
rank's line, usually the same text, is dropped.

The file is ``$MNV2_TERMINATION_LOG``, else ``/dev/termination-log`` when it exists and is
writable (outside a pod: nothing is written). Writing it never raises.
"""

from __future__ import annotations

import contextlib
import os

from mnv2_operator.constants import INVALID_INPUT_MARKER

ENV = "MNV2_TERMINATION_LOG"
DEFAULT_PATH = "/dev/termination-log"
PREFIX = f"{INVALID_INPUT_MARKER} "
EXIT_INVALID_INPUT = 2
"""Exit code of an entry point that stopped on an input error (1: a crash, which is retried)."""
MAX_BYTES = 1024
"""Upper bound of the line written (Kubernetes keeps up to 4096 bytes of the file)."""


def termination_log_path() -> str | None:
    """Where to write the termination message, or None when there is no such file here."""
    path = os.environ.get(ENV, "").strip()
    if path:
        return path
    if os.path.exists(DEFAULT_PATH) and os.access(DEFAULT_PATH, os.W_OK):
        return DEFAULT_PATH
    return None


def format_message(message: str, prefix: str = PREFIX, limit: int = MAX_BYTES) -> str:
    """``prefix`` + ``message`` on one line (whitespace runs collapsed), at most ``limit`` UTF-8 bytes."""
    text = prefix + " ".join(str(message).split())
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "..."


def write_termination_message(message: str, path: str | None = None) -> bool:
    """Write ``message`` (one line, bounded) to the termination-message file if nobody did yet.

    Args:
        message: the full line, normally from :func:`format_message`.
        path: the file; default :func:`termination_log_path`.

    Returns:
        Whether this call wrote the file (False: no file here, another rank wrote first, or an error).
    """
    path = path or termination_log_path()
    if not path:
        return False
    data = (message.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # no locking here (e.g. a character device): still one write() of a short line
        if os.fstat(fd).st_size > 0:
            return False  # another rank was first
        os.write(fd, data)  # one write of < PIPE_BUF-sized text: readers never see half a line
        with contextlib.suppress(OSError):
            os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def report_invalid_input(error: BaseException | str) -> bool:
    """Record ``error`` as a permanent input error (see the module docstring); never raises."""
    try:
        return write_termination_message(format_message(str(error)))
    except Exception:  # the reason must never turn into another failure
        return False
