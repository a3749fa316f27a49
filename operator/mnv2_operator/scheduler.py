"""Per-job scheduling of reconciles: coalesce a job's events, one reconcile at a time per job.

Watch events only *kick* a job; the `Scheduler` runs the reconcile function for it as a task,
never twice at once for one job (a kick while it runs makes it run once more afterwards, however
many kicks came), and jobs run concurrently. Time-based wake-ups (a deadline, a TTL, a re-check)
are loop timers, the earliest kept; a failed run is retried with backoff (0.5 s doubling to 30 s).
An idle job costs a dictionary entry at most: no polling loop per job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import urllib3

from mnv2_operator.kube import ApiError

logger = logging.getLogger("mnv2_operator")

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
