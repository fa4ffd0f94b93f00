"""What a run's first reader (its replay, export or resume) costs the server: with data checksums
on (PostgreSQL 18's default), the first read of a committed row after a checkpoint notes on its
page that the row is committed, and so logs the page whole. Each commit reads back the events and
steps of the one before it while their pages are still changed since the last checkpoint
(`landscape.commits._SETTLE`), so that a first reader logs no page but the last commit's.

A module of its own: its database holds this one run, so every page of a table is the run's."""

from __future__ import annotations

import pytest

from landscape.db import Database
from landscape.postgres import PostgresRecorder
from statecharts import events as ev
from tests.test_store import _created


def test_a_first_reader_logs_whole_only_the_pages_of_the_last_commit(db: Database) -> None:
    with db.connect() as conn:
        if conn.execute("SELECT to_regprocedure('pg_stat_get_backend_wal(integer)')").fetchone() == (None,):
            pytest.skip("the server keeps no WAL statistics per backend (PostgreSQL 18 does)")
        if conn.execute("SHOW data_checksums").fetchone() == ("off",):
            pytest.skip("the server keeps no data checksums: a first read logs no page whole")
    run_id = "run-first-read"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    w.append("run", run_id, _created(run_id))
    for k in range(4):  # four commits of 300 tokens, each created and stepped
        for i in range(300):
            w.append("token", f"t{k}-{i}", ev.TokenCreated(row_index=k * 300 + i, data_hash="0" * 64, at="in"))
            w.append("token", f"t{k}-{i}", ev.StepCompleted(node="n", input_hash="0" * 64, output_hash="1" * 64,
                                                            duration_us=i, next="out"))  # fmt: skip
        w.commit()
    w.close()
    with db.connect(autocommit=True) as conn:

        def logged_whole() -> int:
            conn.execute("SELECT pg_stat_force_next_flush()")  # (a backend's counts are sent when it goes idle)
            (fpi,) = conn.execute("SELECT wal_fpi FROM pg_stat_get_backend_wal(pg_backend_pid())").fetchone() or (0,)
            return int(fpi)

        def partition(table: str) -> tuple[str, int]:
            """The table's one partition with rows (the run's), and its pages: no row is read."""
            (found,) = conn.execute(
                "SELECT relid::text, pg_relation_size(relid) / current_setting('block_size')::int "
                "FROM pg_partition_tree(%s::regclass) WHERE isleaf AND pg_relation_size(relid) > 0",
                (table,),
            ).fetchall()
            return str(found[0]), int(found[1])

        conn.execute("CHECKPOINT")
        for table in ("events", "node_states"):
            name, pages = partition(table)
            whole = []
            for page in range(pages):  # each page's rows, by tid (no index read), one page at a time
                before = logged_whole()
                conn.execute(f"SELECT count(*) FROM {name} WHERE ctid >= '({page},0)' AND ctid < '({page + 1},0)'")
                whole.append(logged_whole() > before)
            # The pages logged whole are those the last commit (a quarter of the rows) filled, at
            # the end: with no commit reading back the one before, every page would be.
            assert pages > 4 and any(whole), (table, whole)
            first = whole.index(True)
            assert all(whole[first:]) and pages - first <= pages // 4 + 2, (table, whole)
