"""The first valid row fixes the types of undeclared fields (SETTINGS.md, Schemas): one test per
clause of the text, through the real sources, then through the engine, and across a resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.orchestrator import build_pipeline, fold_run, resume_run, start_run
from engine.plugins.protocol import SourceItem
from engine.plugins.registry import build_plugin
from engine.plugins.schema import type_locked
from engine.settings import load_settings
from landscape import faults
from landscape.db import Database
from landscape.fold import IllegalEvent, RunFold
from landscape.postgres import PostgresRecorder
from landscape.verify_store import verify_run
from statecharts import events as ev
from tests.engine_harness import Result, run

OBSERVED: dict[str, Any] = {"mode": "observed"}


def read_locked(path: Path, schema: dict[str, Any], kind: str = "jsonl") -> list[SourceItem]:
    """The source's items with the type lock applied, the fixed types kept as the fold keeps
    them (set once, by the item that carries them)."""
    source = build_plugin("source", kind, {"path": str(path), "schema": schema})
    fixed: list[dict[str, str]] = []
    out = []
    for item in type_locked(source.read(), source.schema, lambda: fixed[0] if fixed else None):
        assert item is not None
        if item.fixed_types is not None:
            assert not fixed, "only one row fixes the types"
            fixed.append(dict(item.fixed_types))
        out.append(item)
    return out


def jsonl(tmp_path: Path, *rows: dict[str, Any]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def passed(items: list[SourceItem]) -> list[int]:
    return [i.index for i in items if i.row is not None]


@pytest.mark.parametrize(
    ("first", "later"),
    [
        (1, 1.0),  # 1 is not 1.0
        (1.5, 2),
        (1, True),  # a bool is not an int, though Python says so
        (True, 1),
        ("1", 1),
        (1, "1"),
        (False, "false"),
        (None, 0),  # a null fixes the type "null"
        (None, "x"),
    ],
)
def test_a_value_of_another_type_than_the_first_valid_row_is_quarantined(
    tmp_path: Path, first: Any, later: Any
) -> None:
    items = read_locked(jsonl(tmp_path, {"id": 1, "x": first}, {"id": 2, "x": later}, {"id": 3, "x": first}), OBSERVED)
    assert passed(items) == [0, 2]
    error = items[1].error
    assert error is not None and "field 2 of the row" in error, error
    fixed = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}
    assert fixed[type(first)] in error and fixed[type(later)] in error  # the fixed type and the one found
    assert items[0].fixed_types == [("id", "int"), ("x", fixed[type(first)])]


def test_the_reason_gives_the_field_by_position_the_fixed_type_and_the_type_found(tmp_path: Path) -> None:
    # An undeclared field's name is the input's (row data, docs/erasure.md): its position is given.
    items = read_locked(jsonl(tmp_path, {"amount": 1, "code": "A"}, {"amount": 2.5, "code": 7}), OBSERVED)
    assert items[1].error == (
        "field 1 of the row is float, but the first valid row fixed it as int; "
        "field 2 of the row is int, but the first valid row fixed it as str"
    )


def test_null_and_absence_are_always_allowed_later(tmp_path: Path) -> None:
    items = read_locked(jsonl(tmp_path, {"id": 1, "x": 5}, {"id": 2, "x": None}, {"id": 3}, {"x": 7}), OBSERVED)
    assert passed(items) == [0, 1, 2, 3]


def test_an_object_or_array_value_accepts_anything_afterwards(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"o": {"k": 1}, "a": [1]}, {"o": 1, "a": "x"}, {"o": [2], "a": {"k": None}}, {"o": None})
    items = read_locked(path, OBSERVED)
    assert passed(items) == [0, 1, 2, 3]
    assert items[0].fixed_types == [("o", "object"), ("a", "array")]


def test_a_field_first_seen_after_the_first_valid_row_is_never_checked(tmp_path: Path) -> None:
    items = read_locked(jsonl(tmp_path, {"id": 1}, {"id": 2, "late": 1}, {"id": 3, "late": "one"}), OBSERVED)
    assert passed(items) == [0, 1, 2]
    assert items[0].fixed_types == [("id", "int")]


def test_flexible_locks_only_the_undeclared_fields_and_the_quarantined_row_has_them_coerced(tmp_path: Path) -> None:
    schema = {"mode": "flexible", "fields": ["id: any", "amount: float"]}
    path = jsonl(
        tmp_path,
        {"id": 1, "amount": 1, "tag": "a"},
        {"id": "two", "amount": 2, "tag": "b"},  # declared fields follow the schema, not the lock
        {"id": 3, "amount": 3, "tag": 3},
    )
    items = read_locked(path, schema)
    assert items[0].fixed_types == [("tag", "str")]
    assert passed(items) == [0, 1]
    assert items[2].error is not None and "field 3 of the row" in items[2].error
    # What the quarantine sink receives: the row as it passed the schema (amount is a float now).
    assert items[2].raw == {"id": 3, "amount": 3.0, "tag": 3}
    assert type(items[2].raw["amount"]) is float


def test_observed_locks_every_field(tmp_path: Path) -> None:
    # Observed fields are not checked by the schema (it lists none: see parse_schema): the lock covers all.
    items = read_locked(jsonl(tmp_path, {"id": 1, "v": "a"}, {"id": "1", "v": "b"}), {"mode": "observed", "fields": []})
    assert passed(items) == [0]
    assert items[1].error is not None and "field 1 of the row" in items[1].error


def test_a_row_failing_the_declared_fields_is_quarantined_raw_and_fixes_nothing(tmp_path: Path) -> None:
    schema = {"mode": "flexible", "fields": ["id: int"]}
    path = jsonl(
        tmp_path,
        {"id": "x", "extra": 1},  # fails `id: int`: quarantined as read, fixes nothing
        {"id": 2, "extra": "s"},  # the first valid row: fixes extra as str
        {"id": 3, "extra": 5},
        {"id": 4, "extra": "t"},
    )
    items = read_locked(path, schema)
    assert items[0].row is None and items[0].raw == {"id": "x", "extra": 1} and items[0].fixed_types is None
    assert items[1].fixed_types == [("extra", "str")]
    assert passed(items) == [1, 3]
    assert items[2].error is not None and "field 2 of the row" in items[2].error and "str" in items[2].error


def test_an_undeclared_csv_column_never_quarantines(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,extra\n1,5\n2,x\n3,\n4,2.5\n", encoding="utf-8")
    items = read_locked(path, {"mode": "flexible", "fields": ["id: int"]}, kind="csv")
    assert passed(items) == [0, 1, 2, 3]  # CSV cells are strings, whatever they look like
    assert items[0].fixed_types == [("extra", "str")]


def test_a_fixed_schema_fixes_nothing(tmp_path: Path) -> None:
    items = read_locked(jsonl(tmp_path, {"id": 1}, {"id": 2.0}), {"mode": "fixed", "fields": ["id: int"]})
    assert passed(items) == [0, 1]
    assert all(i.fixed_types is None for i in items)


# -- through the engine, and across a resume ------------------------------------------------------

PIPELINE = """
source:
  plugin: json
  on_success: out
  options:
    path: in.jsonl
    schema: {mode: flexible, fields: ['id: int']}
    on_validation_failure: quarantine
