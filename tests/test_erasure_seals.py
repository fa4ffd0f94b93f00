"""Signed erasures (landscape/seal.py, migration 0012), attacked as the owner of the store or a
superuser would: someone who can write any table (past its triggers) but not sign with the key
of the runs. An erasure record explains a missing payload only when a seal of its run, signed by
that key, holds exactly the records that name it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.chain import GENESIS, event_hash
from landscape.checkpoint import Checkpoint, CheckpointError, parse_checkpoint, run_origin
from landscape.db import Connection, Database
from landscape.erasure import erase, plan_retention
from landscape.export import End, SealRecord, encode
from landscape.keys import load_verifier
from landscape.merkle import HASH_SIZE
from landscape.note import NoteError, Signer, Verifier, parse_note
from landscape.postgres import PostgresRecorder
from landscape.records import Erasure, Sealed
from landscape.seal import HEAD, Seal, Verdict, open_seal, parse_seal, seal_of, sign, unsealed, why_not_sealed
from tests.test_cli import ROOT, elspeth, one_line_error

# ---------------------------------------------------------------------------------------------
# Helpers


def _example(db: Database, folder: Path) -> str:
    """The fork/coalesce example run from `folder` (its home, so its key: `folder/.elspeth`); its
    run id. Run again from the same folder: another run signed by the same key."""
    if not (folder / "examples").exists():
        shutil.copytree(ROOT / "examples" / "fork_coalesce", folder / "examples" / "fork_coalesce")
    proc = elspeth("run", "-s", "examples/fork_coalesce/settings.yaml", cwd=folder, db=db)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[1]


@pytest.fixture
def fork_run(db: Database, tmp_path: Path) -> tuple[Path, str]:
    """A completed run of its own (each tampering test spoils only its own run)."""
    return tmp_path, _example(db, tmp_path)


def _home_key(work: Path) -> Verifier:
    return load_verifier(work / ".elspeth" / "keys" / "default.pub")


def _origin(db: Database, run_id: str) -> str:
    return run_origin(PostgresRecorder(db).store_id(), run_id)


def _row_payload(db: Database, run_id: str, row_index: int) -> bytes:
    """The hash of a source row's payload (row_index counts from 0; the CLI's --row from 1)."""
    with db.connect() as conn:
        found = conn.execute(
            "SELECT decode(data_hash, 'hex') FROM rows WHERE run_id = %s AND row_index = %s", (run_id, row_index)
        ).fetchone()
    assert found is not None
    return bytes(found[0])


def _payloads(db: Database, run_id: str) -> int:
    with db.connect() as conn:
        found = conn.execute("SELECT count(*) FROM payloads WHERE run_id = %s", (run_id,)).fetchone()
    assert found is not None
    return int(found[0])


def _records(db: Database, run_id: str) -> list[tuple[Erasure, int | None]]:
    """Every erasure record of the run as the store holds it, with the seal it names."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT hash, run_id, row_index, kind, reason, erased_at, erased_by, seal_id FROM erasures "
            "WHERE run_id = %s ORDER BY id",
            (run_id,),
        ).fetchall()
    return [
        (Erasure(hash=bytes(r[0]).hex(), run_id=r[1], row_index=r[2], kind=r[3], reason=r[4], erased_at=r[5],
                 erased_by=r[6]), r[7])
        for r in rows
    ]  # fmt: skip


def _seals(db: Database, run_id: str) -> dict[int, str]:
    """The run's seals: id -> note."""
    with db.connect() as conn:
        return dict(conn.execute("SELECT id, note FROM erasure_seals WHERE run_id = %s ORDER BY id", (run_id,)))


def _purge(work: Path, db: Database, run_id: str, *rows: int, reason: str = "GDPR art. 17 request #42") -> None:
    args = [a for r in rows for a in ("--row", str(r))]
    proc = elspeth("purge", run_id, *args, "--reason", reason, cwd=work, db=db)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _check_passes(work: Path, db: Database, run_id: str, env: dict[str, str] | None = None) -> None:
    replay = elspeth("replay", run_id, "--check", cwd=work, db=db, env=env)
    assert replay.returncode == 0 and "projections agree" in replay.stdout, replay.stdout + replay.stderr


def _check_fails(work: Path, db: Database, run_id: str, env: dict[str, str] | None = None) -> str:
    """`replay --check` fails with one line (no traceback) on stderr; that line. (Without a key,
    a warning may come before it: the last line.)"""
    err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db, env=env), 1)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and (env is not None or len(lines) == 1), err
    return lines[-1]


def _unsigned(db: Database, run_id: str, key: Verifier | None) -> dict[str, str]:
    """What `landscape.seal.unsealed` says of every erasure record of the run the store holds."""
    recorder = PostgresRecorder(db)
    erased = recorder.erasures(run_id, [e.hash for e, _s in _records(db, run_id)])
    seals = recorder.erasure_seals(e.seal_id for e in erased.values() if e.seal_id is not None)
    return unsealed(erased, seals, key, recorder.store_id())


def _as_attacker(conn: Connection, table: str, sql: str, args: tuple[object, ...] = ()) -> int:
    """Run `sql` past `table`'s own triggers (append-only, delete-only-erased), as a superuser or
    the owner can, in one transaction: no other session ever sees the triggers off."""
    conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    n = conn.execute(sql, args).rowcount
    conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    return n


def _forge(
    db: Database, run_id: str, row_index: int, *, seal_id: int | None = None, reason: str = "GDPR request #7"
) -> bytes:
    """Delete the payload of a source row, after inserting an erasure record for it (so the delete
    trigger lets it go) naming `seal_id`. The payload's hash."""
    h = _row_payload(db, run_id, row_index)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, seal_id) "
            "VALUES (%s, %s, %s, 'request', %s, now(), %s)",
            (h, run_id, row_index, reason, seal_id),
        )
        assert conn.execute("DELETE FROM payloads WHERE run_id = %s AND hash = %s", (run_id, h)).rowcount == 1
        conn.commit()
    return h


def _forge_sealed(db: Database, run_id: str, row_index: int, note_of: Callable[[Erasure], str]) -> tuple[bytes, str]:
    """Delete a row's payload with a record under a seal of the attacker's making: `note_of(record)`
    gives the seal's note, over the record exactly as the store will hold it (its time and role
    are the transaction's, read first, as purge does). The payload's hash and the note."""
    h = _row_payload(db, run_id, row_index)
    with db.connect() as conn:
        stamp = conn.execute("SELECT now(), current_user").fetchone()
        assert stamp is not None
        record = Erasure(hash=h.hex(), run_id=run_id, row_index=row_index, kind="request", reason="GDPR request #9",
                         erased_at=stamp[0], erased_by=stamp[1])  # fmt: skip
        note = note_of(record)
        found = conn.execute(
            "INSERT INTO erasure_seals (run_id, note) VALUES (%s, %s) RETURNING id", (run_id, note)
        ).fetchone()
        assert found is not None
        conn.execute(
            "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, seal_id) "
            "VALUES (%s, %s, %s, %s, %s, now(), %s)",
            (h, run_id, row_index, record.kind, record.reason, found[0]),
        )
        assert conn.execute("DELETE FROM payloads WHERE run_id = %s AND hash = %s", (run_id, h)).rowcount == 1
        conn.commit()
    # What the store holds is exactly what was sealed: only the key can be wrong.
    stored = [e for e, seal in _records(db, run_id) if seal == found[0]]
    assert [e.digest() for e in stored] == [record.digest()]
    return h, note


