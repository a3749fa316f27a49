"""The chart's RBAC judged by a real API server's authorizer, with real identities.

The chart is rendered with Helm's engine (both modes: cluster-wide, and `watchNamespaces`) and its
ServiceAccounts, roles and bindings are applied to the local control plane (kube-apiserver with
`--authorization-mode=Node,RBAC`). Then:

- the operator's ServiceAccount, with a token from a TokenRequest, creates a job's rendered children
  the way the operator does (its Role and RoleBinding pass Kubernetes' escalation checks with only
  the chart's rules), and gets a real 403 for everything the chart leaves out: Secrets, pods/exec,
  token requests, node writes, patching children that never change, Roles granting more than it holds;
- a user who may only create (and read) jobs in one namespace creates one; the children the operator
  makes for it change nothing of what that user may do, and the job's trainer ServiceAccount (rank 0's
  identity) may patch the status of that one job and nothing else: a real 403 on another job's status;
- SubjectAccessReviews over a matrix of requests agree, request by request, with the pure evaluator
  (`support.rbac`) that the operator suites use to check audited requests against the chart.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterable
from typing import Any

import kubernetes
import pytest
import yaml
from mnv2_cluster.launcher import Cluster
from mnv2_operator import constants as C
from mnv2_operator import render
from mnv2_operator import spec as S
from mnv2_operator.kube import job_path, object_path
from support import REPO_ROOT
from support.rbac import Request, allowed, grants_for_service_account

from manifests import render_chart

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = C.GROUP, C.VERSION, C.PLURAL
RBAC = "rbac.authorization.k8s.io"
TEAM_A, TEAM_B = "team-a", "team-b"
# (release, namespace, values, the operator's ServiceAccount) of the two installs.
CLUSTER_WIDE = ("mnv2-operator", "mnv2-system", {}, "mnv2-operator")
NAMESPACED = ("mnv2-ns", "mnv2-ns", {"watchNamespaces": [TEAM_A]}, "mnv2-ns-mnv2-operator")
AUTHOR, AUTHOR_GROUP = "alice", "team-a-developers"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


# --------------------------------------------------------------------------------------------------
# Requests, answered by the API server


def send(
    client: Any, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """One request as the client's identity; (HTTP status, decoded body). Never raises on a status."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    m, url, headers, data, post = client.param_serialize(
        method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = client.call_api(m, url, headers, data, post, _request_timeout=(10, 30))
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode("utf-8", "replace")


def merge_patch(client: Any, path: str, body: Any) -> tuple[int, Any]:
    return send(client, "PATCH", path, body, "application/merge-patch+json")


def expect(code: int, answer: tuple[int, Any], what: str) -> Any:
    status, body = answer
    assert status == code, f"{what}: expected {code}, got {status}: {body}"
    return body


def forbidden(answer: tuple[int, Any], what: str) -> str:
    """The answer is the authorizer's 403; returns its message."""
    body = expect(403, answer, what)
    assert body["reason"] == "Forbidden", body
    return str(body["message"])


def sa_user(namespace: str, name: str) -> tuple[str, list[str]]:
    """The user name and groups a ServiceAccount's token authenticates as."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    return f"system:serviceaccount:{namespace}:{name}", groups


def reviews(admin: Any, user: str, groups: list[str], requests: Iterable[Request]) -> dict[Request, bool]:
    """SubjectAccessReviews of `requests` for `user`: the authorizer's decision on each."""

    def one(r: Request) -> bool:
        attributes = {
            "namespace": r.namespace,
            "verb": r.verb,
            "group": r.group,
            "resource": r.resource,
            "subresource": r.subresource,
            "name": r.name,
        }
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
        }
        answer = expect(
            201, send(admin, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body), str(r)
        )
        return bool(answer["status"].get("allowed"))

    requests = list(requests)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(requests, pool.map(one, requests), strict=True))


