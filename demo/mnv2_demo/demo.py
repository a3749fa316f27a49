"""`mnv2 demo`: the whole system on one machine, as a user would drive it, on real nodes.

It checks what the real nodes need first and names each missing piece with its fix (root; the Debian
packages, the control plane, node binaries and CoreDNS of `make cluster`; the trainer image of `make
images`). Then it starts the local control plane (etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, `mnv2_cluster.launcher.Cluster`) with the CRD on a node network of its own, and two real
nodes (`mnv2_cluster.realnode.RealNode`: the upstream kubelet and kube-proxy on containerd + runc, each in
network and mount namespaces of its own): `node-1`, a CPU node, and `ascend-1`, an Ascend node whose
device-plugin stand-in advertises 8 `huawei.com/Ascend910` and which is tainted NoSchedule as Ascend
nodes are. It imports the trainer image into `node-1` only (CPU pods cannot land on the tainted Ascend
node; the import runs in the background while the rest starts), starts CoreDNS, binds the
PersistentVolumeClaims the job names to hostPath volumes (folders of the state folder, which the nodes'
mount namespaces see), and starts the operator as a child process (`mnv2 operator --standalone`) with
the chart's RBAC: the chart's ClusterRole bound to the operator's client certificate, and the trainer
image as its default. It applies the example job with the real kubectl, follows the job's status with a
one-line progress bar, then prints what `kubectl get mnv2` shows, where the checkpoints are, a PNG of
the curves, and how long each phase took. Exit status 0 only when the job Succeeded.

Stopping: Ctrl-C at any point stops the operator first (so it does not restart the pods being
killed), then each node (its pods through the CRI, containerd, then whatever still runs in its
namespaces; its namespaces, mounts, routes and cgroups removed), then the control plane in order and the
node network's bridge. The operator runs in its own process group for that reason: the terminal's SIGINT
reaches only this process, which then stops the others in order.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from mnv2_operator import constants as C
from mnv2_operator import show

from mnv2_demo import plot

# The example job the demo applies when given none: the repository's manifests/examples/digits-cpu.yaml,
# which the package carries (a link in the checkout, a copy in the wheel).
DEFAULT_EXAMPLE = Path("manifests") / "examples" / "digits-cpu.yaml"
PACKAGED_EXAMPLE = "examples/digits-cpu.yaml"

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
    """The manifest to apply: the given file, else the digits CPU example (from the cwd, else the one
    this package carries).

    Raises:
        DemoError: the file does not exist.
    """
    if filename:
        path = Path(filename)
        if not path.is_file():
            raise DemoError(f"-f {filename}: no such file")
        return path.resolve()
    local = (cwd or Path.cwd()) / DEFAULT_EXAMPLE
    if local.is_file():
        return local.resolve()
    packaged = packaged_example()
    if packaged.is_file():
        return packaged
    raise DemoError(
        f"cannot find {DEFAULT_EXAMPLE} nor {packaged}: run `mnv2 demo` from the repository, "
        "or pass -f <job.yaml>"
    )


def packaged_example() -> Path:
    """The digits CPU example as installed with this package."""
    return Path(str(importlib.resources.files("mnv2_demo") / PACKAGED_EXAMPLE)).resolve()


def job_ref(documents: list[Any], source: str = "manifest") -> JobRef:
    """The (single) MobileNetV2TrainingJob among a manifest's YAML documents.

    Raises:
        DemoError: no job, more than one, or a job without a name.
    """
    jobs = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == C.KIND]
    if len(jobs) != 1:
        raise DemoError(f"{source}: expected exactly one {C.KIND}, found {len(jobs)}")
    meta = jobs[0].get("metadata") or {}
    if not meta.get("name"):
        raise DemoError(f"{source}: metadata.name is missing (the demo follows the job by name)")
    return JobRef(name=str(meta["name"]), namespace=str(meta.get("namespace") or "default"))


def is_finished(job: Mapping[str, Any]) -> bool:
    return ((job.get("status") or {}).get("phase")) in C.TERMINAL_PHASES


# What a previous run leaves in the state folder that a new run must not find: etcd's data (the
# finished job), the volumes (its checkpoints) and the node's pod folders.
PREVIOUS_RUN = ("etcd", "volumes", "nodes")


def prepare_state_dir(state_dir: Path) -> list[Path]:
    """Make `state_dir` ready for a fresh run; the folders removed from a previous run.

    A previous demo's job is still in etcd and its output volume still holds its checkpoints (the job
    resumes from the newest checkpoint it finds, `resume: auto`): a second demo would "finish" at
    once. So etcd's data, the volumes and the node's folders are removed; nothing else is touched.

    Raises:
        DemoError: the folder is not a demo state folder, or a cluster still runs from it.
    """
    if not state_dir.exists():
        return []
    kubeconfig = state_dir / "kubeconfig"
    if not kubeconfig.is_file():
        if any(state_dir.iterdir()):
            raise DemoError(
                f"--state-dir {state_dir} is not empty and holds no cluster kubeconfig; "
                "choose an empty or new folder (the demo deletes its volumes when it starts)"
            )
        return []
    server = _kubeconfig_server(kubeconfig)
    if server and _answers(server):
        raise DemoError(
            f"a cluster started from {state_dir} still answers at {server} (another `mnv2 demo --keep`?): "
            "stop it with Ctrl-C, or pass another --state-dir"
        )
    removed = []
    for sub in PREVIOUS_RUN:
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
    # The API server's certificate is signed by the cluster's own CA: whether it answers at all is
    # the question, not whom it proves to be.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(server.rstrip("/") + "/version", timeout=1, context=context):
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
    """`mnv2 operator` running against the local cluster; its output goes to `log_path`."""

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


def start_operator(
    kubeconfig: str | os.PathLike[str],
    namespace: str | None,
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> OperatorProcess:
    """Start `mnv2 operator --standalone [-n <namespace>]` (cluster-wide without a namespace) with
    KUBECONFIG pointing at the cluster (and `env` added to its environment)."""
    port = free_port()
    health_url = f"http://127.0.0.1:{port}/healthz"
    env = dict(os.environ, **(env or {}), KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mnv2_operator.cli",
                "operator",
                "--standalone",
                *(["--namespace", namespace] if namespace else []),
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
# Control plane + real nodes + DNS + CRD + operator, for the demo and the end-to-end tests
# --------------------------------------------------------------------------------------------------

CPU_NODE = "node-1"
ASCEND_NODE = "ascend-1"
ASCEND_DEVICES = 8
TRAINER_IMAGE = "mnv2-trainer"
# The operator's identity: a client certificate bound to the chart's ClusterRole (cluster-wide mode).
OPERATOR_USER = "mnv2-operator"
OPERATOR_ROLE = Path("manifests") / "rbac" / "20-clusterrole.yaml"
# The claims' hostPath folders are writable for any uid (the trainer runs as a non-root user in CPU
# pods, and a hostPath volume gets no fsGroup), as a local-path provisioner makes its folders.
VOLUME_MODE = 0o777


def claims_of(documents: list[Any]) -> list[tuple[str, str]]:
    """(namespace, claim name) of every PersistentVolumeClaim the manifest's jobs mount, in order."""
    claims: list[tuple[str, str]] = []
    for namespace, claim, _ in claim_mounts(documents):
        if (namespace, claim) not in claims:
            claims.append((namespace, claim))
    return claims


