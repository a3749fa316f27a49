"""The one client bootstrap (`kube.client_configuration`): which credentials win, read when called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes.config import incluster_config
from mnv2_operator import kube


def kubeconfig(path: Path, server: str, token: str = "t") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: {token}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials at all: empty HOME, no $KUBECONFIG, not in a pod (a fake ServiceAccount
    token and CA under tmp_path are used only when KUBERNETES_SERVICE_HOST is set)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("pod-token", encoding="utf-8")
    (sa / "ca.crt").write_text("not checked here", encoding="utf-8")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    return tmp_path


def in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")


def test_no_credentials_says_what_was_tried(env: Path) -> None:
    with pytest.raises(kube.NoCredentials, match="not in a pod.*KUBECONFIG is not set.*set KUBECONFIG"):
        kube.client_configuration()


def test_precedence_explicit_then_kubeconfig_env_then_pod_then_home(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig(env / "home" / ".kube" / "config", "https://home:6443")
    assert kube.client_configuration().host == "https://home:6443"
    in_a_pod(monkeypatch)
    pod = kube.client_configuration()
    assert pod.host == "https://10.0.0.1:443"
    assert kube.connection_fields(pod)["token"] == "pod-token"
    # $KUBECONFIG is read when called, not when `kubernetes` was imported.
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(env / "env.kubeconfig", "https://env:6443")))
    assert kube.client_configuration().host == "https://env:6443"
    explicit = kubeconfig(env / "explicit.kubeconfig", "https://explicit:6443", token="abc")
    cfg = kube.client_configuration(explicit)
    assert cfg.host == "https://explicit:6443"
    fields = kube.connection_fields(cfg)
    assert (fields["server"], fields["scheme"], fields["token"]) == ("https://explicit:6443", "Bearer", "abc")
    assert fields["insecure"] is True


def test_kubeconfig_list_is_merged_as_kubectl_does(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(env / "a.kubeconfig", "https://a:6443")
    monkeypatch.setenv("KUBECONFIG", f"{env / 'missing'}:{first}")
    assert kube.client_configuration().host == "https://a:6443"


def test_a_named_kubeconfig_that_is_missing_or_broken_is_an_error(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_a_pod(monkeypatch)  # never a silent fallback to the pod's credentials
    with pytest.raises(kube.KubeConfigError, match="kubeconfig /nonexistent: no such file"):
        kube.client_configuration("/nonexistent")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    with pytest.raises(kube.KubeConfigError, match="KUBECONFIG=/nonexistent: no such file"):
        kube.client_configuration()
    broken = env / "broken.kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\n", encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    with pytest.raises(kube.KubeConfigError, match=f"KUBECONFIG={broken}: cannot be used"):
        kube.client_configuration()


def test_api_client_sets_the_settings_on_a_private_configuration(env: Path) -> None:
    from kubernetes import client

    path = kubeconfig(env / "k", "https://k:6443")
    api = kube.api_client(path, retries=False, connection_pool_maxsize=32)
    assert (api.configuration.host, api.configuration.retries) == ("https://k:6443", False)
    assert api.configuration.connection_pool_maxsize == 32
    assert client.Configuration.get_default_copy().host != "https://k:6443"


def test_importing_the_bootstrap_and_the_reporter_is_cheap() -> None:
    # The trainer's reporter imports `mnv2_operator.kube` inside training pods: neither may pull in
    # kopf, pydantic, jinja2 or the kubernetes client (which reads $KUBECONFIG when imported).
    code = (
        "import sys, mnv2_operator.kube, mnv2_trainer.report;"
        "print(sorted({'kopf', 'pydantic', 'jinja2', 'kubernetes'} & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
