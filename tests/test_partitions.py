"""The run-keyed tables are hash-partitioned on run_id (migration 0006): a store made before it
is upgraded with its runs intact, and the log stays append-only on every partition."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from landscape import schema
from landscape.db import Database, _alembic_config, migrate
from landscape.postgres import PostgresRecorder
from landscape.projections import compare
from landscape.verify_store import verify_run
from tests.engine_harness import run

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYED = [t.name for t in (schema.events, schema.checkpoints, *schema.PROJECTION_TABLES)]


def test_every_run_keyed_table_is_partitioned_as_schema_py_says(db: Database) -> None:
    with db.connect() as conn:
        found = dict(
            conn.execute(
                "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
            ).fetchall()
        )
        counts = dict(
            conn.execute(
                "SELECT inhparent::regclass::text, count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE c.relkind = 'r' GROUP BY 1",
            ).fetchall()
        )
    declared = {t.name: t.dialect_options["postgresql"]["partition_by"] for t in schema.metadata.tables.values()}
    assert {name: key for name, key in declared.items() if key} == found
    assert {t: "HASH (run_id)" for t in RUN_KEYED} == found
    assert counts == {t: 16 for t in RUN_KEYED}


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET entity_id = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE {partition} SET entity_id = 'x'",
        "DELETE FROM {partition}",
        "TRUNCATE {partition}",
    ],
)
def test_the_log_is_append_only_on_the_partitioned_table_and_on_each_partition(db: Database, sql: str) -> None:
    from tests.test_store import _write_run

    run_id = f"run-part-{secrets.token_hex(6)}"  # a run of its own per case: each is a whole log
    _write_run(db, run_id, tokens=2).close()
    with db.connect() as conn:
        row = conn.execute(
            "SELECT tableoid::regclass::text FROM events WHERE run_id = %s LIMIT 1", (run_id,)
        ).fetchone()
    assert row is not None and row[0].startswith("events_p")
    with db.connect() as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute(sql.format(partition=row[0]))


LINEAR = (
    (ROOT / "examples" / "linear" / "settings.yaml")
    .read_text(encoding="utf-8")
    .replace("examples/linear/", "")
    .replace("output/", "out/")
)


@pytest.fixture
def store_before_partitioning(server_url: str) -> Iterator[Database]:
    """A fresh database whose schema stops at revision 0005 (before partitioning)."""
    from alembic import command

    name = f"t_part_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    database = Database(url, f"test database {name}")
    try:
        command.upgrade(_alembic_config(database), "0005")
        yield database
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _copy_runs(source: Database, target: Database, runs: list[str]) -> None:
    """Put runs written at the head revision into a store at revision 0005, as that revision held
    them: the run-keyed tables have the same columns there; payloads had no run_id (0007); the
    store id their checkpoints name comes along."""
    with source.connect() as src, target.connect() as dst:
        dst.execute("SET session_replication_role = replica")  # past store_meta's no-update rule
        (store_id,) = src.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone() or ("",)
        dst.execute("UPDATE store_meta SET value = %s WHERE key = 'store_id'", (store_id,))
        tables = {t: "*" for t in RUN_KEYED} | {"payloads": "hash, data, salt, recorded_at"}
        for table, columns in tables.items():
            names = columns if columns != "*" else ", ".join(_columns(dst, table))
            with (
                src.cursor().copy(
                    f"COPY (SELECT {names} FROM {table} WHERE run_id = ANY(%s)) TO STDOUT (FORMAT BINARY)", (runs,)
                ) as out,
                dst.cursor().copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as into,
            ):
                for block in out:
                    into.write(block)
        dst.commit()


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = 'public' "
        "ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def _digest_of(table: str, columns: list[str]) -> str:
    row = f"row({', '.join(columns)})::text"
    return f"SELECT count(*), md5(string_agg({row}, ',' ORDER BY {row})) FROM {table}"


def test_an_existing_store_is_upgraded_with_its_runs_intact(
    db: Database, store_before_partitioning: Database, tmp_path: Path
) -> None:
    runs = []
    for i in range(3):
        work = tmp_path / f"w{i}"
        work.mkdir()
        shutil.copy(ROOT / "examples" / "linear" / "input.csv", work / "input.csv")
        runs.append(run(db, work, LINEAR).outcome.run_id)
    _copy_runs(db, store_before_partitioning, runs)
    db = store_before_partitioning
    with db.connect() as conn:
        # The columns revision 0005 had: a later revision's new column is compared by the projections.
        columns = {t: _columns(conn, t) for t in RUN_KEYED}
        before = {t: conn.execute(_digest_of(t, columns[t])).fetchone() for t in RUN_KEYED}
        last_position = conn.execute("SELECT max(global_position) FROM events").fetchone()
        # What a cross-run reader read then, in its order (the store has no `event_commits` yet: 0017).
        seen_before = [
            ((tx, position), run_id, seq)
            for tx, position, run_id, seq in conn.execute(
                "SELECT tx_id, global_position, run_id, seq FROM events ORDER BY tx_id, global_position"
            )
        ]
    recorder = PostgresRecorder(db)

    migrate(db)

    with db.connect() as conn:
        kinds = dict(
            conn.execute("SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s)", (RUN_KEYED,)).fetchall()
        )
        after = {t: conn.execute(_digest_of(t, columns[t])).fetchone() for t in RUN_KEYED}
    assert kinds == {t: "p" for t in RUN_KEYED}
    assert after == before  # every row moved, column for column (global_position and tx_id too)
    for run_id in runs:
        verify_run(recorder, run_id)
        assert compare(db, run_id)[1] == []
    # A reader's positions still hold: the same events in the same order, each at its position.
    assert [
        (g.position, g.event.run_id, g.event.seq) for g in recorder.read_since((0, 0), limit=1_000_000)
    ] == seen_before
    # New events continue the identity after the moved ones, and a reader picks them up.
    work = tmp_path / "after"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "linear" / "input.csv", work / "input.csv")
    later = run(db, work, LINEAR).outcome.run_id
    with db.connect() as conn:
        first_new = conn.execute("SELECT min(global_position) FROM events WHERE run_id = %s", (later,)).fetchone()
    assert last_position is not None and first_new is not None and first_new[0] > last_position[0]
    last = seen_before[-1][0]
    assert {e.event.run_id for e in recorder.read_since(last, limit=1_000_000)} == {later}
