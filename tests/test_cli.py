"""The `elspeth` command as users run it: real processes, real PostgreSQL, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from landscape.db import Database, check_schema
from landscape.errors import SchemaOutdated
from tests.engine_harness import write_csv

ROOT = Path(__file__).resolve().parents[1]


def elspeth(
    *args: str, cwd: Path, db: Database | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    if db is not None:
        full_env["ELSPETH_DATABASE_URL"] = db.conninfo
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


PIPELINE = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'v: int']}, on_validation_failure: bad}
gates:
- name: big
  input: raw
  condition: row['v'] > 5
  routes: {'true': high, 'false': low}
sinks:
  high: {plugin: csv, options: {path: out/high.csv}}
  low: {plugin: csv, options: {path: out/low.csv}}
  bad: {plugin: json, options: {path: out/bad.jsonl}}
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    write_csv(tmp_path / "in.csv", ["id", "v"], [[1, 3], [2, 9], [3, "x"]])
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(PIPELINE)
    return tmp_path


def test_db_upgrade_in_an_empty_folder_starts_the_embedded_server_and_stops_it(tmp_path: Path) -> None:
    proc = elspeth("db", "upgrade", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "schema at revision" in proc.stdout
    pgdata = tmp_path / ".elspeth" / "pgdata"
    assert (pgdata / "PG_VERSION").exists()
    assert not (pgdata / "postmaster.pid").exists()  # stopped on exit
    again = elspeth("runs", "--json", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout) == []
    assert not (pgdata / "postmaster.pid").exists()


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("99", "PostgreSQL 99, newer than"),
        ("9.6", "PostgreSQL 9.6; the bundled server is"),
        ("abc", "unreadable PG_VERSION"),
        (None, "cannot read the data folder"),  # PG_VERSION is a folder
    ],
)
def test_a_data_folder_this_server_cannot_use_is_a_clear_error(tmp_path: Path, version: str | None, says: str) -> None:
    pgdata = tmp_path / ".elspeth" / "pgdata"
    pgdata.mkdir(parents=True)
    if version is None:
        (pgdata / "PG_VERSION").mkdir()
    else:
        (pgdata / "PG_VERSION").write_text(version + "\n")
    err = one_line_error(elspeth("db", "upgrade", cwd=tmp_path), 1)
    assert says in err and "--database" in err
    assert sorted(p.name for p in (tmp_path / ".elspeth").iterdir()) == ["pgdata"]  # nothing written


def test_a_data_folder_of_another_user_is_refused_not_taken(tmp_path: Path) -> None:
    pgdata = tmp_path / ".elspeth" / "pgdata"
    pgdata.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("making a folder another user's needs root")
    os.chown(pgdata, 65534, 65534)  # nobody
    err = one_line_error(elspeth("db", "upgrade", cwd=tmp_path), 1)
    assert "belongs to another user (uid 65534)" in err
    assert pgdata.stat().st_uid == 65534


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x@y/z",
        "postgresql://user@host:notaport/db",
        "postgresql://u:s3cret%zzPW@127.0.0.1:1/db",
        "postgresql://bob:s3cre%C3tpw@localhost/db",  # (an escape of no UTF-8: a traceback, said a review)
    ],
)
def test_a_malformed_database_url_is_one_line(tmp_path: Path, url: str) -> None:
    """The last: a password with a '%' not starting an escape was a traceback that printed it
    (the driver's own message), from `--database`, ELSPETH_DATABASE_URL and landscape.url alike
    (a new user's review)."""
    proc = elspeth("--database", url, "runs", cwd=tmp_path)
    # A URL that is no URL is text to fix, as in landscape.url: exit 2 with the usage message
    # (docs/cli.md), not 1 as for a store out of reach. (Also said: a password given as an
    # argument is seen by `ps`.)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("Error: Invalid value for '--database': malformed database URL"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / ".elspeth").exists(), proc.stderr
    from_env = elspeth("runs", cwd=tmp_path, env={"ELSPETH_DATABASE_URL": url})
    assert from_env.returncode == 2 and "Invalid value for ELSPETH_DATABASE_URL: malformed" in from_env.stderr
    err = proc.stderr + from_env.stderr
    assert "s3cre" not in err and "zzPW" not in err and "C3tpw" not in err, err
    if "%" in url:
        assert "write a '%' itself as %25" in err, err


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    err = one_line_error(elspeth("--database", "postgresql://nobody@127.0.0.1:1/x", "runs", cwd=tmp_path), 1)
    assert "cannot connect" in err


def test_an_outdated_schema_says_to_run_db_upgrade_and_nothing_upgrades_it_silently(
    server_url: str, tmp_path: Path
) -> None:
    import psycopg
    from alembic import command

    from landscape.db import _alembic_config, head_revision
    from tests.conftest import _with_database

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute('DROP DATABASE IF EXISTS "t_outdated"')
        admin.execute('CREATE DATABASE "t_outdated"')
    old = Database(_with_database(server_url, "t_outdated"), "outdated")
    command.upgrade(_alembic_config(old), "0001")  # as an earlier ELSPETH left it
    err = one_line_error(elspeth("runs", cwd=tmp_path, db=old), 1)
    assert "schema is at revision 0001" in err and "run `elspeth db upgrade`" in err
    with pytest.raises(SchemaOutdated):
        check_schema(old)  # listing runs did not upgrade it
    assert elspeth("db", "upgrade", cwd=tmp_path, db=old).returncode == 0
    check_schema(old)
    assert head_revision() != "0001"


def test_a_file_a_sink_with_no_rows_left_is_said_to_be_from_before_the_run(db: Database, work: Path) -> None:
    """A sink that gets no rows writes no file and leaves one already there as it is (the prior
    system's behaviour): the summary and `show` must not pass it off as this run's output."""
    write_csv(work / "in.csv", ["id", "v"], [[1, 3], [2, 4]])  # nothing is high this time
    (work / "out" / "high.csv").write_text("id,v\n7,70\n")  # an earlier run's approvals
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "sink high" in x)
    assert "no rows written: the 10 bytes there are none the run made durable" in line, proc.stdout
    shown = elspeth("show", proc.stdout.split()[1], "--json", cwd=work, db=db)
    sinks = {f["sink"]: f for f in json.loads(shown.stdout)["artifacts"]}
    assert sinks["high"]["file"] == "left" and sinks["low"]["file"] == "ok", sinks
    # In append mode too, where the run's position is where the file ended before it, not its bytes.
    settings = (work / "settings.yaml").read_text()
    appending = settings.replace("out/high.csv}", "out/high.csv, mode: append}")
    appending = appending.replace("out/bad.jsonl}", "out/bad.json, format: json, mode: append}")
    (work / "settings.yaml").write_text(appending)
    (work / "out" / "bad.json").write_text('[\n{"id": "4", "v": "y"}\n]\n')
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    for sink, size in (("high", 10), ("bad", 26)):
        line = next(x for x in proc.stdout.splitlines() if f"sink {sink}" in x)
        assert f"no rows written: the {size} bytes there are none the run made durable" in line, proc.stdout


def test_the_summary_counts_the_whole_command_not_only_the_run(
    db: Database, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary's "this command took" is the command's time: loading the settings and starting the store (a
    first start's initdb, seconds) included. It said 0.23 s of a command that took 4.9 s (a new
    user's review). The command's start is put 1,000 s back; the run itself is not."""
    import time
    import types

    from click.testing import CliRunner

    import engine.cli.main

    clock = types.SimpleNamespace(monotonic=lambda: time.monotonic() - 1000.0)
    monkeypatch.setattr(engine.cli.main, "time", clock, raising=False)
    monkeypatch.chdir(work)
    env = {"ELSPETH_DATABASE_URL": db.conninfo, "ELSPETH_HOME": str(work / "home")}
    result = CliRunner().invoke(engine.cli.main.cli, ["run", "-s", "settings.yaml"], env=env)
    assert result.exit_code == 0, result.output
    took = re.search(r"this command took (\d+\.\d\d) s", result.output)
    assert took is not None and 1000 <= float(took.group(1)) < 1300, result.output
    rate = re.search(r"rows in: 3 \((\d+) rows/s\)", result.output)  # (of the run's time, not the command's)
    assert rate is not None and int(rate.group(1)) > 0, result.output


def test_the_summary_writes_its_counts_and_rate_alike(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rows in: 4202 (1,497 rows/s)`: a thousands separator on the rate alone (a documentation
    review). Every number of the summary is written as `show` and `runs` write counts: no separator."""
    import types

    import engine.cli.run

    rows = types.SimpleNamespace(
        rows_in=4202, written={"out": 4201}, quarantined=1, failed=0, diverted=0, discarded=0, unfinished=0
    )
    end = types.SimpleNamespace(rows=rows, first_failed=None, outcomes={"completed": 4201}, artifacts=[])
    monkeypatch.setattr(engine.cli.run, "run_end", lambda _db, _run: end)
    outcome = types.SimpleNamespace(run_id="run-1", status="completed", records_before=0, input_changed=False)
    db = types.SimpleNamespace(describe=lambda: "the store")
    engine.cli.run.print_summary(db, outcome, seconds=2.0, command_seconds=2.5)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "  rows in: 4202 (2101 rows/s)\n" in out, out
    assert "  rows written: out 4201\n" in out and "  tokens: completed 4201\n" in out, out


def test_run_writes_outputs_and_a_summary(db: Database, work: Path) -> None:
    proc = elspeth("run", "-s", "settings.yaml", "--execute", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout and "rows in: 3" in proc.stdout
    assert "quarantined 1" in proc.stdout
    # The command's own time, not called the run's: `show` gives the run's, from its record.
    assert re.fullmatch(r"run \S+ completed; this command took \d+\.\d\d s", proc.stdout.splitlines()[0])
    assert (work / "out" / "high.csv").read_text().splitlines() == ["id,v", "2,9"]
    assert json.loads((work / "out" / "bad.jsonl").read_text()) == {"id": "3", "v": "x"}
    run_id = proc.stdout.split()[1]
    assert "  sink high: 1 row → out/high.csv: sha256 " in proc.stdout, proc.stdout  # (not "1 rows")
    shown = elspeth("show", run_id, cwd=work, db=db).stdout
    assert "1 row written" in shown and "    high: 1 row → out/high.csv " in shown and "1 rows" not in shown, shown

    explain = elspeth("explain", run_id, "--row", "2", cwd=work, db=db)  # rows count from 1
    assert explain.returncode == 0, explain.stderr
    assert "gate big: row['v'] > 5 → true" in explain.stdout and "routed" in explain.stdout
    replay = elspeth("replay", run_id, "--check", cwd=work, db=db)
    assert replay.returncode == 0, replay.stderr
    assert "chain verified" in replay.stdout and "projections agree" in replay.stdout
    rebuilt = elspeth("projections", "rebuild", run_id, cwd=work, db=db)
    assert rebuilt.returncode == 0 and "rebuilt" in rebuilt.stdout


def test_a_run_that_read_nothing_or_wrote_nothing_is_warned_of(db: Database, work: Path) -> None:
    """Both complete (exit 0), as the prior system's did; a careless operator is told on stderr."""
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    (work / "in.csv").write_text("id,v\n")
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    assert "warning: the source read no records" in proc.stderr
    (work / "in.csv").write_text("id,v\n1,3\n")
    narrow = "{path: out/low.csv, schema: {mode: fixed, fields: ['id: int']}}"  # (no column for v)
    (work / "settings.yaml").write_text(PIPELINE.replace("{path: out/low.csv}", narrow))
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert "warning: no row was written: 1 failed, 0 quarantined, 0 diverted" in proc.stderr, proc.stdout + proc.stderr
    # Every row quarantined to `discard` (the source's default): nothing failed, nothing was
    # written, and nothing was said (a careless user's review).
    (work / "in.csv").write_text("id,v\n1,x\n2,y\n")
    (work / "settings.yaml").write_text(
        PIPELINE.replace("on_validation_failure: bad", "on_validation_failure: discard")
    )
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    assert "  rows quarantined: 2, failed: 0, diverted: 0 (2 of them to discard)" in proc.stdout
    assert "warning: no row was written: 0 failed, 2 quarantined, 0 diverted (2 of them to discard)" in proc.stderr, (
        proc.stderr
    )
    shown = elspeth("show", proc.stdout.split()[1], "--json", cwd=work, db=db)
    assert json.loads(shown.stdout)["rows"]["discarded"] == 2


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_working_folder_deleted_under_the_command_is_one_line(command: str, db: Database, work: Path) -> None:
    gone = work / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env.update(ELSPETH_DATABASE_URL=db.conninfo, ELSPETH_HOME=str(work / ".elspeth"))
    proc = subprocess.run(
        ["sh", "-c", 'cd "$1" && rmdir "$1" && exec "$2" -m engine.cli.main "$3" -s "$4"', "sh", str(gone),
         sys.executable, command, str(work / "settings.yaml")],
        env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert "the folder elspeth was started in no longer exists" in one_line_error(proc, 1)
    assert "home" not in proc.stderr  # (the home is absolute here: the settings' paths are what is lost)


def test_a_relative_home_from_a_deleted_folder_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    proc = subprocess.run(
        ["sh", "-c", 'cd "$1" && rmdir "$1" && exec "$2" -m engine.cli.main runs', "sh", str(gone), sys.executable],
        env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert "no longer exists" in one_line_error(proc, 1) and "absolute --home" in proc.stderr


def test_statecharts_from_a_deleted_folder_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(
        ["sh", "-c", 'cd "$1" && rmdir "$1" && exec "$2" -m engine.cli.main statecharts', "sh", str(gone), sys.executable],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=300,
    )  # fmt: skip
    assert "no longer exists" in one_line_error(proc, 1) and "absolute --out" in proc.stderr


def _listing_to(stdout: int) -> subprocess.CompletedProcess[str]:
    """`elspeth plugins list` (offline, a page of output) with standard output as given."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "plugins", "list"],
        cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip


def test_output_that_could_not_be_written_is_said(tmp_path: Path) -> None:
    """A full disk, or no standard output at all, cuts what a command shows: it says so (exit 1),
    never a traceback, never a silent success."""
    with open("/dev/full", "w") as full:
        proc = _listing_to(full.fileno())
    assert "standard output could not be written (No space left on device)" in one_line_error(proc, 1)
    closed = subprocess.run(
        ["sh", "-c", 'exec "$1" -m engine.cli.main plugins list >&-', "sh", sys.executable],
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert "standard output is closed" in one_line_error(closed, 1)


def test_a_reader_that_closed_the_pipe_ends_the_command_quietly() -> None:
    """`elspeth explain … | head`: the reader wanted no more. Quiet, with the status of a process
    a closed pipe stops (as `cat`'s)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # (closed before the first write: the very first one fails)
    try:
        proc = _listing_to(write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
    assert proc.stderr == ""


def test_a_run_with_standard_error_closed_or_cut_runs_all_the_same(db: Database, work: Path) -> None:
    """No standard error at all (`2>&-`, a daemon's wrapper): the progress display asked it
    whether it was a terminal, and the run ended with exit 1, no word and nothing recorded. (One a
    reader stopped reading, `2>&1 | head -1`, stopped a run at its first progress line: `say`
    now drops what standard error does not take.) What is said is cut; what is done is not."""
    closed = subprocess.run(
        ["sh", "-c", 'exec "$1" -m engine.cli.main run -s settings.yaml 2>&-', "sh", sys.executable],
        cwd=work, env={**{k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")},
                       "ELSPETH_DATABASE_URL": db.conninfo},
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert closed.returncode == 0 and "completed" in closed.stdout, closed.stdout + closed.stderr


def test_dry_run_validates_without_running(db: Database, work: Path) -> None:
    proc = elspeth("run", "-s", "settings.yaml", "--dry-run", cwd=work, db=db)
    assert proc.returncode == 0 and "dry run" in proc.stdout
    assert not (work / "out" / "high.csv").exists()
    both = elspeth("run", "-s", "settings.yaml", "--dry-run", "--execute", cwd=work, db=db)
    assert both.returncode == 2 and "--dry-run and --execute contradict each other" in both.stderr, both.stderr
    assert not (work / "out" / "high.csv").exists()


def test_validate(work: Path) -> None:
    ok = elspeth("validate", "-s", "settings.yaml", cwd=work)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:")
    (work / "bad.yaml").write_text(PIPELINE.replace("condition: row['v'] > 5", "condition: row.__class__"))
    err = one_line_error(elspeth("validate", "-s", "bad.yaml", cwd=work), 2)
    assert "gates[0].condition (gate 'big')" in err


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (lambda t: t.replace("in.csv", "missing.csv"), 1, "missing.csv"),
        (
            lambda t: t.replace("out/high.csv", "nowhere/high.csv"),
            1,
            "sinks.high.options.path: the folder nowhere of nowhere/high.csv does not exist",
        ),
        (lambda t: t.replace("path: out/bad.jsonl", "path: /dev/full, format: json"), 1, "No space left on device"),
        (
            lambda t: t.replace(
                "plugin: csv, options: {path: out/low.csv}",
                "plugin: database, options: {url: 'postgresql://nobody@127.0.0.1:1/x', table: t}",
            ),
            1,
            "cannot connect",
        ),
        (lambda t: t + "bogus: 1\n", 2, "bogus: unknown key"),
        (
            lambda t: t.replace("{path: out/low.csv}", "{path: out/low.csv, escape_formulas: maybe}"),
            2,
            "settings.yaml: sinks.low.options.escape_formulas: found 'maybe'; allowed: true or false",
        ),
        (lambda t: t.replace("routes:", "routs:"), 2, "gates[0]"),
        (lambda t: t.replace("fields: ['id: int'", "fields: ['id: integer'"), 2, "source.options.schema.fields[0]"),
    ],
    ids=["missing-input", "sink-folder", "disk-full", "db-sink", "unknown-key", "escape-formulas", "typo", "bad-type"],
)
def test_user_mistakes_are_one_clear_error(db: Database, work: Path, change: object, code: int, says: str) -> None:
    (work / "settings.yaml").write_text(change(PIPELINE))  # type: ignore[operator]
    err = one_line_error(elspeth("run", "-s", "settings.yaml", cwd=work, db=db), code)
    assert says in err, err


def test_plugins_list(work: Path) -> None:
    proc = elspeth("plugins", "list", cwd=work)
    assert proc.returncode == 0
    for name in ("csv", "json_explode", "batch_stats", "database", "keyword_filter"):
        assert name in proc.stdout


def test_statecharts_check_fails_when_a_diagram_is_stale(tmp_path: Path) -> None:
    out = tmp_path / "charts"
    assert elspeth("statecharts", "--out", str(out), cwd=ROOT).returncode == 0
    assert len(list(out.glob("*.mmd"))) == 4
    (out / "token.mmd").write_text("stale")
    proc = elspeth("statecharts", "--check", "--out", str(out), cwd=ROOT)
    assert proc.returncode == 1 and "token.mmd" in proc.stderr


def test_usage_errors_exit_2(work: Path) -> None:
    proc = elspeth("run", cwd=work)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


ESCAPING = """
source:
  plugin: csv
  on_success: out
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'note: str', 'amount: int']}}
sinks:
  out: {plugin: csv, options: {path: out/notes.csv, escape_formulas: true}}
"""


def test_a_run_with_escape_formulas_writes_escaped_cells_and_records_their_sha256(db: Database, work: Path) -> None:
    """Crashed part way and resumed: the resume's digest check passes on the escaped bytes, and
    the file, escaped throughout, hashes to the sha256 the log records for it."""
    notes = ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "safe"]
    write_csv(work / "in.csv", ["id", "note", "amount"], [[i, notes[i % 5], -i] for i in range(40)])
    (work / "settings.yaml").write_text(ESCAPING)
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": "committed:8"}
    )
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    assert (work / "out" / "notes.csv").read_bytes().startswith(b"id,note,amount\r\n0,'=1+1,0\r\n")
    resumed = elspeth("resume", run_id, cwd=work, db=db)
    assert resumed.returncode == 0, resumed.stderr
    written = (work / "out" / "notes.csv").read_bytes()
    escaped = ["'=1+1", "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)", "safe"]
    assert written == b"id,note,amount\r\n" + b"".join(
        f"{i},{escaped[i % 5]},{-i}\r\n".encode() for i in range(40)
    )  # (a typed int such as -3 is a number, not a formula: not escaped)
    shown = json.loads(elspeth("show", run_id, "--json", cwd=work, db=db).stdout)
    [artifact] = shown["artifacts"]
    assert (artifact["file"], artifact["position"]) == ("ok", len(written))
    assert artifact["sha256"] == hashlib.sha256(written).hexdigest()
    with db.connect() as conn:  # what the log records, read as recorded
        recorded = conn.execute(
            "SELECT sha256 FROM artifacts WHERE run_id = %s ORDER BY seq DESC LIMIT 1", (run_id,)
        ).fetchone()
    assert recorded == (hashlib.sha256(written).hexdigest(),)


def test_a_resume_that_cut_bytes_it_did_not_write_again_says_so(db: Database, work: Path) -> None:
    """A line appended to a crashed run's output is cut by its resume and not written again: the
    resume completes, and says what it cut (a review: it went unsaid)."""
    write_csv(work / "in.csv", ["id", "note", "amount"], [[i, "safe", i] for i in range(40)])
    (work / "settings.yaml").write_text(ESCAPING)
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": "committed:8"}
    )
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    with (work / "out" / "notes.csv").open("ab") as f:
        f.write(b"a line the operator added\r\n")
    resumed = elspeth("resume", run_id, cwd=work, db=db)
    assert resumed.returncode == 0, resumed.stderr
    assert "elspeth: note: sink 'out': the resume cut " in resumed.stderr, resumed.stderr
    assert (
        "and did not write them there again" in resumed.stderr
        and b"operator" not in (work / "out" / "notes.csv").read_bytes()
    )


def test_a_postgresql_landscape_url_in_the_settings_is_the_audit_store(db: Database, work: Path) -> None:
    (work / "settings.yaml").write_text(PIPELINE + f"landscape: {{url: '{db.conninfo}'}}\n")
    proc = elspeth("run", "-s", "settings.yaml", cwd=work)  # no --database, no environment
    assert proc.returncode == 0, proc.stderr
    assert not (work / ".elspeth" / "pgdata").exists()  # the embedded server was not needed (keys and witness are)
    run_id = proc.stdout.split()[1]
    with db.connect() as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone() == ("completed",)


def test_resume_with_settings_finds_the_run_in_their_landscape_url(db: Database, work: Path) -> None:
    (work / "settings.yaml").write_text(PIPELINE + f"landscape: {{url: '{db.conninfo}'}}\n")
    # --commit-every 1: a durability point after every row, so where `sink_flush:1` lands does not
    # depend on how fast the machine is (the 1-second commit would otherwise decide it)
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, env={"ELSPETH_FAULT": "sink_flush:1"}
    )
    assert crashed.returncode == 86, crashed.stderr
    with db.connect() as conn:
        (run_id,) = conn.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    proc = elspeth("resume", run_id, "-s", "settings.yaml", cwd=work)  # no --database, no environment
    assert proc.returncode == 0, proc.stderr
    assert not (work / ".elspeth" / "pgdata").exists()
    with db.connect() as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone() == ("completed",)
    assert (work / "out/high.csv").read_text().splitlines() == ["id,v", "2,9"]


# A sink whose file the pre-run checks pass (a regular file in a folder that is there) and that
# fails when it opens: a SQLite sink onto a file that is not a database.
SQLITE_HIGH = "{plugin: database, options: {url: 'sqlite:///out/high.db', table: t}}"


def _unopenable_sink(work: Path) -> None:
    (work / "settings.yaml").write_text(PIPELINE.replace("{plugin: csv, options: {path: out/high.csv}}", SQLITE_HIGH))
    # SQLite's header, then no database: what the preflight's look at the first bytes lets through
    # (a file that is plainly no database is refused before the run is recorded)
    (work / "out" / "high.db").write_bytes(b"SQLite format 3\x00" + b"not a database, " * 8)


def test_a_sink_that_cannot_open_fails_the_run_on_record_and_resume_finishes_it(db: Database, work: Path) -> None:
    import sqlite3

    _unopenable_sink(work)
    err = one_line_error(elspeth("run", "-s", "settings.yaml", cwd=work, db=db), 1)
    found = re.search(r"`elspeth resume ([\w-]+)`", err)
    assert found and "file is not a database" in err, err
    run_id = found.group(1)
    listed = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)
    assert {r["run_id"]: r["status"] for r in listed}[run_id] == "failed"
    (work / "out" / "high.db").unlink()
    proc = elspeth("resume", run_id, cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(work / "out" / "high.db") as conn:
        assert conn.execute("SELECT id, v FROM t").fetchall() == [(2, 9)]


def test_an_export_ending_where_the_run_can_be_resumed_is_warned_of(db: Database, work: Path) -> None:
    """A failed (or interrupted) run can be resumed: an export of its log up to there, or a later
    export cut back to there (every checkpoint is in it), does not show the run's end."""
    _unopenable_sink(work)
    err = one_line_error(elspeth("run", "-s", "settings.yaml", cwd=work, db=db), 1)
    found = re.search(r"`elspeth resume ([\w-]+)`", err)
    assert found, err
    key = str(work / ".elspeth" / "keys" / "default.pub")
    for ending, warned in (("failed", True), ("completed", False)):
        exported = elspeth("export", found.group(1), "-o", f"{ending}.export", cwd=work, db=db)
        assert exported.returncode == 0, exported.stderr
        proc = elspeth("verify", f"{ending}.export", "--public-key", key, cwd=work)
        assert proc.returncode == 0 and f"where the log ends: {ending}" in proc.stdout, proc.stdout + proc.stderr
        assert ("warning: the log does not end the run" in proc.stderr) == warned, proc.stderr
        if warned:
            (work / "out" / "high.db").unlink()
            assert elspeth("resume", found.group(1), cwd=work, db=db).returncode == 0


def test_validate_reports_structure_expression_and_option_problems_in_one_pass(work: Path) -> None:
    text = PIPELINE.replace("  on_success: raw\n", "  on_success: raw\n  bogus_top: 1\n", 1)
    text = text.replace("condition: row['v'] > 5", "condition: __import__('os')")
    text = text.replace("options: {path: out/low.csv}", "options: {path: out/low.csv, colour: red, size: 2}")
    (work / "bad.yaml").write_text(text)
    err = one_line_error(elspeth("validate", "-s", "bad.yaml", cwd=work), 2)
    assert "source.bogus_top: unknown key" in err
    assert "gates[0].condition (gate 'big'): calls to '__import__' are not allowed" in err
    assert "sinks.low.options.colour: unknown option (so are size)" in err


def test_resume_refuses_a_sink_file_cut_short_since_the_crash(db: Database, work: Path) -> None:
    rows = [[i, 9] for i in range(40)]
    write_csv(work / "in.csv", ["id", "v"], rows)
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": "committed:8"}
    )
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    (work / "out/high.csv").write_text("id,v\r\n")  # someone cut the file the run was writing
    err = one_line_error(elspeth("resume", run_id, cwd=work, db=db), 1)
    assert "cannot continue out/high.csv: it holds 6 bytes but the run had made" in err
    assert (work / "out/high.csv").read_bytes() == b"id,v\r\n"  # not padded with NUL bytes
    listed = {r["run_id"]: r for r in json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)}
    assert listed[run_id]["status"] == "running" and listed[run_id]["resumes"] == 0  # nothing recorded


def test_a_resume_whose_settings_are_refused_says_the_ways_on(db: Database, work: Path) -> None:
    """Settings an older ELSPETH accepted (or an edited file): the run can still be resumed with
    settings fixed, or abandoned. The refusal said neither."""
    write_csv(work / "in.csv", ["id", "v"], [[i, 9] for i in range(20)])
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": "committed:8"}
    )
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    settings = (work / "settings.yaml").read_text()
    (work / "settings.yaml").write_text(settings + "nonsense: 1\n")
    err = one_line_error(elspeth("resume", run_id, cwd=work, db=db), 2)
    assert "nonsense" in err and f"fix them and resume with `elspeth resume {run_id} -s FILE` (--force" in err, err
    assert f"`elspeth abandon {run_id} --reason TEXT`" in err
    (work / "settings.yaml").write_text(settings)
    assert elspeth("resume", run_id, cwd=work, db=db).returncode == 0


def test_resume_says_a_deleted_sink_file_is_missing(db: Database, work: Path) -> None:
    """The review's case: after `rm` of the file, the resume said it held 0 bytes."""
    write_csv(work / "in.csv", ["id", "v"], [[i, 9] for i in range(40)])
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": "committed:8"}
    )
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    (work / "out/high.csv").unlink()
    err = one_line_error(elspeth("resume", run_id, cwd=work, db=db), 1)
    assert "cannot continue out/high.csv: it is missing (deleted or moved?), and the run had made " in err, err
    assert not (work / "out/high.csv").exists()


