"""The controller's handling of existing children and refused creates, against a scripted API (no
cluster, no kopf): what it sends when a create finds an object of that name."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from mnv2_operator import controller as ctrl
from mnv2_operator import kube
from mnv2_operator import status as st

UID = "0b9f2a4e-1111-4222-8333-444455556666"
NS, NAME = "ns", "j"
SPEC = {
    "model": {"name": "mobilenet_v2_035_96", "numClasses": 10},
    "dataset": {"type": "digits"},
    "accelerator": {"type": "cpu"},
    "devicesPerNode": 1,
    "nodes": 1,
    "output": {"pvc": {"claimName": "runs"}},
}


class ScriptedApi:
    """Answers like an API server holding `existing` objects (by path); records every request."""

    def __init__(self, existing: dict[str, dict[str, Any]], refuse: str = "") -> None:
        self.existing = existing
        self.refuse = refuse
        self.calls: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        self.calls.append((method, path, copy.deepcopy(body)))
        if method == "POST":
            named = f"{path}/{body['metadata']['name']}"
            if self.refuse and self.refuse in named:
                raise kube.ApiError(
                    422, "Unprocessable Entity", json.dumps({"message": "spec.x: Invalid value"})
                )
            if named in self.existing:
                raise kube.ApiError(409, "Conflict", "exists")
            return {"metadata": {"uid": "new"}}
        if method == "GET":
            if path in self.existing:
                return copy.deepcopy(self.existing[path])
            raise kube.ApiError(404, "Not Found")
        if method == "PATCH" and path.endswith("/status"):
            return None
        return {}

    def close(self) -> None:
        pass


def job(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1, "resourceVersion": "5"},
        "spec": SPEC,
        "status": status or {},
    }


def controller(api: ScriptedApi, monkeypatch: pytest.MonkeyPatch) -> tuple[ctrl.Controller, list[st.Event]]:
    events: list[st.Event] = []
    monkeypatch.setattr(ctrl.Controller, "_post", lambda self, job, evs: events.extend(evs))
    c = ctrl.Controller(api, clock=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))  # type: ignore[arg-type]
    return c, events


CM = f"/api/v1/namespaces/{NS}/configmaps/{NAME}-config"
OWN_REF = {
    "apiVersion": "training.mnv2.dev/v1alpha1",
    "kind": "MobileNetV2TrainingJob",
    "name": NAME,
    "uid": UID,
}


async def test_someone_elses_object_is_read_and_never_written(monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = {
        "metadata": {
            "name": f"{NAME}-config",
            "resourceVersion": "7",
            "ownerReferences": [{**OWN_REF, "controller": False}],
        }
    }
    api = ScriptedApi({CM: theirs})
    c, events = controller(api, monkeypatch)
    again = await c._reconcile((NS, NAME), job())
    assert [(m, p) for m, p, _ in api.calls if p.startswith(CM)] == [("GET", CM)]
    assert not any(m == "POST" and "/pods" in p for m, p, _ in api.calls)  # blocked: no pod
    assert [e.reason for e in events if e.type == "Warning"] == ["ChildConflict"]
    assert "ConfigMap j-config (no controller owner reference)" in events[-1].message
    assert again == 1.0  # looked at again after 1 s (doubling to 30 s)
    status = api.calls[-1][2]["status"]
    created = next(x for x in status["conditions"] if x["type"] == "Created")
    assert (created["status"], created["reason"]) == ("False", "ChildConflict")


async def test_the_jobs_own_child_is_patched_with_a_precondition_and_its_owners_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours = {
        "metadata": {
            "name": f"{NAME}-config",
            "resourceVersion": "7",
            "ownerReferences": [{**OWN_REF, "controller": True}],
        }
    }
    api = ScriptedApi({CM: ours})
    c, events = controller(api, monkeypatch)
    await c._reconcile((NS, NAME), job())
    patches = [body for m, p, body in api.calls if m == "PATCH" and p == CM]
    assert len(patches) == 1
    assert patches[0]["metadata"]["resourceVersion"] == "7"
    assert "ownerReferences" not in patches[0]["metadata"]
    assert "config.yaml" in patches[0]["data"]
    assert any(m == "POST" and p.endswith("/pods") for m, p, _ in api.calls)
    assert "ChildConflict" not in [e.reason for e in events]


async def test_the_jobs_own_fixed_children_are_read_and_never_patched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Service, ServiceAccount, Role and RoleBinding never change after their create: the operator
    holds no patch right on them, and a reconcile that finds the job's own only reads them."""
    paths = {
        f"/api/v1/namespaces/{NS}/services/{NAME}",
        f"/api/v1/namespaces/{NS}/serviceaccounts/{NAME}-trainer",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{NAME}-trainer",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/{NAME}-trainer",
        CM,
    }
    ours = {"metadata": {"resourceVersion": "7", "ownerReferences": [{**OWN_REF, "controller": True}]}}
    api = ScriptedApi(dict.fromkeys(paths, ours))
    c, events = controller(api, monkeypatch)
    await c._reconcile((NS, NAME), job())
    assert {p for m, p, _ in api.calls if m == "GET"} == paths
    assert [p for m, p, _ in api.calls if m == "PATCH" and not p.endswith("/status")] == [CM]
    assert any(m == "POST" and p.endswith("/pods") for m, p, _ in api.calls)
    assert "ChildConflict" not in [e.reason for e in events]


async def test_a_refused_create_fails_the_job_after_three_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    api = ScriptedApi({}, refuse="/pods/j-worker-0")
    c, events = controller(api, monkeypatch)
    j = job()
    for attempt in (1, 2):
        with pytest.raises(kube.ApiError):  # retried by the scheduler, with backoff
            await c._reconcile((NS, NAME), j)
        assert f"try {attempt} of 3" in events[-1].message
    assert await c._reconcile((NS, NAME), j) is None
    final = [body["status"] for m, p, body in api.calls if m == "PATCH" and p.endswith("/status")][-1]
    assert final["phase"] == "Failed"
    assert "the API server refused Pod j-worker-0: spec.x: Invalid value" in final["message"]
    assert events[-1].reason == "InvalidSpec"
