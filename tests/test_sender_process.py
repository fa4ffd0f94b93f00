"""A writer whose commits are sent by a child process (`landscape.sender_process`), as `elspeth
run` and `elspeth resume` use it: the child holds the run's lock, a failure or a crash in it
reaches the engine as one, and nothing it did not commit is on record."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from pathlib import Path

import psycopg
import pytest

from engine.stopping import StopNow
from landscape.canonical import commit_row
from landscape.commits import EVENT_COLUMNS, SENDER_LOCK, Batch, Chain, hold_for_transaction, lock, send
from landscape.db import Database
from landscape.errors import ChainBroken, ConcurrentWriter, StoreError
from landscape.notary import Notary, WitnessError, read_run_witness
from landscape.note import Signer
from landscape.postgres import PgRunWriter, PostgresRecorder
from landscape.records import us_to_datetime
from landscape.verify_store import verify_run
from statecharts import events as ev
from tests.engine_harness import write_csv
from tests.test_cli import PIPELINE, elspeth


def _created() -> ev.RunCreated:
    return ev.RunCreated(
        settings_path="s.yaml", settings_hash="h", settings={}, source_fingerprint="f", nodes=[],
        elspeth_version="test", working_dir=".",
    )  # fmt: skip


def _tokens(w: PgRunWriter, first: int, n: int) -> None:
    for i in range(first, first + n):
        h, payload = commit_row({"id": i})
        w.put_payload(h, payload)
        w.append("token", f"r{i}", ev.TokenCreated(row_index=i, data_hash=h, at="in"))


def _children() -> set[int]:
    """This process's children that are still there (zombies included)."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(pid))
    return found


def _child(w: PgRunWriter) -> int:
    assert w._process is not None and w._process._pid is not None
    return w._process._pid


def _lock_released(db: Database, run_id: str, tries: int = 2000) -> bool:
    """Whether the run's lock is free, waiting (boundedly) for the server to see a dead client go:
    it notices at its next read of the socket, after whatever statement it was running."""
    recorder = PostgresRecorder(db)
    for _ in range(tries):
        if not recorder.writer_alive(run_id):
            return True
        with db.connect() as conn:  # a round trip, to give the server time without sleeping
            conn.execute("SELECT pg_stat_clear_snapshot()")
    return False


def test_the_sender_process_holds_the_runs_lock_while_the_writer_is_open(db: Database) -> None:
    run_id = f"run-sp-lock-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    try:
        assert w._process is not None  # the commits are sent from a child
        w.append("run", run_id, _created())
        w.commit()
        with pytest.raises(ConcurrentWriter, match=run_id):
            PostgresRecorder(db).open_writer(run_id)
        with pytest.raises(ConcurrentWriter, match=run_id):
            PostgresRecorder(db).open_writer(run_id, sending="process")
        assert PostgresRecorder(db).writer_alive(run_id)
    finally:
        w.close()
    child = w._process
    assert child is not None and child._pid is None  # reaped
    again = PostgresRecorder(db).open_writer(run_id, sending="process")
    assert again.next_seq == 1  # it found the log where the first left it
    again.append("run", run_id, ev.RunStarted())
    again.commit()
    again.close()
    again.close()  # twice is harmless
    assert verify_run(PostgresRecorder(db), run_id).events == 2  # and chained on from its head


def test_a_writer_refused_at_open_leaves_no_child_and_no_lock(db: Database) -> None:
    run_id = f"run-sp-refused-{os.urandom(6).hex()}"
    first = PostgresRecorder(db).open_writer(run_id)  # sending its own commits: holds both locks
    try:
        children = _children()
        with pytest.raises(ConcurrentWriter, match=run_id):
            PostgresRecorder(db).open_writer(run_id, sending="process")  # refused the writer lock: no fork
        assert _children() == children
    finally:
        first.close()
    assert not PostgresRecorder(db).writer_alive(run_id)


