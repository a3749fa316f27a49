"""Pods run by the kubelet: phases, exit codes, logs, env and volumes, graceful deletion.

Pods name a real image so the same tests run on a real cluster; the node agent ignores images and runs
the command as a local process. Without a Ready Node these tests skip, saying so.
"""

from __future__ import annotations

import os
import time

import kubernetes
import pytest
from kubernetes.client import ApiException
from support.pods import EXITS_ON_SIGTERM, fails_once_pod, field_env, gone, phase, python_pod

from contract.kit import Cluster, wait_for

pytestmark = pytest.mark.cluster


def pod(name: str, code: str, restart: str = "Never", grace: int | None = None, **container: object) -> dict:
    return python_pod(name, code, app="ct", restart=restart, grace=grace, **container)


def log_of(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> str:
    """The pod's log; '' while its container has not started (the API server answers 400 then) and
    when it printed nothing yet (the client reads an empty body as None)."""
    try:
        return core.read_namespaced_pod_log(name, ns) or ""
    except ApiException as e:
        if e.status == 400 and "is waiting to start" in e.body:
            return ""
        raise


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


@pytest.fixture(autouse=True)
def _node(cluster: Cluster) -> None:
    cluster.need_node()


def test_pod_runs_fails_with_exit_code_and_logs(cluster: Cluster, core, ns: str) -> None:
    core.create_namespaced_pod(
        ns, pod("fail", "import sys; print('hello out'); print('hello err', file=sys.stderr); sys.exit(3)")
    )
    wait_for(lambda: phase(core, ns, "fail") == "Failed", 60, "pod phase Failed")
    st = core.read_namespaced_pod("fail", ns).status
    term = st.container_statuses[0].state.terminated
    assert term.exit_code == 3 and term.reason == "Error"
    assert st.start_time is not None
    logs = cluster.kubectl("logs", "-n", ns, "fail").stdout
    assert "hello out" in logs and "hello err" in logs
    assert "hello out" in log_of(core, ns, "fail")
    assert "Error" in cluster.kubectl("get", "pod", "-n", ns, "fail").stdout


def test_log_of_an_unscheduled_pod_is_204_no_content(core, ns: str) -> None:
    """No node, no log: 204 with an empty body (which the client returns as None), not an error."""
    body = pod("nowhere", "print('never')")
    body["spec"]["nodeSelector"] = {"contract.mnv2.dev/no-such-node": "true"}
    core.create_namespaced_pod(ns, body)
    got = core.read_namespaced_pod_log("nowhere", ns, _preload_content=False)
    assert (got.status, got.data) == (204, b"")
    assert core.read_namespaced_pod_log("nowhere", ns) is None


def test_pod_succeeds_and_goes_through_running(core, ns: str) -> None:
    created = core.create_namespaced_pod(ns, pod("ok", "import time; time.sleep(1.5); print('done')"))
    # Every status the pod goes through, from a watch: polling could miss the short Running phase on
    # a busy machine.
    seen = []
    w = kubernetes.watch.Watch()
    for event in w.stream(
        core.list_namespaced_pod,
        ns,
        field_selector="metadata.name=ok",
        resource_version=created.metadata.resource_version,
        timeout_seconds=120,
    ):
        seen.append(event["object"].status)
        if seen[-1].phase in ("Succeeded", "Failed"):
            w.stop()
    phases = [st.phase for st in seen]
    assert phases[-1] == "Succeeded", phases

    def ready_and_running(st: kubernetes.client.V1PodStatus) -> bool:
        return bool(
            st.phase == "Running"
            and st.pod_ip
            and st.container_statuses[0].state.running is not None
            and any(c.type == "Ready" and c.status == "True" for c in st.conditions)
        )

    assert any(ready_and_running(st) for st in seen), phases
    term = seen[-1].container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.reason == "Completed"


def test_pod_env_downward_api_and_volumes(cluster: Cluster, core, ns: str) -> None:
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"config.yaml": "lr: 0.1\n", "mode": "fast"}}
    )
    code = """
        import os
        print("CFG", open("/etc/ct/config.yaml").read().strip())
        os.makedirs("/scratch/sub", exist_ok=True)
        open("/scratch/sub/f", "w").write("x")
        print("SCRATCH", os.listdir("/scratch/sub"))
        for k in ("MY_NAME", "MY_NS", "MY_APP", "MY_IP", "MODE", "HOSTNAME", "OUT_DIR"):
            print(k, os.environ.get(k))
    """
    p = pod(
        "envpod",
        code,
        env=[
            *field_env(
                MY_NAME="metadata.name",
                MY_NS="metadata.namespace",
                MY_APP="metadata.labels['app']",
                MY_IP="status.podIP",
            ),
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "OUT_DIR", "value": "/scratch/out"},
        ],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/ct"}, {"name": "scratch", "mountPath": "/scratch"}],
    )
    p["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    core.create_namespaced_pod(ns, p)
    wait_for(lambda: phase(core, ns, "envpod") in ("Succeeded", "Failed"), 60, "envpod to end")
    logs = log_of(core, ns, "envpod")
    assert phase(core, ns, "envpod") == "Succeeded", logs
    lines = dict(ln.split(" ", 1) for ln in logs.splitlines() if " " in ln)
    assert lines["CFG"] == "lr: 0.1"
    assert lines["SCRATCH"] == "['f']"
    assert lines["MY_NAME"] == "envpod" and lines["HOSTNAME"] == "envpod"
    assert lines["MY_NS"] == ns and lines["MY_APP"] == "ct" and lines["MODE"] == "fast"
    assert lines["MY_IP"] not in ("", "None")


def test_deleting_pod_sends_sigterm_then_removes_it(cluster: Cluster, core, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("term", EXITS_ON_SIGTERM, grace=20))
    wait_for(lambda: "ready" in log_of(core, ns, "term"), 60, "the process to start")
    t0 = time.monotonic()
    core.delete_namespaced_pod("term", ns)
    wait_for(lambda: gone(core, ns, "term"), 30, "the pod to be removed")
    assert time.monotonic() - t0 < 15  # the process exited on SIGTERM, well before the 20 s grace


def test_deleting_pod_sigkills_after_grace_period(cluster: Cluster, core, ns: str) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(120)
    """
    core.create_namespaced_pod(ns, pod("stubborn", code, grace=1))
    wait_for(lambda: "ready" in log_of(core, ns, "stubborn"), 60, "the process to start")
    core.delete_namespaced_pod("stubborn", ns)
    assert core.read_namespaced_pod("stubborn", ns).metadata.deletion_timestamp is not None
    wait_for(lambda: gone(core, ns, "stubborn"), 30, "the pod to be removed after its grace period")


def test_kill_fails_pod_with_137(cluster: Cluster, core, ns: str) -> None:
    node = cluster.need_node_agent("NodeAgent.kill simulates a node fault")
    core.create_namespaced_pod(ns, pod("victim", "import time; print('up', flush=True); time.sleep(120)"))
    wait_for(lambda: "up" in log_of(core, ns, "victim"), 60, "the process to start")
    node.kill(ns, "victim")
    wait_for(lambda: phase(core, ns, "victim") == "Failed", 10, "pod phase Failed")
    assert (
        core.read_namespaced_pod("victim", ns).status.container_statuses[0].state.terminated.exit_code == 137
    )


def test_restart_policy_on_failure_restarts(cluster: Cluster, core, ns: str) -> None:
    cluster.need_node_agent("a real kubelet's back-off (10 s, doubling) makes this take minutes")
    core.create_namespaced_pod(ns, fails_once_pod("retry", app="ct"))
    wait_for(lambda: phase(core, ns, "retry") == "Succeeded", 30, "pod to succeed on its second attempt")
    cs = core.read_namespaced_pod("retry", ns).status.container_statuses[0]
    assert cs.restart_count == 1 and cs.last_state.terminated.exit_code == 5


def bound_claim(core: kubernetes.client.CoreV1Api, ns: str, claim: str) -> None:
    """A PersistentVolumeClaim bound to a pre-made PersistentVolume (no provisioner, no StorageClass):
    the controller manager's volume binder binds them; the scheduler places no pod on an unbound claim."""
    volume = f"{ns}-{claim}"
    core.create_persistent_volume(
        {
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "hostPath": {"path": f"/mnt/{volume}"},
                "claimRef": {"namespace": ns, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(claim, ns).status.phase == "Bound",
        60,
        f"claim {claim} to be Bound",
    )


def test_pod_with_a_missing_claim_is_unschedulable(core, ns: str) -> None:
    p = pod("noclaim", "print('never')")
    p["spec"]["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": "missing"}}]
    core.create_namespaced_pod(ns, p)

    def unschedulable():
        conditions = core.read_namespaced_pod("noclaim", ns).status.conditions or []
        return next((c for c in conditions if c.type == "PodScheduled" and c.status == "False"), None)

    condition = wait_for(unschedulable, 30, "the scheduler to report the pod unschedulable")
    assert condition.reason == "Unschedulable"
    assert 'persistentvolumeclaim "missing" not found' in condition.message
    assert phase(core, ns, "noclaim") == "Pending"


def test_pvc_and_hostpath_map_to_state_dir(cluster: Cluster, core, ns: str) -> None:
    node = cluster.need_node_agent("maps PVC and hostPath volumes to the node agent's folders")
    bound_claim(core, ns, "mydata")
    code = "open('/data/sub/hello.txt', 'w').write('hi'); open('/host/x.txt', 'w').write('h')"
    p = pod(
        "vols",
        code,
        volumeMounts=[
            {"name": "d", "mountPath": "/data", "subPath": "sub-root"},
            {"name": "h", "mountPath": "/host"},
        ],
    )
    p["spec"]["containers"][0]["command"][-1] = "import os; os.makedirs('/data/sub', exist_ok=True); " + code
    p["spec"]["volumes"] = [
        {"name": "d", "persistentVolumeClaim": {"claimName": "mydata"}},
        {"name": "h", "hostPath": {"path": "/mnt/host"}},
    ]
    core.create_namespaced_pod(ns, p)
    wait_for(lambda: phase(core, ns, "vols") in ("Succeeded", "Failed"), 30, "pod to end")
    assert phase(core, ns, "vols") == "Succeeded", node.logs(ns, "vols")
    assert (node.volumes_dir / "pvc/mydata/sub-root/sub/hello.txt").read_text() == "hi"
    assert (node.volumes_dir / "hostpath/mnt/host/x.txt").read_text() == "h"


def test_pod_reaches_the_api_as_its_service_account(cluster: Cluster, core, ns: str) -> None:
    """A pod's process talks to the API server with its ServiceAccount's token (in-cluster config)."""
    code = """
        import kubernetes
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # where the agent cannot bind-mount the token folder
        review = kubernetes.client.AuthenticationV1Api().create_self_subject_review({})
        print("USER", review.status.user_info.username, flush=True)
    """
    core.create_namespaced_pod(ns, pod("whoami", code))
    wait_for(lambda: phase(core, ns, "whoami") in ("Succeeded", "Failed"), 60, "pod to end")
    logs = log_of(core, ns, "whoami")
    assert phase(core, ns, "whoami") == "Succeeded", logs
    assert f"USER system:serviceaccount:{ns}:default" in logs


def test_pod_without_command_reports_why(cluster: Cluster, core, ns: str) -> None:
    cluster.need_node_agent("the node agent runs no images: it reports a missing command")
    p = pod("nocmd", "")
    del p["spec"]["containers"][0]["command"]
    core.create_namespaced_pod(ns, p)

    def waiting_reason() -> str | None:
        cs = core.read_namespaced_pod("nocmd", ns).status.container_statuses
        return cs[0].state.waiting.reason if cs and cs[0].state.waiting else None

    assert wait_for(lambda: waiting_reason() == "CreateContainerError", 10, "CreateContainerError")
    msg = core.read_namespaced_pod("nocmd", ns).status.container_statuses[0].state.waiting.message
    assert "command" in msg


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


SPAWN = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    print("child", child.pid, flush=True)
    time.sleep({sleep})
"""


def _child_pid(node, ns: str, name: str) -> int:
    line = wait_for(
        lambda: next((ln for ln in node.logs(ns, name).splitlines() if ln.startswith("child ")), None),
        30,
        "the child's pid",
    )
    return int(line.split()[1])


def test_kill_reaches_processes_in_other_sessions(cluster: Cluster, core, ns: str) -> None:
    """msrun starts its workers with setsid: a node fault must take them down with the pod."""
    node = cluster.need_node_agent("NodeAgent.kill simulates a node fault")
    core.create_namespaced_pod(ns, pod("tree", SPAWN.format(sleep=120)))
    child = _child_pid(node, ns, "tree")
    assert _alive(child)
    node.kill(ns, "tree")
    wait_for(lambda: not _alive(child), 10, "the setsid'd child to die with the pod")
    wait_for(lambda: phase(core, ns, "tree") == "Failed", 10, "pod phase Failed")


def test_container_exit_ends_its_other_processes(cluster: Cluster, core, ns: str) -> None:
    node = cluster.need_node_agent("inspects local processes")
    core.create_namespaced_pod(ns, pod("leaver", SPAWN.format(sleep=0)))
    child = _child_pid(node, ns, "leaver")
    wait_for(lambda: phase(core, ns, "leaver") == "Succeeded", 30, "pod phase Succeeded")
    wait_for(lambda: not _alive(child), 10, "the child to end with its container")


def test_declared_container_ports_get_their_own_local_port(cluster: Cluster, core, ns: str) -> None:
    node = cluster.need_node_agent("its pods share the host network, so it remaps declared ports")
    code = "import sys; print(sys.argv[1])"
    for name in ("p1", "p2"):
        body = pod(name, code, ports=[{"containerPort": 8118, "name": "msrun"}])
        body["spec"]["containers"][0]["args"] = ["--master_port=8118"]
        core.create_namespaced_pod(ns, body)
    for name in ("p1", "p2"):
        wait_for(lambda n=name: phase(core, ns, n) == "Succeeded", 30, f"pod {name} to succeed")
    seen = {node.logs(ns, name).strip() for name in ("p1", "p2")}
    assert len(seen) == 2 and "--master_port=8118" not in seen, seen


def test_termination_message_from_file_or_log_tail(cluster: Cluster, core, ns: str) -> None:
    """state.terminated.message: the file's content (<= 4096 bytes); with FallbackToLogsOnError and
    no file content on a non-zero exit, the log's last 80 lines (<= 2048 bytes); else none."""
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    noisy = "import sys\nfor i in range(200): print(f'line {i:03d}', flush=True)\nsys.exit(3)"
    pods = {
        # the default path, named through an env variable as the trainer's pod does
        "msg-file": pod(
            "msg-file",
            "import os, sys\nopen(os.environ['WHY'], 'w').write('bad data_dir: /data/train missing\\n')\nsys.exit(2)",
            env=[{"name": "WHY", "value": "/dev/termination-log"}],
            **fallback,
        ),
        "msg-custom": pod(
            "msg-custom",
            "import sys\nopen('/tmp/why', 'w').write('x' * 5000)\nprint('log')\nsys.exit(1)",
            terminationMessagePath="/tmp/why",
        ),
        "msg-tail": pod("msg-tail", noisy, **fallback),
        "msg-none": pod("msg-none", noisy),  # policy File (the default): the log is not used
        "msg-ok": pod("msg-ok", "print('fine')", **fallback),
    }
    for body in pods.values():
        core.create_namespaced_pod(ns, body)

    def terminated(name: str):
        cs = core.read_namespaced_pod(name, ns).status.container_statuses or []
        return cs[0].state.terminated if cs and cs[0].state and cs[0].state.terminated else None

    wait_for(lambda: all(terminated(n) for n in pods), 60, "every pod to end")
    assert terminated("msg-file").message == "bad data_dir: /data/train missing\n"
    assert terminated("msg-custom").message == "x" * 4096
    tail = terminated("msg-tail").message
    assert tail.endswith("line 199\n") and len(tail.encode()) <= 2048
    assert len(tail.splitlines()) <= 80 and "line 119" not in tail
    assert terminated("msg-none").message is None
    assert terminated("msg-ok").message is None and terminated("msg-ok").exit_code == 0


def test_projected_volume_with_token_config_and_namespace(cluster: Cluster, core, ns: str) -> None:
    # The shape of the training pods' rank-0 credentials volume (render.py): no automatic token, one
    # projected volume with a token source, a ConfigMap item (optional), and the namespace.
    core.create_namespaced_config_map(ns, {"metadata": {"name": "ca"}, "data": {"ca.crt": "CERT"}})
    code = """
        import os
        d = "/var/run/secrets/mnv2"
        print("NS", open(d + "/namespace").read())
        print("CA", open(d + "/ca.crt").read())
        print("MISSING", os.path.exists(d + "/absent"))
        print("AUTO", os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"))
    """
    p = pod("projected", code, volumeMounts=[{"name": "creds", "mountPath": "/var/run/secrets/mnv2"}])
    p["spec"]["automountServiceAccountToken"] = False
    p["spec"]["volumes"] = [
        {
            "name": "creds",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                    {"configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {
                        "configMap": {
                            "name": "absent",
                            "optional": True,
                            "items": [{"key": "k", "path": "absent"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ]
            },
        }
    ]
    core.create_namespaced_pod(ns, p)
    wait_for(lambda: phase(core, ns, "projected") in ("Succeeded", "Failed"), 60, "projected to end")
    logs = log_of(core, ns, "projected")
    assert phase(core, ns, "projected") == "Succeeded", logs
    lines = dict(ln.split(" ", 1) for ln in logs.splitlines() if " " in ln)
    assert lines["NS"] == ns and lines["CA"] == "CERT" and lines["MISSING"] == "False"
    assert lines["AUTO"] == "False"  # automountServiceAccountToken: false
