"""`mnv2 demo`: the whole system on one machine, as a user would drive it.

It starts the embedded cluster (the sandbox, with the process kubelet that runs pods as local
processes), installs the CRD, starts the operator as a child process (`mnv2 operator --standalone`
with the sandbox's kubeconfig), applies the example job with the real kubectl, follows the job's
status with a one-line progress bar, then prints what `kubectl get mnv2` shows, where the checkpoints
are, and a PNG of the curves. Exit status 0 only when the job Succeeded.

Stopping: Ctrl-C at any point stops the operator first (so it does not restart the pods being
killed), then the sandbox, which kills every pod's process tree. The operator runs in its own
process group for that reason: the terminal's SIGINT reaches only this process, which then stops
the others in order.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from mnv2_operator import show

# The repository root when running from a checkout (`make demo`); the example lives there.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXAMPLE = Path("manifests") / "examples" / "digits-cpu.yaml"

POLL_SECONDS = 2.0
OPERATOR_READY_TIMEOUT = 90.0
OPERATOR_STOP_TIMEOUT = 15.0


class DemoError(Exception):
    """Something the demo cannot go on without; the message says what and where to look."""


@dataclass(frozen=True)
class JobRef:
    """Which job a manifest creates."""

    name: str
    namespace: str


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


def find_example(filename: str | None, cwd: Path | None = None) -> Path:
    """The manifest to apply: the given file, else the digits CPU example (from the cwd or the checkout).

    Raises:
        DemoError: the file does not exist.
    """
    if filename:
        path = Path(filename)
        if not path.is_file():
            raise DemoError(f"-f {filename}: no such file")
        return path.resolve()
    for base in (cwd or Path.cwd(), REPO_ROOT):
        if (base / DEFAULT_EXAMPLE).is_file():
            return (base / DEFAULT_EXAMPLE).resolve()
    raise DemoError(
        f"cannot find {DEFAULT_EXAMPLE}: run `mnv2 demo` from the repository, or pass -f <job.yaml>"
    )


def job_ref(documents: list[Any], source: str = "manifest") -> JobRef:
    """The (single) MobileNetV2TrainingJob among a manifest's YAML documents.

    Raises:
        DemoError: no job, more than one, or a job without a name.
    """
    jobs = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == show.KIND]
    if len(jobs) != 1:
        raise DemoError(f"{source}: expected exactly one {show.KIND}, found {len(jobs)}")
    meta = jobs[0].get("metadata") or {}
    if not meta.get("name"):
        raise DemoError(f"{source}: metadata.name is missing (the demo follows the job by name)")
    return JobRef(name=str(meta["name"]), namespace=str(meta.get("namespace") or "default"))


def is_finished(job: Mapping[str, Any]) -> bool:
    return ((job.get("status") or {}).get("phase")) in show.FINISHED_PHASES


def prepare_state_dir(state_dir: Path) -> list[Path]:
    """Make `state_dir` ready for a fresh run; the folders removed from a previous run.

    A previous demo's output volume still holds its checkpoints, and the job resumes from the
    newest checkpoint it finds (`resume: auto`): a second demo would "finish" at once. So the
    sandbox's volumes and pod folders are removed; nothing else is touched.

    Raises:
        DemoError: the folder is not a sandbox state folder, or a sandbox still runs from it.
    """
    if not state_dir.exists():
        return []
    kubeconfig = state_dir / "kubeconfig"
    if not kubeconfig.is_file():
        if any(state_dir.iterdir()):
            raise DemoError(
                f"--state-dir {state_dir} is not empty and holds no sandbox kubeconfig; "
                "choose an empty or new folder (the demo deletes its volumes when it starts)"
            )
        return []
    server = _kubeconfig_server(kubeconfig)
    if server and _answers(server):
        raise DemoError(
            f"a sandbox started from {state_dir} still answers at {server} (another `mnv2 demo --keep`?): "
            "stop it with Ctrl-C, or pass another --state-dir"
        )
    removed = []
    for sub in ("volumes", "pods"):
        if (state_dir / sub).exists():
            shutil.rmtree(state_dir / sub)
            removed.append(state_dir / sub)
    return removed


def _kubeconfig_server(path: Path) -> str | None:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return str(config["clusters"][0]["cluster"]["server"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def _answers(server: str) -> bool:
    try:
        with urllib.request.urlopen(server.rstrip("/") + "/version", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if with an error
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# The operator as a child process
# --------------------------------------------------------------------------------------------------


@dataclass
class OperatorProcess:
    """`mnv2 operator` running against the sandbox; its output goes to `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path
    health_url: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = OPERATOR_READY_TIMEOUT) -> None:
        """Wait until kopf's liveness endpoint answers (it does once the operator is running).

        Raises:
            DemoError: the operator exited or did not come up in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise DemoError(
                    f"the operator exited with code {self.process.returncode}; its log ({self.log_path}):\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise DemoError(f"the operator did not become ready in {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = OPERATOR_STOP_TIMEOUT) -> None:
        """SIGINT (kopf's graceful stop), then SIGTERM, then SIGKILL; only this process group."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                # start_new_session made the operator the leader of its own group: pgid == pid.
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start_operator(kubeconfig: str | os.PathLike[str], namespace: str, log_path: Path) -> OperatorProcess:
    """Start `mnv2 operator --standalone -n <namespace>` with KUBECONFIG pointing at the sandbox."""
    port = free_port()
    health_url = f"http://127.0.0.1:{port}/healthz"
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mnv2_operator.cli",
                "operator",
                "--standalone",
                "--namespace",
                namespace,
                "--liveness",
                health_url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only the demo, which stops this in order
        )
    return OperatorProcess(process=process, log_path=log_path, health_url=health_url)


# --------------------------------------------------------------------------------------------------
# Sandbox + CRD + operator, for the demo and the end-to-end tests
# --------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running sandbox with the CRD installed and the operator watching one namespace."""

    sandbox: Any
    operator: OperatorProcess
    api_client: Any
    state_dir: Path

    @property
    def kubeconfig(self) -> str:
        return str(self.sandbox.kubeconfig_path)

    def kubectl(self, *args: str) -> str:
        """Run the real kubectl against the sandbox; its stdout. Raises DemoError on failure."""
        result = self.sandbox.kubectl(*args)
        return _kubectl_stdout(result, args)

    def get_job(self, ref: JobRef) -> dict[str, Any]:
        return show.get_job(self.api_client, ref.name, ref.namespace)


def _kubectl_stdout(result: Any, args: tuple[str, ...]) -> str:
    """The sandbox's kubectl returns a CompletedProcess or a string; either way, text or an error."""
    if isinstance(result, subprocess.CompletedProcess):
        out = result.stdout.decode() if isinstance(result.stdout, bytes) else (result.stdout or "")
        if result.returncode != 0:
            err = result.stderr.decode() if isinstance(result.stderr, bytes) else (result.stderr or "")
            raise DemoError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {err.strip() or out.strip()}"
            )
        return out
    return str(result)


def install_crd(sandbox: Any, state_dir: Path, api_client: Any, timeout: float = 30.0) -> None:
    """Apply the CRD generated from the spec models with kubectl; wait until its resource is served."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from mnv2_operator import crd

    path = state_dir / "crd.yaml"
    path.write_text(crd.crd_yaml(), encoding="utf-8")
    _kubectl_stdout(sandbox.kubectl("apply", "-f", str(path)), ("apply", "-f", str(path)))
    api = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.list_cluster_custom_object(show.GROUP, show.VERSION, show.PLURAL, limit=1)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise DemoError(
                    f"the CRD was applied but {show.PLURAL} is not served: HTTP {exc.status}"
                ) from exc
        time.sleep(0.3)


@contextlib.contextmanager
def running_cluster(
    state_dir: Path, namespace: str = "default", log: TextIO = sys.stdout
) -> Iterator[Cluster]:
    """Sandbox (process kubelet) + CRD + operator; everything stopped on exit, operator first.

    Cleanup ignores further Ctrl-C: every step has its own timeout, and an interrupted cleanup is
    exactly what leaves orphan processes behind.
    """
    from mnv2_operator.sandbox import Sandbox

    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.callback(
            _restore_signals, {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        )
        sandbox = Sandbox(state_dir, kubelet="process")
        # Registered before start(): a Ctrl-C during start-up must still stop what did start.
        stack.callback(_kill_leftovers, Path(sandbox.kubeconfig_path), log)
        stack.callback(_quietly, "stopping the sandbox (and every pod's processes)", sandbox.stop, log)
        print(f"starting the sandbox in {state_dir} ...", file=log, flush=True)
        sandbox.start()
        api_client = sandbox.api_client()
        install_crd(sandbox, state_dir, api_client)
        print(
            f"CRD installed; starting the operator (log: {state_dir / 'operator.log'}) ...",
            file=log,
            flush=True,
        )
        operator = start_operator(sandbox.kubeconfig_path, namespace, state_dir / "operator.log")
        stack.callback(_quietly, "stopping the operator", operator.stop, log)
        operator.wait_ready()
        yield Cluster(sandbox=sandbox, operator=operator, api_client=api_client, state_dir=state_dir)


def sandbox_processes(kubeconfig: Path) -> list[int]:
    """Live processes started for this sandbox's pods: their environment names its kubeconfig.

    The process kubelet gives every pod `KUBECONFIG=<state_dir>/kubeconfig`, and children inherit it,
    also those that left the pod's process group (msrun starts its workers with setsid). Linux only
    (/proc); elsewhere none are found.
    """
    needle = f"KUBECONFIG={kubeconfig}".encode()
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def _kill_leftovers(kubeconfig: Path, log: TextIO) -> None:
    """After the sandbox stopped: SIGKILL pod processes that escaped it (a real node's container
    runtime ends every process of a container; the sandbox only ends the pod's process group)."""
    leftovers = sandbox_processes(kubeconfig)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        print(f"killed {len(leftovers)} leftover pod process(es): {leftovers}", file=log, flush=True)


def _quietly(what: str, stop: Callable[[], None], log: TextIO) -> None:
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(what + " ...", file=log, flush=True)
    stop()


def _restore_signals(handlers: dict[signal.Signals, Any]) -> None:
    for sig, handler in handlers.items():
        with contextlib.suppress(TypeError, ValueError):  # ValueError: not the main thread
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------------------------------
# Following the job
# --------------------------------------------------------------------------------------------------


def follow_job(
    get_job: Callable[[], dict[str, Any]],
    operator_alive: Callable[[], bool] = lambda: True,
    out: TextIO = sys.stdout,
    poll: float = POLL_SECONDS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll the job until it Succeeded or Failed, drawing a progress line; the last job object.

    On a terminal the line is redrawn in place; elsewhere (CI logs) a line is printed only when it
    changes. Phase changes and restarts are printed on lines of their own.

    Raises:
        DemoError: the operator died, or `timeout` seconds passed.
    """
    tty = out.isatty()
    start = time.monotonic()
    last_phase: object = object()  # differs from every phase: the first state is printed
    last_restarts, last_line, width = 0, "", 0
    while True:
        job = get_job()
        status = job.get("status") or {}
        phase, restarts = status.get("phase"), status.get("restarts") or 0
        elapsed = time.monotonic() - start
        if phase != last_phase or restarts != last_restarts:
            note = f"phase {phase or 'Pending'}" + (f" (restarts: {restarts})" if restarts else "")
            if status.get("message"):
                note += f": {status['message']}"
            _emit(out, tty, note, width, newline=True)
            width = 0
            last_phase, last_restarts = phase, restarts
        line = show.format_progress_line(job, elapsed=elapsed if tty else None)
        if tty:
            _emit(out, tty, line, width, newline=False)
            width = len(line)
        elif line != last_line:
            _emit(out, tty, line, 0, newline=True)
        last_line = line
        if is_finished(job):
            if tty:
                out.write("\n")
                out.flush()
            return job
        if not operator_alive():
            raise DemoError("the operator stopped while the job was running")
        if timeout is not None and elapsed > timeout:
            raise DemoError(f"the job did not finish within {timeout:.0f}s")
        time.sleep(poll)


def _emit(out: TextIO, tty: bool, text: str, previous_width: int, newline: bool) -> None:
    if tty:
        # Redraw in place: return, text, blanks over what the previous (longer) line left.
        out.write("\r" + text + " " * max(0, previous_width - len(text)) + ("\n" if newline else ""))
    else:
        out.write(text + "\n")
    out.flush()


def locate_metrics(job: Mapping[str, Any], state_dir: Path, name: str) -> Path | None:
    """The job's metrics.jsonl on this machine: next to its checkpoints, else found under the state dir."""
    path = show.metrics_path_from_status(job)
    if path is not None and path.is_file():
        return path
    candidates = sorted(
        (p for p in state_dir.rglob("metrics.jsonl") if name in str(p)), key=lambda p: p.stat().st_mtime
    )
    return candidates[-1] if candidates else None


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """`mnv2 demo [--keep] [--state-dir DIR] [-f job.yaml]`; 0 when the job Succeeded, 130 on Ctrl-C."""
    try:
        manifest = find_example(args.filename)
        ref = job_ref(list(yaml.safe_load_all(manifest.read_text(encoding="utf-8"))), str(manifest))
    except (DemoError, yaml.YAMLError) as exc:
        print(f"mnv2 demo: {exc}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir).resolve()
    try:
        for folder in prepare_state_dir(state_dir):
            print(f"removed the previous run's {folder}", file=out)
    except DemoError as exc:
        print(f"mnv2 demo: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    succeeded: bool | None = None  # None until the job finished
    # SIGTERM (`timeout`, `kill`, a closing terminal) takes the same orderly path as Ctrl-C.
    previous_handlers = _signals_as_interrupt()
    try:
        with running_cluster(state_dir, ref.namespace, log=out) as cluster:
            print(f"$ kubectl apply -f {manifest}", file=out)
            print(cluster.kubectl("apply", "-f", str(manifest)).rstrip(), file=out, flush=True)
            job = follow_job(lambda: cluster.get_job(ref), cluster.operator.alive, out=out)
            succeeded = job["status"]["phase"] == "Succeeded"
            report(cluster, ref, job, out, time.monotonic() - started)
            if args.keep:
                keep_running(cluster, ref, out)
    except KeyboardInterrupt:
        if succeeded is not None:  # --keep: Ctrl-C is how the user ends a finished demo
            print("\nstopped", file=out, flush=True)
            return 0 if succeeded else 1
        print("\ninterrupted: everything stopped", file=out, flush=True)
        return 130
    except (DemoError, show.ShowError) as exc:
        print(f"mnv2 demo: {exc}", file=sys.stderr)
        return 1
    finally:
        _restore_handlers(previous_handlers)
    return 0 if succeeded else 1


def _signals_as_interrupt() -> dict[int, Any]:
    """Ctrl-C and SIGTERM both take the KeyboardInterrupt path that stops everything cleanly.

    SIGINT is installed explicitly too: a process started in the background by a non-interactive
    shell (CI runners, `cmd &`) inherits SIGINT as ignored, and Python then never raises
    KeyboardInterrupt, so the demo would train on after Ctrl-C.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, interrupt)
        except ValueError:  # not the main thread (e.g. called from a test's thread): leave it
            break
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def report(cluster: Cluster, ref: JobRef, job: Mapping[str, Any], out: TextIO, elapsed: float) -> None:
    """The end of the demo: kubectl's view, checkpoints, curves, and logs when it failed."""
    status = job.get("status") or {}
    print(f"\n$ kubectl get mnv2 -n {ref.namespace}", file=out)
    print(cluster.kubectl("get", "mnv2", "-n", ref.namespace).rstrip(), file=out)
    checkpoints = status.get("checkpoints") or {}
    print("", file=out)
    if checkpoints:
        print(f"checkpoints: latest {checkpoints.get('latest') or '-'}", file=out)
        print(f"             best   {checkpoints.get('best') or '-'}", file=out)
    metrics_file = locate_metrics(job, cluster.state_dir, ref.name)
    if metrics_file is not None:
        print(f"metrics:     {metrics_file}", file=out)
        try:
            png = show.plot_curves(
                show.curves(show.read_metrics(metrics_file)),
                cluster.state_dir / f"{ref.name}-curves.png",
                title=f"{ref.namespace}/{ref.name}",
            )
            print(f"curves:      {png}", file=out)
        except show.ShowError as exc:
            print(f"curves:      not plotted ({exc})", file=out)
    else:
        print("metrics:     no metrics.jsonl found (did the trainer run?)", file=out)
    if status.get("phase") != "Succeeded":
        print(f"\nthe job {status.get('phase')}: {status.get('message', '')}", file=out)
        with contextlib.suppress(DemoError):
            logs = cluster.kubectl("logs", f"{ref.name}-worker-0", "-n", ref.namespace, "--tail=30")
            print(f"last lines of {ref.name}-worker-0:\n{logs.rstrip()}", file=out)
        print(f"operator log: {cluster.operator.log_path}", file=out)
    print(f"\ndone in {show.fmt_duration(elapsed)}", file=out, flush=True)


def keep_running(cluster: Cluster, ref: JobRef, out: TextIO) -> None:
    """`--keep`: leave the sandbox and operator up until Ctrl-C, telling the user how to reach them."""
    kubectl = Path(sys.executable).with_name("kubectl")
    path_hint = f'export PATH="{kubectl.parent}:$PATH"\n  ' if kubectl.is_file() else ""
    print(
        "\nThe sandbox keeps running. In another terminal:\n"
        f"  {path_hint}export KUBECONFIG={cluster.kubeconfig}\n"
        f"  kubectl get mnv2 -n {ref.namespace}\n"
        f"  kubectl get pods -n {ref.namespace}\n"
        f"  mnv2 status {ref.name} -n {ref.namespace}\n"
        "Press Ctrl-C here to stop it.",
        file=out,
        flush=True,
    )
    while cluster.operator.alive():
        time.sleep(1)
    print(f"the operator exited; see {cluster.operator.log_path}", file=out)