def test_resume_under_changed_settings_needs_force_and_records_the_new_settings(db: Database, work: Path) -> None:
    from landscape.postgres import PostgresRecorder
    from statecharts import events as ev

    write_csv(work / "in.csv", ["id", "v"], [[i, i % 10] for i in range(40)])
    crashed = elspeth(
        "run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env={"ELSPETH_FAULT": "committed:8"}
    )
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    (work / "settings.yaml").write_text(PIPELINE.replace("row['v'] > 5", "row['v'] > 4"))
    assert "resume with --force" in one_line_error(elspeth("resume", run_id, cwd=work, db=db), 1)
    proc = elspeth("resume", run_id, "--force", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    with db.connect() as conn:
        resumed = [e.event for e in PostgresRecorder(db).read_events(run_id) if isinstance(e.event, ev.RunResumed)]
        (hash_now,) = conn.execute("SELECT settings_hash FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    # the override is on record as the new settings themselves (forced is for a changed input)
    assert len(resumed) == 1 and not resumed[0].forced and resumed[0].settings_hash == hash_now
    assert resumed[0].settings is not None and resumed[0].nodes


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2@127.0.0.1:1/db",
        "postgresql://:hunter2@127.0.0.1:1/db",
        "postgresql://u:hunter2@x@127.0.0.1:1/db",  # an '@' inside the password
        "postgresql://u@127.0.0.1:1/db?password=hunter2",
        "postgresql://u@127.0.0.1:1/db?sslpassword=hunter2",
        "host=h password=hunter2",
    ],
)
def test_a_database_password_is_never_printed(tmp_path: Path, url: str) -> None:
    proc = elspeth("--database", url, "runs", cwd=tmp_path)
    # (a keyword string is no URL: a usage error, exit 2; the others reach for a server that is not there)
    assert proc.returncode == (1 if url.startswith("postgresql://") else 2) and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr and "***" in proc.stderr


