"""Watch semantics: initial events, resumption from a resourceVersion, selector transitions."""

from __future__ import annotations

import kubernetes
import pytest

pytestmark = pytest.mark.cluster


def watch_events(core: kubernetes.client.CoreV1Api, ns: str, **kwargs: object) -> list[tuple[str, str]]:
    w = kubernetes.watch.Watch()
    out = []
    for ev in w.stream(core.list_namespaced_config_map, ns, timeout_seconds=1, **kwargs):
        out.append((ev["type"], ev["object"].metadata.name))
    return out


def test_watch_without_version_starts_with_existing_objects(
    api: kubernetes.client.ApiClient, ns: str
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    for name in ("w1", "w2"):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": {"watch": "me"}}})
    assert sorted(watch_events(core, ns, label_selector="watch=me")) == [("ADDED", "w1"), ("ADDED", "w2")]


def test_watch_resumes_from_resource_version_with_selector_transitions(
    api: kubernetes.client.ApiClient, ns: str
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "before", "labels": {"sel": "yes"}}})
    rv0 = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "a", "labels": {"sel": "yes"}}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "b", "labels": {"sel": "no"}}})
    core.patch_namespaced_config_map("a", ns, {"data": {"k": "v"}})
    core.patch_namespaced_config_map("b", ns, {"metadata": {"labels": {"sel": "yes"}}})
    core.patch_namespaced_config_map("a", ns, {"metadata": {"labels": {"sel": "no"}}})
    core.delete_namespaced_config_map("b", ns)
    events = watch_events(core, ns, label_selector="sel=yes", resource_version=rv0)
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a"), ("DELETED", "b")]


def test_watch_single_object_by_field_selector(api: kubernetes.client.ApiClient, ns: str) -> None:
    core = kubernetes.client.CoreV1Api(api)
    rv0 = core.create_namespaced_config_map(ns, {"metadata": {"name": "one"}}).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "two"}})
    core.patch_namespaced_config_map("one", ns, {"data": {"x": "1"}})
    events = watch_events(core, ns, field_selector="metadata.name=one", resource_version=rv0)
    assert events == [("MODIFIED", "one")]
