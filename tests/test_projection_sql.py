"""The projections the server derives from the events (`landscape.projection_sql`): what a body
it cannot decode as it stands turns into, and a rebuild that must not race the run's writer."""

from __future__ import annotations

import pytest

from landscape.db import Database
from landscape.errors import ConcurrentWriter
from landscape.postgres import PostgresRecorder
from landscape.projections import compare, rebuild
from statecharts import events as ev
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


def test_every_event_type_is_at_the_schema_version_the_projection_sql_reads() -> None:
    """The SQL reads each event body as version 1 spells it. A type at a new SCHEMA_VERSION
    (with its upcaster in statecharts/upcast.py) needs its new shape read in
    landscape/projection_sql.py as well; then this test gets that type's new version."""
    assert {name: cls.SCHEMA_VERSION for name, cls in ev.EVENT_TYPES.items() if cls.SCHEMA_VERSION != 1} == {}
