"""Transforms: each documented behaviour, bad options, row errors, and inputs left untouched."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from engine.plugins.protocol import PluginConfigError, RowError
from engine.plugins.registry import build_plugin

CORPUS = Path(__file__).resolve().parent / "corpus"  # the prior system's conformance corpus (see its README)


def run(name: str, options: dict[str, Any], row: dict[str, Any]) -> Any:
    """The transform's output; also checks that the input row was not changed."""
    before = copy.deepcopy(row)
    out = build_plugin("transform", name, options).process(row)
    assert row == before
    return out


def test_passthrough() -> None:
    row = {"a": 1}
    out = run("passthrough", {"required_input_fields": ["a"]}, row)
    assert out == row and out is not row
    with pytest.raises(RowError, match="missing: b"):
        run("passthrough", {"required_input_fields": ["a", "b"]}, row)


def test_field_mapper_renames_in_place() -> None:
    assert list(run("field_mapper", {"mapping": {"b": "beta"}}, {"a": 1, "b": 2, "c": 3})) == ["a", "beta", "c"]
    # a renamed field wins over one that already had the new name
    assert run("field_mapper", {"mapping": {"a": "b"}}, {"a": 1, "b": 2}) == {"b": 1}
    # a missing field to map is ignored unless strict
    assert run("field_mapper", {"mapping": {"x": "y"}}, {"a": 1}) == {"a": 1}
    with pytest.raises(RowError, match="missing: x"):
        run("field_mapper", {"mapping": {"x": "y"}, "strict": True}, {"a": 1})


def test_field_mapper_select_only_keeps_mapping_order() -> None:
    out = run("field_mapper", {"mapping": {"product": "product_name", "id": "item_id"}, "select_only": True},
              {"id": 1, "product": "P", "price": 3})  # fmt: skip
    assert list(out.items()) == [("product_name", "P"), ("item_id", 1)]


def test_truncate_cuts_to_the_maximum_including_the_suffix() -> None:
    options = {"fields": {"notes": 10}, "suffix": "..."}
    assert run("truncate", options, {"notes": "abcdefghijKLM"}) == {"notes": "abcdefg..."}
    assert run("truncate", options, {"notes": "abcdefghij"}) == {"notes": "abcdefghij"}
    assert run("truncate", {"fields": {"notes": 4}}, {"notes": "abcdef", "n": 1}) == {"notes": "abcd", "n": 1}
    assert run("truncate", options, {"other": 1}) == {"other": 1}
    assert run("truncate", options, {"notes": 12345678901}) == {"notes": 12345678901}  # only strings
    with pytest.raises(RowError, match="'notes' is missing"):
        run("truncate", {**options, "strict": True}, {"other": 1})


def test_keyword_filter() -> None:
    options = {"fields": ["notes"], "blocked_patterns": [r"(?i)\bsecret\b"]}
    assert run("keyword_filter", options, {"notes": "fine", "title": "secret"}) == {"notes": "fine", "title": "secret"}
    with pytest.raises(RowError) as err:
        run("keyword_filter", options, {"notes": "a SECRET plan"})
    assert "notes" in err.value.reason and r"(?i)\bsecret\b" in err.value.reason
    with pytest.raises(RowError, match="'title'"):
        run("keyword_filter", {**options, "fields": "all"}, {"notes": "fine", "title": "secret"})


def test_json_explode() -> None:
    row = {"id": 1, "items": [{"s": "a"}, {"s": "b"}], "z": 0}
    assert run("json_explode", {"array_field": "items"}, row) == [
        {"id": 1, "z": 0, "item": {"s": "a"}, "item_index": 0},
        {"id": 1, "z": 0, "item": {"s": "b"}, "item_index": 1},
    ]
    out = run("json_explode", {"array_field": "items", "output_field": "x", "include_index": False}, row)
    assert out == [{"id": 1, "z": 0, "x": {"s": "a"}}, {"id": 1, "z": 0, "x": {"s": "b"}}]
    named = run("json_explode", {"array_field": "items", "output_field": "x"}, row)
    assert [r["item_index"] for r in named] == [0, 1]  # the index field keeps its name
    for bad, match in (({"items": []}, "empty"), ({"items": "x"}, "not an array"), ({}, "missing")):
        with pytest.raises(RowError, match=match):
            run("json_explode", {"array_field": "items"}, bad)


@pytest.mark.parametrize(
    ("name", "options", "path"),
    [
        ("field_mapper", {}, "mapping"),
        ("field_mapper", {"mapping": {"a": 1}}, "mapping.a"),
        ("field_mapper", {"mapping": {"a": "b"}, "strict": "yes"}, "strict"),
        ("truncate", {"fields": {"a": 0}}, "fields.a"),
        ("truncate", {"fields": {"a": 2}, "suffix": "..."}, "fields.a"),
        ("truncate", {"fields": {"a": 2}, "sufix": "."}, "sufix"),
        ("keyword_filter", {"blocked_patterns": ["x"]}, "fields"),
        ("keyword_filter", {"fields": "all", "blocked_patterns": ["("]}, "blocked_patterns[0]"),
        ("keyword_filter", {"fields": "all", "blocked_patterns": []}, "blocked_patterns"),
        ("json_explode", {}, "array_field"),
        ("passthrough", {"schema": {"mode": "nope"}}, "schema.mode"),
    ],
)
def test_bad_transform_options(name: str, options: dict[str, Any], path: str) -> None:
    with pytest.raises(PluginConfigError) as err:
        build_plugin("transform", name, options)
    assert err.value.path == path


def test_unknown_plugin_names_the_known_ones() -> None:
    with pytest.raises(PluginConfigError, match="known: field_mapper, json_explode"):
        build_plugin("transform", "nope", {})


def test_json_explode_example() -> None:
    rows = json.loads((CORPUS / "examples/json_explode/input.json").read_text())
    t = build_plugin("transform", "json_explode", {"array_field": "items", "output_field": "item"})
    out = [r for row in rows for r in t.process(row)]
    assert out == json.loads((CORPUS / "expected/examples/json_explode/output/order_items.json").read_text())
