"""Property: for generated pipelines whose sink is a file (csv, json, jsonl) or a database table
(SQLite, PostgreSQL), and generated rows whose fields vary, every field of every row the audit
trail says was written is in the sink, or the row has a recorded failure naming the field."""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from landscape.db import Database
from tests.conftest import scratch_database
from tests.engine_harness import run
from tests.sink_audit import assert_nothing_lost, audit, sink_rows

# One type per field (the source fixes a field's type by its first row), null always allowed.
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "a": st.integers(-(2**40), 2**40),
    "b": st.text("xyz09 ,\"'", max_size=5),
    "c": st.integers(-100, 100).map(lambda n: n + 0.5),
    "d": st.booleans(),
}
_TYPES = {"a": "int", "b": "str", "c": "float", "d": "bool"}
rows_st = st.lists(
    st.dictionaries(st.sampled_from(sorted(_VALUES)), st.none(), min_size=1).flatmap(
        lambda keys: st.fixed_dictionaries({k: st.one_of(st.none(), _VALUES[k]) for k in keys})
    ),
    min_size=1,
    max_size=6,
)
schema_st = st.one_of(st.none(), st.lists(st.sampled_from(sorted(_VALUES)), min_size=1, unique=True))


@pytest.fixture(scope="module")
def pg_sink(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, "t_props") as url:
        yield url


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=rows_st,
    kind=st.sampled_from(["csv", "json", "jsonl", "sqlite", "postgresql"]),
    schema=schema_st,
    on_failure=st.sampled_from([None, "discard", "spill"]),
)
def test_no_field_is_lost_without_a_record(
    rows: list[dict[str, Any]], kind: str, schema: list[str] | None, on_failure: str | None, db: Database, pg_sink: str
) -> None:
    table = f"t_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        where = {"sqlite": f"sqlite:///{work / 'o.db'}", "postgresql": pg_sink}.get(kind, f"out.{kind}")
        options = f"url: '{where}', table: {table}" if kind in ("sqlite", "postgresql") else f"path: {where}"
        if schema is not None:
            options += f", schema: {{mode: fixed, fields: [{', '.join(repr(f'{k}: {_TYPES[k]}?') for k in schema)}]}}"
        plugin = "database" if kind in ("sqlite", "postgresql") else kind
        failure = f"on_write_failure: {on_failure}, " if on_failure else ""
        settings_yaml = (
            "source: {plugin: json, on_success: out, options: {path: in.jsonl, format: jsonl, schema: {mode: observed}}}\n"
            f"sinks:\n  out: {{{failure}plugin: {plugin}, options: {{{options}}}}}\n"
            "  spill: {plugin: json, options: {path: spill.jsonl}}\n"
        )
        note(settings_yaml)
        result = run(db, work, settings_yaml)
        a = audit(db, result.outcome.run_id)
        outputs: dict[str, list[dict[str, Any]]] = {}
        if a.written.get("out"):
            outputs["out"] = (
                sink_rows("database", where, table) if plugin == "database" else sink_rows(kind, str(work / where))
            )
        if a.written.get("spill"):
            outputs["spill"] = sink_rows("jsonl", str(work / "spill.jsonl"))
        assert_nothing_lost(a, rows, outputs)
