"""Real nodes: the upstream kubelet on containerd + runc, CNI networking and kube-proxy, one network
namespace per node, on one machine.

    network = NodeNetwork.allocate()                  # a free slot: bridge, node and pod subnets
    with Cluster(state_dir, network=network) as cluster:   # the API server on the bridge address
        nodes = [RealNode(cluster, f"node-{i}", i).start() for i in (1, 2)]
        ...
        for node in reversed(nodes):
            node.stop()

The network (slot N, 0-63, held by a lock file while the cluster runs):

- a host bridge `mnv2br<N>` with `10.127.<N>.1/24`, the address the API server binds and advertises
  (the `kubernetes` Service's endpoint, so `kubernetes.default` reaches it from pods);
- node i: a network namespace `mnv2-<N>-<node>` with `eth0` (a veth to the bridge) at
  `10.127.<N>.<10+i>`, and the pod subnet `10.<128+N>.<i>.0/24` on its own `cni0` bridge (the CNI
  bridge plugin with host-local IPAM); every other node's namespace and the host route that subnet
  via the node's address, so pods reach each other across nodes and the API server answers them;
- no default route in a node's namespace and no forwarding on the host: nothing leaves the machine.

A node's processes (containerd, the kubelet, kube-proxy) run in its network namespace and in a mount
namespace of its own (slave of the host's), where the node's folder is bind-mounted on
`/var/lib/kubelet` (the device-plugin socket folder is fixed at `/var/lib/kubelet/device-plugins`).
Each has its own containerd (root, state, socket), CNI configuration, IPAM data, cgroup root,
pod logs folder. `stop()` goes kube-proxy, kubelet, then every pod sandbox stopped and removed through
the CRI (`kubenode clean-runtime`: the containers get SIGTERM, the CNI releases their addresses),
containerd, then whatever still runs in the node's mount namespace is killed, and the mount
namespace, the network namespace, the routes and the cgroups are removed: no mounts, namespaces,
iptables rules or processes are left behind. Then the node's state (containerd's root: images and
snapshots; the kubelet's folder: pods' volumes) is removed unless `stop(keep_state=True)`; the
logs stay. `import_image()` drops an image's layer blobs once containerd has unpacked them: a node
keeps an image's snapshots only.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from mnv2_cluster import build, host, images
from mnv2_cluster.launcher import Component, _terminate

RUN_ROOT = Path("/run/mnv2-nodes")  # short paths: unix sockets, mount-namespace files, slot locks
SLOTS = 64
CLUSTER_DNS = "10.96.0.10"
KUBELET_PORT = 10250
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Fixed paths every kubelet / CNI plugin on the machine would share -> the node's own folder for them.
PRIVATE_PATHS = {
    "/var/lib/kubelet": "kubelet",
    "/var/log/containers": "container-logs",
    "/var/lib/cni": "cni/cache",
}
# The host-wide sysctls the kubelet sets to its liking at start (kernel.panic=10, panic_on_oops=1, ...).
# In the node's mount namespace a file with the value it wants covers each, so it finds them set and
# leaves the machine's own alone (several nodes share one kernel, and the machine is not only theirs).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
STOP_GRACE = {"kube-proxy": 5.0, "kubelet": 10.0, "containerd": 10.0}
# What `stop()` removes of a node's folder: containerd's root (content store, snapshots, metadata) and
# the kubelet's folder (pods' volumes). The logs, the pod logs and the configurations stay.
NODE_STATE = ("containerd", PRIVATE_PATHS["/var/lib/kubelet"])
# `ctr images import` prints this line for each image it imported and unpacked.
UNPACKED_LINE = re.compile(r"^unpacking (\S+) \((sha256:[0-9a-f]{64})\)\.\.\.done$", re.MULTILINE)


class NodeError(RuntimeError):
    """A real node could not start; the message names the missing piece and the exact error."""


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = (
        _run("ip", "-4", "-o", "addr", "show").stdout
        + _run("ip", "-4", "route", "show", "table", "all").stdout
    )
    nets = []
    for word in out.split():
        with contextlib.suppress(ValueError):
            if "/" in word:
                nets.append(ipaddress.ip_network(word, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network) and not n.is_loopback]


@dataclass
class NodeNetwork:
    """Slot `slot` of this machine's node networks: a bridge, its subnet, the pod network."""

    slot: int
    _lock: IO[bytes] | None = field(default=None, repr=False)
    nodes: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (netns, ip, pod cidr)

    @classmethod
    def allocate(cls) -> NodeNetwork:
        """The first slot no other cluster of this machine holds whose subnets the machine does not use.

        Raises:
            NodeError: not root (namespaces, bridges and routes need it), or every slot is taken.
        """
        if os.geteuid() != 0:
            raise NodeError("real nodes need root (network and mount namespaces, a bridge, routes, cgroups)")
        missing = host.missing_packages()
        if missing:
            raise NodeError(
                f"real nodes need the Debian packages {' '.join(missing)}: `make cluster` installs them "
                "as root (python -m mnv2_cluster.host)"
            )
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        used = _used_networks()
        for slot in range(SLOTS):
            network = cls(slot)
            in_use = any(n.overlaps(m) for n in used for m in (network.node_subnet, network.pod_network))
            if in_use and not (RUN_ROOT / f"slot-{slot}.lock").exists():
                continue  # somebody else's addresses (with a lock file, maybe what a killed run left)
            if not network._acquire():
                continue
            # A slot whose lock is free is nobody's: what a killed run left of it goes now.
            network._remove_leftovers()
            if any(
                n.overlaps(network.node_subnet) or n.overlaps(network.pod_network) for n in _used_networks()
            ):
                network.release()
                continue
            return network
        raise NodeError(
            f"all {SLOTS} node network slots are taken or their subnets are in use (see `ip route`)"
        )

    @property
    def bridge(self) -> str:
        return f"mnv2br{self.slot}"

    @property
    def node_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.127.{self.slot}.0/24")

    @property
    def gateway(self) -> str:
        """The host's address on the bridge: where the API server listens for the nodes."""
        return f"10.127.{self.slot}.1"

    @property
    def pod_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{128 + self.slot}.0.0/16")

    def node_ip(self, index: int) -> str:
        return f"10.127.{self.slot}.{10 + index}"

    def pod_subnet(self, index: int) -> str:
        return f"10.{128 + self.slot}.{index}.0/24"

    def netns(self, name: str) -> str:
        return f"mnv2-{self.slot}-{name}"

    def _acquire(self) -> bool:
        if self._lock is None:
            lock = (RUN_ROOT / f"slot-{self.slot}.lock").open("ab")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                return False
            self._lock = lock
        return True

    def up(self) -> None:
        """The bridge with the gateway address (idempotent); holds the slot until `down()`."""
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        if not self._acquire():
            raise NodeError(f"node network slot {self.slot} is held by another cluster on this machine")
        if _run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "replace", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def down(self) -> None:
        """Remove the bridge (its routes go with it) and release the slot."""
        self._remove_leftovers()
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remove_leftovers(self) -> None:
        prefix = f"mnv2-{self.slot}-"
        for ns in _run("ip", "netns", "list", check=False).stdout.split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(prefix):
                _kill_namespace_processes(Path(f"/run/netns/{name}"), "net")
                _run("ip", "netns", "del", name, check=False)
        folder = RUN_ROOT / str(self.slot)
        for mnt in folder.glob("*/mnt") if folder.exists() else []:
            _kill_namespace_processes(mnt, "mnt")
            _run("umount", str(mnt), check=False)
        shutil.rmtree(folder, ignore_errors=True)
        for path in CGROUP_ROOT.glob(f"*/mnv2-{self.slot}-*"):
            _remove_cgroup(path)
        _run("ip", "link", "del", self.bridge, check=False)

    # ---- node membership: routes between the nodes' pod subnets ----------------------------------

    def join(self, name: str, index: int) -> None:
        netns, ip, cidr = self.netns(name), self.node_ip(index), self.pod_subnet(index)
        for other_ns, other_ip, other_cidr in self.nodes.values():
            _run("ip", "-n", netns, "route", "replace", other_cidr, "via", other_ip)
            _run("ip", "-n", other_ns, "route", "replace", cidr, "via", ip)
        _run("ip", "route", "replace", cidr, "via", ip, "dev", self.bridge)
        self.nodes[name] = (netns, ip, cidr)

    def leave(self, name: str) -> None:
        netns, ip, cidr = self.nodes.pop(name, (None, None, None))
        if cidr is None:
            return
        for other_ns, _, _ in self.nodes.values():
            _run("ip", "-n", other_ns, "route", "del", cidr, check=False)
        _run("ip", "route", "del", cidr, check=False)