sinks:
  out: {plugin: json, options: {path: out/out.jsonl}}
  quarantine: {plugin: json, options: {path: out/q.jsonl}}
"""
# Row 1 fails the declared field; row 2 fixes score as int; rows 5 and 8 break that.
ROWS: list[dict[str, Any]] = [
    {"id": "one", "score": 1.5},
    {"id": 2, "score": 7},
    {"id": 3, "score": 8},
    {"id": 4, "score": None},
    {"id": 5, "score": 9.5},
    {"id": 6},
    {"id": 7, "score": 10},
    {"id": 8, "score": "11"},
    {"id": 9, "score": 12},
]


def _check_outputs(result: Result) -> None:
    assert [r["id"] for r in result.rows("out/out.jsonl")] == [2, 3, 4, 6, 7, 9]
    assert result.rows("out/q.jsonl") == [
        {"id": "one", "score": 1.5},
        {"id": 5, "score": 9.5},
        {"id": 8, "score": "11"},
    ]
    assert result.fold.fixed_types == {"score": "int"}  # folded back from the log
    assert result.outcomes() == {"completed": 6, "quarantined": 3}


def test_the_engine_records_the_fixed_types_and_quarantines_rows_that_break_them(db: Database, tmp_path: Path) -> None:
    jsonl(tmp_path, *ROWS)
    _check_outputs(run(db, tmp_path, PIPELINE))


def test_a_resumed_run_keeps_the_types_the_first_valid_row_fixed(db: Database, tmp_path: Path) -> None:
    # The resumed source starts after the row that fixed the types: only the log can tell it.
    jsonl(tmp_path, *ROWS)
    (tmp_path / "out").mkdir()
    settings = tmp_path / "settings.yaml"
    settings.write_text(PIPELINE, encoding="utf-8")
    run_id = f"run-lock-{os.urandom(6).hex()}"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        faults.configure("committed:4", raise_instead=True)
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, build_pipeline(load_settings(settings)), commit_every=1, run_id=run_id)
        faults.configure("")
        crashed = fold_run(db, run_id)
        assert crashed.fixed_types == {"score": "int"} and 2 <= crashed.source_records <= 4, crashed.source_records
        outcome = resume_run(db, run_id, lambda p: build_pipeline(load_settings(p)), commit_every=1)
    finally:
        faults.configure("")
        os.chdir(old)
    assert outcome.status == "completed"
    _check_outputs(Result(outcome, fold_run(db, run_id, strict=True), tmp_path))


def test_the_fold_refuses_a_second_row_fixing_the_types() -> None:
    fold = RunFold("r")
    fold.apply(0, "r0", ev.TokenCreated(row_index=0, data_hash="0" * 64, at="out", fixed_types=[("a", "int")]))
    with pytest.raises(IllegalEvent, match="fixed_types"):
        fold.apply(1, "r1", ev.TokenCreated(row_index=1, data_hash="1" * 64, at="out", fixed_types=[("a", "str")]))


def test_field_names_that_are_event_keys_are_recorded_and_verified(db: Database, tmp_path: Path) -> None:
    # Field names are users' data, recorded in the event that fixes the types, in the row's order.
    jsonl(tmp_path, {"output_hash": "x", "data_hash": 1}, {"output_hash": "y", "data_hash": "2"})
    result = run(db, tmp_path, PIPELINE.replace("fields: ['id: int']", "fields: []").replace("flexible", "observed"))
    assert list(result.fold.fixed_types or {}) == ["output_hash", "data_hash"]
    assert result.fold.fixed_types == {"output_hash": "str", "data_hash": "int"}
    assert result.rows("out/q.jsonl") == [{"output_hash": "y", "data_hash": "2"}]
    verify_run(PostgresRecorder(db), result.outcome.run_id)  # raises on a bad chain or payload