def test_a_sender_left_over_from_a_dead_engine_keeps_other_writers_out(db: Database) -> None:
    """A child that outlived its writer (still finishing a commit) holds the sender lock: a
    resume that took the writer lock alone would write beside it."""
    run_id = f"run-sp-orphan-{os.urandom(6).hex()}"
    with db.connect() as sender:  # what such a child's session holds
        sender.execute(f"SELECT pg_advisory_lock({SENDER_LOCK})", (run_id,))
        sender.commit()
        assert PostgresRecorder(db).writer_alive(run_id)
        children = _children()
        for sending in ("inline", "process"):
            with pytest.raises(ConcurrentWriter, match=run_id):
                PostgresRecorder(db).open_writer(run_id, sending=sending)  # type: ignore[arg-type]
        assert _children() == children  # the child that was refused the sender lock was reaped
        assert PostgresRecorder(db).writer_alive(run_id)  # the left-over sender lock, still held
    assert not PostgresRecorder(db).writer_alive(run_id)  # and the refused writer kept nothing
    PostgresRecorder(db).open_writer(run_id, sending="process").close()


def test_the_sender_process_ignores_interrupts_meant_for_the_engine(db: Database) -> None:
    """Ctrl-C reaches every process of the terminal's group: stopping is the engine's to decide."""
    run_id = f"run-sp-int-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    try:
        w.append("run", run_id, _created())
        os.kill(_child(w), signal.SIGINT)
        os.kill(_child(w), signal.SIGTERM)
        os.kill(_child(w), signal.SIGHUP)  # (a terminal closed: the whole group gets it)
        _tokens(w, 0, 3)
        w.commit()
    finally:
        w.close()
    assert verify_run(PostgresRecorder(db), run_id).events == 4


def test_a_sender_process_killed_from_outside_fails_the_commit_and_keeps_the_run_until_closed(
    db: Database,
) -> None:
    run_id = f"run-sp-kill-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    w.append("run", run_id, _created())
    _tokens(w, 0, 2)
    w.commit()
    os.kill(_child(w), signal.SIGKILL)
    # The engine may still be writing the run's sinks until it notices: the run is not free.
    assert not _lock_released(db, run_id, tries=20)
    _tokens(w, 2, 2)
    with pytest.raises(StoreError, match="the writer's process ended unexpectedly"):
        w.commit()
    _tokens(w, 4, 1)
    with pytest.raises(StoreError, match="nothing more can be committed after a failed commit"):
        w.commit()  # its seqs follow the lost batch's: sending it would leave a gap
    w.close()  # does not hang, does not raise again
    assert _lock_released(db, run_id)
    assert verify_run(PostgresRecorder(db), run_id).events == 3  # what was committed, nothing more
    resumed = PostgresRecorder(db).open_writer(run_id, sending="process")
    assert resumed.next_seq == 3
    _tokens(resumed, 2, 2)
    resumed.commit()
    resumed.close()
    assert verify_run(PostgresRecorder(db), run_id).events == 5


def test_a_failed_statement_in_the_sender_process_is_the_engines_error(db: Database) -> None:
    run_id = f"run-sp-fail-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    w.append("run", run_id, _created())
    w.commit()
    with db.connect() as conn:  # a row written where this writer's next goes, past its lock
        conn.execute(
            f"INSERT INTO events ({EVENT_COLUMNS}) SELECT run_id, 1, machine, entity_id, event_type, schema_version, "
            "recorded_at, payload, payload_hash, prev_hash, hash FROM events WHERE run_id = %s AND seq = 0",
            (run_id,),
        )
        conn.commit()
    w.append("run", run_id, ev.RunStarted())
    with pytest.raises(ConcurrentWriter, match=f"run {run_id} .*seq already taken"):  # the class survives the pipe
        w.commit()
    w.append("run", run_id, ev.RunFailed(reason="x"))
    with pytest.raises(StoreError, match="nothing more can be committed after a failed commit"):
        w.commit()
    w.close()
    assert _lock_released(db, run_id)
    with pytest.raises(ChainBroken, match="at seq 1"):  # the foreign row, and nothing of the writer's after it
        verify_run(PostgresRecorder(db), run_id)
    with db.connect() as conn:
        assert conn.execute("SELECT max(seq) FROM events WHERE run_id = %s", (run_id,)).fetchone() == (1,)