def claim_mounts(documents: list[Any]) -> list[tuple[str, str, str | None]]:
    """(namespace, claim name, subPath or None) of every claim mount of the manifest's jobs, in order."""
    mounts: list[tuple[str, str, str | None]] = []
    for doc in documents:
        if not isinstance(doc, Mapping) or doc.get("kind") != C.KIND:
            continue
        namespace = str((doc.get("metadata") or {}).get("namespace") or "default")
        spec = doc.get("spec") or {}
        for part in ("dataset", "output"):
            pvc = (spec.get(part) or {}).get("pvc") or {}
            if pvc.get("claimName"):
                sub_path = pvc.get("subPath")
                mount = (namespace, str(pvc["claimName"]), str(sub_path) if sub_path else None)
                if mount not in mounts:
                    mounts.append(mount)
    return mounts


def operator_role(cwd: Path | None = None) -> Path:
    """The chart's ClusterRole as the plain manifests carry it: from the cwd, else from the checkout
    this package runs from (the demo's trainer image is built from a checkout too).

    Raises:
        DemoError: neither exists.
    """
    for root in (cwd or Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / OPERATOR_ROLE).is_file():
            return (root / OPERATOR_ROLE).resolve()
    raise DemoError(f"cannot find {OPERATOR_ROLE}: run `mnv2 demo` from the repository")


