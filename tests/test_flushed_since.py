"""`PostgresRecorder.flushed_since`: which other runs made rows durable in sink files after a
run's last event. A resume asks it before cutting a file back (tests/test_resume.py has the
resumes); here, what it answers and what it costs."""

from __future__ import annotations

from typing import Any

import psycopg

from landscape import postgres
from landscape.db import Database
from landscape.postgres import PostgresRecorder


def _events(
    conn: psycopg.Connection[Any], run_id: str, seqs: range, working_dir: str = "/elsewhere", tx_ahead: int = 0
) -> None:
    """Events as a writer stores them, bodies aside: seq 0 a RunCreated naming its folder, the
    rest sink flushes. `tx_ahead`: their transaction id that much above this transaction's."""
    conn.execute(
        "INSERT INTO events (run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, "
        "payload, payload_hash, prev_hash, hash, tx_id) "
        "SELECT %(run)s, s, 'run', %(run)s, CASE WHEN s = 0 THEN 'RunCreated' ELSE 'SinkFlushed' END, 1, now(), "
        "convert_to(json_build_object('working_dir', %(wd)s::text)::text, 'UTF8'), '\\x00', '\\x00', '\\x00', "
        "pg_current_xact_id()::text::bigint + %(ahead)s "
        "FROM generate_series(%(lo)s::int, %(hi)s::int) s",
        {"run": run_id, "wd": working_dir, "lo": seqs.start, "hi": seqs.stop - 1, "ahead": tx_ahead},
    )


def _flushes(conn: psycopg.Connection[Any], run_id: str, seqs: range, location: str = "out/out.csv") -> None:
    conn.execute(
        "INSERT INTO artifacts (run_id, seq, sink, position, rows, location) "
        "SELECT %s, s, 'out', s * 100, 1, %s FROM generate_series(%s::int, %s::int) s",
        (run_id, location, seqs.start, seqs.stop - 1),
    )


def _run(conn: psycopg.Connection[Any], run_id: str, flushes: int, location: str = "out/out.csv") -> None:
    _events(conn, run_id, range(flushes + 1))
    _flushes(conn, run_id, range(1, flushes + 1), location)


def _store(conn: psycopg.Connection[Any], runs: int, flushes: int) -> None:
    """A store of many runs' flushes at once, as `_run` would make them one by one."""
    conn.execute(
        "INSERT INTO events (run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, "
        "payload, payload_hash, prev_hash, hash) "
        "SELECT 'before-' || r, s, 'run', 'before-' || r, CASE WHEN s = 0 THEN 'RunCreated' ELSE 'SinkFlushed' END, "
        "1, now(), convert_to('{\"working_dir\": \"/elsewhere\"}', 'UTF8'), '\\x00', '\\x00', '\\x00' "
        "FROM generate_series(1, %s) r, generate_series(0, %s) s",
        (runs, flushes),
    )
    conn.execute(
        "INSERT INTO artifacts (run_id, seq, sink, position, rows, location) "
        "SELECT 'before-' || r, s, 'out', s * 100, 1, 'out/out.csv' FROM generate_series(1, %s) r, generate_series(1, %s) s",
        (runs, flushes),
    )