def _serve(workdir: Path, ignoring: tuple[signal.Signals, ...] = ()) -> subprocess.Popen[str]:
    """`elspeth db serve` in `workdir`, on its own embedded store (./.elspeth), started with the
    signals `ignoring` ignored (as a shell starts a script's background job, or `nohup`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}

    def ignore() -> None:  # (the others as a terminal leaves them, whatever the tests run under: nohup)
        for signum in (signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN if signum in ignoring else signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "db", "serve"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        preexec_fn=ignore,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stop", "ignoring"),
    [(signal.SIGINT, ()), (signal.SIGTERM, ()), (signal.SIGHUP, ()), (signal.SIGINT, (signal.SIGINT,))],
    ids=["ctrl-c", "sigterm", "terminal-closed", "kill-int-in-a-script"],
)
def test_db_serve_keeps_the_embedded_store_up_for_sql_until_stopped(
    tmp_path: Path, stop: signal.Signals, ignoring: tuple[signal.Signals, ...]
) -> None:
    """SIGTERM (systemd's, docker's) stops it as Ctrl-C does: it used to end the command with no
    cleanup, leaving the server it had started running. SIGHUP (its terminal closed) likewise. A
    script's background job starts with SIGINT ignored, and `kill -INT` still stops it (a review:
    SIGINT, kept ignored, left a script's teardown waiting)."""
    import psycopg

    proc = _serve(tmp_path, ignoring)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # audit store: ...
        found = re.search(r"psql '([^']+)'", proc.stdout.readline())
        assert found, "no connection line"
        with psycopg.connect(found.group(1)) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    finally:
        proc.send_signal(stop)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # (not left running into the next tests)
            proc.communicate()
            raise
    assert proc.returncode == 0
    assert not (tmp_path / ".elspeth" / "pgdata" / "postmaster.pid").exists()  # stopped with it


