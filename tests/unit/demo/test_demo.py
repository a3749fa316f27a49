"""`mnv2 demo`'s pieces that need no cluster: manifest handling, state folder, following a job."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mnv2_demo import demo
from support import REPO_ROOT


def test_job_ref_finds_the_one_job() -> None:
    docs = [
        {"kind": "PersistentVolumeClaim", "metadata": {"name": "out"}},
        {"kind": "MobileNetV2TrainingJob", "metadata": {"name": "digits-cpu"}},
    ]
    assert demo.job_ref(docs) == demo.JobRef("digits-cpu", "default")
    docs[1]["metadata"]["namespace"] = "ml"
    assert demo.job_ref(docs) == demo.JobRef("digits-cpu", "ml")
    with pytest.raises(demo.DemoError, match="expected exactly one MobileNetV2TrainingJob, found 2"):
        demo.job_ref([docs[1], docs[1]], "x.yaml")
    with pytest.raises(demo.DemoError, match="x.yaml: metadata.name is missing"):
        demo.job_ref([{"kind": "MobileNetV2TrainingJob", "metadata": {}}], "x.yaml")


def test_find_example(tmp_path: Path) -> None:
    with pytest.raises(demo.DemoError, match="-f nope.yaml: no such file"):
        demo.find_example("nope.yaml")
    (tmp_path / "manifests" / "examples").mkdir(parents=True)
    example = tmp_path / demo.DEFAULT_EXAMPLE
    example.write_text("{}", encoding="utf-8")
    assert demo.find_example(None, cwd=tmp_path) == example.resolve()
    assert demo.find_example(str(example)) == example.resolve()


def test_the_default_example_is_a_single_job() -> None:
    path = demo.find_example(None, cwd=REPO_ROOT)
    ref = demo.job_ref(list(yaml.safe_load_all(path.read_text(encoding="utf-8"))), str(path))
    assert ref.name


def test_away_from_a_checkout_the_packaged_example_is_used(tmp_path: Path) -> None:
    # The package carries the repository's example, so `mnv2 demo` works from any folder.
    path = demo.find_example(None, cwd=tmp_path)
    assert path == demo.packaged_example()
    assert path.read_bytes() == (REPO_ROOT / demo.DEFAULT_EXAMPLE).read_bytes()


def test_prepare_state_dir_removes_only_the_previous_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert demo.prepare_state_dir(state) == []  # not there yet: nothing to do
    state.mkdir()
    (state / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(demo.DemoError, match="is not empty and holds no cluster kubeconfig"):
        demo.prepare_state_dir(state)
    # A stopped cluster's folder: its API server no longer answers.
    (state / "kubeconfig").write_text(
        yaml.safe_dump({"clusters": [{"cluster": {"server": "https://127.0.0.1:9"}}]}), encoding="utf-8"
    )
    (state / "etcd" / "member").mkdir(parents=True)
    (state / "volumes" / "pvc" / "out" / "ckpt").mkdir(parents=True)
    (state / "nodes" / "node-1" / "pods").mkdir(parents=True)
    (state / "pki").mkdir()
    assert demo.prepare_state_dir(state) == [state / "etcd", state / "volumes", state / "nodes"]
    assert sorted(p.name for p in state.iterdir()) == ["kubeconfig", "notes.txt", "pki"]


def test_claims_of_the_jobs_in_a_manifest() -> None:
    docs = [
        {"kind": "PersistentVolumeClaim", "metadata": {"name": "ignored"}, "spec": {}},
        {
            "kind": "MobileNetV2TrainingJob",
            "metadata": {"name": "a", "namespace": "ml"},
            "spec": {"dataset": {"type": "imagefolder", "pvc": {"claimName": "data"}},
                     "output": {"pvc": {"claimName": "runs"}}},
        },
        {"kind": "MobileNetV2TrainingJob", "metadata": {"name": "b"},
         "spec": {"dataset": {"type": "digits"}, "output": {"pvc": {"claimName": "runs"}}}},
        {"kind": "MobileNetV2TrainingJob", "metadata": {"name": "c", "namespace": "ml"},
         "spec": {"output": {"pvc": {"claimName": "runs"}}}},
        {"kind": "MobileNetV2TrainingJob", "metadata": {"name": "d"}, "spec": {"output": {"emptyDir": {}}}},
    ]  # fmt: skip
    assert demo.claims_of(docs) == [("ml", "data"), ("ml", "runs"), ("default", "runs")]


def test_claim_mounts_keep_each_sub_path() -> None:
    docs = [
        {"kind": "MobileNetV2TrainingJob", "metadata": {"name": "a"},
         "spec": {"dataset": {"pvc": {"claimName": "runs", "subPath": "data"}},
                  "output": {"pvc": {"claimName": "runs", "subPath": "a"}}}},
        {"kind": "MobileNetV2TrainingJob", "metadata": {"name": "b"},
         "spec": {"output": {"pvc": {"claimName": "runs"}}}},
    ]  # fmt: skip
    assert demo.claim_mounts(docs) == [
        ("default", "runs", "data"),
        ("default", "runs", "a"),
        ("default", "runs", None),
    ]
    assert demo.claims_of(docs) == [("default", "runs")]


def test_the_operator_runs_with_the_charts_cluster_role() -> None:
    # The plain manifests' ClusterRole is the chart's (tools/manifests.py renders it; a test checks drift).
    role = yaml.safe_load(demo.operator_role(cwd=REPO_ROOT).read_text(encoding="utf-8"))
    assert demo.operator_role(cwd=REPO_ROOT / "demo") == demo.operator_role(cwd=REPO_ROOT)  # the checkout's
    assert role["kind"] == "ClusterRole"
    binding = demo.operator_binding(role["metadata"]["name"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": demo.OPERATOR_USER}
    ]


def test_missing_pieces_name_each_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mnv2_cluster import build, coredns, host, imagebuild

    def not_built() -> None:
        raise build.BuildError("not built: build them with `make cluster`")

    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(host, "missing_packages", lambda: ["containerd", "runc"])
    monkeypatch.setattr(build, "binaries", not_built)
    monkeypatch.setattr(coredns, "binary", not_built)
    monkeypatch.setattr(imagebuild, "archive_path", lambda name: tmp_path / f"{name}.tar")
    missing = demo.missing_pieces()
    assert len(missing) == 5, missing
    root, packages, binaries, dns, image = missing
    assert root.startswith("root:") and "sudo make demo" in root
    assert "containerd runc" in packages and "`make cluster`" in packages
    assert "`make cluster`" in binaries and dns.startswith("CoreDNS") and "`make cluster`" in dns
    assert str(tmp_path / "mnv2-trainer.tar") in image and "`make images`" in image

    monkeypatch.setattr(demo.os, "geteuid", lambda: 0)
    monkeypatch.setattr(host, "missing_packages", lambda: [])
    monkeypatch.setattr(build, "binaries", lambda: {})
    monkeypatch.setattr(coredns, "binary", lambda: tmp_path / "coredns")
    (tmp_path / "mnv2-trainer.tar").write_bytes(b"")
    assert demo.missing_pieces() == []


@pytest.fixture
def answering_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_prepare_state_dir_refuses_a_running_cluster(tmp_path: Path, answering_server: str) -> None:
    (tmp_path / "kubeconfig").write_text(
        yaml.safe_dump({"clusters": [{"cluster": {"server": answering_server}}]}), encoding="utf-8"
    )
    (tmp_path / "volumes").mkdir()
    with pytest.raises(demo.DemoError, match="still answers at"):
        demo.prepare_state_dir(tmp_path)
    assert (tmp_path / "volumes").is_dir()


def job(
    phase: str | None, epoch: int | None = None, restarts: int = 0, top1: float | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"restarts": restarts}
    if phase:
        status["phase"] = phase
    if epoch is not None:
        status["progress"] = {"epoch": epoch, "totalEpochs": 3, "loss": 1.0 / (epoch + 1)}
    if top1 is not None:
        status["metrics"] = {"top1": top1}
    return {"metadata": {"name": "j"}, "status": status}


def test_follow_job_prints_changes_until_finished() -> None:
    states = iter(
        [
            job(None),
            job("Running"),
            job("Running", 1, top1=0.5),
            job("Running", 1, top1=0.5),  # no change: no new line in a log
            job("Restarting", 1, restarts=1, top1=0.5),
            job("Running", 2, restarts=1, top1=0.7),
            job("Succeeded", 3, restarts=1, top1=0.9),
            job("Running"),  # never read: the demo stops at the first finished state
        ]
    )
    out = io.StringIO()
    final = demo.follow_job(lambda: next(states), out=out, poll=0)
    assert final["status"]["phase"] == "Succeeded"
    lines = out.getvalue().splitlines()
    assert lines[0] == "phase Pending"
    assert "phase Restarting (restarts: 1)" in lines
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == len(set(progress))  # one line per change
    assert progress[-1].startswith("[####################]  epoch 3/3")
    assert "top-1 0.900  Succeeded  restarts 1" in progress[-1]


def test_follow_job_stops_when_the_operator_dies() -> None:
    with pytest.raises(demo.DemoError, match="the operator stopped"):
        demo.follow_job(lambda: job("Running"), operator_alive=lambda: False, out=io.StringIO(), poll=0)
    with pytest.raises(demo.DemoError, match="did not finish within 0s"):
        demo.follow_job(lambda: job("Running"), out=io.StringIO(), poll=0, timeout=0)


def test_locate_metrics_prefers_the_status_then_searches_the_state_dir(tmp_path: Path) -> None:
    ckpt = tmp_path / "volumes" / "pvc" / "j-output" / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    with_status = {"status": {"checkpoints": {"latest": str(ckpt / "m-1_10.ckpt")}}}
    assert demo.locate_metrics(with_status, tmp_path, "j") == ckpt / "metrics.jsonl"
    assert demo.locate_metrics({"status": {}}, tmp_path, "j") == ckpt / "metrics.jsonl"
    assert demo.locate_metrics({"status": {}}, tmp_path, "other") is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_follow_job_redraws_one_line_on_a_terminal() -> None:
    states = iter([job("Running", 1, top1=0.5), job("Running", 2, top1=0.75), job("Succeeded", 3, top1=0.9)])
    out = Terminal()
    demo.follow_job(lambda: next(states), out=out, poll=0)
    text = out.getvalue()
    # Progress redraws in place (carriage returns), phase changes get lines of their own.
    assert text.count("\n") == 3  # "phase Running", "phase Succeeded", and the final newline
    assert text.count("\r") == 5
    last = text.rstrip("\n").rsplit("\r", 1)[1]
    assert last.startswith("[####################]  epoch 3/3") and "Succeeded" in last