def rules_of(client: Any, namespace: str) -> list[tuple[list[str], list[str], list[str], list[str]]]:
    """The client's own resource rules in `namespace`, as the API server lists them (a
    SelfSubjectRulesReview: what `kubectl auth can-i --list` shows)."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    answer = expect(
        201, send(client, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", review), ""
    )
    assert answer["status"]["incomplete"] is False, answer["status"]
    return [
        (rule["apiGroups"], rule["resources"], rule.get("resourceNames", []), rule["verbs"])
        for rule in answer["status"]["resourceRules"]
    ]


# (group, resource, subresource, namespaced)
RESOURCES = [
    ("", "pods", "", True),
    ("", "pods", "exec", True),
    ("", "pods", "attach", True),
    ("", "pods", "portforward", True),
    ("", "pods", "ephemeralcontainers", True),
    ("", "pods", "status", True),
    ("", "services", "", True),
    ("", "configmaps", "", True),
    ("", "secrets", "", True),
    ("", "serviceaccounts", "", True),
    ("", "serviceaccounts", "token", True),
    ("", "events", "", True),
    ("", "persistentvolumeclaims", "", True),
    ("", "nodes", "", False),
    ("", "namespaces", "", False),
    ("", "persistentvolumes", "", False),
    ("apps", "deployments", "", True),
    ("coordination.k8s.io", "leases", "", True),
    (RBAC, "roles", "", True),
    (RBAC, "rolebindings", "", True),
    (RBAC, "clusterroles", "", False),
    (RBAC, "clusterrolebindings", "", False),
    (GROUP, PLURAL, "", True),
    (GROUP, PLURAL, "status", True),
    (GROUP, PLURAL, "finalizers", True),
    ("apiextensions.k8s.io", "customresourcedefinitions", "", False),
    ("scheduling.volcano.sh", "podgroups", "", True),
    ("scheduling.k8s.io", "priorityclasses", "", False),
]
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
NAMED_VERBS = {"get", "update", "patch", "delete"}
# Verbs of RBAC's own: granting what one does not hold, binding any role, acting as someone else.
SPECIAL = [
    Request("escalate", RBAC, "roles", namespace=TEAM_A, name="any"),
    Request("bind", RBAC, "roles", namespace=TEAM_A, name="any"),
    Request("bind", RBAC, "clusterroles", name="admin"),
    Request("escalate", RBAC, "clusterroles", name="admin"),
    Request("impersonate", "", "serviceaccounts", namespace=TEAM_A, name="default"),
    Request("impersonate", "", "users", name="admin"),
    Request("impersonate", "", "groups", name="system:masters"),
]


def matrix(name: str) -> list[Request]:
    """Every verb on every resource of RESOURCES, in team-a, team-b and cluster-wide, plus SPECIAL."""
    requests = list(SPECIAL)
    for group, resource, sub, namespaced in RESOURCES:
        for namespace in (TEAM_A, TEAM_B, "") if namespaced else ("",):
            for verb in VERBS:
                named = name if verb in NAMED_VERBS else ""
                if verb in NAMED_VERBS and not namespace and namespaced:
                    continue  # a named object of a namespaced kind is always in a namespace
                requests.append(Request(verb, group, resource, sub, namespace, named))
    return requests


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def admin(control_plane: Cluster) -> Any:
    return control_plane.api_client()


@pytest.fixture(scope="module")
def installed(control_plane: Cluster, admin: Any) -> dict[str, list[dict[str, Any]]]:
    """The chart's RBAC of both installs, applied; the rendered objects by release."""
    for namespace in (TEAM_A, TEAM_B, CLUSTER_WIDE[1], NAMESPACED[1]):
        expect(201, send(admin, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}), namespace)
    rendered = {}
    for release, namespace, values, _ in (CLUSTER_WIDE, NAMESPACED):
        objects = render_chart(values, release=release, namespace=namespace)
        rbac = [o for o in objects if o["kind"] in RBAC_KINDS]
        assert {o["kind"] for o in rbac} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
        kubernetes.utils.create_from_yaml(admin, yaml_objects=rbac)
        rendered[release] = objects
    return rendered


@pytest.fixture(scope="module")
def operator(control_plane: Cluster, installed: Any) -> Any:
    """A client with the cluster-wide operator's ServiceAccount token (TokenRequest)."""
    _, namespace, _, name = CLUSTER_WIDE
    return control_plane.api_client(control_plane.kubeconfig_for_service_account(namespace, name))


def job_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    example = yaml.safe_load((REPO_ROOT / "manifests" / "examples" / "digits-cpu.yaml").read_text())
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": C.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": example["spec"] | spec,
    }


