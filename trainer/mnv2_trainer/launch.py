"""The training container's main process: ``python -m mnv2_trainer.launch msrun ...``.

A container's first process is PID 1 of its PID namespace, and the kernel delivers no signal to PID 1
that it has no handler for. msrun handles SIGINT only (it then SIGKILLs its workers' process groups and
its scheduler), so as PID 1 it ignores the SIGTERM the kubelet sends on pod deletion, and every
deletion (gang restart, suspend, deadline, job deletion) waits the whole grace period before SIGKILL;
the next attempt cannot start before the pod names are free. msrun also starts each worker in a session
of its own (``setsid``), so workers outlive an msrun that dies without cleaning up.

This launcher runs the command it is given (msrun and its arguments) as a child and:

* turns SIGTERM into SIGINT for msrun, forwards SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 as they
  are, and exits ``128 + 15`` after a SIGTERM whatever msrun returns (msrun exits 0 after SIGINT,
  which must not read as a finished training);
* SIGKILLs msrun when it has not ended ``STOP_TIMEOUT`` seconds after the signal (or at a second
  SIGTERM);
* is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``; PID 1 is one anyway), so processes msrun
  leaves behind become its children; once msrun has ended it stops them (SIGTERM, then SIGKILL after
  ``STOP_TIMEOUT``) and reaps every zombie, then exits with msrun's status (``128 + n`` for a signal).

It works the same as PID 1 of a container and as an ordinary process (the tests run it both ways),
needs no init binary in the image, and passes msrun's output through untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

import psutil

#: Seconds msrun (and then what it leaves behind) gets to end after a signal before SIGKILL; the
#: environment variable MNV2_LAUNCH_STOP_TIMEOUT changes it (keep it below the pod's grace period).
STOP_TIMEOUT = 10.0
#: How often the launcher checks its children while it waits.
POLL_SECONDS = 0.1
FORWARDED = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_PR_SET_CHILD_SUBREAPER = 36


def _log(message: str) -> None:
    print(f"mnv2_trainer.launch: {message}", file=sys.stderr, flush=True)


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux only); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: ``128 + n`` for death by signal n."""
    return 128 - returncode if returncode < 0 else returncode


class Launcher:
    """Runs one command and relays signals to it; see the module docstring."""

    def __init__(self, command: Sequence[str], stop_timeout: float = STOP_TIMEOUT):
        self.command = list(command)
        self.stop_timeout = stop_timeout
        self.child: subprocess.Popen[bytes] | None = None
        self.terminated = False  # a SIGTERM arrived: exit 143
        self.kill_at: float | None = None  # when to SIGKILL msrun if it has not ended

    # ---- signals ---------------------------------------------------------------------------------

    def _send(self, sig: int) -> None:
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, sig)

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.terminated:
            _log("second SIGTERM: killing msrun")
            self._send(signal.SIGKILL)
            return
        self.terminated = True
        self.kill_at = time.monotonic() + self.stop_timeout
        _log(f"SIGTERM: stopping {self.command[0]} with SIGINT (SIGKILL after {self.stop_timeout:g} s)")
        self._send(signal.SIGINT)

    def on_forwarded(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.kill_at is None:
            self.kill_at = time.monotonic() + self.stop_timeout
        self._send(signum)

    def install_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        for sig in FORWARDED:
            signal.signal(sig, self.on_forwarded)

    # ---- children --------------------------------------------------------------------------------

    @staticmethod
    def reap() -> list[tuple[int, int]]:
        """Collect every child that has ended: ``(pid, wait status)`` each."""
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return ended
            except OSError as err:  # pragma: no cover - EINTR is retried by Python itself
                if err.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return ended
            ended.append((pid, status))

    def wait_child(self) -> int:
        """Wait for the command to end (reaping any other process on the way); its return code."""
        assert self.child is not None
        while True:
            for pid, status in self.reap():
                if pid == self.child.pid:
                    code = os.waitstatus_to_exitcode(status)
                    self.child.returncode = code
                    return code
            if self.kill_at is not None and time.monotonic() > self.kill_at:
                _log(f"{self.command[0]} still runs {self.stop_timeout:g} s after the signal: SIGKILL")
                self._send(signal.SIGKILL)
                self.kill_at = None
            time.sleep(POLL_SECONDS)

    def stop_leftovers(self) -> None:
        """SIGTERM, then SIGKILL, every remaining descendant (msrun's setsid'd workers and theirs)."""
        me = psutil.Process()
        deadline = time.monotonic() + self.stop_timeout
        told: set[int] = set()
        while True:
            self.reap()
            try:
                left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
            except psutil.Error:
                left = []
            if not left:
                self.reap()
                return
            late = time.monotonic() > deadline
            new = [p for p in left if p.pid not in told]
            if new and not late:
                _log(f"stopping {len(new)} process(es) left behind: {', '.join(str(p.pid) for p in new)}")
            for proc in left:
                if late or proc.pid not in told:
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(signal.SIGKILL if late else signal.SIGTERM)
                    told.add(proc.pid)
            time.sleep(POLL_SECONDS)

    def run(self) -> int:
        """Start the command, relay signals until it ends, clean up; the launcher's exit status."""
        become_subreaper()
        self.install_handlers()
        try:
            self.child = subprocess.Popen(self.command)
        except OSError as err:
            _log(f"cannot start {self.command[0]!r}: {err.strerror or err}")
            return 127 if isinstance(err, FileNotFoundError) else 126
        if self.terminated:  # SIGTERM came while the command was starting
            self._send(signal.SIGINT)
        code = self.wait_child()
        self.stop_leftovers()
        if self.terminated:
            return 128 + signal.SIGTERM
        return exit_status(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m mnv2_trainer.launch COMMAND [ARG...]   (e.g. msrun --worker_num=8 ... train.py)"
        )
        print(__doc__.split("\n\n")[1])
        return 0 if args else 2
    raw = os.environ.get("MNV2_LAUNCH_STOP_TIMEOUT", "").strip()
    try:
        stop_timeout = float(raw) if raw else STOP_TIMEOUT
    except ValueError:
        _log(f"MNV2_LAUNCH_STOP_TIMEOUT={raw!r} is not a number of seconds; using {STOP_TIMEOUT:g}")
        stop_timeout = STOP_TIMEOUT
    return Launcher(args, stop_timeout).run()


if __name__ == "__main__":
    sys.exit(main())
