"""What someone with write access to the database could change, and `replay --check` catching it.

Each case is one line: which example to run, the SQL a tamperer runs afterwards (`%(run)s` is
the run id), and what the check must name. Projection tables have no triggers (they are
rebuildable), so these need no privileges beyond a plain UPDATE; `replica: ` marks what needs
the triggers off (a superuser's `session_replication_role = replica`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from landscape.db import Database
from landscape.postgres import PostgresRecorder
from landscape.roles import Role
from landscape.verify import verify_events
from tests.test_cli import ROOT, elspeth, one_line_error

FORK, AGG = "fork_coalesce", "aggregation"
ONE = "ctid = (SELECT ctid FROM {t} WHERE run_id = %(run)s ORDER BY ctid LIMIT 1)"
CASES = [
    # (example, table, statement, words the error must contain)
    (FORK, "runs", "UPDATE runs SET status = 'failed' WHERE run_id = %(run)s", "runs"),
    (FORK, "nodes", "UPDATE nodes SET plugin = 'passthrough' WHERE run_id = %(run)s AND node = 'screen'", "nodes"),
    (FORK, "rows", "UPDATE rows SET data_hash = md5('x') WHERE run_id = %(run)s AND row_index = 2", "row_index=2"),
    (FORK, "tokens", f"UPDATE tokens SET branch = 'screening' WHERE {ONE.format(t='tokens')}", "tokens"),
    (FORK, "token_parents", f"UPDATE token_parents SET parent_id = parent_id || 'x' WHERE {ONE.format(t='token_parents')}",
     "parent_id"),
    (FORK, "node_states", f"UPDATE node_states SET output_hash = md5('y') WHERE {ONE.format(t='node_states')}",
     "output_hash"),
    (FORK, "token_outcomes", "UPDATE token_outcomes SET outcome = 'completed', reason = NULL "
     "WHERE run_id = %(run)s AND outcome = 'diverted'", "outcome"),
    (FORK, "token_outcomes", f"DELETE FROM token_outcomes WHERE {ONE.format(t='token_outcomes')}",
     "missing from the table"),
    (FORK, "coalesces", "UPDATE coalesces SET status = 'merged', reason = NULL "
     "WHERE run_id = %(run)s AND status = 'failed'", "coalesces"),
    (FORK, "artifacts", f"UPDATE artifacts SET rows = rows + 1 WHERE {ONE.format(t='artifacts')}", "artifacts"),
    (FORK, "run_metrics", "UPDATE run_metrics SET value = value + 1 WHERE run_id = %(run)s AND metric = 'rows_in'",
     "rows_in"),
    (FORK, "run_metrics", "INSERT INTO run_metrics VALUES (%(run)s, 'outcome.completed2', 1)",
     "not in the events"),
    (AGG, "batches", f"UPDATE batches SET size = size + 1 WHERE {ONE.format(t='batches')}", "size"),
    (AGG, "batch_members", f"DELETE FROM batch_members WHERE {ONE.format(t='batch_members')}", "batch_members"),
    # the run's row is compared like any other: its last_seq is not what the rebuild goes up to
    (FORK, "runs", "UPDATE runs SET last_seq = last_seq - 50 WHERE run_id = %(run)s", "last_seq"),
    (FORK, "runs", "DELETE FROM runs WHERE run_id = %(run)s", "row missing from the table"),
    # a time no datetime holds: named like any difference, not a failed read
    (FORK, "runs", "UPDATE runs SET ended_at = 'infinity' WHERE run_id = %(run)s", "ended_at is 'infinity'"),
    (FORK, "runs", "WITH " + ", ".join(f"d{i} AS (DELETE FROM {t} WHERE run_id = %(run)s)" for i, t in enumerate(
        ["run_metrics", "nodes", "rows", "tokens", "token_parents", "node_states", "token_outcomes", "coalesces",
         "batches", "batch_members", "artifacts"])) + " DELETE FROM runs WHERE run_id = %(run)s", "missing from the table"),
    (FORK, "payloads", "replica: DELETE FROM payloads WHERE hash = (SELECT decode(data_hash, 'hex') FROM rows "
     "WHERE run_id = %(run)s AND row_index = 1)", "missing"),
]  # fmt: skip


def _run(db: Database, tmp_path: Path, example: str, *, extra_settings: str = "") -> tuple[Path, str]:
    shutil.copytree(ROOT / "examples" / example, tmp_path / "examples" / example)
    shutil.rmtree(tmp_path / "examples" / example / "output", ignore_errors=True)
    (tmp_path / "examples" / example / "output").mkdir()
    settings = tmp_path / "examples" / example / "settings.yaml"
    settings.write_text(settings.read_text() + extra_settings)
    proc = elspeth("run", "-s", f"examples/{example}/settings.yaml", cwd=tmp_path, db=db)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    clean = elspeth("replay", run_id, "--check", cwd=tmp_path, db=db)
    assert clean.returncode == 0 and "projections agree" in clean.stdout, clean.stdout + clean.stderr
    return tmp_path, run_id


@pytest.mark.parametrize(("example", "table", "sql", "named"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_replay_check_names_what_was_changed(db: Database, tmp_path: Path, example: str, table: str, sql: str,
                                             named: str) -> None:  # fmt: skip
    work, run_id = _run(db, tmp_path, example)
    with db.connect() as conn:
        if sql.startswith("replica: "):  # what only a superuser can do: with the triggers off
            conn.execute("SET session_replication_role = replica")
            sql = sql.removeprefix("replica: ")
        changed = conn.execute(sql, {"run": run_id}).rowcount
        conn.commit()
    assert changed >= 1, "the tampering changed nothing: fix the case"
    err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db), 1)
    assert table in err and named in err, err


def _cut_tail(db: Database, run_id: str, keep: int, *, checkpoints_too: bool) -> None:
    """What a superuser could do: delete every event after the first `keep` (and the store's
    checkpoints that cover them), with the triggers off, then rebuild the projections to match."""
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM events WHERE run_id = %s AND seq >= %s", (run_id, keep))
        if checkpoints_too:
            conn.execute("DELETE FROM checkpoints WHERE run_id = %s AND tree_size > %s", (run_id, keep))
        conn.commit()


@pytest.mark.parametrize(
    ("checkpoints_too", "witness_dir"),
    [(False, None), (True, None), (True, "wit")],
    ids=["tail", "tail-and-store-checkpoints", "witness-folder-of-the-settings"],
)
def test_a_deleted_tail_is_a_named_truncation_and_is_not_resumed(
    db: Database, tmp_path: Path, checkpoints_too: bool, witness_dir: str | None
) -> None:
    """The witness file is read where the run's writer put it: also in a folder its settings
    name (resolved against the settings file's folder, as the writer did)."""
    extra = f"landscape: {{witness_dir: {witness_dir}}}\n" if witness_dir else ""
    work, run_id = _run(db, tmp_path, FORK, extra_settings=extra)
    if witness_dir:
        assert (work / "examples" / FORK / witness_dir / f"{run_id}.checkpoints").is_file()
    _cut_tail(db, run_id, 201, checkpoints_too=checkpoints_too)
    rebuilt = elspeth("projections", "rebuild", run_id, cwd=work, db=db)
    assert rebuilt.returncode == 0, rebuilt.stderr
    err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db), 1)
    where = "store" if not checkpoints_too else f"/{witness_dir}/" if witness_dir else "witness"
    assert "events 201 to " in err and "missing" in err and where in err, err
    if witness_dir:  # a witness folder named by the environment now does not hide the settings' one
        env = {"ELSPETH_WITNESS_DIR": str(tmp_path / "elsewhere")}
        err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db, env=env), 1)
        assert "events 201 to " in err and where in err, err
    err = one_line_error(elspeth("resume", run_id, cwd=work, db=db), 1)
    assert "events 201 to " in err, err
    # explain reads the same log: a row whose later events were cut is not shown as stopped there
    err = one_line_error(elspeth("explain", run_id, "--row", "1", cwd=work, db=db), 1)
    assert "events 201 to " in err and where in err, err
    # an export of it is refused where it is made, and leaves no file (verify would refuse it)
    out = work / "cut.export"
    err = one_line_error(elspeth("export", run_id, "-o", str(out), cwd=work, db=db), 1)
    assert "holds 201 event(s)" in err and "events are missing from the log" in err, err
    assert not out.exists()
    # as of a seq past the cut, every checkpoint applies: the cut is named, whatever seq was asked
    err = one_line_error(elspeth("replay", run_id, "--as-of", "300", cwd=work, db=db), 1)
    assert "events 201 to " in err, err
    # as of a seq the log still holds, the checkpoints of that prefix are checked, and hold
    smallest = _checkpoint_sizes(db, run_id)[0]
    assert smallest <= 201, "no checkpoint inside the kept prefix: fix the case"
    proc = elspeth("replay", run_id, "--as-of", str(smallest - 1), cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    # ("the newest covers N events" read as the store's newest, a larger one beside it)
    assert re.search(r", \d+ checked, the newest of them covers ", proc.stdout), proc.stdout


def _checkpoint_sizes(db: Database, run_id: str) -> list[int]:
    with db.connect() as conn:
        rows = conn.execute("SELECT tree_size FROM checkpoints WHERE run_id = %s ORDER BY 1", (run_id,)).fetchall()
    return [r[0] for r in rows]


def test_a_run_whose_checkpoints_are_all_gone_fails_the_check(db: Database, tmp_path: Path) -> None:
    work, run_id = _run(db, tmp_path, FORK)
    _cut_tail(db, run_id, 201, checkpoints_too=True)
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM checkpoints WHERE run_id = %s", (run_id,))
        conn.commit()
    for f in (work / ".elspeth" / "witness").iterdir():
        f.unlink()
    for command in (
        ("replay", run_id, "--check"),
        ("explain", run_id, "--row", "1"),
        ("replay", run_id, "--as-of", "900"),
    ):
        err = one_line_error(elspeth(*command, cwd=work, db=db), 1)
        assert "no signed checkpoint" in err, err


def test_a_checkpoint_record_relabelled_to_a_cut_log_is_refused(db: Database, tmp_path: Path) -> None:
    """The size and root beside a checkpoint's note are not signed. A superuser cuts the tail,
    gives the store's newest checkpoint the cut log's size and root (its signed note unchanged),
    removes the others that cover the cut, and the witness file."""
    work, run_id = _run(db, tmp_path, FORK)
    _cut_tail(db, run_id, 201, checkpoints_too=False)
    root = verify_events(run_id, PostgresRecorder(db).read_events(run_id), roots_at=[201]).roots[201]
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        (newest,) = conn.execute("SELECT max(tree_size) FROM checkpoints WHERE run_id = %s", (run_id,)).fetchone()
        conn.execute(
            "DELETE FROM checkpoints WHERE run_id = %s AND tree_size >= 201 AND tree_size < %s", (run_id, newest)
        )
        conn.execute("UPDATE checkpoints SET tree_size = 201, root = %s WHERE run_id = %s AND tree_size = %s",
                     (root, run_id, newest))  # fmt: skip
        conn.commit()
    for f in (work / ".elspeth" / "witness").iterdir():
        f.unlink()
    for command in (("replay", run_id), ("explain", run_id, "--row", "1"), ("export", run_id, "-o", "x.export")):
        err = one_line_error(elspeth(*command, cwd=work, db=db), 1)
        assert "signed note" in err and f"{newest} events" in err, err


def test_a_checkpoint_with_the_keys_label_and_a_forged_signature_is_refused_by_checkpoint_and_export(
    db: Database, tmp_path: Path
) -> None:
    """`elspeth checkpoint` (and export, prove) only looked for the key's label among a note's
    signatures: a note written into the store claiming a larger log, its signature line copied
    from a genuine note, was printed as the run's newest signed checkpoint (a review)."""
    work, run_id = _run(db, tmp_path, FORK)
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        size, root, note, verifier = conn.execute(
            "SELECT tree_size, root, note, verifier FROM checkpoints WHERE run_id = %s ORDER BY tree_size DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        origin, _size, rest = note.split("\n", 2)
        forged = f"{origin}\n{size + 999}\n{rest}"  # the genuine signature line, over other text
        conn.execute(
            "INSERT INTO checkpoints (run_id, tree_size, root, note, verifier, recorded_at) VALUES (%s, %s, %s, %s, %s, now())",
            (run_id, size + 999, root, forged, verifier),
        )
        conn.commit()
    for command in (("checkpoint", run_id), ("export", run_id, "-o", "x.export")):
        err = one_line_error(elspeth(*command, cwd=work, db=db), 1)
        assert f"the checkpoint of {size + 999} events (store) does not verify" in err, err


def test_a_checkpoint_signed_with_another_key_is_refused(db: Database, tmp_path: Path) -> None:
    work, run_id = _run(db, tmp_path, FORK)
    assert elspeth("keys", "generate", "other", "--dir", str(work), cwd=work).returncode == 0
    other = ("--public-key", str(work / "other.pub"))
    smallest = _checkpoint_sizes(db, run_id)[0]
    for command in (
        ("replay", run_id),
        ("explain", run_id, "--row", "1"),
        ("replay", run_id, "--as-of", str(smallest - 1)),
    ):
        err = one_line_error(elspeth(*command, *other, cwd=work, db=db), 1)
        assert "does not verify" in err, err
    # signed by another key than the one this home signs with (now): a hint, not "does not verify"
    home_key = {"ELSPETH_SIGNING_KEY": str(work / "other.key")}
    for command in (("replay", run_id), ("explain", run_id, "--row", "1")):
        err = one_line_error(elspeth(*command, cwd=work, db=db, env=home_key), 1)
        assert "not by this home's key other" in err and "--public-key" in err, err


def test_a_witness_file_given_that_is_not_there_is_refused(db: Database, tmp_path: Path) -> None:
    work, run_id = _run(db, tmp_path, FORK)
    for command in (("replay", run_id), ("explain", run_id, "--row", "1")):
        err = one_line_error(elspeth(*command, "--witness", str(work / "nowhere"), cwd=work, db=db), 1)
        assert "nowhere: no such file" in err, err
        for given, says in ((work, "a folder, not a witness file"), (Path("/dev/zero"), "not a regular file")):
            err = one_line_error(elspeth(*command, "--witness", str(given), cwd=work, db=db), 1)
            assert f"{given}: {says}" in err, err


def test_a_run_in_the_projections_without_events_is_named_and_removed(db: Database, tmp_path: Path) -> None:
    """The writer role maintains the projection tables, so it can write a run that never ran:
    `replay --check` of it says so, and rebuilding the projections removes it."""
    work, run_id = _run(db, tmp_path, FORK)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO runs (run_id, status, settings_path, settings_hash, source_fingerprint, started_at, resumes, "
            "last_seq) VALUES ('run-ghost', 'completed', 's.yaml', 'x', 'y', now(), 0, 9)"
        )
        conn.execute("INSERT INTO run_metrics VALUES ('run-ghost', 'rows_in', 1000)")
        conn.commit()
    err = one_line_error(elspeth("replay", "run-ghost", "--check", cwd=work, db=db), 1)
    assert "has no events, yet the projection tables hold rows of it" in err, err
    proc = elspeth("projections", "rebuild", cwd=work, db=db)
    assert proc.returncode == 0 and "removed the projection rows of run-ghost" in proc.stdout, proc.stdout + proc.stderr
    assert f"rebuilt {run_id}" in proc.stdout
    err = one_line_error(elspeth("replay", "run-ghost", "--check", cwd=work, db=db), 1)
    assert "no run run-ghost" in err, err
    assert elspeth("replay", run_id, "--check", cwd=work, db=db).returncode == 0


def _append_as_writer(db: Database, run_id: str, events: list[tuple[str, object]]) -> int:
    """What the writer role can do without the signing key: append events to a run's log with a
    correct chain (a payload for a forged row included). Returns the first seq appended."""
    import hashlib
    import os

    from landscape.chain import event_hash
    from landscape.records import datetime_to_us, us_to_datetime
    from statecharts.compiled import EVENT_MACHINE
    from statecharts.events import encode_event

    with db.as_role(Role.WRITER).connect() as conn:
        seq, prev, at = conn.execute(
            "SELECT seq, hash, recorded_at FROM events WHERE run_id = %s ORDER BY seq DESC LIMIT 1", (run_id,)
        ).fetchone()
        first = seq + 1
        for entity, event in events:
            seq += 1
            kind = type(event).__name__
            body = encode_event(event)  # type: ignore[arg-type]
            body_hash = hashlib.sha256(body).digest()
            us = datetime_to_us(at) + seq
            h = event_hash(prev, run_id, seq, EVENT_MACHINE[kind], entity, kind, 1, us, body_hash)
            conn.execute(
                "INSERT INTO events (run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, payload, "
                "payload_hash, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s, %s, %s)",
                (run_id, seq, EVENT_MACHINE[kind], entity, kind, us_to_datetime(us), body, body_hash, prev, h),
            )
            prev = h
        salt, data = os.urandom(16), b'{"id":999999,"notes":"forged"}'
        conn.execute(
            "INSERT INTO payloads (run_id, hash, salt, data) VALUES (%s, %s, %s, %s)",
            (run_id, hashlib.sha256(salt + data).digest(), salt, data),
        )
        conn.commit()
    return first


def _forged_row(db: Database, run_id: str) -> object:
    """A source row's creation, as the next row the source would read (as a forger would make it:
    a row out of order is refused by the fold whatever signs it)."""
    from statecharts import events as ev

    with db.connect() as conn:
        (rows,) = conn.execute("SELECT count(*) FROM rows WHERE run_id = %s", (run_id,)).fetchone()
    return ev.TokenCreated(row_index=rows, data_hash="ab" * 32, at="raw")


def test_a_row_appended_to_a_completed_run_by_the_writer_is_refused_by_replay_and_explain(
    db: Database, tmp_path: Path
) -> None:
    """After RunCompleted only nothing may follow: a forged row's TokenCreated was a legal
    transition of its own machine, and `replay --check` passed (the projections rebuilt by the
    writer), `explain --row 1000` showed it "created from the source"."""
    work, run_id = _run(db, tmp_path, "linear")
    seq = _append_as_writer(db, run_id, [("r999", _forged_row(db, run_id))])
    assert elspeth("projections", "rebuild", run_id, cwd=work, db=db.as_role(Role.WRITER)).returncode == 0
    for command in (["replay", run_id, "--check"], ["explain", run_id, "--row", "1000"]):
        err = one_line_error(elspeth(*command, cwd=work, db=db), 1)
        assert f"seq {seq}" in err and "not a legal transition" in err and "completed" in err, err


def test_events_appended_past_the_last_signed_checkpoint_are_named_and_not_resumed(
    db: Database, tmp_path: Path
) -> None:
    """A crashed run's log ends at a signed checkpoint (each commit signs one). The writer role
    appends a forged row, legal as a transition: resume read it as the next source row (the
    forged row written to the sink, a real one never read) and signed over it; `replay` and
    `explain` showed it. Each now names the unsigned events."""
    from statecharts import events as ev

    out = tmp_path / "examples" / "linear" / "output"
    shutil.copytree(ROOT / "examples" / "linear", out.parent)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    crashed = elspeth("run", "-s", "examples/linear/settings.yaml", "--commit-every", "5", cwd=tmp_path, db=db,
                      env={"ELSPETH_FAULT": "committed:3"})  # fmt: skip
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=tmp_path, db=db).stdout)[0]["run_id"]
    forged = _forged_row(db, run_id)
    seq = _append_as_writer(db, run_id, [("r999", forged), ("r999", ev.TokenQuarantined(reason="x"))])
    for command in (["replay", run_id, "--check"], ["explain", run_id, "--row", "1"], ["resume", run_id]):
        err = one_line_error(elspeth(*command, cwd=tmp_path, db=db), 1)
        assert f"events {seq} to {seq + 1} of the store's log are signed by no checkpoint" in err, (command, err)
    assert b"forged" not in b"".join(p.read_bytes() for p in out.iterdir())


