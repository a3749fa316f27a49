"""The host programs a real node needs, and their installation from Debian packages.

A real node (`mnv2_cluster.realnode.RealNode`) runs the kubelet on containerd + runc with the CNI
reference plugins, kube-proxy writes iptables rules, and its test image is Debian's static busybox.
`python -m mnv2_cluster.host` (what `make cluster` runs) installs the missing packages with apt-get
when run as root; otherwise it says which ones are missing and how to install them, and leaves the
rest of the project (the control plane, simulated nodes) working without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CNI_BIN_DIR = Path("/usr/lib/cni")
BUSYBOX = Path("/bin/busybox")
# What a real node runs, and the Debian package that provides it.
PROGRAMS: dict[str, tuple[str, str]] = {
    "containerd": ("containerd", "containerd"),
    "ctr": ("ctr", "containerd"),
    "runc": ("runc", "runc"),
    "cni-bridge": (str(CNI_BIN_DIR / "bridge"), "containernetworking-plugins"),
    "cni-host-local": (str(CNI_BIN_DIR / "host-local"), "containernetworking-plugins"),
    "cni-loopback": (str(CNI_BIN_DIR / "loopback"), "containernetworking-plugins"),
    "cni-portmap": (str(CNI_BIN_DIR / "portmap"), "containernetworking-plugins"),
    "iptables": ("iptables", "iptables"),
    "ip": ("ip", "iproute2"),
    "nsenter": ("nsenter", "util-linux"),
    "unshare": ("unshare", "util-linux"),
    "busybox": (str(BUSYBOX), "busybox-static"),
}


class HostError(RuntimeError):
    """A host program is missing or cannot be installed; the message names it and the fix."""


def find(program: str) -> str | None:
    """The path of a program of PROGRAMS, or None when it is not installed."""
    name = PROGRAMS[program][0]
    if name.startswith("/"):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.access(f"{d}/{name}", os.X_OK)), None
    )


def missing_packages() -> list[str]:
    """The Debian packages whose programs are not installed, each once, in PROGRAMS' order."""
    missing: list[str] = []
    for program, (_, package) in PROGRAMS.items():
        if find(program) is None and package not in missing:
            missing.append(package)
    if find("busybox") is not None and "statically linked" not in _file_type(BUSYBOX):
        missing.append("busybox-static")  # the dynamic busybox package would not run in an image
    return missing


def ensure_packages() -> list[str]:
    """Install the missing packages with apt-get (as root); return what was installed.

    Raises:
        HostError: not root, or apt-get failed (its output's end in the message).
    """
    missing = missing_packages()
    if not missing:
        return []
    apt_install(missing, "real nodes")
    still = missing_packages()
    if still:
        raise HostError(f"still missing after installing {' '.join(missing)}: {' '.join(still)}")
    return missing


def apt_install(packages: list[str], needed_by: str) -> None:
    """Install Debian packages with apt-get as root, refreshing the package lists once if needed
    (a fresh machine has none).

    Raises:
        HostError: not root or no apt-get (the message gives the command to run), or apt-get failed
        (the end of its output in the message).
    """
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise HostError(
            f"{needed_by} need the Debian packages {' '.join(packages)}: run `sudo {' '.join(command)}`"
        )
    print(f"installing {' '.join(packages)} from Debian's packages for {needed_by}...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]  # another apt-get (a parallel build) finishes first
    proc = subprocess.run([*command, *lock], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q", *lock], capture_output=True, env=env)
        proc = subprocess.run([*command, *lock], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise HostError(
            f"`{' '.join(command)}` failed (exit {proc.returncode}):\n" + (proc.stderr or proc.stdout)[-2000:]
        )


def _file_type(path: Path) -> str:
    # The ELF header's program headers: a static binary has no PT_INTERP (the dynamic loader).
    data = path.read_bytes()[:65536]
    if data[:4] != b"\x7fELF":
        return "not ELF"
    return "dynamically linked" if b"ld-linux" in data else "statically linked"


def main() -> int:
    try:
        installed = ensure_packages()
    except HostError as e:
        # Not fatal here: the control plane and simulated nodes work without these.
        print(f"note: {e}", file=sys.stderr)
        return 0
    if installed:
        print(f"installed {' '.join(installed)} for real nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
