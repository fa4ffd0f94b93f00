"""`elspeth abandon`: a stopped run ended for good, by the operator, with a reason on record.

A run that is not completed can be resumed, and so it keeps what a resume needs: retention
leaves its payloads, and a new run may not append to its sink files. Abandoned, it is final: its
log ends there (signed), a resume is refused, and both of those let go."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.abandon import AbandonRefused, abandon_run
from landscape.db import Database
from landscape.fold import IllegalEvent, RunFold
from landscape.postgres import PostgresRecorder
from statecharts import events as ev
from statecharts.machines import RUN, RunState
from tests.test_cli import elspeth, one_line_error

PIPELINE = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'amount: int']}, on_validation_failure: discard}
aggregations:
- {name: stats, plugin: batch_stats, input: raw, on_success: out, on_error: discard, trigger: {count: 5},
   options: {value_field: amount}}
sinks:
  out: {plugin: csv, options: {path: out/stats.csv, mode: append}}
"""


def _crashed(db: Database, work: Path, fault: str = "committed:3", settings: str = PIPELINE) -> str:
    """A run whose writer died with rows buffered in a batch."""
    (work / "out").mkdir(exist_ok=True)
    (work / "in.csv").write_text("id,amount\n" + "".join(f"{i},{i * 10}\n" for i in range(1, 13)))
    (work / "s.yaml").write_text(settings)
    crash = elspeth("run", "-s", "s.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": fault})
    assert crash.returncode != 0, crash.stdout
    with db.connect() as conn:
        row = conn.execute("SELECT run_id, status FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None and row[1] == "running"
    return str(row[0])


def _completed(db: Database, work: Path, settings: str = PIPELINE) -> str:
    (work / "out").mkdir(exist_ok=True)
    (work / "in.csv").write_text("id,amount\n1,10\n2,20\n")
    (work / "s.yaml").write_text(settings)
    ran = elspeth("run", "-s", "s.yaml", cwd=work, db=db)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.split()[1]


def _append_as_writer(db: Database, run_id: str, events: list[ev.EventBase], forger: Path | None) -> None:
    """What anyone who can write to the store can do: append events, and sign their checkpoint
    with a key of their own (made in the `forger` home), or not at all (None)."""
    from engine import signing
    from statecharts.compiled import EVENT_MACHINE

    recorder = PostgresRecorder(db)
    notary = signing.notary(recorder, str(forger)) if forger is not None else None
    writer = recorder.open_writer(run_id, notary=notary)
    try:
        for event in events:
            writer.append(EVENT_MACHINE[type(event).__name__], run_id, event)
        writer.commit(wait=True)
    finally:
        writer.close()


def _status(db: Database, work: Path, run_id: str) -> str:
    listed = {r["run_id"]: r for r in json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)}
    return str(listed[run_id]["status"])


def _payloads(db: Database, run_id: str) -> int:
    with db.connect() as conn:
        return conn.execute("SELECT count(*) FROM payloads WHERE run_id = %s", (run_id,)).fetchone()[0]  # type: ignore[index,no-any-return]


