"""Helpers shared by the contract tests (importable as `contract.kit`)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from mnv2_operator.sandbox import Sandbox
from mnv2_operator.sandbox.sandbox import KubectlError, kubectl_binary

GROUP = "contract.mnv2.dev"
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


@dataclass
class Cluster:
    """The API under test: a sandbox (with `.sandbox`) or a real cluster (`.sandbox is None`)."""

    kubeconfig: Path
    sandbox: Sandbox | None
    cache_dir: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            kubectl_binary(),
            "--kubeconfig",
            str(self.kubeconfig),
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

    def need_sandbox(self, why: str) -> Sandbox:
        if self.sandbox is None:
            pytest.skip(f"sandbox-only: {why}")
        return self.sandbox


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
