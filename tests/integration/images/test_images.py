"""The project's images, built on this machine from docker/*.Dockerfile on the Debian base that
`mnv2_cluster.imagebuild` makes (no registry), and run with podman + runc as a cluster would run them.

The first run builds them (the trainer image installs MindSpore: see docs/install.md for the time);
later runs find the archives cached by their inputs. A missing tool or a failed build fails the test
with the command and its error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mnv2_cluster import imagebuild

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def operator_ref() -> str:
    return imagebuild.local_ref("mnv2-operator")


@pytest.fixture(scope="module")
def trainer_ref() -> str:
    return imagebuild.local_ref("mnv2-trainer")


def run(ref: str, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`podman run` without network, as the image's user unless `options` says otherwise."""
    return imagebuild.podman(
        "run", "--rm", "--network", "none", *options, ref, *args, check=False, timeout=600
    )


def archive_tags(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None, f"{archive} has no manifest.json: not a docker archive"
        return [tag for entry in json.load(manifest) for tag in entry["RepoTags"]]


def test_operator_runs_as_non_root_on_a_read_only_root_without_mindspore(operator_ref: str) -> None:
    config = json.loads(imagebuild.podman("image", "inspect", operator_ref).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["mnv2"]
    proc = run(operator_ref, "operator", "--help", options=("--read-only",))
    assert proc.returncode == 0, proc.stderr
    assert "--standalone" in proc.stdout
    code = (
        "import os, sys, mnv2_operator.cli, mnv2_operator.handlers, mnv2_operator.render, mnv2_trainer.config;"
        "print(os.getuid(), os.getgid(), sorted({'mindspore', 'numpy', 'mindcv', 'mnv2_demo', 'mnv2_cluster', 'matplotlib'} & set(sys.modules)))"
    )
    proc = run(operator_ref, "-c", code, options=("--read-only", "--entrypoint", "python"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "10001 10001 []"
    proc = run(operator_ref, "-c", "import mindspore", options=("--entrypoint", "python"))
    assert "No module named 'mindspore'" in proc.stderr


def test_trainer_imports_mindspore_and_has_msrun(trainer_ref: str) -> None:
    # CPU training pods run as uid/gid 1000, which the image does not name.
    code = "import mindspore, numpy, mnv2_trainer, mnv2_trainer.train; print(mindspore.__version__, numpy.__version__)"
    proc = run(trainer_ref, "python", "-c", code, options=("--user", "1000:1000"))
    assert proc.returncode == 0, proc.stderr
    ms_version, np_version = proc.stdout.split()[-2:]
    assert ms_version == "2.10.0"
    assert int(np_version.split(".")[0]) < 2, f"MindSpore 2.10 needs numpy < 2, the image has {np_version}"
    proc = run(trainer_ref, "msrun", "--help", options=("--user", "1000:1000"))
    assert proc.returncode == 0, proc.stderr
    assert "--worker_num" in proc.stdout
    proc = run(trainer_ref, "sh", "-c", "command -v taskset")
    assert proc.returncode == 0, "msrun --bind_core needs taskset (util-linux)"


def test_trainer_builds_its_cpu_kernel_as_the_pods_user(trainer_ref: str) -> None:
    code = "from mnv2_trainer import cpu_depthwise; print(cpu_depthwise.build_library())"
    proc = run(trainer_ref, "python", "-c", code, options=("--user", "1000:1000"))
    assert proc.returncode == 0, proc.stderr
    assert "built " in proc.stdout and ".so" in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", imagebuild.IMAGES)
def test_archives_carry_the_reference_and_are_cached(name: str) -> None:
    started = time.monotonic()
    archive = imagebuild.build(name)
    assert time.monotonic() - started < 10, "a warm build only hashes the inputs"
    assert archive == imagebuild.archive_path(name)
    assert archive_tags(archive) == [imagebuild.image_ref(name)]
    # skopeo reads it as containerd's and podman's importers do.
    out = subprocess.run(
        ["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Layers"]


@pytest.fixture
def containerd() -> Iterator[list[str]]:
    """A containerd of its own (root, state, socket in a temporary folder, no CRI): the `ctr` command
    that talks to it."""
    missing = [tool for tool in ("containerd", "ctr", "runc") if not shutil.which(tool)]
    assert not missing, f"{', '.join(missing)} not installed: `make cluster` installs them (Debian packages)"
    folder = Path(tempfile.mkdtemp(prefix="mnv2-ctd-", dir="/tmp"))
    socket = folder / "containerd.sock"
    (folder / "config.toml").write_text(
        f'version = 2\nroot = "{folder}/root"\nstate = "{folder}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
    )
    log = open(folder / "containerd.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["containerd", "-c", str(folder / "config.toml")], stdout=log, stderr=log)
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*ctr, "version"], capture_output=True).returncode != 0:
            assert proc.poll() is None, (folder / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not answer within 30 s"
            time.sleep(0.2)
        yield ctr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        subprocess.run(["umount", "-R", str(folder / "root")], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_containerd_imports_the_operator_archive_and_runs_it(
    operator_ref: str, containerd: list[str]
) -> None:
    archive = imagebuild.build("mnv2-operator")
    ref = imagebuild.image_ref("mnv2-operator")
    imported = subprocess.run([*containerd, "images", "import", str(archive)], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    listed = subprocess.run([*containerd, "images", "ls", "-q"], capture_output=True, text=True, check=True)
    assert ref in listed.stdout.split()
    run = subprocess.run(
        [*containerd, "run", "--rm", "--runc-binary", shutil.which("runc") or "runc", ref, "mnv2-images-test",
         "mnv2", "operator", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "--standalone" in run.stdout
