"""What creating a job grants, through the operator, checked with the RBAC evaluator.

A user who may only create MobileNetV2TrainingJobs in one namespace gets, through the operator: pods in
that namespace (within the admin's policy) that run as the job's own ServiceAccount, which may patch
the status of that one job (not even read it). Nothing here may reach another namespace, another job,
a Secret, a cluster-scoped object, or an identity the job does not own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mnv2_operator import constants as C
from mnv2_operator import render as R
from mnv2_operator import spec as S
from support import REPO_ROOT
from support.rbac import Request, allowed, grants_for_service_account

from manifests import render_chart

ROOT = REPO_ROOT
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
JOBS = C.GROUP
RBAC = "rbac.authorization.k8s.io"
NS = "team-a"


def rendered(example: Path) -> tuple[str, R.RenderedJob]:
    job = yaml.safe_load(example.read_text())
    name = job["metadata"]["name"]
    return name, R.render_job(name, NS, "uid-1", S.parse_spec(job["spec"]))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_a_jobs_children_stay_in_its_namespace_under_its_name(example: Path) -> None:
    name, result = rendered(example)
    kinds = {"Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PodGroup", "Pod"}
    for obj in result.all():
        meta = obj["metadata"]
        assert obj["kind"] in kinds, obj["kind"]  # nothing cluster-scoped (no ClusterRole(Binding), ...)
        assert meta["namespace"] == NS
        assert meta["name"] == name or meta["name"].startswith(name + "-")
        (owner,) = meta["ownerReferences"]
        assert owner["controller"] is True and owner["uid"] == "uid-1" and owner["name"] == name
    (binding,) = [o for o in result.objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "Role", "name": f"{name}-trainer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{name}-trainer", "namespace": NS}]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_the_trainer_may_touch_only_its_own_jobs_status(example: Path) -> None:
    name, result = rendered(example)
    grants = grants_for_service_account(result.objects, f"{name}-trainer", NS)
    assert allowed(grants, Request("patch", JOBS, "mobilenetv2trainingjobs", "status", NS, name))
    denied = [
        Request("get", JOBS, "mobilenetv2trainingjobs", "status", NS, name),  # never read: no get
        Request("get", JOBS, "mobilenetv2trainingjobs", "", NS, name),
        Request("patch", JOBS, "mobilenetv2trainingjobs", "status", NS, "other-job"),
        Request("patch", JOBS, "mobilenetv2trainingjobs", "status", "team-b", name),
        Request("patch", JOBS, "mobilenetv2trainingjobs", "", NS, name),  # the spec
        Request("update", JOBS, "mobilenetv2trainingjobs", "status", NS, name),
        Request("delete", JOBS, "mobilenetv2trainingjobs", "", NS, name),
        Request("list", JOBS, "mobilenetv2trainingjobs", "", NS),
        Request("get", "", "secrets", "", NS, "anything"),
        Request("create", "", "pods", "", NS),
        Request("create", "", "serviceaccounts", "token", NS, f"{name}-trainer"),
        Request("patch", RBAC, "roles", "", NS, f"{name}-trainer"),
    ]
    for request in denied:
        assert not allowed(grants, request), str(request)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_pods_reference_only_what_the_job_owns_or_names(example: Path) -> None:
    """Volumes: the job's ConfigMap, claims the spec names, scratch, rank 0's token; no Secret volume."""
    name, result = rendered(example)
    job = yaml.safe_load(example.read_text())["spec"]
    claims = {(job.get(part) or {}).get("pvc", {}).get("claimName") for part in ("dataset", "output")} - {
        None
    }
    for pod in result.pods:
        spec = pod["spec"]
        assert spec["serviceAccountName"] == f"{name}-trainer"
        assert spec["automountServiceAccountToken"] is False
        for volume in spec["volumes"]:
            kind = next(k for k in volume if k != "name")
            if kind == "configMap":
                assert volume["configMap"]["name"] == f"{name}-config"
            elif kind == "persistentVolumeClaim":
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            elif kind == "projected":
                names = [s["configMap"]["name"] for s in volume["projected"]["sources"] if "configMap" in s]
                assert names == ["kube-root-ca.crt"]
            elif kind == "hostPath":
                assert volume["hostPath"]["path"].startswith(("/usr/local/Ascend/", "/etc/"))
            else:
                assert kind == "emptyDir", kind
        for c in spec["containers"] + spec.get("initContainers", []):
            for env in c.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {})


def test_the_trainer_service_account_mounts_no_token_by_itself() -> None:
    _, result = rendered(EXAMPLES[0])
    (account,) = [o for o in result.objects if o["kind"] == "ServiceAccount"]
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    "values", [None, {"watchNamespaces": ["team-a"]}], ids=["cluster-wide", "namespaced"]
)
def test_the_operator_holds_no_right_a_job_could_borrow_beyond_its_pods(
    values: dict[str, Any] | None,
) -> None:
    """The operator's own rights: no Secrets, no pod exec/attach, no tokens, no RBAC escalation."""
    grants = grants_for_service_account(render_chart(values), "mnv2-operator", "mnv2-system")
    for request in [
        Request("get", "", "secrets", "", NS, "x"),
        Request("list", "", "secrets", "", NS),
        Request("create", "", "pods", "exec", NS, "x"),
        Request("create", "", "pods", "attach", NS, "x"),
        Request("create", "", "serviceaccounts", "token", NS, "x"),
        Request("escalate", RBAC, "roles", "", NS, "x"),
        Request("bind", RBAC, "clusterroles", "", "", "cluster-admin"),
        Request("create", RBAC, "clusterrolebindings"),
        Request("impersonate", "", "serviceaccounts", "", NS, "x"),
        Request("update", JOBS, "mobilenetv2trainingjobs", "", NS, "x"),
        Request("patch", JOBS, "mobilenetv2trainingjobs", "", NS, "x"),
        Request("patch", "", "nodes", "", "", "n"),
        Request("delete", "", "services", "", NS, "x"),
        Request("delete", "", "configmaps", "", NS, "x"),
        Request("delete", RBAC, "rolebindings", "", NS, "x"),
    ]:
        assert not allowed(grants, request), str(request)
    # Kubernetes lets the operator create the trainer Role only because it holds its rules itself.
    _, result = rendered(EXAMPLES[0])
    (role,) = [o for o in result.objects if o["kind"] == "Role"]
    for rule in role["rules"]:
        for verb in rule["verbs"]:
            for resource in rule["resources"]:
                base, _, sub = resource.partition("/")
                assert allowed(
                    grants, Request(verb, rule["apiGroups"][0], base, sub, NS, rule["resourceNames"][0])
                )


