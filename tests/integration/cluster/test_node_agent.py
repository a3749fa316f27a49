"""The node agent against the real control plane: registration, pods bound by the real scheduler,
their status through the real API, deletion with grace, `kubectl logs` through the API server's proxy,
and ServiceAccount tokens that work with the in-cluster config inside a pod process."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException
from mnv2_cluster.launcher import kubectl_binary
from support import pods
from support.cluster import wait_for
from support.pods import EXITS_ON_SIGTERM, field_env, gone, phase

pytestmark = pytest.mark.cluster
PROCESS_NODE = {"kubernetes.io/hostname": "node-process"}


def python_pod(name: str, code: str, node_selector: dict[str, str] | None = None, **container: Any) -> dict:
    """A pod on `node-process` unless `node_selector` says otherwise."""
    return pods.python_pod(name, code, app="na", node_selector=node_selector or PROCESS_NODE, **container)


@pytest.fixture
def ns(core: kubernetes.client.CoreV1Api, nodes: dict) -> Iterator[str]:
    name = f"na-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(
        "the default ServiceAccount",
        lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
    )
    yield name
    core.delete_namespace(name)


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def test_nodes_register_ready_with_capacity_labels_and_lease(core, coordination, nodes: dict) -> None:
    proc = core.read_node("node-process")
    assert {c.type: c.status for c in proc.status.conditions}["Ready"] == "True"
    assert proc.status.daemon_endpoints.kubelet_endpoint.port == nodes["node-process"].port
    assert {a.type: a.address for a in proc.status.addresses}["InternalIP"] == "127.0.0.1"
    assert proc.status.allocatable["pods"] == "110" and "huawei.com/Ascend910" not in proc.status.capacity
    ascend = core.read_node("node-ascend")
    assert ascend.metadata.labels["accelerator"] == "huawei-Ascend910"
    assert ascend.metadata.labels["accelerator-type"] == "module"
    assert ascend.status.capacity["huawei.com/Ascend910"] == "8"
    assert ascend.status.allocatable["huawei.com/Ascend910"] == "8"
    # Its own taint only (the node lifecycle controller's not-ready taint, if it came, is gone once Ready).
    taints = wait_for(
        "the Ascend node's taints to settle",
        lambda: (
            (t := [(x.key, x.effect) for x in core.read_node("node-ascend").spec.taints or []])
            and all(k.startswith("huawei.com/") for k, _ in t)
            and t
        ),
    )
    assert taints == [("huawei.com/Ascend910", "NoSchedule")]
    lease = coordination.read_namespaced_lease("node-process", "kube-node-lease")
    assert lease.spec.holder_identity == "node-process" and lease.spec.lease_duration_seconds == 40


def test_pod_is_scheduled_runs_and_fails_with_exit_code_and_message(core, ns: str, nodes) -> None:
    code = """
        import os, sys
        print("hello out", flush=True)
        print("hello err", file=sys.stderr, flush=True)
        open(os.environ["MSG_FILE"], "w").write("bad input: lr")
        sys.exit(3)
    """
    p = python_pod("fail", code, env=[{"name": "MSG_FILE", "value": "/dev/termination-log"}])
    del p["spec"]["nodeSelector"]  # the scheduler's choice: the Ascend node is tainted for pods without NPUs
    core.create_namespaced_pod(ns, p)
    wait_for("pod phase Failed", lambda: phase(core, ns, "fail") == "Failed", 60)
    pod = core.read_namespaced_pod("fail", ns)
    assert pod.spec.node_name == "node-process"
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason, term.message) == (3, "Error", "bad input: lr")
    assert pod.status.start_time is not None and pod.status.pod_ip == "127.0.0.1"
    conditions = {c.type: c for c in pod.status.conditions}
    assert conditions["PodScheduled"].status == "True"
    assert conditions["Ready"].status == "False" and conditions["Ready"].reason == "PodCompleted"
    logs = core.read_namespaced_pod_log("fail", ns)
    assert "hello out" in logs and "hello err" in logs


def gated_pod(name: str, before: str, after: str) -> dict:
    """A pod that runs `before`, waits until the test opens its gate (open_gate), then runs `after`."""
    code = (
        f"{before}\nimport os, time\nwhile not os.path.exists('/gate/open'):\n    time.sleep(0.05)\n{after}"
    )
    p = python_pod(name, code, volumeMounts=[{"name": "gate", "mountPath": "/gate"}])
    p["spec"]["volumes"] = [{"name": "gate", "emptyDir": {}}]
    return p


def open_gate(agent: Any, ns: str, name: str) -> None:
    (agent.pod_dir(ns, name) / "volumes" / "gate" / "open").touch()


def test_pod_succeeds_through_running_with_conditions(core, ns: str, nodes) -> None:
    core.create_namespaced_pod(ns, gated_pod("ok", "", "print('done')"))
    wait_for("pod phase Running", lambda: phase(core, ns, "ok") == "Running", 60)
    st = core.read_namespaced_pod("ok", ns).status
    assert st.container_statuses[0].state.running is not None and st.container_statuses[0].ready
    assert {c.type: c.status for c in st.conditions} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
        "ContainersReady": "True", "PodScheduled": "True",
    }  # fmt: skip
    open_gate(nodes["node-process"], ns, "ok")
    wait_for("pod phase Succeeded", lambda: phase(core, ns, "ok") == "Succeeded", 60)
    term = core.read_namespaced_pod("ok", ns).status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (0, "Completed")


def test_fallback_to_logs_on_error(core, ns: str) -> None:
    code = "import sys; print('line 1'); print('the real cause', flush=True); sys.exit(2)"
    core.create_namespaced_pod(ns, python_pod("fb", code, terminationMessagePolicy="FallbackToLogsOnError"))
    wait_for("pod phase Failed", lambda: phase(core, ns, "fb") == "Failed", 60)
    term = core.read_namespaced_pod("fb", ns).status.container_statuses[0].state.terminated
    assert term.message == "line 1\nthe real cause\n"


def test_deletion_sends_sigterm_then_final_delete(core, ns: str, nodes) -> None:
    core.create_namespaced_pod(ns, python_pod("term", EXITS_ON_SIGTERM, grace=20))
    wait_for("the process to start", lambda: "ready" in nodes["node-process"].logs(ns, "term"), 60)
    t0 = time.monotonic()
    core.delete_namespaced_pod("term", ns)
    wait_for("the pod to be removed", lambda: gone(core, ns, "term"), 30)
    assert time.monotonic() - t0 < 10  # the process exited on SIGTERM, well before the 20 s grace
    assert "got SIGTERM" in nodes["node-process"].logs(ns, "term")


def test_deletion_sigkills_after_grace_period(core, ns: str, nodes) -> None:
    code = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("pid", os.getpid(), flush=True)
        time.sleep(120)
    """
    core.create_namespaced_pod(ns, python_pod("stubborn", code, grace=2))
    wait_for("the process to start", lambda: "pid" in nodes["node-process"].logs(ns, "stubborn"), 60)
    pid = int(nodes["node-process"].logs(ns, "stubborn").split()[1])
    t0 = time.monotonic()
    core.delete_namespaced_pod("stubborn", ns)
    assert core.read_namespaced_pod("stubborn", ns).metadata.deletion_timestamp is not None
    time.sleep(1)
    assert _alive(pid)  # SIGTERM is ignored; the grace period is not over
    wait_for("the pod to be removed after its grace period", lambda: gone(core, ns, "stubborn"), 30)
    assert 2 <= time.monotonic() - t0 < 15
    assert not _alive(pid)