def test_an_abandoned_run_is_final_verifies_and_lets_its_data_age_out(db: Database, tmp_path: Path) -> None:
    run_id = _crashed(db, tmp_path)
    # Before: retention keeps its data, for a resume.
    kept = elspeth("purge", "--older-than", "0s", "--reason", "RP-1", cwd=tmp_path, db=db)
    assert kept.returncode == 0 and f"{run_id}: running" in kept.stdout and "elspeth abandon" in kept.stdout
    assert _payloads(db, run_id) > 0

    done = elspeth("abandon", run_id, "--reason", "input withdrawn by the supplier (ticket 7)", cwd=tmp_path, db=db)
    assert done.returncode == 0, done.stderr
    assert f"run {run_id} abandoned (it had crashed, its writer gone); its log ends at" in done.stdout
    assert _status(db, tmp_path, run_id) == "abandoned"
    # Its life says what happened, in order, with the operator's words.
    shown = json.loads(elspeth("show", run_id, "--json", cwd=tmp_path, db=db).stdout)
    steps = [(s["event"], s["detail"]) for s in shown["lifecycle"]][-2:]
    assert steps == [("RunInterrupted", "writer lost"), ("RunAbandoned", "input withdrawn by the supplier (ticket 7)")]
    assert shown["ended_at"] is not None
    # A row the run had in flight (buffered in the open batch) never ends, and explain says so.
    text = elspeth("explain", run_id, "--row", "1", cwd=tmp_path, db=db)
    assert text.returncode == 0 and "never ended: buffered when the run was abandoned" in text.stdout, text.stderr
    said = json.loads(elspeth("explain", run_id, "--row", "1", "--json", cwd=tmp_path, db=db).stdout)
    assert said["run_status"] == "abandoned" and said["rows"][0]["tokens"][0]["outcome"] is None
    # The log verifies whole, projections included, and ends at a signed checkpoint.
    check = elspeth("replay", run_id, "--check", cwd=tmp_path, db=db)
    assert check.returncode == 0, check.stdout + check.stderr
    assert ": abandoned (seq " in check.stdout and "left unfinished: " in check.stdout, check.stdout
    with db.connect() as conn:
        (last,) = conn.execute("SELECT max(seq) FROM events WHERE run_id = %s", (run_id,)).fetchone()  # type: ignore[misc]
        signed = conn.execute(
            "SELECT 1 FROM checkpoints WHERE run_id = %s AND tree_size = %s", (run_id, last + 1)
        ).fetchone()
    assert signed is not None
    # Final: no resume, no second abandon; nothing recorded by either.
    err = one_line_error(elspeth("resume", run_id, cwd=tmp_path, db=db), 1)
    assert f"run {run_id} was abandoned" in err and "cannot be resumed" in err
    err = one_line_error(elspeth("abandon", run_id, "--reason", "again", cwd=tmp_path, db=db), 1)
    assert "is abandoned already" in err
    assert PostgresRecorder(db).last_seq(run_id) == last
    # Its data is now the retention policy's like a completed run's.
    gone = elspeth("purge", "--older-than", "0s", "--reason", "RP-1", cwd=tmp_path, db=db)
    assert gone.returncode == 0 and _payloads(db, run_id) == 0, gone.stdout
    assert elspeth("replay", run_id, "--check", cwd=tmp_path, db=db).returncode == 0
    # And an auditor's export of it verifies offline.
    export = elspeth("export", run_id, "-o", str(tmp_path / "run.export"), cwd=tmp_path, db=db)
    assert export.returncode == 0, export.stderr
    key = str(tmp_path / ".elspeth/keys/default.pub")
    verify = elspeth("verify", str(tmp_path / "run.export"), "--public-key", key, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_abandoned_runs_file_keeps_its_unrecorded_rows_until_they_are_cut_as_said(
    db: Database, tmp_path: Path
) -> None:
    # Crashed after a sink flush, before its commit: the file holds rows no log records.
    run_id = _crashed(db, tmp_path, fault="sink_flush:2")
    before = (tmp_path / "out/stats.csv").read_bytes()
    err = one_line_error(elspeth("run", "-s", "s.yaml", cwd=tmp_path, db=db), 1)
    assert f"elspeth abandon {run_id} --reason" in err
    done = elspeth("abandon", run_id, "--reason", "superseded", cwd=tmp_path, db=db)
    assert done.returncode == 0, done.stderr
    assert "sink 'out': " in done.stderr and "after what the run made durable" in done.stderr, done.stderr
    assert (tmp_path / "out/stats.csv").read_bytes() == before  # nothing cut
    # A new run would seem to vouch for them: refused, naming the cut (as abandon said too).
    err = one_line_error(elspeth("run", "-s", "s.yaml", cwd=tmp_path, db=db), 1)
    cut = err.split("`")[1]
    assert cut.startswith("truncate -s ") and " ".join(cut.split()[:3]) in done.stderr, (err, done.stderr)
    subprocess.run(cut, shell=True, cwd=tmp_path, check=True)
    again = elspeth("run", "-s", "s.yaml", cwd=tmp_path, db=db)
    assert again.returncode == 0, again.stderr
    durable = int(cut.split()[2])
    assert (tmp_path / "out/stats.csv").read_bytes().startswith(before[:durable])


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("   ", "--reason: empty"),
        ("x" * 1001, "--reason: 1,001 characters"),
        ("ok\x1b[2Jforged", "holds U+001B, a control, format or line-separating character"),
        ("two\nlines", "holds U+000A"),
        ("\u200b\u2060", "holds U+200B"),
        ("paid \u202e01$", "holds U+202E"),
        ("one\u2028RunCompleted", "holds U+2028"),
        ("\u0301\u00a0", "nothing visible"),
    ],
)
def test_a_bad_reason_is_refused_and_nothing_recorded(db: Database, tmp_path: Path, reason: str, said: str) -> None:
    """A reason that may not be recorded is a command line to fix: exit 2, as `purge`'s (docs/cli.md)."""
    run_id = _crashed(db, tmp_path)
    last = PostgresRecorder(db).last_seq(run_id)
    refused = elspeth("abandon", run_id, "--reason", reason, cwd=tmp_path, db=db)
    assert said in one_line_error(refused, 2) and "abandon --help' for help" in refused.stderr
    assert PostgresRecorder(db).last_seq(run_id) == last and _status(db, tmp_path, run_id) == "running"