# --------------------------------------------------------------------------------------------------
# Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
# --------------------------------------------------------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of the baseline profile a pod fails."""
    spec = pod["spec"]
    found = [f"hostPath {v['hostPath']['path']}" for v in spec["volumes"] if "hostPath" in v]
    found += [key for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append("privileged")
        if set((sc.get("capabilities") or {}).get("add", [])) - {
            "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
            "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
        }:  # fmt: skip
            found.append("capabilities")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append("hostPort")
        if sc.get("procMount", "Default") != "Default":
            found.append("procMount")
    if (spec.get("securityContext") or {}).get("sysctls"):
        found.append("sysctls")
    return found


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of the restricted profile (baseline's included) a pod fails."""
    spec = pod["spec"]
    found = baseline_violations(pod)
    found += [
        f"volume {k}" for v in spec["volumes"] for k in v if k != "name" and k not in RESTRICTED_VOLUMES
    ]
    psc = spec.get("securityContext") or {}
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccomp")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities")
    return found


def test_cpu_pods_meet_the_restricted_pod_security_level() -> None:
    job = yaml.safe_load((ROOT / "manifests/examples/digits-cpu.yaml").read_text())
    job["spec"]["nodes"] = 2  # rank 0 (token volume) and a worker with the DNS wait init container
    for pod in R.render_job("digits", NS, "uid", S.parse_spec(job["spec"])).pods:
        assert restricted_violations(pod) == []


def test_ascend_pods_meet_baseline_but_for_the_driver_host_paths() -> None:
    _, result = rendered(ROOT / "manifests/examples/imagenet-2x8.yaml")
    for pod in result.pods:
        for problem in baseline_violations(pod):
            # Read-only host files of the NPU driver: the reason Ascend namespaces need `privileged`.
            assert problem.startswith(("hostPath /usr/local/Ascend/", "hostPath /etc/")), problem
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        for volume in pod["spec"]["volumes"]:
            if "hostPath" in volume:
                assert mounts[volume["name"]]["readOnly"] is True


def test_the_pod_security_checks_can_fail() -> None:
    _, result = rendered(ROOT / "manifests/examples/imagenet-2x8.yaml")
    pod = result.pods[0]
    assert any(v.endswith("runAsNonRoot") for v in restricted_violations(pod))  # root, as documented
    pod["spec"]["hostNetwork"] = True
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert {"hostNetwork", "privileged"} <= set(baseline_violations(pod))