def rendered_children(job: dict[str, Any]) -> render.RenderedJob:
    meta = job["metadata"]
    return render.render_job(meta["name"], meta["namespace"], meta["uid"], S.parse_spec(job["spec"]))


def create_children(client: Any, job: dict[str, Any], pods: bool = False) -> render.RenderedJob:
    """Create a job's rendered children as `client`, in the operator's order (pods last)."""
    result = rendered_children(job)
    namespace = job["metadata"]["namespace"]
    for obj in result.objects + (result.pods[:1] if pods else []):
        expect(201, send(client, "POST", object_path(obj, namespace), obj), f"create {obj['kind']}")
    return result


@pytest.fixture
def job_name(request: pytest.FixtureRequest) -> str:
    """A job name unique to the test."""
    return request.node.name.removeprefix("test_").replace("_", "-")[:30].strip("-")


# --------------------------------------------------------------------------------------------------
# The operator's own rights


@pytest.mark.parametrize("install", [CLUSTER_WIDE, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_the_real_authorizer_and_the_evaluator_agree_on_the_operators_rights(
    install: tuple[str, str, dict[str, Any], str], installed: dict[str, list[dict[str, Any]]], admin: Any
) -> None:
    release, namespace, values, account = install
    grants = grants_for_service_account(installed[release], account, namespace)
    requests = matrix("some-job")
    decided = reviews(admin, *sa_user(namespace, account), requests)
    mismatches = [
        f"{r}: authorizer {'allows' if real else 'denies'}, evaluator {'allows' if not real else 'denies'}"
        for r, real in decided.items()
        if real != allowed(grants, r)
    ]
    assert mismatches == [], "\n".join(mismatches)
    granted = {r for r, ok in decided.items() if ok}
    # Both answers occur (the comparison can fail either way), and the narrowing holds for real.
    assert granted and len(granted) < len(requests)
    assert Request("create", "", "pods", namespace=TEAM_A) in granted
    assert Request("patch", GROUP, PLURAL, "status", TEAM_A, "some-job") in granted
    for resource in ("services", "serviceaccounts"):
        assert Request("patch", "", resource, namespace=TEAM_A, name="some-job") not in granted
    assert Request("patch", RBAC, "roles", namespace=TEAM_A, name="some-job") not in granted
    assert not [
        r for r in granted if r.resource in ("secrets", "nodes") or r.subresource in ("exec", "token")
    ]
    assert not [
        r for r in granted if r.verb in ("update", "escalate", "bind", "impersonate", "deletecollection")
    ]
    if values.get("watchNamespaces"):
        assert not [r for r in granted if r.namespace == TEAM_B]
        assert all(r.verb in ("list", "watch") for r in granted if not r.namespace)


def test_the_operator_creates_a_jobs_children_with_the_charts_rules_and_nothing_more(
    admin: Any, operator: Any, job_name: str
) -> None:
    name = job_name
    job = expect(
        201,
        send(admin, "POST", job_path(TEAM_A), job_manifest(name, TEAM_A, scheduling={"gang": True})),
        "job",
    )
    secret = {"metadata": {"name": f"{name}-secret"}, "stringData": {"password": "hunter2"}}
    expect(201, send(admin, "POST", f"/api/v1/namespaces/{TEAM_A}/secrets", secret), "secret")

    # Everything the operator does for a job: the children (the Role and RoleBinding pass the
    # escalation checks because the operator holds patch on the status), rank 0's pod, an Event.
    result = create_children(operator, job, pods=True)
    kinds = [o["kind"] for o in result.objects]
    assert kinds == ["Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PodGroup"]
    (pod,) = result.pods[:1]
    pod_path = object_path(pod, TEAM_A, named=True)
    for obj in result.objects:
        path = object_path(obj, TEAM_A)
        expect(409, send(operator, "POST", path, obj), f"create {obj['kind']} again")
        existing = expect(
            200, send(operator, "GET", object_path(obj, TEAM_A, named=True)), f"get {obj['kind']}"
        )
        patch = {"metadata": {"resourceVersion": existing["metadata"]["resourceVersion"]}}
        answer = merge_patch(operator, object_path(obj, TEAM_A, named=True), patch)
        if obj["kind"] in render.FIXED_KINDS:
            forbidden(answer, f"patch {obj['kind']} (complete once created)")
        else:
            expect(200, answer, f"patch {obj['kind']}")
    expect(
        200,
        merge_patch(operator, job_path(TEAM_A, name, "status"), {"status": {"phase": "Pending"}}),
        "status",
    )
    expect(200, send(operator, "GET", job_path(TEAM_A, name)), "get job")
    expect(200, send(operator, "GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}"), "list jobs everywhere")
    selector = "training.mnv2.dev/job-name,training.mnv2.dev/role=worker"
    expect(200, send(operator, "GET", f"/api/v1/pods?labelSelector={selector}"), "list pods")
    expect(200, send(operator, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"), "list CRDs")
    event = {
        "metadata": {"generateName": f"{name}."},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": C.KIND,
            "name": name,
            "namespace": TEAM_A,
        },
        "reason": "PodsCreated",
        "message": "attempt 0: created",
        "type": "Normal",
    }
    expect(201, send(operator, "POST", f"/api/v1/namespaces/{TEAM_A}/events", event), "event")

    # What the chart leaves out is refused by the authorizer.
    forbidden(send(operator, "GET", f"/api/v1/namespaces/{TEAM_A}/secrets/{name}-secret"), "get a Secret")
    forbidden(send(operator, "GET", "/api/v1/secrets"), "list Secrets")
    forbidden(send(operator, "POST", f"{pod_path}/exec?command=id&stdout=true"), "exec")
    forbidden(send(operator, "POST", f"{pod_path}/attach?stdout=true"), "attach")
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    trainer = f"/api/v1/namespaces/{TEAM_A}/serviceaccounts/{name}-trainer"
    forbidden(send(operator, "POST", f"{trainer}/token", token), "a token of the trainer")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{name}-node"}}
    forbidden(send(operator, "POST", "/api/v1/nodes", node), "create a Node")
    forbidden(
        merge_patch(operator, "/api/v1/nodes/node-1", {"metadata": {"labels": {"a": "b"}}}), "patch a Node"
    )
    forbidden(
        send(operator, "DELETE", object_path(result.objects[1], TEAM_A, named=True)), "delete a ConfigMap"
    )
    forbidden(send(operator, "PUT", job_path(TEAM_A, name), job), "update a job")
    forbidden(merge_patch(operator, job_path(TEAM_A, name), {"spec": {"nodes": 2}}), "patch a job's spec")
    forbidden(send(operator, "GET", job_path(TEAM_A, name, "status")), "get the status (never read)")
    # Kubernetes' escalation checks: a Role granting what the operator lacks, a binding to a role
    # whose rights it lacks, anything cluster-wide.
    greedy = {
        "metadata": {"name": f"{name}-greedy"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }
    message = forbidden(
        send(operator, "POST", f"/apis/{RBAC}/v1/namespaces/{TEAM_A}/roles", greedy), "greedy Role"
    )
    assert "attempting to grant RBAC permissions not currently held" in message
    binding = {
        "metadata": {"name": f"{name}-admin"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": f"{name}-trainer", "namespace": TEAM_A}],
    }
    forbidden(
        send(operator, "POST", f"/apis/{RBAC}/v1/namespaces/{TEAM_A}/rolebindings", binding), "bind admin"
    )
    forbidden(send(operator, "POST", f"/apis/{RBAC}/v1/clusterrolebindings", binding), "ClusterRoleBinding")

    # What remains of the job's life: its pod deleted (uid precondition), the job deleted (TTL).
    uid = expect(200, send(admin, "GET", pod_path), "pod")["metadata"]["uid"]
    expect(200, send(operator, "DELETE", pod_path, {"preconditions": {"uid": uid}}), "delete the pod")
    expect(
        200, send(operator, "DELETE", job_path(TEAM_A, name), {"propagationPolicy": "Background"}), "delete"
    )


def test_the_namespaced_operator_is_refused_outside_its_namespaces(
    control_plane: Cluster, installed: Any, admin: Any, job_name: str
) -> None:
    _, namespace, _, account = NAMESPACED
    client = control_plane.api_client(control_plane.kubeconfig_for_service_account(namespace, account))
    # In its namespace, a job's children (the trainer Role passes the escalation check with the
    # per-namespace Role's rules); the same objects in team-b are refused.
    jobs = {}
    for ns in (TEAM_A, TEAM_B):
        jobs[ns] = expect(201, send(admin, "POST", job_path(ns), job_manifest(job_name, ns)), f"job in {ns}")
    result = create_children(client, jobs[TEAM_A], pods=True)
    assert {o["kind"] for o in result.objects} >= {"Role", "RoleBinding"}
    for obj in rendered_children(jobs[TEAM_B]).all()[:6]:
        forbidden(send(client, "POST", object_path(obj, TEAM_B), obj), f"{obj['kind']} in team-b")
    forbidden(merge_patch(client, job_path(TEAM_B, job_name, "status"), {"status": {}}), "status in team-b")
    forbidden(send(client, "GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}"), "jobs of every namespace")
    expect(200, send(client, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{TEAM_A}/{PLURAL}"), "team-a's jobs")
    expect(200, send(client, "GET", "/api/v1/namespaces"), "namespaces (kopf follows them)")
    forbidden(
        send(client, "POST", "/api/v1/namespaces", {"metadata": {"name": f"{job_name}-ns"}}), "a namespace"
    )


# --------------------------------------------------------------------------------------------------
# A job's author, and the trainer of their job


@pytest.fixture(scope="module")
def author(control_plane: Cluster, admin: Any, installed: Any) -> Any:
    """A user who may create, get, list and watch jobs in team-a, and nothing else."""
    role = {
        "metadata": {"name": "job-author"},
        "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "watch"]}],
    }
    binding = {
        "metadata": {"name": "job-author"},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "job-author"},
        "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": AUTHOR_GROUP}],
    }
    base = f"/apis/{RBAC}/v1/namespaces/{TEAM_A}"
    expect(201, send(admin, "POST", f"{base}/roles", role), "author Role")
    expect(201, send(admin, "POST", f"{base}/rolebindings", binding), "author RoleBinding")
    return control_plane.api_client(control_plane.kubeconfig_for_user(AUTHOR, [AUTHOR_GROUP]))


def author_may(request: Request) -> bool:
    """What the author's Role allows."""
    return (
        (request.group, request.resource, request.subresource) == (GROUP, PLURAL, "")
        and request.namespace == TEAM_A
        and request.verb in ("create", "get", "list", "watch")
    )


def test_a_job_author_gains_only_their_trainers_patch_of_their_jobs_status(
    control_plane: Cluster, admin: Any, operator: Any, author: Any, job_name: str
) -> None:
    mine, theirs = f"{job_name}-mine", f"{job_name}-theirs"
    user, groups = AUTHOR, [AUTHOR_GROUP, "system:authenticated"]
    forbidden(send(author, "POST", job_path(TEAM_B), job_manifest(mine, TEAM_B)), "a job in team-b")
    job = expect(201, send(author, "POST", job_path(TEAM_A), job_manifest(mine, TEAM_A)), "the author's job")
    other = expect(201, send(admin, "POST", job_path(TEAM_A), job_manifest(theirs, TEAM_A)), "someone's job")
    requests = matrix(f"{mine}-trainer") + matrix(mine)
    before = reviews(admin, user, groups, requests)
    assert {r for r, ok in before.items() if ok} == {r for r in requests if author_may(r)}

    # The operator makes the author's job's children, pods included.
    create_children(operator, job, pods=True)
    create_children(operator, other)
    after = reviews(admin, user, groups, requests)
    assert after == before, "the operator's objects changed what the author may do: " + ", ".join(
        str(r) for r in requests if after[r] != before[r]
    )

    # The job's trainer (rank 0's identity, a token like the one its pod mounts) may patch the status
    # of that one job: what the API server itself says it may do, in team-a and elsewhere.
    trainer = control_plane.api_client(
        control_plane.kubeconfig_for_service_account(TEAM_A, f"{mine}-trainer")
    )
    nobody = control_plane.api_client(control_plane.kubeconfig_for_service_account(TEAM_A, "default"))
    for namespace, want in ((TEAM_A, [([GROUP], [f"{PLURAL}/status"], [mine], ["patch"])]), (TEAM_B, [])):
        baseline = rules_of(nobody, namespace)  # what every ServiceAccount may do (discovery, ...)
        assert baseline, "no rules at all: the review is not answering"
        assert [rule for rule in rules_of(trainer, namespace) if rule not in baseline] == want, namespace
    decided = reviews(admin, *sa_user(TEAM_A, f"{mine}-trainer"), requests + matrix(theirs))
    assert {r for r, ok in decided.items() if ok} == {Request("patch", GROUP, PLURAL, "status", TEAM_A, mine)}

    # For real, with its token.
    status = {"status": {"progress": {"epoch": 1, "totalEpochs": 15}}}
    patched = expect(200, merge_patch(trainer, job_path(TEAM_A, mine, "status"), status), "its own status")
    assert patched["status"]["progress"]["epoch"] == 1
    message = forbidden(
        merge_patch(trainer, job_path(TEAM_A, theirs, "status"), status), "another job's status"
    )
    assert (
        f'"system:serviceaccount:{TEAM_A}:{mine}-trainer" cannot patch resource "{PLURAL}/status"' in message
    )
    forbidden(send(trainer, "GET", job_path(TEAM_A, theirs)), "read another job")
    forbidden(send(trainer, "GET", job_path(TEAM_A, mine)), "read its own job")
    forbidden(send(trainer, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{TEAM_A}/{PLURAL}"), "list jobs")
    forbidden(merge_patch(trainer, job_path(TEAM_A, mine), {"spec": {"nodes": 4}}), "its own job's spec")
    forbidden(send(trainer, "DELETE", job_path(TEAM_A, mine)), "delete its own job")
    forbidden(send(trainer, "GET", f"/api/v1/namespaces/{TEAM_A}/secrets"), "list Secrets")
    pod = {"metadata": {"name": f"{mine}-x"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    forbidden(send(trainer, "POST", f"/api/v1/namespaces/{TEAM_A}/pods", pod), "create a pod")
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    sa = f"/api/v1/namespaces/{TEAM_A}/serviceaccounts/{mine}-trainer"
    forbidden(send(trainer, "POST", f"{sa}/token", token), "a new token for itself")
    role = f"/apis/{RBAC}/v1/namespaces/{TEAM_A}/roles/{mine}-trainer"
    forbidden(merge_patch(trainer, role, {"rules": []}), "its own Role")
    forbidden(
        merge_patch(trainer, job_path(TEAM_B, mine, "status"), status), "a status of that name in team-b"
    )

    # The same, as `kubectl auth can-i` reports it (the admin impersonating the trainer).
    as_trainer = f"--as=system:serviceaccount:{TEAM_A}:{mine}-trainer"
    for args, want in [
        ((f"{PLURAL}.{GROUP}/{mine}", "--subresource=status"), "yes"),
        ((f"{PLURAL}.{GROUP}/{theirs}", "--subresource=status"), "no"),
        ((f"{PLURAL}.{GROUP}/{mine}",), "no"),
    ]:
        answer = control_plane.kubectl("auth", "can-i", "patch", *args, "-n", TEAM_A, as_trainer, check=False)
        assert answer.stdout.strip() == want, (args, answer.stdout, answer.stderr)
    for verb, what in (("get", "secrets"), ("create", "pods"), ("create", "serviceaccounts/token")):
        answer = control_plane.kubectl("auth", "can-i", verb, what, "-n", TEAM_A, as_trainer, check=False)
        assert answer.stdout.strip() == "no", (verb, what, answer.stdout, answer.stderr)


def test_the_author_cannot_borrow_the_trainers_identity(admin: Any, author: Any, job_name: str) -> None:
    """No token request, impersonation or pod of the author's can run as their job's trainer."""
    trainer = f"{job_name}-trainer"
    user, groups = AUTHOR, [AUTHOR_GROUP, "system:authenticated"]
    decided = reviews(
        admin,
        user,
        groups,
        [
            Request("create", "", "serviceaccounts", "token", TEAM_A, trainer),
            Request("impersonate", "", "serviceaccounts", "", TEAM_A, trainer),
            Request("create", "", "pods", "", TEAM_A),
            Request("patch", GROUP, PLURAL, "status", TEAM_A, job_name),
        ],
    )
    assert not any(decided.values()), decided
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    path = f"/api/v1/namespaces/{TEAM_A}/serviceaccounts/{trainer}/token"
    forbidden(send(author, "POST", path, token), "the author asks for the trainer's token")
