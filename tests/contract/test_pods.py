"""Pods run by the kubelet: phases, exit codes, logs, env and volumes, graceful deletion, what a pod's
status says when its process cannot start or is killed on the node.

Pods run busybox (`contract.kit.BUSYBOX`), so the same tests run on any cluster. Without a Ready Node
these tests skip, saying so; those that reach into the node (its processes, its files) skip against a
--kubeconfig cluster.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiException
from mnv2_cluster.realnode import container_pids
from support.pods import field_env, gone, phase

from contract.kit import Cluster, busybox_pod, wait_for

pytestmark = pytest.mark.cluster

pod = busybox_pod

#: Says `ready`, then on SIGTERM says `got SIGTERM` and exits 0 (graceful deletion). `wait` returns as
#: soon as a trapped signal arrives; a foreground `sleep` would delay the trap until it ends.
EXITS_ON_SIGTERM = """
    trap 'echo got SIGTERM; exit 0' TERM
    echo ready
    sleep 120 &
    wait $!
"""


def log_of(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> str:
    """The pod's log; '' while its container has not started or has no status yet (the API server
    answers 400 then), while its node does not know the pod yet (the kubelet answers 404 for
    `pods/log`), and when it printed nothing yet (the client reads an empty body as None)."""
    try:
        return core.read_namespaced_pod_log(name, ns) or ""
    except ApiException as e:
        if e.status == 400 and ("is waiting to start" in e.body or "is not available" in e.body):
            return ""
        if e.status == 404 and '"kind":"pods/log"' in e.body:
            return ""
        raise


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


@pytest.fixture(autouse=True)
def _node(cluster: Cluster) -> None:
    cluster.need_node()


def test_pod_runs_fails_with_exit_code_and_logs(cluster: Cluster, core, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("fail", "echo hello out; echo hello err >&2; exit 3"))
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
    body = pod("nowhere", "echo never")
    body["spec"]["nodeSelector"] = {"contract.mnv2.dev/no-such-node": "true"}
    core.create_namespaced_pod(ns, body)
    got = core.read_namespaced_pod_log("nowhere", ns, _preload_content=False)
    assert (got.status, got.data) == (204, b"")
    assert core.read_namespaced_pod_log("nowhere", ns) is None


def test_pod_succeeds_and_goes_through_running(core, ns: str) -> None:
    created = core.create_namespaced_pod(ns, pod("ok", "sleep 2; echo done"))
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
    script = """
        echo CFG $(cat /etc/ct/config.yaml)
        mkdir -p /scratch/sub && echo x > /scratch/sub/f
        echo SCRATCH $(ls /scratch/sub)
        for k in MY_NAME MY_NS MY_APP MY_IP MODE HOSTNAME OUT_DIR; do eval "echo $k \\${$k}"; done
    """
    p = pod(
        "envpod",
        script,
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
    assert lines["SCRATCH"] == "f"
    assert lines["MY_NAME"] == "envpod" and lines["HOSTNAME"] == "envpod"
    assert lines["MY_NS"] == ns and lines["MY_APP"] == "ct" and lines["MODE"] == "fast"
    assert lines["OUT_DIR"] == "/scratch/out"
    assert lines["MY_IP"] == core.read_namespaced_pod("envpod", ns).status.pod_ip


def test_deleting_pod_sends_sigterm_then_removes_it(cluster: Cluster, core, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("term", EXITS_ON_SIGTERM, grace=20))
    wait_for(lambda: "ready" in log_of(core, ns, "term"), 60, "the process to start")
    t0 = time.monotonic()
    core.delete_namespaced_pod("term", ns)
    wait_for(lambda: gone(core, ns, "term"), 30, "the pod to be removed")
    assert time.monotonic() - t0 < 15  # the process exited on SIGTERM, well before the 20 s grace


def test_deleting_pod_sigkills_after_grace_period(cluster: Cluster, core, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("stubborn", "trap '' TERM; echo ready; sleep 120", grace=1))
    wait_for(lambda: "ready" in log_of(core, ns, "stubborn"), 60, "the process to start")
    core.delete_namespaced_pod("stubborn", ns)
    assert core.read_namespaced_pod("stubborn", ns).metadata.deletion_timestamp is not None
    wait_for(lambda: gone(core, ns, "stubborn"), 30, "the pod to be removed after its grace period")


def test_restart_policy_on_failure_restarts(cluster: Cluster, core, ns: str) -> None:
    """Exits 5 on its first run and 0 on the next: it counts its runs in the emptyDir volume, which
    outlives a container's restart; the status keeps the first run as `lastState`."""
    script = """
        n=$(ls /work | wc -l)
        touch /work/attempt-$n
        echo attempt $n
        [ $n -ge 1 ] || exit 5
    """
    body = pod("retry", script, restart="OnFailure", volumeMounts=[{"name": "w", "mountPath": "/work"}])
    body["spec"]["volumes"] = [{"name": "w", "emptyDir": {}}]
    core.create_namespaced_pod(ns, body)
    wait_for(lambda: phase(core, ns, "retry") == "Succeeded", 60, "pod to succeed on its second attempt")
    cs = core.read_namespaced_pod("retry", ns).status.container_statuses[0]
    assert cs.restart_count == 1 and cs.last_state.terminated.exit_code == 5