@pytest.mark.parametrize("index", [1, 0, 7])
def test_a_source_row_out_of_order_is_no_legal_transition(index: int) -> None:
    """A resume starts its source at the count of source rows in the log: a row created out of
    order (signed or not) would move that cursor past a real row, never read, or back over one."""
    from landscape.fold import IllegalEvent, RunFold
    from statecharts import events as ev

    fold = RunFold("run")
    fold.apply(0, "r0", ev.TokenCreated(row_index=0, data_hash="0" * 64, at="in"))
    fold.apply(
        1, "r0.a", ev.TokenCreated(row_index=0, data_hash="0" * 64, at="in", parents=["r0"])
    )  # (not a source row)
    if index == 1:
        fold.apply(2, "r1", ev.TokenCreated(row_index=1, data_hash="0" * 64, at="in"))
        assert fold.source_records == 2
        return
    with pytest.raises(IllegalEvent, match=f"row_index {index}"):
        fold.apply(2, "r-other", ev.TokenCreated(row_index=index, data_hash="0" * 64, at="in"))


def test_a_resume_where_no_key_is_named_or_in_the_home_is_refused_not_signed_with_a_new_key(
    db: Database, tmp_path: Path
) -> None:
    """Signed with ELSPETH_SIGNING_KEY, crashed, resumed without it in a home with no key of its
    own: no signature was checked, and the rest was signed by a key made then, so that the run
    could never be exported or verified again (auditor review)."""
    out = tmp_path / "examples" / "linear" / "output"
    shutil.copytree(ROOT / "examples" / "linear", out.parent)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    assert elspeth("keys", "generate", "acme", "--dir", str(keys), cwd=tmp_path).returncode == 0
    signing = {"ELSPETH_SIGNING_KEY": str(keys / "acme.key")}
    crashed = elspeth("run", "-s", "examples/linear/settings.yaml", "--commit-every", "5", cwd=tmp_path, db=db,
                      env={**signing, "ELSPETH_FAULT": "committed:3"})  # fmt: skip
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=tmp_path, db=db).stdout)[0]["run_id"]
    err = one_line_error(elspeth("resume", run_id, cwd=tmp_path, db=db), 1)
    assert "its checkpoints are signed by acme+" in err and "name the key that signed it" in err, err
    assert not (tmp_path / ".elspeth" / "keys" / "default.key").exists()  # no key made for it
    resumed = elspeth("resume", run_id, cwd=tmp_path, db=db, env=signing)
    assert resumed.returncode == 0, resumed.stderr
    exported = elspeth("export", run_id, "-o", str(tmp_path / "r.export"), "--public-key", str(keys / "acme.pub"),
                       cwd=tmp_path, db=db)  # fmt: skip
    assert exported.returncode == 0, exported.stderr