def test_db_serve_says_when_its_server_went_away_instead_of_serving_nothing(tmp_path: Path) -> None:
    """Killed (out of memory, by hand), the server left `db serve` waiting for Ctrl-C in silence,
    printing how to connect to nothing."""
    proc = _serve(tmp_path)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # audit store: ... (the server is up)
        postmaster = int((tmp_path / ".elspeth" / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "elspeth: error: the audit store stopped answering, so serving it ended" in err, err
    assert "Traceback" not in err, err


def test_explain_names_an_unknown_run_as_such(db: Database, work: Path) -> None:
    err = one_line_error(elspeth("explain", "run-nope", "--row", "1", cwd=work, db=db), 1)
    assert "no run run-nope" in err


def test_the_stores_options_after_a_command_say_where_they_go(tmp_path: Path) -> None:
    """`elspeth db stop --home X` was "No such option '--home'. Did you mean '--help'?", where
    docs/cli.md spoke of the server "of --home" (a new user's review)."""
    err = one_line_error(elspeth("db", "stop", "--home", str(tmp_path), cwd=tmp_path), 2)
    assert "--home is given before the command: elspeth --home VALUE db stop ..." in err, err
    err = one_line_error(elspeth("runs", "--database", "postgresql://x@y/z", cwd=tmp_path), 2)
    assert "--database is given before the command: elspeth --database VALUE runs ..." in err, err


def test_explain_refuses_a_second_row_rather_than_show_the_last(db: Database, work: Path) -> None:
    """`explain --row 1 --row 2` showed row 2 alone, unsaid (`purge --row` takes several: a new
    user's review)."""
    err = one_line_error(elspeth("explain", "run-nope", "--row", "1", "--row", "2", cwd=work, db=db), 2)
    assert "explain shows one row at a time: give --row once" in err, err


@pytest.mark.parametrize("which", [("--row", "1"), ("--token", "t-1")], ids=["row", "token"])
def test_explain_refuses_limit_without_where_rather_than_ignore_it(
    db: Database, work: Path, which: tuple[str, str]
) -> None:
    """`explain RUN --row 1 --limit 5` was taken, --limit ignored unsaid: it limits --where's rows
    (a documentation review)."""
    err = one_line_error(elspeth("explain", "run-nope", *which, "--limit", "5", cwd=work, db=db), 2)
    assert "--limit goes with --where (at most N of the rows it matches), not with --row or --token" in err, err


@pytest.mark.parametrize(
    ("change", "says"),
    [(lambda t: t.replace("path: out/bad.jsonl", "path: /dev/full, format: json, mode: append"), "sink 'bad': ")],
    ids=["append-to-a-full-device"],
)  # fmt: skip
def test_anything_a_sink_raises_fails_the_run_on_record(db: Database, work: Path, change: object, says: str) -> None:
    (work / "in.csv").write_text("id,v\r\nböb,9\r\n2,x\r\n", encoding="utf-8")
    (work / "settings.yaml").write_text(change(PIPELINE).replace("'id: int'", "'id: str'"))  # type: ignore[operator]
    err = one_line_error(elspeth("run", "-s", "settings.yaml", cwd=work, db=db), 1)
    assert says in err, err
    listed = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)
    assert listed[0]["status"] == "failed"


def test_a_row_the_sinks_encoding_cannot_write_fails_alone_on_record(db: Database, work: Path) -> None:
    (work / "in.csv").write_text("id,v\r\nböb,9\r\n2,x\r\n3,8\r\n", encoding="utf-8")
    (work / "settings.yaml").write_text(
        PIPELINE.replace("options: {path: out/high.csv}", "options: {path: out/high.csv, encoding: ascii}")
        .replace("'id: int'", "'id: str'")
    )  # fmt: skip
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0 and "failed: 1" in proc.stdout, proc.stdout + proc.stderr
    assert (work / "out" / "high.csv").read_text().splitlines() == ["id,v", "3,8"]
    with db.connect() as conn:
        (reason,) = conn.execute(
            "SELECT o.detail FROM token_outcomes o JOIN runs r USING (run_id) WHERE o.outcome = 'failed' "
            "ORDER BY r.started_at DESC LIMIT 1"
        ).fetchone() or ("",)
    assert "holds a character that ascii cannot write" in str(reason), reason


def test_a_database_holding_other_tables_is_not_given_a_schema_silently(server_url: str, tmp_path: Path) -> None:
    import psycopg

    from tests.conftest import _with_database

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute('DROP DATABASE IF EXISTS "t_app"')
        admin.execute('CREATE DATABASE "t_app"')
    app = Database(_with_database(server_url, "t_app"), "app")
    with app.connect() as conn:
        conn.execute("CREATE TABLE events (id int)")  # someone else's table, named like ours
        conn.commit()
    err = one_line_error(elspeth("runs", cwd=tmp_path, db=app), 1)
    assert "holds other tables and no ELSPETH schema" in err
    err = one_line_error(elspeth("db", "upgrade", cwd=tmp_path, db=app), 1)
    assert "cannot create or upgrade the ELSPETH schema" in err
    with app.connect() as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"events"}  # nothing added


