"""Shared helpers of the benchmarks: statistics, tables, machine description, alternating workers.

Timings on shared machines are noisy, so every benchmark runs each peer in its own long-lived worker
process and asks the workers *in turn* (the order rotates every round) to do the same amount of work.
Only one worker runs at a time; the others wait on their stdin. Medians over the rounds are reported.

Worker protocol (one JSON object per line): the worker builds its peer (imports, graph compile and
warm-up are excluded from the timings), prints ``{"ready": true, ...info}``, then answers each
``{"run": n}`` with ``{"seconds": wall, "cpu": process CPU seconds, ...}``. The worker's own stdout
is redirected to stderr so that library prints cannot corrupt the protocol.

Ratios are reported on two clocks: wall-clock and per CPU-second of the measured processes
(``Ratio``, ``round_ratios``). On a machine shared with other work the wall clock partly measures the
neighbours, so the per-CPU-second ratio is the headline; the spread (lowest and highest ratio of a
single round, in which the peers ran one after the other) says how far one run can be trusted.

Pure functions here (``median``, ``ratio``, ``round_ratios``, ``format_table``, ``rotate``) are
unit-tested without MindSpore or PyTorch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- pure helpers
def median(values: Iterable[float]) -> float:
    """Median of the values; NaN when there are none."""
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def ratio(ours: float, peer: float) -> float:
    """``ours / peer``; NaN when either is missing or the peer is zero."""
    if ours != ours or peer != peer or peer == 0:
        return float("nan")
    return ours / peer


@dataclass(frozen=True)
class Ratio:
    """``ours / peer`` over several rounds: the ratio of the medians, and the per-round spread."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    def __str__(self) -> str:
        if self.value != self.value:
            return "-"
        if self.low != self.low or self.high != self.high or fmt(self.low) == fmt(self.high):
            return fmt(self.value)
        return f"{fmt(self.value)} ({fmt(self.low)}-{fmt(self.high)})"


def round_ratios(ours: Sequence[float], peer: Sequence[float]) -> Ratio:
    """The ratio of the medians of ``ours`` and ``peer`` (one value per round, rounds in the same order),
    with the lowest and highest ratio of one round: the peers of a round ran back to back, so a
    round's ratio compares them under nearly the same load."""
    per_round = [ratio(a, b) for a, b in zip(ours, peer, strict=False)]
    per_round = [r for r in per_round if r == r]
    return Ratio(
        ratio(median(ours), median(peer)),
        min(per_round, default=float("nan")),
        max(per_round, default=float("nan")),
    )


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the values (NaN dropped) for a table cell; ``-`` when there are none."""
    vals = [v for v in values if v == v]
    if not vals:
        return "-"
    return fmt(min(vals)) if fmt(min(vals)) == fmt(max(vals)) else f"{fmt(min(vals))}-{fmt(max(vals))}"


def rotate(items: Sequence[Any], round_index: int) -> list[Any]:
    """The peers' order in round ``round_index``: rotated by one each round, so no peer is always first."""
    if not items:
        return []
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant digits, NaN as ``-``."""
    if isinstance(value, float):
        if value != value:
            return "-"
        if value == 0 or abs(value) >= 10 ** (digits - 1):
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def print_report(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], ratios: dict[str, Any], notes: Sequence[str] = ()
) -> None:
    """The end of every comparison: results table, ratio table, notes (errors...), load average.

    ``ratios`` maps a name to a value, or to a mapping of clock -> value (one column per clock, e.g.
    ``{"ours/mindcv": {"per CPU-s": Ratio(...), "wall": Ratio(...)}}``).
    """
    print(format_table(headers, rows))
    print()
    if ratios and all(isinstance(v, Mapping) for v in ratios.values()):
        cols = list(dict.fromkeys(c for v in ratios.values() for c in v))
        table = [[k, *(v.get(c, float("nan")) for c in cols)] for k, v in ratios.items()]
        print(format_table(["ratio", *cols], table))
    else:
        print(format_table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    if any(
        isinstance(v, Ratio) for r in ratios.values() for v in (r.values() if isinstance(r, Mapping) else [r])
    ):
        print("(ratio of the medians; in brackets the lowest and highest ratio of a single round)")
    for note in notes:
        print(note)
    print(f"\nload average at end: {load_average()}")


# --------------------------------------------------------------------------- the machine
def load_average() -> str:
    """``uptime``-style load averages, to print beside every result."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_header(title: str, packages: Sequence[str] = ()) -> str:
    """Lines describing when and where a benchmark ran."""
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{p} {package_version(p)}" for p in packages)
    return "\n".join(
        [
            f"# {title}",
            f"date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"machine: {cpu_model()}, {os.cpu_count()} cores, {mem_gb:.0f} GB, Python {platform.python_version()}",
            f"load average (1/5/15 min) at start: {load_average()}",
        ]
        + ([f"versions: {versions}"] if versions else [])
    )


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- worker side
def worker_loop(setup: Callable[[], tuple[Callable[[int], dict[str, Any]], dict[str, Any]]]) -> None:
    """Serve a parent's requests: ``setup()`` returns ``(run, info)``; ``run(n)`` does n units of work.

    ``run`` may return extra fields; wall and CPU seconds are measured here around it.
    """
    proto: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    run, info = setup()
    info = dict(info, setup_seconds=time.perf_counter() - t0, ready=True)
    proto.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if "run" not in req:
            break
        c0, w0 = cpu_seconds(), time.perf_counter()
        extra = run(int(req["run"]))
        out = {"seconds": time.perf_counter() - w0, "cpu": cpu_seconds() - c0, **(extra or {})}
        out["peak_rss_mb"] = peak_rss_mb()
        proto.write(json.dumps(out) + "\n")