RETYPED = [
    # (the change, how it is undone: the database is the module's, the next test's too)
    ("ALTER TABLE events ALTER COLUMN payload TYPE text USING encode(payload, 'hex')",
     "ALTER TABLE events ALTER COLUMN payload TYPE bytea USING decode(payload, 'hex')"),
    ("ALTER TABLE events ALTER COLUMN seq TYPE numeric", "ALTER TABLE events ALTER COLUMN seq TYPE bigint"),
    ("ALTER TABLE payloads ALTER COLUMN data TYPE text USING encode(data, 'hex')",
     "ALTER TABLE payloads ALTER COLUMN data TYPE bytea USING decode(data, 'hex')"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "undo"), RETYPED, ids=["event-body-text", "seq-numeric", "payload-text"])
def test_a_column_whose_type_a_superuser_changed_is_named_not_a_traceback(
    db: Database, tmp_path: Path, change: str, undo: str
) -> None:
    """Values of another type than ELSPETH wrote (text for bytes, a decimal for an integer) would
    end the verification in a TypeError: every reader of the log and of the payloads names the
    column instead."""
    work, run_id = _run(db, tmp_path, "linear")
    with db.connect() as conn:
        conn.execute(change)
        conn.commit()
    try:
        commands = [
            ["replay", run_id, "--check"],
            ["explain", run_id, "--row", "1"],
            ["export", run_id, "-o", "x.jsonl"],
            ["prove", run_id, "--row", "1", "-o", "p.json"],
        ]
        if "events" in change:
            commands.append(["show", run_id])
        for command in commands:
            err = one_line_error(elspeth(*command, cwd=work, db=db), 1)
            assert "was changed after ELSPETH made it" in err and ("payload" in err or "seq" in err), (command, err)
    finally:
        with db.connect() as conn:
            conn.execute(undo)
            conn.commit()


