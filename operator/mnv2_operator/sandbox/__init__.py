"""The sandbox: an embedded single-machine Kubernetes stand-in (API server + kubelet).

Used by ``mnv2 demo`` and the operator integration tests until they move to the real control plane
(``mnv2_cluster``); the contract suite runs against that one. Real clients -- kubectl, kopf, the ``kubernetes`` Python client -- talk to it unchanged.

Public API::

    from mnv2_operator.sandbox import Sandbox

    with Sandbox(state_dir, kubelet="process" | "simulated", port=0) as sb:   # or sb = Sandbox(...).start()
        sb.url                    # "http://127.0.0.1:<port>"
        sb.kubeconfig_path        # <state_dir>/kubeconfig (plain http, any/no token accepted)
        sb.api_client()           # kubernetes.client.ApiClient configured for this sandbox
        sb.kubectl("get", "pods", "-l", "app=x")      # CompletedProcess of .venv/bin/kubectl --kubeconfig ...
        sb.kubectl("apply", "-f", "-", input=yaml_text, check=True)
        sb.export_kubeconfig()    # make it the process default: $KUBECONFIG (+ the kubernetes package's
                                  # import-time default); call before kopf.testing.KopfRunner
        sb.audit                  # list[AuditRecord]: every API request (verb, group, resource, ...)
        sb.kubelet                # Kubelet
        sb.kubelet.default_outcome = (2.0, 0)       # simulated: pods end by themselves after 2 s, exit 0
        sb.kubelet.finish("default", "pod-0", exit_code=1, reason="Error")   # simulated: end a pod now
        sb.kubelet.kill("default", "pod-0")         # process: SIGKILL the pod's process (node fault, 137)
        sb.kubelet.logs("default", "pod-0")         # the pod's log text
        # In-process reads, no HTTP (not audited), safe from any thread:
        sb.server.snapshot(sb.server.resources[("", "pods")], "default")   # copies of stored objects
        sb.server.history_limit = 100   # watch events kept per resource (older resourceVersions: 410)
    # stop(): stops the kubelet (kills pod processes) and the API server; state_dir is kept,
    # the objects (in memory only) are gone.

``Sandbox`` runs the API server and the kubelet in one background thread with its own asyncio loop,
so tests, ``kopf.testing.KopfRunner`` and the sandbox can share a process. ``start()`` returns once
the server answers; ``stop()`` is idempotent. Both work as a context manager.

``AuditRecord`` fields (watches are recorded when they start): ``verb``
(get/list/watch/create/update/patch/delete/deletecollection),
``group`` ("" for core), ``version``, ``resource`` (plural), ``subresource`` ("" or e.g. "status",
"log"), ``namespace`` ("" if cluster-scoped or all namespaces), ``name`` ("" for collections),
``code`` (HTTP status). Non-resource requests (discovery, /version, /openapi) are not recorded.

Kubelet modes:
- ``"simulated"``: no processes. A created pod goes Pending -> Running within ~0.1-0.5 s and stays
  Running until ``finish()`` ends it (Succeeded if exit_code == 0 else Failed), or by itself after
  ``default_outcome = (seconds, exit_code)`` if set. ``finish()`` may come right after the create.
  Deleting a pod removes it at once.
- ``"process"``: runs the first container's command+args as a local process group. Env (values,
  downward API fieldRef, configMapKeyRef, secretKeyRef), workingDir, volumes mapped under
  ``<state_dir>/volumes`` (configMap files, projected configMap/secret/downwardAPI sources, emptyDir per pod, PVC ``volumes/pvc/<claim>[/subPath]``,
  hostPath ``volumes/hostpath/<path>``); every volumeMount ``mountPath`` prefix appearing in
  command/args/env values is rewritten to its local folder. Pod env also gets ``KUBECONFIG`` (the
  sandbox's), ``HOSTNAME`` = pod name, and the directory of ``sys.executable`` first on ``PATH``.
  Logs go to ``<state_dir>/pods/<ns>/<name>/log`` and are served by ``pods/log``. A pod's processes
  (including ones in other sessions, like msrun's workers) carry env ``MNV2_SANDBOX_POD_UID``; deleting
  a pod sends them SIGTERM, SIGKILL after terminationGracePeriodSeconds (capped at 30 s); when the
  main process exits, or on ``kill()``, the rest are SIGKILLed.
  Device resources (requests/limits such as ``huawei.com/Ascend910``) and images are ignored.

Every pod is bound to the one Node ``sandbox`` (``spec.nodeName``) whatever its nodeSelector.
What is emulated and what is missing compared with a real API server: docs/sandbox.md.
"""

from __future__ import annotations

from mnv2_operator.sandbox.kubelet import Kubelet
from mnv2_operator.sandbox.sandbox import Sandbox
from mnv2_operator.sandbox.server import AuditRecord

__all__ = ["AuditRecord", "Kubelet", "Sandbox"]
