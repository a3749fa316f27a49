"""Build the project's container images on this machine, with no image registry: a Debian base made from
packages, then the operator and the CPU trainer image from `docker/*.Dockerfile` on it.

`python -m mnv2_cluster.imagebuild` (what `make images` runs) prints the archives' paths; `--json` prints
them as JSON, `--only mnv2-operator` builds one image, `--force` builds again, `--base IMAGE` builds on
another BASE_IMAGE (a CANN image for an Ascend trainer). Every step is cached by a
hash of its inputs, so a warm run only hashes files (0.3 s). The first run takes about 12 minutes
(tools ~40 s, base ~4 min, operator image ~45 s, trainer image ~7 min), a change of the code ~2 min:

1. Tools: `buildah`, `podman`, `runc`, `debootstrap` and `skopeo` from Debian (`apt-get install`, as
   root, when one is missing). buildah and podman run with the configuration this module writes into
   the cache folder (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`; /etc is left alone): the `runc`
   runtime (crun 1.8 refuses hosts with cgroup v1 controllers), `cgroupfs`, no default rlimits (raising
   RLIMIT_NOFILE/NPROC needs CAP_SYS_RESOURCE), overlay storage under the cache folder.
2. The base (`localhost/mnv2-base:<key>`): `debootstrap --variant=minbase bookworm` with Debian's
   Python 3.11 (`python3`, `python3-pip`, `python-is-python3`, `ca-certificates`) into a folder, made
   pip-installable (no EXTERNALLY-MANAGED marker, as in the python:3.11 images), packed as a tar and
   imported with `buildah from scratch` + `buildah add`. Keyed by the suite, mirror, packages and
   recipe; about 3 minutes the first time.
3. The images, `buildah bud --network host` from a staged context (pyproject.toml, README.md,
   operator/, trainer/ without caches) with `--build-arg BASE_IMAGE=<the base>`, keyed by the base,
   the Dockerfile and every staged file. pip in the build (PyPI over the host network) uses the host's
   pip cache (`pip cache dir`, ~/.cache/pip): the `RUN --mount=type=cache,id=mnv2-pip` of the
   Dockerfiles is pointed at it (pip stores a download there when the index's responses may be
   cached), and buildah's layer cache (`--layers`) keeps the trainer's dependency layer while
   pyproject.toml stays the same, so a change of the code does not reinstall MindSpore. The host's CA
   bundle (what its pip trusts) is mounted read-only at Debian's path during the build's RUN steps, for
   networks that re-sign TLS; the images keep Debian's own.
4. Each image is written as a docker archive (`buildah push ... docker-archive:<file>:<reference>`),
   which `ctr -n k8s.io images import <file>` and `podman load -i <file>` take as they are. A new
   build of an image keeps two of its archives on the Debian base: its own and the most recently used
   other one (another checkout's, whose tests may be importing it); older ones and their tags go.

API (for the local cluster's nodes and tests):

- `build_all(force=False) -> dict[str, Path]`: `{"mnv2-operator": archive, "mnv2-trainer": archive}`,
  each built unless cached. `build(name, base=None)` builds one of them (on another BASE_IMAGE, e.g.
  a CANN image, with `base`; the CLI's `--base`).
- `image_ref(name) -> str`: the reference stored in the archive, `localhost/<name>:<version>`, e.g.
  `localhost/mnv2-operator:0.1.0` (the version is pyproject's); `IMAGES` lists the names.
- `archive_path(name) -> Path`: where that image's archive is (or will be) for the current inputs.
- `local_ref(name) -> str`: a reference to the image in this module's container storage, for
  `podman(...)` (the image is loaded from its archive when the storage lacks it).
- `build_image(containerfile, context, tag, build_args=None) -> Path`: any Containerfile (e.g. a CoreDNS
  image from a binary built on the host), built with `BASE_IMAGE` set to the base unless given, cached
  by a hash of the Containerfile, the whole context folder and the arguments; returns its archive.
- `base_image() -> str`: the base's reference, built or imported if needed.
- `podman(*args)` / `buildah(*args)`: run those tools with this module's configuration.
- `ensure_tools()`: install the tools if missing.

Environment: `MNV2_IMAGES_CACHE` (the cache folder; default `$XDG_CACHE_HOME/mnv2-operator/images`,
else `~/.cache/mnv2-operator/images`), `MNV2_DEBIAN_MIRROR` (default `http://deb.debian.org/debian`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

from mnv2_cluster import host

__all__ = [
    "IMAGES",
    "ImageBuildError",
    "archive_path",
    "base_image",
    "build",
    "build_all",
    "build_image",
    "buildah",
    "ensure_tools",
    "image_ref",
    "local_ref",
    "podman",
]

IMAGES = ("mnv2-operator", "mnv2-trainer")
DOCKERFILES = {"mnv2-operator": "docker/operator.Dockerfile", "mnv2-trainer": "docker/trainer.Dockerfile"}
# What the Dockerfiles COPY from the repository root.
CONTEXT_FILES = ("pyproject.toml", "README.md")
CONTEXT_DIRS = ("operator", "trainer")
SKIPPED = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".egg-info")

DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
# Change when _make_rootfs changes what it does to the folder, so cached bases are rebuilt.
BASE_RECIPE = 1
# Host tools, by Debian package.
TOOLS = {
    "buildah": "buildah",
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "skopeo": "skopeo",
}
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # where Debian's pip and OpenSSL read them
PIP_CACHE_ID = "mnv2-pip"  # the id of the Dockerfiles' `RUN --mount=type=cache`
PROGRESS_EVERY = 30.0
# Archives kept per image on the Debian base: the current inputs' and the most recently used other
# one (e.g. another checkout's, whose tests may be importing it while this one builds).
KEEP_ARCHIVES = 2

CONTAINERS_CONF = """\
# Written by mnv2_cluster.imagebuild: buildah and podman for the project's images.
[containers]
# No rlimits in the OCI spec: raising RLIMIT_NOFILE/NPROC needs CAP_SYS_RESOURCE, which some hosts lack.
default_ulimits = []
netns = "host"

