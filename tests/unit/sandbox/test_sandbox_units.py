"""Pure parts of the sandbox: patches, selectors, schema handling, JSONPath, protobuf, kubelet helpers."""

from __future__ import annotations

import pytest
from mnv2_operator.sandbox import protobuf
from mnv2_operator.sandbox.kubelet import expand_vars, field_ref, path_rewriter, port_rewriter
from mnv2_operator.sandbox.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from mnv2_operator.sandbox.schema import process_custom_object
from mnv2_operator.sandbox.selectors import SelectorError, parse_field_selector, parse_label_selector
from mnv2_operator.sandbox.table import human_duration, jsonpath


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [3]}) == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert doc == {"a": {"b": 1, "c": 2}, "l": [1, 2]}  # input untouched


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c", "value": 2},
            {"op": "move", "from": "/b/c", "path": "/d"},
            {"op": "test", "path": "/d", "value": 2},
            {"op": "remove", "path": "/a/0"},
        ],
    )
    assert out == {"a": [2, 3], "b": {}, "d": 2}
    with pytest.raises(PatchError, match="/nope"):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])


def test_strategic_merge_patch_directives() -> None:
    pod = {
        "metadata": {"finalizers": ["a"]},
        "spec": {
            "containers": [
                {
                    "name": "x",
                    "image": "1",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                },
                {"name": "y", "image": "1"},
            ]
        },
    }
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "y"}, {"name": "x"}],
            "containers": [
                {"name": "x", "env": [{"name": "B", "$patch": "delete"}]},
                {"name": "z", "image": "3"},
            ],
        },
    }
    out = strategic_merge_patch(pod, patch)
    assert out["metadata"]["finalizers"] == ["a", "b"]
    names = [c["name"] for c in out["spec"]["containers"]]
    assert names[:2] == ["y", "x"] and "z" in names
    x = next(c for c in out["spec"]["containers"] if c["name"] == "x")
    assert x == {"name": "x", "image": "1", "env": [{"name": "A", "value": "1"}]}
    out = strategic_merge_patch(out, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert out["metadata"]["finalizers"] == ["b"]


def test_service_ports_merge_by_port() -> None:
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}})
    assert out["spec"]["ports"] == [
        {"port": 80, "name": "http", "targetPort": 8080},
        {"port": 443, "name": "https"},
    ]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a in (1, 2),b", {"a": "2", "b": ""}, True),
        ("a notin (1,2)", {"a": "3"}, True),
        ("!a", {"a": "1"}, False),
        ("a>1", {"a": "5"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict, expected: bool) -> None:
    match = parse_label_selector(selector)
    assert match is not None and match({"metadata": {"labels": labels}}) is expected


def test_selector_errors_name_the_problem() -> None:
    with pytest.raises(SelectorError, match="a in"):
        parse_label_selector("a in x")
    with pytest.raises(SelectorError, match="field label not supported: spec.foo"):
        parse_field_selector("spec.foo=1", "pods")
    match = parse_field_selector("status.phase!=Running,metadata.name=p", "pods")
    assert match is not None and match({"metadata": {"name": "p"}, "status": {"phase": "Failed"}})


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["n"],
            "properties": {
                "n": {"type": "integer", "minimum": 1},
                "port": {"x-kubernetes-int-or-string": True},
                "opt": {"type": "string", "nullable": True},
                "nested": {
                    "type": "object",
                    "default": {},
                    "properties": {"k": {"type": "string", "default": "v"}},
                },
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "m": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        }
    },
}


def test_schema_defaults_prune_and_validate() -> None:
    obj = {
        "apiVersion": "g/v1",
        "kind": "K",
        "metadata": {"name": "x"},
        "spec": {"n": 2, "port": "http", "opt": None, "junk": 1, "free": {"a": {"b": 1}}, "m": {"a": 1}},
    }
    out, causes, unknown = process_custom_object(obj, SCHEMA)
    assert causes == [] and unknown == ["spec.junk"]
    assert (
        out["spec"]["nested"] == {"k": "v"}
        and out["spec"]["free"] == {"a": {"b": 1}}
        and "junk" not in out["spec"]
    )
    _, causes, _ = process_custom_object({"spec": {"n": 0, "port": 1.5, "m": {"a": "x"}}}, SCHEMA)
    assert {c.field for c in causes} == {"spec.n", "spec.port", "spec.m[a]"}
    _, causes, _ = process_custom_object({"spec": {}}, SCHEMA)
    assert [(c.field, c.message) for c in causes] == [("spec.n", "Required value")]