def unpacked_images(ctr_output: str) -> dict[str, str]:
    """The images `ctr images import` says it unpacked: `{name: digest of its index or manifest}`."""
    return {m[1]: m[2] for m in UNPACKED_LINE.finditer(ctr_output)}


def mounts_under(mountinfo: str, folder: Path) -> list[str]:
    """The mount points at or under `folder` in a /proc/<pid>/mountinfo text, deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Spaces, tabs, newlines and backslashes are octal escapes (\040 ...) in mountinfo.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        if point == str(folder) or point.startswith(f"{folder}/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _namespace_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _namespace_pids(path: Path, kind: str) -> list[int]:
    """Processes whose `kind` namespace (mnt, net) is the one bound at `path`."""
    inode = _namespace_inode(path)
    if inode is None:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / kind).st_ino == inode:
                    pids.append(int(entry.name))
    return pids


def _kill_namespace_processes(path: Path, kind: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process in the namespace at `path` and wait for them; the pids."""
    pids = _namespace_pids(path, kind)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _namespace_pids(path, kind) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _remove_cgroup(path: Path) -> None:
    """rmdir a cgroup v1 folder and its children, deepest first (their processes must be gone)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def container_cgroup(container_id: str) -> Path | None:
    """The `pids` cgroup of a container of a real node's pod (the kubelet's cgroupfs layout under the
    node's cgroup root: `<root>/kubepods[/<qos>]/pod<uid>/<container id>`), or None when it is gone."""
    for path in (CGROUP_ROOT / "pids").glob(f"mnv2-*/kubepods/**/{container_id}"):
        if path.is_dir():
            return path
    return None


