"""The node agent's pure helpers: how a container's paths, ports, env and status are made."""

from __future__ import annotations

from pathlib import Path

from mnv2_cluster.node import _in_mount_namespace
from mnv2_cluster.pods import (
    conditions,
    container_statuses,
    expand_vars,
    field_ref,
    hosts_file,
    path_rewriter,
    port_rewriter,
    service_names,
    termination_message,
)


def test_path_rewriter_maps_prefixes_only() -> None:
    rewrite = path_rewriter({"/data": "/s/pvc", "/etc/mnv2": "/s/cfg", "/output/": "/s/out"})
    assert (
        rewrite("--data_dir /data --config=/etc/mnv2/config.yaml")
        == "--data_dir /s/pvc --config=/s/cfg/config.yaml"
    )
    assert rewrite("/output/ckpt /database /x/data") == "/s/out/ckpt /database /x/data"


def test_port_rewriter_maps_declared_ports_where_a_value_names_them() -> None:
    rewrite = port_rewriter({8118: 40001})
    assert rewrite("--master_port=8118") == "--master_port=40001"
    assert rewrite("127.0.0.1:8118") == "127.0.0.1:40001"
    assert rewrite("8118") == "40001"
    assert rewrite("--master_port=18118") == "--master_port=18118"
    assert rewrite("--timeout=8118.5") == "--timeout=8118.5"
    assert port_rewriter({})("--master_port=8118") == "--master_port=8118"


def test_expand_vars_and_field_refs() -> None:
    assert expand_vars("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"app": "x"}},
        "spec": {"nodeName": "n1"},
    }
    assert field_ref(pod, "metadata.labels['app']") == "x"
    assert field_ref(pod, "status.podIP") == "127.0.0.1"
    assert field_ref(pod, "spec.nodeName") == "n1"


def test_termination_message_file_first_then_log_tail_on_error(tmp_path: Path) -> None:
    msg, log = tmp_path / "msg", tmp_path / "log"
    log.write_bytes(b"old run\n" + b"".join(b"line %d\n" % i for i in range(100)))
    start = len(b"old run\n")
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    msg.write_bytes(b"x" * 5000)
    assert termination_message(fallback, 1, msg, log, start) == "x" * 4096  # the file wins, cut to 4096 bytes
    msg.write_bytes(b"")
    tail = termination_message(fallback, 1, msg, log, start)
    assert (
        tail is not None and tail.splitlines()[0] == "line 20" and tail.endswith("line 99\n")
    )  # last 80 lines
    assert termination_message(fallback, 0, msg, log, start) is None  # only on a non-zero exit
    assert termination_message({}, 1, msg, log, start) is None  # only with FallbackToLogsOnError


def test_conditions_keep_the_schedulers_podscheduled_and_unchanged_transition_times() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    pod = {"status": {"conditions": [scheduled]}}
    pending = conditions(pod, ready=False, t="T1", reason="ContainersNotReady")
    assert pending[-1] == scheduled
    assert {c["type"]: c["reason"] for c in pending if c["status"] == "False"} == {
        "Ready": "ContainersNotReady", "ContainersReady": "ContainersNotReady"}  # fmt: skip
    running = conditions({"status": {"conditions": pending}}, ready=True, t="T2")
    times = {c["type"]: c["lastTransitionTime"] for c in running}
    assert times["Initialized"] == "T1" and times["Ready"] == "T2"


def test_container_statuses_report_containers_not_run() -> None:
    pod = {"spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "j"}]}}
    out = container_statuses(pod, {"state": {"running": {}}, "ready": True}, "Unsupported", "only the first")
    assert out[0]["name"] == "a" and out[0]["ready"] and "running" in out[0]["state"]
    assert out[1]["state"] == {"waiting": {"reason": "Unsupported", "message": "only the first"}}


def test_mount_namespace_command_passes_paths_as_data(tmp_path: Path) -> None:
    target = tmp_path / "mnt point"
    (tmp_path / "src dir" / "$(x)").mkdir(parents=True)
    argv = _in_mount_namespace([(f"{tmp_path}/src dir/$(x)", str(target))], ["python", "-c", "print(1)"])
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert (
        f"BIND_SRC_0={tmp_path}/src dir/$(x)" in argv and f"BIND_DST_0={target}" in argv
    )  # never in the script
    assert argv[-3:] == ["python", "-c", "print(1)"] and target.is_dir()


def test_service_names_found_in_values_resolve_in_the_pods_hosts_file(tmp_path: Path) -> None:
    values = [
        "--master_addr=j-worker-0.j.team-a.svc",
        "http://web.team-a.svc.cluster.local:80/x",
        "a.svcx",
        "/x.svc/y",
    ]
    assert service_names(values) == ["j-worker-0.j.team-a.svc", "web.team-a.svc.cluster.local"]
    base = tmp_path / "hosts"
    base.write_text("127.0.0.1 localhost\n")
    text = hosts_file(base, "j-worker-1", ["j-worker-0.j.team-a.svc"])
    assert text.splitlines()[0] == "127.0.0.1 localhost"
    assert (
        "127.0.0.1 j-worker-1" in text.splitlines()
        and "127.0.0.1 j-worker-0.j.team-a.svc" in text.splitlines()
    )


def test_pods_of_one_service_share_a_local_port_across_nodes(tmp_path: Path) -> None:
    from mnv2_cluster.node import NodeAgent

    def agent(name: str) -> NodeAgent:
        x = tmp_path / "x"
        return NodeAgent(
            name, x, x, x, x, tmp_path / name, volumes_dir=tmp_path / "volumes", mode="simulated"
        )

    a, b = agent("a"), agent("b")
    first = a._local_port("ns/job", 8118)
    assert b._local_port("ns/job", 8118) == first  # rank 1 on node b connects where rank 0 listens
    assert a._local_port("ns/other-job", 8118) != first