def test_a_resume_from_another_settings_file_is_remembered_by_the_next_resume(db: Database, work: Path) -> None:
    write_csv(work / "in.csv", ["id", "v"], [[i, i % 10] for i in range(60)])
    crash = {"ELSPETH_FAULT": "committed:8"}
    assert elspeth("run", "-s", "settings.yaml", "--commit-every", "1", cwd=work, db=db, env=crash).returncode == 86
    run_id = json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)[0]["run_id"]
    (work / "moved").mkdir()
    (work / "settings.yaml").rename(work / "moved" / "s2.yaml")  # the same text, in another file
    again = elspeth("resume", run_id, "-s", "moved/s2.yaml", "--commit-every", "1", cwd=work, db=db, env=crash)
    assert again.returncode == 86, again.stderr  # crashed again, after recording the new file
    home = {"ELSPETH_HOME": str(work / ".elspeth")}  # (its key signs the rest: ./.elspeth moved with the folder)
    proc = elspeth("resume", run_id, cwd=work / "moved", db=db, env=home)  # no -s: the log says which file
    assert proc.returncode == 0, proc.stderr
    with db.connect() as conn:
        (path,) = conn.execute("SELECT settings_path FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    assert path == str((work / "moved" / "s2.yaml").resolve())
    assert len((work / "out/high.csv").read_text().splitlines()) == 1 + 24  # header + every v > 5 once


def test_a_missing_variable_is_reported_once_not_with_its_consequences(work: Path) -> None:
    text = PIPELINE.replace("options: {path: in.csv,", "options: {path: in.csv, skip_rows: '${SKIP}',")
    (work / "bad.yaml").write_text(text)
    err = one_line_error(elspeth("validate", "-s", "bad.yaml", cwd=work), 2)
    assert "environment variable SKIP is not set" in err
    assert "skip_rows: found ''" not in err and len(err.strip().splitlines()) == 1


def test_the_resume_hint_carries_the_home_that_found_the_run(work: Path) -> None:
    _unopenable_sink(work)  # the run fails on record
    home = work / "elsewhere"
    err = one_line_error(elspeth("--home", "elsewhere", "run", "-s", "settings.yaml", cwd=work), 1)
    found = re.search(r"`(elspeth --home (\S+) resume ([\w-]+))`", err)
    assert found and found.group(2) == str(home.resolve()), err
    (work / "out" / "high.db").unlink()
    proc = elspeth(*found.group(1).split()[1:], cwd=work)  # the hint, as the user would paste it
    assert proc.returncode == 0, proc.stderr


def test_a_data_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".elspeth").mkdir()
    (tmp_path / ".elspeth" / "pgdata").write_text("")
    assert "is not a folder" in one_line_error(elspeth("runs", cwd=tmp_path), 1)