def operator_binding(role_name: str, user: str = OPERATOR_USER) -> dict[str, Any]:
    """The ClusterRoleBinding of `role_name` to the operator's user."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{role_name}-demo"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def missing_pieces() -> list[str]:
    """What this machine lacks to run the demo's real nodes, each with its fix; empty when nothing."""
    from mnv2_cluster import build, coredns, host, imagebuild

    missing = []
    if os.geteuid() != 0:
        missing.append(
            "root: real nodes need network and mount namespaces, a bridge, routes and cgroups "
            "(run `sudo make demo`, or `mnv2 demo` as root)"
        )
    packages = host.missing_packages()
    if packages:
        missing.append(
            f"the Debian packages {' '.join(packages)}: `make cluster` installs them as root "
            "(python -m mnv2_cluster.host)"
        )
    try:
        build.binaries()
    except build.BuildError as exc:
        missing.append(f"the control plane and node binaries ({exc})")
    try:
        coredns.binary()
    except build.BuildError as exc:
        missing.append(f"CoreDNS ({exc})")
    try:
        archive = imagebuild.archive_path(TRAINER_IMAGE)
    except (OSError, imagebuild.ImageBuildError) as exc:
        missing.append(f"the trainer image: {exc}")
    else:
        if not archive.is_file():
            missing.append(
                f"the trainer image of this checkout ({archive}): build it with `make images` "
                "(python -m mnv2_cluster.imagebuild; ~12 min the first time, ~2 min after a code change)"
            )
    return missing


@dataclass
class Cluster:
    """The running control plane with its real nodes, cluster DNS, the CRD, and the operator."""

    control_plane: Any  # mnv2_cluster.launcher.Cluster
    nodes: dict[str, Any]  # name -> mnv2_cluster.realnode.RealNode
    operator: OperatorProcess
    api_client: Any
    state_dir: Path
    timings: dict[str, float]

    @property
    def kubeconfig(self) -> str:
        return str(self.control_plane.kubeconfig)

    def kubectl(self, *args: str) -> str:
        """Run the real kubectl against the cluster as its admin; its stdout. Raises DemoError on failure."""
        return _kubectl_stdout(self.control_plane.kubectl(*args, check=False, timeout=120), args)

    def apply(self, manifest: Path) -> str:
        """`kubectl apply -f manifest`, after making the claims its jobs mount (hostPath volumes, their
        subPath folders made too, writable by the trainer's user); kubectl's output."""
        documents = list(yaml.safe_load_all(manifest.read_text(encoding="utf-8")))
        for namespace, claim, sub_path in claim_mounts(documents):
            folder = self.control_plane.create_local_claim(namespace, claim)
            folder.chmod(VOLUME_MODE)
            if sub_path:
                (folder / sub_path).mkdir(parents=True, exist_ok=True)
                (folder / sub_path).chmod(VOLUME_MODE)
        return self.kubectl("apply", "-f", str(manifest))

    def get_job(self, ref: JobRef) -> dict[str, Any]:
        return show.get_job(self.api_client, ref.name, ref.namespace)

    def volume(self, claim: str) -> Path:
        """The folder of a claim made by `apply` (a hostPath volume the nodes mount)."""
        return self.control_plane.state_dir / "volumes" / "pvc" / claim

    def kill_pod(self, namespace: str, name: str) -> list[int]:
        """A node fault: SIGKILL every process of the pod's running containers on its node; the pids.

        Raises:
            DemoError: the pod has no running container.
        """
        from kubernetes import client
        from mnv2_cluster import realnode

        pod = client.CoreV1Api(self.api_client).read_namespaced_pod(name, namespace)
        ids = [
            s.container_id.split("://", 1)[1]
            for s in pod.status.container_statuses or []
            if s.container_id and s.state and s.state.running
        ]
        if not ids:
            raise DemoError(f"pod {namespace}/{name} has no running container to kill")
        return [pid for cid in ids for pid in realnode.kill_container(cid)]


