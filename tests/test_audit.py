"""Issue 12 items 4-5: `elspeth export`, `elspeth verify` (offline), `elspeth prove` and
`elspeth checkpoint`, as an auditor runs them against real runs of the examples."""

from __future__ import annotations

import base64
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import sysconfig
import tracemalloc
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import landscape.audit as landscape_audit
import landscape.export as export_module
import landscape.verify_store as verify_store
from engine.cli import audit
from engine.cli.audit import new_file
from engine.cli.errors import ElspethCliError
from landscape.audit import AuditFailure, verify_export, verify_proof
from landscape.chain import event_hash
from landscape.chain_half import ChainHalf
from landscape.checkpoint import Checkpoint, run_origin
from landscape.db import Database
from landscape.errors import StoreError
from landscape.export import (
    CheckpointRecord,
    End,
    ErasedRecord,
    EventRecord,
    ExportError,
    PayloadRecord,
    ProofBundle,
    ProvenEvent,
    Record,
    SealRecord,
    build_proof,
    decode_bundle,
    encode,
    encode_bundle,
    read_records,
    signed_checkpoints,
    write_export,
)
from landscape.keys import load_signer, load_verifier
from landscape.merkle import leaf_hash, root
from landscape.notary import Witnessed
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent, record_digest
from landscape.verify import ChainCheck
from tests.engine_harness import write_csv
from tests.test_cli import PIPELINE, ROOT, elspeth, one_line_error
from tests.test_store import _superuser_update
from tests.test_tamper import AGG, FORK, _run


@dataclass(frozen=True)
class Exported:
    work: Path
    run_id: str
    file: Path
    pub: Path

    @property
    def lines(self) -> list[bytes]:
        return self.file.read_bytes().splitlines(keepends=True)