def test_kubectl_logs_through_the_api_server(local, kubectl, core, ns: str, nodes) -> None:
    before = "for i in range(5):\n    print('line', i, flush=True)"
    core.create_namespaced_pod(ns, gated_pod("talk", before, "print('last', flush=True)"))
    wait_for("the first lines", lambda: "line 4" in kubectl("logs", "-n", ns, "talk").stdout, 60)
    assert kubectl("logs", "-n", ns, "talk", "--tail=2").stdout == "line 3\nline 4\n"
    assert kubectl("logs", "-n", ns, "talk", "--limit-bytes=7").stdout == "line 0\n"
    # Followed: what the process writes later arrives, and the stream ends when the process does.
    follow = subprocess.Popen(
        [kubectl_binary(), "--kubeconfig", str(local.kubeconfig), "logs", "-n", ns, "talk", "-f"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follow.stdout is not None and follow.stdout.readline() == "line 0\n"
    open_gate(nodes["node-process"], ns, "talk")
    out = follow.stdout.read()  # to the end of the stream (pytest-timeout stops a hang)
    assert out == "line 1\nline 2\nline 3\nline 4\nlast\n" and follow.wait(10) == 0


def test_previous_container_logs_after_restart(kubectl, core, ns: str) -> None:
    core.create_namespaced_pod(ns, pods.fails_once_pod("retry", app="na", node_selector=PROCESS_NODE))
    wait_for("the second attempt to succeed", lambda: phase(core, ns, "retry") == "Succeeded", 60)
    cs = core.read_namespaced_pod("retry", ns).status.container_statuses[0]
    assert cs.restart_count == 1 and cs.last_state.terminated.exit_code == 5
    assert kubectl("logs", "-n", ns, "retry").stdout == "attempt 1\n"
    assert kubectl("logs", "-n", ns, "retry", "--previous").stdout == "attempt 0\n"


def test_configmap_secret_env_and_volumes_read_through_the_node_authorizer(core, ns: str, nodes) -> None:
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"config.yaml": "lr: 0.1\n", "mode": "fast"}}
    )
    core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"password": "s3cret"}})
    code = """
        import os
        print("CFG", open("/etc/cfg/config.yaml").read().strip())
        print("SEC", open("/etc/sec/password").read())
        for k in ("MY_NAME", "MY_NS", "MY_NODE", "MODE", "PASSWORD", "HOSTNAME"):
            print(k, os.environ.get(k))
    """
    p = python_pod(
        "envpod",
        code,
        env=[
            *field_env(MY_NAME="metadata.name", MY_NS="metadata.namespace", MY_NODE="spec.nodeName"),
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
        ],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "sec", "mountPath": "/etc/sec"}],
    )
    p["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "sec", "secret": {"secretName": "sec"}},
    ]
    core.create_namespaced_pod(ns, p)
    wait_for("envpod to end", lambda: phase(core, ns, "envpod") in ("Succeeded", "Failed"), 60)
    logs = nodes["node-process"].logs(ns, "envpod")
    assert phase(core, ns, "envpod") == "Succeeded", logs
    lines = dict(ln.split(" ", 1) for ln in logs.splitlines() if " " in ln)
    assert (lines["CFG"], lines["SEC"], lines["MODE"], lines["PASSWORD"]) == (
        "lr: 0.1",
        "s3cret",
        "fast",
        "s3cret",
    )
    assert (lines["MY_NAME"], lines["MY_NS"], lines["MY_NODE"]) == ("envpod", ns, "node-process")