def test_jsonpath_subset() -> None:
    obj = {
        "status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]},
        "spec": {"l": [1, 2]},
    }
    assert jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert jsonpath(obj, ".spec.l[1]") == [2]
    assert jsonpath(obj, ".spec.l[*]") == [1, 2]
    assert jsonpath(obj, ".spec.missing") == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (30 * 3600, "30h"), (3 * 86400, "3d")],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_path_rewriter_maps_prefixes_only() -> None:
    rewrite = path_rewriter({"/data": "/s/pvc", "/etc/mnv2": "/s/cfg", "/output/": "/s/out"})
    assert (
        rewrite("--data_dir /data --config=/etc/mnv2/config.yaml")
        == "--data_dir /s/pvc --config=/s/cfg/config.yaml"
    )
    assert rewrite("/output/ckpt /database /x/data") == "/s/out/ckpt /database /x/data"


def test_expand_vars_and_field_refs() -> None:
    assert expand_vars("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"app": "x"}},
        "spec": {"nodeName": "sandbox"},
    }
    assert field_ref(pod, "metadata.labels['app']") == "x"
    assert field_ref(pod, "status.podIP") == "127.0.0.1"
    assert field_ref(pod, "spec.nodeName") == "sandbox"


def _field(num: int, payload: bytes) -> bytes:
    return bytes([(num << 3) | 2, len(payload)]) + payload


def test_protobuf_configmap_decodes() -> None:
    meta = _field(1, b"cm") + _field(11, _field(1, b"k") + _field(2, b"v")) + _field(2, b"")
    cm = _field(1, meta) + _field(2, _field(1, b"a") + _field(2, b"b"))
    body = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"ConfigMap")) + _field(2, cm)
    assert protobuf.decode_object(body, "ConfigMap") == {
        "metadata": {"name": "cm", "labels": {"k": "v"}},
        "data": {"a": "b"},
        "kind": "ConfigMap",
    }
    with pytest.raises(protobuf.ProtobufError, match="send JSON"):
        protobuf.decode_object(body, "Deployment")


def test_formats_and_list_map_keys() -> None:
    schema = {
        "type": "object",
        "properties": {
            "status": {
                "type": "object",
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "conditions": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["type"],
                        "items": {"type": "object", "properties": {"type": {"type": "string"}}},
                    },
                },
            }
        },
    }
    _, causes, _ = process_custom_object(
        {"status": {"at": "2026-01-01T00:00:00Z", "conditions": [{"type": "A"}, {"type": "B"}]}}, schema
    )
    assert causes == []
    _, causes, _ = process_custom_object(
        {"status": {"at": "yesterday", "conditions": [{"type": "A"}, {"type": "A"}]}}, schema
    )
    assert [(c.field, c.reason) for c in causes] == [
        ("status.at", "FieldValueInvalid"),
        ("status.conditions[1]", "FieldValueDuplicate"),
    ]
    assert "must be of type date-time" in causes[0].message


def test_port_rewriter_maps_declared_ports_where_a_value_names_them() -> None:
    rewrite = port_rewriter({8118: 40001})
    assert rewrite("--master_port=8118") == "--master_port=40001"
    assert rewrite("127.0.0.1:8118") == "127.0.0.1:40001"
    assert rewrite("8118") == "40001"
    # Other numbers that merely contain the port stay as they are.
    assert rewrite("--master_port=18118") == "--master_port=18118"
    assert rewrite("--timeout=8118.5") == "--timeout=8118.5"
    assert rewrite("--cluster_time_out=8118") == "--cluster_time_out=8118"
    assert port_rewriter({})("--master_port=8118") == "--master_port=8118"