def _kubectl_stdout(result: subprocess.CompletedProcess[str], args: tuple[str, ...]) -> str:
    if result.returncode != 0:
        raise DemoError(
            f"kubectl {' '.join(args)} failed ({result.returncode}): "
            f"{(result.stderr or '').strip() or (result.stdout or '').strip()}"
        )
    return result.stdout or ""


def wait_served(api_client: Any, timeout: float = 30.0) -> None:
    """Wait until the API server serves the jobs' resource (the CRD is Established)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.list_cluster_custom_object(C.GROUP, C.VERSION, C.PLURAL, limit=1)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise DemoError(
                    f"the CRD was created but {C.PLURAL} is not served: HTTP {exc.status}"
                ) from exc
        time.sleep(0.3)


class _Import(threading.Thread):
    """A node's image import in the background: the node's containerd unpacks while the rest starts."""

    def __init__(self, node: Any, archive: Path, ref: str) -> None:
        super().__init__(name=f"import {ref} into {node.name}", daemon=True)
        self.node, self.archive, self.ref = node, archive, ref
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.node.import_image(self.archive, self.ref)
        except BaseException as exc:  # reported by result()
            self.error = exc
        self.seconds = time.monotonic() - started

    def result(self) -> float:
        """Wait for the import; its seconds. Raises what the import raised."""
        while self.is_alive():
            self.join(0.5)  # short joins: Ctrl-C reaches the main thread meanwhile
        if self.error is not None:
            raise self.error
        return self.seconds


@contextlib.contextmanager
def running_cluster(state_dir: Path, log: TextIO = sys.stdout) -> Iterator[Cluster]:
    """Control plane + a CPU and an Ascend real node + CoreDNS + CRD + the trainer image + operator;
    everything stopped on exit, operator first.

    Cleanup ignores further Ctrl-C: every step has its own timeout, and an interrupted cleanup is
    exactly what leaves orphan processes, namespaces or mounts behind.

    Raises:
        DemoError: a piece is missing (root, host packages, binaries, CoreDNS, the trainer image: each
            named with its fix), or the control plane, a node or cluster DNS cannot start.
    """
    try:
        from mnv2_cluster import imagebuild
        from mnv2_cluster.launcher import Cluster as ControlPlane
        from mnv2_cluster.launcher import ClusterError
        from mnv2_cluster.realnode import NodeError, NodeNetwork, RealNode, start_cluster_dns
    except ImportError as exc:
        raise DemoError(f"the demo needs the demo extra (pip install 'mnv2-operator[demo]'): {exc}") from exc

    from mnv2_operator import crd

    missing = missing_pieces()
    if missing:
        raise DemoError("the demo's real nodes need:\n  - " + "\n  - ".join(missing))
    archive = imagebuild.archive_path(TRAINER_IMAGE)
    image = imagebuild.image_ref(TRAINER_IMAGE)
    role_file = operator_role()
    state_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def say(text: str) -> None:
        print(text, file=log, flush=True)

    with contextlib.ExitStack() as stack:
        stack.callback(
            _restore_signals, {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        )
        try:
            network = NodeNetwork.allocate()
        except NodeError as exc:
            raise DemoError(str(exc)) from exc
        # The CRD exists before the controller manager starts, so garbage collection knows its kind.
        control_plane = ControlPlane(state_dir, crds=[crd.crd_yaml()], network=network)
        # Registered before start(): a Ctrl-C during start-up must still stop what did start. The
        # control plane's stop also removes the node network (bridge, slot).
        stack.callback(_quietly, "stopping the control plane", control_plane.stop, log)
        say(f"starting the control plane in {state_dir} ...")
        started = time.monotonic()
        try:
            control_plane.start()
        except ClusterError as exc:
            raise DemoError(f"the control plane did not start: {exc}") from exc
        timings["control plane ready"] = time.monotonic() - started
        say(
            f"control plane ready in {timings['control plane ready']:.1f} s at {control_plane.server} "
            f"(logs: {control_plane.logs_dir})"
        )
        nodes: dict[str, Any] = {}
        try:
            started = time.monotonic()
            cpu = RealNode(control_plane, CPU_NODE, 1)
            stack.callback(
                _quietly, f"stopping node {CPU_NODE} (its pods, containerd, namespaces)", cpu.stop, log
            )
            nodes[CPU_NODE] = cpu.start()
            say(
                f"node {CPU_NODE} Ready in {cpu.timings['ready']:.1f} s: the kubelet on containerd, "
                f"{cpu.ip}, CPU"
            )
            # Only the CPU node gets the trainer image: the Ascend node is tainted NoSchedule
            # (huawei.com/Ascend910), so the CPU job's pods cannot land there.
            say(
                f"importing the trainer image {image} ({archive.stat().st_size / 2**30:.1f} GiB) into "
                f"{CPU_NODE} only ({ASCEND_NODE} is tainted NoSchedule for Ascend jobs; CPU pods do not "
                "land there) ..."
            )
            importing = _Import(cpu, archive, image)
            importing.start()
            ascend = RealNode(control_plane, ASCEND_NODE, 2, ascend_devices=ASCEND_DEVICES)
            stack.callback(_quietly, f"stopping node {ASCEND_NODE}", ascend.stop, log)
            nodes[ASCEND_NODE] = ascend.start()
            say(
                f"node {ASCEND_NODE} Ready in {ascend.timings['ready']:.1f} s: {ascend.ip}, "
                f"{ASCEND_DEVICES} huawei.com/Ascend910 from the device-plugin stand-in, tainted NoSchedule"
            )
            timings["nodes ready"] = time.monotonic() - started
            say(f"cluster DNS (CoreDNS) Ready in {start_cluster_dns(control_plane):.1f} s")
        except NodeError as exc:
            raise DemoError(str(exc)) from exc
        api_client = control_plane.api_client()
        wait_served(api_client)
        # The operator as the chart installs it: the chart's ClusterRole, bound to the operator's user.
        role = yaml.safe_load(role_file.read_text(encoding="utf-8"))
        control_plane.kubectl("apply", "-f", str(role_file))
        control_plane.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(operator_binding(role["metadata"]["name"]))
        )
        operator_kubeconfig = control_plane.kubeconfig_for_user(OPERATOR_USER)
        say(
            f"starting the operator (cluster-wide) as {OPERATOR_USER} with the chart's RBAC "
            f"(log: {state_dir / 'operator.log'}) ..."
        )
        operator = start_operator(
            operator_kubeconfig,
            None,  # cluster-wide, as the chart's default values run it (its ClusterRole is for that)
            state_dir / "operator.log",
            env={"MNV2_DEFAULT_TRAINER_IMAGE": image},
        )
        stack.callback(_quietly, "stopping the operator", operator.stop, log)
        operator.wait_ready()
        try:
            timings["image import"] = importing.result()
        except NodeError as exc:
            raise DemoError(str(exc)) from exc
        say(f"trainer image imported into {CPU_NODE} in {timings['image import']:.1f} s")
        yield Cluster(
            control_plane=control_plane,
            nodes=nodes,
            operator=operator,
            api_client=api_client,
            state_dir=state_dir,
            timings=timings,
        )


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
    path = plot.metrics_path_from_status(job)
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
        with running_cluster(state_dir, log=out) as cluster:
            for namespace, claim in claims_of(list(yaml.safe_load_all(manifest.read_text(encoding="utf-8")))):
                print(
                    f"PersistentVolumeClaim {namespace}/{claim}: a hostPath volume on {cluster.volume(claim)}",
                    file=out,
                )
            print(f"$ kubectl apply -f {manifest}", file=out)
            print(cluster.apply(manifest).rstrip(), file=out, flush=True)
            training = time.monotonic()
            job = follow_job(lambda: cluster.get_job(ref), cluster.operator.alive, out=out)
            cluster.timings["training"] = time.monotonic() - training
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
            png = plot.plot_curves(
                plot.curves(plot.read_metrics(metrics_file)),
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
    phases = ", ".join(f"{what} {seconds:.0f} s" for what, seconds in cluster.timings.items())
    print(f"\ndone in {show.fmt_duration(elapsed)} ({phases})", file=out, flush=True)


def keep_running(cluster: Cluster, ref: JobRef, out: TextIO) -> None:
    """`--keep`: leave the cluster and operator up until Ctrl-C, telling the user how to reach them."""
    kubectl = Path(sys.executable).with_name("kubectl")
    path_hint = f'export PATH="{kubectl.parent}:$PATH"\n  ' if kubectl.is_file() else ""
    print(
        "\nThe cluster keeps running. In another terminal:\n"
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
