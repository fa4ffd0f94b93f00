"""The event store against a real PostgreSQL: append, read, the chain, one writer per run."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape import commits, postgres
from landscape.canonical import commit_row
from landscape.db import Database
from landscape.errors import ChainBroken, ConcurrentWriter
from landscape.notary import Notary, read_run_witness
from landscape.note import Signer
from landscape.postgres import PgRunWriter as RunWriter
from landscape.postgres import PostgresRecorder, run_ids_in
from landscape.verify import payload_matches
from landscape.verify_store import verify_run
from statecharts import events as ev
from statecharts.upcast import UnknownSchemaVersion, upcast
from tests.test_flushed_since import _rows_read


def _created(run_id: str) -> ev.RunCreated:
    return ev.RunCreated(
        settings_path="s.yaml", settings_hash="h", settings={}, source_fingerprint="f", nodes=[],
        elspeth_version="test", working_dir=".",
    )  # fmt: skip


def _write_run(db: Database, run_id: str, tokens: int = 5, commit_every: int = 3) -> RunWriter:
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    for i in range(tokens):
        h, payload = commit_row({"id": i, "name": f"row {i}", "run": run_id})
        w.put_payload(h, payload)
        w.append("token", f"r{i}", ev.TokenCreated(row_index=i, data_hash=h, at="in"))
        if i % commit_every == 0:
            w.commit()
    w.commit()
    return w


def _lock_all(conn: Any, tables: str) -> None:
    """Take `tables` (every partition) exclusively, or fail: a lock a reader of ours still holds
    is never given up. Not NOWAIT: autovacuum may be analysing a partition at that moment, and it
    gives way to a waiting lock within a second (deadlock_timeout)."""
    conn.execute("SET LOCAL lock_timeout = '30s'")
    conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")


def _superuser_update(db: Database, sql: str, params: tuple[Any, ...]) -> None:
    """What a superuser could still do: bypass the append-only triggers and edit history."""
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")  # triggers off for this session
        conn.execute(sql, params)
        conn.commit()


def test_events_read_back_as_the_same_structs_in_seq_order(db: Database) -> None:
    w = _write_run(db, "run-a")
    w.close()
    stored = list(PostgresRecorder(db).read_events("run-a"))
    assert [e.seq for e in stored] == list(range(6))
    assert stored[0].event == _created("run-a")
    created = stored[1].event
    assert isinstance(created, ev.TokenCreated) and created.row_index == 0 and created.at == "in"


def test_row_payloads_are_stored_as_appended_and_one_commitment_once(db: Database) -> None:
    """Each payload's salt, data and time as the writer was given them (their COPY rows are made
    where the batch is sent); the same commitment put twice in a batch is stored once."""
    times = iter(range(1_700_000_000_000_000, 1_800_000_000_000_000, 7))
    w = PostgresRecorder(db).open_writer("r-payloads", now_us=lambda: next(times))
    w.append("run", "r-payloads", _created("r-payloads"))
    rows = [commit_row({"id": i, "text": "é" * i}) for i in range(3)]
    for h, payload in [*rows, rows[1]]:
        w.put_payload(h, payload)
    w.commit()
    w.close()
    with db.connect() as conn:
        stored = conn.execute(
            "SELECT encode(hash, 'hex'), salt, data, (extract(epoch FROM recorded_at) * 1000000)::bigint "
            "FROM payloads WHERE run_id = 'r-payloads' ORDER BY recorded_at"
        ).fetchall()
    assert [(h, p.salt, p.data) for h, p in rows] == [(h, bytes(s), bytes(d)) for h, s, d, _ in stored]
    assert [t for *_, t in stored] == [1_700_000_000_000_000 + 7 * i for i in (1, 2, 3)]
    assert [e.recorded_at_us for e in PostgresRecorder(db).read_events("r-payloads")] == [1_700_000_000_000_000]


def test_events_are_recorded_at_the_system_clock_in_microseconds(db: Database) -> None:
    before = time.time_ns() // 1000
    _write_run(db, "r-clock", tokens=4, commit_every=2).close()
    after = time.time_ns() // 1000
    times = [e.recorded_at_us for e in PostgresRecorder(db).read_events("r-clock")]
    assert len(times) == 5 and before <= times[0] and times == sorted(times) and times[-1] <= after


def test_a_clean_chain_verifies(db: Database) -> None:
    _write_run(db, "run-ok").close()
    result = verify_run(PostgresRecorder(db), "run-ok")
    assert result.events == 6


@pytest.mark.parametrize(
    ("sql", "bad_seq"),
    [
        ("UPDATE events SET payload = convert_to(replace(convert_from(payload, 'UTF8'), 'in', 'ix'), 'UTF8') "
         "WHERE run_id = %s AND seq = 3", 3),
        ("UPDATE events SET entity_id = 'r9' WHERE run_id = %s AND seq = 2", 2),
        ("UPDATE events SET recorded_at = recorded_at + interval '1 second' WHERE run_id = %s AND seq = 4", 4),
        # times a reader cannot shift by 30 years: named at their seq, not a failed read
        ("UPDATE events SET recorded_at = 'infinity' WHERE run_id = %s AND seq = 4", 4),
        ("UPDATE events SET recorded_at = '-infinity' WHERE run_id = %s AND seq = 3", 3),
        ("UPDATE events SET recorded_at = '294270-01-01' WHERE run_id = %s AND seq = 5", 5),
        # (a bit flipped: setting the byte to 0 changed nothing when it was 0 already, 1 time in 256)
        ("UPDATE events SET hash = set_byte(hash, 0, get_byte(hash, 0) # 1) WHERE run_id = %s AND seq = 1", 1),
        ("DELETE FROM events WHERE run_id = %s AND seq = 2", 2),
    ],
)  # fmt: skip
def test_a_changed_byte_in_an_event_is_found_at_its_seq(db: Database, sql: str, bad_seq: int) -> None:
    run_id = f"run-tamper-{bad_seq}-{os.urandom(6).hex()}"
    _write_run(db, run_id).close()
    _superuser_update(db, sql.replace("%s", "%s"), (run_id,))
    with pytest.raises(ChainBroken) as err:
        verify_run(PostgresRecorder(db), run_id)
    assert err.value.seq == bad_seq
    assert f"seq {bad_seq}" in str(err.value)


def test_a_changed_byte_in_a_row_payload_is_found_at_the_first_event_using_it(db: Database) -> None:
    _write_run(db, "run-payload").close()
    token = next(e.event for e in list(PostgresRecorder(db).read_events("run-payload")) if e.entity_id == "r2")
    assert isinstance(token, ev.TokenCreated)
    _superuser_update(
        db,
        "UPDATE payloads SET data = convert_to(replace(convert_from(data, 'UTF8'), 'row', 'raw'), 'UTF8') "
        "WHERE hash = %s",
        (bytes.fromhex(token.data_hash),),
    )
    with pytest.raises(ChainBroken) as err:
        verify_run(PostgresRecorder(db), "run-payload")
    assert err.value.seq == 3  # RunStarted is seq 0; token r2 is created at seq 3


def test_a_second_writer_on_the_same_run_is_refused_naming_the_run(db: Database) -> None:
    first = PostgresRecorder(db).open_writer("run-busy")
    try:
        with pytest.raises(ConcurrentWriter, match="run-busy"):
            PostgresRecorder(db).open_writer("run-busy")
    finally:
        first.close()
    PostgresRecorder(db).open_writer("run-busy").close()  # free again once the first writer is gone


def test_seq_is_gap_free_under_concurrent_appends_to_different_runs(db: Database) -> None:
    runs = [f"run-conc-{i}" for i in range(4)]
    errors: list[BaseException] = []

    def work(run_id: str) -> None:
        try:
            _write_run(db, run_id, tokens=300, commit_every=7).close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with db.connect() as conn:
        for run_id in runs:
            seqs = [r[0] for r in conn.execute("SELECT seq FROM events WHERE run_id = %s ORDER BY seq", (run_id,))]
            assert seqs == list(range(301))
            assert verify_run(PostgresRecorder(db), run_id).events == 301


def test_a_reopened_writer_continues_the_chain(db: Database) -> None:
    _write_run(db, "run-cont", tokens=2).close()
    w = PostgresRecorder(db).open_writer("run-cont")
    assert w.next_seq == 3
    w.append("run", "run-cont", ev.RunStarted())
    w.commit()
    w.close()
    assert verify_run(PostgresRecorder(db), "run-cont").events == 4


def test_a_writer_continues_the_tree_a_reader_verified_only_while_the_log_still_ends_there(db: Database) -> None:
    _write_run(db, "run-tip", tokens=4).close()
    recorder = PostgresRecorder(db)
    verified = verify_run(recorder, "run-tip")
    w = recorder.open_writer("run-tip", verified=(verified.tree, verified.head))
    assert w._chain is not None and (w.next_seq, w._chain.head) == (verified.events, verified.head)
    w.append("run", "run-tip", ev.RunStarted())
    w.commit()
    w.close()
    after = verify_run(recorder, "run-tip")
    assert w._chain.tree.root() == after.root  # the handed-over tree grew into the log's tree
    # A reading the log has moved past since (another writer came between): not taken.
    w = recorder.open_writer("run-tip", verified=(verified.tree, verified.head))
    assert w._chain is not None and (w.next_seq, w._chain.head) == (after.events, after.head)
    assert w._chain.tree.root() == after.root
    w.close()


def test_an_event_from_a_newer_schema_version_is_refused_clearly(db: Database) -> None:
    _write_run(db, "run-future", tokens=1).close()
    _superuser_update(db, "UPDATE events SET schema_version = 9 WHERE run_id = %s AND seq = 1", ("run-future",))
    stored = list(PostgresRecorder(db).read_events("run-future"))
    with pytest.raises(UnknownSchemaVersion, match=r"schema_version 9, .*newer version"):
        _ = stored[1].event
    for version in (0, -5):  # no ELSPETH wrote these, newer or older
        with pytest.raises(UnknownSchemaVersion, match=rf"schema_version {version}, .*versions count from 1") as e:
            upcast(stored[1].event_type, version, stored[1].payload)
        assert "newer" not in str(e.value)


def test_append_only_is_enforced_by_the_database(db: Database) -> None:
    _write_run(db, "run-ro", tokens=1).close()
    for sql in (
        "UPDATE events SET entity_id = 'x' WHERE run_id = 'run-ro'",
        "DELETE FROM events WHERE run_id = 'run-ro'",
        "TRUNCATE events",
    ):
        with db.connect() as conn, pytest.raises(psycopg.Error, match="append-only"):
            conn.execute(sql)


def test_a_payload_cannot_be_rewritten(db: Database) -> None:
    """Row data may be erased (with a record: see test_erasure), never changed in place: a plain
    UPDATE of a payload is refused by the database."""
    _write_run(db, "run-pl", tokens=1).close()
    created = list(PostgresRecorder(db).read_events("run-pl"))[1].event
    assert isinstance(created, ev.TokenCreated)
    h = created.data_hash
    with db.connect() as conn, pytest.raises(psycopg.Error, match="append-only: UPDATE on payloads"):
        conn.execute("UPDATE payloads SET data = %s WHERE hash = %s", (b'{"id":1}', bytes.fromhex(h)))


def test_recorded_at_round_trips_to_the_exact_microsecond() -> None:
    """The chain hashes integer microseconds; the stored timestamptz must give them back."""
    import random

    from landscape.records import datetime_to_us as _datetime_to_us
    from landscape.records import us_to_datetime as _us_to_datetime

    rnd = random.Random(5)
    for _ in range(20_000):
        us = rnd.randint(1_500_000_000_000_000, 4_000_000_000_000_000)
        assert _datetime_to_us(_us_to_datetime(us)) == us


def test_the_migrations_build_exactly_the_tables_of_schema_py(db: Database) -> None:
    # The migrations are spelled out, schema.py is what the code uses: they must not drift apart.
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from landscape.schema import metadata

    engine = create_engine(db.conninfo.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            # The partitions of a partitioned table are not tables of schema.py (which says how
            # each is partitioned); tests/test_partitions.py checks them.
            partitions = {r[0] for r in conn.exec_driver_sql("SELECT inhrelid::regclass::text FROM pg_inherits")}
            opts = {
                "compare_server_default": True,
                "include_name": lambda name, kind, _: not (kind in ("table", "index") and name in partitions),
            }
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_the_head_revision_read_from_the_files_is_alembics() -> None:
    # Read without alembic so that every command starts fast; it must be the head alembic sees.
    from alembic.script import ScriptDirectory

    from landscape.db import Database, _alembic_config, head_revision

    assert (
        head_revision()
        == ScriptDirectory.from_config(_alembic_config(Database("postgresql://", ""))).get_current_head()
    )


@pytest.mark.parametrize("autocommit", [True, False])
def test_the_stores_sessions_compile_no_query(db: Database, autocommit: bool) -> None:
    """A server built with LLVM compiled the store's queries for seconds each (the planner's
    estimates for the partitioned tables are far above jit_above_cost): a run's start took 2 s
    more on PostgreSQL 15 asking for the open sink positions. Off for every session it opens, in a
    transaction or not (a SET in a transaction rolled back would be undone)."""
    with db.connect(autocommit) as conn:
        if not autocommit:
            conn.rollback()
        row = conn.execute("SHOW jit").fetchone()
    assert row is not None and row[0] == "off"


def test_a_verification_that_stops_early_leaves_no_reader_holding_locks(db: Database) -> None:
    """A reader of the store holds a transaction (and its locks) until it is closed: stopping at
    the first bad event must close it at once, not when the garbage collector gets to it."""
    _write_run(db, "run-early-stop", tokens=40, commit_every=50).close()
    _superuser_update(db, "UPDATE events SET entity_id = 'rx' WHERE run_id = %s AND seq = 2", ("run-early-stop",))
    with pytest.raises(ChainBroken) as err:  # the traceback it keeps alive references the reader's frames
        verify_run(PostgresRecorder(db), "run-early-stop")
    assert err.value.seq == 2
    with db.connect() as conn:
        _lock_all(conn, "events")  # fails if a reader holds on
        conn.rollback()


def test_the_table_names_the_cli_loads_without_sqlalchemy_are_schema_pys() -> None:
    from landscape import schema, table_names

    assert tuple(t.name for t in schema.PROJECTION_TABLES) == table_names.PROJECTION_TABLE_NAMES
    assert {
        t.name: (tuple(c.name for c in t.primary_key), tuple(c.name for c in t.c)) for t in schema.PROJECTION_TABLES
    } == table_names.PROJECTION_COLUMNS
    assert frozenset(schema.metadata.tables) | {"alembic_version"} == table_names.STORE_TABLE_NAMES


def test_a_run_and_its_check_do_not_import_sqlalchemy(db: Database, tmp_path: Path) -> None:
    """SQLAlchemy is a third of a second of a short run's start; a run without a database sink
    needs none of it (the store's tables are named in `landscape.table_names`), nor does
    `replay --check`, whose import competed with the verification for this process's time."""
    from tests.test_cli import PIPELINE, elspeth

    (tmp_path / "in.csv").write_text("id,v\n1,2\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(PIPELINE)
    proc = elspeth("run", "-s", "settings.yaml", cwd=tmp_path, db=db, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    check = elspeth("replay", run_id, "--check", cwd=tmp_path, db=db, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert check.returncode == 0, check.stderr
    for p in (proc, check):
        imported = [
            line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")
        ]
        assert "psycopg" in imported  # the check sees the imports
        assert [m for m in imported if m.startswith("sqlalchemy")] == []


@pytest.mark.parametrize("scan_at", [0, 1_000_000])  # a pass over the run's payloads, or a probe per hash
def test_payloads_are_found_by_run_and_hash_whichever_way_they_are_read(
    db: Database, scan_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "_SCAN_AT", scan_at)
    run_id = f"run-scan-{scan_at}"
    _write_run(db, run_id, tokens=6).close()
    _write_run(db, f"{run_id}-other", tokens=2).close()
    recorder = PostgresRecorder(db)
    with db.connect() as conn:
        mine = [bytes(r[0]).hex() for r in conn.execute("SELECT hash FROM payloads WHERE run_id = %s", (run_id,))]
        other = [
            bytes(r[0]).hex() for r in conn.execute("SELECT hash FROM payloads WHERE run_id = %s", (f"{run_id}-other",))
        ]
    _superuser_update(db, "UPDATE payloads SET run_id = '' WHERE hash = %s", (bytes.fromhex(mine[0]),))  # pre-0007
    # Names no payload is named by (a forged body can hold any text): none found, none an error.
    odd = ["zz" * 32, "abc", mine[1].upper(), mine[1] + " ", " " + mine[1], ""]
    found = recorder.payloads(run_id, [*mine, *other, "00" * 32, *odd])
    assert set(found) == set(mine)  # its own, the older one kept under '', not another run's
    assert all(payload_matches(h, p) for h, p in found.items())
    assert recorder.erasures(run_id, odd) == {}


def test_a_reader_that_the_database_refuses_says_so_and_leaves_nothing_running(db: Database) -> None:
    """The pages are fetched by a thread: its failure must reach the reader as the store's own
    error, and no thread may be left behind."""
    import threading

    from landscape.errors import LandscapeError
    from landscape.roles import Role

    _write_run(db, "run-refused", tokens=3).close()
    analyst = PostgresRecorder(db.as_role(Role.ANALYST))  # may not read event bodies
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(LandscapeError, match="reading events of run run-refused"):
        list(analyst.read_events("run-refused"))
    assert "elspeth-read" not in {t.name for t in threading.enumerate()} - before
    assert [e.seq for e in PostgresRecorder(db).read_events("run-refused")] == [0, 1, 2, 3]


def test_encode_row_refuses_what_json_would_record_as_another_row() -> None:
    from landscape.canonical import UnrecordableRow, encode_row

    assert encode_row({"a": None, "b": [1.5, None], "c": "x"}) == b'{"a":null,"b":[1.5,null],"c":"x"}'
    for row in ({"a": float("nan")}, {"a": {"b": [1, float("-inf")]}}, {"a": "\ud800"}, {"a": [10**4300]}):
        with pytest.raises(UnrecordableRow):
            encode_row(row)


def test_encode_row_names_no_value_when_the_encoder_refuses_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder's ValueError other than a long int's is an unrecordable row too (a traceback
    otherwise), said without the encoder's words, which may quote the value."""
    from landscape import canonical

    class Refusing:
        def encode(self, row: object) -> bytes:
            raise ValueError("cannot encode 'secret-value'")

    monkeypatch.setattr(canonical, "_encoder", Refusing())
    with pytest.raises(canonical.UnrecordableRow, match=r"^a value cannot be written as JSON$"):
        canonical.encode_row({"a": 1})


def nested(depth: int, inner: object) -> object:
    for _ in range(depth):
        inner = [inner]
    return inner


def test_encode_row_of_a_deep_row_is_an_answer_not_a_recursion_error() -> None:
    """A source decodes rows nested about 1,000 deep: the check for infinities among a row's
    nulls took two frames a level and crashed the run (and each resume) from about 330 levels."""
    from landscape.canonical import UnrecordableRow, encode_row

    assert encode_row({"n": None, "d": nested(900, 1)}).startswith(b'{"n":null,"d":[[[')
    with pytest.raises(UnrecordableRow, match="not finite"):
        encode_row({"n": None, "d": nested(900, float("nan"))})
    with pytest.raises(UnrecordableRow, match="nested too deeply"):
        encode_row({"d": nested(100_000, 1)})


def test_the_runs_a_table_holds_are_found_by_key_not_by_reading_all_its_rows(db: Database) -> None:
    """`projections rebuild` of every run lists them; a store's events outnumber its runs by far."""
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO events (run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, "
            "payload, payload_hash, prev_hash, hash) "
            "SELECT 'run-ids-' || r, s, 'token', 't', 'StepCompleted', 1, now(), '\\x7b7d', '\\x00', '\\x00', '\\x00' "
            "FROM generate_series(10, 39) r, generate_series(0, 299) s"
        )
        conn.execute("ANALYZE events")
        conn.commit()
        ids = run_ids_in(conn, "events")
        everyone = [str(r[0]) for r in conn.execute("SELECT DISTINCT run_id FROM events ORDER BY run_id").fetchall()]
        assert ids == everyone and [r for r in ids if r.startswith("run-ids-")] == [
            f"run-ids-{r}" for r in range(10, 40)
        ]
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF) " + postgres._RUN_IDS_IN.format(table="events")
        ).fetchone()
        assert row is not None
    read, how = _rows_read(row[0][0]["Plan"], ("events",))
    assert not [h for h in how if "Seq Scan" in h], how
    # A probe reads at most one row of each of the 16 partitions' keys; all the rows are 9,000 and more.
    assert read <= (len(ids) + 1) * 16, (read, how)


@settings(max_examples=200, deadline=None)
@given(row=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=40), max_size=6))
def test_a_payload_is_split_one_way_only(row: dict[str, Any]) -> None:
    """A salted row is well split; a row stored before salting, cut 16 bytes in (the commitment is
    the same), is not: otherwise a verifier would show other bytes as its data."""
    from landscape.canonical import SALT_BYTES, well_split

    _, (salt, data) = commit_row(row)
    assert len(salt) == SALT_BYTES and well_split(salt, data)
    assert well_split(b"", data)
    if len(data) > SALT_BYTES:
        assert not well_split(data[:SALT_BYTES], data[SALT_BYTES:])


