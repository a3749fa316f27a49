"""The sandbox kubelet: runs pods as local processes ("process") or scripts their outcome ("simulated").

It lives in the API server's event loop and changes pod status through `ApiServer.update_pod_status`,
so watchers see the same events a real kubelet's status writes cause.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import random
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mnv2_operator.sandbox.server import ApiServer

POD_IP = "127.0.0.1"
UNSUPPORTED_CONTAINER = "SandboxUnsupported"
# Kubernetes' termination message: the default path, at most this much of the file, and with
# terminationMessagePolicy FallbackToLogsOnError (file empty, exit code not 0) the log's last lines.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodConfigError(Exception):
    """The pod cannot start (yet); `reason` goes to the container's waiting state."""

    def __init__(self, reason: str, message: str, retry: bool = False):
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    deleting: bool = False
    finished: bool = False
    outcome: asyncio.Future[tuple[int, str | None]] | None = None
    kill_handle: asyncio.TimerHandle | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion in command, args and env values; `$$(VAR)` escapes it."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None:  # $$(VAR) -> $(VAR)
            return m.group(0)[1:]
        return env.get(m.group(2), m.group(0))

    return re.sub(r"\$\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def path_rewriter(mounts: dict[str, str]) -> Callable[[str], str]:
    """Replace every mountPath prefix in a string by its local folder, in a single pass.

    `/data` matches in `/data`, `/data/x`, `--dir=/data`, but not in `/database` or `/x/data`.
    """
    if not mounts:
        return lambda s: s
    keys = sorted((m.rstrip("/") or "/" for m in mounts), key=len, reverse=True)
    local = {m.rstrip("/") or "/": v for m, v in mounts.items()}
    pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(k) for k in keys) + r")(?=/|$|[^\w.\-])")
    return lambda s: pattern.sub(lambda m: local[m.group(1)], s)


def port_rewriter(ports: dict[int, int]) -> Callable[[str], str]:
    """Replace declared container ports by the local ports the kubelet gave them.

    Sandbox pods share the host's network, so two pods declaring the same containerPort (every
    job's msrun master port) would collide. A port is replaced where a value names it: `--x_port=8118`,
    `host:8118`, or a whole value `8118`; other digits (`18118`, `8118.5`) are left alone.
    """
    if not ports:
        return lambda s: s
    numbers = "|".join(str(p) for p in sorted(ports, reverse=True))
    pattern = re.compile(r"(?:(?<=port=)|(?<=:)|^)(" + numbers + r")(?![\d.])")
    return lambda s: pattern.sub(lambda m: str(ports[int(m.group(1))]), s)


def free_local_port() -> int:
    """A port on 127.0.0.1 nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


POD_MARKER = "MNV2_SANDBOX_POD_UID"


def pod_pids(uid: str) -> list[int]:
    """Processes whose environment carries the pod's marker (they inherit it from the pod process)."""
    needle = f"{POD_MARKER}={uid}".encode()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return out