def _export(work: Path, db: Database, run_id: str, *extra: str, name: str = "run.export") -> Path:
    out = work / name
    proc = elspeth("export", run_id, "-o", str(out), *extra, cwd=work, db=db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _verify(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return elspeth("verify", *args, cwd=work)


@pytest.fixture(scope="module")
def fork(db: Database, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A fork/coalesce run with row 1 erased, exported: every kind of record is in the file."""
    work, run_id = _run(db, tmp_path_factory.mktemp("fork"), FORK)
    purged = elspeth(
        "purge", run_id, "--row", "2", "--reason", "x", cwd=work, db=db
    )  # row_index 1 (purge counts from 1)
    assert purged.returncode == 0, purged.stderr
    return Exported(work, run_id, _export(work, db, run_id), work / ".elspeth" / "keys" / "default.pub")


@pytest.mark.parametrize("example", [FORK, AGG])
def test_export_then_verify_passes(db: Database, tmp_path: Path, example: str) -> None:
    work, run_id = _run(db, tmp_path, example)
    out = _export(work, db, run_id)
    proc = _verify(work, str(out), "--public-key", str(work / ".elspeth/keys/default.pub"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"run {run_id}" in proc.stdout and "match their commitments; 0 erased" in proc.stdout


def test_exports_and_bundles_are_readable_by_their_maker_only(db: Database, fork: Exported, tmp_path: Path) -> None:
    # They hold every row's data and salts, which the store shows only its owner.
    bundle = tmp_path / "row1.json"
    proc = elspeth("prove", fork.run_id, "--row", "1", "-o", str(bundle), cwd=fork.work, db=db)
    assert proc.returncode == 0, proc.stderr
    for path in (fork.file, bundle):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_erased_row_exports_and_verifies_with_its_erasure_records(db: Database, fork: Exported) -> None:
    kinds = [line.split(b'"')[3] for line in fork.lines]
    assert kinds.count(b"erased") >= 2 and kinds.count(b"payload") > 0
    proc = _verify(fork.work, str(fork.file), "--public-key", str(fork.pub))
    assert proc.returncode == 0, proc.stderr
    assert f"{kinds.count(b'erased')} erased (with a record)" in proc.stdout
    bare = _export(fork.work, db, fork.run_id, "--no-payloads", name="bare.export")
    proc = _verify(fork.work, str(bare), "--public-key", str(fork.pub))
    assert proc.returncode == 0 and "NOT CHECKED" in proc.stdout, proc.stdout + proc.stderr
    assert "the file holds no row payloads, by its header's word, which nothing signs" in proc.stderr, proc.stderr
    assert b'"type":"payload"' not in bare.read_bytes()
    # The header's flag is not signed: an auditor who needs the rows proved refuses such a file.
    err = one_line_error(_verify(fork.work, str(bare), "--public-key", str(fork.pub), "--require-payloads"), 1)
    assert "holds no row payloads" in err and "--require-payloads" in err, err
    assert "its header says it was exported without them" in err and "ask for a full export" in err, err
    proc = _verify(fork.work, str(fork.file), "--public-key", str(fork.pub), "--require-payloads")
    assert proc.returncode == 0 and "no row payloads" not in proc.stderr, proc.stdout + proc.stderr
    # A bundle is made by prove, not exported: said so (a documentation review).
    bundle = fork.work / "bare.json"
    made = elspeth("prove", fork.run_id, "--row", "1", "--no-payloads", "-o", str(bundle), cwd=fork.work, db=db)
    assert made.returncode == 0, made.stderr
    proc = _verify(fork.work, str(bundle), "--public-key", str(fork.pub))
    assert "row payloads: NOT CHECKED (made with `prove --no-payloads`: commitments only)" in proc.stdout, proc.stdout
    err = one_line_error(_verify(fork.work, str(bundle), "--public-key", str(fork.pub), "--require-payloads"), 1)
    assert "its header says it was made with `prove --no-payloads`" in err, err
    assert "exported" not in err and "ask for a bundle made without --no-payloads" in err, err


# -- tampering with the file ----------------------------------------------------------------------


def _sample(lines: list[bytes], per_kind: int = 3) -> list[int]:
    """Indexes of up to `per_kind` lines of each record kind (first, middle, last), in order."""
    by_kind: dict[bytes, list[int]] = {}
    for i, line in enumerate(lines):
        by_kind.setdefault(line.split(b'"')[3], []).append(i)
    picked = set()
    for found in by_kind.values():
        picked.update({found[0], found[len(found) // 2], found[-1]} if per_kind >= 3 else {found[0]})
    return sorted(picked)


def _refused(fork: Exported, tmp_path: Path, lines: list[bytes]) -> str:
    """The one failure verify reports for the file made of `lines` (never another exception)."""
    path = tmp_path / "tampered.export"
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditFailure) as caught:
        verify_export(path, load_verifier(fork.pub))
    return str(caught.value)


def test_flipping_any_single_byte_is_named_by_its_line(fork: Exported, tmp_path: Path) -> None:
    lines = fork.lines
    tried = 0
    for i in _sample(lines):
        line = lines[i]
        for k in sorted({*range(0, len(line), max(1, len(line) // 9)), len(line) - 2, len(line) - 1}):
            for mask in (0x01, 0x20):
                changed = bytearray(line)
                changed[k] ^= mask
                err = _refused(fork, tmp_path, [*lines[:i], bytes(changed), *lines[i + 1 :]])
                assert f"line {i + 1}:" in err, f"byte {k} of line {i + 1} ^ {mask:#x}: {err}"
                tried += 1
    assert tried > 200


def test_no_line_longer_than_a_reader_reads_is_read_or_written(
    db: Database, fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holds one line at a time, and reads none longer than `MAX_LINE` whole (a sparse
    file of one endless line cost its size in memory); the writer refuses a run with a longer
    record rather than write a file no verifier reads. At the bound, both sides agree."""
    longest = max(len(line) - 1 for line in fork.lines)
    monkeypatch.setattr(export_module, "MAX_LINE", longest)
    assert verify_export(fork.file, load_verifier(fork.pub)).events > 0  # the longest line is read
    lines, end = fork.lines, len(fork.lines) - 1
    padded = lines[end][:-1] + b" " * (longest + 1 - len(lines[end][:-1]))
    for last in (padded + b"\n", padded, padded + b" " * 1000):  # one byte more, with or without its newline
        err = _refused(fork, tmp_path, [*lines[:end], last])
        assert f"line {end + 1}: longer than any record of an export ({longest} bytes)" in err, err
    recorder, key = PostgresRecorder(db), load_verifier(fork.pub)
    checkpoints = signed_checkpoints(recorder.checkpoints(fork.run_id), [], key)
    origin = run_origin(recorder.store_id(), fork.run_id)
    write_export(recorder, fork.run_id, io.BytesIO(), origin=origin, key=key, checkpoints=checkpoints)
    monkeypatch.setattr(export_module, "MAX_LINE", longest - 1)
    with pytest.raises(ExportError, match=f"takes {longest} bytes in an export, more than a line may"):
        write_export(recorder, fork.run_id, io.BytesIO(), origin=origin, key=key, checkpoints=checkpoints)


def test_a_record_spelled_another_way_is_refused(fork: Exported, tmp_path: Path) -> None:
    """Same values, other bytes (white space, an escaped letter): one file per content, so a
    digest of an export means one thing."""
    lines = fork.lines
    end = len(lines) - 1
    for respelled in (lines[end].replace(b'"events":', b'"events": '), lines[end].replace(b'"end"', b'"\\u0065nd"')):
        assert respelled != lines[end]
        err = _refused(fork, tmp_path, [*lines[:end], respelled])
        assert f"line {end + 1}: the end record is not written as ELSPETH writes it" in err, err


EDITS: dict[str, Callable[[list[bytes], int], list[bytes]]] = {
    "delete": lambda ls, i: [*ls[:i], *ls[i + 1 :]],
    "duplicate": lambda ls, i: [*ls[: i + 1], ls[i], *ls[i + 1 :]],
    "reorder": lambda ls, i: [*ls[:i], ls[i + 1], ls[i], *ls[i + 2 :]] if i + 1 < len(ls) else [ls[i], *ls[:i]],
    "insert": lambda ls, i: [*ls[:i], ls[(i * 7 + 3) % len(ls)], *ls[i:]],
}


@pytest.mark.parametrize("data", [b"\n", b"   \n"], ids=["empty", "spaces"])
def test_a_blank_first_line_is_said_to_be_one(data: bytes) -> None:
    with pytest.raises(export_module.BadLine, match="line 1: a blank line"):
        list(export_module.read_records(io.BytesIO(data)))


def test_the_first_pass_names_a_fault_of_the_records_order_as_it_always_was(fork: Exported, tmp_path: Path) -> None:
    """The first pass (signatures before bodies) checks the events' chain, but a fault of the
    records' order is said as the pass after says it, where it stands (a hostile review: a
    checkpoint moved among the events was reported as events no checkpoint covers)."""
    lines = fork.lines
    kinds = [line.split(b'"')[3] for line in lines]
    last_checkpoint = max(i for i, k in enumerate(kinds) if k == b"checkpoint")
    seq5 = next(i for i, line in enumerate(lines) if b'"type":"event"' in line and b'"seq":5,' in line)
    checkpoints = kinds.count(b"checkpoint")
    cases = {
        "a checkpoint record among the events": EDITS["reorder"](lines, last_checkpoint),
        f"the end record counts {checkpoints} checkpoints, the file holds {checkpoints - 1}": EDITS["delete"](
            lines, last_checkpoint
        ),
        "a line after the end record": [*lines, lines[seq5]],
        "event seq 5: seq 5 is missing": EDITS["delete"](lines, seq5),
    }
    for says, changed in cases.items():
        for split_at in (None, 1):
            path = tmp_path / "changed.export"
            path.write_bytes(b"".join(changed))
            with pytest.raises(AuditFailure) as caught:
                verify_export(path, load_verifier(fork.pub), **({"split_at": split_at} if split_at else {}))
            assert says in str(caught.value), (says, str(caught.value))


@pytest.mark.parametrize("edit", EDITS)
def test_deleting_duplicating_reordering_or_inserting_a_record_is_named(
    fork: Exported, tmp_path: Path, edit: str
) -> None:
    lines = fork.lines
    for i in _sample(lines):
        changed = EDITS[edit](lines, i)
        if changed == lines:
            continue  # a swap of two equal lines changes nothing
        err = _refused(fork, tmp_path, changed)
        assert "line " in err or "cut short" in err, f"{edit} line {i + 1}: {err}"


def test_two_processes_say_what_one_pass_says(fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long export is checked by two processes (`split_at`). A good one gives the report one
    pass gives, from the halves alone; whatever is wrong with a bad one, the auditor reads the
    words one pass writes (a changed byte, a record deleted, moved or doubled, a cut-off end)."""
    key = load_verifier(fork.pub)
    one_pass = verify_export(fork.file, key)
    halves = [0]
    real = landscape_audit.ChainHalf

    def counted(*args: Any) -> Any:
        halves[0] += 1
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(landscape_audit, "ChainHalf", counted)
        m.setattr(landscape_audit, "verify_events", None)  # (no one pass: it would fail)
        assert verify_export(fork.file, key, split_at=1) == one_pass
    assert halves == [2]  # (the first pass, of the signatures, and the second)
    lines, path = fork.lines, tmp_path / "bad.export"
    cases = []
    for i in _sample(lines):
        flipped = bytearray(lines[i])
        flipped[len(flipped) // 2] ^= 0x01
        cases += [[*lines[:i], bytes(flipped), *lines[i + 1 :]], EDITS["delete"](lines, i), EDITS["reorder"](lines, i)]
    cases.append(lines[:-1])
    # (a hostile review) a time past the store's bigint, which a page of events cannot encode, and
    # a signed checkpoint of 2**62 events with the end cut off, which made the one pass split again
    event = next(i for i, line in enumerate(lines) if b'"type":"event"' in line and b'"seq":5,' in line)
    record = msgspec.json.decode(lines[event])
    record["run_id"] = "run-of-someone-else"  # (a review: alone, the hash, of the run's id, still matches)
    cases.append([*lines[:event], msgspec.json.encode(record) + b"\n", *lines[event + 1 :]])
    record = msgspec.json.decode(lines[event])
    record["recorded_at_us"] = 1 << 64
    cases.append([*lines[:event], msgspec.json.encode(record) + b"\n", *lines[event + 1 :]])
    signer = load_signer(fork.work / ".elspeth" / "keys" / "default.key")
    records = _records(fork.file)
    origin = records[0].origin  # type: ignore[union-attr]
    last_checkpoint = max(i for i, r in enumerate(records) if isinstance(r, CheckpointRecord))
    huge = CheckpointRecord(size=1 << 62, note=Checkpoint(origin, 1 << 62, b"\x01" * 32).sign(signer))
    cases.append([*lines[: last_checkpoint + 1], encode(huge) + b"\n", *lines[last_checkpoint + 1 : -1]])
    said = []
    for case in cases:
        path.write_bytes(b"".join(case))
        found = []
        for split_at in (10**9, 1):
            with pytest.raises(AuditFailure) as caught:
                verify_export(path, key, split_at=split_at)
            found.append(str(caught.value))
        assert found[0] == found[1], found
        said.append(found[0])
    assert "not a record of an ELSPETH export" in said[-2] and "cut short" in said[-1], said[-2:]


def test_the_one_pass_after_the_halves_reads_the_file_they_read(
    fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one pass that follows the halves reads the same open file again, not whatever the path
    names by then (a hostile review: a file swapped meanwhile was reported on instead)."""
    key, path, bad = load_verifier(fork.pub), tmp_path / "f.export", tmp_path / "bad.export"
    path.write_bytes(fork.file.read_bytes())
    bad.write_bytes(b"".join(fork.lines[:-1]))

    def swapped(*_args: object) -> None:
        os.replace(bad, path)
        raise OSError("no second process")

    monkeypatch.setattr(landscape_audit, "ChainHalf", swapped)
    assert verify_export(path, key, split_at=1) == verify_export(fork.file, key)


def test_the_one_pass_after_the_halves_holds_nothing_of_them(
    fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one pass runs once the first pass's check (its fold, its sets) is let go: run inside
    the handler of the halves' failure, its traceback held them, about twice one pass's memory
    on a large export (a hostile review)."""
    key, bad = load_verifier(fork.pub), tmp_path / "bad.export"
    # A payload record left out (what the first pass, of the chain and the signatures, does not
    # read): the halves stop, one pass says so.
    dropped = next(i for i, line in enumerate(fork.lines) if line.startswith(b'{"type":"payload"'))
    bad.write_bytes(b"".join(fork.lines[:dropped] + fork.lines[dropped + 1 :]))
    first: list[weakref.ref[Any]] = []
    alive: list[bool] = []
    real = landscape_audit._ExportCheck.run

    def run(self: Any, records: Any) -> Any:
        if first:
            alive.append(first[0]() is not None)
        first.append(weakref.ref(self))
        return real(self, records)

    monkeypatch.setattr(landscape_audit._ExportCheck, "run", run)
    with pytest.raises(AuditFailure, match="has no payload or erasure record"):
        verify_export(bad, key, split_at=1)
    assert alive == [False]


def test_verify_of_a_fifo_is_refused_not_waited_on(fork: Exported, tmp_path: Path) -> None:
    """A FIFO where the export was (swapped in after the command looked) is refused: opened
    blocking, it waited for a writer for ever (run apart, so that a wait fails by its timeout)."""
    fifo = tmp_path / "f.export"
    os.mkfifo(fifo)
    for check in ("verify_export", "verify_proof"):  # (a bundle is read whole, by its own reader)
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            f"from pathlib import Path\nfrom landscape.audit import AuditFailure, {check}\n"
            "from landscape.keys import load_verifier\n"
            f"try:\n    {check}(Path({str(fifo)!r}), load_verifier(Path({str(fork.pub)!r})))\n"
            "except AuditFailure as e:\n    print(e)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
        assert "not a regular file" in proc.stdout, check + ": " + proc.stdout + proc.stderr


def test_a_page_of_large_events_is_cut_by_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """An export's events are bounded only by their lines (256 MiB each): weighed, a page holds
    a few MB of them, not a thousand of the largest (a hostile review: 533 MB against one pass's
    33 MB)."""
    sent: list[int] = []
    real = ChainHalf._send

    def counted(self: ChainHalf, page: list[StoredEvent]) -> None:
        sent.append(len(page))
        real(self, page)

    monkeypatch.setattr(ChainHalf, "_send", counted)
    big = StoredEvent("r", 0, "run", "r", "RunStarted", 1, 0, b"x" * (3 << 20), b"", b"", b"")
    for weigh, pages in ((True, [2, 2, 1]), (False, [5])):
        sent.clear()
        with ChainHalf("r", ()) as chain:
            assert sum(1 for _ in chain.tap([big] * 5, weigh=weigh)) == 5
        assert sent == pages, (weigh, sent)


def test_the_command_says_what_and_where_in_one_line(fork: Exported, tmp_path: Path) -> None:
    lines = fork.lines
    event = next(i for i, line in enumerate(lines) if b'"type":"event"' in line and b'"seq":5,' in line)
    payload = next(i for i, line in enumerate(lines) if b'"type":"payload"' in line)
    flipped = bytearray(lines[event])
    flipped[flipped.index(b'"recorded_at_us":') + 20] ^= 0x01
    cases = {
        "flip": ([*lines[:event], bytes(flipped), *lines[event + 1 :]], f"line {event + 1}: event seq 5"),
        "delete": ([*lines[:event], *lines[event + 1 :]], "seq 5 is missing"),
        "delete a payload": ([*lines[:payload], *lines[payload + 1 :]], f"line {payload + 1}: row payload "),
        "truncate": ([*lines[: len(lines) // 2], lines[len(lines) // 2][:10]], "cut short"),
        "a blank line at the end": ([*lines, b"\n"], f"line {len(lines) + 1}: a blank line: an export has none"),
        "a blank line": ([*lines[:event], b" \r\n", *lines[event:]], f"line {event + 1}: a blank line"),
    }
    for name, (changed, says) in cases.items():
        path = tmp_path / f"{name}.export"
        path.write_bytes(b"".join(changed))
        err = one_line_error(_verify(fork.work, str(path), "--public-key", str(fork.pub)), 1)
        assert err.count("\n") == 1 and says in err, f"{name}: {err}"


def test_a_line_break_the_file_holds_is_no_line_of_the_verifier(fork: Exported, tmp_path: Path) -> None:
    """The refusal quotes the header's run id: a line break in it printed a line of the file's
    author's own (here "OK: all verified") under the error."""
    lines = fork.lines
    header = json.loads(lines[0])
    header["run_id"] += "\nOK: all verified"
    path = tmp_path / "forged.export"
    path.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(lines[1:]))
    err = one_line_error(_verify(fork.work, str(path), "--public-key", str(fork.pub)), 1)
    assert err.count("\n") == 1 and "\\nOK: all verified" in err, err


def test_a_wrong_public_key_is_refused(fork: Exported) -> None:
    other = fork.work / "keys"
    other.mkdir(exist_ok=True)
    assert elspeth("keys", "generate", "other", "--dir", str(other), cwd=fork.work).returncode == 0
    err = one_line_error(_verify(fork.work, str(fork.file), "--public-key", str(other / "other.pub")), 1)
    assert "line 1:" in err and "not by the key given (other+" in err, err


# -- a rewritten history ----------------------------------------------------------------------------


def _rewrite(
    fork: Exported, path: Path, at_seq: int, *, resign: bool = True, body: Callable[[bytes], bytes] | None = None
) -> None:
    """What an operator holding the signing key could do: change event `at_seq` (its time, or
    its body with `body`), recompute every later hash and every checkpoint's root, and sign them
    all again (`resign`; without it, what anyone with write access to the database could do: the
    chain recomputed, the checkpoints left as they were signed)."""
    records = _records(fork.file)
    signer = load_signer(fork.work / ".elspeth" / "keys" / "default.key")
    events = [r for r in records if isinstance(r, EventRecord)]
    prev, leaves, rewritten = bytes.fromhex(events[at_seq].prev_hash), [], {}
    for e in events:
        if e.seq >= at_seq:
            changed = e.seq == at_seq
            at = e.recorded_at_us + (1 if changed and body is None else 0)
            payload = body(e.payload) if changed and body is not None else e.payload
            payload_hash = hashlib.sha256(payload).digest()
            h = event_hash(prev, e.run_id, e.seq, e.machine, e.entity_id, e.event_type, e.schema_version, at,
                           payload_hash)  # fmt: skip
            rewritten[e.seq] = EventRecord(**{**_fields(e), "recorded_at_us": at, "payload": payload,
                                              "payload_hash": payload_hash.hex(), "prev_hash": prev.hex(),
                                              "hash": h.hex()})  # fmt: skip
            prev = h
        leaves.append(leaf_hash(bytes.fromhex(rewritten[e.seq].hash if e.seq in rewritten else e.hash)))
    origin = records[0].origin  # type: ignore[union-attr]
    out = []
    for r in records:
        if isinstance(r, EventRecord) and r.seq in rewritten:
            r = rewritten[r.seq]
        elif isinstance(r, CheckpointRecord) and resign:
            r = CheckpointRecord(size=r.size, note=Checkpoint(origin, r.size, root(leaves[: r.size])).sign(signer))
        out.append(encode(r) + b"\n")
    path.write_bytes(b"".join(out))


def _records(path: Path) -> list[Record]:
    with path.open("rb") as f:
        return [r for _n, r in read_records(f)]


def _fields(r: EventRecord) -> dict[str, object]:
    return {f: getattr(r, f) for f in r.__struct_fields__}


def test_a_recomputed_chain_without_the_key_fails_the_signed_roots(fork: Exported, tmp_path: Path) -> None:
    forged = tmp_path / "forged.export"
    _rewrite(fork, forged, at_seq=10, resign=False)
    err = one_line_error(_verify(fork.work, str(forged), "--public-key", str(fork.pub)), 1)
    assert "line 3:" in err and "do not hash to the root of this checkpoint of 682" in err, err


def test_no_event_body_is_decoded_before_the_signatures_cover_it(
    fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain is anyone's to compute: a forged event whose body decodes to forty times its size
    (a hostile review: a 64 MB line, 2.4 GB) is refused by the signed roots before any body is
    decoded, not after the whole file was folded."""
    forged = tmp_path / "forged.export"
    nested = {"x": [{}] * 200_000}
    _rewrite(fork, forged, at_seq=0, resign=False,
             body=lambda b: json.dumps({**json.loads(b), "settings": nested}, separators=(",", ":")).encode())  # fmt: skip
    decoded: list[int] = []
    monkeypatch.setattr(landscape_audit, "check_events", lambda *a, **k: decoded.append(1))
    monkeypatch.setattr(landscape_audit, "verify_events", lambda *a, **k: decoded.append(1))
    with pytest.raises(AuditFailure, match="do not hash to the root of this checkpoint"):
        verify_export(forged, load_verifier(fork.pub))
    assert decoded == []


@pytest.mark.parametrize("resign", [False, True], ids=["chain-recomputed", "resigned-with-the-key"])
@pytest.mark.parametrize("name", ["zz" * 32, "AB" * 32, "abc", "ab" * 32 + " "])
def test_a_row_reference_that_is_no_payload_name_is_named(fork: Exported, tmp_path: Path, resign: bool,
                                                          name: str) -> None:  # fmt: skip
    """A body that references a row by text no payload is named by (not 64 lowercase hex digits):
    one line naming the event when the roots were signed again, never a traceback. Not signed
    again, the signed roots refuse the file before any body is read."""
    seq = next(r.seq for r in _records(fork.file) if isinstance(r, EventRecord) and r.event_type == "TokenCreated")
    forged = tmp_path / "forged.export"
    _rewrite(fork, forged, at_seq=seq, resign=resign,
             body=lambda b: json.dumps({**json.loads(b), "data_hash": name}, separators=(",", ":")).encode())  # fmt: skip
    err = one_line_error(_verify(fork.work, str(forged), "--public-key", str(fork.pub)), 1)
    if resign:
        assert f"event seq {seq} references row payload {name!r}, which is no payload's name" in err, err
    else:
        assert "do not hash to the root of this checkpoint" in err, err


def _written_with_end(path: Path, kept: list[Record]) -> Path:
    """`kept` written as an export, with an end record counting them (as a tamperer would)."""
    counts = {kind: sum(isinstance(r, t) for r in kept) for kind, t in
              (("events", EventRecord), ("payloads", PayloadRecord), ("erased", ErasedRecord),
               ("checkpoints", CheckpointRecord), ("seals", SealRecord))}  # fmt: skip
    path.write_bytes(b"".join(encode(r) + b"\n" for r in [*kept, End(**counts)]))
    return path


def test_a_log_cut_short_consistently_is_a_named_truncation(fork: Exported, tmp_path: Path) -> None:
    """Events after seq 600 gone with their payload records, the end record counting what is
    left (as an export of a store whose tail a superuser deleted would be): the signed size names
    what is missing."""
    kept: list[Record] = []
    for r in _records(fork.file):
        if isinstance(r, EventRecord) and r.seq >= 600:
            break
        kept.append(r)
    path = _written_with_end(tmp_path / "cut.export", kept)
    err = one_line_error(_verify(fork.work, str(path), "--public-key", str(fork.pub)), 1)
    assert "events 600 to " in err and "missing" in err, err


def test_a_consistent_rewrite_passes_verify_but_not_against_a_kept_checkpoint(
    db: Database, fork: Exported, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.note"
    proc = elspeth("checkpoint", fork.run_id, "-o", str(kept), cwd=fork.work, db=db)
    assert proc.returncode == 0 and kept.read_text().startswith("elspeth/"), proc.stderr
    # To standard output, byte for byte whatever the terminal's encoding (the note's signature line
    # holds an em dash, which an ASCII stdout cannot take: escaped, it was no note)
    shown = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "checkpoint", fork.run_id], cwd=fork.work, capture_output=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}, "PYTHONIOENCODING": "ascii",
             "ELSPETH_DATABASE_URL": db.conninfo}, stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip
    assert shown.returncode == 0 and shown.stdout == kept.read_bytes(), shown.stderr
    proc = _verify(fork.work, str(fork.file), "--public-key", str(fork.pub), "--checkpoint", str(kept))
    assert proc.returncode == 0 and "consistency proof verified" in proc.stdout, proc.stderr
    # An earlier, smaller checkpoint the auditor kept (the run's second one).
    notes = [r.note for r in _records(fork.file) if isinstance(r, CheckpointRecord)]
    earlier = tmp_path / "earlier.note"
    earlier.write_text(notes[-2])
    forged = tmp_path / "forged.export"
    _rewrite(fork, forged, at_seq=10)
    proc = _verify(fork.work, str(forged), "--public-key", str(fork.pub))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a valid log, validly signed
    for note in (kept, earlier):
        err = one_line_error(
            _verify(fork.work, str(forged), "--public-key", str(fork.pub), "--checkpoint", str(note)), 1
        )
        assert "does not extend the checkpoint you kept" in err and "rewritten" in err, err


# -- bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_one_line(db: Database, fork: Exported, tmp_path: Path) -> None:
    pub, key = str(fork.pub), fork.work / ".elspeth" / "keys" / "default.key"
    (tmp_path / "pem.pub").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    newer = tmp_path / "newer.export"
    newer.write_bytes(fork.file.read_bytes().replace(b'"format":2,', b'"format":3,', 1))
    cut = tmp_path / "cut.export"
    cut.write_bytes(fork.file.read_bytes()[: fork.file.stat().st_size // 3])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        ((str(fork.file), "--public-key", str(tmp_path / "none.pub")), "no such file"),
        ((str(fork.file), "--public-key", str(tmp_path)), "is a folder"),
        ((str(fork.file), "--public-key", str(key)), "private signing key"),
        ((str(fork.file), "--public-key", str(tmp_path / "pem.pub")), "PEM"),
        ((str(newer), "--public-key", pub), "format 3, newer than this ELSPETH reads (2)"),
        ((str(cut), "--public-key", pub), "cut short"),
        ((str(tmp_path / "none.export"), "--public-key", pub), "cannot read"),
        ((str(fork.file), "--public-key", pub, "--run", "run-other"), "not of run run-other"),
        ((str(fork.file), "--public-key", pub, "--checkpoint", str(fork.pub)), "checkpoint"),
        # read until memory ran out, or waited on for ever (a hostile review)
        ((str(fork.file), "--public-key", "/dev/zero"), "it is not a regular file"),
        ((str(fork.file), "--public-key", pub, "--checkpoint", "/dev/zero"), "it is not a regular file"),
        ((str(fifo), "--public-key", pub), "not a regular file"),
        ((str(fork.file), "--public-key", str(fifo)), "it is not a regular file"),
        ((str(fork.file), "--public-key", pub, "--checkpoint", str(fifo)), "it is not a regular file"),
    ]
    for args, says in cases:
        err = one_line_error(_verify(fork.work, *args), 1)
        assert says in err and err.count("\n") == 1, f"{args}: {err}"
    assert _verify(fork.work, str(fork.file)).returncode == 2  # no --public-key: usage


def test_a_failed_export_writes_nothing(db: Database, fork: Exported, tmp_path: Path) -> None:
    other = tmp_path / "k"
    other.mkdir()
    assert elspeth("keys", "generate", "o", "--dir", str(other), cwd=fork.work).returncode == 0
    out = tmp_path / "x.export"
    for args, says in [
        (("run-none",), "no run run-none"),
        ((fork.run_id, "--public-key", str(other / "o.pub")), "not by o+"),
        ((fork.run_id, "--public-key", str(tmp_path / "none.pub")), "no such file"),
    ]:
        err = one_line_error(elspeth("export", *args, "-o", str(out), cwd=fork.work, db=db), 1)
        assert says in err, err
        assert not out.exists() and not list(tmp_path.glob(".x.export*"))
    err = one_line_error(elspeth("export", fork.run_id, "-o", str(fork.file), cwd=fork.work, db=db), 1)
    assert "already exists" in err
    assert elspeth("prove", fork.run_id, "-o", str(out), cwd=fork.work, db=db).returncode == 2
    # `-o -` is no file named "-" (a user asking for standard output got one)
    # (a command line to fix: exit 2, click's usage message, as docs/cli.md gives it)
    for command in (("export", fork.run_id), ("prove", fork.run_id, "--row", "1")):
        err = one_line_error(elspeth(*command, "-o", "-", cwd=fork.work, db=db), 2)
        assert "Invalid value for '-o' / '--output': '-': this is written to a file" in err, err
        assert "not to standard output" in err and not (fork.work / "-").exists()
    note = elspeth("checkpoint", fork.run_id, "-o", "-", cwd=fork.work, db=db)
    assert note.returncode == 0 and note.stdout.startswith("elspeth/") and not (fork.work / "-").exists(), note


def _limited(limit: int, *args: str, work: Path, db: Database) -> subprocess.CompletedProcess[str]:
    """`elspeth ARGS` unable to write a file past `limit` bytes (RLIMIT_FSIZE, SIGXFSZ ignored):
    a write past it fails as on a full disk, at the same point whatever the machine's speed."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env.update(ELSPETH_DATABASE_URL=db.conninfo, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], cwd=work, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=300, preexec_fn=limit_files,
    )  # fmt: skip


@pytest.mark.parametrize("command", [("export",), ("prove", "--row", "1"), ("checkpoint",)])
def test_a_write_that_fails_is_one_line_and_leaves_nothing(
    db: Database, fork: Exported, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The review's case: `export` on a full file system printed a traceback (ENOSPC from a write,
    where only open and link were caught) and left its temporary file."""
    whole = tmp_path / "whole"
    assert elspeth(command[0], fork.run_id, *command[1:], "-o", str(whole), cwd=fork.work, db=db).returncode == 0
    out = tmp_path / "x.out"
    proc = _limited(whole.stat().st_size // 2, command[0], fork.run_id, *command[1:], "-o", str(out), work=fork.work,
                    db=db)  # fmt: skip
    err = one_line_error(proc, 1)
    assert err == f"elspeth: error: cannot write {out}: File too large\n", err
    assert not out.exists() and not list(tmp_path.glob(".x.out*"))


def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Full(io.FileIO):
        def write(self, b: object, /) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullTemporary(audit._Temporary, Full):  # its writes reach Full's
        pass

    monkeypatch.setattr(audit, "_Temporary", FullTemporary)
    out = tmp_path / "x.export"
    with pytest.raises(ElspethCliError) as failed, new_file(out) as f:
        f.write(b"x" * (2 << 20))  # past the buffer: written at once
    assert failed.value.format_message() == f"cannot write {out}: No space left on device"
    with pytest.raises(ElspethCliError, match="No space left on device"), new_file(out) as f:
        f.write(b"x")  # written when the file is flushed
    assert not list(tmp_path.iterdir())


def test_a_killed_exports_temporary_file_is_removed_by_the_next(tmp_path: Path) -> None:
    """SIGKILL leaves `.NAME.PID.tmp` (a whole export's row data so far). Removed only when its
    process is gone and nothing holds its lock; a PID alone could be another machine's."""
    # Numbers above the largest pid_max Linux allows: no process has them (a process that ended
    # leaves a number the system may give to another before the export looks).
    dead, dead_too, fifo_pid, link_pid = (4_194_305 + i for i in range(4))
    out = tmp_path / "x.export"
    abandoned, alive = tmp_path / f".x.export.{dead}.tmp", tmp_path / f".x.export.{os.getppid()}.tmp"
    locked, other = tmp_path / f".x.export.{dead_too}.tmp", tmp_path / f".y.export.{dead}.tmp"
    for left in (abandoned, alive, locked, other):
        left.write_bytes(b"rows")
    # Named so by someone who can write the folder: a FIFO (its open would wait for a writer for
    # good) and a link to a file of theirs are no export's, and stay.
    fifo, link = tmp_path / f".x.export.{fifo_pid}.tmp", tmp_path / f".x.export.{link_pid}.tmp"
    os.mkfifo(fifo)
    link.symlink_to(other)
    with locked.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # (as a process on another machine sharing the folder holds it)
        with new_file(out) as f:
            f.write(b"export")
    assert out.read_bytes() == b"export"
    assert not abandoned.exists() and alive.exists() and locked.exists() and other.exists()
    assert fifo.exists() and link.is_symlink()


# -- proofs --------------------------------------------------------------------------------------------


def test_inclusion_proofs_pass_for_every_event_of_a_small_run(db: Database, tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["id", "v"], [[1, 3], [2, 9], [3, "x"]])
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(PIPELINE)
    proc = elspeth("run", "-s", "settings.yaml", cwd=tmp_path, db=db)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    recorder = PostgresRecorder(db)
    newest: Witnessed = max(recorder.checkpoints(run_id), key=lambda c: c.size)
    key = load_verifier(tmp_path / ".elspeth" / "keys" / "default.pub")
    origin = Checkpoint.__name__ and newest.note.split("\n", 1)[0]
    path = tmp_path / "p.json"
    for seq in range(newest.size):
        path.write_bytes(encode_bundle(build_proof(recorder, run_id, newest, origin=origin, key=key, seq=seq)))
        assert verify_proof(path, key, run_id=run_id).subject == f"event seq {seq}"
    bundle = build_proof(recorder, run_id, newest, origin=origin, key=key, row=1)
    path.write_bytes(encode_bundle(bundle))
    assert verify_proof(path, key).payloads == len(bundle.payloads) > 0


def test_prove_a_row_and_verify_it_offline(db: Database, fork: Exported, tmp_path: Path) -> None:
    pub = str(fork.pub)
    for row, erased in ((1, False), (2, True)):  # counted from 1; row 2 was erased
        out = tmp_path / f"row{row}.json"
        proc = elspeth("prove", fork.run_id, "--row", str(row), "-o", str(out), cwd=fork.work, db=db)
        assert proc.returncode == 0, proc.stderr
        ok = _verify(fork.work, str(out), "--public-key", pub, "--run", fork.run_id)
        assert ok.returncode == 0 and f"row {row}" in ok.stdout, ok.stdout + ok.stderr
        assert ("0 erased" not in ok.stdout) == erased, ok.stdout
    text = (tmp_path / "row1.json").read_text()
    tampered = {
        "payload": (text.replace('"data": "ey', '"data": "eY', 1), "does not match its commitment"),
        "event": (text.replace('"recorded_at_us": 1', '"recorded_at_us": 2', 1), "do not hash to its chain hash"),
        "wrong run": (text, "not of run run-other"),
        "path": (_flip_first_proof_hash(text), "does not lead to the root"),
    }
    for name, (changed, says) in tampered.items():
        path = tmp_path / f"{name}.json"
        path.write_text(changed)
        extra = ("--run", "run-other") if name == "wrong run" else ()
        err = one_line_error(_verify(fork.work, str(path), "--public-key", pub, *extra), 1)
        assert says in err, f"{name}: {err}"
    err = one_line_error(elspeth("prove", fork.run_id, "--seq", "99999", "-o", str(tmp_path / "n.json"),
                                 cwd=fork.work, db=db), 1)  # fmt: skip
    assert "no event seq 99999" in err and not (tmp_path / "n.json").exists()


def test_a_hostile_run_id_or_origin_is_quoted_in_part(db: Database, fork: Exported, tmp_path: Path) -> None:
    """A file's run id or origin, unsigned where it is read, was printed whole in the error that
    refused it: a 5 MB run id, a 5 MB line on stderr (a review). Quoted in part, its length said."""
    huge = "r" * 1_000_000
    bundle = tmp_path / "row1.json"
    assert elspeth("prove", fork.run_id, "--row", "1", "-o", str(bundle), cwd=fork.work, db=db).returncode == 0
    data = json.loads(bundle.read_text())
    data["run_id"] = huge
    bundle.write_text(json.dumps(data))
    header, rest = fork.file.read_bytes().split(b"\n", 1)
    export = tmp_path / "huge.export"
    export.write_bytes(header.replace(fork.run_id.encode(), huge.encode(), 1) + b"\n" + rest)
    cut = tmp_path / "origin.export"
    cut.write_bytes(header.replace(b'"origin":"elspeth/', b'"origin":"elspeth/' + b"o" * 1_000_000, 1) + b"\n" + rest)
    for path, run in ((bundle, ("--run", "run-x")), (export, ("--run", "run-x")), (export, ()), (cut, ())):
        err = one_line_error(_verify(fork.work, str(path), "--public-key", str(fork.pub), *run), 1)
        assert len(err) < 2_000 and "characters)" in err, (path, run, err[:300])


def test_a_bundle_proves_its_log_extends_a_kept_checkpoint(db: Database, fork: Exported, tmp_path: Path) -> None:
    """`prove --checkpoint` adds the consistency proof from what the auditor kept; `verify
    --checkpoint` requires it. Without it an operator holding the key could prove events of a
    rewritten history: each bundle alone verifies."""
    pub, records = str(fork.pub), _records(fork.file)
    notes = [r.note for r in records if isinstance(r, CheckpointRecord)]
    earlier, newest = tmp_path / "earlier.note", tmp_path / "newest.note"
    earlier.write_text(notes[-2])
    newest.write_text(notes[-1])
    made = tmp_path / "made.json"
    proc = elspeth("prove", fork.run_id, "--seq", "3", "--checkpoint", str(earlier), "-o", str(made),
                   cwd=fork.work, db=db)  # fmt: skip
    assert proc.returncode == 0 and "extends the checkpoint given" in proc.stdout, proc.stderr
    ok = _verify(fork.work, str(made), "--public-key", pub, "--checkpoint", str(earlier))
    assert ok.returncode == 0 and "consistency proof verified" in ok.stdout, ok.stdout + ok.stderr
    plain = tmp_path / "plain.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(plain), cwd=fork.work, db=db).returncode == 0
    for bundle, kept, says in [
        (plain, earlier, "carries no consistency proof"),
        (made, newest, "starts from another tree"),
    ]:
        err = one_line_error(_verify(fork.work, str(bundle), "--public-key", pub, "--checkpoint", str(kept)), 1)
        assert says in err, err
    # A consistency proof that was changed, and a history the operator rewrote and signed again.
    data = json.loads(made.read_text())
    data["extends"]["proof"][0] = "0" * 64
    bent = tmp_path / "bent.json"
    bent.write_text(json.dumps(data))
    err = one_line_error(_verify(fork.work, str(bent), "--public-key", pub, "--checkpoint", str(earlier)), 1)
    assert "does not extend the checkpoint you kept" in err, err
    from landscape.audit import read_kept_checkpoint

    forged = _forged_bundle(fork, tmp_path, kept=read_kept_checkpoint(earlier, load_verifier(fork.pub)))
    bare = tmp_path / "forged-bare.json"
    bare.write_text(json.dumps({k: v for k, v in json.loads(forged.read_text()).items() if k != "extends"}))
    alone = _verify(fork.work, str(bare), "--public-key", pub)
    assert alone.returncode == 0, alone.stdout + alone.stderr  # a valid proof, validly signed
    for bundle, says in [(forged, "does not extend the checkpoint you kept"), (bare, "carries no consistency proof")]:
        err = one_line_error(_verify(fork.work, str(bundle), "--public-key", pub, "--checkpoint", str(earlier)), 1)
        assert says in err, err


def _forged_bundle(fork: Exported, tmp_path: Path, kept: Checkpoint) -> Path:
    """What an operator holding the key could hand over for event seq 3 after rewriting event 2:
    a bundle proved in the rewritten log (signed again), its consistency proof made from that log."""
    from landscape.merkle import consistency_proof, inclusion_proof

    _rewrite(fork, tmp_path / "rewritten.export", at_seq=2)
    records = _records(tmp_path / "rewritten.export")
    events = [r for r in records if isinstance(r, EventRecord)]
    checkpoints = [r for r in records if isinstance(r, CheckpointRecord)]
    leaves = [leaf_hash(bytes.fromhex(e.hash)) for e in events]
    size = checkpoints[-1].size
    extension = {"size": kept.size, "root": kept.root.hex(),
                 "proof": [p.hex() for p in consistency_proof(kept.size, size, leaves[:size])]}  # fmt: skip
    bundle = ProofBundle(
        format=1, run_id=fork.run_id, origin=kept.origin, key=load_verifier(fork.pub).text(), seq=3, row=None,
        checkpoint=checkpoints[-1].note, events=[ProvenEvent(events[3], [p.hex() for p in inclusion_proof(3, size, leaves[:size])])],
        payloads_included=False, payloads=[], erased=[],
    )  # fmt: skip
    path = tmp_path / "forged.json"
    path.write_bytes(encode_bundle(bundle))
    data = json.loads(path.read_text())
    data["extends"] = extension
    path.write_text(json.dumps(data))
    return path


def test_prove_refuses_a_kept_checkpoint_its_log_does_not_extend(db: Database, fork: Exported, tmp_path: Path) -> None:
    signer = load_signer(fork.work / ".elspeth" / "keys" / "default.key")
    records = _records(fork.file)
    origin = records[0].origin  # type: ignore[union-attr]
    size = [r for r in records if isinstance(r, CheckpointRecord)][-1].size
    for kept, says in [
        (Checkpoint(origin, size - 5, bytes(32)), "does not extend the checkpoint given"),
        (Checkpoint(origin, size + 5, bytes(32)), "signs more events than the run's newest checkpoint"),
        (Checkpoint("elspeth/other/run-x", 3, bytes(32)), "is of elspeth/other/run-x"),
        (Checkpoint(origin, 0, hashlib.sha256().digest()), "signs an empty log (0 events)"),
    ]:
        note = tmp_path / "kept.note"
        note.write_text(kept.sign(signer))
        out = tmp_path / "b.json"
        err = one_line_error(elspeth("prove", fork.run_id, "--seq", "3", "--checkpoint", str(note), "-o", str(out),
                                     cwd=fork.work, db=db), 1)  # fmt: skip
        assert says in err and not out.exists(), err


def test_a_kept_checkpoint_of_an_empty_log_is_refused_as_showing_nothing(fork: Exported, tmp_path: Path) -> None:
    """Only the key's holder can sign one (a run's log holds its first event from the start).
    Given to verify, it was called proof that the export's history "was rewritten": no
    consistency proof starts from an empty tree, and every log extends one."""
    signer = load_signer(fork.work / ".elspeth" / "keys" / "default.key")
    origin = _records(fork.file)[0].origin  # type: ignore[union-attr]
    note = tmp_path / "empty.note"
    note.write_text(Checkpoint(origin, 0, hashlib.sha256().digest()).sign(signer))
    err = one_line_error(
        _verify(fork.work, str(fork.file), "--public-key", str(fork.pub), "--checkpoint", str(note)), 1
    )
    assert "signs an empty log (0 events), which every log extends" in err and "rewritten" not in err, err


def test_a_signed_checkpoint_of_an_empty_log_is_refused_as_such_wherever_it_is_read(
    db: Database, fork: Exported, tmp_path: Path
) -> None:
    """As above, for the other places a checkpoint is read. From the run's witness file, export
    and prove said the store's events "were changed" (no tree root is kept for 0 events) and
    replay --check took it unseen; in an export file, verify took it; as the start of a bundle's
    consistency proof, verify said the bundle's history "was rewritten"."""
    signer = load_signer(fork.work / ".elspeth" / "keys" / "default.key")
    origin = _records(fork.file)[0].origin  # type: ignore[union-attr]
    empty = Checkpoint(origin, 0, hashlib.sha256().digest()).sign(signer)
    says = "signs an empty log (0 events), which every log extends"
    witness = fork.work / ".elspeth" / "witness" / f"{fork.run_id}.checkpoints"
    kept = witness.read_bytes()
    first = json.loads(kept.splitlines()[0])
    witness.write_bytes(json.dumps({**first, "size": 0, "note": empty}).encode() + b"\n" + kept)
    try:
        for command in (["export", fork.run_id, "-o", str(tmp_path / "w.export")],
                        ["prove", fork.run_id, "--seq", "3", "-o", str(tmp_path / "w.json")],
                        ["replay", fork.run_id, "--check"]):  # fmt: skip
            err = one_line_error(elspeth(*command, cwd=fork.work, db=db), 1)
            assert says in err and str(witness) in err and "changed" not in err, (command, err)
        assert not (tmp_path / "w.export").exists() and not (tmp_path / "w.json").exists()
    finally:
        witness.write_bytes(kept)
    lines = fork.lines
    end = json.loads(lines[-1])
    end["checkpoints"] += 1
    held = tmp_path / "empty.export"
    held.write_bytes(b"".join([lines[0], encode(CheckpointRecord(size=0, note=empty)) + b"\n", *lines[1:-1],
                               json.dumps(end, separators=(",", ":")).encode() + b"\n"]))  # fmt: skip
    err = one_line_error(_verify(fork.work, str(held), "--public-key", str(fork.pub)), 1)
    assert f"{held}, line 2: " in err and says in err, err
    bundle = tmp_path / "seq3.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(bundle), cwd=fork.work, db=db).returncode == 0
    data = json.loads(bundle.read_text())
    bundle.write_text(json.dumps({**data, "extends": {"size": 0, "root": hashlib.sha256().hexdigest(), "proof": []}}))
    err = one_line_error(_verify(fork.work, str(bundle), "--public-key", str(fork.pub)), 1)
    assert "from an empty log (0 events), which every log extends" in err and "rewritten" not in err, err


def _flip_first_proof_hash(text: str) -> str:
    at = text.index('"proof": [') + len('"proof": [')
    at = text.index('"', at) + 1
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def test_a_proof_hung_from_another_runs_checkpoint_is_refused(db: Database, fork: Exported, tmp_path: Path) -> None:
    """A second run signed with the same key: its checkpoint does not name the first run."""
    write_csv(tmp_path / "in.csv", ["id", "v"], [[1, 3]])
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(PIPELINE)
    env = {"ELSPETH_SIGNING_KEY": str(fork.work / ".elspeth" / "keys" / "default.key")}
    proc = elspeth("run", "-s", "settings.yaml", cwd=tmp_path, db=db, env=env)
    assert proc.returncode == 0, proc.stderr
    other_run = proc.stdout.split()[1]
    other = tmp_path / "other.note"
    assert elspeth("checkpoint", other_run, "-o", str(other), cwd=tmp_path, db=db, env=env).returncode == 0
    mine = tmp_path / "mine.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(mine), cwd=fork.work, db=db).returncode == 0
    import json

    bundle = json.loads(mine.read_text())
    bundle["checkpoint"] = other.read_text()
    mine.write_text(json.dumps(bundle, indent=1))
    err = one_line_error(_verify(fork.work, str(mine), "--public-key", str(fork.pub)), 1)
    assert "checkpoint" in err and other_run in err and fork.run_id in err, err
    err = one_line_error(
        _verify(fork.work, str(fork.file), "--public-key", str(fork.pub), "--checkpoint", str(other)), 1
    )
    assert "is of elspeth/" in err, err


# -- offline, with no driver ------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "two-processes"])
def test_verify_runs_where_no_driver_is_installed(fork: Exported, tmp_path: Path, split: bool) -> None:
    """`elspeth verify` through the real entry point, in an environment with every installed
    package except psycopg: a good export passes, a tampered one is named, and psycopg is never
    imported. Split, the good export is verified by the two halves alone (no one pass may run:
    a child that needed the driver would fail, and leave its half to one)."""
    site = Path(sysconfig.get_paths()["purelib"])
    bare = tmp_path / "site"
    bare.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("psycopg", "_psycopg", "__editable__", "elspeth")):
            (bare / entry.name).symlink_to(entry)
    lines = fork.lines
    bad = tmp_path / "bad.export"
    bad.write_bytes(b"".join([*lines[:5], *lines[6:]]))

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        halves = "import landscape.chain_half as c; c.SPLIT_AT = 1; import landscape.audit as a\n" if split else ""
        if split and path == fork.file:
            halves += "a.verify_events = None\n"
        code = (
            "import sys, os, atexit\n"
            "sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\n"
            f"sys.path[:0] = [{str(ROOT)!r}, {str(bare)!r}]\n"
            "atexit.register(lambda: any(m.startswith('psycopg') for m in sys.modules) and os._exit(7))\n"
            + halves
            + f"sys.argv = ['elspeth', 'verify', {str(path)!r}, '--public-key', {str(fork.pub)!r}]\n"
            "from engine.cli.main import main\nmain()\n"
        )
        return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120)

    good = run(fork.file)
    assert good.returncode == 0 and "chain and transitions verified" in good.stdout, good.stdout + good.stderr
    err = one_line_error(run(bad), 1)
    assert "line 6:" in err, err


# -- what an attacker's review found: files that misrepresent the run, or that crash the reader ----


def test_a_payload_re_split_between_salt_and_data_is_refused(fork: Exported, tmp_path: Path) -> None:
    """sha256(salt ‖ data) stays the same when bytes move across the split: a record whose salt
    took some of the data, or whose data took the salt, shows other data than was committed to."""
    records = _records(fork.file)
    first = next(i for i, r in enumerate(records) if isinstance(r, PayloadRecord))
    p = records[first]
    assert isinstance(p, PayloadRecord) and len(p.salt) == 16
    for salt, data in ((p.salt + p.data[:10], p.data[10:]), (b"", p.salt + p.data)):
        changed = [*records[:first], PayloadRecord(hash=p.hash, salt=salt, data=data), *records[first + 1 :]]
        err = _refused(fork, tmp_path, [encode(r) + b"\n" for r in changed])
        assert "does not match its commitment" in err, err


def test_a_file_nested_too_deeply_is_one_line(fork: Exported, tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    cases = {
        "export header": b'{"type":"elspeth-export","format":1,"x":' + deep + b"}\n",
        "bundle": b'{\n"type":"elspeth-proof","format":1,"x":' + deep + b"}\n",
        "second line": fork.lines[0] + b'{"type":"checkpoint","x":' + deep + b"}\n",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_bytes(text)
        err = one_line_error(_verify(fork.work, str(path), "--public-key", str(fork.pub)), 1)
        assert str(path) in err or "line" in err, f"{name}: {err}"


def test_an_export_cut_back_to_an_earlier_checkpoint_is_warned_about(fork: Exported, tmp_path: Path) -> None:
    """Every signed checkpoint is in an export and its end is not signed: cut back to an earlier
    checkpoint (events, payloads and the later checkpoints dropped), the file verifies; what
    shows it is that the log no longer ends the run (and a checkpoint kept from later)."""
    whole = _verify(fork.work, str(fork.file), "--public-key", str(fork.pub))
    assert whole.returncode == 0 and "where the log ends: completed" in whole.stdout, whole.stdout + whole.stderr
    assert "warning" not in whole.stderr, whole.stderr
    records = _records(fork.file)
    sizes = sorted(r.size for r in records if isinstance(r, CheckpointRecord))
    cut = sizes[-2]  # the checkpoint before the newest: the run's end event is after it
    kept: list[Record] = []
    for r in records:
        if (isinstance(r, CheckpointRecord) and r.size > cut) or isinstance(r, End):
            continue
        if isinstance(r, EventRecord) and r.seq >= cut:
            break
        kept.append(r)
    # The seals stay: they sign the erasure records of the events kept (and of some dropped).
    kept += [r for r in records if isinstance(r, SealRecord)]
    path = _written_with_end(tmp_path / "cut_back.export", kept)
    proc = _verify(fork.work, str(path), "--public-key", str(fork.pub))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: the log does not end the run" in proc.stderr and "--checkpoint" in proc.stderr, proc.stderr


def test_a_bundle_says_when_its_tokens_lack_their_end(db: Database, fork: Exported, tmp_path: Path) -> None:
    out = tmp_path / "row1.json"
    assert elspeth("prove", fork.run_id, "--row", "1", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    whole = _verify(fork.work, str(out), "--public-key", str(fork.pub))
    assert whole.returncode == 0 and "no end event" not in whole.stderr, whole.stdout + whole.stderr
    assert "have no event in it" not in whole.stderr and "not that none was left out" in whole.stderr
    bundle = json.loads(out.read_text())
    events = bundle["events"]
    bundle["events"] = events[:-1]  # the last event of the row: a token's end
    out.write_text(json.dumps(bundle, indent=1) + "\n")
    proc = _verify(fork.work, str(out), "--public-key", str(fork.pub))
    assert proc.returncode == 0 and "1 token(s) of the bundle have no end event" in proc.stderr, proc.stderr
    # Every event of the token the branches merged into left out (with the flush of its write, which
    # is no other token's): nothing of it is unended.
    merged = next(e["event"]["entity_id"] for e in events if e["event"]["event_type"] == "TokenCompleted")
    bundle["events"] = [
        e for e in events if e["event"]["entity_id"] != merged and e["event"]["event_type"] != "SinkFlushed"
    ]
    bodies = [json.loads(base64.b64decode(e["event"]["payload"])) for e in bundle["events"]]
    named = {v for b in bodies for k, v in b.items() if k in ("data_hash", "input_hash", "output_hash")}
    bundle["payloads"] = [p for p in bundle["payloads"] if p["hash"] in named]
    out.write_text(json.dumps(bundle, indent=1) + "\n")
    proc = _verify(fork.work, str(out), "--public-key", str(fork.pub))
    assert proc.returncode == 0 and "no end event" not in proc.stderr, proc.stderr
    assert "1 token(s) its events name have no event in it" in proc.stderr, proc.stderr


def test_a_bundle_with_a_key_twice_is_refused(db: Database, fork: Exported, tmp_path: Path) -> None:
    """The decoder keeps the last of a key given twice; a reader keeping the first would see a
    forged value where verify checked the genuine one. A reformatted bundle still verifies."""
    out = tmp_path / "seq3.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    out.write_text(json.dumps(bundle))  # on one line, the em dash of the note escaped: the same bundle
    ok = _verify(fork.work, str(out), "--public-key", str(fork.pub))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    text = out.read_text()
    forged = text.replace('"event": {', '"event": {"event_type": "TokenFailed", ', 1)
    assert forged != text
    out.write_text(forged)
    err = one_line_error(_verify(fork.work, str(out), "--public-key", str(fork.pub)), 1)
    assert "gives a key twice" in err and "event_type" in err, err


def test_a_bundle_is_held_decoded_once(db: Database, fork: Exported, tmp_path: Path) -> None:
    """The key-twice check keeps nothing of what it reads: a bundle near the size limit costs its
    bytes and one decoded copy, not two (the check's own tree of it was 2-3 times its size)."""
    out = tmp_path / "seq3.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    bundle["events"] *= 1500  # (out of seq order: refused later, when checked; decoded first)
    data = json.dumps(bundle).encode()
    assert len(data) > 1_500_000
    tracemalloc.start()
    try:
        decoded = decode_bundle(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(decoded.events) == 1500
    assert peak < 3.5 * len(data), peak / len(data)  # (about 2.7; 4.9 with the check's tree kept)


def test_a_bundle_event_is_proved_in_the_signed_tree_before_its_body_is_read(
    db: Database, fork: Exported, tmp_path: Path
) -> None:
    """A chain hash is anyone's to compute: a forged body (here, one that cannot be read) is
    refused by its inclusion proof, before it is decoded (a body may decode to many times its size)."""
    out = tmp_path / "seq3.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    e = bundle["events"][0]["event"]
    body = b"[" * 1000
    payload_hash = hashlib.sha256(body).digest()
    h = event_hash(bytes.fromhex(e["prev_hash"]), e["run_id"], e["seq"], e["machine"], e["entity_id"],
                   e["event_type"], e["schema_version"], e["recorded_at_us"], payload_hash)  # fmt: skip
    e |= {"payload": base64.b64encode(body).decode(), "payload_hash": payload_hash.hex(), "hash": h.hex()}
    out.write_text(json.dumps(bundle))
    err = one_line_error(_verify(fork.work, str(out), "--public-key", str(fork.pub)), 1)
    assert "event seq 3" in err and "cannot be read" not in err, err


def test_an_erasure_record_of_another_run_or_no_time_is_refused(fork: Exported, tmp_path: Path) -> None:
    """Nothing signs an erasure record; its digest only catches a changed byte. One made anew,
    digest and all, must at least be one of this run's, of a row, at a time."""
    records = _records(fork.file)
    at = next(i for i, r in enumerate(records) if isinstance(r, ErasedRecord))
    genuine = records[at]
    assert isinstance(genuine, ErasedRecord)
    for changes, says in (({"run_id": "run-other"}, "names run run-other"), ({"row_index": -5}, "row_index -5"),
                          ({"erased_at": "not-a-date"}, "which is no time")):  # fmt: skip
        e = msgspec.structs.replace(genuine, **changes)
        fields = (e.hash, e.run_id, e.row_index, e.kind, e.reason, e.erased_at, e.erased_by)
        forged = msgspec.structs.replace(e, digest=record_digest(fields).hex())
        assert forged.digest_matches()
        err = _refused(fork, tmp_path, [encode(r) + b"\n" for r in [*records[:at], forged, *records[at + 1 :]]])
        assert says in err, err


def test_a_bundle_event_whose_body_says_more_than_its_event_is_refused(fork: Exported, tmp_path: Path) -> None:
    """The key holder signs a tree whose event 0 carries a key its event does not have (which
    the projections would read and the fold would drop): refused in a bundle as in an export."""
    records = _records(fork.file)
    first = next(r for r in records if isinstance(r, EventRecord) and r.seq == 0)
    origin = records[0].origin  # type: ignore[union-attr]
    body = first.payload[:-1] + b',"x":1}'
    payload_hash = hashlib.sha256(body).digest()
    h = event_hash(bytes(32), first.run_id, 0, first.machine, first.entity_id, first.event_type,
                   first.schema_version, first.recorded_at_us, payload_hash)  # fmt: skip
    event = EventRecord(**{**_fields(first), "payload": body, "payload_hash": payload_hash.hex(), "hash": h.hex()})
    signer = load_signer(fork.work / ".elspeth" / "keys" / "default.key")
    bundle = ProofBundle(
        format=1, run_id=fork.run_id, origin=origin, key=signer.verifier.text(), seq=0, row=None,
        checkpoint=Checkpoint(origin, 1, root([leaf_hash(h)])).sign(signer),
        events=[ProvenEvent(event=event, proof=[])], payloads_included=True, payloads=[], erased=[],
    )  # fmt: skip
    path = tmp_path / "forged.json"
    path.write_bytes(encode_bundle(bundle))
    err = one_line_error(_verify(fork.work, str(path), "--public-key", str(fork.pub)), 1)
    assert "holds a key that its event does not have" in err, err


def _as_the_store_holds_it(db: Database, run_id: str, out: Path, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export of the store's records as they are, unchecked: what a tool of one's own writes
    (`elspeth export` refuses a log that does not verify)."""
    recorder, verifier = PostgresRecorder(db), load_verifier(key)
    checkpoints = signed_checkpoints(recorder.checkpoints(run_id), [], verifier)

    def unchecked(_run_id: str, events: Iterable[StoredEvent], *, roots_at: object = ()) -> ChainCheck:
        n = sum(1 for _ in events)
        return ChainCheck(n, b"", {cp.size: cp.root for cp in checkpoints}, b"", False)

    monkeypatch.setattr(verify_store, "check_chain", unchecked)
    monkeypatch.setattr(verify_store, "SPLIT_AT", 10**9)  # (checked here, not by a second process)
    origin = run_origin(recorder.store_id(), run_id)
    with out.open("wb") as f:
        write_export(recorder, run_id, f, origin=origin, key=verifier, checkpoints=checkpoints)


@pytest.mark.parametrize("when", ["infinity", "-infinity", "294270-01-01"])
def test_an_event_time_no_writer_makes_is_named_at_its_seq_by_export_and_by_the_auditor(
    db: Database, tmp_path: Path, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A superuser edit the readers cannot shift into microseconds: read as a time no clock
    gives, whose event's hash then fails, not as a record the auditor's reader rejects."""
    work, run_id = _run(db, tmp_path, FORK)
    _superuser_update(db, f"UPDATE events SET recorded_at = '{when}' WHERE run_id = %s AND seq = 5", (run_id,))
    err = one_line_error(elspeth("export", run_id, "-o", str(tmp_path / "x.export"), cwd=work, db=db), 1)
    assert "does not verify at seq 5" in err and "no export was written" in err, err
    assert not (tmp_path / "x.export").exists()
    pub = work / ".elspeth/keys/default.pub"
    _as_the_store_holds_it(db, run_id, tmp_path / "x.export", pub, monkeypatch)
    proc = _verify(work, str(tmp_path / "x.export"), "--public-key", str(pub))
    assert proc.returncode == 1 and "event seq 5: the event header or hash was altered" in proc.stderr, proc.stderr


def test_export_refuses_a_store_that_would_not_verify_and_writes_nothing(db: Database, tmp_path: Path) -> None:
    """It wrote the file, exit 0, and the operator learnt from the auditor that the store had
    been changed: a body edited with its hashes redone, a payload changed, one deleted."""
    work, run_id = _run(db, tmp_path, FORK)
    out = tmp_path / "x.export"
    with db.connect() as conn:
        (data_hash,) = conn.execute(
            "SELECT convert_from(payload, 'UTF8')::jsonb ->> 'data_hash' FROM events "
            "WHERE run_id = %s AND event_type = 'TokenCreated' AND seq = (SELECT min(seq) FROM events WHERE "
            "run_id = %s AND event_type = 'TokenCreated')",
            (run_id, run_id),
        ).fetchone()
    assert data_hash is not None
    with db.connect() as conn:  # a payload's data changed (the erasure trigger does not stop an UPDATE's owner)
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE payloads SET data = data || ' '::bytea WHERE hash = decode(%s, 'hex')", (data_hash,))
        conn.commit()
    err = one_line_error(elspeth("export", run_id, "-o", str(out), cwd=work, db=db), 1)
    assert f"row payload {data_hash} (first referenced by event seq" in err and "does not match" in err, err
    assert not out.exists()
    with db.connect() as conn:  # ... and deleted, with no erasure record
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM payloads WHERE hash = decode(%s, 'hex')", (data_hash,))
        conn.commit()
    err = one_line_error(elspeth("export", run_id, "-o", str(out), cwd=work, db=db), 1)
    assert f"row payload {data_hash}" in err and "no erasure record says why" in err, err
    # without payloads, the events alone are exported (and verify without the data)
    assert elspeth("export", run_id, "-o", str(out), "--no-payloads", cwd=work, db=db).returncode == 0
    out.unlink()
    # an event's body changed, its hashes redone and the chain after it relinked: only the Merkle
    # roots the signed checkpoints hold tell
    events = list(PostgresRecorder(db).read_events(run_id))
    prev = events[2].hash
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        for e in events[3:]:
            body = b" " + e.payload if e.seq == 3 else e.payload
            digest = hashlib.sha256(body).digest()
            at = e.recorded_at_us
            h = event_hash(prev, run_id, e.seq, e.machine, e.entity_id, e.event_type, e.schema_version, at, digest)
            conn.execute(
                "UPDATE events SET payload = %s, payload_hash = %s, prev_hash = %s, hash = %s WHERE run_id = %s "
                "AND seq = %s",
                (body, digest, prev, h, run_id, e.seq),
            )
            prev = h
        conn.commit()
    err = one_line_error(elspeth("export", run_id, "-o", str(out), "--no-payloads", cwd=work, db=db), 1)
    assert "is not the one its signed checkpoint of" in err and "Merkle root differs" in err, err
    assert not out.exists()


def test_a_bundle_holding_a_payload_and_an_erasure_record_of_it_is_refused(
    db: Database, fork: Exported, tmp_path: Path
) -> None:
    """It verified, counting the row both as held and as erased (auditor review); an export's
    reader refuses the pair already."""
    from landscape.export import ErasedRecord

    out = tmp_path / "row1.json"
    assert elspeth("prove", fork.run_id, "--row", "1", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    held = bundle["payloads"][0]["hash"]
    fields = (held, fork.run_id, 0, "request", "forged", "2026-01-01T00:00:00+00:00", "elspeth_owner")
    record = ErasedRecord(*fields, digest=record_digest(fields).hex())
    bundle["erased"].append({f: getattr(record, f) for f in record.__struct_fields__})
    out.write_text(json.dumps(bundle, indent=1))
    err = one_line_error(_verify(fork.work, str(out), "--public-key", str(fork.pub)), 1)
    assert f"row payload {held} is in the bundle both as data and as erased" in err, err


@pytest.mark.parametrize("example", ["linear", "gate_routing", FORK, AGG])
def test_every_rows_events_follow_one_another_as_prove_gathers_them(db: Database, tmp_path: Path, example: str) -> None:
    """`prove --row` holds every event of each token it holds the creation of: for every row of
    every example, the tokens' events there follow one another (the note of events left out is
    never said of a whole bundle), as the row bundles of `verify` see them."""
    from landscape.audit import _left_out
    from landscape.export import Lineage
    from landscape.wiring import Wirings

    def lineage(events: list[StoredEvent], rows: Collection[int]) -> Iterator[tuple[int, StoredEvent]]:
        found = Lineage(rows)  # (as `build_proof` takes a row's events, one after another)
        for e in events:
            row = found.row_of(e, e.event if e.machine == "token" and e.event_type == "TokenCreated" else None)
            if row is not None:
                yield row, e

    _work, run_id = _run(db, tmp_path, example)
    recorder = PostgresRecorder(db)
    events = list(recorder.read_events(run_id))
    wirings = Wirings()
    for e in events:
        if e.event_type == "RunCreated":
            wirings.add(e.seq, e.event.settings)
    rows = {r for r, _ in lineage(events, range(10_000))}
    assert len(rows) > 5, rows
    for row in sorted(rows):
        held = [(e, e.event) for _, e in lineage(events, {row})]
        assert _left_out(held, wirings) == 0, (example, row)
    # The check can fail: one event of a row's token left out (not its creation), and the token's
    # events no longer follow one another; a step that kept the data, only by the wiring.
    held = [(e, e.event) for _, e in lineage(events, {sorted(rows)[0]})]
    for kind in ("SinkAssigned", "StepCompleted", "TokenBuffered", "TokenHeld"):
        for gone in [i for i, (e, ev_) in enumerate(held) if e.event_type == kind][:1]:
            assert _left_out(held[:gone] + held[gone + 1 :], wirings) == 1, kind


@pytest.mark.parametrize(
    ("example", "kind", "node"),
    [
        (FORK, "SinkAssigned", None),
        ("linear", "StepCompleted", "rename"),
        # Told by the run's settings in the bundle (format 3): a step that kept the data (a gate,
        # a filter that passed), a token's last step (before its sink, before a coalesce).
        ("gate_routing", "StepCompleted", "size"),
        ("linear", "StepCompleted", "screen"),
        ("linear", "StepCompleted", "trim"),
        (FORK, "StepCompleted", "summarise"),
    ],
)
def test_a_row_bundle_says_when_an_event_was_left_out_between_a_tokens_own(
    db: Database, tmp_path: Path, example: str, kind: str, node: str | None
) -> None:
    """Found by a hostile review: a token's sink assignment, or a step that changed the row's
    data (with the payload it wrote), taken out of a row's bundle, and the bundle verified with
    nothing said: its note counted tokens without an end and tokens named but absent, and
    neither changed. The token machine, and the data each step read against what the one before
    wrote, tell; the note says how many tokens."""
    work, run_id = _run(db, tmp_path, example)
    pub = str(work / ".elspeth" / "keys" / "default.pub")
    out = tmp_path / "row1.json"
    assert elspeth("prove", run_id, "--row", "1", "-o", str(out), cwd=work, db=db).returncode == 0
    whole = _verify(work, str(out), "--public-key", pub)
    assert whole.returncode == 0 and "do not follow one another" not in whole.stderr, whole.stdout + whole.stderr
    bundle = json.loads(out.read_text())
    events = bundle["events"]
    i = next(
        i for i, e in enumerate(events) if e["event"]["event_type"] == kind
        and (node is None or json.loads(base64.b64decode(e["event"]["payload"]))["node"] == node)
    )  # fmt: skip
    bundle["events"] = events[:i] + events[i + 1 :]
    # (and a payload only it referenced, which the bundle would show referenced by nothing)
    bodies = [json.loads(base64.b64decode(e["event"]["payload"])) for e in bundle["events"]]
    referenced = {b.get(k) for b in bodies for k in ("data_hash", "input_hash", "output_hash")}
    bundle["payloads"] = [p for p in bundle["payloads"] if p["hash"] in referenced]
    out.write_text(json.dumps(bundle, indent=1) + "\n")
    proc = _verify(work, str(out), "--public-key", pub)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 token(s) have events in it that do not follow one another" in proc.stderr, proc.stderr


def test_a_row_bundle_holds_the_runs_settings_and_is_held_to_them(db: Database, tmp_path: Path) -> None:
    """A row's bundle (format 3) holds the run's settings events, proved in the signed tree as its
    events are: taken out, the bundle is refused; said to be format 2 as well, it verifies with a
    note that a step that kept the data cannot be told. One that is not a settings event, or a
    first one that is not the run's creation, is refused."""
    work, run_id = _run(db, tmp_path, "gate_routing")
    pub = str(work / ".elspeth" / "keys" / "default.pub")
    out = tmp_path / "row1.json"
    assert elspeth("prove", run_id, "--row", "1", "-o", str(out), cwd=work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    assert bundle["format"] == 4 and [s["event"]["event_type"] for s in bundle["settings"]] == ["RunCreated"]
    tokens_only = [e for e in bundle["events"] if e["event"]["machine"] == "token"]  # (as before format 4)
    proc = _verify(work, str(out), "--public-key", pub)
    assert proc.returncode == 0 and "made before format 3" not in proc.stderr, proc.stdout + proc.stderr

    def verified(**changes: object) -> subprocess.CompletedProcess[str]:
        out.write_text(json.dumps({**bundle, **changes}, indent=1) + "\n")
        return _verify(work, str(out), "--public-key", pub)

    err = one_line_error(verified(settings=[]), 1)
    assert "a row's bundle of format 4 holds the run's settings events; this one holds none" in err, err
    older = verified(settings=[], format=2, events=tokens_only)
    assert older.returncode == 0 and "made before format 3" in older.stderr, older.stdout + older.stderr
    err = one_line_error(verified(format=2, events=tokens_only), 1)
    assert "the proof bundle is format 2, which holds no settings events (format 3 on), yet holds some" in err
    err = one_line_error(verified(settings=bundle["events"][:1]), 1)
    assert f"settings event seq {bundle['events'][0]['event']['seq']} is a TokenCreated that gives no settings" in err
    forged = json.loads(json.dumps(bundle["settings"][0]))
    forged["event"]["payload"] = forged["event"]["payload"][:-4] + "AAAA"
    err = one_line_error(verified(settings=[forged]), 1)
    assert "the event body does not match its payload hash" in err, err


def test_prove_of_a_row_past_the_end_names_the_row_asked_for(db: Database, fork: Exported, tmp_path: Path) -> None:
    rows = json.loads(elspeth("show", fork.run_id, "--json", cwd=fork.work, db=db).stdout)["rows"]["in"]
    err = one_line_error(elspeth("prove", fork.run_id, "--row", str(rows + 1), "-o", str(tmp_path / "x.json"),
                                 cwd=fork.work, db=db), 1)  # fmt: skip
    assert f"has no row {rows + 1} in its signed tree" in err, err


def test_a_payload_or_erasure_record_before_any_event_is_named_as_such(fork: Exported, tmp_path: Path) -> None:
    lines = fork.lines
    first_event = next(i for i, line in enumerate(lines) if line.startswith(b'{"type":"event"'))
    for kind, article in ((b"payload", "a"), (b"erased", "an")):
        moved = next(i for i, line in enumerate(lines) if line.startswith(b'{"type":"' + kind))
        err = _refused(
            fork, tmp_path, [*lines[:first_event], lines[moved], *lines[first_event:moved], *lines[moved + 1 :]]
        )
        what = "payload" if kind == b"payload" else "erasure"
        assert f"{article} {what} record of " in err and "before any event" in err, err


def test_a_bundle_reformatted_with_its_keys_in_another_order_is_read_as_a_bundle(
    db: Database, fork: Exported, tmp_path: Path
) -> None:
    """It was taken for an export ("its first line is not an elspeth-export header")."""
    out = tmp_path / "seq3.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    out.write_text(json.dumps(dict(reversed(bundle.items())), indent=3))
    ok = _verify(fork.work, str(out), "--public-key", str(fork.pub))
    assert ok.returncode == 0 and "event seq 3" in ok.stdout, ok.stdout + ok.stderr
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())  # a byte-order mark: refused, as a bundle
    err = one_line_error(_verify(fork.work, str(out), "--public-key", str(fork.pub)), 1)
    assert "elspeth-export header" not in err, err


def test_a_bundle_spelling_its_type_with_json_escapes_is_read_as_the_json_it_is(
    db: Database, fork: Exported, tmp_path: Path
) -> None:
    """`"\\u0065lspeth-proof"` is the string `"elspeth-proof"`: such a bundle was taken for an
    export and refused as "not an ELSPETH export". Read as a bundle, it is checked as one: a
    bundle changed in the same spelling is refused for what changed."""
    out = tmp_path / "seq3.json"
    assert elspeth("prove", fork.run_id, "--seq", "3", "-o", str(out), cwd=fork.work, db=db).returncode == 0
    text = out.read_text()
    assert text.count('"elspeth-proof"') == 1 and text.startswith('{\n "type": "elspeth-proof",'), text[:200]
    for key, value in (
        ("\\u0074ype", "elspeth-proof"),
        ("type", "\\u0065lspeth\\u002Dproof"),
        ("\\u0074ype", "\\u0065lspeth-proo\\u0066"),
    ):
        out.write_text(text.replace('"type"', f'"{key}"', 1).replace('"elspeth-proof"', f'"{value}"'))
        ok = _verify(fork.work, str(out), "--public-key", str(fork.pub))
        assert ok.returncode == 0 and "event seq 3" in ok.stdout, (key, value, ok.stdout + ok.stderr)
    bundle = json.loads(text)
    bundle["events"][0]["event"]["entity_id"] += "x"
    forged = json.dumps(bundle, indent=1).replace('"elspeth-proof"', '"\\u0065lspeth-proof"')
    out.write_text(forged)
    err = one_line_error(_verify(fork.work, str(out), "--public-key", str(fork.pub)), 1)
    assert "not an ELSPETH export" not in err and "elspeth-export header" not in err, err
    out.write_text(text.replace('"elspeth-proof"', '"\\u0065lspeth-prooF"'))  # another type: no bundle
    err = one_line_error(_verify(fork.work, str(out), "--public-key", str(fork.pub)), 1)
    assert "not an ELSPETH export" in err, err


# -- a long log's export: its chain checked by a second process ------------------------------------


def _export_in_process(db: Database, run_id: str, key: Path, out: Path) -> None:
    recorder, verifier = PostgresRecorder(db), load_verifier(key)
    checkpoints = signed_checkpoints(recorder.checkpoints(run_id), [], verifier)
    with out.open("wb") as f:
        write_export(recorder, run_id, f, origin=run_origin(recorder.store_id(), run_id), key=verifier,
                     checkpoints=checkpoints)  # fmt: skip


def test_a_long_logs_export_is_the_same_file_with_its_chain_checked_beside(
    db: Database, fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log of `SPLIT_AT` events or more is exported while a second process checks its chain:
    the very file one process writes, which `verify` passes."""
    one, split = tmp_path / "one.export", tmp_path / "split.export"
    _export_in_process(db, fork.run_id, fork.pub, one)
    monkeypatch.setattr(verify_store, "SPLIT_AT", 1)
    _export_in_process(db, fork.run_id, fork.pub, split)
    assert split.read_bytes() == one.read_bytes() == fork.file.read_bytes()


def test_a_long_logs_export_names_a_changed_event_as_one_process_does(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, run_id = _run(db, tmp_path, FORK)
    key = work / ".elspeth/keys/default.pub"
    _superuser_update(db, "UPDATE events SET entity_id = entity_id || 'x' WHERE run_id = %s AND seq = 9", (run_id,))
    found = []
    for split_at in (10**9, 1):
        monkeypatch.setattr(verify_store, "SPLIT_AT", split_at)
        with pytest.raises(ExportError) as err:
            _export_in_process(db, run_id, key, tmp_path / f"{split_at}.export")
        found.append(str(err.value))
    assert found[0] == found[1] and "does not verify at seq 9" in found[0], found


@pytest.mark.parametrize("reads", [1, 2], ids=["first-read", "every-read"])
def test_a_long_logs_export_stops_when_the_store_shows_the_chain_check_other_events(
    db: Database, fork: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: int
) -> None:
    """The events written must be the ones whose chain was checked: a server that shows the
    writing process other events than the checking one (the second process is a fresh interpreter,
    which this patch does not reach) stops the export, whichever of its reads it forges."""
    read, forged = PostgresRecorder.read_pages, [0]

    def two_faced(self: PostgresRecorder, run_id: str, *args: object, **kwargs: object) -> Iterable[list[StoredEvent]]:
        forged[0] += 1
        for page in read(self, run_id, *args, **kwargs):  # type: ignore[arg-type]
            yield [
                msgspec.structs.replace(e, entity_id="forged") if e.seq == 5 and forged[0] <= reads else e for e in page
            ]

    monkeypatch.setattr(verify_store, "SPLIT_AT", 1)
    monkeypatch.setattr(PostgresRecorder, "read_pages", two_faced)
    with pytest.raises((ExportError, StoreError)) as err:
        _export_in_process(db, fork.run_id, fork.pub, tmp_path / "forged.export")
    if reads == 1:  # one pass over a second read finds nothing wrong: the reads differed
        assert isinstance(err.value, StoreError) and "different events" in str(err.value)
    else:
        assert "does not verify at seq 5" in str(err.value)


def test_verify_ties_an_output_file_to_its_sinks_signed_flush(fork: Exported, tmp_path: Path) -> None:
    """The auditor's question of an output file: is it what the run wrote? Its bytes up to the
    sink's last durable position hash to the sha256 the signed log records there (offline, the
    file and the export alone). A changed or cut file is refused; bytes after are counted."""
    written = (fork.work / "examples" / "fork_coalesce" / "output" / "joined.jsonl").read_bytes()
    out = tmp_path / "joined.jsonl"
    args = [str(fork.file), "--public-key", str(fork.pub)]

    def tie(*given: str) -> subprocess.CompletedProcess[str]:
        return _verify(tmp_path, *args, *[a for g in given for a in ("--sink-file", g)])

    out.write_bytes(written)
    proc = tie(f"output={out}")
    assert proc.returncode == 0, proc.stderr
    assert f"{out}: the output of sink 'output' (written as examples/fork_coalesce/output/joined.jsonl), all " \
           f"{len(written)} bytes, as the signed log records them" in proc.stdout  # fmt: skip
    out.write_bytes(written + b'{"more": 1}\n')
    err = one_line_error(tie(f"output={out}"), 1)
    assert f"{out} is not the output of sink 'output' (written as examples/fork_coalesce/output/joined.jsonl) " \
           "alone" in err and "12 bytes follow, which the run's log does not account for" in err, err  # fmt: skip
    proc = _verify(tmp_path, *args, "--sink-file", f"output={out}", "--allow-later-bytes")
    assert proc.returncode == 0 and "12 bytes follow" in proc.stdout and "--allow-later-bytes" in proc.stdout
    out.write_bytes(written.replace(b"1", b"2", 1))
    changed = tie(f"output={out}")
    err = one_line_error(changed, 1)
    assert f"{out} is not the output of sink 'output'" in err and "do not hash to the sha256" in err, err
    assert changed.stdout == ""  # (nothing said to have verified before the command fails)
    out.write_bytes(written[:-1])
    assert f"it holds {len(written) - 1} bytes, and the run made {len(written)} durable" in one_line_error(
        tie(f"output={out}"), 1
    )
    out.unlink()
    assert f"{out} does not exist; the run made {len(written)} bytes durable there" in one_line_error(
        tie(f"output={out}"), 1
    )
    err = one_line_error(tie(f"nope={out}"), 1)
    assert "made nothing durable in a sink of that name (its sinks with durable output: output)" in err, err
    assert "allowed: SINK=PATH" in one_line_error(tie("output"), 2)


ARRAY = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'v: int']}}
gates:
- name: big
  input: raw
  condition: row['v'] > 5
  routes: {'true': arr, 'false': low}
sinks:
  arr: {plugin: json, options: {path: out/arr.json, format: json}}
  low: {plugin: csv, options: {path: out/low.csv}}
"""


@pytest.fixture(scope="module")
def arrayed(db: Database, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A completed run writing a JSON array (whose closing bracket only the sink's close writes,
    after its last flush) and a CSV file, exported."""
    work = tmp_path_factory.mktemp("array")
    write_csv(work / "in.csv", ["id", "v"], [[1, 3], [2, 9], [3, 7]])
    (work / "out").mkdir()
    (work / "s.yaml").write_text(ARRAY)
    proc = elspeth("run", "-s", "s.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    return Exported(work, run_id, _export(work, db, run_id), work / ".elspeth" / "keys" / "default.pub")


def _tie(exported: Exported, tmp_path: Path, given: str, *more: str) -> subprocess.CompletedProcess[str]:
    return _verify(tmp_path, str(exported.file), "--public-key", str(exported.pub), "--sink-file", given, *more)


def test_verify_ties_a_json_array_whole_with_its_closing_bracket(arrayed: Exported, tmp_path: Path) -> None:
    """The array's closing text comes after the last signed flush: an untouched file is the
    output, whole, with no word of bytes the log does not account for (every honest file had one)."""
    written = (arrayed.work / "out" / "arr.json").read_bytes()
    assert written.endswith(b"}\n]\n"), written
    proc = _tie(arrayed, tmp_path, f"arr={arrayed.work / 'out' / 'arr.json'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"out/arr.json: the output of sink 'arr' (written as out/arr.json), whole: all {len(written) - 3} " \
           "bytes, as the signed log records them, then the 3 that close it, which its sink writes as the run " \
           "completes ('\\n]\\n')" in proc.stdout, proc.stdout  # fmt: skip
    assert "account for" not in proc.stdout + proc.stderr
    cut = tmp_path / "cut.json"
    cut.write_bytes(written[:-3])
    err = one_line_error(_tie(arrayed, tmp_path, f"arr={cut}"), 1)
    assert "of which the file holds only 0 bytes (cut after the run?)" in err, err


def test_verify_refuses_rows_forged_inside_a_json_array(arrayed: Exported, tmp_path: Path) -> None:
    """Rows inserted before the closing bracket: the signed prefix is intact, and the file is not
    what the run wrote. Refused (exit 1); `--allow-later-bytes` (a later run appending to the array
    rewrites its end in the same way) passes it, saying how many bytes the log does not cover."""
    written = (arrayed.work / "out" / "arr.json").read_bytes()
    forged = tmp_path / "forged.json"
    forged.write_bytes(written[:-3] + b',\n{"id": "999", "name": "forged"}\n]\n')
    err = one_line_error(_tie(arrayed, tmp_path, f"arr={forged}"), 1)
    assert f"{forged} is not the output of sink 'arr' (written as out/arr.json) alone: its first " \
           f"{len(written) - 3} bytes are, as the signed log records them, but the run completed, and after that " \
           "position its sink wrote only '\\n]\\n' as it closed, where the file holds 36 bytes that are not " \
           "those" in err, err  # fmt: skip
    proc = _tie(arrayed, tmp_path, f"arr={forged}", "--allow-later-bytes")
    assert proc.returncode == 0 and "the file holds 36 bytes" in proc.stdout and "allowed by" in proc.stdout


def test_verify_refuses_bytes_appended_to_a_csv_file_unless_later_runs_are_allowed(
    arrayed: Exported, tmp_path: Path
) -> None:
    """Exit 0 means the file is exactly what the run wrote: bytes after its output, which the
    log does not account for, are refused unless the auditor says a later run may have appended."""
    written = (arrayed.work / "out" / "low.csv").read_bytes()
    out = tmp_path / "low.csv"
    out.write_bytes(written)
    proc = _tie(arrayed, tmp_path, f"low={out}")
    assert proc.returncode == 0 and f"all {len(written)} bytes, as the signed log records them" in proc.stdout
    out.write_bytes(written + b"4,1\n")
    err = one_line_error(_tie(arrayed, tmp_path, f"low={out}"), 1)
    assert "4 bytes follow, which the run's log does not account for" in err and "--allow-later-bytes" in err, err
    proc = _tie(arrayed, tmp_path, f"low={out}", "--allow-later-bytes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"its first {len(written)} bytes are the output of sink 'low'" in proc.stdout
    assert "4 bytes follow, which the run's log does not account for" in proc.stdout


# The same two sinks appending to what their files hold.
APPENDING = ARRAY.replace("format: json}", "format: json, mode: append}").replace("low.csv}", "low.csv, mode: append}")


def test_verify_refuses_a_file_whose_first_bytes_the_run_did_not_write(db: Database, tmp_path: Path) -> None:
    """An append-mode sink continues what its file holds: bytes planted before the run, or an
    earlier run's rows, are tied by the digest of the file's prefix but are not the run's output.
    The signed log records where the run began writing (each sink's first flush); exit 0 must not
    call the whole file the run's, so they are refused unless the auditor allows earlier bytes,
    and then counted. A later run's export ties only its own part; the earlier run's export
    refuses the later rows unless allowed."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "s.yaml").write_text(APPENDING)
    planted = b"id,v\r\n999,1\r\n"
    (work / "out" / "low.csv").write_bytes(planted)
    runs: list[Exported] = []
    for n, rows in enumerate(([[1, 3], [2, 9]], [[3, 4], [4, 8]])):
        write_csv(work / "in.csv", ["id", "v"], rows)
        proc = elspeth("run", "-s", "s.yaml", cwd=work, db=db)
        assert proc.returncode == 0, proc.stderr
        run_id = proc.stdout.split()[1]
        exported = _export(work, db, run_id, name=f"run{n}.export")
        runs.append(Exported(work, run_id, exported, work / ".elspeth" / "keys" / "default.pub"))
    low, arr = work / "out" / "low.csv", work / "out" / "arr.json"
    first_low = len(planted) + len(b"1,3\r\n")
    assert low.read_bytes() == planted + b"1,3\r\n3,4\r\n", low.read_bytes()
    # The first run: its output of `low` follows the planted bytes; `arr` it began.
    err = one_line_error(_tie(runs[0], tmp_path, f"low={low}"), 1)
    assert f"{low} is not the output of sink 'low' (written as out/low.csv) alone: bytes {len(planted)} to " \
           f"{first_low - 1} are, as the signed log records them; it begins with the {len(planted)} bytes the file " \
           "held before the run wrote to it" in err and "--allow-earlier-bytes accepts that" in err, err  # fmt: skip
    proc = _tie(runs[0], tmp_path, f"low={low}", "--allow-earlier-bytes")
    err = one_line_error(proc, 1)  # (and the second run's row follows)
    assert "5 bytes follow, which the run's log does not account for" in err, err
    assert f"alone: bytes {len(planted)} to {first_low - 1} are, as the signed log records them, but" in err, err
    proc = _tie(runs[0], tmp_path, f"low={low}", "--allow-earlier-bytes", "--allow-later-bytes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"bytes {len(planted)} to {first_low - 1} are the output of sink 'low'" in proc.stdout, proc.stdout
    # The second run: both files begin with what the first run (and the planter) left.
    for given in (f"low={low}", f"arr={arr}"):
        err = one_line_error(_tie(runs[1], tmp_path, given), 1)
        assert "held before the run wrote to it" in err and "--allow-earlier-bytes" in err, err
    proc = _tie(runs[1], tmp_path, f"low={low}", "--allow-earlier-bytes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{low}: the output of sink 'low' (written as out/low.csv), bytes {first_low} to " \
           f"{len(low.read_bytes()) - 1}, as the signed log records them, after the {first_low} bytes the file " \
           "held before the run wrote to it" in proc.stdout and "allowed by --allow-earlier-bytes" in proc.stdout, \
           proc.stdout  # fmt: skip
    proc = _tie(runs[1], tmp_path, f"arr={arr}", "--allow-earlier-bytes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ", whole: bytes " in proc.stdout and "then the 3 that close it" in proc.stdout, proc.stdout
    # The first run's array was continued: its closing bracket went, and the second run's rows follow.
    err = one_line_error(_tie(runs[0], tmp_path, f"arr={arr}"), 1)
    assert "alone" in err and "--allow-later-bytes" in err and "--allow-earlier-bytes" not in err, err


@pytest.mark.parametrize("held", [b"[]\n", b'[\n{"id": 7, "v": 8}\n]\n'], ids=["empty-array", "array-of-rows"])
def test_an_appended_array_the_run_wrote_no_row_to_closes_as_its_sink_does(
    db: Database, tmp_path: Path, held: bytes
) -> None:
    """A review: an append-mode JSON array sink that the run sent no row continues the array its
    file held, and its close writes the bracket after what that array holds: "]" after a bare
    "[", not "\\n]" as after a row. `verify` expected "\\n]\\n" whatever the array held: the file
    exactly as the run left it ("[]\\n") was refused as "rows added before the closing text?",
    and one it never wrote ("[\\n]\\n") passed, its bracket called what the sink writes."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "s.yaml").write_text(APPENDING)
    arr = work / "out" / "arr.json"
    arr.write_bytes(held)
    write_csv(work / "in.csv", ["id", "v"], [[1, 3], [2, 4]])  # (all to `low`: none to `arr`)
    proc = elspeth("run", "-s", "s.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    assert arr.read_bytes() == held
    exported = Exported(work, run_id, _export(work, db, run_id), work / ".elspeth" / "keys" / "default.pub")
    proc = _tie(exported, tmp_path, f"arr={arr}", "--allow-earlier-bytes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ", whole: no bytes, as the signed log records them" in proc.stdout, proc.stdout
    other = tmp_path / "other.json"
    closing = b"\n]\n" if held == b"[]\n" else b"]\n"
    other.write_bytes(held[: held.rindex(b"]")].rstrip() + closing)
    err = one_line_error(_tie(exported, tmp_path, f"arr={other}", "--allow-earlier-bytes"), 1)
    assert "that are not those" in err, err
    start = len(held[: held.rindex(b"]")].rstrip())  # (where the run began, and made nothing durable after)
    assert f"alone: the run wrote none of its bytes (its first {start} are the file's before the run), as the " \
           "signed log records them, but" in err, err  # fmt: skip


def test_a_run_that_did_not_complete_closed_no_sink(tmp_path: Path) -> None:
    """A failed (or abandoned) run never closed its sinks: a closing bracket after its last flush
    is not its own."""
    from landscape.audit import ExportReport, SinkEnd, check_sink_file

    out = tmp_path / "a.json"
    out.write_bytes(b'[\n{"id": 1}\n]\n')
    digest = hashlib.sha256(b'[\n{"id": 1}').hexdigest()
    report = ExportReport(run_id="r", key="k", events=1, root=b"", checkpoints=1, payloads_included=True,
                          payloads=0, erased=0, extends=None, status="failed", ended=False,
                          sinks={"s": SinkEnd("a.json", 11, digest)})  # fmt: skip
    with pytest.raises(AuditFailure, match="the log ends the run failed: written by a run that failed as it closed"):
        check_sink_file(report, "s", out, closing=b"\n]\n")
    out.write_bytes(b'[\n{"id": 1}\n]\n{}')
    with pytest.raises(AuditFailure, match="it ends the run failed, which closes no sink"):
        check_sink_file(report, "s", out, closing=b"\n]\n")
    out.write_bytes(b'[\n{"id": 1}')
    assert "so the file lacks the '\\n]\\n' its sink writes then" in check_sink_file(report, "s", out, closing=b"\n]\n")
    out.write_bytes(b'[\n{"id": 1}\n]\n')
    completed = dataclasses.replace(report, status="completed", ended=True)
    assert ", whole: " in check_sink_file(completed, "s", out, closing=b"\n]\n")


def test_a_sink_of_no_durable_bytes_ties_no_file(tmp_path: Path) -> None:
    """The digest of no bytes is every file's: /etc/passwd was called a sink's output (a review)."""
    from landscape.audit import ExportReport, SinkEnd, check_sink_file

    empty = hashlib.sha256(b"").hexdigest()
    report = ExportReport(run_id="r", key="k", events=1, root=b"", checkpoints=1, payloads_included=True,
                          payloads=0, erased=0, extends=None, status="completed", ended=True,
                          sinks={"s": SinkEnd("o.csv", 0, empty)})  # fmt: skip
    other = tmp_path / "other.txt"
    other.write_text("anything\n")
    with pytest.raises(AuditFailure, match="the run made no bytes durable there, and the file holds 9"):
        check_sink_file(report, "s", other)
    assert "made no bytes durable: nothing to tie" in check_sink_file(report, "s", tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    assert "all 0 bytes" in check_sink_file(report, "s", tmp_path / "empty.csv")


def test_a_sinks_location_is_one_line_of_what_verify_says(tmp_path: Path) -> None:
    """A review: the location a signed `SinkFlushed` records is the key holder's text, and the
    line saying a file is the sink's output printed it as it was: a line feed in it put a line of
    theirs under the verifier's (`row payloads: … match`, or `extends the checkpoint you kept`).
    ELSPETH's own runs refuse such a path; a log its key's holder wrote need not."""
    from landscape.audit import ExportReport, SinkEnd, check_sink_file

    out = tmp_path / "o.csv"
    out.write_bytes(b"id\n1\n")
    forged = "o.csv\nextends the checkpoint you kept (kept.note, 9 events): consistency proof verified\nx"
    report = ExportReport(run_id="r", key="k", events=1, root=b"", checkpoints=1, payloads_included=True,
                          payloads=0, erased=0, extends=None, status="completed", ended=True,
                          sinks={"s": SinkEnd(forged, 5, hashlib.sha256(b"id\n1\n").hexdigest())})  # fmt: skip
    said = check_sink_file(report, "s", out)
    assert "\n" not in said and "(written as o.csv\\u000aextends the checkpoint" in said, said
    out.write_bytes(b"id\n1\n2\n")
    with pytest.raises(AuditFailure) as refused:
        check_sink_file(report, "s", out)
    assert "\n" not in str(refused.value) and "(written as o.csv\\u000aextends" in str(refused.value)


def test_a_json_array_of_no_durable_bytes_expects_no_closing_bracket(tmp_path: Path) -> None:
    """A review: a completed run whose JSON array sink received no row never opened its file, and
    its close wrote nothing; an empty file there was refused as "its sink then wrote '\\n]\\n' as it
    closed, of which the file holds only 0 bytes (cut after the run?)", where a CSV sink's empty
    file ties (no file, or an empty one, as docs/verification.md says)."""
    from landscape.audit import ExportReport, SinkEnd, check_sink_file

    empty = hashlib.sha256(b"").hexdigest()
    report = ExportReport(run_id="r", key="k", events=1, root=b"", checkpoints=1, payloads_included=True,
                          payloads=0, erased=0, extends=None, status="completed", ended=True,
                          sinks={"s": SinkEnd("a.json", 0, empty)})  # fmt: skip
    (tmp_path / "a.json").write_bytes(b"")
    said = check_sink_file(report, "s", tmp_path / "a.json", closing=b"\n]\n")
    assert said.endswith("all 0 bytes, as the signed log records them"), said
    for bracket in (b"\n]\n", b"]\n"):  # (nor is a closing text the sink never wrote taken for its own)
        (tmp_path / "a.json").write_bytes(bracket)
        with pytest.raises(AuditFailure, match="the run made no bytes durable there"):
            check_sink_file(report, "s", tmp_path / "a.json", closing=b"\n]\n")
    failed = dataclasses.replace(report, status="failed", ended=False)
    (tmp_path / "a.json").write_bytes(b"")
    said = check_sink_file(failed, "s", tmp_path / "a.json", closing=b"\n]\n")
    assert "lacks" not in said and said.endswith("all 0 bytes, as the signed log records them"), said


def test_a_fork_branch_starts_with_its_parents_data_so_a_step_before_the_fork_is_missed() -> None:
    """A review: a data-changing step before a fork, taken out of a row's bundle with its payload,
    was not told (the parent's next event is its fork, which reads no data); the branches' creation
    carries the data they were forked with, which must be what the parent held."""
    from landscape.audit import _left_out
    from landscape.records import StoredEvent
    from statecharts import events as ev

    def held(entity: str, event: ev.EventBase) -> tuple[StoredEvent, ev.EventBase]:
        kind = type(event).__name__
        return StoredEvent("r", 0, "token", entity, kind, 1, 0, b"", b"", b"", b""), event

    row = [
        held("t", ev.TokenCreated(row_index=0, data_hash="a", at="raw")),
        held("t", ev.StepCompleted(node="m", input_hash="a", output_hash="b", duration_us=1, next="c")),
        held("t", ev.TokenForked(node="g", children=["t.x", "t.y"])),
        held("t.x", ev.TokenCreated(row_index=0, data_hash="b", at="x", parents=["t"], branch="x", fork_id="t")),
        held("t.y", ev.TokenCreated(row_index=0, data_hash="b", at="y", parents=["t"], branch="y", fork_id="t")),
    ]
    assert _left_out(row, None) == 0
    assert _left_out(row[:1] + row[2:], None) == 1


@pytest.mark.parametrize(
    ("example", "kinds"),
    [
        (FORK, ["CoalesceOpened", "BranchArrived", "CoalesceMerged", "SinkFlushed"]),
        (AGG, ["BatchOpened", "BatchFlushing", "BatchCompleted", "SinkFlushed"]),
    ],
)
def test_a_row_bundle_holds_its_decisions_and_says_when_one_was_left_out(
    db: Database, tmp_path: Path, example: str, kinds: list[str]
) -> None:
    """A row's bundle (format 4) holds, beside its tokens' events, every event of each coalesce and
    batch its tokens were held or buffered in (merged or failed on which trigger, with which
    branches missing; flushed on which trigger) and the flush of each sink they were written to
    (where in the file, its hash): what was decided about the row is proved, not only what
    happened to its tokens. Any one of them taken out is told; one of another row's is refused."""
    work, run_id = _run(db, tmp_path, example)
    pub = str(work / ".elspeth" / "keys" / "default.pub")
    out, other = tmp_path / "row1.json", tmp_path / "row12.json"
    assert elspeth("prove", run_id, "--row", "1", "-o", str(out), cwd=work, db=db).returncode == 0
    assert elspeth("prove", run_id, "--row", "12", "-o", str(other), cwd=work, db=db).returncode == 0
    whole = _verify(work, str(out), "--public-key", pub)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    # Each kind counted, in the number its count takes ("1 coalesce(s), batch(es) and sink flush(es)" was
    # said of one coalesce and no batch: a documentation review).
    held_kind = "1 coalesce" if example == FORK else "1 batch"
    said = re.search(rf"with {held_kind} and ([0-9]+) sink (flush|flushes) of the row's tokens\n", whole.stdout)
    assert said and (said.group(1) == "1") == (said.group(2) == "flush"), whole.stdout
    assert "not whole in it" not in whole.stderr and "format 4" not in whole.stderr, whole.stderr
    bundle = json.loads(out.read_text())
    events = bundle["events"]
    held = [e["event"]["event_type"] for e in events]
    for kind in kinds:
        assert kind in held, (kind, held)
        i = held.index(kind)
        out.write_text(json.dumps({**bundle, "events": events[:i] + events[i + 1 :]}, indent=1) + "\n")
        proc = _verify(work, str(out), "--public-key", pub)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 coalesce, batch or sink flush its tokens' events call for is not whole in it" in (proc.stderr), (
            kind,
            proc.stderr,
        )
    # Another row's coalesce or batch (row 12 is in another batch of 5): not the row's.
    theirs = [
        e for e in json.loads(other.read_text())["events"]
        if e["event"]["machine"] in ("coalesce", "batch")
    ]  # fmt: skip
    seqs = {e["event"]["seq"] for e in events}
    foreign = next(e for e in theirs if e["event"]["seq"] not in seqs)
    mixed = sorted([*events, foreign], key=lambda e: e["event"]["seq"])
    out.write_text(json.dumps({**bundle, "events": mixed}, indent=1) + "\n")
    err = one_line_error(_verify(work, str(out), "--public-key", pub), 1)
    assert f"event seq {foreign['event']['seq']} is not of a token of row 1's lineage, nor of its decisions" in err


def test_a_row_bundle_of_format_3_holds_no_decisions_and_verify_says_so(db: Database, tmp_path: Path) -> None:
    work, run_id = _run(db, tmp_path, FORK)
    pub = str(work / ".elspeth" / "keys" / "default.pub")
    out = tmp_path / "row1.json"
    assert elspeth("prove", run_id, "--row", "1", "-o", str(out), cwd=work, db=db).returncode == 0
    bundle = json.loads(out.read_text())
    tokens_only = [e for e in bundle["events"] if e["event"]["machine"] == "token"]
    out.write_text(json.dumps({**bundle, "format": 3, "events": tokens_only}, indent=1) + "\n")
    proc = _verify(work, str(out), "--public-key", pub)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "made before format 4, it holds no coalesce, batch or sink flush of its tokens" in proc.stderr
    # and a format-3 bundle that holds one is refused: it cannot be a row's decisions there
    out.write_text(json.dumps({**bundle, "format": 3}, indent=1) + "\n")
    err = one_line_error(_verify(work, str(out), "--public-key", pub), 1)
    assert "is not of a token of row 1's lineage, nor of its decisions" in err, err