# --------------------------------------------------------------------------- parent side
@dataclass
class Peer:
    """One contender: a name and the worker command line that serves it."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    error: str | None = None

    def start(self, log_dir: Path) -> None:
        log = open(log_dir / f"{self.name.replace('/', '_').replace(' ', '_')}.log", "w")  # noqa: SIM115
        env = dict(os.environ, **self.env)
        # msrun-style setups and our subprocesses expect the venv first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "benchmarks"), *filter(None, [env.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=REPO,
        )
        self._log_path = log.name

    def wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.error = f"worker exited with {self.proc.returncode} before ready; see {self._log_path}"
            return
        self.info = json.loads(line)

    def run(self, n: int) -> dict[str, Any] | None:
        if self.error or self.proc is None:
            return None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"run": n}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.error = f"worker died; see {self._log_path}"
            return None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.error = f"worker exited with {self.proc.returncode}; see {self._log_path}"
            return None
        result = json.loads(line)
        self.results.append(result)
        return result

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(30)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.proc.kill()
            self.proc.wait()


def alternate(
    peers: Sequence[Peer], rounds: int, work: int, log_dir: Path, progress: TextIO = sys.stderr
) -> None:
    """Start the peers one after another (setup alone, so compile times are not disturbed), then run
    ``rounds`` rounds in which every peer does ``work`` units, in rotating order."""
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for peer in peers:
            print(f"[setup] {peer.name} ...", file=progress, flush=True)
            peer.start(log_dir)
            peer.wait_ready()
            if peer.error:
                print(f"[setup] {peer.name} FAILED: {peer.error}", file=progress, flush=True)
            else:
                print(
                    f"[setup] {peer.name} ready in {peer.info.get('setup_seconds', 0):.1f}s",
                    file=progress,
                    flush=True,
                )
        for r in range(rounds):
            for peer in rotate(peers, r):
                res = peer.run(work)
                if res is not None:
                    print(
                        f"[round {r + 1}/{rounds}] {peer.name}: {res['seconds']:.2f}s wall, "
                        f"{res['cpu']:.2f}s cpu, load {load_average()}",
                        file=progress,
                        flush=True,
                    )
    finally:
        for peer in peers:
            peer.stop()


def default_log_dir(name: str) -> Path:
    return Path(os.environ.get("MNV2_BENCH_LOGS", "/tmp/mnv2-bench")) / name
