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

from contract.kit import GROUP, Cluster, wait_for, widget

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

    with KopfRunner(["run", "--standalone", "-n", ns, "--verbose", str(script)], timeout=60) as runner:
        co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("k1", 2))
        wait_for(
            lambda: (get().get("status") or {}).get("created") == {"size": 2},
            20,
            "kopf's create handler result in status",
        )
        co.patch_namespaced_custom_object(GROUP, "v1", ns, "widgets", "k1", {"spec": {"size": 3}})
        wait_for(
            lambda: (get().get("status") or {}).get("phase") == "Resized",
            20,
            "kopf's update handler's status patch",
        )
        co.delete_namespaced_custom_object(GROUP, "v1", ns, "widgets", "k1")
        wait_for(deleted, 20, "the object to go after kopf released its finalizer")
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    for marker in ("SAW-CREATE size=2", "SAW-UPDATE size=3", "SAW-DELETE k1"):
        assert marker in runner.output
