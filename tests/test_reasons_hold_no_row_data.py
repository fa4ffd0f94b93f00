"""Recorded reasons hold no row data (docs/erasure.md): after `purge --row`, nothing of the erased
rows is left in the store, though their quarantines, row errors, batch and run failures are in
event bodies and projections that no erasure reaches.

Every hostile row below carries a marker (`ZQX…`) in a value, in a field name the input chose, or
in the label a gate computes from it; each marker reaches a reason through another path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import create_engine, text

from engine.errors import RunFailedError
from engine.plugins import registry
from engine.plugins.protocol import PluginSpec, Row
from landscape.db import Database
from landscape.erasure import erase, plan_rows
from landscape.note import Signer
from tests.engine_harness import run
from tests.test_hostile_sinks import sink_db as sink_db  # the fixture: a database of its own for a sink

ROWS: list[dict[str, Any]] = [
    {"id": 1, "kind": "ok"},  # the first valid row: it fixes no type (every field it has is declared)
    {"id": "ZQXA-not-an-int", "kind": "ok"},  # quarantined by the schema: a value of the wrong type
    {"id": 3, "kind": "conv", "code": "ZQXB-SSN-123-45-6789"},  # int() of it: a ValueError quoting it
    {"id": 4, "kind": "label", "cat": "ZQXC-DIAGNOSIS"},  # a route label computed from the row
    {"id": 5, "kind": "kw", "ZQXD-jane.doe@mail.example": "a forbidden word"},  # keyword_filter, fields: all
    {"id": 6, "kind": "agg", "g": "ZQXE-GROUP-ONE", "v": 1},  # batch_stats group_by: mixed values
    {"id": 7, "kind": "agg", "g": "ZQXF-GROUP-TWO", "v": 2},
    {"id": 8, "kind": "copies", "copies": "ZQXG-COPIES"},  # batch_replicate: not an int
    {"id": 9, "kind": "db", "ZQXH-column-name": 1},  # the database sink: a field with no column
    {"id": 10, "kind": "db", "d": 9007199254740993},  # the database sink: its float column would round it
    {"id": 11, "kind": "obj", "obj": ["ZQXI-IN-A-LIST"]},  # a condition giving neither a bool nor a label
    {"id": 12, "kind": "key", "key": "ZQXJ-KEY"},  # a key computed from the row, not found
    {"id": 13, "kind": "ok", "ZQXK-extra-field": 1, "ZQXL-extra-two": 2},  # fixed mode: two undeclared fields
]


def hostile(tag: int) -> tuple[list[dict[str, Any]], list[str]]:
    """ROWS with markers of their own (the store is shared by this module's tests): `ZQX` becomes
    `ZQXnn`, and the number its float column would round another above 2**53."""
    text = json.dumps(ROWS).replace("ZQX", f"ZQX{tag:02d}").replace("9007199254740993", str(2**53 + 2 * tag + 1))
    return json.loads(text), [f"ZQX{tag:02d}", str(2**53 + 2 * tag + 1)]


PIPELINE = """
source:
  plugin: json
  on_success: raw
  options:
    path: in.jsonl
    format: jsonl
    schema: {{mode: {mode}, fields: ['id: int', 'kind: str', 'code: any?', 'cat: any?', 'g: any?', 'v: any?',
                                     'copies: any?', 'd: any?', 'obj: any?', 'key: any?']}}
    on_validation_failure: quarantine
gates:
- name: by_kind
  input: raw
  condition: "row['kind']"
  routes: {{ok: out, conv: conv, label: label, kw: kw, agg: agg, copies: copies, db: db, obj: obj, key: key}}
- {{name: g_conv, input: conv, condition: "int(row['code']) > 0", routes: {{'true': out, 'false': out}},
    on_error: errs}}
- {{name: g_label, input: label, condition: "row['cat']", routes: {{a: out}}, on_error: errs}}
- {{name: g_obj, input: obj, condition: "row['obj']", routes: {{a: out}}, on_error: errs}}
- {{name: g_key, input: key, condition: "row[row['key']] == 1", routes: {{'true': out, 'false': out}},
    on_error: errs}}
transforms:
- {{name: t_kw, plugin: keyword_filter, input: kw, on_success: out, on_error: errs,
    options: {{fields: all, blocked_patterns: ['forbidden']}}}}
aggregations:
- {{name: a_stats, plugin: batch_stats, input: agg, on_success: out, on_error: errs, trigger: {{count: 2}},
    options: {{value_field: v, group_by: g}}}}
- {{name: a_copies, plugin: batch_replicate, input: copies, on_success: out, on_error: errs, trigger: {{count: 1}},
    options: {{copies_field: copies}}}}
sinks:
  out: {{plugin: json, options: {{path: out/out.jsonl}}}}
  errs: {{plugin: json, options: {{path: out/errs.jsonl}}}}
  quarantine: {{plugin: json, options: {{path: out/q.jsonl}}}}
  db:
    plugin: database
    on_write_failure: errs
    options: {{url: 'sqlite:///{workdir}/o.db', table: t, schema: {{mode: flexible, fields: ['id: int', 'd: float?']}}}}
"""


def store_text(db: Database) -> Iterator[tuple[str, bytes]]:
    """Every value of every table in every schema of the store, as bytes: event bodies as stored,
    projections, the erasure records; text encoded, bytea as it is."""
    with db.connect() as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchall()
        for schema, table in tables:
            for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"'):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        yield f"{schema}.{table}", bytes(value)
                    elif value is not None:
                        yield f"{schema}.{table}", json.dumps(value, default=str, ensure_ascii=False).encode()


def left_in_store(db: Database, markers: list[str]) -> list[str]:
    needles = [m.encode() for m in markers]
    return [f"{where}: {value[:300]!r}" for where, value in store_text(db) if any(n in value for n in needles)]


def run_hostile(db: Database, tmp_path: Path, mode: str, rows: list[dict[str, Any]], number: str) -> str:
    # And a record the source quarantines as it reads it: valid JSON, but a number no float holds.
    lines = [json.dumps(r) for r in rows] + [f'{{"id": 99, "kind": "ok", "n": {number}e999}}']
    (tmp_path / "in.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    result = run(db, tmp_path, PIPELINE.format(mode=mode, workdir=tmp_path))
    return result.outcome.run_id


def purge(db: Database, run_id: str, rows: list[int]) -> None:
    # force: a failed run can still be resumed, and these tests erase from one on purpose
    erase(db, plan_rows(db, run_id, rows, force=True), "GDPR art. 17 request", signer=Signer.generate("test"))


@pytest.mark.parametrize(("mode", "tag"), [("flexible", 1), ("fixed", 2)])
def test_after_purging_the_hostile_rows_nothing_of_them_is_left_in_the_store(
    db: Database, tmp_path: Path, mode: str, tag: int
) -> None:
    # `fixed`: the rows with fields the schema does not declare (names the input chose) are
    # quarantined at the source; `flexible`: they pass it and are refused further on.
    rows, markers = hostile(tag)
    run_id = run_hostile(db, tmp_path, mode, rows, markers[1])
    reasons = _reasons(db, run_id)
    assert len(reasons) >= 12, reasons  # every hostile record left a reason (so each path was taken)
    assert left_in_store(db, markers), "the markers must be in the store (the rows' payloads) before the purge"
    purge(db, run_id, list(range(1, len(rows) + 1)))
    assert left_in_store(db, markers) == []


EXPECTED = [
    "field 'id' is not an int: found a str of 17 characters",
    "condition failed: ValueError (its message is not recorded: it may quote row data)",
    "no route for the label it gave (a str of 16 characters); routes: a",
    "the batch mixes 2 different values of 'g'",
    "'copies' must be an int from 1 to 10000, found a str of 13 characters",
    "field 'd' holds an int, which its column would round (an 8-byte float)",
    "condition gave a list of 1 item, not a bool or a route label",
    "condition failed: a key computed from the row is not found (a str of 10 characters)",
    "a number of 20 characters is too large for a float",
]
BY_MODE = {
    "flexible": [
        "field 3 of the row matches blocked pattern /forbidden/",
        "field 3 of the row has no column (columns: id, d)",
    ],
    "fixed": [
        "1 field(s) the schema does not declare (schema mode fixed): the row's field 3",
        "2 field(s) the schema does not declare (schema mode fixed): the row's fields 3, 4",
    ],
}


@pytest.mark.parametrize(("mode", "tag"), [("flexible", 3), ("fixed", 4)])
def test_the_reasons_say_what_is_wrong_without_the_values(db: Database, tmp_path: Path, mode: str, tag: int) -> None:
    rows, markers = hostile(tag)
    reasons = _reasons(db, run_hostile(db, tmp_path, mode, rows, markers[1]))
    for says in EXPECTED + BY_MODE[mode]:
        assert any(says in r for r in reasons), (says, reasons)


def _reasons(db: Database, run_id: str) -> list[str]:
    with db.connect() as conn:
        return [
            " | ".join(str(v) for v in row if v)
            for row in conn.execute(
                "SELECT reason, detail FROM token_outcomes WHERE run_id = %s AND (reason IS NOT NULL OR detail "
                "IS NOT NULL)",
                (run_id,),
            )
        ]


class Leaky:
    """A third-party transform whose exception quotes the value it choked on, as `int()` does."""

    kind: ClassVar[str] = "transform"

    def __init__(self, options: dict[str, Any]) -> None:
        pass

    def process(self, row: Row) -> Row:
        if row["kind"] != "ok":
            raise ValueError(f"cannot parse {row['code']!r}")
        return dict(row)


@pytest.fixture
def leaky_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "BUILTIN", (*registry.BUILTIN, PluginSpec("leaky", "transform", Leaky, {})))
    registry._registry.cache_clear()
    yield
    monkeypatch.undo()
    registry._registry.cache_clear()


def test_a_plugin_exception_quoting_a_value_fails_the_run_without_it(
    db: Database, tmp_path: Path, leaky_plugin: None
) -> None:
    rows = [{"id": 1, "kind": "ok"}, {"id": 2, "kind": "conv", "code": "ZQX99-SSN-987-65-4321"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = """
source: {plugin: json, on_success: raw, options: {path: in.jsonl, format: jsonl}}
transforms:
- {name: parse, plugin: leaky, input: raw, on_success: out, on_error: discard}
sinks:
  out: {plugin: json, options: {path: out/out.jsonl}}
"""
    with pytest.raises(RunFailedError) as failed:
        run(db, tmp_path, settings)
    assert failed.value.reason == "parse: ValueError (its message is not recorded: it may quote row data), on row 2"
    purge(db, failed.value.run_id, [1])
    assert left_in_store(db, ["ZQX99"]) == []


def test_the_helpers_name_only_what_the_settings_name() -> None:
    from engine.plugins.reasons import field_named, fields_named, recorded

    row = {"id": 1, "jane.doe@mail.example": 2, "note": 3}
    assert field_named(row, "id", {"id"}) == "field 'id'"
    assert field_named(row, "jane.doe@mail.example", {"id"}) == "field 2 of the row"
    assert fields_named(row, ["note", "jane.doe@mail.example"], {"note"}) == "'note', the row's field 2"
    assert recorded(ValueError("invalid literal for int() with base 10: '123-45-6789'")) == (
        "ValueError (its message is not recorded: it may quote row data)"
    )
    python = TypeError("'<' not supported between instances of 'str' and 'int'")
    assert recorded(python, raised_by_python=True).startswith("TypeError: '<'")
    assert recorded(TypeError("not a date: 'jane'")) == "TypeError (its message is not recorded: it may quote row data)"
    assert recorded(FileNotFoundError(2, "No such file or directory", "/data/jane.doe.csv")) == (
        "FileNotFoundError: No such file or directory"
    )


def test_a_database_refusing_a_value_is_recorded_without_it(db: Database, tmp_path: Path, sink_db: str) -> None:
    """A column the sink does not check (a date) leaves the value to the server, whose message
    quotes it (`invalid input syntax for type date: "..."`): the row's refusal is recorded by
    the error's class and SQLSTATE, the row goes to on_write_failure, and nothing of the value."""
    engine = create_engine(sink_db.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id bigint, day date)"))
    finally:
        engine.dispose()
    rows = [{"id": 1, "day": "ZQX98-not-a-date"}, {"id": 2, "day": "2024-01-05"}]  # (one alone: the table's fault)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = f"""
source: {{plugin: json, on_success: db, options: {{path: in.jsonl, format: jsonl}}}}
retry: {{max_attempts: 1}}
sinks:
  db: {{plugin: database, on_write_failure: errs, options: {{url: '{sink_db}', table: t}}}}
  errs: {{plugin: json, options: {{path: out/errs.jsonl}}}}
"""
    run_id = run(db, tmp_path, settings).outcome.run_id
    reasons = _reasons(db, run_id)
    assert any("the table refused it: DataError (SQLSTATE 22007)" in r for r in reasons), reasons
    purge(db, run_id, [0])
    assert left_in_store(db, ["ZQX98"]) == []
