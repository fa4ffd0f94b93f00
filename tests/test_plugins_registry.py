"""The registry: built-ins, third-party entry points, and errors that name what is known."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from engine.plugins import registry
from engine.plugins.protocol import PluginConfigError, PluginSpec, Row


class Upper:
    kind: ClassVar[str] = "transform"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.field = options["field"]

    def process(self, row: Row) -> Row:
        return {**row, self.field: str(row[self.field]).upper()}


UPPER = PluginSpec("upper", "transform", Upper, {"field": "(required)"})
FAKE_CSV = PluginSpec("csv", "source", Upper, {})


class _EntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name, self.value, self.target = name, f"pkg:{name}", target

    def load(self) -> object:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


@pytest.fixture
def third_party(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    eps = [_EntryPoint("upper", UPPER), _EntryPoint("broken", ImportError("no module acme")),
           _EntryPoint("junk", object()), _EntryPoint("csv", FAKE_CSV)]  # fmt: skip
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "elspeth.plugins" else [])
    registry._registry.cache_clear()
    yield
    registry._registry.cache_clear()


def test_builtins_cover_every_kind() -> None:
    names = {(s.kind, s.name) for s in registry.all_plugins()}
    assert {("source", "csv"), ("source", "json"), ("source", "jsonl"), ("transform", "json_explode"),
            ("aggregation", "batch_stats"), ("sink", "database"), ("sink", "jsonl")} <= names  # fmt: skip
    assert all("schema" in s.options for s in registry.BUILTIN)


def test_jsonl_is_json_with_format_jsonl() -> None:
    source = registry.build_plugin("source", "jsonl", {"path": "in.json"})
    assert source.format == "jsonl"
    assert registry.build_plugin("sink", "json", {"path": "o.jsonl"}).format == "jsonl"
    assert registry.build_plugin("sink", "json", {"path": "o.json"}).format == "json"


def test_unknown_plugins_and_kinds_name_the_known_ones() -> None:
    with pytest.raises(PluginConfigError, match="unknown sink plugin 'xml'; known: csv, database, json, jsonl"):
        registry.get_plugin("sink", "xml")
    with pytest.raises(PluginConfigError, match="known: source, transform, aggregation, sink"):
        registry.get_plugin("gate", "x")
    with pytest.raises(PluginConfigError, match="options must be a mapping"):
        registry.build_plugin("transform", "passthrough", ["x"])  # type: ignore[arg-type]
    with pytest.raises(
        PluginConfigError,
        match=r"unknown transform plugin 'batch_stats'; .*\('batch_stats' is an aggregation plugin\)$",
    ):
        registry.get_plugin("transform", "batch_stats")


def test_third_party_plugins_come_from_entry_points(third_party: None) -> None:
    t = registry.build_plugin("transform", "upper", {"field": "a"})
    assert t.process({"a": "x"}) == {"a": "X"}
    assert UPPER in registry.all_plugins()
    assert type(registry.build_plugin("source", "csv", {"path": "x"})).__name__ == "CsvSource"  # not replaced
    with pytest.raises(PluginConfigError) as err:
        registry.get_plugin("transform", "nope")
    message = str(err.value)
    assert "upper" in message and "no module acme" in message and "'junk'" in message and "built-in" in message


def test_an_integer_option_given_as_text_must_be_plain_digits() -> None:
    from engine.plugins.protocol import PluginConfigError
    from engine.plugins.registry import build_plugin

    assert build_plugin("source", "csv", {"path": "x.csv", "skip_rows": " 2 "}).skip_rows == 2
    for text in ("1e3", "5.0", "two"):
        with pytest.raises(PluginConfigError, match="skip_rows: found"):
            build_plugin("source", "csv", {"path": "x.csv", "skip_rows": text})