def test_a_batch_handed_over_before_the_one_before_it_failed_is_not_committed(db: Database) -> None:
    """The writer hands a batch to the child before it reads the answer to the one before (the
    child chains it meanwhile). When that one fails, the next is not committed, even one whose
    seqs the log would take: here the failed batch held a payload and no event."""
    run_id = f"run-sp-ahead-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    w.append("run", run_id, _created())
    w.commit()
    h, payload = commit_row({"id": 7})
    with db.connect() as conn:  # the payload is there already: the next commit's COPY fails on it
        conn.execute(
            "INSERT INTO payloads (run_id, hash, salt, data) VALUES (%s, %s, %s, %s)",
            (run_id, bytes.fromhex(h), payload.salt, payload.data),
        )
        conn.commit()
    w.put_payload(h, payload)
    w.commit(wait=False)  # handed over, its answer not read yet
    w.append("token", "r7", ev.TokenCreated(row_index=7, data_hash=h, at="in"))
    with pytest.raises(StoreError, match=f"committing events of run {run_id}: duplicate key .*payloads_pkey"):
        w.commit(wait=False)  # handed over too, then the answer to the one before
    w.close()  # reads the answer to the one handed over after the failure; does not hang or raise
    assert _lock_released(db, run_id)
    assert verify_run(PostgresRecorder(db), run_id).events == 1
    again = PostgresRecorder(db).open_writer(run_id, sending="process")
    assert again.next_seq == 1
    again.close()


def _witnessed(tmp_path: Path, run_id: str) -> list[int]:
    return [w.size for w in read_run_witness(tmp_path, run_id)]


def _two_commits_one_unanswered(db: Database, tmp_path: Path, run_id: str) -> PgRunWriter:
    """A writer with a notary that committed once, then handed over a second batch (3 events in
    all) without reading its answer: its witness line is written at the next commit."""
    w = PostgresRecorder(db).open_writer(
        run_id, sending="process", notary=Notary(Signer.generate("ops"), "s", tmp_path)
    )
    w.append("run", run_id, _created())
    w.commit()
    _tokens(w, 0, 2)
    w.commit(wait=False)
    return w


