"""The chart's Deployment command line, run as is (`mnv2 operator ...`) against the local control plane,
as the chart's ServiceAccount with the chart's RBAC (the real API server authorizes every request).

The container's command and args are taken from the rendered Deployment; only the liveness port is
moved to a free one (8080 may be taken on a shared machine). The operator must serve /healthz where
the Deployment's liveness probe looks, handle a job, and stop cleanly on SIGTERM (what the kubelet
sends when the Deployment is updated with strategy Recreate).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes
import pytest
import yaml
from mnv2_operator import crd, render
from support import REPO_ROOT
from support.cluster import local_cluster

from manifests import NAMESPACE, render_chart

pytestmark = pytest.mark.cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


def test_deployment_command_runs_the_operator(tmp_path: Path) -> None:
    objects = render_chart({"watchNamespaces": ["team-a"]})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    probe = container["livenessProbe"]["httpGet"]
    (port_spec,) = [p for p in container["ports"] if p["name"] == probe["port"]]
    port = free_port()
    liveness_arg = f"--liveness=http://0.0.0.0:{port_spec['containerPort']}{probe['path']}"
    assert liveness_arg in container["args"]
    args = [a.replace(f":{port_spec['containerPort']}/", f":{port}/") for a in container["args"]]
    command = shutil.which(container["command"][0], path=str(Path(sys.executable).parent))
    assert command, f"{container['command'][0]} is not installed next to {sys.executable}"

    with local_cluster(tmp_path / "cluster", crds=[crd.crd_yaml()]) as local:
        cluster = local.control_plane
        namespaces = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in (NAMESPACE, "team-a")
        ]
        # The chart's ServiceAccount, Roles and bindings; the operator process stands in for its Deployment.
        rbac = [o for o in objects if o["kind"] != "Deployment"]
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces + rbac))
        kubeconfig = cluster.kubeconfig_for_service_account(NAMESPACE, pod_spec["serviceAccountName"])
        core = kubernetes.client.CoreV1Api(cluster.api_client())
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        log = (tmp_path / "operator.log").open("w")
        proc = subprocess.Popen([command, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while http_status(f"http://127.0.0.1:{port}{probe['path']}") != 200:
                assert proc.poll() is None, (tmp_path / "operator.log").read_text()
                assert time.monotonic() < deadline, "the operator never answered its liveness probe"
                time.sleep(0.2)
            job = yaml.safe_load((REPO_ROOT / "manifests/examples/digits-cpu.yaml").read_text())
            job["metadata"]["namespace"] = "team-a"
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
            name = job["metadata"]["name"]
            selector = f"{render.LABEL_JOB}={name}"
            deadline = time.monotonic() + 60
            while not core.list_namespaced_pod("team-a", label_selector=selector).items:
                assert proc.poll() is None, (tmp_path / "operator.log").read_text()
                assert time.monotonic() < deadline, (
                    "the operator created no pod for the example job:\n"
                    + (tmp_path / "operator.log").read_text()
                )
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            log.close()
    output = (tmp_path / "operator.log").read_text()
    assert code == 0, output
    assert "Traceback" not in output, output