TWO_FACED = [
    # (the change, how it is undone, what the check must name): each leaves every row as it was,
    # and shows an analyst's unqualified query something else (a hostile review's findings)
    ("ALTER TABLE token_outcomes ENABLE ROW LEVEL SECURITY; "
     "CREATE POLICY two_faced ON token_outcomes FOR SELECT USING (outcome <> 'diverted')",
     "DROP POLICY two_faced ON token_outcomes; ALTER TABLE token_outcomes DISABLE ROW LEVEL SECURITY",
     "row-level security"),
    ("CREATE POLICY dormant ON artifacts FOR SELECT USING (false)", "DROP POLICY dormant ON artifacts",
     "the table artifacts has row-level security off and 1 polic"),
    ("CREATE SCHEMA shadow; CREATE VIEW shadow.token_outcomes AS SELECT * FROM public.token_outcomes",
     "DROP SCHEMA shadow CASCADE", "shadow.token_outcomes is named like a table of the store"),
    ("CREATE SCHEMA elspeth_analyst; CREATE TABLE elspeth_analyst.runs (LIKE public.runs)",
     "DROP SCHEMA elspeth_analyst CASCADE", "elspeth_analyst.runs is named like a table of the store"),
    ("ALTER ROLE elspeth_analyst IN DATABASE {database} SET search_path = shadow, public",
     "ALTER ROLE elspeth_analyst IN DATABASE {database} RESET search_path",
     "the role elspeth_analyst has 'search_path=shadow, public' set in this database"),
    # (a hostile review's: an event trigger that made every rebuilt row the stored one; here one
    # that does nothing, which is enough to be named)
    ("CREATE FUNCTION public.quiet() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$; "
     "CREATE EVENT TRIGGER quiet ON ddl_command_end EXECUTE FUNCTION public.quiet()",
     "DROP EVENT TRIGGER quiet; DROP FUNCTION public.quiet()",
     "the event trigger quiet (on ddl_command_end) runs on a check's own statements"),
    # (another review's: a relation in a system schema, which the shadow check skipped; a view in
    # a table's place; a function of another schema run as the rebuild writes its copy, which can
    # change the comparison's own search path; a type of another schema whose cast forges)
    ("CREATE TABLE information_schema.run_metrics (LIKE public.run_metrics)",
     "DROP TABLE information_schema.run_metrics", "information_schema.run_metrics is named like a table of the store"),
    ("ALTER TABLE artifacts RENAME TO artifacts_moved; CREATE VIEW public.artifacts AS SELECT * FROM artifacts_moved; "
     "GRANT SELECT ON public.artifacts TO elspeth_auditor, elspeth_analyst; "
     "GRANT SELECT, INSERT, UPDATE, DELETE ON public.artifacts TO elspeth_writer",
     "DROP VIEW public.artifacts; ALTER TABLE artifacts_moved RENAME TO artifacts",
     "public.artifacts is not a table (relkind v)"),
    ("CREATE SCHEMA x; CREATE FUNCTION x.hook() RETURNS text LANGUAGE sql AS $$SELECT 'a'$$; "
     "ALTER TABLE run_metrics ALTER COLUMN metric SET DEFAULT x.hook()",
     "ALTER TABLE run_metrics ALTER COLUMN metric DROP DEFAULT; DROP SCHEMA x CASCADE",
     "the table run_metrics uses function x.hook(), which is not PostgreSQL's own"),
    ("CREATE SCHEMA x; CREATE FUNCTION x.same(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT t$$; "
     "CREATE INDEX hook ON run_metrics ((x.same(metric)))",
     "DROP INDEX hook; DROP SCHEMA x CASCADE", "the table run_metrics uses function x.same(pg_catalog.text)"),
    ("CREATE SCHEMA x; CREATE DOMAIN x.label AS text; ALTER TABLE token_outcomes ALTER COLUMN reason TYPE x.label",
     "ALTER TABLE token_outcomes ALTER COLUMN reason TYPE text; DROP SCHEMA x CASCADE",
     "the table token_outcomes uses type x.label"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "undo", "named"),
    TWO_FACED,
    ids=[
        "rls",
        "policy",
        "shadow",
        "user-schema",
        "path",
        "event-trigger",
        "system-schema",
        "view",
        "default",
        "index",
        "type",
    ],
)
def test_a_store_set_up_to_show_analysts_other_rows_fails_the_check(
    db: Database, tmp_path: Path, change: str, undo: str, named: str
) -> None:
    """A superuser who leaves every row alone but has the analysts read others (a row-level
    security policy, a relation of the same name earlier on their search path) passed
    `replay --check`, which reads `public`'s tables, qualified, as the auditor."""
    import psycopg
    from psycopg import sql

    work, run_id = _run(db, tmp_path, "linear")
    with db.connect() as conn:
        (database,) = conn.execute("SELECT current_database()").fetchone() or ("",)
        name = sql.Identifier(database).as_string(conn)
        try:
            conn.execute(change.format(database=name))  # type: ignore[arg-type]  # (SQL of the test's own)
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server's user may not make this change")
        conn.commit()
    try:
        err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db), 1)
        assert named in err, err
    finally:
        with db.connect() as conn:
            conn.execute(undo.format(database=name))  # type: ignore[arg-type]
            conn.commit()
    assert elspeth("replay", run_id, "--check", cwd=work, db=db).returncode == 0