[engine]
# crun 1.8 refuses hosts with cgroup v1 controllers ("cgroups in hybrid mode not supported").
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

STORAGE_CONF = """\
# Written by mnv2_cluster.imagebuild: the project's own image storage, apart from the host's.
[storage]
driver = "overlay"
graphroot = "{graphroot}"
runroot = "{runroot}"
"""


class ImageBuildError(RuntimeError):
    """An image cannot be built; the message names the missing piece or the failed command."""


# --- where things are ---------------------------------------------------------------------------


def repo_root() -> Path:
    """The repository: the folder above `cluster/`, which holds this package."""
    return Path(__file__).resolve().parent.parent.parent


def cache_root() -> Path:
    """$MNV2_IMAGES_CACHE, else $XDG_CACHE_HOME/mnv2-operator/images, else ~/.cache/mnv2-operator/images."""
    if os.environ.get("MNV2_IMAGES_CACHE"):
        return Path(os.environ["MNV2_IMAGES_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mnv2-operator" / "images"


def version() -> str:
    """The distribution's version (pyproject.toml), the tag of the images."""
    return tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]["version"]


def image_ref(name: str) -> str:
    """The reference an image's archive carries: `localhost/<name>:<version>`."""
    _check_name(name)
    return f"localhost/{name}:{version()}"


def _check_name(name: str) -> None:
    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r}: one of {', '.join(IMAGES)}")


# --- tools and their configuration --------------------------------------------------------------


