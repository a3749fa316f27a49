"""Which existing objects are a job's (status.owned_by), and what a blocked job says (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from mnv2_operator import constants as C
from mnv2_operator import controller
from mnv2_operator import status as st

UID = "11111111-2222-3333-4444-555555555555"
KIND = C.KIND


def obj(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "j-config", "ownerReferences": list(refs)}}


def ref(uid: str = UID, controller: Any = True, kind: str = KIND, name: str = "j") -> dict[str, Any]:
    return {
        "apiVersion": "training.mnv2.dev/v1alpha1",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": controller,
    }


@pytest.mark.parametrize(
    ("thing", "ours"),
    [
        (obj(ref()), True),
        (obj(ref(kind="Deployment", name="x", uid="other", controller=False), ref()), True),
        (obj(), False),
        ({"metadata": {"name": "j-config"}}, False),
        (obj(ref(controller=False)), False),  # a plain owner reference is not control
        (obj(ref(controller=None)), False),
        (obj(ref(controller="true")), False),
        (obj(ref(uid="someone-else")), False),  # same name and kind, another job (a predecessor)
        (obj(ref(uid="")), False),
    ],
)
def test_only_a_controller_reference_with_the_jobs_uid_makes_an_object_the_jobs(
    thing: dict[str, Any], ours: bool
) -> None:
    assert st.owned_by(thing, UID) is ours
    assert st.owned_by(thing, "") is False


def test_the_operator_counts_only_pods_it_controls() -> None:
    mine = controller.slim_pod({"metadata": {"name": "j-worker-0", "ownerReferences": [ref()]}})
    labelled = controller.slim_pod(
        {
            "metadata": {
                "name": "j-worker-1",
                "labels": {C.LABEL_JOB: "j"},
                "ownerReferences": [ref(controller=False)],
            }
        }
    )
    assert controller.owned_pods([mine, labelled], UID) == [mine]


def test_a_conflict_says_whose_object_is_in_the_way_and_the_fix() -> None:
    none = st.conflict("ConfigMap", "j-config", obj(), KIND, "j")
    assert none == "ConfigMap j-config (no controller owner reference)"
    other = st.conflict("Service", "j", obj(ref(kind="Deployment", name="web", uid="x")), KIND, "j")
    assert other == "Service j (controlled by Deployment web)"
    earlier = st.conflict("Pod", "j-worker-0", obj(ref(uid="old")), KIND, "j")
    assert "an earlier MobileNetV2TrainingJob of the same name (uid old)" in earlier
    assert "garbage collector removes shortly" in earlier
    one = st.conflicts_message([none])
    assert one.startswith(
        "ConfigMap j-config (no controller owner reference) exists already and is not this job's"
    )
    assert "delete or rename it, or re-create this job under another name" in one
    two = st.conflicts_message([none, other])
    assert "; Service j (controlled by Deployment web) exist already and are not this job's" in two
    assert "delete or rename them" in two
