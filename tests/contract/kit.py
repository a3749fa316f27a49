"""Helpers shared by the contract tests (importable as `contract.kit`)."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from mnv2_cluster.launcher import Cluster as LocalCluster
from mnv2_cluster.launcher import kubectl_binary
from mnv2_cluster.realnode import RealNode
from support import REPO_ROOT

GROUP = "contract.mnv2.dev"
#: The image the suite's pods run: Docker Hub's busybox, which the suite's own node has imported under
#: this name (`mnv2_cluster.images.BUSYBOX_HUB_IMAGE`) and any other cluster pulls.
BUSYBOX = "busybox:1.35"
WIDGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wdg], categories: [mnv2contract]}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    additionalPrinterColumns:
    - {{name: Size, type: integer, jsonPath: .spec.size}}
    - {{name: Color, type: string, jsonPath: .spec.color}}
    - {{name: Phase, type: string, jsonPath: .status.phase}}
    - {{name: Age, type: date, jsonPath: .metadata.creationTimestamp}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {{type: integer, minimum: 1, maximum: 64}}
              color: {{type: string, enum: [red, blue], default: red}}
              label: {{type: string, pattern: '^[a-z]+$', maxLength: 10}}
              tags: {{type: array, maxItems: 3, items: {{type: string}}}}
              extra: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; the message includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}\nstdout:\n{self.output}"


GADGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: gadgets, singular: gadget, kind: Gadget}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
          status:
            type: object
            properties:
              phase: {{type: string}}
"""
MNV2_CRD = (REPO_ROOT / "manifests/crd/mobilenetv2trainingjobs.yaml").read_text()


@dataclass
class Cluster:
    """The API under test: the local control plane the suite started (`.local`) with one real node
    (`.node`: the kubelet on containerd + runc), or the cluster of `--kubeconfig` (both None)."""

    kubeconfig: Path
    local: LocalCluster | None
    cache_dir: Path
    node: RealNode | None = None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin, or as the identity of `kubeconfig`."""
        cmd = [
            kubectl_binary(),
            "--kubeconfig",
            str(kubeconfig or self.kubeconfig),
            "--cache-dir",
            str(self.cache_dir),
            *args,
        ]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def api(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def need_local(self, why: str) -> LocalCluster:
        """The local control plane; skips (saying why) against a --kubeconfig cluster."""
        if self.local is None:
            pytest.skip(f"needs the suite's own control plane: {why}")
        return self.local

    def need_node(self) -> None:
        """Skip, naming the missing piece, when no Node is Ready: pods would stay Pending."""
        nodes = kubernetes.client.CoreV1Api(self.api()).list_node().items
        ready = [
            n.metadata.name
            for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        ]
        if not ready:
            pytest.skip(
                "no Ready Node in this cluster (pods stay Pending): needs a node joined to the control plane"
            )

    def need_local_node(self, why: str) -> RealNode:
        """The suite's own node, whose processes and files the test reaches; skips (saying why) against
        a --kubeconfig cluster, whose nodes are out of reach."""
        if self.node is None:
            pytest.skip(
                f"needs the suite's own node (a --kubeconfig cluster's nodes are out of reach): {why}"
            )
        return self.node


def busybox_pod(
    name: str, script: str, *, restart: str = "Never", grace: int | None = None, **container: Any
) -> dict[str, Any]:
    """A pod labelled `app: ct` whose one container runs `sh -c script` (dedented) in busybox;
    `container` adds fields to the container (env, volumeMounts, terminationMessagePolicy...)."""
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "containers": [
            {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", textwrap.dedent(script)], **container}
        ],
    }
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "ct"}},
        "spec": spec,
    }


def widget(name: str, size: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, **spec},
    }


def to_yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj)


def wait_for(
    pred: Callable[[], Any], timeout: float = 10, what: str = "condition", interval: float = 0.1
) -> Any:
    """Poll until pred() is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