def test_a_completed_or_unknown_run_is_refused(db: Database, tmp_path: Path) -> None:
    run_id = _completed(db, tmp_path)
    assert "is completed already" in one_line_error(elspeth("abandon", run_id, "--reason", "x", cwd=tmp_path, db=db), 1)
    assert "no run nope" in one_line_error(elspeth("abandon", "nope", "--reason", "x", cwd=tmp_path, db=db), 1)
    usage = elspeth("abandon", run_id, cwd=tmp_path, db=db)
    assert usage.returncode == 2 and "--reason" in usage.stderr


def test_a_run_being_written_is_not_abandoned(db: Database, tmp_path: Path) -> None:
    run_id = _crashed(db, tmp_path)
    writer = PostgresRecorder(db).open_writer(run_id)  # another process's lock, as a live writer holds it
    try:
        with pytest.raises(AbandonRefused, match="being written by another process"):
            abandon_run(db, run_id, "x", home=None)
    finally:
        writer.close()


def test_a_log_cut_short_is_not_abandoned(db: Database, tmp_path: Path) -> None:
    """Abandoning signs the end of the log: over a tail someone deleted, it would make the cut
    look like the run's own end. The log is verified first, as a resume's is."""
    run_id = _crashed(db, tmp_path, fault="committed:6")
    last = PostgresRecorder(db).last_seq(run_id)
    with db.connect() as conn:  # a superuser, the append-only triggers off
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM events WHERE run_id = %s AND seq > %s", (run_id, last - 3))
    err = one_line_error(elspeth("abandon", run_id, "--reason", "x", cwd=tmp_path, db=db), 1)
    assert f"run {run_id} cannot be abandoned: its log does not verify" in err, err
    with db.connect() as conn:  # (a run like this stops every retention in the store: gone again)
        conn.execute("SET session_replication_role = replica")
        for table in ("events", "checkpoints", "payloads", "runs"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))


def test_nothing_may_follow_an_abandoned_run_in_its_log() -> None:
    """The fold refuses what the writer role could append after the end: a resume, a row."""
    for late, entity in (
        (ev.RunResumed(source_fingerprint="f"), "r"),
        (ev.TokenCreated(row_index=0, data_hash="h", at="raw"), "t"),
    ):
        fold = RunFold("r")
        fold.status = RunState.INTERRUPTED
        fold.apply(0, "r", ev.RunAbandoned(reason="x"))
        assert fold.status == RunState.ABANDONED
        with pytest.raises(IllegalEvent):
            fold.apply(1, entity, late)
    # Only a stopped run is abandoned: a live one is first recorded interrupted.
    assert RunState.ABANDONED in RUN.terminal
    with pytest.raises(IllegalEvent):
        RunFold("r", status=RunState.RUNNING).apply(0, "r", ev.RunAbandoned(reason="x"))


def test_an_ending_signed_with_another_key_does_not_let_purge_erase_the_run(db: Database, tmp_path: Path) -> None:
    """Anyone who can write to the store can append an ending and sign its checkpoint with a key
    of their own. Retention and requests take a run as final only under the home's signature."""
    run_id = _crashed(db, tmp_path)
    ending = [ev.RunInterrupted(reason="writer lost"), ev.RunAbandoned(reason="forged")]
    _append_as_writer(db, run_id, ending, tmp_path / "forger")
    assert _status(db, tmp_path, run_id) == "abandoned"
    before = _payloads(db, run_id)
    err = one_line_error(elspeth("purge", run_id, "--row", "1", "--reason", "t", cwd=tmp_path, db=db), 1)
    assert "which purge cannot check" in err and "nothing was erased" in err
    assert _payloads(db, run_id) == before > 0