def test_rebuilding_the_projections_of_an_unknown_run_is_an_error(db: Database, work: Path) -> None:
    err = one_line_error(elspeth("projections", "rebuild", "run-nosuch", cwd=work, db=db), 1)
    assert "no run run-nosuch" in err


def test_running_out_of_memory_is_one_line_not_a_traceback() -> None:
    """A command that needs more memory than the machine has (a huge run replayed on a small
    machine, a hostile export): one line naming it, exit 1."""
    import click
    from click.testing import CliRunner

    from engine.cli.errors import ElspethGroup

    @click.group(cls=ElspethGroup)
    def root() -> None:
        pass

    @root.command()
    def hungry() -> None:
        raise MemoryError

    result = CliRunner().invoke(root, ["hungry"])
    assert result.exit_code == 1
    assert "elspeth: error: out of memory" in result.output and "Traceback" not in result.output, result.output


def test_a_database_lost_under_any_command_is_one_line_not_a_traceback() -> None:
    """A server that died or was shut down under a command that reads it outside the landscape's
    own error handling (a full disk's PANIC, an administrator's shutdown): one line, exit 1."""
    import click
    import psycopg
    from click.testing import CliRunner

    from engine.cli.errors import ElspethGroup

    @click.group(cls=ElspethGroup)
    def root() -> None:
        pass

    @root.command()
    def reads() -> None:
        psycopg.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=5)  # (nothing listens on port 1)

    result = CliRunner().invoke(root, ["reads"])
    assert result.exit_code == 1, result.output
    assert "elspeth: error: lost the database: connection failed" in result.output, result.output


def test_a_server_that_answers_is_not_called_lost() -> None:
    """A statement timeout or a lock not available is the answer of a server still there: not
    "lost the database" (nor, under a run, "`elspeth resume` continues it"). A server shut down,
    out of disk or gone is."""
    import click
    import psycopg
    from click.testing import CliRunner

    from engine.cli.errors import ElspethGroup
    from landscape.db import translate
    from landscape.errors import DatabaseUnavailable, StoreError

    errors = psycopg.errors
    for e in (errors.QueryCanceled("canceling statement due to statement timeout"), errors.LockNotAvailable("no")):
        assert type(translate(e, "reading run r", "r")) is StoreError

        @click.group(cls=ElspethGroup)
        def root() -> None:
            pass

        @root.command()
        def reads(e: Exception = e) -> None:
            raise e

        result = CliRunner().invoke(root, ["reads"])
        assert result.exit_code == 1 and "the database stopped the command: " in result.output, result.output
    for e in (errors.AdminShutdown("terminating"), errors.DiskFull("full"), psycopg.OperationalError("closed")):
        assert isinstance(translate(e, "reading run r", "r"), DatabaseUnavailable)
    # Lost during a COMMIT, the commit may have been made (only its answer lost): not said to
    # have failed, a review found.
    lost = str(translate(errors.AdminShutdown("terminating"), "committing events of run r", "r"))
    assert "`elspeth resume r` continues it from what the log holds (a commit in flight may have been made)" in lost
    # A full disk is said as such, not as a database lost (a careless operator's review).
    full = str(translate(errors.DiskFull("could not extend file"), "committing events of run r", "r"))
    assert full.startswith("the audit store's disk is full (the database server could not write) while committing")
    assert "free space where its data lives; `elspeth resume r` continues it" in full, full

    @click.group(cls=ElspethGroup)
    def root2() -> None:
        pass

    @root2.command()
    def writes() -> None:
        raise errors.DiskFull("could not extend file")

    result = CliRunner().invoke(root2, ["writes"])
    assert result.exit_code == 1 and "the audit store's disk is full" in result.output, result.output


def test_sigterm_outside_a_runs_loop_ends_the_command_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM reached a command outside a run's loop (verifying a log, waiting on the database)
    as the default action: killed with no word and no cleanup (an embedded server left running).
    A server that accepts the connection and never answers holds the command still, in a known place."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli.main", "--database", f"postgresql://u@127.0.0.1:{port}/db", "runs"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            server.settimeout(60)
            waiting, _ = server.accept()  # the command is in its connect, waiting for an answer
            with waiting:
                proc.send_signal(signal.SIGTERM)
                _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "elspeth: interrupted", err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_after_a_run_completed_says_it_completed(db: Database, work: Path, stop: signal.Signals) -> None:
    """Ctrl-C or SIGTERM while the summary of a completed run was printed said "interrupted" with
    exit 130, the status of a run to resume, often before the run's id was shown (a hostile
    review): an operator rerunning it appends every row again to a sink in append mode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "run", "-s", "settings.yaml"], cwd=work,
        env={**env, "ELSPETH_DATABASE_URL": db.conninfo, "ELSPETH_FAULT": "summary:1:stop"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # its run ended, its summary not printed
        assert os.WIFSTOPPED(status), status
        os.kill(proc.pid, stop)  # (pending until it is continued)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, out, err)
    assert "interrupted" not in err and "Traceback" not in err, err
    found = re.search(r"elspeth: run (\S+) completed: `elspeth show \1`", err)
    assert found, err
    runs = {r["run_id"]: r for r in json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)}
    assert runs[found.group(1)]["status"] == "completed"


def test_terminal_controls_from_the_store_are_shown_not_obeyed(db: Database, work: Path) -> None:
    """A run id planted in the projections by someone who may write them, holding an OSC that
    retitles the window and a CSI that colours what follows, was printed as it was by `runs` (a
    hostile review); so was one typed in an error. Both are shown as escapes now."""
    planted = "evil\x1b]0;PWNED\x07\x1b[31mRED\u202e\r\x85"
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO runs (run_id, status, settings_path, settings_hash, source_fingerprint, started_at, resumes, "
            "last_seq) VALUES (%s, 'completed', 's', 'h', 'f', now(), 0, 0)",
            (planted,),
        )
        conn.commit()
    try:
        listed = elspeth("runs", cwd=work, db=db)
        assert listed.returncode == 0, listed.stderr
        # (click strips the CSI itself when the output is no terminal; never the OSC)
        assert "evil\\u001b]0;PWNED\\u0007" in listed.stdout and "RED\\u202e\\u000d" in listed.stdout, listed.stdout
        for encoding in ("utf-8", "ascii"):  # JSON's escapes, also where the terminal cannot show a character
            listed_json = elspeth("runs", "--json", cwd=work, db=db, env={"PYTHONIOENCODING": encoding})
            assert planted in {r["run_id"] for r in json.loads(listed_json.stdout)}, listed_json.stdout
        err = one_line_error(elspeth("show", planted + "x", cwd=work, db=db), 1)
        for out in (listed.stdout, err):
            assert not any(c in out for c in "\x1b\x07\r\u202e"), repr(out)
    finally:
        with db.connect() as conn:
            conn.execute("DELETE FROM runs WHERE run_id = %s", (planted,))
            conn.commit()


def test_show_prints_a_recorded_name_holding_a_line_feed_on_one_line(db: Database, work: Path) -> None:
    """A settings file (or a folder) may be named with a line feed: `show` printed the name as
    it was, and what followed it read as lines of its own (a forged `rows:` line, a review)."""
    forged = "x\n  working folder FORGED\n  rows: 999 in; written: high 999.yaml"
    (work / forged).write_text(PIPELINE)
    ran = elspeth("run", "-s", forged, cwd=work, db=db)
    assert ran.returncode == 0, ran.stderr
    run_id = re.search(r"`elspeth show (\S+)`", ran.stdout + ran.stderr)
    assert run_id, ran.stdout
    shown = elspeth("show", run_id.group(1), cwd=work, db=db)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert not any(line.startswith(("  working folder FORGED", "  rows: 999")) for line in lines), shown.stdout
    assert "  settings x\\u000a  working folder FORGED\\u000a  rows: 999 in" in shown.stdout, shown.stdout


def test_a_password_given_on_the_command_line_is_warned_of(tmp_path: Path) -> None:
    """Every local user reads a process's arguments (`ps`); the environment is the owner's."""
    url = "postgresql://u:s3cret@127.0.0.1:1/x"
    given = elspeth("--database", url, "runs", cwd=tmp_path, env={"ELSPETH_HOME": str(tmp_path / "h")})
    assert "the password in --database is visible" in given.stderr and "s3cret" not in given.stderr
    in_env = elspeth("runs", cwd=tmp_path, env={"ELSPETH_HOME": str(tmp_path / "h"), "ELSPETH_DATABASE_URL": url})
    assert "warning" not in in_env.stderr and in_env.returncode == 1
    bare = elspeth("--database", "postgresql://u@127.0.0.1:1/x", "runs", cwd=tmp_path)
    assert "warning" not in bare.stderr


def test_a_command_that_reads_or_works_on_recorded_runs_makes_no_store_where_there_is_none(tmp_path: Path) -> None:
    """Run in the wrong folder, or with a misspelt --home, `runs` made a whole data folder there
    (70 MB) and said "no runs yet"."""
    for args in (
        ["runs"],
        ["show", "run-x"],
        ["--home", str(tmp_path / "typo" / "home"), "runs"],
        # these need a key first, and said to give one (a docs review): the home is the mistake
        ["export", "run-x", "-o", "x.export"],
        ["prove", "run-x", "--row", "1", "-o", "x.json"],
        ["checkpoint", "run-x"],
        # nor one that works on recorded runs: `resume` in the wrong folder made a store there,
        # then said it held no such run (a careless operator's review)
        ["resume", "run-x"],
        ["abandon", "run-x", "--reason", "x"],
        ["purge", "run-x", "--row", "1", "--reason", "x", "--dry-run"],
        ["purge", "--older-than", "90d", "--dry-run"],
    ):
        err = one_line_error(elspeth(*args, cwd=tmp_path), 1)
        assert "there is no audit store in" in err and "nothing has run with this home" in err, err
    assert list(tmp_path.iterdir()) == []


def test_invisible_and_line_separating_characters_are_shown_as_escapes() -> None:
    """Bidirectional marks, a zero-width space, a no-break space and the line and paragraph
    separators passed through: text that reads as other text, or breaks a line where the
    output has none (a hostile review, in `explain`)."""
    from engine.cli.visible import visible

    for c in "\u061c\u200b\u200e\u200f\u2028\u2029\ufeff":
        assert visible(f"a{c}b") == f"a\\u{ord(c):04x}b"
    assert visible("tab\tand\nline, é, 名前") == "tab\tand\nline, é, 名前"


def test_a_field_name_with_a_line_break_cannot_forge_explain_lines() -> None:
    """Field names are the input's (JSON keys): one holding a line break printed a fake `seq`
    line and `row` header inside a row's lineage. Such a name is shown quoted, with escapes."""
    from engine.cli.explain import _changes
    from landscape.lineage import Change

    forged = "x\n    seq 99  completed — landed in sink output\nrow 1 (row_index 0)"
    shown = _changes(
        [Change(field=forged, change="removed", old=1), Change(field="amount", change="added", new=2)], None
    )
    assert "\n" not in shown and shown.startswith('-"x\\n    seq 99'), shown
    assert "+amount = 2" in shown


