"""An Ascend node of the local cluster: the device-plugin stand-in (`cmd/ascend-device-plugin`) for a
node's kubelet, the node's labels, and a stand-in driver folder.

The stand-in registers `huawei.com/Ascend910` with the kubelet through the node's device-plugin folder
and answers Allocate as an Ascend node does (MindCluster's device plugin and Ascend Docker Runtime
together): `ASCEND_VISIBLE_DEVICES` with the allocated ids, `ASCEND_RUNTIME_OPTIONS`, the device nodes
`/dev/davinci<N>`, `/dev/davinci_manager`, `/dev/devmm_svm`, `/dev/hisi_hdc` (made by the plugin in
`device_dir` as root:HwHiAiUser 0660 character devices with /dev/null's numbers), and the driver folder
read-only at `/usr/local/Ascend/driver`. docs/ascend-device-plugin.md says which parts follow
ascend-device-plugin and which are simplified.

    plugin = start_device_plugin(node_dir / "device-plugins", node_dir / "dev", log=node_dir / "adp.log",
                                 driver_dir=make_driver_dir(node_dir / "driver"))
    ...
    stop_device_plugin(plugin)

A kubelet in a private mount namespace (its own /var/lib/kubelet) reaches the plugin when the plugin
runs in that namespace too: pass `prefix=["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--"]`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mnv2_cluster import build

# How MindCluster's installation labels an Atlas 800 (Ascend 910) training node, and its resource.
ASCEND_LABELS = {"accelerator": "huawei-Ascend910", "accelerator-type": "module"}
ASCEND_RESOURCE = "huawei.com/Ascend910"
# The kubelet's device-plugin folder (fixed in the kubelet): kubelet.sock and the plugins' sockets.
KUBELET_DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
# HwHiAiUser's GID, the group of the NPU device nodes (MindCluster's default; the same on every node).
HWHIAIUSER_GID = 1000
# HwHiAiUser's UID: the owner of the device nodes on nodes whose driver makes them HwHiAiUser's.
HWHIAIUSER_UID = 1000
DRIVER_CONTAINER_PATH = "/usr/local/Ascend/driver"
# Where a real Ascend node has the driver and the installer's info file (the operator's Ascend pods
# mount both from the node, hostPath).
DRIVER_NODE_PATH = "/usr/local/Ascend/driver"
INSTALL_INFO_NODE_PATH = "/etc/ascend_install.info"
# What the driver installer writes there (its run user and group, install folder, status).
INSTALL_INFO = """\
UserName=HwHiAiUser
UserGroup=HwHiAiUser
Driver_Install_Type=full
Driver_Install_Path_Param=/usr/local/Ascend
Driver_Install_For_All=no
Driver_Install_Mode=normal
Driver_Install_Status=complete
"""


def device_plugin_command(
    binary: Path,
    plugin_dir: Path,
    device_dir: Path,
    *,
    count: int = 8,
    driver_dir: Path | None = None,
    gid: int = HWHIAIUSER_GID,
    uid: int = 0,
    resource: str = ASCEND_RESOURCE,
) -> list[str]:
    """The stand-in's command line for one node (pure)."""
    cmd = [
        str(binary),
        f"--resource={resource}",
        f"--count={count}",
        f"--plugin-dir={plugin_dir}",
        f"--device-dir={device_dir}",
        f"--device-gid={gid}",
    ]
    if uid:
        cmd.append(f"--device-uid={uid}")
    if driver_dir is not None:
        cmd.append(f"--driver-dir={driver_dir}")
    return cmd


def make_driver_dir(path: Path, version: str = "stand-in") -> Path:
    """A folder standing in for the NPU driver's install folder: `version.info` (which CANN and
    npu-smi read on a real node) and an empty `lib64/`. Returns `path`."""
    (path / "lib64").mkdir(parents=True, exist_ok=True)
    (path / "version.info").write_text(f"Version={version}\n")
    return path


def node_root_mounts(folder: Path) -> tuple[Path, list[str]]:
    """The host paths of an Ascend node, made in `folder` for a node in a mount namespace of its own:
    the driver folder (`make_driver_dir`) and the installer's info file. Returns the driver folder
    (the device plugin's `--driver-dir`) and the shell commands that, run in the node's mount
    namespace, show them at `/usr/local/Ascend/driver` and `/etc/ascend_install.info` as on a real
    node. Neither path exists on the machine itself, and nothing is made there: an overlay on
    `/usr/local` and one on `/etc` (the machine's folders below, `folder`'s additions on top) give
    them a place, visible only in the node's namespace."""
    driver = make_driver_dir(folder / "driver")
    commands = []
    for lower, upper_file in (
        ("/usr/local", Path(DRIVER_NODE_PATH).relative_to("/usr/local")),
        ("/etc", Path(INSTALL_INFO_NODE_PATH).relative_to("/etc")),
    ):
        name = lower.strip("/").replace("/", "-")
        upper, work = folder / f"{name}-upper", folder / f"{name}-work"
        work.mkdir(parents=True, exist_ok=True)
        (upper / upper_file).parent.mkdir(parents=True, exist_ok=True)
        if lower == "/etc":
            (upper / upper_file).write_text(INSTALL_INFO)
        else:
            (upper / upper_file).mkdir(exist_ok=True)
        commands.append(
            f"mount -t overlay overlay -o 'lowerdir={lower},upperdir={upper},workdir={work}' '{lower}'"
        )
    commands.append(f"mount --bind '{driver}' '{DRIVER_NODE_PATH}'")
    return driver, commands


def start_device_plugin(
    plugin_dir: Path,
    device_dir: Path,
    *,
    log: Path,
    count: int = 8,
    driver_dir: Path | None = None,
    gid: int = HWHIAIUSER_GID,
    uid: int = 0,
    resource: str = ASCEND_RESOURCE,
    binary: Path | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start the stand-in for the node whose kubelet serves `plugin_dir` (the folder of its
    kubelet.sock); it makes the device nodes in `device_dir`, waits for kubelet.sock, registers, and
    registers again after each kubelet restart. Its output goes to `log`. `binary` defaults to the
    built one (`make cluster`); `prefix` runs it through e.g. nsenter."""
    binary = binary or build.binaries()["ascend-device-plugin"]
    plugin_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *prefix,
        *device_plugin_command(
            binary,
            plugin_dir,
            device_dir,
            count=count,
            driver_dir=driver_dir,
            gid=gid,
            uid=uid,
            resource=resource,
        ),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_device_plugin(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM the stand-in (it removes its socket and exits), SIGKILL after `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()
