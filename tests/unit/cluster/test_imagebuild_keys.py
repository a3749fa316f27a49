"""mnv2_cluster.imagebuild without building: what its cache keys cover, where archives go, its tool
configuration, and that a cached archive is returned without running any tool."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from mnv2_cluster import imagebuild

REPO = Path(imagebuild.__file__).resolve().parents[2]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small repository (pyproject, README, Dockerfiles, two packages) and an empty cache folder."""
    root = tmp_path / "repo"
    (root / "docker").mkdir(parents=True)
    for name in ("operator.Dockerfile", "trainer.Dockerfile"):
        shutil.copy(REPO / "docker" / name, root / "docker" / name)
    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.2.3"\n')
    (root / "README.md").write_text("readme\n")
    for pkg in ("operator/mnv2_operator", "trainer/mnv2_trainer"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    monkeypatch.setattr(imagebuild, "repo_root", lambda: root)
    monkeypatch.setenv("MNV2_IMAGES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip"))
    return root


def test_keys_follow_the_files_the_images_are_built_from(repo: Path) -> None:
    keys = {name: imagebuild.image_key(name) for name in imagebuild.IMAGES}
    assert len(set(keys.values())) == 2, "each image has its own key"
    assert {name: imagebuild.image_key(name) for name in imagebuild.IMAGES} == keys, "stable"
    # Caches and build outputs are not inputs.
    (repo / "operator/mnv2_operator/__pycache__").mkdir()
    (repo / "operator/mnv2_operator/__pycache__/x.cpython-311.pyc").write_bytes(b"x")
    (repo / "trainer/mnv2_trainer/kernel.so").write_bytes(b"x")
    assert {name: imagebuild.image_key(name) for name in imagebuild.IMAGES} == keys
    # Inputs are.
    (repo / "trainer/mnv2_trainer/model.py").write_text("x = 1\n")
    changed = {name: imagebuild.image_key(name) for name in imagebuild.IMAGES}
    assert all(changed[name] != keys[name] for name in imagebuild.IMAGES)
    with (repo / "docker/trainer.Dockerfile").open("a") as fh:
        fh.write("RUN true\n")
    assert imagebuild.image_key("mnv2-trainer") != changed["mnv2-trainer"]
    assert imagebuild.image_key("mnv2-operator") == changed["mnv2-operator"]
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.2.4"\n')
    assert imagebuild.image_key("mnv2-operator") != changed["mnv2-operator"]


def test_archive_path_and_reference_carry_the_version(repo: Path, tmp_path: Path) -> None:
    assert imagebuild.image_ref("mnv2-operator") == "localhost/mnv2-operator:1.2.3"
    path = imagebuild.archive_path("mnv2-trainer")
    assert path.parent == tmp_path / "cache" / "archives"
    assert path.name == f"mnv2-trainer-1.2.3-{imagebuild.image_key('mnv2-trainer')}.tar"
    with pytest.raises(ValueError, match="unknown image 'mnv2-x'"):
        imagebuild.image_ref("mnv2-x")


def test_a_cached_archive_is_returned_without_any_tool(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> Path:
        raise AssertionError("built although the archive is cached")

    monkeypatch.setattr(imagebuild, "_build", no_build)
    for name in imagebuild.IMAGES:
        imagebuild.archive_path(name).parent.mkdir(parents=True, exist_ok=True)
        imagebuild.archive_path(name).write_bytes(b"archive")
    assert imagebuild.build_all() == {name: imagebuild.archive_path(name) for name in imagebuild.IMAGES}


def test_build_image_key_covers_context_and_arguments(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Path] = []

    def record(
        containerfile: Path, context: Path, tag: str, archive: Path, args: dict, local_tag: object
    ) -> Path:
        built.append(archive)
        assert args["BASE_IMAGE"] == imagebuild.base_ref()
        return archive

    monkeypatch.setattr(imagebuild, "_build", record)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Containerfile").write_text("FROM scratch\nCOPY coredns /coredns\n")
    (context / "coredns").write_bytes(b"binary")
    first = imagebuild.build_image(context / "Containerfile", context, "localhost/coredns:1.12")
    assert first.name.startswith("coredns-1.12-")
    assert imagebuild.build_image(context / "Containerfile", context, "localhost/coredns:1.12") == first
    (context / "coredns").write_bytes(b"binary 2")
    second = imagebuild.build_image(context / "Containerfile", context, "localhost/coredns:1.12")
    third = imagebuild.build_image(context / "Containerfile", context, "localhost/coredns:1.12", {"X": "1"})
    assert len({first, second, third}) == 3


def test_tools_run_with_the_projects_configuration(repo: Path, tmp_path: Path) -> None:
    env = imagebuild.tool_env()
    conf = Path(env["CONTAINERS_CONF"]).read_text()
    assert "default_ulimits = []" in conf and 'runtime = "runc"' in conf
    storage = Path(env["CONTAINERS_STORAGE_CONF"]).read_text()
    assert f'graphroot = "{tmp_path / "cache" / "storage" / "graph"}"' in storage
    # buildah's cache mount of the Dockerfiles' pip step is the host's pip cache.
    link = Path(env["TMPDIR"]) / "buildah-cache" / imagebuild.PIP_CACHE_ID
    assert link.resolve() == (tmp_path / "pip").resolve()
    for name in imagebuild.IMAGES:
        dockerfile = (repo / imagebuild.DOCKERFILES[name]).read_text()
        assert f"--mount=type=cache,id={imagebuild.PIP_CACHE_ID},target=/root/.cache/pip" in dockerfile


def test_missing_tools_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        imagebuild, "_which", lambda tool: None if tool in ("buildah", "runc") else f"/usr/bin/{tool}"
    )
    monkeypatch.setattr(imagebuild.os, "geteuid", lambda: 1000)
    with pytest.raises(
        imagebuild.ImageBuildError,
        match=r"image builds need the Debian packages buildah runc: run `sudo apt-get install -y -q --no-install-recommends buildah runc`",
    ):
        imagebuild.ensure_tools()


def test_a_new_build_keeps_the_most_recently_used_other_archive(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[tuple[str, ...]] = []
    monkeypatch.setattr(imagebuild, "buildah", lambda *args, check=True: removed.append(args))
    current = imagebuild.archive_path("mnv2-trainer")
    folder = current.parent
    folder.mkdir(parents=True)
    names = {
        current.name: 100,
        "mnv2-trainer-1.2.3-1111111111111111.tar": 300,  # the most recently used other: kept
        "mnv2-trainer-1.2.3-2222222222222222.tar": 200,  # older: pruned
        "mnv2-trainer-1.2.2-3333333333333333.tar": 50,  # older: pruned
        "mnv2-trainer-1.2.3-on-other-base-0123456789abcdef.tar": 10,  # built with --base: kept
        "mnv2-operator-1.2.2-0123456789abcdef.tar": 10,  # another image: kept
    }
    for name, used in names.items():
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (used, used))
    imagebuild._prune("mnv2-trainer", keep=current)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        n for n in names if "2222" not in n and "3333" not in n
    )
    assert sorted(removed) == [
        ("rmi", "localhost/mnv2-trainer:1.2.2-3333333333333333"),
        ("rmi", "localhost/mnv2-trainer:1.2.3-2222222222222222"),
    ]


def test_an_archive_returned_from_the_cache_counts_as_used(repo: Path) -> None:
    archive = imagebuild.archive_path("mnv2-operator")
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"archive")
    os.utime(archive, (100, 100))
    assert imagebuild.build("mnv2-operator") == archive
    assert archive.stat().st_mtime > 100