def test_a_field_name_in_explains_own_syntax_cannot_forge_a_change() -> None:
    """A printable name can spell the change list's syntax: `note (was "x"); status: "pending" →
    "approved"; -tmp` read as `status` changed to approved, which never happened (a hostile
    review). A name that is not an identifier is shown quoted. And each value is cut, not the
    line: a long first value hid the changes after it."""
    from engine.cli.explain import _changes
    from landscape.lineage import Change

    forged = 'note (was "x"); status: "pending" → "approved"; -tmp'
    shown = _changes([Change(field=forged, change="removed", old="x")], None)
    assert shown == '-"note (was \\"x\\"); status: \\"pending\\" \\u2192 \\"approved\\"; -tmp" (was "x")', shown
    long = [Change(field="a", change="changed", old="x" * 500, new="y"), Change(field="b", change="removed", old=1)]
    shown = _changes(long, None)
    assert shown.endswith("; -b (was 1)") and len(shown) < 200, shown
    # look-alike letters that make an identifier read as a change: every non-ASCII name is escaped
    lookalike = "status\u02d0\u3164\u02bapending\u02ba"
    assert _changes([Change(field=lookalike, change="added", new=1)], None) == (
        '+"status\\u02d0\\u3164\\u02bapending\\u02ba" = 1'
    )
    # look-alike quotes in a value: every character past ASCII is escaped (a review)
    value = "Bob\u02ba; status: \u02bapending\u02ba \u2192 \u02baapproved"
    shown = _changes([Change(field="customer", change="added", new=value)], None)
    assert shown == '+customer = "Bob\\u02ba; status: \\u02bapending\\u02ba \\u2192 \\u02baapproved"', shown
    # two long names that begin alike are told apart
    a, b = (_changes([Change(field="x " * 40 + end, change="added", new=1)], None) for end in "ab")
    assert a != b and a.startswith('+"x x x') and "…" not in a, (a, b)
    many = [Change(field=f"f{i}", change="added", new=i) for i in range(10_000)]
    shown = _changes(many, None)
    assert shown.endswith("; and 9980 more changes (--json shows them all)") and len(shown) < 1000, shown[-200:]


def test_a_file_path_with_a_control_character_is_refused_at_load() -> None:
    """A sink path holding a line break forged lines of the run's summary, `show` and `explain`."""
    from engine.plugins.protocol import PluginConfigError
    from engine.plugins.registry import build_plugin

    for kind, name in (("sink", "csv"), ("sink", "json"), ("source", "csv"), ("source", "json")):
        with pytest.raises(PluginConfigError, match=r"holds U\+000A \(character 6\); allowed: a path without"):
            build_plugin(kind, name, {"path": "out/a\nsink x: 1 rows → ok.csv", "schema": {"mode": "observed"}})