def test_service_account_token_works_with_the_in_cluster_config(core, rbac, ns: str, nodes) -> None:
    core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "visible"}, "data": {"k": "v"}})
    rbac.create_namespaced_role(ns, {
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["visible"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    })  # fmt: skip
    code = f"""
        import os
        from kubernetes import client, config
        config.load_incluster_config()
        api = client.CoreV1Api()
        print("VALUE", api.read_namespaced_config_map("visible", "{ns}").data["k"], flush=True)
        try:
            api.list_namespaced_secret("{ns}")
            print("SECRETS listed", flush=True)
        except client.ApiException as e:
            print("SECRETS", e.status, flush=True)
        print("KUBECONFIG", os.environ.get("KUBECONFIG"), flush=True)
    """
    p = python_pod("incluster", code)
    p["spec"]["serviceAccountName"] = "reader"
    core.create_namespaced_pod(ns, p)
    wait_for("the pod to end", lambda: phase(core, ns, "incluster") in ("Succeeded", "Failed"), 60)
    logs = nodes["node-process"].logs(ns, "incluster")
    assert phase(core, ns, "incluster") == "Succeeded", logs
    assert "VALUE v" in logs and "SECRETS 403" in logs and "KUBECONFIG None" in logs
    mounted = core.read_namespaced_pod("incluster", ns).spec.containers[0].volume_mounts
    assert any(m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounted)


def test_simulated_node_runs_device_pods_ended_by_finish(core, ns: str, nodes) -> None:
    p = python_pod("npu", "unused", node_selector={"accelerator": "huawei-Ascend910"},
                   resources={"requests": {"huawei.com/Ascend910": "8"}, "limits": {"huawei.com/Ascend910": "8"}})  # fmt: skip
    core.create_namespaced_pod(ns, p)
    wait_for("pod phase Running", lambda: phase(core, ns, "npu") == "Running", 60)
    npu = core.read_namespaced_pod("npu", ns)
    assert npu.spec.node_name == "node-ascend"
    # Added by the ExtendedResourceToleration admission plugin for the device request.
    assert any(t.key == "huawei.com/Ascend910" and t.operator == "Exists" for t in npu.spec.tolerations)
    # All 8 devices are taken: a second pod asking for one stays Pending (the real scheduler counts them).
    p2 = python_pod("npu2", "unused", node_selector={"accelerator": "huawei-Ascend910"},
                    resources={"limits": {"huawei.com/Ascend910": "1"}})  # fmt: skip
    core.create_namespaced_pod(ns, p2)
    with pytest.raises(LookupError, match="no pod .*/npu2 runs on node node-ascend"):
        nodes["node-ascend"].finish(ns, "npu2", exit_code=0, wait=1.0)  # not bound: no room for it
    nodes["node-ascend"].finish(ns, "npu", exit_code=1, message="hccl timeout")
    wait_for("pod phase Failed", lambda: phase(core, ns, "npu") == "Failed", 30)
    term = core.read_namespaced_pod("npu", ns).status.container_statuses[0].state.terminated
    assert (term.exit_code, term.message) == (1, "hccl timeout")
    wait_for(
        "the second pod to run once the devices are free", lambda: phase(core, ns, "npu2") == "Running", 60
    )
    quick = python_pod("quick", "unused", node_selector={"accelerator": "huawei-Ascend910"},
                       resources={"limits": {"huawei.com/Ascend910": "1"}})  # fmt: skip
    core.create_namespaced_pod(ns, quick)
    nodes["node-ascend"].finish(ns, "quick", exit_code=0)  # right after the create: waits to see it bound
    wait_for("pod phase Succeeded", lambda: phase(core, ns, "quick") == "Succeeded", 30)
    # Without a finish(): pods end by themselves after default_outcome's seconds, with its exit code.
    nodes["node-ascend"].default_outcome = (0.5, 2)
    try:
        auto = python_pod("auto", "unused", node_selector={"accelerator": "huawei-Ascend910"},
                          resources={"limits": {"huawei.com/Ascend910": "1"}})  # fmt: skip
        core.create_namespaced_pod(ns, auto)
        wait_for("pod phase Failed", lambda: phase(core, ns, "auto") == "Failed", 30)
    finally:
        nodes["node-ascend"].default_outcome = None
    assert core.read_namespaced_pod("auto", ns).status.container_statuses[0].state.terminated.exit_code == 2


def test_pods_of_one_service_reach_each_other_by_name_across_nodes(core, ns: str, nodes) -> None:
    """No cluster DNS or pod network: `<pod>.<service>.<ns>.svc` resolves to the loopback and pods of
    one Service share the local port standing for a containerPort, so msrun's ranks meet."""
    server = """
        import socket, sys
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(sys.argv[1])))
        s.listen()
        print("listening", flush=True)
        conn, _ = s.accept()
        conn.sendall(b"hello from rank 0")
        conn.close()
    """
    client = """
        import socket, sys, time
        for _ in range(600):
            try:
                c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        print("got", c.recv(100).decode(), flush=True)
    """
    ports = [{"name": "master", "containerPort": 8118}]
    a = python_pod("rank-0", server, args=["8118"], ports=ports)
    b = python_pod("rank-1", client, args=[f"rank-0.grp.{ns}.svc", "8118"], ports=ports,
                   node_selector={"kubernetes.io/hostname": "node-process-2"})  # fmt: skip
    for p, host in ((a, "rank-0"), (b, "rank-1")):
        p["spec"]["hostname"], p["spec"]["subdomain"] = host, "grp"
    core.create_namespaced_pod(ns, a)
    core.create_namespaced_pod(ns, b)
    wait_for(
        "both pods to end",
        lambda: {phase(core, ns, n) for n in ("rank-0", "rank-1")} <= {"Succeeded", "Failed"},
        60,
    )
    logs = nodes["node-process-2"].logs(ns, "rank-1")
    assert phase(core, ns, "rank-1") == "Succeeded" and "got hello from rank 0" in logs, logs
    assert phase(core, ns, "rank-0") == "Succeeded", nodes["node-process"].logs(ns, "rank-0")


def test_kill_fails_a_pod_with_137(core, ns: str, nodes) -> None:
    core.create_namespaced_pod(
        ns, python_pod("victim", "import time; print('up', flush=True); time.sleep(120)")
    )
    wait_for("the process to start", lambda: "up" in nodes["node-process"].logs(ns, "victim"), 60)
    nodes["node-process"].kill(ns, "victim")
    wait_for("pod phase Failed", lambda: phase(core, ns, "victim") == "Failed", 30)
    term = core.read_namespaced_pod("victim", ns).status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (137, "Error")


def test_node_is_not_tainted_after_the_monitor_grace_period(core, coordination, nodes) -> None:
    """Without lease renewals the node lifecycle controller taints a node unreachable after 50 s (seen:
    54 s after its agent stopped); these nodes are older than that and still untainted."""
    agent = nodes["node-process"]
    age = time.monotonic() - (agent.registered_at or 0)
    time.sleep(max(0.0, 60 - age))
    for name in nodes:
        lease = coordination.read_namespaced_lease(name, "kube-node-lease")
        renewed = dt.datetime.now(dt.UTC) - lease.spec.renew_time
        assert renewed.total_seconds() < agent.lease_renew_seconds + 5, f"{name}: lease renewed {renewed} ago"
        node = core.read_node(name)
        taints = [t.key for t in node.spec.taints or []]
        assert "node.kubernetes.io/unreachable" not in taints and "node.kubernetes.io/not-ready" not in taints
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