@pytest.mark.parametrize("sending", ["inline", "process"])
def test_a_batch_sent_in_pieces_is_one_chain_and_its_checkpoint_covers_all_of_it(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sending: str
) -> None:
    """The sending side streams a batch's rows into the COPY a piece at a time (`SEAL_CHUNK`),
    growing the tree as it goes: every piece lands, in order, and the signed checkpoint is of
    the whole log, which the witness file holds too once the commit is durable."""
    monkeypatch.setattr(commits, "SEAL_CHUNK", 3)  # (before the writer forks its sender)
    run_id = f"run-pieces-{sending}"
    notary = Notary(Signer.generate("ops"), PostgresRecorder(db).store_id(), tmp_path)
    w = PostgresRecorder(db).open_writer(run_id, sending=sending, notary=notary)  # type: ignore[arg-type]
    w.append("run", run_id, _created(run_id))
    for i in range(10):  # 11 events: three whole pieces and a part
        w.append("token", f"r{i}", ev.TokenCreated(row_index=i, data_hash=f"{i:064x}", at="in"))
    w.commit()
    w.close()
    (stored,) = PostgresRecorder(db).checkpoints(run_id)
    (witnessed,) = read_run_witness(tmp_path, run_id)
    checked = [stored, witnessed]
    verified = verify_run(PostgresRecorder(db), run_id, payloads=False, checkpoints=checked, verifier=notary.verifier)
    assert (verified.bad, verified.events) == (None, 11)
    assert (stored.size, stored.root) == (witnessed.size, witnessed.root) == (11, verified.root)