def test_a_warning_shows_a_terminal_control_in_what_it_quotes_as_an_escape(work: Path) -> None:
    """Warnings and notes go to standard error like errors, and quote paths, names and the
    store's words as errors do: a settings file named with an escape sequence (one that retitles
    the window, then rings the bell) had it act on the terminal of whoever ran `validate`."""
    name = "s\x1b]0;pwned\x07.yaml"
    (work / name).write_text(PIPELINE + "payload_store: {retention_days: 30}\n")
    proc = elspeth("validate", "-s", name, cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "retention_days is recorded with the run but not acted on" in proc.stderr, proc.stderr
    assert "\\u001b]0;pwned\\u0007" in proc.stderr and "\x1b" not in proc.stderr and "\x07" not in proc.stderr


def test_a_home_that_is_a_file_is_named_so(tmp_path: Path) -> None:
    """ELSPETH_HOME naming a file: `runs` said no store was there, `run` spoke of a fingerprint
    key (a review)."""
    (tmp_path / "home").write_text("")
    for args, given in ((["runs"], "ELSPETH_HOME"), (["run", "-s", "x.yaml"], "ELSPETH_HOME")):
        err = one_line_error(elspeth(*args, cwd=tmp_path, env={"ELSPETH_HOME": str(tmp_path / "home")}), 1)
        assert f"the ELSPETH home {tmp_path / 'home'} ({given}) is not a folder" in err, err
    err = one_line_error(elspeth("--home", "home", "runs", cwd=tmp_path), 1)
    assert "(--home) is not a folder" in err


def test_a_home_the_system_cannot_look_at_is_one_line(tmp_path: Path) -> None:
    """A name over 255 bytes in ELSPETH_HOME: `exists()` raised ENAMETOOLONG, a bare traceback."""
    home = str(tmp_path / ("h" * 300))
    for args in (["runs"], ["run", "-s", "x.yaml"]):
        err = one_line_error(elspeth(*args, cwd=tmp_path, env={"ELSPETH_HOME": home}), 1)
        assert f"the ELSPETH home {home} (ELSPETH_HOME) cannot be looked at: File name too long" in err, err


def test_a_path_given_to_a_command_that_no_file_can_have_is_one_line(tmp_path: Path) -> None:
    """`resume RUN -s NAME` with a name over 255 bytes ended in a bare OSError traceback."""
    name = "z" * 300 + ".yaml"
    err = one_line_error(elspeth("resume", "run-x", "-s", name, cwd=tmp_path), 1)
    assert f"{name}: File name too long; allowed: a path this system can open" in err, err


def test_resume_with_settings_behind_a_symbolic_link_loop_is_one_line(tmp_path: Path) -> None:
    """`Path.resolve()` raised RuntimeError('Symlink loop ...'): a bare traceback."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    err = one_line_error(elspeth("resume", "run-x", "-s", "a/s.yaml", cwd=tmp_path), 2)
    assert "a/s.yaml: cannot read the settings file: " in err, err


def test_a_blank_home_is_refused_not_a_folder_named_a_space(tmp_path: Path) -> None:
    for args, env in ((["runs"], {"ELSPETH_HOME": " "}), (["--home", "  ", "runs"], {})):
        err = one_line_error(elspeth(*args, cwd=tmp_path, env=env), 1)
        assert "ELSPETH_HOME (or --home) is blank" in err, err
    assert list(tmp_path.iterdir()) == []


def test_runs_limit_zero_is_refused_not_taken_for_one(tmp_path: Path) -> None:
    err = one_line_error(elspeth("runs", "--limit", "0", cwd=tmp_path), 2)
    assert "'--limit': 0 is not in the range x>=1" in err


def test_a_thousand_unknown_keys_are_not_a_thousand_lines(work: Path) -> None:
    (work / "settings.yaml").write_text(PIPELINE + "".join(f"k{i}: 1\n" for i in range(1000)))
    err = one_line_error(elspeth("validate", "-s", "settings.yaml", cwd=work), 2)
    lines = err.strip().splitlines()
    assert len(lines) == 51 and "k49: unknown key" in lines[49], lines[:3]
    assert lines[50] == "… and 950 more problems (fix these first)", lines[50]


def test_a_folder_or_a_variable_that_is_not_utf8_is_one_line(work: Path) -> None:
    """A run records the folder it ran in, and the settings' values, as text: a Latin-1 folder
    name, or ${VAR} holding such bytes, ended in a UnicodeEncodeError traceback (a review)."""
    latin = Path(os.fsdecode(bytes(work) + b"/caf\xe9"))
    latin.mkdir()
    (latin / "out").mkdir()
    for name in ("in.csv", "settings.yaml"):
        (latin / name).write_bytes((work / name).read_bytes())
    for command in ("validate", "run"):
        err = one_line_error(elspeth(command, "-s", "settings.yaml", cwd=latin), 1)
        assert "has a name that is not valid UTF-8" in err, err
    (work / "settings.yaml").write_text(PIPELINE.replace("out/high.csv", "'${OUT}'"))
    env = {"OUT": os.fsdecode(b"out/caf\xe9.csv")}
    err = one_line_error(elspeth("validate", "-s", "settings.yaml", cwd=work, env=env), 2)
    assert "sinks.high.options.path: environment variable OUT holds bytes that are not valid UTF-8" in err, err
    # The settings file's own name, which a run records: `validate` said OK, then `run` raised.
    (work / os.fsdecode(b"caf\xe9.yaml")).write_bytes((latin / "settings.yaml").read_bytes())
    for command in ("validate", "run"):
        err = one_line_error(elspeth(command, "-s", os.fsdecode(b"caf\xe9.yaml"), cwd=work), 1)
        assert "the settings file's name, 'caf\\udce9.yaml', is not valid UTF-8" in err, err


def test_resume_with_settings_that_are_no_file_says_so(tmp_path: Path) -> None:
    """`resume RUN -s /dev/stdin` from a pipe said '/proc/…/fd/pipe:[…]: the settings file does not
    exist': the path was resolved before it was read (a review)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    piped = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "resume", "run-x", "-s", "/dev/stdin"],
        cwd=tmp_path, env=env, input="source: {}\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    err = one_line_error(piped, 2)
    assert "/dev/stdin: not a regular file; allowed: a settings file (YAML)" in err, err


_FORGED = "run-nope\nelspeth: error: forged"  # a typed run id whose line feed would print a line of its own


@pytest.mark.parametrize(
    "args",
    [
        ("show", _FORGED),
        ("runs", _FORGED),
        ("explain", _FORGED, "--row", "1"),
        ("replay", _FORGED),
        ("projections", "rebuild", _FORGED),
        ("resume", _FORGED),
        ("abandon", _FORGED, "--reason", "gone"),
        ("purge", _FORGED, "--row", "1", "--dry-run"),
        ("export", _FORGED, "-o", "x.jsonl", "--public-key", "k.pub"),
        ("prove", _FORGED, "--seq", "0", "-o", "x.json", "--public-key", "k.pub"),
        ("checkpoint", _FORGED, "-o", "x.cp", "--public-key", "k.pub"),
        ("export", "run-x", "-o", "no\nsuch/x.jsonl", "--public-key", "k.pub"),
        ("run", "-s", "no\nsuch.yaml"),
        ("validate", "-s", "no\nsuch.yaml"),
    ],
    ids=lambda args: args[0] if args[0] != "export" or args[1] == _FORGED else "export-path",
)
def test_a_typed_run_id_or_path_is_echoed_on_one_line(db: Database, work: Path, args: tuple[str, ...]) -> None:
    """A line feed in a run id or path the operator typed is echoed as its escape: as it was, what
    followed it read as a line of the command's own (a hostile review)."""
    assert elspeth("keys", "generate", "k", cwd=work).returncode == 0  # (the audit commands need a key)
    proc = elspeth(*args, cwd=work, db=db)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "\\u000a" in proc.stderr, proc.stderr


def test_a_typed_token_id_is_echoed_on_one_line(db: Database, work: Path) -> None:
    proc = elspeth("run", "-s", "settings.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    err = one_line_error(elspeth("explain", run_id, "--token", "r0\nelspeth: error: forged", cwd=work, db=db), 1)
    assert err == f"elspeth: error: run {run_id} has no token r0\\u000aelspeth: error: forged\n", err


def test_a_typed_statecharts_folder_is_echoed_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "out\nelspeth: error: forged" / "run.mmd").mkdir(parents=True)  # (a folder where a diagram goes)
    err = one_line_error(elspeth("statecharts", "--out", "out\nelspeth: error: forged", cwd=tmp_path), 1)
    assert err.startswith("elspeth: error: out\\u000aelspeth: error: forged/run.mmd: ") and err.count("\n") == 1, err


def test_what_statecharts_wrote_is_named_on_one_line_each(tmp_path: Path) -> None:
    """Its success lines name the typed folder too (a hostile review: `wrote …` printed a line feed
    in it as it was, and a forged `elspeth: error:` line after it)."""
    proc = elspeth("statecharts", "--out", "out\nelspeth: error: forged", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    wrote = proc.stdout.splitlines()
    assert wrote and all(line.startswith("wrote out\\u000aelspeth: error: forged/") for line in wrote), proc.stdout


@pytest.mark.parametrize("command", [["export", "r1"], ["prove", "r1", "--seq", "0"]])
def test_an_output_spelled_as_a_path_to_a_file_named_dash_is_no_usage_error(tmp_path: Path, command: list[str]) -> None:
    """`-o -` is refused as standard output, which an export is never written to; `-o ./-`, the
    way to name a file called '-', is a path (here the store is missing: said as such, exit 1)."""
    proc = elspeth(*command, "-o", "./-", cwd=tmp_path, env={"ELSPETH_HOME": str(tmp_path / "home")})
    assert "standard output" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