def test_a_witness_line_that_fails_with_a_batch_in_the_child_ends_the_child_before_it_commits(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The witness line of a commit is written once its answer is read, when the next batch is in
    the child already: should it fail, the run stops as if it crashed there. The child is ended,
    not left to commit that batch after the engine was told its run failed."""
    run_id = f"run-sp-wfail-{os.urandom(6).hex()}"
    w = _two_commits_one_unanswered(db, tmp_path, run_id)

    def full(*_args: object) -> None:
        raise WitnessError("cannot write the witness file: No space left on device")

    monkeypatch.setattr(Notary, "witness", full)  # (the child, forked before, does not witness)
    h, payload = commit_row({"id": 9})
    with db.connect() as blocker:  # holds the next batch's COPY until it is let go
        blocker.execute(
            "INSERT INTO payloads (run_id, hash, salt, data) VALUES (%s, %s, %s, %s)",
            (run_id, bytes.fromhex(h), payload.salt, payload.data),
        )
        w.put_payload(h, payload)
        w.append("token", "r9", ev.TokenCreated(row_index=9, data_hash=h, at="in"))
        previous = signal.signal(signal.SIGALRM, _hung)
        signal.alarm(30)
        try:
            with pytest.raises(WitnessError, match="No space left"):
                w.commit(wait=False)
            w.close()  # the child is ended, not waited for
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        blocker.rollback()
    assert _lock_released(db, run_id)
    assert verify_run(PostgresRecorder(db), run_id).events == 3  # the first two commits, not the third
    assert _witnessed(tmp_path, run_id) == [1]


def test_a_child_that_ended_after_its_last_answer_has_that_commit_witnessed(db: Database, tmp_path: Path) -> None:
    run_id = f"run-sp-died-{os.urandom(6).hex()}"
    w = _two_commits_one_unanswered(db, tmp_path, run_id)
    assert w._process is not None and w._process._from.poll(30)  # its answer has come
    pid = _child(w)
    os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # gone (left for the writer to reap)
    _tokens(w, 2, 2)
    w.commit(wait=False)  # the pipe is broken: the answer before is read first, and witnessed
    with pytest.raises(StoreError, match="the writer's process ended unexpectedly"):
        w.close()
    assert _witnessed(tmp_path, run_id) == [1, 3]
    assert verify_run(PostgresRecorder(db), run_id).events == 3


class _Hung(BaseException):  # not an OSError: nothing on the way may take it for a closed pipe
    pass


def _hung(_signum: int, _frame: object) -> None:
    raise _Hung("the writer hung")


def _one_event(db: Database, run_id: str) -> tuple[PgRunWriter, Chain, Batch]:
    """A writer sending inline, with the run's first event appended, its chain and that batch."""
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created())
    assert w._chain is not None and w._conn is not None
    times = [t // 1000 for t in w._times]  # (the writer holds nanoseconds until `commit` makes a batch)
    return w, w._chain, Batch(0, 1, w._kinds, w._entities, times, w._bodies, [], us_to_datetime(0))


def test_a_batch_chained_on_another_end_of_the_log_is_refused(db: Database) -> None:
    run_id = f"run-sp-other-{os.urandom(6).hex()}"
    w, chain, batch = _one_event(db, run_id)
    try:
        assert w._conn is not None
        other = Chain(run_id, chain.tree, b"\x01" * 32, None)  # as long, another head
        with pytest.raises(StoreError, match=f"run {run_id}: a batch was chained on another end of the log"):
            send(w._conn, chain, batch, other.sealed(batch))
        after, _ = send(w._conn, chain, batch, chain.sealed(batch))
        assert after.tree.size == 1
    finally:
        w.close()
    assert verify_run(PostgresRecorder(db), run_id).events == 1
    # (in microseconds, as `commit` makes a batch: a run recorded 50,000 years ahead broke every
    # later `elspeth runs` on the database, "timestamp too large (after year 10K)")
    (event,) = PostgresRecorder(db).read_events(run_id)
    assert event.recorded_at_us <= time.time_ns() // 1000


def test_a_transaction_on_a_session_that_does_not_hold_the_runs_lock_writes_nothing(db: Database) -> None:
    """Behind a pooler of transactions (PgBouncer's transaction mode) a connection's next
    transaction may run on another server session than the one that took the run's lock, which
    then keeps no second writer out. Such a transaction, here on a second connection, commits
    nothing and says why; the writer's fence (`still_writer`, `generation`) refuses likewise."""
    run_id = f"run-sp-pooled-{os.urandom(6).hex()}"
    w, chain, batch = _one_event(db, run_id)
    try:
        assert w._conn is not None
        refused = f"run {run_id}: this transaction's database session does not hold the run's lock.*pooler"
        with db.connect() as elsewhere:
            with pytest.raises(StoreError, match=refused):
                send(elsewhere, chain, batch, chain.sealed(batch))
            # (not left in a transaction: behind a pooler it would keep a server session)
            assert elsewhere.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert PostgresRecorder(db).last_seq(run_id) == -1
        w.still_writer()
        assert w.generation() > 0
        mine, w._conn = w._conn, db.connect()  # the writer's next transactions on another session
        try:
            with pytest.raises(StoreError, match=refused):
                w.still_writer()
            with pytest.raises(StoreError, match=refused):
                w.generation()
        finally:
            w._conn.close()
            w._conn = mine
        after, _ = send(w._conn, chain, batch, chain.sealed(batch))  # on the session holding it
        assert after.tree.size == 1
        # A second writer handed the first one's session: its lock would be granted again; so
        # would an erasure's or a rebuild's, for their transaction.
        held = f"run {run_id}: this database session holds the run's lock already"
        with pytest.raises(StoreError, match=held):
            hold_for_transaction(w._conn, run_id, "erasing")
        w._conn.rollback()
        with pytest.raises(StoreError, match=held):
            lock(w._conn, run_id, (SENDER_LOCK,))
    finally:
        w.close()
    assert verify_run(PostgresRecorder(db), run_id).events == 1


@pytest.mark.parametrize("sending", ["process", "inline"])
def test_a_batch_that_does_not_follow_the_log_is_refused_before_anything_is_sent(db: Database, sending: str) -> None:
    run_id = f"run-sp-gap-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending=sending)  # type: ignore[arg-type]
    w.append("run", run_id, _created())
    w.commit()
    w.next_seq = 0  # a bug that reuses a seq: the chain would fork
    w.append("run", run_id, _created())
    with pytest.raises(StoreError, match=f"run {run_id}: a batch from seq 0 .* ends at seq 0: .*a gap or a fork"):
        w.commit()
    w.close()
    assert verify_run(PostgresRecorder(db), run_id).events == 1


@pytest.mark.parametrize("point", ["commit:4", "committed:4"])
def test_a_fault_in_the_sender_process_ends_elspeth_run_and_the_run_resumes(
    db: Database, tmp_path: Path, point: str
) -> None:
    """The fault points inside a commit are reached in the child; the whole run must end as if
    the process had died there, and resume to what an uninterrupted run writes."""
    outputs = {}
    for name, fault in (("whole", None), ("crashed", point)):
        work = tmp_path / name
        (work / "out").mkdir(parents=True)
        write_csv(work / "in.csv", ["id", "v"], [[i, i % 10] for i in range(30)])
        (work / "settings.yaml").write_text(PIPELINE)
        env = {"ELSPETH_FAULT": fault} if fault else None
        proc = elspeth("run", "-s", "settings.yaml", "--commit-every", "2", cwd=work, db=db, env=env)
        if fault:
            assert proc.returncode == 86, proc.stderr
            listed = elspeth("runs", "--json", cwd=work, db=db)
            assert listed.returncode == 0, listed.stderr
            run_id = json.loads(listed.stdout)[0]["run_id"]
            assert _lock_released(db, run_id)
            resumed = elspeth("resume", run_id, cwd=work, db=db)
            assert resumed.returncode == 0, resumed.stderr
            assert verify_run(PostgresRecorder(db), run_id).events > 0
        else:
            assert proc.returncode == 0, proc.stderr
        outputs[name] = {p.name: p.read_bytes() for p in sorted((work / "out").iterdir())}
    assert outputs["crashed"] == outputs["whole"]


def test_a_stop_in_the_middle_of_handing_over_a_batch_ends_the_child_at_once(db: Database) -> None:
    """A stop at once (engine/stopping.py) can land while a batch is half written to the pipe:
    the child holds half a message, and asking it to close would wait forever. It is ended, and
    the batch is lost as in a crash."""
    run_id = f"run-sp-stop-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending="process")
    w.append("run", run_id, _created())
    w.commit()
    process = w._process
    assert process is not None
    to_child = process._to

    def half(data: bytes) -> None:  # the length and half the batch reach the child, then the stop
        os.write(to_child.fileno(), struct.pack("!i", len(data)) + bytes(data[: len(data) // 2]))
        raise StopNow

    whole = to_child.send_bytes
    to_child.send_bytes = half  # type: ignore[method-assign]
    _tokens(w, 0, 50)

    class Hung(BaseException):  # not an OSError: nothing on the way may take it for a closed pipe
        pass

    def hung(_signum: int, _frame: object) -> None:
        raise Hung("closing the writer hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(StopNow):
            w.commit()
        to_child.send_bytes = whole  # type: ignore[method-assign]
        w.close()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert process._pid is None  # ended and reaped
    assert _lock_released(db, run_id)
    assert verify_run(PostgresRecorder(db), run_id).events == 1


def test_a_witness_file_that_cannot_grow_stops_elspeth_run_with_the_resume_to_use(db: Database, tmp_path: Path) -> None:
    """A full disk under the witness file in the middle of a run: the commit is in the store, its
    checkpoint is not witnessed, and the run stops. The message names the run and how to go on
    (it said only what failed), and the resume, with room again, writes what a whole run writes.
    A file-size limit stands in for the full disk: the sinks' files stay far below it."""
    import resource
    import subprocess
    import sys

    outputs = {}
    for name, limit in (("whole", None), ("stopped", 2500)):
        work = tmp_path / name
        (work / "out").mkdir(parents=True)
        write_csv(work / "in.csv", ["id", "v"], [[i, i % 10] for i in range(30)])
        (work / "settings.yaml").write_text(PIPELINE)
        if limit is not None:
            elspeth("db", "upgrade", cwd=work, db=db)  # (the key files are made before the limit)
            env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
            env["ELSPETH_DATABASE_URL"] = db.conninfo

            def small_files(limit: int = limit) -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

            proc = subprocess.run(
                [sys.executable, "-m", "engine.cli.main", "run", "-s", "settings.yaml", "--commit-every", "2"],
                cwd=work, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                preexec_fn=small_files,
            )  # fmt: skip
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr, proc.stderr
            listed = elspeth("runs", "--json", cwd=work, db=db)
            assert listed.returncode == 0, listed.stderr
            run_id = json.loads(listed.stdout)[0]["run_id"]
            assert f"run {run_id} stopped: cannot write the witness file" in proc.stderr, proc.stderr
            assert f"`elspeth resume {run_id}`" in proc.stderr, proc.stderr
            resumed = elspeth("resume", run_id, cwd=work, db=db)
            assert resumed.returncode == 0, resumed.stderr
        else:
            proc = elspeth("run", "-s", "settings.yaml", "--commit-every", "2", cwd=work, db=db)
            assert proc.returncode == 0, proc.stderr
        outputs[name] = {p.name: p.read_bytes() for p in sorted((work / "out").iterdir())}
    assert outputs["stopped"] == outputs["whole"]


@pytest.mark.parametrize("sending", ["inline", "process"])
def test_an_entity_id_utf8_cannot_hold_is_refused_at_append_and_the_writer_goes_on(db: Database, sending: str) -> None:
    """The sender makes each event's COPY fields: an entity id with a lone surrogate would fail
    the whole commit there and end the writer (a review found it). It is refused as appended,
    and what was appended before and after it commits."""
    run_id = f"run-sp-surrogate-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id, sending=sending)  # type: ignore[arg-type]
    try:
        w.append("run", run_id, _created())
        with pytest.raises(UnicodeEncodeError):
            w.append("run", "x\ud800", ev.RunStarted())
        w.append("run", run_id, ev.RunStarted())
        w.commit()
    finally:
        w.close()
    assert verify_run(PostgresRecorder(db), run_id).events == 2


def test_pending_bytes_count_an_entity_ids_utf8_bytes(db: Database) -> None:
    """A batch is committed early once its bytes reach `COMMIT_BYTES`: an id of 1,000 astral
    characters is 4,000 bytes to send, not 1,000."""
    run_id = f"run-sp-pending-{os.urandom(6).hex()}"
    w = PostgresRecorder(db).open_writer(run_id)
    try:
        w.append("run", run_id, _created())
        weights = []
        for entity_id in ("\U0001d11e" * 1000, "a" * 1000):
            before = w.pending_bytes
            w.append("token", entity_id, ev.RunStarted())
            weights.append(w.pending_bytes - before)
        assert weights[0] - weights[1] == 3000
    finally:
        w.close()