# A hostile review's forgery: a projection row changed, and an event trigger that gives each copy the
# comparison makes a row trigger setting every rebuilt row to the stored one. It passed as agreeing.
_COPYING_TRIGGER = """
CREATE FUNCTION public.copy_outcome() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  SELECT s.outcome, s.reason INTO NEW.outcome, NEW.reason FROM public.token_outcomes s
  WHERE s.run_id = NEW.run_id AND s.token_id = NEW.token_id;
  RETURN NEW;
END $f$;
CREATE FUNCTION public.on_copy() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_identity LIKE '%.token_outcomes' LOOP
    EXECUTE format('CREATE TRIGGER copy BEFORE INSERT OR UPDATE ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION public.copy_outcome()', r.object_identity);
  END LOOP;
END $f$;
CREATE EVENT TRIGGER on_copy ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION public.on_copy();
"""


@pytest.mark.parametrize(
    "enabled",
    [
        "",
        "ALTER EVENT TRIGGER on_copy ENABLE ALWAYS",
        # (it fires in a session whose session_replication_role is replica: a superuser can set that for a role)
        "ALTER EVENT TRIGGER on_copy ENABLE REPLICA",
    ],
)
def test_an_event_trigger_that_rewrites_the_checks_rebuild_fails_the_check(
    db: Database, tmp_path: Path, enabled: str
) -> None:
    import psycopg

    work, run_id = _run(db, tmp_path, "linear")
    with db.connect() as conn:
        try:
            conn.execute(_COPYING_TRIGGER + enabled)
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server's user may not make event triggers")
        conn.execute("SET session_replication_role = replica")  # (past the store's own triggers)
        conn.execute(
            "UPDATE token_outcomes SET outcome = 'completed', reason = 'forged' WHERE run_id = %s "
            "AND token_id = (SELECT min(token_id) FROM token_outcomes WHERE run_id = %s)",
            (run_id, run_id),
        )
        conn.commit()
    try:
        err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db), 1)
        assert "the event trigger on_copy (on ddl_command_end)" in err, err
    finally:
        with db.connect() as conn:
            conn.execute(
                "DROP EVENT TRIGGER on_copy; DROP FUNCTION public.on_copy(); DROP FUNCTION public.copy_outcome()"
            )
            conn.commit()
    err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db), 1)
    assert "projections differ from the events: token_outcomes" in err, err