def _write_key(path: Path, text: str, mode: int) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# 1. A genuine purge is sealed, and replay --check counts it


def test_a_purge_seals_its_records_and_replay_check_counts_them(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    before = _payloads(db, run_id)
    _purge(work, db, run_id, 4, 2)
    _check_passes(work, db, run_id)
    records = _records(db, run_id)
    seals = _seals(db, run_id)
    assert len(records) == before - _payloads(db, run_id) > 1
    # One seal for the one purge; every record of the run names it.
    assert len(seals) == 1 and {seal for _e, seal in records} == set(seals)
    (note,) = seals.values()
    origin = _origin(db, run_id)
    seal = parse_seal(parse_note(note).text)
    assert seal.origin == origin and seal.size == len(records)
    key = _home_key(work)
    assert [s.label for s in parse_note(note).signatures] == [key.label]
    assert open_seal(note, key, origin) == seal
    # Over the records exactly as the store holds them (read back here, not by the product).
    assert why_not_sealed(note, [e.digest() for e, _s in records], key, origin) is None
    assert why_not_sealed(note, [e.digest() for e, _s in records[1:]], key, origin) is not None
    assert _unsigned(db, run_id, key) == {} == _unsigned(db, run_id, None)


def test_each_purge_of_a_run_writes_a_seal_of_its_own_and_both_count(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    _purge(work, db, run_id, 4, reason="ticket 1")
    _purge(work, db, run_id, 2, reason="ticket 2")
    seals = _seals(db, run_id)
    assert len(seals) == 2
    records = _records(db, run_id)
    by_seal = {sid: {e.reason for e, s in records if s == sid} for sid in seals}
    assert sorted(map(sorted, by_seal.values())) == [["ticket 1"], ["ticket 2"]]
    key, origin = _home_key(work), _origin(db, run_id)
    for sid, note in seals.items():
        assert why_not_sealed(note, [e.digest() for e, s in records if s == sid], key, origin) is None
    _check_passes(work, db, run_id)


# ---------------------------------------------------------------------------------------------
# 2-6. The attacker deletes a payload and writes a record that would explain it


def test_a_forged_record_that_names_no_seal_does_not_count(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    _check_passes(work, db, run_id)
    h = _forge(db, run_id, 1)
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line and "is gone" in line, line
    assert "its erasure record does not count: it is signed by nothing" in line, line


def test_unsigned_erasures_takes_a_record_no_seal_signs_on_the_stores_word_and_says_so(
    db: Database, fork_run: tuple[Path, str]
) -> None:
    """A record from before purge signed them looks like a forged one with no seal: refused by
    every check, unless the reader says to take such records (`--unsigned-erasures`); then each
    check passes, counts them and warns. A record under a broken seal is refused all the same."""
    work, run_id = fork_run
    h = _forge(db, run_id, 1)
    pub = str(work / ".elspeth/keys/default.pub")
    export, bundle = work / "old.export", work / "row2.json"
    line = one_line_error(elspeth("export", run_id, "-o", str(export), cwd=work, db=db), 1)
    assert h.hex() in line and "signed by nothing" in line and "--unsigned-erasures" in line, line
    line = one_line_error(elspeth("prove", run_id, "--row", "2", "-o", str(bundle), cwd=work, db=db), 1)
    assert h.hex() in line and "signed by nothing" in line, line
    assert "--unsigned-erasures" in _check_fails(work, db, run_id)
    shown = elspeth("explain", run_id, "--row", "2", cwd=work, db=db)
    assert shown.returncode == 0 and "DATA MISSING" in shown.stdout and "signed by nothing" in shown.stdout, shown
    shown = elspeth("explain", run_id, "--row", "2", "--unsigned-erasures", cwd=work, db=db)
    assert "DATA MISSING" not in shown.stdout and "signed by no seal: taken on the store's word" in shown.stdout, shown

    warning = "1 erasure record(s) signed by no seal, taken on the store's word"
    replay = elspeth("replay", run_id, "--check", "--unsigned-erasures", cwd=work, db=db)
    assert replay.returncode == 0 and warning in replay.stderr, replay.stdout + replay.stderr
    as_json = elspeth("replay", run_id, "--unsigned-erasures", "--json", cwd=work, db=db)
    assert '"erased_unsigned": 1' in as_json.stdout, as_json.stdout + as_json.stderr
    made = elspeth("export", run_id, "-o", str(export), "--unsigned-erasures", cwd=work, db=db)
    assert made.returncode == 0 and warning in made.stderr, made.stdout + made.stderr
    line = one_line_error(elspeth("verify", str(export), "--public-key", pub, cwd=work), 1)
    assert "this erasure record is signed by no seal" in line and ", line " in line, line
    checked = elspeth("verify", str(export), "--public-key", pub, "--unsigned-erasures", cwd=work)
    assert checked.returncode == 0 and warning in checked.stderr, checked.stdout + checked.stderr
    made = elspeth("prove", run_id, "--row", "2", "-o", str(bundle), "--unsigned-erasures", cwd=work, db=db)
    assert made.returncode == 0 and warning in made.stderr, made.stdout + made.stderr
    line = one_line_error(elspeth("verify", str(bundle), "--public-key", pub, cwd=work), 1)
    assert h.hex() in line and "signed by no seal" in line, line
    checked = elspeth("verify", str(bundle), "--public-key", pub, "--unsigned-erasures", cwd=work)
    assert checked.returncode == 0 and warning in checked.stderr, checked.stdout + checked.stderr

    # A genuine purge, then one of its sealed records changed: no flag makes that count.
    _purge(work, db, run_id, 3)
    with db.connect() as conn:
        _as_attacker(conn, "erasures", "UPDATE erasures SET reason = 'x' WHERE run_id = %s AND seal_id IS NOT NULL",
                     (run_id,))  # fmt: skip
        conn.commit()
    line = one_line_error(elspeth("replay", run_id, "--check", "--unsigned-erasures", cwd=work, db=db), 1)
    assert "changed, added or removed" in line, line
    line = one_line_error(elspeth("export", run_id, "-o", str(work / "b.export"), "--unsigned-erasures", cwd=work,
                                  db=db), 1)  # fmt: skip
    assert "changed, added or removed" in line, line


def test_a_forged_record_of_no_run_does_not_count(db: Database, fork_run: tuple[Path, str]) -> None:
    """A record without a run is read for any run's payload (a retention from before payloads
    had a run): one the attacker writes explains nothing either."""
    work, run_id = fork_run
    h = _row_payload(db, run_id, 1)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at) "
            "VALUES (%s, NULL, NULL, 'retention', 'retention RP-1', now())",
            (h,),
        )
        # The delete trigger asks for a record of the payload's run: past it.
        assert _as_attacker(conn, "payloads", "DELETE FROM payloads WHERE run_id = %s AND hash = %s", (run_id, h)) == 1
        conn.commit()
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line and "it is signed by nothing" in line, line


def test_a_forged_record_naming_a_genuine_seal_of_its_run_breaks_that_seal(
    db: Database, fork_run: tuple[Path, str]
) -> None:
    work, run_id = fork_run
    _purge(work, db, run_id, 4)
    (seal_id,) = _seals(db, run_id)
    genuine = len(_records(db, run_id))
    # Row 1: its payload is referenced before row 4's, so it is the one the finding names.
    h = _forge(db, run_id, 0, seal_id=seal_id)
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line, line
    assert f"its seal signs {genuine} record(s)" in line and f"{genuine + 1}" in line, line
    assert "changed, added or removed" in line, line


# Each is one change to one record of a genuine seal, as the owner (past the append-only trigger).
TAMPERING = {
    "reason": "UPDATE erasures SET reason = reason || ' (and more)' WHERE id = {first}",
    "erased_at": "UPDATE erasures SET erased_at = erased_at + interval '1 microsecond' WHERE id = {first}",
    "erased_by": "UPDATE erasures SET erased_by = 'elspeth_writer' WHERE id = {first}",
    "kind": "UPDATE erasures SET kind = 'retention' WHERE id = {first}",
    "row_index": "UPDATE erasures SET row_index = 0 WHERE id = {first}",
    "hash": "UPDATE erasures SET hash = decode(md5('x') || md5('y'), 'hex') WHERE id = {first}",
    "unsealed": "UPDATE erasures SET seal_id = NULL WHERE id = {first}",
    "deleted": "DELETE FROM erasures WHERE id = {first}",
    "duplicated": "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, erased_by, seal_id) "
    "SELECT hash, run_id, row_index, kind, reason, erased_at, erased_by, seal_id FROM erasures WHERE id = {first}",
}


@pytest.mark.parametrize("change", sorted(TAMPERING))
def test_any_change_to_a_sealed_record_is_found(db: Database, fork_run: tuple[Path, str], change: str) -> None:
    work, run_id = fork_run
    _purge(work, db, run_id, 4)
    key = _home_key(work)
    assert _unsigned(db, run_id, key) == {}
    with db.connect() as conn:
        first = conn.execute("SELECT min(id) FROM erasures WHERE run_id = %s", (run_id,)).fetchone()
        assert first is not None
        assert _as_attacker(conn, "erasures", TAMPERING[change].format(first=int(first[0]))) == 1
        conn.commit()
    # Not one record the store now holds for the run counts: the verifier cannot tell which changed.
    records = _records(db, run_id)
    assert set(_unsigned(db, run_id, key)) == {e.hash for e, _s in records}
    line = _check_fails(work, db, run_id)
    assert "its erasure record does not count" in line or "missing from the payloads" in line, line
    # Without a key a record signed by nothing is the store's word, but a broken seal is not.
    under_a_seal = {e.hash for e, s in records if s is not None}
    assert under_a_seal and under_a_seal <= set(_unsigned(db, run_id, None))
    line = _check_fails(work, db, run_id, env={"ELSPETH_HOME": str(work / "keyless-home")})
    assert "changed, added or removed" in line or "missing from the payloads" in line, line


@pytest.mark.parametrize("name", ["attacker", "the home key's name"])
def test_a_seal_signed_with_the_attackers_own_key_does_not_verify(
    db: Database, fork_run: tuple[Path, str], name: str
) -> None:
    """A seal perfect in every part but its key (even one under the home key's name) counts for nothing."""
    work, run_id = fork_run
    key, origin = _home_key(work), _origin(db, run_id)
    attacker = Signer.generate(key.name if name == "the home key's name" else name)
    h, note = _forge_sealed(db, run_id, 1, lambda e: sign(attacker, origin, [e.digest()]))
    (sid,) = _seals(db, run_id)
    # With the attacker's key it would be a seal of exactly that record.
    digests = [e.digest() for e, s in _records(db, run_id) if s == sid]
    assert why_not_sealed(note, digests, attacker.verifier, origin) is None
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line, line
    assert "its erasure record does not count: its seal does not verify" in line, line
    assert f"not signed by {key.label}" in line, line


def test_a_checkpoint_note_of_the_run_is_no_seal(db: Database, fork_run: tuple[Path, str]) -> None:
    """The store holds notes the run's key signed with the run's origin: its checkpoints. One of
    them put where a seal goes is a signature of the right key, and still no seal."""
    work, run_id = fork_run
    with db.connect() as conn:
        found = conn.execute("SELECT note FROM checkpoints WHERE run_id = %s LIMIT 1", (run_id,)).fetchone()
    assert found is not None
    checkpoint = found[0]
    h, _note = _forge_sealed(db, run_id, 1, lambda _e: checkpoint)
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line and "its seal does not verify" in line, line


def test_a_seal_of_another_run_does_not_count(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    other = _example(db, work)  # signed by the same key
    _purge(work, db, other, 4)
    (other_seal,) = _seals(db, other)
    assert _unsigned(db, other, _home_key(work)) == {}
    # Named as it is.
    h = _forge(db, run_id, 1, seal_id=other_seal)
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line and f"the seal it names is of run {other}" in line, line
    # And the other run's seal now holds a record that is not its own: its genuine records no
    # longer count either (the verifier cannot tell which record was added).
    assert "changed, added or removed" in _check_fails(work, db, other)


def test_a_seal_note_of_another_run_copied_under_this_one_does_not_count(
    db: Database, fork_run: tuple[Path, str]
) -> None:
    """Signed by the right key, over exactly the record it is put on, but of another run."""
    work, run_id = fork_run
    other = _example(db, work)
    key, origin = _home_key(work), _origin(db, other)
    # What the attacker cannot make (it takes the key): a seal of the other run over this record,
    # as the key's holder might sign for a purge of the other run. Made here with the real key.
    home = Signer.parse((work / ".elspeth" / "keys" / "default.key").read_text().strip())
    assert home.verifier == key
    h, _note = _forge_sealed(db, run_id, 1, lambda e: sign(home, origin, [e.digest()]))
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line and "its seal does not verify" in line, line
    assert f"the seal is of {origin!r}, not {_origin(db, run_id)!r}" in line, line


def test_a_record_naming_a_seal_that_is_not_there_does_not_count(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    h = _row_payload(db, run_id, 1)
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")  # past the foreign key and the triggers
        conn.execute(
            "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, erased_by, seal_id) "
            "VALUES (%s, %s, 1, 'request', 'x', now(), current_user, 9223372036854775807)",
            (h, run_id),
        )
        conn.execute("DELETE FROM payloads WHERE run_id = %s AND hash = %s", (run_id, h))
        conn.commit()
    line = _check_fails(work, db, run_id)
    assert f"row payload {h.hex()}" in line and "the seal it names is not in the store" in line, line


# ---------------------------------------------------------------------------------------------
# 7. No key to sign with, or another than the runs'


def test_purge_without_a_key_to_sign_with_erases_nothing(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    fresh = work / "fresh-home"
    before = _payloads(db, run_id)
    err = one_line_error(
        elspeth("purge", run_id, "--row", "4", "--reason", "ticket 3", cwd=work, db=db,
                env={"ELSPETH_HOME": str(fresh)}), 1)  # fmt: skip
    assert len(err.strip().splitlines()) == 1, err
    assert "purge signs the erasure records" in err and "ELSPETH_SIGNING_KEY" in err, err
    assert _payloads(db, run_id) == before and _records(db, run_id) == [] and _seals(db, run_id) == {}
    assert not (fresh / "keys").exists(), "purge made a key that vouches for nothing"
    # A public key checks the run's end, but signs nothing: still refused. A dry run signs nothing.
    pub = str(work / ".elspeth" / "keys" / "default.pub")
    err = one_line_error(elspeth("purge", run_id, "--row", "4", "--reason", "ticket 3", "--public-key", pub,
                                 cwd=work, db=db, env={"ELSPETH_HOME": str(fresh)}), 1)  # fmt: skip
    assert "purge signs the erasure records" in err, err
    dry = elspeth("purge", run_id, "--row", "4", "--dry-run", "--public-key", pub, cwd=work, db=db,
                  env={"ELSPETH_HOME": str(fresh)})  # fmt: skip
    assert dry.returncode == 0 and "would erase" in dry.stdout, dry.stdout + dry.stderr
    # ...but says that the purge itself would be refused, and why (it promised it, found a review).
    assert "but purge without --dry-run would erase nothing here: purge signs the erasure records" in dry.stdout
    # Nor does retention go on without one.
    err = one_line_error(
        elspeth("purge", "--older-than", "0s", "--reason", "RP-1", cwd=work, db=db, env={"ELSPETH_HOME": str(fresh)}),
        1,
    )
    assert "purge signs the erasure records" in err, err
    assert _payloads(db, run_id) == before


def test_purge_refuses_a_public_key_that_is_not_the_signing_key(
    db: Database, fork_run: tuple[Path, str], tmp_path: Path
) -> None:
    work, run_id = fork_run
    before = _payloads(db, run_id)
    other = Signer.generate("other")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    other_pub = _write_key(keys / "other.pub", other.verifier.text(), 0o644)
    other_key = _write_key(keys / "other.key", other.text(), 0o600)
    err = one_line_error(elspeth("purge", run_id, "--row", "4", "--reason", "t", "--public-key", str(other_pub),
                                 cwd=work, db=db), 1)  # fmt: skip
    assert len(err.strip().splitlines()) == 1, err
    assert f"would be signed by {_home_key(work).label}" in err and other.verifier.label in err, err
    # ELSPETH_SIGNING_KEY's key signs: checked against the home's public key, refused the same way.
    home_pub = str(work / ".elspeth" / "keys" / "default.pub")
    err = one_line_error(elspeth("purge", run_id, "--row", "4", "--reason", "t", "--public-key", home_pub,
                                 cwd=work, db=db, env={"ELSPETH_SIGNING_KEY": str(other_key)}), 1)  # fmt: skip
    assert f"would be signed by {other.verifier.label}" in err, err
    # A dry run plans, and says that the purge itself would be refused (it promised it, found a review).
    dry = elspeth("purge", run_id, "--row", "4", "--dry-run", "--public-key", home_pub, cwd=work, db=db,
                  env={"ELSPETH_SIGNING_KEY": str(other_key)})  # fmt: skip
    assert dry.returncode == 0 and "would erase" in dry.stdout, dry.stdout + dry.stderr
    assert f"would erase nothing here: the erasure records would be signed by {other.verifier.label}" in dry.stdout
    # A key file purge cannot sign with (a .pub named as the signing key) refuses the purge, and a
    # dry run still plans, saying why (it failed whole since the dry run asked for the key: a review).
    pub_as_key = {"ELSPETH_SIGNING_KEY": home_pub}
    err = one_line_error(elspeth("purge", run_id, "--row", "4", "--reason", "t", "--public-key", home_pub,
                                 cwd=work, db=db, env=pub_as_key), 1)  # fmt: skip
    assert "a signing key starts with" in err, err
    dry = elspeth("purge", run_id, "--row", "4", "--dry-run", "--public-key", home_pub, cwd=work, db=db, env=pub_as_key)
    assert dry.returncode == 0 and "would erase" in dry.stdout, dry.stdout + dry.stderr
    assert "would erase nothing here: signing key" in dry.stdout, dry.stdout
    assert _payloads(db, run_id) == before and _records(db, run_id) == [] and _seals(db, run_id) == {}


def test_elspeth_signing_key_signs_the_seal_when_set(db: Database, fork_run: tuple[Path, str], tmp_path: Path) -> None:
    """The run's own key named by ELSPETH_SIGNING_KEY, from a home that has none: the seal is its."""
    work, run_id = fork_run
    keys = tmp_path / "named"
    keys.mkdir(mode=0o700)
    copy = _write_key(keys / "run.key", (work / ".elspeth" / "keys" / "default.key").read_text().strip(), 0o600)
    env = {"ELSPETH_HOME": str(tmp_path / "empty-home"), "ELSPETH_SIGNING_KEY": str(copy)}
    proc = elspeth("purge", run_id, "--row", "4", "--reason", "ticket 5", cwd=work, db=db, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (note,) = _seals(db, run_id).values()
    assert [s.label for s in parse_note(note).signatures] == [_home_key(work).label]
    _check_passes(work, db, run_id)


# ---------------------------------------------------------------------------------------------
# 8. Retention


def test_retention_writes_one_seal_per_run_and_replay_check_counts_it(db: Database, tmp_path: Path) -> None:
    runs = {name: _example(db, tmp_path) for name in ("a", "b", "young")}  # (one home, one key)
    old = {name: _payloads(db, run) for name, run in runs.items()}
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with db.connect() as conn:  # a and b were written long ago
        for name in ("a", "b"):
            assert _as_attacker(conn, "payloads", "UPDATE payloads SET recorded_at = %s WHERE run_id = %s",
                                (long_ago, runs[name])) == old[name] > 0  # fmt: skip
        conn.commit()
    proc = elspeth("purge", "--older-than", "365d", "--reason", "retention RP-3", cwd=tmp_path, db=db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _payloads(db, runs["young"]) == old["young"] and _seals(db, runs["young"]) == {}
    for name in ("a", "b"):
        run = runs[name]
        assert _payloads(db, run) == 0
        seals, records = _seals(db, run), _records(db, run)
        assert len(seals) == 1 and len(records) == old[name], (seals, len(records))
        ((sid, note),) = seals.items()
        assert {s for _e, s in records} == {sid}
        assert {(e.kind, e.reason, e.row_index) for e, _s in records} == {("retention", "retention RP-3", None)}
        origin = _origin(db, run)
        assert parse_seal(parse_note(note).text) == seal_of(origin, [e.digest() for e, _s in records])
        _check_passes(tmp_path, db, run)


def test_a_long_runs_retention_goes_in_parts_each_with_a_seal_of_its_own(
    db: Database, fork_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded: `RETENTION_PART` payloads a transaction, each part sealed."""
    from landscape import erasure

    work, run_id = fork_run
    n = _payloads(db, run_id)
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with db.connect() as conn:
        _as_attacker(conn, "payloads", "UPDATE payloads SET recorded_at = %s WHERE run_id = %s", (long_ago, run_id))
        conn.commit()
    monkeypatch.setattr(erasure, "RETENTION_PART", 7)
    plan = plan_retention(db, long_ago + timedelta(days=1), verifier=_home_key(work))
    assert plan.counts == {run_id: n}, plan.counts
    home = Signer.parse((work / ".elspeth" / "keys" / "default.key").read_text().strip())
    assert erase(db, plan, "retention RP-5", signer=home) == n
    seals, records = _seals(db, run_id), _records(db, run_id)
    assert len(seals) == -(-n // 7) and len(records) == n and _payloads(db, run_id) == 0
    assert all(sum(s == sid for _e, s in records) <= 7 for sid in seals)
    _check_passes(work, db, run_id)


def test_retention_of_payloads_kept_before_they_had_a_run_is_sealed_under_the_stores_no_run_origin(
    db: Database, fork_run: tuple[Path, str]
) -> None:
    """A store upgraded past migration 0007 holds its older payloads under run '', and their
    erasure records name no run: sealed under `elspeth/<store>/*`, they count online and offline.
    (Erased in process, forced: other runs of this module, signed by other keys, would keep them
    otherwise.)"""
    work, run_id = fork_run
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with db.connect() as conn:
        n = _as_attacker(conn, "payloads", "UPDATE payloads SET run_id = '', recorded_at = %s WHERE run_id = %s",
                         (long_ago, run_id))  # fmt: skip
        conn.commit()
    assert n > 0
    _check_passes(work, db, run_id)
    key = _home_key(work)
    plan = plan_retention(db, long_ago + timedelta(days=1), force=True, verifier=key)
    assert plan.counts == {"": n}, plan.counts
    home = Signer.parse((work / ".elspeth" / "keys" / "default.key").read_text().strip())
    assert erase(db, plan, "retention RP-4", signer=home) == n
    with db.connect() as conn:
        (note,) = conn.execute("SELECT note FROM erasure_seals WHERE run_id = ''").fetchone() or ("",)
    assert parse_seal(parse_note(note).text).origin == f"elspeth/{PostgresRecorder(db).store_id()}/*"
    _check_passes(work, db, run_id)
    out = work / "legacy.export"
    assert elspeth("export", run_id, "-o", str(out), cwd=work, db=db).returncode == 0
    verified = elspeth("verify", str(out), "--public-key", str(work / ".elspeth/keys/default.pub"), cwd=work)
    assert verified.returncode == 0 and f"{n} erased" in verified.stdout, verified.stdout + verified.stderr


def test_records_read_by_name_or_by_run_are_the_same_records(
    db: Database, fork_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`PostgresRecorder.erasures` looks a few names up by hash and reads most of a run's by the
    run (a replay of a run purged by retention): both pick the same record of each payload (a
    sealed one first, then the run's own, then the oldest), and `verify_run` judges alike."""
    from landscape import postgres
    from landscape.errors import ChainBroken
    from landscape.verify_store import verify_run

    work, run_id = fork_run
    _purge(work, db, run_id, 2, 4)
    recorder = PostgresRecorder(db)
    genuine = [e for e, _s in _records(db, run_id)]
    sealed = next(e for e, s in _records(db, run_id) if s is not None)
    with db.connect() as conn:
        # The same payload again: unsigned, of the run; sealed (by the run's seal), of no run.
        (seal_id,) = conn.execute(
            "SELECT seal_id FROM erasures WHERE hash = %s", (bytes.fromhex(sealed.hash),)
        ).fetchone() or (0,)
        for run, seal in ((run_id, None), (None, seal_id)):
            _as_attacker(conn, "erasures", "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, seal_id) "
                         "VALUES (%s, %s, 1, 'request', 'again', now(), %s)", (bytes.fromhex(sealed.hash), run, seal))  # fmt: skip
        conn.commit()
    h = _forge(db, run_id, 0)  # a row's payload gone, under an unsigned record
    nobody = _row_payload(db, run_id, 4)  # and another's, under a record of no run
    with db.connect() as conn:
        conn.execute("INSERT INTO erasures (hash, row_index, kind, reason, erased_at) VALUES (%s, 4, 'retention', 'x', now())",
                     (nobody,))  # fmt: skip
        assert (
            _as_attacker(conn, "payloads", "DELETE FROM payloads WHERE run_id = %s AND hash = %s", (run_id, nobody))
            == 1
        )
        conn.commit()
    with db.connect() as conn:  # later, better-ranked records of theirs: sealed, of no run; of another run
        for hash_, run in ((h, None), (nobody, "run-elsewhere")):
            _as_attacker(conn, "erasures", "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, seal_id) "
                         "VALUES (%s, %s, 1, 'request', 'later', now(), %s)", (hash_, run, seal_id))  # fmt: skip
        conn.commit()
    names = [e.hash for e in genuine] + [h.hex(), nobody.hex(), "0" * 64, "NOT A NAME"]
    key = _home_key(work)

    def read() -> tuple[dict[str, Erasure], str]:
        try:
            verify_run(recorder, run_id, verifier=key)
        except ChainBroken as e:
            return recorder.erasures(run_id, names), str(e)
        raise AssertionError("the forged record counted")

    by_name, why = read()
    monkeypatch.setattr(postgres, "_SCAN_AT", 0)
    assert read() == (by_name, why)
    assert set(by_name) == {e.hash for e in genuine} | {h.hex(), nobody.hex()}
    assert by_name[nobody.hex()].run_id is None
    assert by_name[sealed.hash].seal_id == seal_id and by_name[sealed.hash].run_id == run_id
    assert by_name[h.hex()].seal_id == seal_id and by_name[h.hex()].run_id is None
    assert by_name[nobody.hex()].seal_id is None
    assert "is gone" in why and h.hex() in why


def _point_row_at(db: Database, run_id: str, victim: int, subject: int, *, rechain: bool) -> None:
    """As someone who can write to the store but not sign: the token of source row `subject`
    (row_index) made to name the data of row `victim` (its TokenCreated's data_hash), its body's
    payload hash redone; with `rechain`, every hash after it redone too (a chain that holds, and
    that folds: only the roots of the signed checkpoints differ)."""
    victims = _row_payload(db, run_id, victim).hex().encode()
    subjects = _row_payload(db, run_id, subject).hex().encode()
    with db.connect() as conn:
        events = list(PostgresRecorder(db).read_events(run_id))
        prev, changed = GENESIS, False
        for e in events:
            body = e.payload
            if e.event_type == "TokenCreated" and b'"data_hash":"%s"' % subjects in body:
                body = body.replace(subjects, victims)
                changed = True
            if body == e.payload and not (changed and rechain):
                prev = e.hash
                continue
            ph = hashlib.sha256(body).digest()
            h = event_hash(prev, run_id, e.seq, e.machine, e.entity_id, e.event_type, e.schema_version,
                           e.recorded_at_us, ph) if rechain else e.hash  # fmt: skip
            _as_attacker(conn, "events", "UPDATE events SET payload = %s, payload_hash = %s, prev_hash = %s, hash = %s "
                         "WHERE run_id = %s AND seq = %s", (body, ph, prev if rechain else e.prev_hash, h, run_id, e.seq))  # fmt: skip
            prev = h
        conn.commit()
    assert changed


@pytest.mark.parametrize("force", [False, True], ids=["", "forced"])
@pytest.mark.parametrize("rechain", [False, True], ids=["body", "chain-redone"])
def test_purge_finds_a_rows_payloads_in_the_log_as_signed_not_as_the_store_shows_it(
    db: Database, fork_run: tuple[Path, str], rechain: bool, force: bool
) -> None:
    """A laundering: point the data subject's token at another row's data, have the operator's
    `purge --row` erase that row's data under a signed record, then put the log back. Purge finds
    the rows' payloads in the log only as it verifies against the signed checkpoints (forced, in
    the part the newest of them signs): it refuses, and erases nothing."""
    work, run_id = fork_run
    victim = _row_payload(db, run_id, 4)
    before = _payloads(db, run_id)
    _point_row_at(db, run_id, 4, 1, rechain=rechain)
    forced = ("--force",) if force else ()
    proc = elspeth("purge", run_id, "--row", "2", "--reason", "GDPR request #5", *forced, cwd=work, db=db)
    assert proc.returncode == 1 and "does not verify" in proc.stderr and "nothing was erased" in proc.stderr, (
        proc.stdout + proc.stderr
    )
    assert _payloads(db, run_id) == before and _records(db, run_id) == []
    with db.connect() as conn:
        assert conn.execute("SELECT 1 FROM payloads WHERE hash = %s", (victim,)).fetchone() is not None


def test_purge_by_row_of_a_run_no_checkpoint_signs_is_refused_even_forced(
    db: Database, fork_run: tuple[Path, str]
) -> None:
    """With every checkpoint gone (the store's deleted, the witness file moved away), nothing
    proves which payloads are a row's: a log anyone who can write to the store could have
    rewritten. Refused, forced too."""
    work, run_id = fork_run
    with db.connect() as conn:
        assert _as_attacker(conn, "checkpoints", "DELETE FROM checkpoints WHERE run_id = %s", (run_id,)) > 0
        conn.commit()
    witness = work / ".elspeth" / "witness" / f"{run_id}.checkpoints"
    assert witness.exists()
    witness.rename(work / "moved.checkpoints")
    before = _payloads(db, run_id)
    proc = elspeth("purge", run_id, "--row", "2", "--reason", "GDPR request #6", cwd=work, db=db)
    assert proc.returncode == 1 and "no signed checkpoint" in proc.stderr, proc.stdout + proc.stderr
    forced = elspeth("purge", run_id, "--row", "2", "--reason", "GDPR request #6", "--force", cwd=work, db=db)
    assert forced.returncode == 1 and "has no checkpoint that verifies" in forced.stderr, forced.stdout + forced.stderr
    assert "it has none, in the store or in its witness file" in forced.stderr, forced.stderr
    assert _payloads(db, run_id) == before
    (work / "moved.checkpoints").rename(witness)  # the witness file's copies are enough
    forced = elspeth("purge", run_id, "--row", "2", "--reason", "GDPR request #6", "--force", cwd=work, db=db)
    assert forced.returncode == 0 and _payloads(db, run_id) < before, forced.stdout + forced.stderr


def test_a_purge_that_commits_between_replays_two_reads_is_no_false_alarm(
    db: Database, fork_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify_run` reads the erasure records, then the payloads: a purge committing between them
    leaves a payload in neither. Its records are read again before anything is called missing."""
    from landscape.verify_store import verify_run

    work, run_id = fork_run
    _purge(work, db, run_id, 2)
    erasures, calls = PostgresRecorder.erasures, [0]

    def before_the_purge(self: PostgresRecorder, run: str, hashes: Any) -> dict[str, Erasure]:
        calls[0] += 1
        return {} if calls[0] == 1 else erasures(self, run, hashes)

    monkeypatch.setattr(PostgresRecorder, "erasures", before_the_purge)
    verified = verify_run(PostgresRecorder(db), run_id, verifier=_home_key(work))
    assert verified.erased and calls[0] == 2


# ---------------------------------------------------------------------------------------------
# 9. landscape/seal.py on its own

ORIGIN = "elspeth/store-1/run-1"
KEY = Signer.generate("seal-test")
DIGESTS = [bytes([i]) * 32 for i in range(5)]


def test_a_seal_text_round_trips() -> None:
    seal = seal_of(ORIGIN, DIGESTS)
    assert seal.size == 5 and len(seal.root) == HASH_SIZE
    assert seal.text().startswith(f"{HEAD}\n{ORIGIN}\n5\n")
    assert parse_seal(seal.text()) == seal
    assert open_seal(sign(KEY, ORIGIN, DIGESTS), KEY.verifier, ORIGIN) == seal
    assert open_seal(sign(KEY, ORIGIN, DIGESTS), None, ORIGIN) == seal  # (form only: no key)
    # The order the digests come in does not matter; their set does.
    assert seal_of(ORIGIN, list(reversed(DIGESTS))) == seal
    with pytest.raises(ValueError, match="one record or more"):
        seal_of(ORIGIN, [])


@pytest.mark.parametrize(
    "text",
    [
        f"{HEAD}\n{ORIGIN}\n05\n{'A' * 43}=\n",  # leading zero
        f"{HEAD}\n{ORIGIN}\n0\n{'A' * 43}=\n",  # no records
        f"{HEAD}\n{ORIGIN}\n-1\n{'A' * 43}=\n",
        f"{HEAD}\n{ORIGIN}\n1\n{'A' * 42}==\n",  # 31 bytes
        f"{HEAD}\n{ORIGIN}\n1\n{'A' * 43}B\n",  # not canonical... (44 chars, no padding: 33 bytes)
        f"{HEAD}\n{ORIGIN}\n1\n{'A' * 43}=\nextra\n",
        f"{HEAD}\n{ORIGIN}\n1\n{'A' * 43}=",  # no final newline
        f"elspeth erasure\n{ORIGIN}\n1\n{'A' * 43}=\n",
        f"{HEAD}\n{ORIGIN}\n{'9' * 5000}\n{'A' * 43}=\n",  # (int() of it raised ValueError: a traceback)
    ],
)
def test_a_malformed_seal_text_is_refused(text: str) -> None:
    with pytest.raises(NoteError):
        parse_seal(text)


def test_a_checkpoint_is_no_seal_and_a_seal_no_checkpoint() -> None:
    root = seal_of(ORIGIN, DIGESTS).root
    for checkpoint in (Checkpoint(ORIGIN, 5, root), Checkpoint(ORIGIN, 5, root, ("ext",))):
        with pytest.raises(CheckpointError):
            parse_seal(checkpoint.text())
        note = checkpoint.sign(KEY)
        with pytest.raises(CheckpointError):
            open_seal(note, KEY.verifier, ORIGIN)
        why = why_not_sealed(note, DIGESTS, KEY.verifier, ORIGIN)
        assert why is not None and why.startswith("its seal does not verify"), why
    with pytest.raises(CheckpointError):
        parse_checkpoint(seal_of(ORIGIN, DIGESTS).text())


def test_why_not_sealed_for_exactly_the_records_signed() -> None:
    note = sign(KEY, ORIGIN, DIGESTS)
    assert why_not_sealed(note, DIGESTS, KEY.verifier, ORIGIN) is None
    changed = [DIGESTS[0][:-1] + b"\xff", *DIGESTS[1:]]
    for digests in (DIGESTS[1:], [*DIGESTS, bytes(32)], changed, [*DIGESTS, DIGESTS[0]], list(DIGESTS[:1]) * 5):
        why = why_not_sealed(note, digests, KEY.verifier, ORIGIN)
        assert why is not None and "changed, added or removed" in why, why
        # With no key the count and the root are checked all the same.
        assert why_not_sealed(note, digests, None, ORIGIN) is not None
    other = Signer.generate(KEY.name)  # the same name, another key
    for verifier in (other.verifier, Signer.generate("x").verifier):
        why = why_not_sealed(note, DIGESTS, verifier, ORIGIN)
        assert why is not None and why.startswith("its seal does not verify") and "not signed by" in why, why
    # A signature of the right key over a changed text.
    forged = note.replace(f"\n{len(DIGESTS)}\n", f"\n{len(DIGESTS) - 1}\n", 1)
    assert forged != note
    assert why_not_sealed(forged, DIGESTS[1:], KEY.verifier, ORIGIN) is not None
    # The right key and records, but another run's origin.
    why = why_not_sealed(note, DIGESTS, KEY.verifier, "elspeth/store-1/run-2")
    assert why is not None and "does not verify" in why and ORIGIN in why, why
    assert why_not_sealed(note, DIGESTS, None, "elspeth/store-1/run-2") is not None
    # Garbage where a note goes.
    assert why_not_sealed("not a note", DIGESTS, KEY.verifier, ORIGIN) is not None


@settings(max_examples=60, deadline=None)
@given(
    digests=st.sets(st.binary(min_size=32, max_size=32), min_size=1, max_size=40),
    extra=st.binary(min_size=32, max_size=32),
    pick=st.integers(min_value=0),
)
def test_a_seal_verifies_for_exactly_its_set_of_digests(digests: set[bytes], extra: bytes, pick: int) -> None:
    note = sign(KEY, ORIGIN, digests)
    ordered = sorted(digests)
    assert why_not_sealed(note, ordered, KEY.verifier, ORIGIN) is None
    assert why_not_sealed(note, ordered[::-1], KEY.verifier, ORIGIN) is None
    victim = ordered[pick % len(ordered)]
    if extra not in digests:
        assert why_not_sealed(note, [*ordered, extra], KEY.verifier, ORIGIN) is not None
        assert why_not_sealed(note, [extra if d == victim else d for d in ordered], KEY.verifier, ORIGIN) is not None
    assert why_not_sealed(note, [d for d in ordered if d != victim], KEY.verifier, ORIGIN) is not None
    flipped = bytes([victim[0] ^ 1]) + victim[1:]
    assert why_not_sealed(note, [flipped if d == victim else d for d in ordered], KEY.verifier, ORIGIN) is not None
    assert why_not_sealed(note, ordered, Signer.generate(KEY.name).verifier, ORIGIN) is not None
    assert parse_seal(parse_note(note).text) == Seal(ORIGIN, len(digests), seal_of(ORIGIN, digests).root)


def test_each_record_must_be_one_its_seal_signs_whatever_the_seal_read_says() -> None:
    """The records and their seals' digests are two reads of the store: a record is checked on
    its own against its seal's digests and run, not taken on the seal's verdict alone (nor on a
    verdict cached from an earlier part, as `explain` keeps them)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def record(h: str, run: str | None, seal_id: int) -> Erasure:
        return Erasure(hash=h, run_id=run, row_index=None, kind="retention", reason="r", erased_at=at,
                       erased_by="o", seal_id=seal_id)  # fmt: skip

    genuine, forged = record("a" * 64, "run-1", 1), record("b" * 64, "run-1", 1)
    legacy, pointed = record("c" * 64, None, 2), record("d" * 64, "run-1", 2)
    seals = {
        1: Sealed("run-1", sign(KEY, "elspeth/store-1/run-1", [genuine.digest()]), [genuine.digest()]),
        2: Sealed("", sign(KEY, "elspeth/store-1/*", [legacy.digest()]), [legacy.digest()]),
    }
    erased = {e.hash: e for e in (genuine, forged, legacy, pointed)}
    checked: dict[int, Verdict] = {}
    why = unsealed(erased, seals, KEY.verifier, "store-1", checked)
    assert set(why) == {forged.hash, pointed.hash}, why
    assert why[forged.hash] == "it is not among the records its seal signs"
    assert why[pointed.hash] == "the seal it names is of records of no run"
    # Asked again in a later part, with the verdicts kept and no seal read again: the same.
    assert unsealed(erased, {}, KEY.verifier, "store-1", checked) == why
    # A store id no origin can hold is a reason, not a traceback.
    odd = unsealed({genuine.hash: genuine}, seals, KEY.verifier, "store 1")
    assert "cannot be checked" in odd[genuine.hash], odd


def test_a_seal_line_with_a_huge_count_is_one_line_in_verify(db: Database, fork_run: tuple[Path, str]) -> None:
    """A seal's count is read before its signature is checked: a hostile one is refused on its
    line, not with a traceback (export and bundle alike)."""
    work, run_id = fork_run
    _purge(work, db, run_id, 2)
    pub = str(work / ".elspeth/keys/default.pub")
    export, bundle = work / "x.export", work / "x.json"
    assert elspeth("export", run_id, "-o", str(export), cwd=work, db=db).returncode == 0
    assert elspeth("prove", run_id, "--row", "2", "-o", str(bundle), cwd=work, db=db).returncode == 0
    evil = Signer.generate("evil").sign(f"{HEAD}\nelspeth/s/{run_id}\n{'9' * 5000}\n{'A' * 43}=\n")
    lines = export.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(b'{"type":"seal"'))
    seal = msgspec.json.decode(lines[at], type=SealRecord)
    lines[at] = encode(msgspec.structs.replace(seal, note=evil)) + b"\n"  # (written as ELSPETH writes it)
    export.write_bytes(b"".join(lines))
    line = one_line_error(elspeth("verify", str(export), "--public-key", pub, cwd=work), 1)
    assert "this seal of erasure records does not count" in line, line
    proof = json.loads(bundle.read_text())
    proof["seals"][0]["note"] = evil
    bundle.write_text(json.dumps(proof, indent=1))
    line = one_line_error(elspeth("verify", str(bundle), "--public-key", pub, cwd=work), 1)
    assert "signed by no seal" in line, line


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _recounted(lines: list[bytes]) -> bytes:
    """The lines with the end record counting what they hold, as an attacker would write it."""
    kinds = [json.loads(line)["type"] for line in lines[:-1]]
    end = msgspec.json.decode(lines[-1], type=End)
    end = msgspec.structs.replace(end, payloads=kinds.count("payload"), erased=kinds.count("erased"),
                                  seals=kinds.count("seal"))  # fmt: skip
    return b"".join(lines[:-1]) + encode(end) + b"\n"


def test_an_export_that_leaves_out_signed_erasures_says_so(db: Database, fork_run: tuple[Path, str]) -> None:
    """The payloads of a pre-purge export put back in place of the erasure records of a later one
    (each matches its commitment): the file verifies, as it proves nothing false of the log, but
    the seal it keeps signs records it no longer shows, which verify says."""
    work, run_id = fork_run
    pub = str(work / ".elspeth/keys/default.pub")
    before, after = work / "before.export", work / "after.export"
    assert elspeth("export", run_id, "-o", str(before), cwd=work, db=db).returncode == 0
    _purge(work, db, run_id, 2)
    assert elspeth("export", run_id, "-o", str(after), cwd=work, db=db).returncode == 0
    honest = elspeth("verify", str(after), "--public-key", pub, cwd=work)
    assert honest.returncode == 0 and "does not hold" not in honest.stderr, honest.stderr
    payloads = {json.loads(line)["hash"]: line for line in _lines(before) if line.startswith(b'{"type":"payload"')}
    lines = _lines(after)
    put_back = [payloads[json.loads(line)["hash"]] if line.startswith(b'{"type":"erased"') else line for line in lines]
    assert put_back != lines
    forged = work / "forged.export"
    forged.write_bytes(_recounted(put_back))
    proc = elspeth("verify", str(forged), "--public-key", pub, cwd=work)
    assert proc.returncode == 0, proc.stderr
    erased = sum(line.startswith(b'{"type":"erased"') for line in lines)
    assert f"this run's seals sign {erased} erasure record(s) that the export does not hold" in proc.stderr


def test_a_seal_given_twice_or_in_a_format_without_seals_is_refused(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    _purge(work, db, run_id, 2)
    pub = str(work / ".elspeth/keys/default.pub")
    export = work / "x.export"
    assert elspeth("export", run_id, "-o", str(export), cwd=work, db=db).returncode == 0
    lines = _lines(export)
    at = next(i for i, line in enumerate(lines) if line.startswith(b'{"type":"seal"'))
    twice = work / "twice.export"
    twice.write_bytes(_recounted([*lines[: at + 1], lines[at], *lines[at + 1 :]]))
    line = one_line_error(elspeth("verify", str(twice), "--public-key", pub, cwd=work), 1)
    assert f"line {at + 2}: this seal is in the export already" in line, line
    # A copy with another key's signature line added (passed over by the reader) is the same seal.
    seal = msgspec.json.decode(lines[at], type=SealRecord)
    text = parse_note(seal.note).text
    cosigned = seal.note + Signer.generate("other").sign(text)[len(text) + 1 :]
    assert parse_note(cosigned).text == text and len(parse_note(cosigned).signatures) == 2
    copy = encode(msgspec.structs.replace(seal, note=cosigned)) + b"\n"
    twice.write_bytes(_recounted([*lines[: at + 1], copy, *lines[at + 1 :]]))
    line = one_line_error(elspeth("verify", str(twice), "--public-key", pub, cwd=work), 1)
    assert f"line {at + 2}: this seal is in the export already" in line, line
    older = work / "older.export"
    older.write_bytes(lines[0].replace(b'"format":2,', b'"format":1,', 1) + b"".join(lines[1:]))
    line = one_line_error(elspeth("verify", str(older), "--public-key", pub, cwd=work), 1)
    assert f"line {at + 1}: a seal in a format-1 export" in line, line


def test_a_bundle_reformatted_with_its_type_last_is_read_as_one(db: Database, fork_run: tuple[Path, str]) -> None:
    work, run_id = fork_run
    _purge(work, db, run_id, 2)
    pub = str(work / ".elspeth/keys/default.pub")
    bundle = work / "x.json"
    assert elspeth("prove", run_id, "--row", "2", "-o", str(bundle), cwd=work, db=db).returncode == 0
    proof = json.loads(bundle.read_text())
    kind = proof.pop("type")
    last = work / "last.json"
    last.write_text(" " * 5000 + json.dumps({**proof, "type": kind}))
    proc = elspeth("verify", str(last), "--public-key", pub, cwd=work)
    assert proc.returncode == 0, proc.stderr
    # One cut short is said to be a bundle that is not well formed, not no bundle at all.
    cut = work / "cut.json"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    line = one_line_error(elspeth("verify", str(cut), "--public-key", pub, cwd=work), 1)
    assert "not a well-formed proof bundle (" in line, line
    # A negative row is named as such; a format-1 bundle holds no seals.
    for change, said in (({"row": -1}, "row index -1: seqs and row indexes are counted from 0"),
                         ({"format": 1}, "format 1, which holds no seals")):  # fmt: skip
        odd = work / "odd.json"
        odd.write_text(json.dumps({**proof, **change, "type": kind}))
        line = one_line_error(elspeth("verify", str(odd), "--public-key", pub, cwd=work), 1)
        assert said in line, line
