"""Plugins by kind and name: the built-ins, plus third parties' through the `elspeth.plugins`
entry point group (each entry point loads a `PluginSpec`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from engine.plugins import aggregations, database_sink, sinks, sources, transforms
from engine.plugins.protocol import PluginConfigError, PluginSpec

KINDS = ("source", "transform", "aggregation", "sink")
ENTRY_POINT_GROUP = "elspeth.plugins"

_SCHEMA = "{mode: fixed|flexible|observed, fields: ['name: type', 'name: type?']} (default: observed)"
_ON_VF = "a sink name, or discard (default: discard)"

_CSV_SOURCE = {
    "path": "input file (required)",
    "delimiter": "one character, not a quote or line break (default: ',')",
    "encoding": "default: utf-8",
    "skip_rows": "lines to skip before the header (default: 0)",
    "columns": "field names, for a file without a header line",
    "field_mapping": "{normalised header: new name}",
    "multiline": "a quoted cell may span lines (default: true); false: a quote left open at a line's end "
    "quarantines that line, and the next line is the next record",
    "schema": _SCHEMA,
    "on_validation_failure": _ON_VF,
}
_JSON_SOURCE = {
    "path": "input file (required)",
    "format": "json | jsonl (default: jsonl for a .jsonl file, else json)",
    "data_key": "top-level key holding the array (format json only)",
    "encoding": "default: utf-8",
    "schema": _SCHEMA,
    "on_validation_failure": _ON_VF,
}
_JSON_SINK = {
    "path": "output file (required; its folder must exist)",
    "format": "json | jsonl (default: jsonl for a .jsonl file, else json)",
    "indent": "spaces per level, format json only (default: none)",
    "encoding": "default: utf-8",
    "mode": "write | append (default: write)",
    "schema": _SCHEMA,
}

BUILTIN: tuple[PluginSpec, ...] = (
    PluginSpec("csv", "source", sources.CsvSource, _CSV_SOURCE),
    PluginSpec("json", "source", sources.JsonSource, _JSON_SOURCE),
    PluginSpec("jsonl", "source", lambda o: sources.JsonSource(o, default_format="jsonl"),
               {**_JSON_SOURCE, "format": "json | jsonl (default: jsonl)"}),
    PluginSpec("passthrough", "transform", transforms.Passthrough, {
        "required_input_fields": "fields that must be present (a row error otherwise)", "schema": _SCHEMA}),
    PluginSpec("field_mapper", "transform", transforms.FieldMapper, {
        "mapping": "{old: new} (required)", "select_only": "keep only the mapped fields (default: false)",
        "strict": "a missing field to map is a row error (default: false)", "schema": _SCHEMA}),
    PluginSpec("truncate", "transform", transforms.Truncate, {
        "fields": "{name: maximum length} (required)", "suffix": "appended to a cut value (default: '')",
        "strict": "a missing field is a row error (default: false)", "schema": _SCHEMA}),
    PluginSpec("keyword_filter", "transform", transforms.KeywordFilter, {
        "fields": "list of fields, or all (required)",
        "blocked_patterns": "regular expressions; a match is a row error (required)", "schema": _SCHEMA}),
    PluginSpec("json_explode", "transform", transforms.JsonExplode, {
        "array_field": "field holding the array (required)", "output_field": "default: item",
        "include_index": "add item_index (default: true)", "schema": _SCHEMA}),
    PluginSpec("batch_stats", "aggregation", aggregations.BatchStats, {
        "value_field": "numeric field to sum (required)", "group_by": "field whose value the batch shares",
        "compute_mean": "default: true", "schema": _SCHEMA}),
    PluginSpec("batch_replicate", "aggregation", aggregations.BatchReplicate, {
        "copies_field": "default: copies", "default_copies": "when the field is missing (default: 1)",
        "max_copies": "default: 10000", "include_copy_index": "add copy_index (default: true)", "schema": _SCHEMA}),
    PluginSpec("csv", "sink", sinks.FILE_SINKS["csv"], {
        "path": "output file (required; its folder must exist)", "headers": "write a header line (default: true)",
        "delimiter": "one character, not a quote or line break (default: ',')", "encoding": "default: utf-8",
        "mode": "write | append (default: write)",
        "escape_formulas": "prefix ' to text a spreadsheet would run as a formula (default: false)",
        "schema": _SCHEMA}),
    PluginSpec("json", "sink", sinks.FILE_SINKS["json"], _JSON_SINK),
    PluginSpec("jsonl", "sink", sinks.FILE_SINKS["jsonl"],
               {**_JSON_SINK, "format": "json | jsonl (default: jsonl)"}),
    PluginSpec("database", "sink", database_sink.DatabaseSink, {
        "url": "SQLAlchemy URL (required): sqlite:///file.db or postgresql://user@host/db",
        "table": "table name (required)", "if_exists": "append | replace (default: append)",
        "replace_rows_of_other_runs": "with replace: drop a table holding rows of other runs (default: false)",
        "schema": _SCHEMA}),
)  # fmt: skip


@cache
def _registry() -> tuple[dict[tuple[str, str], PluginSpec], tuple[str, ...]]:
    """Every plugin by (kind, name), and why any entry point could not be used. A broken
    third-party package must not stop pipelines that do not use it, so its problem is reported
    only when a plugin cannot be found."""
    found = {(s.kind, s.name): s for s in BUILTIN}
    problems: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as e:  # any import failure of someone else's package
            problems.append(f"entry point {ep.name!r} ({ep.value}) failed to load: {e}")
            continue
        if not isinstance(spec, PluginSpec) or spec.kind not in KINDS:
            problems.append(f"entry point {ep.name!r} ({ep.value}) is not a PluginSpec of a known kind")
        elif (spec.kind, spec.name) in found and found[(spec.kind, spec.name)] in BUILTIN:
            problems.append(f"entry point {ep.name!r} cannot replace the built-in {spec.kind} {spec.name!r}")
        else:
            found[(spec.kind, spec.name)] = spec
    return found, tuple(problems)


def all_plugins() -> list[PluginSpec]:
    """Every plugin, built-in first, for `elspeth plugins list`."""
    return list(_registry()[0].values())


def get_plugin(kind: str, name: str) -> PluginSpec:
    """The registry entry; PluginConfigError (path '') naming the known plugins of that kind."""
    if kind not in KINDS:
        raise PluginConfigError("", f"unknown plugin kind {kind!r}; known: {', '.join(KINDS)}")
    found, problems = _registry()
    spec = found.get((kind, name))
    if spec is None:
        known = sorted(n for k, n in found if k == kind)
        message = f"unknown {kind} plugin {name!r}; known: {', '.join(known)}"
        other = sorted(k for k, n in found if n == name and k != kind)
        if other:  # (a batch_stats under transforms: it is an aggregation)
            message += f" ({name!r} is {' and '.join(('an ' if k[0] in 'aeiou' else 'a ') + k for k in other)} plugin)"
        if problems:
            message += " (" + "; ".join(problems) + ")"
        raise PluginConfigError("", message)
    return spec


def build_plugin(kind: str, name: str, options: Mapping[str, Any] | None) -> Any:
    """The plugin built from its options. PluginConfigError's path is the bad option's key path
    inside `options` (e.g. 'fields', 'schema.fields[1]'); unknown options list the allowed ones."""
    spec = get_plugin(kind, name)
    if options is not None and not isinstance(options, Mapping):
        raise PluginConfigError("", f"options must be a mapping, found {options!r}")
    return spec.factory(dict(options or {}))