def ensure_tools() -> None:
    """Install the missing tools from Debian's packages (root with apt-get), else say what is missing."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not _which(tool)})
    if not missing:
        return
    try:
        host.apt_install(missing, "image builds")
    except host.HostError as e:
        raise ImageBuildError(str(e)) from None
    still = [tool for tool in TOOLS if not _which(tool)]
    if still:
        raise ImageBuildError(f"{', '.join(still)} still missing after installing {', '.join(missing)}")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin")


def host_pip_cache() -> Path:
    """The host's pip cache: $PIP_CACHE_DIR, else $XDG_CACHE_HOME/pip, else ~/.cache/pip."""
    if os.environ.get("PIP_CACHE_DIR"):
        return Path(os.environ["PIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"


def host_ca_bundle() -> Path | None:
    """The certificate authorities this host's pip trusts ($PIP_CERT, $REQUESTS_CA_BUNDLE,
    $SSL_CERT_FILE, else Debian's bundle): a network that re-signs TLS with its own authority reaches
    PyPI only with them, so the builds' RUN steps see them at Debian's path."""
    for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(variable) and Path(os.environ[variable]).is_file():
            return Path(os.environ[variable]).resolve()
    debian = Path(IMAGE_CA_BUNDLE)
    return debian.resolve() if debian.is_file() else None


def tool_env() -> dict[str, str]:
    """The environment for buildah and podman: this module's configuration and temporary folder.

    buildah keeps `RUN --mount=type=cache,id=X` folders in `$TMPDIR/buildah-cache/X`; the one of the
    Dockerfiles' pip cache is a link to the host's pip cache.
    """
    root = cache_root()
    conf = root / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    storage = STORAGE_CONF.format(graphroot=root / "storage" / "graph", runroot=root / "storage" / "run")
    for path, text in ((conf / "containers.conf", CONTAINERS_CONF), (conf / "storage.conf", storage)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    tmp = root / "tmp"
    (tmp / "buildah-cache").mkdir(parents=True, exist_ok=True)
    link = tmp / "buildah-cache" / PIP_CACHE_ID
    pip_cache = host_pip_cache()
    pip_cache.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and Path(os.readlink(link)) == pip_cache):
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(pip_cache)
    return {
        **os.environ,
        "CONTAINERS_CONF": str(conf / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "TMPDIR": str(tmp),
        "BUILDAH_ISOLATION": "oci",
    }


def buildah(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    """`buildah ARGS` with this module's configuration (output captured as text)."""
    return _run(["buildah", *args], check=check, **kwargs)


def podman(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with this module's configuration (output captured as text)."""
    return _run(["podman", *args], check=check, **kwargs)


def _run(cmd: list[str], check: bool, **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    proc = subprocess.run(cmd, env=tool_env(), **kwargs)
    if check and proc.returncode != 0:
        raise ImageBuildError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{(proc.stderr or '')[-3000:]}"
        )
    return proc


def _image_exists(ref: str) -> bool:
    return buildah("inspect", "--type", "image", ref, check=False).returncode == 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time per cache folder (tests, nodes and the CLI may ask at once)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the base -----------------------------------------------------------------------------------


def mirror() -> str:
    return os.environ.get("MNV2_DEBIAN_MIRROR") or DEFAULT_MIRROR


def base_key() -> str:
    spec = {"suite": DEBIAN_SUITE, "mirror": mirror(), "packages": BASE_PACKAGES, "recipe": BASE_RECIPE}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def base_ref() -> str:
    return f"localhost/mnv2-base:{base_key()}"


def base_image() -> str:
    """The base image's reference in this module's storage, made (or imported again) when missing."""
    ref = base_ref()
    with _locked():
        if _image_exists(ref):
            return ref
        ensure_tools()
        tarball = cache_root() / "base" / f"rootfs-{base_key()}.tar"
        if not tarball.exists():
            _make_rootfs(tarball)
        print(f"importing {tarball} as {ref}...", flush=True)
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", container, str(tarball), "/")
            buildah(
                "config",
                "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env", "LANG=C.UTF-8",
                "--cmd", "python",
                "--label", f"org.opencontainers.image.description=Debian {DEBIAN_SUITE} minbase with Python 3.11",
                container,
            )  # fmt: skip
            buildah("commit", "--rm", container, ref)
        except BaseException:
            buildah("rm", container, check=False)
            raise
    return ref


def _make_rootfs(tarball: Path) -> None:
    """debootstrap the base into a folder, trim it, make pip usable, pack it into `tarball`."""
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root (it creates device nodes and chroots): run as root")
    started = time.monotonic()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [
            _which("debootstrap") or "debootstrap", "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(rootfs), mirror(),
        ]  # fmt: skip
        print(f"making the base: {' '.join(cmd)} (about 3 minutes)...", flush=True)
        _run_logged(cmd, Path(tmp) / "debootstrap.log", "debootstrap")
        # Files that only take space in an image; dpkg keeps skipping docs in images built on it.
        for folder in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                       "usr/share/info", "usr/share/locale"):  # fmt: skip
            target = rootfs / folder
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    elif child.name not in ("lock", "partial"):
                        child.unlink()
        (rootfs / "etc/dpkg/dpkg.cfg.d/01-mnv2-nodoc").write_text(
            "path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
            "path-exclude /usr/share/locale/*\n"
        )
        # `pip install` into the system Python, as in the python:3.11 images (PEP 668 marker removed).
        for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."], check=True
        )
        os.replace(partial, tarball)
    print(f"base folder packed into {tarball} in {time.monotonic() - started:.0f} s", flush=True)


# --- images -------------------------------------------------------------------------------------


def _context_files(root: Path) -> list[Path]:
    """Every file under `root` that goes into a context, sorted (caches and build outputs skipped)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED and not d.endswith(SKIPPED_SUFFIXES))
        for name in sorted(filenames):
            if not name.endswith(SKIPPED_SUFFIXES):
                files.append(Path(dirpath) / name)
    return files


def _hash_tree(digest, root: Path, files: list[Path]) -> None:
    for path in files:
        rel = path.relative_to(root).as_posix()
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{rel}\0{mode}\0".encode())
        digest.update(path.read_bytes() if not path.is_symlink() else os.readlink(path).encode())
        digest.update(b"\0")


def _project_files() -> list[Path]:
    root = repo_root()
    files = [root / name for name in CONTEXT_FILES]
    for folder in CONTEXT_DIRS:
        files.extend(_context_files(root / folder))
    return files


def image_key(name: str, base: str | None = None) -> str:
    """Hash of what decides an image: the base (the Debian base's key, or the reference `base`), its
    Dockerfile and the files of its context."""
    _check_name(name)
    root = repo_root()
    digest = hashlib.sha256(f"{base or base_key()}\0{version()}\0".encode())
    digest.update((root / DOCKERFILES[name]).read_bytes() + b"\0")
    _hash_tree(digest, root, _project_files())
    return digest.hexdigest()[:16]


def archive_path(name: str, base: str | None = None) -> Path:
    """The docker archive of image `name` for the current inputs (it may not be built yet)."""
    on = "-on-other-base" if base else ""
    return cache_root() / "archives" / f"{name}-{version()}{on}-{image_key(name, base)}.tar"


def build(name: str, force: bool = False, base: str | None = None) -> Path:
    """Build image `name` (one of IMAGES) unless its archive for the current inputs exists; its path.

    `base`: another BASE_IMAGE than the Debian base, e.g. a CANN image for an Ascend trainer image
    (buildah pulls it unless the module's storage has it).
    """
    _check_name(name)
    archive = archive_path(name, base)
    if archive.exists() and not force:
        _touch(archive)
        return archive
    root = repo_root()
    with tempfile.TemporaryDirectory(prefix=f"mnv2-{name}-context-") as tmp:
        context = Path(tmp)
        for path in _project_files():
            target = context / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        containerfile = context / "Containerfile"
        shutil.copy2(root / DOCKERFILES[name], containerfile)
        args = {"BASE_IMAGE": base} if base else {}
        _build(containerfile, context, image_ref(name), archive, args, local_tag=_local_tag(name, base))
    if not base:
        _prune(name, keep=archive)
    return archive


def _touch(archive: Path) -> None:
    """Mark a cached archive as used now: pruning keeps the most recently used ones."""
    with contextlib.suppress(OSError):
        os.utime(archive)


def _prune(name: str, keep: Path, count: int = KEEP_ARCHIVES) -> None:
    """Keep `keep` and the `count - 1` most recently used (built or returned from the cache) other
    archives of `name` on the Debian base; remove the rest (the trainer's is ~3.6 GB each) and their
    tags in the storage; layers still in use stay."""
    pattern = re.compile(rf"{re.escape(name)}-([^-]+)-([0-9a-f]{{16}})\.tar")

    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    with _locked():
        others = [
            (path, match)
            for path in keep.parent.iterdir()
            if (match := pattern.fullmatch(path.name)) and path != keep
        ]
        others.sort(key=lambda item: used(item[0]), reverse=True)
        for old, match in others[max(count - 1, 0) :]:
            old.unlink(missing_ok=True)
            buildah("rmi", f"localhost/{name}:{match[1]}-{match[2]}", check=False)


def _local_tag(name: str, base: str | None = None) -> str:
    return f"localhost/{name}:{version()}-{image_key(name, base)}"


def build_all(force: bool = False) -> dict[str, Path]:
    """Build the operator and the CPU trainer image unless cached: `{name: docker archive}`."""
    return {name: build(name, force=force) for name in IMAGES}


def build_image(
    containerfile: Path | str,
    context: Path | str,
    tag: str,
    build_args: Mapping[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Build any Containerfile into a docker archive carrying `tag`; cached by its inputs.

    `BASE_IMAGE` defaults to the Debian base (built if needed). The key covers the Containerfile, every
    file of `context` (caches skipped), `tag` and the build arguments.
    """
    containerfile, context = Path(containerfile).resolve(), Path(context).resolve()
    args = dict(build_args or {})
    if "BASE_IMAGE" not in args:
        args["BASE_IMAGE"] = base_ref()
    digest = hashlib.sha256(json.dumps({"tag": tag, "args": args}, sort_keys=True).encode())
    digest.update(containerfile.read_bytes() + b"\0")
    _hash_tree(digest, context, _context_files(context))
    key = digest.hexdigest()[:16]
    safe = tag.rsplit("/", 1)[-1].replace(":", "-")
    archive = cache_root() / "archives" / f"{safe}-{key}.tar"
    if archive.exists() and not force:
        return archive
    return _build(containerfile, context, tag, archive, args, local_tag=None)


def _build(
    containerfile: Path, context: Path, tag: str, archive: Path, args: dict[str, str], local_tag: str | None
) -> Path:
    ensure_tools()
    if args.get("BASE_IMAGE", base_ref()) == base_ref():
        args["BASE_IMAGE"] = base_image()
    with _locked():
        if archive.exists():  # built by another process while this one waited
            return archive
        started = time.monotonic()
        log = cache_root() / "logs" / f"{archive.stem}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["buildah", "bud", "--network", "host", "--layers", "-f", str(containerfile), "-t", tag]
        bundle = host_ca_bundle()
        if bundle:  # for the build's RUN steps only; the image keeps its own
            cmd += ["--volume", f"{bundle}:{IMAGE_CA_BUNDLE}:ro"]
        if local_tag:
            cmd += ["-t", local_tag]
        for key, value in sorted(args.items()):
            cmd += ["--build-arg", f"{key}={value}"]
        cmd.append(str(context))
        print(f"building {tag} (log: {log})...", flush=True)
        _run_logged(cmd, log, f"building {tag}")
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".tar.partial")
        partial.unlink(missing_ok=True)
        buildah("push", tag, f"docker-archive:{partial}:{tag}")
        os.replace(partial, archive)
        size = archive.stat().st_size / 2**20
        print(f"built {tag} in {time.monotonic() - started:.0f} s: {archive} ({size:.0f} MiB)", flush=True)
    return archive


def _run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run `cmd` with its output in `log`, a progress line every 30 s; the log's tail on failure."""
    started = time.monotonic()
    done = threading.Event()

    def report() -> None:
        while not done.wait(PROGRESS_EVERY):
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            step = next((line for line in reversed(lines) if line.startswith(("STEP", "I: "))), "")
            print(f"  ... {what}: {time.monotonic() - started:.0f} s {step[:100]}", flush=True)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        with open(log, "w") as out:
            proc = subprocess.run(
                cmd, env=tool_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
    finally:
        done.set()
        reporter.join()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise ImageBuildError(
            f"{what} failed: `{' '.join(cmd)}` exited {proc.returncode} (log: {log}):\n{tail}"
        )


def local_ref(name: str) -> str:
    """The image in this module's storage (loaded from its archive if needed), for `podman run`."""
    archive = build(name)
    ref = _local_tag(name)
    if not _image_exists(ref):
        with _locked():
            podman("load", "-i", str(archive))
            podman("tag", image_ref(name), ref)
    return ref


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mnv2_cluster.imagebuild", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", choices=IMAGES, action="append", help="build only this image (repeatable)")
    parser.add_argument("--force", action="store_true", help="build even when the archive is cached")
    parser.add_argument("--json", action="store_true", help="print {name: {ref, archive}} as JSON")
    parser.add_argument(
        "--base",
        metavar="IMAGE",
        help="BASE_IMAGE instead of the Debian base (e.g. a CANN image for an Ascend trainer: --only mnv2-trainer)",
    )
    args = parser.parse_args(argv)
    try:
        built = {name: build(name, force=args.force, base=args.base) for name in args.only or IMAGES}
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({n: {"ref": image_ref(n), "archive": str(p)} for n, p in built.items()}, indent=2))
    else:
        for name, path in built.items():
            print(f"{image_ref(name)}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
