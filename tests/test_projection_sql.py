"""The projections the server derives from the events (`landscape.projection_sql`): what a body
it cannot decode as it stands turns into, and a rebuild that must not race the run's writer."""

from __future__ import annotations

import os
import re
import secrets
from typing import Any

import psycopg
import pytest

from landscape import projection_sql
from landscape.db import Database, migrate
from landscape.errors import ChainBroken, ConcurrentWriter, StoreError
from landscape.postgres import PostgresRecorder
from landscape.projections import compare, rebuild
from landscape.verify import verify_events
from landscape.verify_store import verify_run
from statecharts import events as ev
from statecharts.events import encode_event
from tests.conftest import _with_database
from tests.test_store import _created


def _outcomes(db: Database, run_id: str) -> dict[str, tuple[str | None, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT token_id, reason, detail FROM token_outcomes WHERE run_id = %s", (run_id,)
        ).fetchall()
    return {t: (r, d) for t, r, d in rows}


def test_a_nul_in_an_event_reaches_the_projections_as_the_replacement_character(db: Database) -> None:
    """PostgreSQL's JSON types refuse NUL, which user data can put into a reason or a detail.
    The run's commit must not fail on it: the projection shows U+FFFD, and a backslash that
    only looks like the start of `\\u0000` (an escaped backslash before the letters) is kept."""
    run_id = "run-nul"
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    for token, reason, detail in [
        ("r0", "bad\x00value", "\x00\x00 at both ends \x00"),
        ("r1", "literal \\u0000 text", "\\\x00 a backslash, then NUL"),
    ]:
        w.append("token", token, ev.TokenCreated(row_index=int(token[1:]), data_hash="h", at="in"))
        w.append("token", token, ev.TokenFailed(reason=reason, detail=detail))
    w.commit()
    w.close()
    assert _outcomes(db, run_id) == {
        "r0": ("bad\ufffdvalue", "\ufffd\ufffd at both ends \ufffd"),
        "r1": ("literal \\u0000 text", "\\\ufffd a backslash, then NUL"),
    }
    assert compare(db, run_id) == (4, [])
    assert rebuild(db, run_id) == 5
    assert compare(db, run_id) == (4, [])


def test_a_rebuild_waits_for_no_writer_it_refuses_while_one_holds_the_run(db: Database) -> None:
    """A live writer's commits write the same rows a rebuild deletes and writes again."""
    run_id = "run-live"
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    w.commit()
    try:
        with pytest.raises(ConcurrentWriter, match="being written"):
            rebuild(db, run_id)
    finally:
        w.close()
    assert rebuild(db, run_id) == 1


def test_a_rebuild_refuses_while_only_the_sender_holds_the_run(db: Database) -> None:
    """The engine's lock connection dropped (an idle-session timeout, a terminated backend): the
    run goes on committing through its sender, which holds the other lock. A rebuild that asked
    for the engine's lock alone went ahead and left the projections missing rows (a hostile
    review)."""
    run_id = "run-sending"
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    w.commit()
    w.close()
    with db.connect(autocommit=True) as sender:
        sender.execute("SELECT pg_advisory_lock(hashtextextended(%s, 1))", (run_id,))
        with pytest.raises(ConcurrentWriter, match="being written"):
            rebuild(db, run_id)
    assert rebuild(db, run_id) == 1


def test_a_projection_row_written_ahead_of_the_writer_is_reported_as_what_it_is(db: Database) -> None:
    """Someone who may write a projection table puts a row where the writer's next commit will:
    the commit fails (the run cannot go on with a table that contradicts it), and the error names
    the table's key, not "another process" writing the run (only a seq taken means that)."""
    run_id = f"run-ahead-{secrets.token_hex(6)}"
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    w.commit()
    w.append("token", "r0", ev.TokenCreated(row_index=0, data_hash="h", at="in"))
    with db.connect() as conn:
        conn.execute("INSERT INTO rows (run_id, row_index, token_id, data_hash) VALUES (%s, 0, 'x', 'x')", (run_id,))
        conn.commit()
    try:
        with pytest.raises(StoreError, match=r"rows_p[0-9]+_pkey") as raised:
            w.commit()
        assert not isinstance(raised.value, ConcurrentWriter)
    finally:
        w.close()


def test_every_event_type_is_at_the_schema_version_the_projection_sql_reads() -> None:
    """The SQL reads each event body as version 1 spells it. A type at a new SCHEMA_VERSION
    (with its upcaster in statecharts/upcast.py) needs its new shape read in
    landscape/projection_sql.py as well; then this test gets that type's new version."""
    assert {name: cls.SCHEMA_VERSION for name, cls in ev.EVENT_TYPES.items() if cls.SCHEMA_VERSION != 1} == {}


def test_the_tables_the_statement_changes_rows_of_are_the_ones_a_comparison_indexes() -> None:
    """A comparison copies only these tables with their keys' indexes: an `ON CONFLICT` without
    one fails, an `UPDATE` without one scans the whole copy for each of its rows."""
    template = projection_sql._SQL
    updated = set(re.findall(r"UPDATE \{into\}\.(\w+)", template))
    upserted = {
        m.group(1)
        for m in re.finditer(r"INSERT INTO \{into\}\.(\w+)((?:(?!INSERT INTO).)*)", template, re.DOTALL)
        if "ON CONFLICT" in m.group(2)
    }
    assert upserted and updated
    assert updated | upserted == projection_sql.UPDATED_IN_PLACE


def _scans(plan: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Relation Name") == relation else []
    for child in plan.get("Plans", []):
        found += _scans(child, relation)
    return found


@pytest.mark.parametrize(("table", "key"), [("coalesces", "coalesce_id"), ("batches", "batch_id")])
def test_a_run_the_statistics_do_not_know_has_only_its_touched_rows_read(db: Database, table: str, key: str) -> None:
    """A coalesce's or a batch's row is updated by key, and only the rows the range touches are
    read. In a partition whose statistics hold two earlier runs, the server estimated a new run at
    one row; joined by key alone, it read all of the run's rows at every commit (fork/coalesce
    slowed to a fifth on such a store, and more the longer the run)."""
    with db.connect() as conn:
        *earlier, new = [
            r[0]
            for r in conn.execute(
                "SELECT 'run-stats-' || x FROM generate_series(1, 5000) x "
                f"WHERE satisfies_hash_partition('public.{table}'::regclass, 16, 0, 'run-stats-' || x) LIMIT 3"
            )
        ]
        for run_id in earlier:
            values = (
                "'join', g, 'merged', 'require_all', '', '', NULL"
                if table == "coalesces"
                else "'batch', 'completed', 'count', 10, NULL"
            )
            conn.execute(
                f"INSERT INTO {table} SELECT %s, 'k-' || g, {values} FROM generate_series(1, 5000) g", (run_id,)
            )
        conn.execute(f"ANALYZE {table}_p00")
        (plan,) = conn.execute(
            f"EXPLAIN (FORMAT JSON) {projection_sql.SQL['public']}", {"r": new, "lo": 0, "hi": 99}
        ).fetchone() or (None,)
        conn.rollback()
    scans = _scans(plan[0]["Plan"], f"{table}_p00")
    # An index scan's condition, or a bitmap scan's (on its heap node); a filter reads every row.
    assert scans and all(key in s.get("Index Cond", s.get("Recheck Cond", "")) for s in scans), scans


def test_a_function_on_the_search_path_does_not_change_what_the_projections_say(db: Database) -> None:
    """Someone who may create in a schema on the search path (an upgraded database whose
    `public` still grants CREATE to everyone) defines a better match for a built-in the
    projection SQL calls: `convert_from(bytea, text)` beats the built-in `(bytea, name)` for a
    literal. The writer and the comparison would both run it, and agree on what it made up."""
    with db.connect() as conn:
        conn.execute(
            "CREATE FUNCTION public.convert_from(bytea, text) RETURNS text LANGUAGE sql "
            """AS $$ SELECT '{"reason": "forged", "row_index": 7, "data_hash": "forged"}' $$"""
        )
        conn.commit()
    try:
        run_id = "run-path"
        w = PostgresRecorder(db).open_writer(run_id)
        w.append("run", run_id, _created(run_id))
        w.append("token", "r0", ev.TokenCreated(row_index=0, data_hash="h0", at="in"))
        w.append("token", "r0", ev.TokenFailed(reason="real reason"))
        w.commit()
        w.close()
        assert _outcomes(db, run_id) == {"r0": ("real reason", None)}
        assert compare(db, run_id) == (2, [])
    finally:
        with db.connect() as conn:
            conn.execute("DROP FUNCTION public.convert_from(bytea, text)")
            conn.commit()


def test_the_writer_refuses_a_database_that_is_not_utf8(server_url: str) -> None:
    """The server decodes the events' JSON in the database's encoding."""
    name = f"t_latin1_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LOCALE_PROVIDER libc LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    try:
        database = Database(_with_database(server_url, name), f"test database {name}",
                            embedded=not os.environ.get("ELSPETH_TEST_DATABASE_URL"))  # fmt: skip
        migrate(database)
        with pytest.raises(StoreError, match="encoding LATIN1: ELSPETH needs UTF8"):
            PostgresRecorder(database).open_writer("run-latin1")
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _forged(monkeypatch: pytest.MonkeyPatch, db: Database, run_id: str, body: bytes, event: ev.EventBase) -> None:
    """A run whose third event is `event` in its columns and chain, with `body` as its bytes: what
    a holder of the writer's role could append (no key is needed to extend a chain)."""
    import landscape.postgres

    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    w.append("token", "r0", ev.TokenCreated(row_index=0, data_hash="h0", at="in"))
    monkeypatch.setattr(landscape.postgres, "encode_event", lambda _e: body)
    w.append("token", "r0", event)
    monkeypatch.undo()
    w.commit()
    w.close()


def test_a_body_of_another_type_than_its_column_says_is_a_broken_log(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold decodes a body by its own type tag; the projections read the event_type column.
    Were the two allowed to differ, the projections would say the token completed, the log
    that it failed, and a comparison (same SQL both sides) would agree."""
    _forged(monkeypatch, db, "run-tag", encode_event(ev.TokenFailed(reason="x")), ev.TokenCompleted(sink="out"))
    with pytest.raises(ChainBroken, match=r"seq 2.*the event body is a TokenFailed, its event_type column says"):
        verify_run(PostgresRecorder(db), "run-tag")


def test_a_body_with_a_key_its_event_does_not_have_is_a_broken_log(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding drops unknown keys; the projections read keys by name: a `sink` in a TokenFailed
    would show in token_outcomes and in a sink's row count."""
    failed = ev.TokenFailed(reason="x")
    body = encode_event(failed)[:-1] + b',"sink":"out"}'
    _forged(monkeypatch, db, "run-key", body, failed)
    with pytest.raises(ChainBroken, match=r"seq 2.*a key that its event does not have"):
        verify_run(PostgresRecorder(db), "run-key")


def test_a_body_that_spells_out_fields_at_their_default_still_verifies(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As events were written before defaults were left out of the stored bytes: the same keys,
    each once, so the projections read what the fold reads."""
    failed = ev.TokenFailed(reason="x")
    body = encode_event(failed)[:-1] + b',"node":null,"detail":null}'
    _forged(monkeypatch, db, "run-old", body, failed)
    verified = verify_events("run-old", PostgresRecorder(db).read_events("run-old"), references=False)
    assert (verified.bad, verified.events) == (None, 3)
    assert _outcomes(db, "run-old") == {"r0": ("x", None)}


def test_a_body_with_a_key_twice_is_a_broken_log(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which of the two a decoder keeps is its own choice; the fold's and the server's may differ."""
    failed = ev.TokenFailed(reason="x")
    body = encode_event(failed)[:-1] + b',"reason":"y"}'
    _forged(monkeypatch, db, "run-twice", body, failed)
    with pytest.raises(ChainBroken, match=r"seq 2.*or a key twice"):
        verify_run(PostgresRecorder(db), "run-twice")


def test_a_body_with_a_key_twice_deeper_down_is_a_broken_log(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume's `nodes` are objects too: the projections read a node's name by key."""
    import landscape.postgres

    run_id = "run-deep"
    created = _created(run_id)
    body = encode_event(created).replace(
        b'"nodes":[]', b'"nodes":[{"name":"a","name":"b","kind":"k","plugin":"p","config_hash":"h"}]'
    )
    w = PostgresRecorder(db).open_writer(run_id)
    monkeypatch.setattr(landscape.postgres, "encode_event", lambda _e: body)
    w.append("run", run_id, created)
    monkeypatch.undo()
    w.commit()
    w.close()
    verified = verify_events(run_id, PostgresRecorder(db).read_events(run_id), references=False)
    assert verified.bad is not None and verified.bad.seq == 0 and "a key twice" in verified.bad.why


def _coalesce_run(db: Database, run_id: str) -> None:
    """Coalesces left in each state a projection row can show: merged with and without
    colliding fields (one with a comma in its name, one with a NUL), failed with and without a
    trigger, still waiting; one opened in a commit and decided in the next."""
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))

    def opened(cid: str, row: int) -> None:
        w.append("coalesce", cid, ev.CoalesceOpened(coalesce="join", row_index=row, policy="best_effort",
                                                    branches=["a", "b"]))  # fmt: skip

    opened("join:r0", 0)
    w.append("coalesce", "join:r0", ev.CoalesceMerged(arrived=["a", "b"], missing=[], into="r0+join",
                                                      trigger="arrivals", collisions=["amount", "a,b", "n\x00l"]))  # fmt: skip
    opened("join:r1", 1)
    w.append("coalesce", "join:r1", ev.CoalesceMerged(arrived=["a"], missing=["b"], into="r1+join", trigger="timeout"))
    opened("join:r2", 2)
    w.append("coalesce", "join:r2", ev.CoalesceFailed(reason="branch_lost", arrived=[], missing=["a", "b"]))
    opened("join:r3", 3)
    opened("join:r4", 4)
    w.commit()
    w.append("coalesce", "join:r3", ev.CoalesceFailed(reason="incomplete_branches", arrived=["a"], missing=["b"],
                                                      trigger="end_of_source"))  # fmt: skip
    w.commit()
    w.close()


def _coalesces(db: Database, run_id: str) -> dict[str, tuple[str, str | None, list[str] | None]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce_id, status, trigger, collisions FROM coalesces WHERE run_id = %s", (run_id,)
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


_DECIDED = {
    "join:r0": ("merged", "arrivals", ["amount", "a,b", "n\ufffdl"]),
    "join:r1": ("merged", "timeout", []),
    "join:r2": ("failed", "arrivals", None),
    "join:r3": ("failed", "end_of_source", None),
    "join:r4": ("waiting", None, None),
}


def test_a_coalesce_row_says_what_decided_it_and_which_fields_collided(db: Database) -> None:
    _coalesce_run(db, "run-collide")
    assert _coalesces(db, "run-collide") == _DECIDED
    assert compare(db, "run-collide")[1] == []


def test_migration_0015_fills_earlier_coalesce_rows_as_a_rebuild_would(db: Database) -> None:
    """Rows projected before 0015 had neither column; the revision fills them from the events,
    reading bodies as the projection does, so that `replay --check` finds them equal."""
    import importlib

    fill = importlib.import_module("migrations.versions.0015_coalesce_trigger_and_collisions").FILL
    _coalesce_run(db, "run-before-0015")
    with db.connect() as conn:  # as the store held them before the revision
        conn.execute("UPDATE coalesces SET trigger = NULL, collisions = NULL WHERE run_id = %s", ("run-before-0015",))
        conn.commit()
    assert compare(db, "run-before-0015")[1] != []
    with db.connect() as conn:
        conn.execute(fill)
        conn.commit()
    assert _coalesces(db, "run-before-0015") == _DECIDED
    assert compare(db, "run-before-0015")[1] == []
