"""Verifying a stored run in two processes (`landscape.verify_store`): the same answer as one pass.

Each test verifies the same log both ways: split into halves (`split_at=1`: every log is long
enough) and in one pass (`split_at` beyond any log here).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from landscape.canonical import commit_row
from landscape.chain import GENESIS, event_hash
from landscape.chain_half import ChainHalf
from landscape.db import Database
from landscape.errors import ChainBroken, StoreError, VerifierFailed
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent
from landscape.verify import ReadDigest, unconfirmed, verify_events
from landscape.verify_store import verify_log, verify_run
from statecharts import events as ev
from tests.test_store import _created, _lock_all, _superuser_update, _write_run

SPLIT, ONE_PASS = 1, 10**9


def test_two_processes_find_what_one_pass_finds_in_a_good_log(db: Database) -> None:
    _write_run(db, "run-good", tokens=40, commit_every=7).close()
    recorder = PostgresRecorder(db)
    seen: list[int] = []
    split, left = verify_log(
        recorder, "run-good", roots_at=[1, 2, 17, 41], payloads=True, split_at=SPLIT,
        observe=lambda e, _event: seen.append(e.seq),
    )  # fmt: skip
    one, unchecked = verify_log(recorder, "run-good", roots_at=[1, 2, 17, 41], payloads=True, split_at=ONE_PASS)
    assert split.bad is None and one.bad is None
    assert (split.events, split.head, split.root, split.roots) == (one.events, one.head, one.root, one.roots)
    assert split.tree.to_bytes() == one.tree.to_bytes() and sorted(split.roots) == [1, 2, 17, 41]
    assert split.fold == one.fold and split.fold.outcomes == one.fold.outcomes
    assert split.referenced == one.referenced and len(one.referenced) == 40
    # the split found every payload intact; one pass leaves them all to `verify_run`
    assert left == {} and unchecked == one.referenced
    assert seen == list(range(41))  # the observer saw each event once, in order


def test_payloads_confirmed_as_the_log_is_read_hold_a_bounded_number_of_names(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_run(db, "run-bounded", tokens=40, commit_every=7).close()
    recorder = PostgresRecorder(db)
    asked: list[int] = []
    probe = PostgresRecorder.probe_payloads

    def counted(self: PostgresRecorder, run_id: str, hashes: Any, snapshot: str | None = None) -> Any:
        asked.append(len(hashes))
        return probe(self, run_id, hashes, snapshot)

    monkeypatch.setattr(PostgresRecorder, "probe_payloads", counted)
    split, left = verify_log(recorder, "run-bounded", roots_at=[41], payloads=True, split_at=SPLIT, confirm_at=6)
    one, _ = verify_log(recorder, "run-bounded", roots_at=[41], payloads=True, split_at=ONE_PASS)
    assert (split.bad, split.events, split.head, split.roots) == (None, one.events, one.head, one.roots)
    assert split.fold == one.fold
    # every 6 names, then those noted since (4): all 40 found intact, none kept
    assert asked == [6] * 6 + [4] and left == {}


def _referenced_twice(db: Database, run_id: str) -> None:
    """Row 1's payload named again by a later step, after the payload was deleted: the finding
    is the first event that names it, though the two names were looked up apart."""
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    names = []
    for i in range(4):
        h, payload = commit_row({"id": i})
        names.append(h)
        w.put_payload(h, payload)
        w.append("token", f"r{i}", ev.TokenCreated(row_index=i, data_hash=h, at="in"))
    w.append("token", "r3", ev.StepCompleted(node="n", input_hash=names[3], output_hash=names[1], duration_us=1,
                                             next="out"))  # fmt: skip
    w.commit()
    w.close()
    _superuser_update(db, "DELETE FROM payloads WHERE run_id = %s AND hash = %s", (run_id, bytes.fromhex(names[1])))


def _illegal(db: Database, run_id: str) -> None:
    """A chain that verifies around an event the statechart forbids: a step after the end."""
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, ev.RunCreated(settings_path="s", settings_hash="h", settings={}, source_fingerprint="f",
                                          nodes=[], elspeth_version="t", working_dir="."))  # fmt: skip
    w.append("run", run_id, ev.RunStarted())
    h, payload = commit_row({"id": 1})
    w.put_payload(h, payload)
    w.append("token", "t0", ev.TokenCreated(row_index=0, data_hash=h, at="in"))
    w.append("token", "t0", ev.TokenCompleted(sink="out"))
    w.append("token", "t0", ev.StepCompleted(node="n", input_hash=h, output_hash=h, duration_us=1, next="out"))
    w.commit()
    w.close()


TAMPERED = [
    # the chain half finds these
    "UPDATE events SET payload = convert_to(replace(convert_from(payload, 'UTF8'), 'in', 'ix'), 'UTF8') "
    "WHERE run_id = %(run)s AND seq = 3",
    "UPDATE events SET entity_id = 'r9' WHERE run_id = %(run)s AND seq = 2",
    "UPDATE events SET hash = set_byte(hash, 0, get_byte(hash, 0) # 1) WHERE run_id = %(run)s AND seq = 1",
    "UPDATE events SET prev_hash = hash WHERE run_id = %(run)s AND seq = 4",
    "DELETE FROM events WHERE run_id = %(run)s AND seq = 2",
    "DELETE FROM events WHERE run_id = %(run)s AND seq = 0",
    # the payloads: altered, gone
    "UPDATE payloads SET data = convert_to(replace(convert_from(data, 'UTF8'), 'row', 'raw'), 'UTF8') "
    "WHERE run_id = %(run)s AND data LIKE '%%row 3%%'",
    "DELETE FROM payloads WHERE run_id = %(run)s AND data LIKE '%%row 1%%'",
]  # fmt: skip


def _capitals(db: Database, run_id: str) -> None:
    """A payload referenced by its name in capitals: no payload has that name."""
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    h, payload = commit_row({"id": 1})
    w.put_payload(h, payload)
    w.append("token", "r0", ev.TokenCreated(row_index=0, data_hash=h.upper(), at="in"))
    w.commit()
    w.close()


def _wrong_machine(db: Database, run_id: str) -> None:
    """A token's event recorded as the run machine's, chained as written: only the check that an
    event type belongs to its machine finds it."""
    w = PostgresRecorder(db).open_writer(run_id)
    w.append("run", run_id, _created(run_id))
    h, payload = commit_row({"id": 1})
    w.put_payload(h, payload)
    w.append("run", "r0", ev.TokenCreated(row_index=0, data_hash=h, at="in"))
    w.commit()
    w.close()


CRAFTED = {
    "illegal": _illegal, "capitals": _capitals, "referenced-twice": _referenced_twice, "wrong-machine": _wrong_machine,
}  # fmt: skip


@pytest.mark.parametrize("sql", [*TAMPERED, *CRAFTED], ids=[*(f"tampered-{i}" for i in range(len(TAMPERED))), *CRAFTED])
def test_two_processes_name_the_first_bad_event_as_one_pass_does(db: Database, sql: str) -> None:
    run_id = f"run-bad-{os.urandom(6).hex()}"
    if sql in CRAFTED:  # the other half, or the payload check, finds these
        CRAFTED[sql](db, run_id)
    else:
        _write_run(db, run_id, tokens=8, commit_every=3).close()
        _superuser_update(db, sql, {"run": run_id})  # type: ignore[arg-type]
    found = []
    # (split, payloads confirmed as the log is read: after each event that names one)
    for split_at, confirm_at in ((SPLIT, ONE_PASS), (SPLIT, 1), (ONE_PASS, ONE_PASS)):
        with pytest.raises(ChainBroken) as err:
            verify_run(PostgresRecorder(db), run_id, split_at=split_at, confirm_at=confirm_at)
        found.append((err.value.seq, str(err.value)))
    assert found[0] == found[1] == found[2]


def test_readers_in_a_shared_snapshot_see_the_same_events_whatever_is_written_meanwhile(db: Database) -> None:
    """What lets two processes check halves of one log: neither sees a later commit."""
    w = _write_run(db, "run-snap", tokens=3)
    recorder = PostgresRecorder(db)
    with recorder.shared_snapshot() as snapshot:
        h, payload = commit_row({"later": True})
        w.put_payload(h, payload)
        w.append("token", "r9", ev.TokenCreated(row_index=9, data_hash=h, at="in"))
        w.commit()
        in_snapshot: list[StoredEvent] = list(recorder.read_events("run-snap", snapshot=snapshot))
        assert [e.seq for e in in_snapshot] == list(range(4))
        assert len(list(recorder.scan_payloads("run-snap", snapshot))) == 3
        assert len(list(recorder.read_events("run-snap"))) == 5  # outside it, the new event
    w.close()


def test_the_shared_snapshot_holds_no_lock_while_its_readers_work(db: Database) -> None:
    """A lock held by the idle exporter would queue every later reader behind a waiting ALTER or
    VACUUM FULL while the exporter waits for those readers: a wait the server cannot break."""
    _write_run(db, "run-lock", tokens=2).close()
    with PostgresRecorder(db).shared_snapshot(), db.connect() as other:
        _lock_all(other, "events, payloads")  # fails if held
        other.rollback()


def test_without_a_second_process_one_process_does_it_all(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_run(db, "run-alone", tokens=5).close()
    recorder = PostgresRecorder(db)
    seen: list[int] = []
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    alone, left = verify_log(
        recorder, "run-alone", observe=lambda e, _: seen.append(e.seq), payloads=True, split_at=SPLIT
    )
    monkeypatch.undo()
    one, _ = verify_log(recorder, "run-alone", split_at=ONE_PASS)
    assert (alone.bad, alone.events, alone.head, alone.root) == (None, one.events, one.head, one.root)
    assert left == one.referenced  # the one pass scanned no payload: `verify_run` looks them all up
    assert seen == list(range(6))  # once each, though two passes ran
    forged = msgspec.structs.replace(next(recorder.read_events("run-alone")), seq="0")  # type: ignore[arg-type]
    with ChainHalf("run-alone", ()) as chain:  # a page it cannot decode: it fails
        assert len(list(chain.tap([forged]))) == 1
        assert chain.result() is None


def test_a_chain_half_left_before_the_log_ended_is_stopped_not_waited_for(db: Database) -> None:
    """A verification that stops at a bad event stops feeding the child, which waits for the
    rest: the block's end kills it, and nothing waits for its answer. (The log is sound, so the
    child cannot end on its own: one that found a bad event in the pages it was sent would answer
    and exit, and whether it had done so yet would be a race.)"""
    _write_run(db, "run-stopped", tokens=3_500, commit_every=1_000).close()
    events = PostgresRecorder(db).read_events("run-stopped")
    with ChainHalf("run-stopped", ()) as chain:
        child = chain._process
        fed = chain.tap(events)
        for _ in itertools.islice(fed, 2_500):  # 2 pages sent, the 3rd begun
            pass
        fed.close()
        assert chain.result() is None  # (not fed the whole log: no waiting for an answer)
        assert child is not None and child.poll() is None  # (it waits for the rest)
    assert child.returncode == -signal.SIGKILL


def test_a_script_without_a_main_guard_can_verify_in_two_processes(db: Database, tmp_path: Path) -> None:
    """The second process is not multiprocessing's spawn, which would run such a script again."""
    _write_run(db, "run-script", tokens=3).close()
    script = tmp_path / "check.py"
    script.write_text(
        "from landscape.db import Database\n"
        "from landscape.postgres import PostgresRecorder\n"
        "from landscape.verify_store import verify_run\n"
        f"db = Database({db.conninfo!r}, 'test', embedded={db.embedded!r})\n"
        "print('verified', verify_run(PostgresRecorder(db), 'run-script', split_at=1).events)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert (proc.returncode, proc.stdout) == (0, "verified 4\n"), proc.stderr


def test_an_event_body_nested_too_deeply_is_a_finding_not_a_crash() -> None:
    """A body whose chain and payload hash are right (written by whoever holds the store, or
    rechained in an export) but nested deeper than a decoder goes: named, not a RecursionError."""
    payload = b'{"type":"RunStarted","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    payload_hash = hashlib.sha256(payload).digest()
    head = event_hash(GENESIS, "r", 0, "run", "r", "RunStarted", 1, 0, payload_hash)
    e = StoredEvent("r", 0, "run", "r", "RunStarted", 1, 0, payload, payload_hash, GENESIS, head)
    found = verify_events("r", [e]).bad
    assert found is not None and "nested too deeply" in found.why, found


def test_an_event_body_with_a_number_python_will_not_read_is_a_finding_not_a_crash() -> None:
    """A key it does not know, holding 5,000 digits: msgspec skips it, Python's json refuses to
    read an int of over 4,300 digits (a plain ValueError) where the body's keys are checked."""
    payload = b'{"type":"RunStarted","x":' + b"1" * 5000 + b"}"
    payload_hash = hashlib.sha256(payload).digest()
    head = event_hash(GENESIS, "r", 0, "run", "r", "RunStarted", 1, 0, payload_hash)
    e = StoredEvent("r", 0, "run", "r", "RunStarted", 1, 0, payload, payload_hash, GENESIS, head)
    found = verify_events("r", [e]).bad
    assert found is not None and "its keys cannot be read" in found.why, found


def test_payloads_are_confirmed_only_when_intact_and_split_as_written() -> None:
    rows = {i: commit_row({"id": i}) for i in range(5)}
    stored = [(bytes.fromhex(h), p.salt, p.data) for h, p in rows.values()]
    h1, p1 = rows[1]
    h2, p2 = rows[2]
    h3 = rows[3][0]
    stored[1] = (bytes.fromhex(h1), p1.salt, p1.data.replace(b"1", b"7"))  # altered
    stored[2] = (bytes.fromhex(h2), p2.salt[:-1], p2.salt[-1:] + p2.data)  # a salt byte moved into the data
    del stored[3]  # gone
    referenced = [rows[0][0], h1, h2, h3, rows[4][0].upper()]  # the last named in capitals
    assert unconfirmed(referenced, stored) == {h1, h2, h3, rows[4][0].upper()}
    assert unconfirmed([], stored) == set()


def _answer_this_process(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """A server that answers this process's reads of the log otherwise than the chain half's
    process (a fresh interpreter, which this patch does not reach): the event at seq 2 as
    `change` makes it."""
    read = PostgresRecorder.read_pages

    def forged(self: PostgresRecorder, run_id: str, *args: Any, **kwargs: Any) -> Any:
        for page in read(self, run_id, *args, **kwargs):
            yield [change(e) if e.seq == 2 else e for e in page]

    monkeypatch.setattr(PostgresRecorder, "read_pages", forged)


def _other_node(e: StoredEvent) -> StoredEvent:
    """Another node in the body, with a payload hash that matches it (the hash column kept)."""
    event = e.event
    assert isinstance(event, ev.TokenCreated)
    body = ev.encode_event(msgspec.structs.replace(event, at="forged"))
    return msgspec.structs.replace(e, payload=body, payload_hash=hashlib.sha256(body).digest())


FORGED = {
    "body-and-its-payload-hash": _other_node,
    "body-alone": lambda e: msgspec.structs.replace(e, payload=_other_node(e).payload),
    "entity": lambda e: msgspec.structs.replace(e, entity_id="r7"),
}


@pytest.mark.parametrize("change", FORGED.values(), ids=FORGED.keys())
def test_halves_that_read_different_events_are_not_joined(
    db: Database, monkeypatch: pytest.MonkeyPatch, change: Any
) -> None:
    """The fold must never stand on events the chain half did not verify: the chain half checks
    the very events this process read (it is handed them), and one pass names the forged one."""
    run_id = f"run-two-faced-{os.urandom(6).hex()}"
    _write_run(db, run_id, tokens=6).close()
    recorder = PostgresRecorder(db)
    assert verify_run(recorder, run_id, split_at=SPLIT).events == 7
    _answer_this_process(monkeypatch, change)
    with pytest.raises(ChainBroken) as err:
        verify_run(recorder, run_id, split_at=SPLIT)
    assert err.value.seq == 2


@pytest.mark.parametrize("child", ["answers", "cannot-start"])
def test_what_an_observer_saw_of_a_forged_first_read_never_counts(
    db: Database, monkeypatch: pytest.MonkeyPatch, child: str
) -> None:
    """The observer (purge's search for a row's payloads, explain's rows) sees this process's
    first read. A server that forges only that read, and shows the chain half and the one pass
    after it the genuine log, would have it keep forged events from a log that verifies: the
    reads differ, and that is the error."""
    run_id = f"run-first-read-{child}"
    _write_run(db, run_id, tokens=6).close()
    read, calls = PostgresRecorder.read_pages, [0]

    def first_forged(self: PostgresRecorder, run: str, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        forged = calls[0] == 1
        for page in read(self, run, *args, **kwargs):
            yield [_other_node(e) if forged and e.seq == 2 else e for e in page]

    monkeypatch.setattr(PostgresRecorder, "read_pages", first_forged)
    if child == "cannot-start":
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    seen: list[str] = []
    with pytest.raises(StoreError, match="different events"):
        verify_run(PostgresRecorder(db), run_id, split_at=SPLIT, observe=lambda _e, event: seen.append(repr(event)))
    assert any("forged" in s for s in seen)  # (what it saw was the forgery)


@pytest.mark.parametrize("observed", [False, True])
def test_a_chain_half_killed_before_it_answered_leaves_what_an_observer_saw_unconcluded(
    db: Database, monkeypatch: pytest.MonkeyPatch, observed: bool
) -> None:
    """No digest is taken of a read that a child checks (it cost the folding process about
    0.45 CPU-s per 1,000,000 events, for the rare read that is compared): a child killed before
    it answered leaves the first read held to nothing. One pass over the second read stands on
    its own; what an observer saw of the first does not, and nothing is concluded."""
    run_id = f"run-killed-{observed}"
    _write_run(db, run_id, tokens=6).close()
    tap = ChainHalf.tap

    def killed_first(self: ChainHalf, events: Any, **kwargs: Any) -> Any:
        # (before it is handed a page: however fast it would have been, it cannot answer)
        assert self._process is not None
        self._process.kill()
        self._process.wait()
        return tap(self, events, **kwargs)

    monkeypatch.setattr(ChainHalf, "tap", killed_first)
    seen: list[int] = []
    if not observed:
        assert verify_run(PostgresRecorder(db), run_id, split_at=SPLIT).events == 7
        return
    with pytest.raises(VerifierFailed, match="ended without an answer"):
        verify_run(PostgresRecorder(db), run_id, split_at=SPLIT, observe=lambda e, _event: seen.append(e.seq))
    assert seen == list(range(7))  # (it saw the first read, which nothing checked the chain of)


_fields = st.tuples(
    st.text(max_size=8), st.integers(0, 1 << 40), st.text(max_size=5), st.text(max_size=5), st.text(max_size=12),
    st.integers(1, 9), st.integers(-(1 << 62), 1 << 62), st.binary(max_size=40), st.binary(max_size=32),
    st.binary(max_size=32), st.binary(max_size=32),
)  # fmt: skip


@given(events=st.lists(_fields.map(lambda f: StoredEvent(*f)), max_size=40), cuts=st.lists(st.integers(0, 40)))
def test_a_reads_digest_is_of_its_events_in_order_wherever_its_pages_end(
    events: list[StoredEvent], cuts: list[int]
) -> None:
    """Two processes read the same log in pages that need not end at the same events; their
    digests are equal exactly when the events are (the page's array header is not hashed)."""
    ends = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    paged, one_each = ReadDigest(), ReadDigest()
    for a, b in itertools.pairwise(ends):
        paged.add_page(events[a:b])
    for e in events:
        one_each.add_page([e])
    assert paged.digest() == one_each.digest()


@given(events=st.lists(_fields.map(lambda f: StoredEvent(*f)), min_size=1, max_size=20), data=st.data())
def test_a_reads_digest_tells_any_changed_field_or_order(events: list[StoredEvent], data: st.DataObject) -> None:
    """Any field of any event changed, an event dropped, or two swapped: another digest."""
    i = data.draw(st.integers(0, len(events) - 1))
    name = data.draw(st.sampled_from(StoredEvent.__struct_fields__))
    value = getattr(events[i], name)
    other = value + (b"x" if isinstance(value, bytes) else "x" if isinstance(value, str) else 1)
    changed = [*events[:i], msgspec.structs.replace(events[i], **{name: other}), *events[i + 1 :]]
    variants = [changed, events[:i] + events[i + 1 :]]
    if len(events) > 1 and events[0] != events[-1]:
        variants.append([events[-1], *events[1:-1], events[0]])

    def digest(evs: list[StoredEvent]) -> bytes:
        read = ReadDigest()
        read.add_page(evs)
        return read.digest()

    assert all(digest(v) != digest(events) for v in variants)


_STOPS_EARLY = """
import hashlib
import msgspec
from landscape.chain import GENESIS, event_hash
from landscape.chain_half import ChainHalf
from landscape.records import StoredEvent

events, prev = [], GENESIS
for seq in range(40_000):
    body = b'{"type":"RunStarted"}'
    h = hashlib.sha256(body).digest()
    prev = event_hash(prev, "r", seq, "run", "r", "RunStarted", 1, seq, h)
    events.append(StoredEvent("r", seq, "run", "r", "RunStarted", 1, seq, body, h,
                              events[-1].hash if events else GENESIS, prev))
events[15_000] = msgspec.structs.replace(events[15_000], entity_id="forged")
with ChainHalf("r", range(1, 15_001)) as chain:
    assert sum(1 for _ in chain.tap(events)) == 40_000
    result = chain.result()
assert result is not None and result.bad and result.events == 15_000 and len(result.roots) == 15_000, result
print("answered")
"""


def test_a_chain_half_that_stops_early_with_a_long_answer_does_not_wait_on_its_parent() -> None:
    """The child stops at a bad event with a root for each of 15,000 checkpoints to send back,
    more than a pipe holds, while the parent still has pages to write: it reads them first, or
    each would wait on the other for ever (run apart, so that a wait fails the test by its timeout)."""
    proc = subprocess.run(
        [sys.executable, "-c", _STOPS_EARLY], capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "answered\n"), proc.stderr


def test_no_descriptor_left_for_a_pipe_leaves_the_half_to_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors at the second pipe (a hostile review): no child, no descriptor
    kept, and `result` says None (the verification then runs one pass), not an OSError."""
    real, calls = os.pipe, [0]

    def pipe() -> tuple[int, int]:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.EMFILE, "Too many open files")
        return real()

    monkeypatch.setattr(os, "pipe", pipe)
    gc.collect()  # (an earlier test's file, collected inside the block, would close a descriptor there)
    before = sorted(os.listdir("/proc/self/fd"))
    with ChainHalf("r", ()) as chain:
        assert list(chain.tap([])) == []
        assert chain.result() is None
    assert calls == [2] and sorted(os.listdir("/proc/self/fd")) == before


def test_the_chain_hash_is_the_documented_formula() -> None:
    """docs/verification.md: hash = SHA-256(prev_hash ‖ len(header) as 4 bytes big-endian ‖ header
    ‖ payload_hash), the header the unit-separated columns. Spelled out here apart from the code,
    and pinned: the writer and the verifiers share `event_hash`, so only this tells a change of
    the format (an auditor's own verifier follows the documentation)."""
    prev, payload_hash = bytes(range(32)), hashlib.sha256(b'{"type":"RunStarted"}').digest()
    header = b"run-x\x1f7\x1frun\x1frun-x\x1fRunStarted\x1f1\x1f1700000000000000"
    expected = hashlib.sha256(prev + len(header).to_bytes(4, "big") + header + payload_hash).digest()
    assert expected.hex() == "6aa573daa9804ed199d9beeb5779ccb4bf802c8a97bfa87cec089bf39f977261"
    assert (
        event_hash(prev, "run-x", 7, "run", "run-x", "RunStarted", 1, 1_700_000_000_000_000, payload_hash) == expected
    )
