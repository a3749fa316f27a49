"""Talking to the Kubernetes API: one way to find the cluster's credentials, one small JSON client.

`client_configuration()` is the one bootstrap of the project's clients: the operator (its own
requests and kopf's watches), `mnv2 status` and the trainer's status reporter all find their
cluster through it, in this order (controller-runtime's `GetConfig` order; `kubectl` differs only in
reading `~/.kube/config` before a pod's ServiceAccount):

1. the kubeconfig passed explicitly (`mnv2 status --kubeconfig`);
2. `$KUBECONFIG`, read when called (one path or several joined by `os.pathsep`, merged as `kubectl`
   merges them); set but naming no existing file is an error, not a silent fallback;
3. the pod's ServiceAccount (in-cluster: `KUBERNETES_SERVICE_HOST` and the mounted token), which is
   how the operator's Deployment and the training pods authenticate;
4. `~/.kube/config`.

Nothing here reads the environment at import. The `kubernetes` package does: it takes
`$KUBECONFIG` as its default kubeconfig once, when first imported, so a variable set later (the
tests and the demo point it at the local control plane) would be missed. A path is therefore
always passed to it explicitly, and `kubernetes` is imported only inside the functions that need it.

This module imports only the standard library (and `kubernetes` lazily) on purpose: the trainer's
reporter imports it inside training pods (the trainer image installs the same distribution), where
kopf, pydantic and jinja2 would cost start-up time and memory for nothing. kopf is imported only
by `handlers.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mnv2_operator.constants import GROUP, PLURAL, VERSION

# Kinds that render.py emits -> their plural. Everything the operator creates is namespaced.
_PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodGroup": "podgroups",
}


# ---------------------------------------------------------------------------------------------
# Credentials.


class KubeConfigError(Exception):
    """No usable cluster credentials; the message says what was tried and how to fix it."""


class NoCredentials(KubeConfigError):
    """Neither a kubeconfig nor a pod's ServiceAccount was found."""


def _kubeconfig_paths(value: str) -> list[str]:
    return [p for p in value.split(os.pathsep) if p]


def client_configuration(kubeconfig: str | os.PathLike[str] | None = None) -> Any:
    """A fresh `kubernetes.client.Configuration` for the cluster found as the module docstring says.

    The library's global default configuration is never read nor changed.

    Args:
        kubeconfig: a kubeconfig file that wins over everything else.

    Raises:
        KubeConfigError: the explicit kubeconfig or `$KUBECONFIG` names no file, a kubeconfig
            cannot be loaded, or there are no credentials at all (not in a pod, no kubeconfig).
    """
    from kubernetes import client, config

    cfg = client.Configuration()
    env = os.environ.get("KUBECONFIG", "")
    if kubeconfig:
        if not Path(kubeconfig).is_file():
            raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")
        source, where = str(kubeconfig), f"kubeconfig {kubeconfig}"
    elif _kubeconfig_paths(env):
        if not any(Path(p).is_file() for p in _kubeconfig_paths(env)):
            raise KubeConfigError(f"KUBECONFIG={env}: no such file; unset it or point it at a kubeconfig")
        source, where = env, f"KUBECONFIG={env}"
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
            return cfg
        except config.ConfigException:
            pass  # not in a pod (or no ServiceAccount token mounted)
        home = Path.home() / ".kube" / "config"
        if not home.is_file():
            raise NoCredentials(
                "no cluster credentials: not in a pod with a ServiceAccount token, KUBECONFIG is "
                f"not set and there is no {home}; set KUBECONFIG to a kubeconfig file"
            )
        source, where = str(home), str(home)
    try:
        config.load_kube_config(config_file=source, client_configuration=cfg)
    except (config.ConfigException, OSError, ValueError) as err:
        raise KubeConfigError(f"{where}: cannot be used ({err})") from err
    return cfg


def api_client(kubeconfig: str | os.PathLike[str] | None = None, **settings: Any) -> Any:
    """A `kubernetes.client.ApiClient` from `client_configuration(kubeconfig)`.

    Args:
        kubeconfig: see `client_configuration`.
        **settings: attributes of the configuration to set first (`retries=False`,
            `connection_pool_maxsize=32`).
    """
    from kubernetes import client

    cfg = client_configuration(kubeconfig)
    for name, value in settings.items():
        setattr(cfg, name, value)
    return client.ApiClient(cfg)


def connection_fields(cfg: Any) -> dict[str, Any]:
    """A configuration's server and credentials as plain fields, for a client of its own (kopf's).

    The names are those of `kopf.ConnectionInfo`; the token is asked of the configuration, which
    refreshes it where it can (a ServiceAccount token file, an exec plugin).
    """
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return {
        "server": cfg.host,
        "ca_path": cfg.ssl_ca_cert,
        "insecure": not cfg.verify_ssl,
        "username": cfg.username or None,
        "password": cfg.password or None,
        "scheme": scheme,
        "token": token,
        "certificate_path": cfg.cert_file,
        "private_key_path": cfg.key_file,
    }


# ---------------------------------------------------------------------------------------------
# A small JSON client over the `kubernetes` package's connection handling (auth, TLS, proxies).


class ApiError(Exception):
    """An HTTP error from the API server."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {body[:300]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The API server's own message (a Status object's `message`), else the body's start."""
        try:
            message = json.loads(self.body).get("message")
        except (ValueError, AttributeError):
            message = None
        return str(message or self.body[:300] or f"HTTP {self.status}")


class Api:
    """Blocking JSON requests, run in a thread pool so the event loop never waits on the network."""

    def __init__(self, api_client: Any, workers: int = 16) -> None:
        self._client = api_client
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mnv2-api")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _request_sync(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, headers, body, post = self._client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self._client.call_api(m, url, headers, body, post, _request_timeout=(10, 60))
        data = resp.read()
        if resp.status >= 400:
            text = data.decode("utf-8", "replace") if data else ""
            raise ApiError(resp.status, resp.reason or "", text)
        return json.loads(data) if data else None

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self._request_sync(method, path, body, content_type)
        )


def job_path(namespace: str, name: str = "", sub: str = "") -> str:
    """The path of the jobs in `namespace`, of job `name`, or of its subresource `sub`."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


def object_path(obj: Mapping[str, Any], namespace: str, named: bool = False) -> str:
    """The collection path of a rendered object (or its own path with `named`)."""
    api_version = obj["apiVersion"]
    kind = obj["kind"]
    plural = _PLURALS.get(kind, kind.lower() + "s")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace)}/{plural}"
    if named:
        path += f"/{quote(obj['metadata']['name'])}"
    return path
