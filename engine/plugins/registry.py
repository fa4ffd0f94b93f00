"""Plugins by kind and name: the built-ins, plus third parties' through the `elspeth.plugins`
entry point group (each entry point loads a `PluginSpec`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from engine.plugins import aggregations, sinks, sources, transforms
from engine.plugins.protocol import PluginConfigError, PluginSpec

_SCHEMA = "schema: {mode: fixed|flexible|observed, fields: ['name: type', ...]} (default observed)"

BUILTIN: tuple[PluginSpec, ...] = (
    PluginSpec("csv", "source", sources.CsvSource, {
        "path": "input file (required)", "delimiter": "',' ", "encoding": "utf-8", "skip_rows": "0",
        "columns": "header names when the file has none", "field_mapping": "{header: new name}",
        "schema": _SCHEMA, "on_validation_failure": "a sink name or discard (default discard)"}),
    PluginSpec("json", "source", sources.JsonSource, {
        "path": "input file (required)", "format": "json | jsonl (default by extension)",
        "data_key": "key holding the array (json)", "encoding": "utf-8", "schema": _SCHEMA,
        "on_validation_failure": "a sink name or discard (default discard)"}),
    PluginSpec("jsonl", "source", lambda o: sources.JsonSource(o, default_format="jsonl"), {
        "(as json)": "format defaults to jsonl"}),
    PluginSpec("passthrough", "transform", transforms.Passthrough, {
        "required_input_fields": "fields that must be present (row error otherwise)"}),
    PluginSpec("field_mapper", "transform", transforms.FieldMapper, {
        "mapping": "{old: new} (required)", "select_only": "false", "strict": "false"}),
    PluginSpec("truncate", "transform", transforms.Truncate, {
        "fields": "{name: max length} (required)", "suffix": "''", "strict": "false"}),
    PluginSpec("keyword_filter", "transform", transforms.KeywordFilter, {
        "fields": "list of fields, or all", "blocked_patterns": "regular expressions (required)"}),
    PluginSpec("json_explode", "transform", transforms.JsonExplode, {
        "array_field": "(required)", "output_field": "item", "include_index": "true"}),
    PluginSpec("batch_stats", "aggregation", aggregations.BatchStats, {
        "value_field": "(required)", "group_by": "field whose value the batch shares", "compute_mean": "true"}),
    PluginSpec("batch_replicate", "aggregation", aggregations.BatchReplicate, {
        "copies_field": "copies", "default_copies": "1", "max_copies": "10000", "include_copy_index": "true"}),
    PluginSpec("csv", "sink", sinks.CsvSink, {
        "path": "(required)", "headers": "true", "delimiter": "','", "encoding": "utf-8",
        "mode": "write | append", "schema": _SCHEMA}),
    PluginSpec("json", "sink", sinks.JsonSink, {
        "path": "(required)", "format": "json | jsonl (default by extension)", "indent": "none",
        "encoding": "utf-8", "mode": "write | append", "schema": _SCHEMA}),
    PluginSpec("jsonl", "sink", lambda o: sinks.JsonSink(o, default_format="jsonl"), {
        "(as json)": "format defaults to jsonl"}),
    PluginSpec("database", "sink", sinks.DatabaseSink, {
        "url": "SQLAlchemy URL (required): sqlite:///file.db or postgresql://...", "table": "(required)",
        "if_exists": "append | replace", "schema": _SCHEMA}),
)  # fmt: skip


@cache
def _registry() -> dict[tuple[str, str], PluginSpec]:
    found = {(s.kind, s.name): s for s in BUILTIN}
    from importlib.metadata import entry_points

    for ep in entry_points(group="elspeth.plugins"):
        spec = ep.load()
        if isinstance(spec, PluginSpec):
            found[(spec.kind, spec.name)] = spec
    return found


def all_plugins() -> list[PluginSpec]:
    return list(_registry().values())


def get_plugin(kind: str, name: str) -> PluginSpec:
    spec = _registry().get((kind, name))
    if spec is None:
        known = sorted(n for k, n in _registry() if k == kind)
        raise PluginConfigError("", f"unknown {kind} plugin {name!r}; known: {', '.join(known)}")
    return spec


def build_plugin(kind: str, name: str, options: Mapping[str, Any] | None) -> Any:
    """The plugin, built from its options; PluginConfigError names the bad option."""
    spec = get_plugin(kind, name)
    if options is not None and not isinstance(options, Mapping):
        raise PluginConfigError("", f"options must be a mapping, found {options!r}")
    return spec.factory(options or {})