def _rows_read(plan: dict[str, Any], tables: tuple[str, ...]) -> tuple[int, list[str]]:
    """Rows the plan's scans of `tables` read (returned or filtered out), and how it read each."""
    read, how = 0, []
    name = plan.get("Relation Name", "")
    if name.startswith(tables):
        loops = plan.get("Actual Loops", 1)
        read += int((plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops)
        how.append(f"{plan['Node Type']} on {name}")
    for child in plan.get("Plans", []):
        more, also = _rows_read(child, tables)
        read, how = read + more, how + also
    return read, how


def test_it_reads_events_by_key_one_per_flush_never_the_store(db: Database) -> None:
    """A resume asks once its sink file is longer than its durable position: the usual state
    after a crash. The query goes through the store's flushes and looks each one's event up by
    key: never a scan of the events (a store's events outnumber its flushes by far)."""
    with db.connect() as conn:
        _store(conn, runs=1000, flushes=40)
        conn.commit()
        _events(conn, "crashed", range(5))
        conn.commit()
        _run(conn, "after-1", flushes=3, location="out/a.csv")
        _run(conn, "after-2", flushes=2)
        conn.commit()
        conn.execute("ANALYZE events")
        conn.execute("ANALYZE artifacts")
        conn.commit()
        assert sorted(PostgresRecorder(db).flushed_since("crashed")) == [
            ("after-1", "out/a.csv", "/elsewhere"),
            ("after-2", "out/out.csv", "/elsewhere"),
        ]
        last = conn.execute(postgres._LAST_EVENT, ("crashed",)).fetchone()
        assert last is not None
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF) " + postgres._FLUSHED_AFTER,
            {"tx": last[0], "pos": last[1], "run": "crashed"},
            prepare=False,
        ).fetchone()
        assert row is not None
    read, how = _rows_read(row[0][0]["Plan"], ("events",))
    assert not [h for h in how if h.startswith(("Seq Scan", "Parallel Seq Scan"))], how
    # One event per flush (40,005) and the two later runs' first events (by the index of those
    # that name a folder: not back through their flushes): not a scan.
    assert read <= 40_005 + 2, (read, how)


def test_a_store_moved_to_another_cluster_still_finds_the_flushes_written_since(db: Database) -> None:
    """pg_dump and restore keep positions (the identity goes on after them), not transaction ids:
    events restored from the old cluster can carry higher ids than the new one hands out. A flush
    written after the move comes after the crashed run's last event by position, and is found."""
    with db.connect() as conn:
        _events(conn, "moved", range(3), tx_ahead=1_000_000)  # ids of the old cluster, ahead of this one's
        conn.commit()
        _run(conn, "after-move", flushes=1)
        conn.commit()
    assert PostgresRecorder(db).flushed_since("moved") == [("after-move", "out/out.csv", "/elsewhere")]


def test_a_flush_positioned_before_the_runs_last_event_but_committed_after_it_is_found(db: Database) -> None:
    """Positions are handed out as rows are inserted, not as transactions commit: a writer that
    inserts its flush while this run's last transaction is open, then commits after it, holds a
    lower global_position than this run's last event. It wrote since all the same (its
    transaction began after this run's), and a resume must hear of it."""
    with db.connect() as crashed, db.connect() as other:
        crashed.execute("SELECT pg_current_xact_id()")  # its transaction is under way
        _run(other, "interleaved", flushes=1)
        _events(crashed, "crashed-early", range(3))  # positions after the other run's
        crashed.commit()
        other.commit()
        positions = dict(
            crashed.execute(
                "SELECT run_id, max(global_position) FROM events "
                "WHERE run_id IN ('interleaved', 'crashed-early') GROUP BY run_id"
            ).fetchall()
        )
        assert positions["interleaved"] < positions["crashed-early"]  # the case at hand
    assert PostgresRecorder(db).flushed_since("crashed-early") == [("interleaved", "out/out.csv", "/elsewhere")]


def test_flushes_before_the_runs_last_event_and_empty_ones_are_not_reported(db: Database) -> None:
    with db.connect() as conn:
        _run(conn, "earlier", flushes=2)
        conn.commit()
        _events(conn, "resumed", range(2))
        conn.commit()
        _events(conn, "baseline-only", range(2))
        conn.execute(
            "INSERT INTO artifacts (run_id, seq, sink, position, rows, location) "
            "VALUES ('baseline-only', 1, 'out', 0, 0, 'out/out.csv')"
        )  # the position a sink starts from: no rows made durable
        conn.commit()
    recorder = PostgresRecorder(db)
    assert recorder.flushed_since("resumed") == []
    assert recorder.flushed_since("no-such-run") == []


def test_each_run_and_location_once(db: Database) -> None:
    with db.connect() as conn:
        _events(conn, "first", range(2))
        conn.commit()
        _run(conn, "many-flushes", flushes=10)
        conn.commit()
    assert PostgresRecorder(db).flushed_since("first") == [("many-flushes", "out/out.csv", "/elsewhere")]