def signal_pod(run: PodRun, sig: int) -> None:
    """Signal the pod's process group and every other process of the pod (e.g. setsid'd workers)."""
    if run.proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, sig)
    for pid in pod_pids(run.uid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Kubelet:
    """Runs the sandbox's pods. See the package docstring for the two modes."""

    def __init__(self, mode: Literal["process", "simulated"], state_dir: Path, kubeconfig_path: Path):
        if mode not in ("process", "simulated"):
            raise ValueError(f"kubelet must be 'process' or 'simulated', not {mode!r}")
        self.mode = mode
        self.state_dir = state_dir
        self.kubeconfig_path = kubeconfig_path
        self.default_outcome: tuple[float, int] | None = None
        self.server: ApiServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runs: dict[tuple[str, str], PodRun] = {}

    # ---- thread-safe public API ------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        if self.loop is None:
            raise RuntimeError("the sandbox is not running: call Sandbox.start() first")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return fn()

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def finish(
        self, namespace: str, name: str, exit_code: int, reason: str | None = None, message: str | None = None
    ) -> None:
        """Simulated mode: end a pod now, Succeeded (exit 0) or Failed, with that exit code.

        `message` becomes the container's `state.terminated.message` (what a process would have
        written to its terminationMessagePath), cut to 4096 bytes as a kubelet does.

        Raises:
            LookupError: no such pod is running.
            RuntimeError: in process mode (end the real process instead, e.g. with kill()).
        """
        if self.mode != "simulated":
            raise RuntimeError(
                "Kubelet.finish() is for the simulated kubelet; in process mode use kill() or let the process exit"
            )

        def do() -> None:
            run = self._runs.get((namespace, name))
            if run is None or run.outcome is None:
                raise LookupError(f"no running pod {namespace}/{name} in the sandbox kubelet")
            if not run.outcome.done():
                if message:
                    run.extra["termination_message"] = _cut(message.encode(), MAX_TERMINATION_MESSAGE_BYTES)
                run.outcome.set_result((exit_code, reason))

        self._call(do)

    def kill(self, namespace: str, name: str) -> None:
        """Simulate a node fault: SIGKILL the pod's process group; the pod fails with exit code 137."""

        def do() -> None:
            run = self._runs.get((namespace, name))
            if run is None:
                raise LookupError(f"no running pod {namespace}/{name} in the sandbox kubelet")
            run.extra["killed"] = True
            if self.mode == "simulated":
                if run.outcome is not None and not run.outcome.done():
                    run.outcome.set_result((137, "Error"))
            elif run.proc is not None:
                signal_pod(run, signal.SIGKILL)

        self._call(do)

    def logs(self, namespace: str, name: str) -> str:
        """The pod's log (stdout and stderr of its process), '' if it has none yet."""
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else ""

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.state_dir / "pods" / namespace / name

    def log_path(self, namespace: str, name: str) -> Path:
        return self.pod_dir(namespace, name) / "log"

    @staticmethod
    def termination_message_file(pod_dir: Path) -> Path:
        """The local file that stands for the first container's terminationMessagePath."""
        return pod_dir / "termination-log"

    # ---- hooks called by the API server (in the loop) --------------------------------------------

    def pod_created(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = PodRun(meta["namespace"], meta["name"], meta["uid"])
        self._runs[(run.namespace, run.name)] = run
        if self.mode == "simulated":
            # Created now, not when the task first runs: finish() right after the create must work.
            run.outcome = asyncio.get_event_loop().create_future()
        target = self._run_simulated if self.mode == "simulated" else self._run_process
        run.task = asyncio.get_event_loop().create_task(self._guard(run, target(run, pod)))

    def pod_deleting(self, pod: dict[str, Any], grace: float) -> None:
        meta = pod["metadata"]
        run = self._runs.get((meta["namespace"], meta["name"]))
        loop = asyncio.get_event_loop()
        if run is None or run.uid != meta["uid"] or run.finished:
            loop.call_soon(self._release, meta["namespace"], meta["name"])
            return
        run.deleting = True
        if self.mode == "simulated":
            if run.outcome is not None and not run.outcome.done():
                run.outcome.set_result((0, "Deleted"))
            return
        if run.proc is not None and run.proc.returncode is None:
            if not run.extra.get("sigterm"):
                run.extra["sigterm"] = True
                self._event(run, "Killing", f"Stopping container (SIGTERM, SIGKILL after {grace:g} s)")
                signal_pod(run, signal.SIGTERM)
            if run.kill_handle is not None:
                run.kill_handle.cancel()
            run.kill_handle = loop.call_later(grace, self._sigkill, run)
        # If the process has not started yet, _run_process sees `deleting` and stops.

    def pod_removed(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = self._runs.get((meta["namespace"], meta["name"]))
        if run is not None and run.uid == meta["uid"]:
            run.deleting = True
            if run.outcome is not None and not run.outcome.done():
                run.outcome.set_result((0, "Deleted"))
            self._sigkill(run)
            self._runs.pop((meta["namespace"], meta["name"]), None)

    def _sigkill(self, run: PodRun) -> None:
        if run.proc is not None:
            signal_pod(run, signal.SIGKILL)

    def _release(self, namespace: str, name: str) -> None:
        if self.server is not None:
            self.server.release_pod(namespace, name)

    async def _guard(self, run: PodRun, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a kubelet bug must not kill the loop; show it on the pod instead
            self._set_waiting(run, "SandboxKubeletError", f"{type(e).__name__}: {e}")
        finally:
            run.finished = True
            if run.deleting:
                self._release(run.namespace, run.name)

    async def shutdown(self) -> None:
        """Kill every pod process and stop the pod tasks (the sandbox is stopping)."""
        for run in list(self._runs.values()):
            run.deleting = True
            self._sigkill(run)
            if run.outcome is not None and not run.outcome.done():
                run.outcome.set_result((137, "Error"))
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()

    # ---- status writes ---------------------------------------------------------------------------

    def _pod(self, run: PodRun) -> dict[str, Any] | None:
        assert self.server is not None
        pod = self.server.get(self.server.resources[("", "pods")], run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return None
        return pod

    def _update(self, run: PodRun, mutate: Callable[[dict[str, Any]], None]) -> None:
        if self.server is None or self._pod(run) is None:
            return
        self.server.update_pod_status(run.namespace, run.name, mutate)

    def _statuses(self, run: PodRun, pod: dict[str, Any], first: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(pod["spec"]["containers"]):
            base = {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "restartCount": 0,
                "started": False,
                "ready": False,
            }
            if i == 0:
                base["restartCount"] = run.extra.get("restarts", 0)
                if run.extra.get("last"):
                    base["lastState"] = run.extra["last"]
                base.update(first)
            else:
                base["state"] = {
                    "waiting": {
                        "reason": UNSUPPORTED_CONTAINER,
                        "message": "the sandbox kubelet runs only a pod's first container",
                    }
                }
            out.append(base)
        return out

    def _event(
        self, run: PodRun, reason: str, message: str, type_: str = "Normal", source: str = "kubelet"
    ) -> None:
        """Post a core/v1 Event about the pod, as a kubelet does (`kubectl describe pod` shows them)."""
        if self.server is None:
            return
        t = _now()
        event = {
            "metadata": {"name": f"{run.name}.{os.urandom(8).hex()}", "namespace": run.namespace},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": run.namespace,
                "name": run.name,
                "uid": run.uid,
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": source, "host": "sandbox"},
            "reportingComponent": source,
            "reportingInstance": "sandbox",
            "firstTimestamp": t,
            "lastTimestamp": t,
            "count": 1,
        }
        with contextlib.suppress(Exception):  # e.g. the namespace is being deleted
            self.server.create_object(self.server.resources[("", "events")], run.namespace, event)

    def _set_waiting(self, run: PodRun, reason: str, message: str) -> None:
        pod = self._pod(run)
        if pod is None:
            return

        def mutate(st: dict[str, Any]) -> None:
            st["containerStatuses"] = self._statuses(
                run, pod, {"state": {"waiting": {"reason": reason, "message": message}}}
            )

        self._update(run, mutate)

    def _set_running(
        self, run: PodRun, restarts: int, last: dict[str, Any] | None, container_id: str
    ) -> None:
        pod = self._pod(run)
        if pod is None:
            return
        t = _now()

        def mutate(st: dict[str, Any]) -> None:
            st["phase"] = "Running"
            st["podIP"], st["hostIP"] = POD_IP, POD_IP
            st["podIPs"], st["hostIPs"] = [{"ip": POD_IP}], [{"ip": POD_IP}]
            st.setdefault("startTime", t)
            ready = len(pod["spec"]["containers"]) == 1
            first: dict[str, Any] = {"state": {"running": {"startedAt": t}}, "ready": True, "started": True,
                                     "restartCount": restarts, "containerID": container_id}  # fmt: skip
            if last:
                first["lastState"] = last
            st["containerStatuses"] = self._statuses(run, pod, first)
            st["conditions"] = _conditions(ready=ready, t=t)

        self._update(run, mutate)

    def _set_terminated(self, run: PodRun, exit_code: int, reason: str | None, restarts: int, started: str | None,
                        container_id: str, message: str | None = None, final: bool = True) -> dict[str, Any]:  # fmt: skip
        pod = self._pod(run)
        term = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "startedAt": started or _now(), "finishedAt": _now(), "containerID": container_id}  # fmt: skip
        if message:
            term["message"] = message
        if pod is None or not final:
            return term
        t = _now()

        def mutate(st: dict[str, Any]) -> None:
            st["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            st.setdefault("startTime", started or t)
            st["containerStatuses"] = self._statuses(run, pod, {"state": {"terminated": term}, "ready": False, "started": False,
                                                           "restartCount": restarts, "containerID": container_id})  # fmt: skip
            st["conditions"] = _conditions(ready=False, t=t, reason="PodCompleted")

        self._update(run, mutate)
        return term

    # ---- simulated -------------------------------------------------------------------------------

    async def _run_simulated(self, run: PodRun, pod: dict[str, Any]) -> None:
        assert run.outcome is not None
        with contextlib.suppress(TimeoutError):
            # Pending for a moment, unless finish() comes first.
            await asyncio.wait_for(asyncio.shield(run.outcome), random.uniform(0.1, 0.5))
        if run.deleting:
            return
        started = _now()
        cid = f"sandbox://simulated-{run.uid[:8]}"
        self._set_running(run, 0, None, cid)
        log = self.log_path(run.namespace, run.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"simulated pod {run.namespace}/{run.name} started at {started}\n")
        outcome = self.default_outcome
        if outcome is not None:
            seconds, code = outcome
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.outcome), seconds)
            if not run.outcome.done():
                run.outcome.set_result((code, None))
        exit_code, reason = await run.outcome
        if run.deleting:
            return
        with log.open("a") as f:
            f.write(f"simulated pod ended with exit code {exit_code}\n")
        self._set_terminated(
            run, exit_code, reason, 0, started, cid, run.extra.pop("termination_message", None)
        )

    # ---- process ---------------------------------------------------------------------------------

    async def _run_process(self, run: PodRun, pod: dict[str, Any]) -> None:
        pod_dir = self.pod_dir(run.namespace, run.name)
        uid_file = pod_dir / ".uid"
        if pod_dir.exists() and (not uid_file.exists() or uid_file.read_text() != run.uid):
            shutil.rmtree(pod_dir, ignore_errors=True)  # a new pod of the same name starts clean
        pod_dir.mkdir(parents=True, exist_ok=True)
        uid_file.write_text(run.uid)
        log_path = self.log_path(run.namespace, run.name)
        log_path.touch()
        self._event(
            run,
            "Scheduled",
            f"Successfully assigned {run.namespace}/{run.name} to sandbox",
            source="default-scheduler",
        )
        self._set_waiting(run, "ContainerCreating", "")
        while True:
            if run.deleting:
                return
            pod = self._pod(run) or pod
            try:
                cmd, env, cwd = self.prepare(pod, pod_dir)
                break
            except PodConfigError as e:
                if run.extra.get("config_error") != e.message:  # report each new problem once
                    run.extra["config_error"] = e.message
                    self._set_waiting(run, e.reason, e.message)
                    self._event(run, "Failed", f"Error: {e.message}", "Warning")
                    with log_path.open("a") as f:
                        f.write(f"[sandbox kubelet] cannot start container: {e.reason}: {e.message}\n")
                if not e.retry:
                    return
                await asyncio.sleep(1.0)
        policy = pod["spec"].get("restartPolicy", "Always")
        restarts = 0
        last: dict[str, Any] | None = None
        term_file = self.termination_message_file(pod_dir)
        while not run.deleting:
            term_file.write_bytes(b"")  # each container instance starts with an empty file
            log_start = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as logf:
                try:
                    run.proc = await asyncio.create_subprocess_exec(
                        *cmd, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                except OSError as e:
                    logf.write(f"[sandbox kubelet] cannot run {cmd[0]!r}: {e}\n".encode())
                    self._set_terminated(run, 128, "StartError", restarts, None, "", str(e))
                    return
            started = _now()
            cid = f"sandbox://{run.proc.pid}"
            if run.extra.get("sigterm") or run.deleting:
                signal_pod(run, signal.SIGTERM)
            self._set_running(run, restarts, last, cid)
            self._event(
                run,
                "Started",
                f"Started container {pod['spec']['containers'][0]['name']} (pid {run.proc.pid})",
            )
            rc = await run.proc.wait()
            # When a container's main process ends, everything else in it ends too (msrun's
            # workers run in sessions of their own, so the process group is not enough).
            signal_pod(run, signal.SIGKILL)
            exit_code = rc if rc >= 0 else 128 - rc
            if run.deleting:
                return
            reason = None
            if run.extra.pop("killed", False):
                reason = "Error"
            message = termination_message(
                pod["spec"]["containers"][0], exit_code, term_file, log_path, log_start
            )
            restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
            if not restart:
                self._set_terminated(run, exit_code, reason, restarts, started, cid, message)
                return
            last = run.extra["last"] = {
                "terminated": self._set_terminated(
                    run, exit_code, reason, restarts, started, cid, message, final=False
                )
            }
            restarts += 1
            run.extra["restarts"] = restarts
            self._set_waiting(
                run,
                "CrashLoopBackOff" if exit_code else "Completed",
                f"back-off restarting container (restart {restarts})",
            )
            await asyncio.sleep(min(10.0, 0.5 * 2 ** (restarts - 1)))

    def prepare(self, pod: dict[str, Any], pod_dir: Path) -> tuple[list[str], dict[str, str], str]:
        """Resolve a pod's first container into (argv, env, cwd) on this machine.

        Raises:
            PodConfigError: a referenced ConfigMap/Secret/key is missing, a volume type or the
                container has no command; the message names what is missing.
        """
        assert self.server is not None
        spec = pod["spec"]
        meta = pod["metadata"]
        ns = meta["namespace"]
        c = spec["containers"][0]
        vol_dirs = self._volumes(pod, pod_dir)
        mounts: dict[str, str] = {}
        for m in c.get("volumeMounts") or []:
            base = vol_dirs.get(m.get("name", ""))
            if base is None:
                raise PodConfigError(
                    "CreateContainerConfigError",
                    f"volumeMounts {m.get('name')!r}: no volume of that name in spec.volumes",
                )
            local = base / m["subPath"] if m.get("subPath") else base
            # A missing subPath is created as a directory, as the kubelet does; in configMap/secret
            # volumes it names a file that is already there.
            if not local.exists():
                local.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"]] = str(local)
        # The termination-message file is mapped like a mount (a file of the pod's own), so that a
        # path to it in command/args/env (MNV2_TERMINATION_LOG) reaches the process as the local file.
        term_path = c.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        mounts.setdefault(term_path, str(self.termination_message_file(pod_dir)))
        rewrite_paths = path_rewriter(mounts)
        declared = {int(p["containerPort"]) for p in c.get("ports") or [] if p.get("containerPort")}
        rewrite_ports = port_rewriter({port: free_local_port() for port in declared})

        def rewrite(value: str) -> str:
            return rewrite_ports(rewrite_paths(value))

        env: dict[str, str] = dict(os.environ)
        pod_env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self._config_data("configmaps", ns, src["configMapRef"], None)
            elif "secretRef" in src:
                data = self._config_data("secrets", ns, src["secretRef"], None)
            else:
                continue
            for k, v in (data or {}).items():
                pod_env[prefix + k] = v
        for e in c.get("env") or []:
            value = self._env_value(pod, c, e)
            if value is not None:
                pod_env[e["name"]] = expand_vars(value, pod_env)
        env.update({k: rewrite(v) for k, v in pod_env.items()})
        env["KUBECONFIG"] = str(self.kubeconfig_path)
        env["HOSTNAME"] = spec.get("hostname") or meta["name"]
        # Marks every process of the pod, whatever session it moves to: the kubelet's "cgroup".
        env[POD_MARKER] = meta["uid"]
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.pop("KUBERNETES_SERVICE_HOST", None)  # not in a cluster: clients fall back to KUBECONFIG
        command = list(c.get("command") or [])
        if not command:
            raise PodConfigError(
                "CreateContainerError",
                f"container {c['name']!r} has no command: the sandbox runs no images, so the image's ENTRYPOINT is unknown; set spec.containers[0].command",
            )
        argv = [rewrite(expand_vars(str(a), pod_env)) for a in command + list(c.get("args") or [])]
        cwd = rewrite(c["workingDir"]) if c.get("workingDir") else str(pod_dir)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def _config_data(
        self, plural: str, ns: str, ref: dict[str, Any], key: str | None
    ) -> dict[str, str] | None:
        assert self.server is not None
        obj = self.server.get(self.server.resources[("", plural)], ns, ref.get("name", ""))
        kind = "configmap" if plural == "configmaps" else "secret"
        if obj is None:
            if ref.get("optional"):
                return None
            raise PodConfigError(
                "CreateContainerConfigError", f'{kind} "{ref.get("name")}" not found', retry=True
            )
        data = dict(obj.get("data") or {})
        if plural == "secrets":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        if key is not None and key not in data:
            if ref.get("optional"):
                return None
            raise PodConfigError(
                "CreateContainerConfigError",
                f"couldn't find key {key} in {kind} {ns}/{ref.get('name')}",
                retry=True,
            )
        return data

    def _env_value(self, pod: dict[str, Any], c: dict[str, Any], e: dict[str, Any]) -> str | None:
        if "value" in e:
            return str(e["value"])
        vf = e.get("valueFrom") or {}
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in vf:
            return field_ref(pod, vf["fieldRef"].get("fieldPath", ""))
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            data = self._config_data("configmaps", ns, ref, ref.get("key"))
            return None if data is None else data[ref["key"]]
        if "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            data = self._config_data("secrets", ns, ref, ref.get("key"))
            return None if data is None else data[ref["key"]]
        if "resourceFieldRef" in vf:
            res = vf["resourceFieldRef"].get("resource", "")
            kind, _, name = res.partition(".")
            value = ((c.get("resources") or {}).get(kind) or {}).get(name)
            if value is None:
                value = str(os.cpu_count() or 1) if name == "cpu" else "0"
            return str(value)
        return ""

    def _volumes(self, pod: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        for v in pod["spec"].get("volumes") or []:
            name = v.get("name", "")
            if "configMap" in v or "secret" in v:
                plural = "configmaps" if "configMap" in v else "secrets"
                src = v.get("configMap") or v.get("secret") or {}
                ref = {"name": src.get("name") or src.get("secretName"), "optional": src.get("optional")}
                data = self._config_data(plural, ns, ref, None) or {}
                d = pod_dir / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                for it in items:
                    if it["key"] not in data:
                        raise PodConfigError(
                            "CreateContainerConfigError",
                            f"volume {name!r}: key {it['key']!r} not found in {plural[:-1]} {ref['name']!r}",
                            retry=True,
                        )
                    target = d / it.get("path", it["key"])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[it["key"]])
                if plural == "configmaps":
                    cm = (
                        self.server.get(self.server.resources[("", "configmaps")], ns, str(ref["name"]))
                        if self.server
                        else None
                    )
                    for k, b in ((cm or {}).get("binaryData") or {}).items():
                        (d / k).write_bytes(base64.b64decode(b))
                out[name] = d
            elif "emptyDir" in v:
                out[name] = pod_dir / "volumes" / name
            elif "persistentVolumeClaim" in v:
                out[name] = self.state_dir / "volumes" / "pvc" / v["persistentVolumeClaim"]["claimName"]
            elif "hostPath" in v:
                out[name] = self.state_dir / "volumes" / "hostpath" / v["hostPath"]["path"].lstrip("/")
            elif "projected" in v:
                # configMap, secret and downwardAPI sources as the plain volumes; serviceAccountToken
                # sources stay empty: the sandbox issues no tokens, its pods reach the API through the
                # KUBECONFIG it sets (and without KUBERNETES_SERVICE_HOST, clients never read a token).
                d = pod_dir / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                for source in v["projected"].get("sources") or []:
                    for kind, plural in (("configMap", "configmaps"), ("secret", "secrets")):
                        if kind not in source:
                            continue
                        src = source[kind]
                        ref = {"name": src.get("name"), "optional": src.get("optional")}
                        data = self._config_data(plural, ns, ref, None) or {}
                        for it in src.get("items") or [{"key": k, "path": k} for k in data]:
                            if it["key"] in data:
                                (d / it.get("path", it["key"])).write_text(data[it["key"]])
                            elif not src.get("optional"):
                                raise PodConfigError(
                                    "CreateContainerConfigError",
                                    f"volume {name!r}: key {it['key']!r} not found in {kind} {ref['name']!r}",
                                    retry=True,
                                )
                    for it in (source.get("downwardAPI") or {}).get("items") or []:
                        if "fieldRef" in it:
                            (d / it["path"]).write_text(field_ref(pod, it["fieldRef"].get("fieldPath", "")))
                out[name] = d
            elif "downwardAPI" in v:
                d = pod_dir / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
                for it in v["downwardAPI"].get("items") or []:
                    if "fieldRef" in it:
                        (d / it["path"]).write_text(field_ref(pod, it["fieldRef"].get("fieldPath", "")))
                out[name] = d
            else:
                kinds = [k for k in v if k != "name"]
                raise PodConfigError(
                    "CreateContainerConfigError",
                    f"volume {name!r}: type {kinds} is not supported by the sandbox kubelet (configMap, secret, emptyDir, persistentVolumeClaim, hostPath, downwardAPI, projected are)",
                )
            out[name].mkdir(parents=True, exist_ok=True)
        return out


def _cut(data: bytes, limit: int, tail: bool = False) -> str:
    """At most `limit` bytes of `data` (its start, or its end with `tail`), as text."""
    part = data[-limit:] if tail else data[:limit]
    return part.decode("utf-8", errors="replace")


def termination_message(
    container: dict[str, Any], exit_code: int, message_file: Path, log_path: Path, log_start: int = 0
) -> str | None:
    """A finished container's `state.terminated.message`, as a kubelet makes it.

    The termination-message file's content (at most 4096 bytes); if that is empty, the container
    failed and its terminationMessagePolicy is FallbackToLogsOnError, the end of its log (of this
    container instance: from `log_start` on): the last 80 lines, at most 2048 bytes.
    """
    try:
        data = message_file.read_bytes()[:MAX_TERMINATION_MESSAGE_BYTES]
    except OSError:
        data = b""
    if data:
        return _cut(data, MAX_TERMINATION_MESSAGE_BYTES)
    if exit_code == 0 or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return None
    try:
        with log_path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(log_start, size - 64 * 1024)  # more than 80 lines of 2048 bytes need
            f.seek(start)
            log = f.read()
    except OSError:
        return None
    lines = log.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    text = _cut(b"".join(lines), FALLBACK_LOG_BYTES, tail=True)
    return text or None


def field_ref(pod: dict[str, Any], path: str) -> str:
    """Downward API fieldRef values."""
    meta = pod["metadata"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIPs": POD_IP,
    }
    return str(simple.get(path) or "")


def _conditions(ready: bool, t: str, reason: str | None = None) -> list[dict[str, Any]]:
    def cond(type_: str, ok: bool) -> dict[str, Any]:
        c = {
            "type": type_,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": t,
        }
        if not ok and reason:
            c["reason"] = reason
        return c

    return [
        cond("PodReadyToStartContainers", True),
        cond("Initialized", True),
        cond("Ready", ready),
        cond("ContainersReady", ready),
        cond("PodScheduled", True),
    ]