def bound_claim(core: kubernetes.client.CoreV1Api, ns: str, claim: str, path: Path) -> None:
    """A PersistentVolumeClaim bound to a pre-made hostPath PersistentVolume at `path` (no provisioner,
    no StorageClass): the controller manager's volume binder binds them; the scheduler places no pod on
    an unbound claim."""
    volume = f"{ns}-{claim}"
    core.create_persistent_volume(
        {
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "hostPath": {"path": str(path)},
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
    p = pod("noclaim", "echo never")
    p["spec"]["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": "missing"}}]
    core.create_namespaced_pod(ns, p)

    def unschedulable():
        conditions = core.read_namespaced_pod("noclaim", ns).status.conditions or []
        return next((c for c in conditions if c.type == "PodScheduled" and c.status == "False"), None)

    condition = wait_for(unschedulable, 30, "the scheduler to report the pod unschedulable")
    assert condition.reason == "Unschedulable"
    assert 'persistentvolumeclaim "missing" not found' in condition.message
    assert phase(core, ns, "noclaim") == "Pending"


def test_claim_subpath_and_hostpath_write_to_the_node(
    cluster: Cluster, core, ns: str, tmp_path: Path
) -> None:
    """A claim bound to a hostPath volume, mounted at a subPath (created on first use), and a hostPath
    volume: what the container writes lands in the node's folders."""
    cluster.need_local_node("reads the volumes' files on the node")
    (tmp_path / "pv").mkdir()
    (tmp_path / "host").mkdir()
    bound_claim(core, ns, "mydata", tmp_path / "pv")
    p = pod(
        "vols",
        "mkdir -p /data/sub && printf hi > /data/sub/hello.txt && printf h > /host/x.txt",
        volumeMounts=[
            {"name": "d", "mountPath": "/data", "subPath": "sub-root"},
            {"name": "h", "mountPath": "/host"},
        ],
    )
    p["spec"]["volumes"] = [
        {"name": "d", "persistentVolumeClaim": {"claimName": "mydata"}},
        {"name": "h", "hostPath": {"path": str(tmp_path / "host"), "type": "Directory"}},
    ]
    core.create_namespaced_pod(ns, p)
    wait_for(lambda: phase(core, ns, "vols") in ("Succeeded", "Failed"), 60, "pod to end")
    assert phase(core, ns, "vols") == "Succeeded", log_of(core, ns, "vols")
    assert (tmp_path / "pv/sub-root/sub/hello.txt").read_text() == "hi"
    assert (tmp_path / "host/x.txt").read_text() == "h"


def test_pod_reaches_the_api_as_its_service_account(cluster: Cluster, core, ns: str) -> None:
    """What a pod's in-cluster client uses: the API server answers at KUBERNETES_SERVICE_HOST and
    _PORT, the mounted ca.crt is the cluster's CA, and the mounted token authenticates as the pod's
    ServiceAccount (checked from here: busybox speaks no TLS the API server accepts)."""
    script = """
        sa=/var/run/secrets/kubernetes.io/serviceaccount
        echo TOKEN $(cat $sa/token)
        cat $sa/ca.crt
        printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT
    """
    core.create_namespaced_pod(ns, pod("whoami", script))
    wait_for(lambda: phase(core, ns, "whoami") in ("Succeeded", "Failed"), 60, "pod to end")
    logs = log_of(core, ns, "whoami")
    assert phase(core, ns, "whoami") == "Succeeded", logs
    assert "Client sent an HTTP request to an HTTPS server" in logs  # Go's TLS server, at the service
    assert core.read_namespaced_config_map("kube-root-ca.crt", ns).data["ca.crt"].strip() in logs
    token = next(ln.split(" ", 1)[1] for ln in logs.splitlines() if ln.startswith("TOKEN "))
    admin = cluster.api().configuration
    config = kubernetes.client.Configuration()
    config.host, config.ssl_ca_cert = admin.host, admin.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    with kubernetes.client.ApiClient(config) as as_pod:
        review = kubernetes.client.AuthenticationV1Api(as_pod).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{ns}:default"


def test_a_command_missing_from_the_image_fails_the_pod_with_start_error(core, ns: str) -> None:
    """The runtime cannot start the process: exit code 128, reason StartError, and a message naming the
    missing file, which the operator passes on as the pod's termination message."""
    p = pod("nocmd", "")
    p["spec"]["containers"][0]["command"] = ["/no/such/trainer"]
    core.create_namespaced_pod(ns, p)
    wait_for(lambda: phase(core, ns, "nocmd") == "Failed", 60, "pod phase Failed")
    term = core.read_namespaced_pod("nocmd", ns).status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (128, "StartError"), term
    assert "/no/such/trainer" in term.message and "no such file or directory" in term.message, term


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


