"""The MobileNetV2TrainingJob CRD on the real API server: what its structural schema does to the
examples (defaults, pruning, validation) agrees with what `spec.parse_spec` assumes.

The CRD is the checked-in one (manifests/crd/, identical to `crd.crd_yaml()`, a unit test checks), so
these run against any cluster that has it installed.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest
import yaml
from mnv2_operator import constants as C
from mnv2_operator import spec as S
from support import REPO_ROOT

pytestmark = pytest.mark.cluster

ROOT = REPO_ROOT
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GROUP, VERSION, PLURAL = C.GROUP, C.VERSION, C.PLURAL


@pytest.fixture
def co(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def dry_run_create(co: kubernetes.client.CustomObjectsApi, ns: str, doc: dict) -> dict:
    """What the API server would store for `doc` (server-side dry run: nothing is kept)."""
    return co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc, dry_run="All")  # type: ignore[no-any-return]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_api_server_defaults_agree_with_the_models(co, ns: str, example: Path) -> None:
    """The API server keeps every example whole, and the defaults it fills in are the ones parse_spec
    assumes."""
    (doc,) = [d for d in yaml.safe_load_all(example.read_text()) if d and d.get("kind") == C.KIND]
    doc["metadata"].pop("namespace", None)
    stored = dry_run_create(co, ns, doc)
    assert stored["spec"]["runPolicy"]["backoffLimit"] == doc["spec"].get("runPolicy", {}).get(
        "backoffLimit", 3
    )
    for key, value in doc["spec"].items():  # nothing of the example was pruned
        if isinstance(value, dict):
            assert value.items() <= stored["spec"][key].items(), key
        else:
            assert stored["spec"][key] == value, key
    assert S.parse_spec(stored["spec"]) == S.parse_spec(doc["spec"])


def test_api_server_prunes_a_misspelt_field(co, ns: str) -> None:
    """Why parse_spec still matters: a typo never reaches it through the API server (kubectl warns)."""
    doc = {
        "apiVersion": C.API_VERSION,
        "kind": C.KIND,
        "metadata": {"name": "x"},
        "spec": {"model": {"name": "mobilenet_v2_075"}, "dataset": {"type": "digits"}, "devicesPerNod": 2},
    }
    stored = dry_run_create(co, ns, doc)
    assert "devicesPerNod" not in stored["spec"]
    assert stored["spec"]["model"]["name"] == "mobilenet_v2_075"
