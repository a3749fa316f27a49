"""A kopf operator (kopf.testing.KopfRunner) sees create/update/delete and patches status."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kopf.testing import KopfRunner
from kubernetes.client import ApiException

from contract.kit import GADGET_CRD, GROUP, MNV2_CRD, Cluster, wait_for, widget

pytestmark = pytest.mark.cluster

OPERATOR = f'''
import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.watching.server_timeout = 10
    settings.persistence.finalizer = "{GROUP}/kopf-finalizer"

@kopf.on.create("{GROUP}", "v1", "widgets")
def created(spec, logger, **_):
    logger.info("SAW-CREATE size=%s", spec["size"])
    return {{"size": spec["size"]}}

@kopf.on.update("{GROUP}", "v1", "widgets")
def updated(spec, patch, logger, **_):
    logger.info("SAW-UPDATE size=%s", spec["size"])
    patch.status["phase"] = "Resized"

@kopf.on.delete("{GROUP}", "v1", "widgets")
def deleted(name, logger, **_):
    logger.info("SAW-DELETE %s", name)
'''


@pytest.fixture
def kubeconfig_env(cluster: Cluster) -> Iterator[None]:
    """kopf logs in via $KUBECONFIG (read at login) and the kubernetes package's import-time default."""
    kube_config = sys.modules["kubernetes.config.kube_config"]
    saved = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(cluster.kubeconfig)
    yield
    if saved[0] is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = saved[0]
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved[1]


def test_kopf_operator_sees_events_and_patches_status(
    api: kubernetes.client.ApiClient, widget_crd: str, ns: str, tmp_path: Path, kubeconfig_env: None
) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    script = tmp_path / "operator.py"
    script.write_text(OPERATOR)

    def get() -> dict:
        return co.get_namespaced_custom_object(GROUP, "v1", ns, "widgets", "k1")

    def deleted() -> bool:
        try:
            get()
            return False
        except ApiException as e:
            return e.status == 404

    with KopfRunner(["run", "--standalone", "-n", ns, "--verbose", str(script)], timeout=120) as runner:
        co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("k1", 2))
        wait_for(
            lambda: (get().get("status") or {}).get("created") == {"size": 2},
            90,
            "kopf's create handler result in status",
        )
        co.patch_namespaced_custom_object(GROUP, "v1", ns, "widgets", "k1", {"spec": {"size": 3}})
        wait_for(
            lambda: (get().get("status") or {}).get("phase") == "Resized",
            90,
            "kopf's update handler's status patch",
        )
        co.delete_namespaced_custom_object(GROUP, "v1", ns, "widgets", "k1")
        wait_for(deleted, 90, "the object to go after kopf released its finalizer")
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    for marker in ("SAW-CREATE size=2", "SAW-UPDATE size=3", "SAW-DELETE k1"):
        assert marker in runner.output


RESULTS_IN_STATUS = f'''
import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.watching.server_timeout = 10
    settings.persistence.finalizer = "{GROUP}/kopf-finalizer"

@kopf.on.create("{GROUP}", "v1", "gadgets")
def created(spec, patch, **_):
    patch.metadata.annotations["{GROUP}/handled"] = "yes"
    return {{"size": spec["size"]}}
'''


@pytest.fixture
def gadget_crd(cluster: Cluster) -> str:
    """A CRD whose status schema lists its fields (no x-kubernetes-preserve-unknown-fields)."""
    cluster.kubectl("apply", "-f", "-", input=GADGET_CRD)
    cluster.kubectl("wait", "--for=condition=Established", f"crd/gadgets.{GROUP}", "--timeout=90s")
    return f"gadgets.{GROUP}"


def test_real_server_prunes_kopf_results_from_a_strict_status(
    api: kubernetes.client.ApiClient, gadget_crd: str, ns: str, tmp_path: Path, kubeconfig_env: None
) -> None:
    """kopf keeps handler results and progress in status by default; the API server prunes what the
    status schema does not declare, and kopf warns. The operator keeps them in annotations."""
    co = kubernetes.client.CustomObjectsApi(api)
    script = tmp_path / "operator.py"
    script.write_text(RESULTS_IN_STATUS)
    body = {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": {"name": "g1"}, "spec": {"size": 2}}

    # The handler marks the object itself: kopf's own diff-base annotation is named by whatever storage
    # the process's default registry configures (the mnv2 operator's, once a test module imported it).
    def handled() -> bool:
        got = co.get_namespaced_custom_object(GROUP, "v1", ns, "gadgets", "g1")
        return f"{GROUP}/handled" in got["metadata"].get("annotations", {})

    with KopfRunner(["run", "--standalone", "-n", ns, str(script)], timeout=120) as runner:
        co.create_namespaced_custom_object(GROUP, "v1", ns, "gadgets", body)
        wait_for(handled, 90, "kopf to finish the create handler")
        got = co.get_namespaced_custom_object(GROUP, "v1", ns, "gadgets", "g1")
        co.delete_namespaced_custom_object(GROUP, "v1", ns, "gadgets", "g1")
        wait_for(
            lambda: not co.list_namespaced_custom_object(GROUP, "v1", ns, "gadgets")["items"], 30, "g1 gone"
        )
    assert runner.exception is None, runner.output
    assert "created" not in (got.get("status") or {}) and "kopf" not in (got.get("status") or {})
    assert "Merge-patching finished with inconsistencies" in runner.output
    assert "('remove', ('status', 'created')" in runner.output


def test_operator_keeps_kopf_state_out_of_the_job_status(
    cluster: Cluster, api: kubernetes.client.ApiClient, ns: str, kubeconfig_env: None
) -> None:
    """The mnv2 operator against the real API server and its CRD: the job gets a status, and kopf
    reports no pruned patch (its bookkeeping goes to annotations, not to the strict status)."""
    cluster.kubectl("apply", "-f", "-", input=MNV2_CRD)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/mobilenetv2trainingjobs.training.mnv2.dev",
        "--timeout=90s",
    )
    co = kubernetes.client.CustomObjectsApi(api)
    job = {
        "apiVersion": "training.mnv2.dev/v1alpha1",
        "kind": "MobileNetV2TrainingJob",
        "metadata": {"name": "kopf-state"},
        "spec": {
            "model": {"name": "mobilenet_v2_035_96"},
            "dataset": {"type": "synthetic"},
            "accelerator": {"type": "cpu"},
            "nodes": 1,
            "output": {"pvc": {"claimName": "runs"}},
        },
    }

    def status() -> dict:
        got = co.get_namespaced_custom_object(
            "training.mnv2.dev", "v1alpha1", ns, "mobilenetv2trainingjobs", "kopf-state"
        )
        return got.get("status") or {}

    args = ["run", "--standalone", "--namespace", ns, "-m", "mnv2_operator.handlers"]
    with KopfRunner(args, timeout=120) as runner:
        co.create_namespaced_custom_object(
            "training.mnv2.dev", "v1alpha1", ns, "mobilenetv2trainingjobs", job
        )
        wait_for(lambda: status().get("phase"), 90, "the operator to write the job's phase")
        wait_for(lambda: status().get("observedGeneration") == 1, 90, "the operator's observedGeneration")
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output
    assert "inconsistencies" not in runner.output, runner.output
    assert "kopf" not in status()