#: msrun starts its workers in sessions of their own (setsid): the container's end must take them too.
SPAWN = """
    setsid sleep 300 &
    echo up
    until [ -e /tmp/done ]; do sleep 1; done
"""


def _container_processes(cluster: Cluster, core, ns: str, name: str) -> tuple[int, int]:
    """The host pids of the pod's main process and its `setsid sleep 300` child, once both run."""
    cluster.need_local_node("reaches the container's processes on the node")
    wait_for(lambda: "up" in log_of(core, ns, name), 60, f"{name} to start")

    def found() -> tuple[int, int] | None:
        # The log can show "up" before the kubelet's status manager has written the container's id.
        statuses = core.read_namespaced_pod(name, ns).status.container_statuses or []
        cid = statuses[0].container_id if statuses else None
        if not cid:
            return None
        pids = container_pids(cid.removeprefix("containerd://"))  # from the container's cgroup
        # The main process: the one whose parent (the runtime's shim) is not in the container.
        main = next((p for p in pids if _parent(p) not in pids), None)
        child = next((p for p in pids if _cmdline(p) == ["sleep", "300"]), None)
        return (main, child) if main and child else None

    return wait_for(found, 30, f"the processes of {name}'s container")


def test_a_killed_container_fails_the_pod_with_137_and_takes_its_other_sessions(
    cluster: Cluster, core, ns: str
) -> None:
    """A fault on the node kills the container's main process: the pod fails with exit code 137, and
    its processes in other sessions end with it."""
    cluster.need_local_node("kills a container's process on the node")
    core.create_namespaced_pod(ns, pod("victim", SPAWN))
    main, child = _container_processes(cluster, core, ns, "victim")
    os.kill(main, signal.SIGKILL)
    wait_for(lambda: phase(core, ns, "victim") == "Failed", 30, "pod phase Failed")
    term = core.read_namespaced_pod("victim", ns).status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (137, "Error"), term
    wait_for(lambda: not _alive(child), 10, "the setsid'd child to end with the container")


def test_container_exit_ends_its_other_processes(cluster: Cluster, core, ns: str) -> None:
    cluster.need_local_node("inspects the container's processes on the node")
    core.create_namespaced_pod(ns, pod("leaver", SPAWN))
    _, child = _container_processes(cluster, core, ns, "leaver")
    cluster.kubectl("exec", "-n", ns, "leaver", "--", "touch", "/tmp/done")
    wait_for(lambda: phase(core, ns, "leaver") == "Succeeded", 30, "pod phase Succeeded")
    wait_for(lambda: not _alive(child), 10, "the setsid'd child to end with its container")


def test_termination_message_from_file_or_log_tail(cluster: Cluster, core, ns: str) -> None:
    """state.terminated.message: the file's content (<= 4096 bytes); with FallbackToLogsOnError and
    no file content on a non-zero exit, the log's last 80 lines (<= 2048 bytes); else none."""
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    noisy = "i=0; while [ $i -lt 200 ]; do printf 'line %03d\\n' $i; i=$((i+1)); done; exit 3"
    pods = {
        # the default path, named through an env variable as the trainer's pod does
        "msg-file": pod(
            "msg-file",
            "printf 'bad data_dir: /data/train missing\\n' > \"$WHY\"; exit 2",
            env=[{"name": "WHY", "value": "/dev/termination-log"}],
            **fallback,
        ),
        "msg-custom": pod(
            "msg-custom",
            "printf '%5000s' '' | sed 's/ /x/g' > /tmp/why; echo log; exit 1",
            terminationMessagePath="/tmp/why",
        ),
        "msg-tail": pod("msg-tail", noisy, **fallback),
        "msg-none": pod("msg-none", noisy),  # policy File (the default): the log is not used
        "msg-ok": pod("msg-ok", "echo fine", **fallback),
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
    script = """
        d=/var/run/secrets/mnv2
        echo NS $(cat $d/namespace)
        echo CA $(cat $d/ca.crt)
        test -s $d/token && echo TOKEN True || echo TOKEN False
        test -e $d/absent && echo MISSING True || echo MISSING False
        test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo AUTO True || echo AUTO False
    """
    p = pod("projected", script, volumeMounts=[{"name": "creds", "mountPath": "/var/run/secrets/mnv2"}])
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
    assert lines["NS"] == ns and lines["CA"] == "CERT" and lines["TOKEN"] == "True"
    assert lines["MISSING"] == "False"
    assert lines["AUTO"] == "False"  # automountServiceAccountToken: false