def test_a_trigger_on_a_checks_own_copy_is_named(db: Database) -> None:
    """Whatever put it there (an event trigger enabled as the check began), a copy the check made
    with no trigger, rule or policy that has one is not compared."""
    from landscape.projections import altered_copies

    with db.connect() as conn:
        conn.execute("CREATE TEMP TABLE token_outcomes (run_id text, token_id text)")
        assert altered_copies(conn) == []
        conn.execute(
            "CREATE FUNCTION pg_temp.same() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$; "
            "CREATE TRIGGER copy BEFORE INSERT ON pg_temp.token_outcomes FOR EACH ROW EXECUTE FUNCTION pg_temp.same(); "
            "CREATE RULE keep AS ON UPDATE TO pg_temp.token_outcomes DO INSTEAD NOTHING"
        )
        assert altered_copies(conn) == [
            "the check's copy of token_outcomes was given a rule keep when it was made",
            "the check's copy of token_outcomes was given a trigger copy when it was made",
        ]
        conn.rollback()


def test_a_nondeterministic_collation_on_a_store_column_fails_the_check(db: Database, tmp_path: Path) -> None:
    """Under a case-insensitive collation, a reason changed in case only compares equal to the events'."""
    import psycopg

    work, run_id = _run(db, tmp_path, "linear")
    with db.connect() as conn:
        try:
            conn.execute(
                "CREATE COLLATION public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); "
                "ALTER TABLE token_outcomes ALTER COLUMN reason TYPE text COLLATE public.ci"
            )
        except psycopg.Error as e:
            pytest.skip(f"the test server cannot make the collation: {e}")
        conn.commit()
    try:
        err = one_line_error(elspeth("replay", run_id, "--check", cwd=work, db=db), 1)
        assert "token_outcomes.reason has the nondeterministic collation ci" in err, err
    finally:
        with db.connect() as conn:
            conn.execute(
                'ALTER TABLE token_outcomes ALTER COLUMN reason TYPE text COLLATE "default"; DROP COLLATION public.ci'
            )
            conn.commit()


