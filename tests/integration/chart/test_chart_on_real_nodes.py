"""`helm install` of the chart into the local cluster on a real Node (the upstream kubelet on containerd +
runc, kube-proxy, CoreDNS): the operator runs from its own image and trains a job in the trainer image.

The images come from `mnv2_cluster.imagebuild` (built unless cached: `make images`) and are imported
into the node's containerd, as a cluster without a registry gets them; the chart's values point the
operator and the jobs' default trainer image at them with pull policy Never. The operator pod must be
Ready (non-root, read-only root filesystem, as the chart sets), then a small CPU digits job (1 node x 1
worker, 1 epoch) goes to Succeeded with the metrics the trainer's in-cluster reporter writes into its
status, and the operator pod's log (`kubectl logs`) shows that it handled the job.

Where a piece cannot run on this machine (the image build, a node, the import, the install), the test
fails naming the piece and its exact error, never skips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml
from mnv2_cluster import imagebuild
from mnv2_cluster.launcher import Cluster
from mnv2_cluster.realnode import NodeError
from mnv2_operator.constants import GROUP, LABEL_JOB, PLURAL, VERSION
from support import REPO_ROOT
from support.cluster import real_node_cluster, wait_for

from manifests import CHART_DIR

# A cold run builds both images first (about 12 minutes, `make images`), beyond the default 900 s.
pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

NODE = "real-1"
RELEASE, OPERATOR_NS, JOB_NS, JOB = "mnv2", "mnv2-system", "default", "helm-digits"
HELM_USER = "helm-test"
EPOCHS = 1
# Bounds on waits, not targets (2 shared cores, other builds and tests on them).
READY_TIMEOUT = 180.0
JOB_TIMEOUT = 900.0


@dataclass
class Installed:
    cluster: Cluster
    helm_kubeconfig: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def api(self) -> Any:
        return self.cluster.api_client()


def _timed(timings: dict[str, float], what: str, started: float) -> None:
    timings[what] = time.monotonic() - started
    print(f"{what}: {timings[what]:.1f} s", flush=True)


def chart_values() -> dict[str, Any]:
    """The chart's values for images that exist only in the nodes' containerd."""
    operator_repo, operator_tag = imagebuild.image_ref("mnv2-operator").rsplit(":", 1)
    trainer_repo, trainer_tag = imagebuild.image_ref("mnv2-trainer").rsplit(":", 1)
    return {
        "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
        "jobDefaults": {"trainerImage": {"repository": trainer_repo, "tag": trainer_tag}},
        # No Volcano in this cluster.
        "rbac": {"gangScheduling": False},
    }


def digits_job() -> dict[str, Any]:
    """The CPU digits example as 1 node x 1 worker for one epoch, its output a scratch folder."""
    (job,) = [
        d
        for d in yaml.safe_load_all((REPO_ROOT / "manifests" / "examples" / "digits-cpu.yaml").read_text())
        if isinstance(d, dict) and d.get("kind") == "MobileNetV2TrainingJob"
    ]
    job["metadata"] = {"name": JOB, "namespace": JOB_NS}
    spec = job["spec"]
    spec.update(
        nodes=1,
        devicesPerNode=1,
        imagePullPolicy="Never",
        output={"emptyDir": {}},
        runPolicy={"backoffLimit": 0},
        # The node is the machine (2 cores), shared with the operator pod and CoreDNS.
        resources={"requests": {"cpu": "500m", "memory": "2Gi"}},
    )
    spec["config"].update(epoch_size=EPOCHS, warmup_epochs=0, decay_epochs=EPOCHS)
    return job


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, kubeconfig_option: str | None) -> Iterator[Installed]:
    if kubeconfig_option:
        pytest.skip(
            "--kubeconfig names another cluster: the images are imported only into the local cluster's real nodes"
        )
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        archives = imagebuild.build_all()
    except imagebuild.ImageBuildError as err:
        pytest.fail(f"the project's images (mnv2_cluster.imagebuild, `make images`) cannot be built: {err}")
    _timed(timings, "images built or found in the cache", started)
    try:
        with real_node_cluster(tmp_path_factory.mktemp("helm-real"), [NODE]) as (cluster, nodes):
            for name, archive in archives.items():
                started = time.monotonic()
                nodes[0].import_image(archive, imagebuild.image_ref(name))
                _timed(timings, f"import {name} ({archive.stat().st_size / 2**20:.0f} MiB)", started)
            helm_kubeconfig = cluster.kubeconfig_for_user(HELM_USER, ["system:masters"])
            yield Installed(cluster, str(helm_kubeconfig), timings)
    except NodeError as err:
        pytest.fail(f"a real node cannot run here: {err}")


def operator_pod(core: Any) -> Any:
    pods = core.list_namespaced_pod(OPERATOR_NS, label_selector="app.kubernetes.io/name=mnv2-operator").items
    return pods[0] if len(pods) == 1 else None


def pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def describe(cluster: Cluster, namespace: str, pod: str) -> str:
    out = cluster.kubectl("describe", "pod", "-n", namespace, pod, check=False)
    return (out.stdout + out.stderr)[-4000:]


def test_helm_install_runs_the_operator_image_and_it_trains_a_job(installed: Installed) -> None:
    cluster, timings = installed.cluster, installed.timings
    core = kubernetes.client.CoreV1Api(installed.api)
    custom = kubernetes.client.CustomObjectsApi(installed.api)

    started = time.monotonic()
    with helm.Config(
        kubeconfig_path=installed.helm_kubeconfig, namespace=OPERATOR_NS, storage_driver="secret"
    ) as cfg:
        summary = cfg.install(
            str(CHART_DIR), RELEASE, chart_values(), namespace=OPERATOR_NS, create_namespace=True, timeout=120
        )
    assert summary["status"] == "deployed", summary
    _timed(timings, "helm install", started)

    def ready() -> Any:
        pod = operator_pod(core)
        if pod is not None:
            for status in pod.status.container_statuses or []:
                if status.restart_count > 0 or (status.state.terminated is not None):
                    raise AssertionError(
                        f"the operator container ended: {status}\n"
                        f"{cluster.kubectl('logs', '-n', OPERATOR_NS, pod.metadata.name, '--previous', check=False).stdout[-3000:]}\n"
                        f"{describe(cluster, OPERATOR_NS, pod.metadata.name)}"
                    )
        return pod if pod is not None and pod_ready(pod) else None

    started = time.monotonic()
    try:
        pod = wait_for("the operator pod Ready", ready, READY_TIMEOUT, interval=1.0)
    except AssertionError as err:
        current = operator_pod(core)
        detail = describe(cluster, OPERATOR_NS, current.metadata.name) if current else "no operator pod"
        raise AssertionError(f"{err}\n{detail}") from None
    _timed(timings, "operator pod Ready after install", started)
    name = pod.metadata.name
    assert pod.spec.node_name == NODE
    (container,) = pod.spec.containers
    assert container.image == imagebuild.image_ref("mnv2-operator")
    assert container.security_context.read_only_root_filesystem is True
    assert pod.status.container_statuses[0].image_id, "the container runs from an image the node holds"
    identity = cluster.kubectl("exec", "-n", OPERATOR_NS, name, "--", "id", "-u", check=False)
    assert identity.stdout.strip() == "10001", identity
    write = cluster.kubectl("exec", "-n", OPERATOR_NS, name, "--", "touch", "/usr/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write

    started = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, JOB_NS, PLURAL, digits_job())

    worker_ips: set[str] = set()  # recorded while the workers run

    def finished() -> Any:
        for pod in core.list_namespaced_pod(JOB_NS, label_selector=f"{LABEL_JOB}={JOB}").items:
            if pod.status.pod_ip:
                worker_ips.add(pod.status.pod_ip)
        job = custom.get_namespaced_custom_object(GROUP, VERSION, JOB_NS, PLURAL, JOB)
        phase = (job.get("status") or {}).get("phase")
        if phase == "Failed":
            raise AssertionError(f"the job failed: {json.dumps(job['status'], indent=1)[-3000:]}")
        return job if phase == "Succeeded" else None

    try:
        job = wait_for(f"job {JOB} Succeeded", finished, JOB_TIMEOUT, interval=2.0)
    finally:
        logs = cluster.kubectl("logs", "-n", OPERATOR_NS, name, check=False)
        print(f"operator log (end):\n{logs.stdout[-3000:]}{logs.stderr[-1000:]}")
    _timed(timings, "job create -> Succeeded", started)
    status = job["status"]
    assert status["progress"]["epoch"] == EPOCHS == status["progress"]["totalEpochs"], status
    metrics = status["metrics"]
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0, metrics
    (worker,) = core.list_namespaced_pod(JOB_NS, label_selector=f"{LABEL_JOB}={JOB}").items
    assert worker.spec.node_name == NODE
    assert worker.spec.containers[0].image == imagebuild.image_ref("mnv2-trainer")
    assert worker_ips, "the worker pod never had an address"

    # The operator's own log (the pod's container, through the kubelet) shows it handled the job.
    assert logs.returncode == 0, logs.stderr
    for transition in ("PodsCreated", "Running", "Succeeded"):
        assert f"{JOB_NS}/{JOB}: {transition}:" in logs.stdout, logs.stdout[-3000:]
    # kopf's /healthz answered the kubelet's liveness probe all along: the container never restarted.
    pod = core.read_namespaced_pod(name, OPERATOR_NS)
    assert pod.status.container_statuses[0].restart_count == 0, pod.status.container_statuses

    # The API server's audit log: the operator's requests came from its pod's address as the chart's
    # ServiceAccount, and the job's metrics from the trainer pod's reporter as the job's ServiceAccount.
    operator_user = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}-mnv2-operator"
    trainer_user = f"system:serviceaccount:{JOB_NS}:{JOB}-trainer"
    sources: dict[str, set[str]] = {operator_user: set(), trainer_user: set()}
    status_patches: dict[str, int] = {operator_user: 0, trainer_user: 0}
    for event in cluster.audit_events():
        user = (event.get("user") or {}).get("username")
        if user not in sources or event.get("stage") != "ResponseComplete":
            continue
        sources[user].update(event.get("sourceIPs") or [])
        ref = event.get("objectRef") or {}
        code = int((event.get("responseStatus") or {}).get("code", 0))
        patched = event.get("verb") == "patch" and ref.get("subresource") == "status"
        if patched and ref.get("name") == JOB and code == 200:
            status_patches[user] += 1
    assert sources[operator_user] == {pod.status.pod_ip}, sources
    assert sources[trainer_user] and sources[trainer_user] <= worker_ips, (sources, worker_ips)
    assert status_patches[operator_user] > 0 and status_patches[trainer_user] > 0, status_patches
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