def test_the_runs_key_is_asked_for_by_name_when_its_settings_file_is_gone_or_broken(
    db: Database, tmp_path: Path
) -> None:
    from landscape.keys import default_signer, generate_key_files

    default_signer(tmp_path / ".elspeth")  # the home has a key of its own, which did not sign this run
    (tmp_path / "keys").mkdir()
    generate_key_files("k1", tmp_path / "keys")
    run_id = _crashed(db, tmp_path, settings=PIPELINE + "landscape: {signing_key: keys/k1.key, witness_dir: wit}\n")
    (tmp_path / "s.yaml").rename(tmp_path / "moved.yaml")
    err = one_line_error(elspeth("abandon", run_id, "--reason", "x", cwd=tmp_path, db=db), 1)
    assert f"run {run_id} cannot be abandoned with the key " in err and "signed by k1+" in err, err
    assert "does not verify" not in err
    (tmp_path / "s.yaml").write_text("source: [unclosed\n")  # the recorded file, broken since
    err = one_line_error(elspeth("abandon", run_id, "--reason", "x", cwd=tmp_path, db=db), 1)
    assert "the settings file it was started with cannot be read now" in err and "-s FILE" in err, err
    done = elspeth("abandon", run_id, "--reason", "x", "-s", "moved.yaml", cwd=tmp_path, db=db)
    assert done.returncode == 0, done.stderr
    assert elspeth("replay", run_id, "--check", "--public-key", "keys/k1.pub", "--witness", f"wit/{run_id}.checkpoints",
                   cwd=tmp_path, db=db).returncode == 0  # fmt: skip


def _forge_ending(db: Database, run_id: str) -> None:
    """As someone who can write to the store but not sign: an ending appended to a crashed run
    whose checkpoints a superuser deleted first, so that it looks like a run of a store from
    before checkpoints."""
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM checkpoints WHERE run_id = %s", (run_id,))
    _append_as_writer(db, run_id, [ev.RunInterrupted(reason="writer lost"), ev.RunAbandoned(reason="forged")], None)


def test_an_ending_with_no_checkpoint_to_prove_it_is_not_taken_as_final(db: Database, tmp_path: Path) -> None:
    run_id = _crashed(db, tmp_path)
    _forge_ending(db, run_id)
    before = _payloads(db, run_id)
    err = one_line_error(elspeth("purge", run_id, "--row", "1", "--reason", "t", cwd=tmp_path, db=db), 1)
    assert "abandoned by its log, with no signed checkpoint to prove it" in err, err
    kept = elspeth("purge", "--older-than", "0s", "--reason", "RP-1", cwd=tmp_path, db=db)
    assert kept.returncode == 0 and _payloads(db, run_id) == before > 0, kept.stdout + kept.stderr
    # --force erases, and the record says what was forced, not "could still be resumed".
    forced = elspeth("purge", run_id, "--row", "1", "--reason", "ticket 5", "--force", cwd=tmp_path, db=db)
    assert forced.returncode == 0 and "(--force: it is abandoned by its log" in forced.stdout, forced.stdout
    with db.connect() as conn:
        (why,) = conn.execute("SELECT DISTINCT reason FROM erasures WHERE run_id = %s", (run_id,)).fetchone()  # type: ignore[misc]
    assert why == "ticket 5 [--force: the run's log says abandoned, and its end was not proved by a signature checked]"