@pytest.mark.parametrize(
    "change",
    [
        "payload = '\\x'",  # a body that does not decode (a review: prove ended in a traceback)
        "payload = convert_to('{}', 'UTF8')",  # one that decodes to no event
        "hash = sha256(hash)",
        "recorded_at = recorded_at + interval '1 second'",
    ],
    ids=["truncated", "no-event", "hash", "recorded-at"],
)
def test_prove_refuses_a_store_whose_log_does_not_verify(db: Database, tmp_path: Path, change: str) -> None:
    """As `export` does: the operator learns it here, where the store can be looked into, not from
    the auditor's `verify` (before, prove wrote such a bundle, or a traceback)."""
    work, run_id = _run(db, tmp_path, "linear")
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"UPDATE events SET {change} WHERE run_id = %s AND seq = 10", (run_id,))
        conn.commit()
    for how in (["--row", "2"], ["--seq", "10"], ["--seq", "3"]):
        err = one_line_error(elspeth("prove", run_id, *how, "-o", "p.json", cwd=work, db=db), 1)
        assert f"the store's log of run {run_id} does not verify at seq 10" in err, (how, err)
        assert not (work / "p.json").exists()


def test_a_session_search_path_other_than_the_default_fails_the_check(db: Database) -> None:
    """One the server's own configuration sets (`ALTER SYSTEM`, postgresql.conf), which no role's
    or database's setting shows: the check reads as it was before it set its own."""
    from landscape.projections import reading_hazards

    with db.connect() as conn:
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        assert reading_hazards(conn, '"$user", public') == []
        (named,) = reading_hazards(conn, "information_schema, public")
        assert named.startswith("this session's search path is 'information_schema, public'"), named
        conn.rollback()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("UPDATE payloads SET data = data || '\\x20'::bytea", "does not match its commitment in the store"),
        ("DELETE FROM payloads", "is missing from the store, and no erasure record says why"),
    ],
    ids=["changed", "deleted"],
)
def test_prove_refuses_a_row_whose_payload_was_changed_or_deleted(
    db: Database, tmp_path: Path, change: str, says: str
) -> None:
    """As `export` does (before, prove wrote the bundle, and only the auditor's verify refused it)."""
    work, run_id = _run(db, tmp_path, "linear")
    assert elspeth("prove", run_id, "--row", "2", "-o", "p.json", cwd=work, db=db).returncode == 0
    h = json.loads((work / "p.json").read_text())["payloads"][0]["hash"]
    (work / "p.json").unlink()
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        assert conn.execute(f"{change} WHERE run_id = %s AND hash = decode(%s, 'hex')", (run_id, h)).rowcount == 1
        conn.commit()
    err = one_line_error(elspeth("prove", run_id, "--row", "2", "-o", "p.json", cwd=work, db=db), 1)
    assert f"row payload {h} {says}" in err, err
    assert not (work / "p.json").exists()