def container_pids(container_id: str) -> list[int]:
    """The processes of a container of a real node's pod (its init and everything it started, also
    what left its process group or session), from its cgroup; empty once the container is gone."""
    cgroup = container_cgroup(container_id)
    if cgroup is None:
        return []
    try:
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:  # removed meanwhile
        return []


def kill_container(container_id: str, timeout: float = 10.0) -> list[int]:
    """A node fault: SIGKILL every process of a container of a real node's pod, until its cgroup is
    empty (a process may fork while the others die); the pids killed. The container then exits with
    code 137, as after the kernel's OOM killer or a crashed process, and the kubelet reports it.

    Raises:
        NodeError: no such container's cgroup on this machine, or processes left after `timeout`.
    """
    if container_cgroup(container_id) is None:
        raise NodeError(f"no cgroup of container {container_id} under {CGROUP_ROOT / 'pids'}/mnv2-*")
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while pids := container_pids(container_id):
        if time.monotonic() > deadline:
            raise NodeError(f"processes {pids} of container {container_id} still alive after {timeout:.0f} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.05)
    return killed


def _make_cgroup(name: str) -> None:
    """`/<name>` in every cgroup v1 hierarchy (the kubelet's cgroupRoot must exist)."""
    for hierarchy in CGROUP_ROOT.iterdir():
        if not (hierarchy / "tasks").exists():
            continue
        target = hierarchy / name
        target.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for key in ("cpuset.cpus", "cpuset.mems"):
                (target / key).write_text((hierarchy / key).read_text())


def _ensure_private_run_root() -> None:
    """RUN_ROOT as a private mount: a mount-namespace file can only be bound on one."""
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    if not any(line.split()[4] == str(RUN_ROOT) for line in mountinfo):
        _run("mount", "--bind", str(RUN_ROOT), str(RUN_ROOT))
    _run("mount", "--make-private", str(RUN_ROOT))


def _coredns_binary() -> Path | None:
    """CoreDNS's binary where `make cluster` built it (or MNV2_COREDNS_BIN names it), else None."""
    from mnv2_cluster import coredns

    with contextlib.suppress(Exception):
        path = coredns.binary()
        if os.access(path, os.X_OK):
            return path
    return None


def start_cluster_dns(cluster: Any, timeout: float = 120.0) -> float:
    """Cluster DNS on the cluster's real nodes: CoreDNS's kube-system objects (`mnv2_cluster.coredns`)
    applied, waited for until its pod is Ready (`RealNode.start()` imports its image on every node);
    the seconds that took.

    Raises:
        NodeError: CoreDNS is not built, or its pod is not Ready in time (with its status).
    """
    from mnv2_cluster import coredns

    if _coredns_binary() is None:
        raise NodeError("cluster DNS needs CoreDNS built: `make cluster` (python -m mnv2_cluster.coredns)")
    started = time.monotonic()
    text = yaml.safe_dump_all(coredns.manifests())
    cluster.kubectl("apply", "--server-side", "-f", "-", input=text)
    # Until its pod is Ready (the Deployment's Available condition holds at once: maxUnavailable 1).
    proc = cluster.kubectl(
        "-n", "kube-system", "rollout", "status", "deployment/coredns", f"--timeout={int(timeout)}s",
        check=False, timeout=timeout + 10,
    )  # fmt: skip
    if proc.returncode != 0:
        pods = cluster.kubectl("-n", "kube-system", "describe", "pods", "-l", "k8s-app=kube-dns", check=False)
        raise NodeError(
            f"CoreDNS is not Ready after {timeout:.0f} s: {proc.stderr.strip()}\n{pods.stdout[-3000:]}"
        )
    return time.monotonic() - started


class RealNode:
    """One Node: containerd, the kubelet and kube-proxy in a network and mount namespace of its own.

    `index` (1-250) places it in the cluster's network (its address and pod subnet).
    """

    mode = "real"

    def __init__(
        self,
        cluster: Any,
        name: str,
        index: int,
        *,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        ascend_devices: int = 0,
        start_timeout: float = 120.0,
    ):
        if cluster.network is None:
            raise NodeError("a real node needs a cluster started with a NodeNetwork (Cluster(network=...))")
        self.cluster = cluster
        self.network: NodeNetwork = cluster.network
        self.name, self.index = name, index
        self.start_timeout = start_timeout
        self.state_dir = cluster.state_dir / "nodes" / name
        self.run_dir = RUN_ROOT / str(self.network.slot) / name
        self.logs_dir = self.state_dir / "logs"
        self.netns = self.network.netns(name)
        self.ip = self.network.node_ip(index)
        self.pod_subnet = self.network.pod_subnet(index)
        self.cgroup_root = f"mnv2-{self.network.slot}-{name}"
        self.labels = dict(labels or {})
        self.taints = list(taints or [])
        # An Ascend node: the device-plugin stand-in (mnv2_cluster.ascend) registers this many
        # huawei.com/Ascend910 with the kubelet; the node is labelled and tainted as MindCluster's are.
        self.ascend_devices = ascend_devices
        if ascend_devices:
            from mnv2_cluster import ascend

            self.labels.update(ascend.ASCEND_LABELS)
            self.taints.append({"key": ascend.ASCEND_RESOURCE, "value": "present", "effect": "NoSchedule"})
        self.components: dict[str, Component] = {}
        self.timings: dict[str, float] = {}
        self._kubenode = ""
        self._device_plugin: subprocess.Popen[bytes] | None = None
        self._driver_dir: Path | None = None
        self._import_lock = threading.Lock()

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def mount_ns(self) -> Path:
        return self.run_dir / "mnt"

    @property
    def device_plugin_dir(self) -> Path:
        """The host path of the node's `/var/lib/kubelet/device-plugins` (kubelet.sock and the plugins'
        sockets): a device plugin started on the host registers with this node's kubelet there."""
        return self.state_dir / PRIVATE_PATHS["/var/lib/kubelet"] / "device-plugins"

    def in_node(self, *cmd: str) -> list[str]:
        """`cmd` run in the node's mount and network namespaces (as its kubelet and containerd run)."""
        return ["nsenter", f"--mount={self.mount_ns}", f"--net=/run/netns/{self.netns}", "--", *cmd]

    _in_node = in_node

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RealNode:
        """Namespaces, containerd (images imported), kubelet, kube-proxy; returns once the Node is Ready."""
        started = time.monotonic()
        binaries = self._binaries()
        self._kubenode = str(binaries["kubenode"])
        try:
            self._make_namespaces()
            self._write_configs()
            self._start("containerd", ["containerd", "--config", str(self.state_dir / "containerd.toml")])
            self._wait("containerd", lambda: self.socket.exists(), "containerd's socket")
            self._import_images(binaries["pause"])
            self.timings["containerd"] = time.monotonic() - started
            self._start("kubelet", self._kubelet_args())
            self._start(
                "kube-proxy", [self._kubenode, "proxy", f"--config={self.state_dir / 'kube-proxy.yaml'}"]
            )
            self._wait("kubelet", self._ready, f"Node {self.name} Ready")
            if self.ascend_devices:
                self._start_device_plugin()
        except BaseException:
            self.stop()
            raise
        self.timings["ready"] = time.monotonic() - started
        return self

    def stop(self, keep_state: bool = False) -> None:
        """kube-proxy, kubelet, the pods through the CRI, containerd; then namespaces, routes, cgroups,
        and the node's state (`NODE_STATE`: images, snapshots, pods' volumes) unless `keep_state`; its
        logs stay.

        Raises:
            NodeError: a folder of the node's state is still mounted on the host, or cannot be removed
                (everything else is stopped and removed first).
        """
        started = time.monotonic()
        if self._device_plugin is not None:
            from mnv2_cluster import ascend

            ascend.stop_device_plugin(self._device_plugin)
            self._device_plugin = None
        for name in ("kube-proxy", "kubelet"):
            self._terminate(name)
            self.timings[f"stop {name}"] = time.monotonic() - started
        if self.socket.exists() and self._running("containerd"):
            proc = subprocess.run(
                self._in_node(
                    self._kubenode, "clean-runtime", f"--endpoint=unix://{self.socket}", "--grace=2s"
                ),
                capture_output=True,
                text=True,
                timeout=120,
            )
            with (self.logs_dir / "clean-runtime.log").open("a") as log:
                log.write(proc.stdout + proc.stderr)
            self.timings["stop pods"] = time.monotonic() - started
        self._terminate("containerd")
        self.timings["stop containerd"] = time.monotonic() - started
        self.components.clear()
        # The shims of containers the CRI could not remove, anything else started in the node.
        if self.mount_ns.exists():
            _kill_namespace_processes(self.mount_ns, "mnt")
        if Path(f"/run/netns/{self.netns}").exists():
            _kill_namespace_processes(Path(f"/run/netns/{self.netns}"), "net")
        self.network.leave(self.name)
        with contextlib.suppress(NodeError):
            _run("umount", str(self.mount_ns), check=False)
        _run("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for path in CGROUP_ROOT.glob(f"*/{self.cgroup_root}"):
            _remove_cgroup(path)
        if not keep_state:
            self._remove_state()
        self.timings["stop"] = time.monotonic() - started

    def _remove_state(self) -> None:
        """Remove `NODE_STATE` of the node's folder. Its processes and mount namespace are gone, so
        its containers' mounts are; a mount the host still has under it is unmounted first (never
        removed through)."""
        for name in NODE_STATE:
            folder = self.state_dir / name
            for point in mounts_under(Path("/proc/self/mountinfo").read_text(), folder):
                _run("umount", point, check=False)
            left = mounts_under(Path("/proc/self/mountinfo").read_text(), folder)
            if left:
                raise NodeError(
                    f"node {self.name}'s {folder} is left in place: still mounted at {', '.join(left)} "
                    "(`umount` them, then remove it)"
                )
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise NodeError(f"removing node {self.name}'s {folder} failed: {e}") from None

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _binaries(self, names: tuple[str, ...] = ("kubenode", "pause")) -> dict[str, Path]:
        """Node binaries from the cluster's binaries folder (its bin_dir, else the build's)."""
        folder = Path(self.cluster.bin_dir) if self.cluster.bin_dir else build.bin_dir()
        paths = {name: folder / name for name in names}
        missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
        if missing:
            raise NodeError(f"node binaries not found: {', '.join(missing)}: build them with `make cluster`")
        return paths

    def exited(self) -> list[str]:
        """The node's components that have exited since `start()` (what a launcher watches)."""
        return [n for n, c in self.components.items() if c.proc is not None and c.proc.poll() is not None]

    def _running(self, name: str) -> bool:
        c = self.components.get(name)
        return c is not None and c.proc is not None and c.proc.poll() is None

    def _terminate(self, name: str) -> None:
        c = self.components.get(name)
        if c is not None and c.proc is not None:
            _terminate(c.proc, STOP_GRACE[name])

    def _start(self, name: str, cmd: list[str]) -> None:
        component = Component(name, self._in_node(*cmd), self.logs_dir / f"{name}.log")
        self.components[name] = component
        component.start(self.state_dir)

    def _wait(self, name: str, probe: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not probe():
            for c in self.components.values():
                assert c.proc is not None
                if c.proc.poll() is not None:
                    raise NodeError(
                        f"{c.name} of node {self.name} exited with code {c.proc.returncode} while waiting for "
                        f"{what}; the end of {c.log}:\n{c.tail()}"
                    )
            if time.monotonic() > deadline:
                raise NodeError(
                    f"timed out after {self.start_timeout:.0f} s waiting for {what}; the end of "
                    f"{self.components[name].log}:\n{self.components[name].tail()}"
                )
            time.sleep(0.2)

    def _start_device_plugin(self) -> None:
        from mnv2_cluster import ascend

        binary = self._binaries(("ascend-device-plugin",))["ascend-device-plugin"]
        # The plugin binds its socket in that folder: a unix socket's path has at most 107 bytes, which
        # a state folder under pytest's temporary folders exceeds. A link under the short run folder
        # names the same folder.
        self.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        plugin_dir = self.run_dir / "device-plugins"
        plugin_dir.unlink(missing_ok=True)
        plugin_dir.symlink_to(self.device_plugin_dir)
        self._device_plugin = ascend.start_device_plugin(
            plugin_dir,
            self.state_dir / "dev",
            log=self.logs_dir / "ascend-device-plugin.log",
            count=self.ascend_devices,
            driver_dir=self._driver_dir,  # the folder at /usr/local/Ascend/driver in the node
            uid=ascend.HWHIAIUSER_UID,  # HwHiAiUser:HwHiAiUser 0660 (some drivers make them root's)
            binary=binary,
        )

        def advertised() -> bool:
            status, node = self.cluster._request("GET", f"/api/v1/nodes/{self.name}")
            allocatable = (node.get("status") or {}).get("allocatable") or {} if status == 200 else {}
            assert self._device_plugin is not None
            if self._device_plugin.poll() is not None:
                log = (self.logs_dir / "ascend-device-plugin.log").read_text(errors="replace")[-3000:]
                raise NodeError(f"the device plugin of node {self.name} exited: {log}")
            return allocatable.get(ascend.ASCEND_RESOURCE) == str(self.ascend_devices)

        self._wait("kubelet", advertised, f"{ascend.ASCEND_RESOURCE} in Node {self.name}'s allocatable")

    def _ready(self) -> bool:
        status, node = self.cluster._request("GET", f"/api/v1/nodes/{self.name}")
        if status != 200:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # ---- setup -----------------------------------------------------------------------------------

    def _make_namespaces(self) -> None:
        for folder in (self.logs_dir, self.state_dir / "pod-logs", self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # The network namespace, its veth to the host bridge, forwarding between eth0 and cni0.
        _run("ip", "netns", "add", self.netns)
        host_end = f"mnv2v{self.network.slot}n{self.index}"
        _run("ip", "link", "del", host_end, check=False)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _run("ip", "link", "set", host_end, "master", self.network.bridge, "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        _run("ip", "-n", self.netns, "link", "set", "eth0", "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        _run("ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.network.join(self.name, self.index)
        # The mount namespace: a slave of the host's, with the node's own folders on the fixed paths
        # the kubelet and the CNI use.
        _ensure_private_run_root()
        self.mount_ns.touch()
        binds = []
        for fixed, own in PRIVATE_PATHS.items():
            Path(fixed).mkdir(parents=True, exist_ok=True)
            (self.state_dir / own).mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind '{self.state_dir / own}' '{fixed}'")
        sysctls = self.state_dir / "sysctl"
        sysctls.mkdir(exist_ok=True)
        for key, value in KUBELET_SYSCTLS.items():
            (sysctls / key.replace("/", ".")).write_text(f"{value}\n")
            binds.append(f"mount --bind '{sysctls / key.replace('/', '.')}' '/proc/sys/{key}'")
        if self.ascend_devices:
            from mnv2_cluster import ascend

            # The driver folder and /etc/ascend_install.info where a real Ascend node has them.
            self._driver_dir, ascend_mounts = ascend.node_root_mounts(self.state_dir / "ascend")
            binds += ascend_mounts
        _run("unshare", f"--mount={self.mount_ns}", "--propagation", "slave", "sh", "-ec", " && ".join(binds))
        _make_cgroup(self.cgroup_root)

    def _write_configs(self) -> None:
        d = self.state_dir
        cni_conf = d / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-mnv2.conflist").write_text(json.dumps(self.cni_config(), indent=2))
        (d / "containerd.toml").write_text(self.containerd_config())
        cluster = self.cluster
        node_cert = cluster.node_serving_cert(self.name, [self.ip, self.name])
        self.kubeconfig = cluster.kubeconfig_for_node(self.name)
        (d / "kubelet.yaml").write_text(yaml.safe_dump(self.kubelet_config(node_cert), sort_keys=False))
        proxy_kubeconfig = cluster.kubeconfig_for_user("system:kube-proxy")
        (d / "kube-proxy.yaml").write_text(
            yaml.safe_dump(self.kube_proxy_config(proxy_kubeconfig), sort_keys=False)
        )

    def cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "mnv2",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Other nodes route this subnet to this node: pods keep their addresses across nodes.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state_dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def containerd_config(self) -> str:
        d = self.state_dir / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = "{d / "root"}"
state = "{self.run_dir / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.run_dir / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE, which this host may lack.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_cdi = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{self.run_dir / "runc"}"

[{cri}.cni]
  bin_dir = "{host.CNI_BIN_DIR}"
  conf_dir = "{self.state_dir / "cni" / "net.d"}"
  max_conf_num = 1
"""

    def kubelet_config(self, serving: Any) -> dict[str, Any]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This host's cgroups are v1 only.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(self.state_dir / "pod-logs"),
            "address": self.ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "failSwapOn": False,
            # Raising RLIMIT_NOFILE needs CAP_SYS_RESOURCE: keep the hard limit the kubelet has.
            "maxOpenFiles": hard if hard != resource.RLIM_INFINITY else 1_000_000,
            # Lowering its own oom_score_adj needs CAP_SYS_RESOURCE too.
            "oomScoreAdj": 0,
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "registerNode": True,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "nodeStatusUpdateFrequency": "10s",
            "fileCheckFrequency": "20s",
            "staticPodPath": "",
            "registerWithTaints": self.taints,
        }

    def kube_proxy_config(self, kubeconfig: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": str(self.network.pod_network),
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": ["primary"],
            # The conntrack table and its timeouts are the host's; leave them as they are.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }

    def _kubelet_args(self) -> list[str]:
        return [
            self._kubenode,
            "kubelet",
            f"--config={self.state_dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.kubeconfig}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            *(
                [f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(self.labels.items()))}"]
                if self.labels
                else []
            ),
        ]

    def _import_images(self, pause: Path) -> None:
        """The pause and busybox images (busybox under Docker Hub's name too), and CoreDNS's where it is
        built, into the node's containerd."""
        specs = [images.pause_image(pause), images.busybox_image(host.BUSYBOX)]
        coredns_binary = _coredns_binary()
        if coredns_binary is not None:
            from mnv2_cluster import coredns

            specs.append(coredns.image_spec(coredns_binary))
        archives = self.cluster.state_dir / "images"
        for spec in specs:
            archive = archives / (spec.name.rsplit("/", 1)[1].replace(":", "-") + ".tar")
            if not archive.exists():
                images.write_oci_archive(spec, archive)
            self.import_image(archive, spec.name)
        tag = self._ctr("images", "tag", "--force", images.BUSYBOX_IMAGE, images.BUSYBOX_HUB_IMAGE)
        if tag.returncode != 0:
            raise NodeError(
                f"naming {images.BUSYBOX_IMAGE} {images.BUSYBOX_HUB_IMAGE} in containerd of node {self.name} "
                f"failed (exit {tag.returncode}): {tag.stderr.strip()}"
            )

    def import_image(self, archive: Path, name: str = "", timeout: float = 900.0) -> None:
        """Import an OCI or Docker image archive into the node's containerd (the CRI's namespace), then
        drop the image's layer blobs from its content store: once unpacked, the snapshots are what the
        CRI runs containers from (as with the CRI's `discard_unpacked_layers` for pulls), so the image
        takes its unpacked size on disk rather than twice that. One import at a time per node.
        The trainer image (3.6 GB) takes ~105 s on a quiet machine, several minutes when busy.

        Raises:
            NodeError: ctr's exit code and error, or `timeout` seconds passed.
        """
        what = f"importing {name or archive} into containerd of node {self.name}"
        with self._import_lock:
            try:
                proc = self._ctr("images", "import", str(archive), timeout=timeout)
            except subprocess.TimeoutExpired:
                raise NodeError(f"{what} took over {timeout:.0f} s") from None
            if proc.returncode != 0:
                raise NodeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()}")
            unpacked = unpacked_images(proc.stdout)
            if not unpacked:
                raise NodeError(f"{what}: ctr imported no image from it; its output: {proc.stdout.strip()}")
            self.drop_layers(unpacked.values())

    def drop_layers(self, targets: Any) -> list[str]:
        """Remove the layer blobs of the unpacked images whose index or manifest digests are `targets`
        from the node's content store; the digests removed. containerd's garbage collector frees their
        files a moment later (the images' snapshots stay referenced by their configs).

        Raises:
            NodeError: a manifest cannot be read, or ctr cannot remove a layer.
        """
        layers: list[str] = []
        pending = list(targets)
        while pending:
            digest = pending.pop()
            proc = self._ctr("content", "get", digest)
            if proc.returncode != 0:
                if "not found" in proc.stderr:  # an index's manifest of another platform, not imported
                    continue
                raise NodeError(
                    f"reading {digest} from containerd of node {self.name} failed: {proc.stderr.strip()}"
                )
            try:
                manifests, found = images.manifest_children(json.loads(proc.stdout))
            except ValueError as e:
                raise NodeError(f"{digest} in containerd of node {self.name}: {e}") from None
            pending += manifests
            layers += [layer for layer in found if layer not in layers]
        if layers:
            proc = self._ctr("content", "rm", *layers)
            if proc.returncode != 0:
                raise NodeError(
                    f"removing the unpacked layers {', '.join(layers)} from containerd of node {self.name} "
                    f"failed (exit {proc.returncode}): {proc.stderr.strip()}"
                )
        return layers

    def _ctr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`ctr ARGS` on the node's containerd, in the CRI's namespace (output captured as text)."""
        cmd = self._in_node("ctr", f"--address={self.socket}", "-n", "k8s.io", *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    # ---- measurements ----------------------------------------------------------------------------

    def rss(self) -> dict[str, int]:
        """Resident memory of the node's processes in bytes: each component, and the shims together."""
        sizes: dict[str, int] = {}
        pids = {c.proc.pid: n for n, c in self.components.items() if c.proc is not None}
        for pid in _namespace_pids(self.mount_ns, "mnt"):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next(
                    int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
                )
                name = pids.get(pid) or (
                    "shims" if "containerd-shim" in status.split("\n", 1)[0] else "containers"
                )
                sizes[name] = sizes.get(name, 0) + rss
        return sizes


__all__ = ["NodeError", "NodeNetwork", "RealNode", "container_pids", "kill_container"]