def test_purge_checks_a_runs_named_key_with_its_public_half(db: Database, tmp_path: Path) -> None:
    from landscape.keys import default_signer, generate_key_files

    default_signer(tmp_path / ".elspeth")
    (tmp_path / "keys").mkdir()
    generate_key_files("prod", tmp_path / "keys")
    run_id = _completed(db, tmp_path, PIPELINE + "landscape: {signing_key: keys/prod.key}\n")
    err = one_line_error(elspeth("purge", run_id, "--row", "1", "--reason", "t", cwd=tmp_path, db=db), 1)
    assert "completed by its log, at a checkpoint signed by prod+" in err, err
    assert "that run's with ELSPETH_SIGNING_KEY naming its .key file" in err, err  # (not --public-key: a review)
    # The erasure records must be signed by the run's key too, or a verifier holding it would not count them.
    args = ("purge", run_id, "--row", "1", "--reason", "t", "--public-key", "keys/prod.pub")
    err = one_line_error(elspeth(*args, cwd=tmp_path, db=db), 1)
    assert "would be signed by" in err and "ELSPETH_SIGNING_KEY" in err, err
    done = elspeth(*args, cwd=tmp_path, db=db, env={"ELSPETH_SIGNING_KEY": str(tmp_path / "keys/prod.key")})
    assert done.returncode == 0 and "erasing 2 payload" in done.stdout and "--force" not in done.stdout, done.stdout
    assert "the records signed by prod+" in done.stdout, done.stdout
    replay = elspeth("replay", run_id, "--check", "--public-key", "keys/prod.pub", cwd=tmp_path, db=db)
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_abandon_names_an_open_json_array_and_a_database_table_it_leaves(db: Database, tmp_path: Path) -> None:
    settings = PIPELINE.replace(
        "out: {plugin: csv, options: {path: out/stats.csv, mode: append}}",
        "out: {plugin: json, options: {path: out/stats.json, format: json, mode: append}}\n"
        "  table: {plugin: database, options: {url: 'sqlite:///out/t.db', table: t}}",
    ).replace("on_success: out, on_error: discard", "on_success: out, on_error: table")
    run_id = _crashed(db, tmp_path, fault="committed:8", settings=settings)  # after the first batch's row
    assert (tmp_path / "out/stats.json").read_bytes().startswith(b"[")
    done = elspeth("abandon", run_id, "--reason", "x", cwd=tmp_path, db=db)
    assert done.returncode == 0, done.stderr
    assert "is a JSON array the run never closed" in done.stderr, done.stderr
    assert "sink 'table' (sqlite:///out/t.db#t): a database table" in done.stderr, done.stderr


def test_a_status_the_writer_appends_to_a_completed_run_under_its_own_key_is_not_believed(
    db: Database, tmp_path: Path
) -> None:
    """To keep a completed run's data from retention, or have it erased as if forced, the writer
    appends a RunInterrupted (illegal after RunCompleted), signs the checkpoint with a key of its
    own and makes the runs table agree. Purge takes no status from an end it cannot check."""
    run_id = _completed(db, tmp_path)
    _append_as_writer(db, run_id, [ev.RunInterrupted(reason="SIGTERM")], tmp_path / "forger")
    with db.connect() as conn:
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = %s", (run_id,))
    err = one_line_error(elspeth("purge", run_id, "--row", "1", "--reason", "t", cwd=tmp_path, db=db), 1)
    assert "is interrupted by its log, at a checkpoint signed by " in err and "cannot check" in err, err
    forced = elspeth("purge", run_id, "--row", "1", "--reason", "GDPR-1", "--force", cwd=tmp_path, db=db)
    assert forced.returncode == 0, forced.stderr
    # The rows are found in the log only as far as a checkpoint of the key signs it: said.
    assert "read the log only up to seq" in forced.stdout, forced.stdout
    with db.connect() as conn:
        (why,) = conn.execute("SELECT DISTINCT reason FROM erasures WHERE run_id = %s", (run_id,)).fetchone()  # type: ignore[misc]
    assert why == "GDPR-1 [--force: the run's log says interrupted, and its end was not proved by a signature checked]"


def test_abandon_says_a_sink_file_was_replaced_since(tmp_path: Path) -> None:
    import hashlib

    from engine.abandon import _left_behind

    fold = RunFold("r", working_dir=str(tmp_path), settings={"sinks": {"out": {"plugin": "json"}}})
    fold.sink_locations["out"] = "out.json"
    fold.sink_positions["out"] = 10
    fold.sink_digests["out"] = hashlib.sha256(b'[{"a": 1},').hexdigest()
    (tmp_path / "out.json").write_bytes(b'[{"a": 1},\n{"a": 2}')  # the run's, then a crash's
    assert [n.split(":")[0] for n in _left_behind(fold)] == ["sink 'out'", "sink 'out'"]
    assert "holds 9 bytes after" in _left_behind(fold)[0] and "never closed" in _left_behind(fold)[1]
    (tmp_path / "out.json").write_bytes(b'[{"b": 0},\n{"b": 1}')  # another file since
    (note,) = _left_behind(fold)
    assert "no longer starts with the 10 bytes the run made durable" in note
    (tmp_path / "out.json").unlink()  # gone: said too (it was said of nothing; a new user's review)
    (note,) = _left_behind(fold)
    assert "out.json is gone (moved or deleted since): the 10 bytes the run made durable there" in note, note
