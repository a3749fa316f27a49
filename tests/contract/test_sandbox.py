"""The API emulator (`mnv2_operator.sandbox`) itself: simulated kubelet, audit records, 410 Gone,
throughput. Each test starts its own emulator; the rest of the suite runs against the real control plane."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiException
from mnv2_operator.sandbox import Sandbox

from contract.kit import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(tmp_path / "sim", kubelet="simulated") as sb:
        yield sb


def simple_pod(name: str, labels: dict | None = None) -> dict:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": {"accelerator": "huawei-Ascend910"},
            "containers": [{"name": "c", "image": "x", "command": ["true"]}],
        },
    }


def test_simulated_pods_run_until_finished(sim: Sandbox) -> None:
    core = kubernetes.client.CoreV1Api(sim.api_client())
    core.create_namespaced_pod("default", simple_pod("s1"))
    core.create_namespaced_pod("default", simple_pod("s2"))
    assert (
        core.read_namespaced_pod("s1", "default").spec.node_name == "sandbox"
    )  # bound despite the nodeSelector
    for name in ("s1", "s2"):
        wait_for(
            lambda n=name: core.read_namespaced_pod(n, "default").status.phase == "Running",
            5,
            f"{name} Running",
        )
    sim.kubelet.finish("default", "s1", 0)
    sim.kubelet.finish("default", "s2", 2, reason="OOMKilled")
    wait_for(lambda: core.read_namespaced_pod("s1", "default").status.phase == "Succeeded", 5, "s1 Succeeded")
    wait_for(lambda: core.read_namespaced_pod("s2", "default").status.phase == "Failed", 5, "s2 Failed")
    term = core.read_namespaced_pod("s2", "default").status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (2, "OOMKilled")
    with pytest.raises(LookupError):
        sim.kubelet.finish("default", "nope", 0)
    core.create_namespaced_pod("default", simple_pod("s3"))
    sim.kubelet.finish("default", "s3", 0)  # right after the create, before it runs
    wait_for(lambda: core.read_namespaced_pod("s3", "default").status.phase == "Succeeded", 5, "s3 Succeeded")


def test_simulated_default_outcome_and_deletion(sim: Sandbox) -> None:
    core = kubernetes.client.CoreV1Api(sim.api_client())
    sim.kubelet.default_outcome = (0.3, 1)
    core.create_namespaced_pod("default", simple_pod("auto"))
    wait_for(
        lambda: core.read_namespaced_pod("auto", "default").status.phase == "Failed",
        5,
        "auto Failed by itself",
    )
    sim.kubelet.default_outcome = None
    core.create_namespaced_pod("default", simple_pod("del"))
    wait_for(lambda: core.read_namespaced_pod("del", "default").status.phase == "Running", 5, "del Running")
    core.delete_namespaced_pod("del", "default")

    def gone() -> bool:
        try:
            core.read_namespaced_pod("del", "default")
            return False
        except ApiException as e:
            return e.status == 404

    wait_for(gone, 5, "the deleted simulated pod to go")


def test_audit_records_every_request(sim: Sandbox) -> None:
    core = kubernetes.client.CoreV1Api(sim.api_client())
    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    core.patch_namespaced_config_map("a", "default", {"data": {"x": "1"}})
    core.list_namespaced_config_map("default", label_selector="x=y")
    core.delete_namespaced_config_map("a", "default")
    sim.kubectl("get", "pods", "-A")
    resp = urllib.request.urlopen(f"{sim.url}/api/v1/namespaces/default/secrets?watch=true", timeout=5)
    wait_for(lambda: any(a.verb == "watch" for a in sim.audit), 5, "the open watch to be audited")
    resp.close()
    got = [(a.verb, a.group, a.resource, a.subresource, a.namespace, a.name, a.code) for a in sim.audit]
    assert ("create", "", "configmaps", "", "default", "", 201) in got
    assert ("patch", "", "configmaps", "", "default", "a", 200) in got
    assert ("list", "", "configmaps", "", "default", "", 200) in got
    assert ("delete", "", "configmaps", "", "default", "a", 200) in got
    assert ("list", "", "pods", "", "", "", 200) in got
    assert ("watch", "", "secrets", "", "default", "", 200) in got


def test_too_old_resource_version_is_410_gone(sim: Sandbox) -> None:
    sim.server.history_limit = 3
    core = kubernetes.client.CoreV1Api(sim.api_client())
    ns = "gone-test"
    core.create_namespace({"metadata": {"name": ns}})
    first = core.create_namespaced_secret(ns, {"metadata": {"name": "s0"}}).metadata.resource_version
    for i in range(1, 6):
        core.create_namespaced_secret(ns, {"metadata": {"name": f"s{i}"}})
    url = f"{sim.url}/api/v1/namespaces/{ns}/secrets?watch=true&resourceVersion={first}&timeoutSeconds=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        event = json.loads(resp.readline())
    assert (
        event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    )


def test_create_throughput(sim: Sandbox) -> None:
    """The operator benchmark needs 1000 jobs x several objects: measured through the real client."""
    core = kubernetes.client.CoreV1Api(sim.api_client())
    n = 1200
    # CPU time of this process, which runs both the client and the sandbox's server: the wall clock
    # measured the machine's load as much as the sandbox (57 creates/s at load 12 on 2 cores). Measured:
    # 1057 creates per CPU-second (325 per second) at load 8, 498 (48 per second) at load 12.
    t0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        body = {"metadata": {"name": f"cm-{i}", "labels": {"job": f"j{i % 50}"}}, "data": {"k": "v" * 100}}
        core.create_namespaced_config_map("default", body)
    rate, wall = n / (time.process_time() - t0), n / (time.perf_counter() - w0)
    print(
        f"sandbox create throughput: {rate:.0f} creates per CPU-second, {wall:.0f} per second"
        f" ({n} configmaps through the kubernetes client)"
    )
    assert rate > 150, f"{rate:.0f} creates per CPU-second"
    assert len(core.list_namespaced_config_map("default", label_selector="job=j7").items) == n // 50


def test_store_does_not_slow_down_as_it_grows(sim: Sandbox) -> None:
    """Indexed storage: the 6th thousand of creates costs what the 1st did (kmock's scans did not)."""
    server = sim.server
    info = server.resources[("", "configmaps")]
    server.create_object(server.resources[("", "namespaces")], "", {"metadata": {"name": "grow"}})
    times = []

    def create_batch(b: int) -> None:
        t0 = time.thread_time()  # CPU time of this thread: other threads of the process do not count
        for i in range(b * 1000, (b + 1) * 1000):
            server.create_object(info, "grow", {"metadata": {"name": f"cm-{i}", "labels": {"b": str(b)}}})
        times.append(time.thread_time() - t0)

    for b in range(6):
        server._in_loop(lambda b=b: create_batch(b))  # in the server's loop, as requests run
    # the fastest of the last batches vs the fastest of the first: robust to a busy machine
    assert min(times[-2:]) < 3 * min(times[:2]), f"seconds per 1000 creates: {times}"


def test_process_kubelet_ignores_devices_and_binds_to_the_node(tmp_path: Path) -> None:
    with Sandbox(tmp_path / "proc") as sb:
        core = kubernetes.client.CoreV1Api(sb.api_client())
        p = simple_pod("dev")
        p["spec"]["restartPolicy"] = "Never"
        p["spec"]["containers"][0]["resources"] = {"limits": {"huawei.com/Ascend910": "8"}}
        p["spec"]["containers"].append({"name": "sidecar", "image": "x", "command": ["true"]})
        core.create_namespaced_pod("default", p)
        wait_for(
            lambda: core.read_namespaced_pod("dev", "default").status.phase == "Succeeded",
            10,
            "dev Succeeded",
        )
        pod = core.read_namespaced_pod("dev", "default")
        assert pod.spec.node_name == "sandbox"
        assert pod.status.container_statuses[1].state.waiting.reason == "SandboxUnsupported"


def test_watch_of_a_client_that_hung_up_is_dropped(sim: Sandbox) -> None:
    key = ("", "configmaps")
    before = len(sim.server.watchers[key])
    resp = urllib.request.urlopen(f"{sim.url}/api/v1/namespaces/default/configmaps?watch=true", timeout=5)
    wait_for(lambda: len(sim.server.watchers[key]) == before + 1, 5, "the watch to register")
    resp.close()
    wait_for(
        lambda: len(sim.server.watchers[key]) == before, 5, "the idle watch of a closed connection to end"
    )
