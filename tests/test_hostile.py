"""Hostile rows, expressions, settings and signals, run as users run them: `elspeth run` in a
real process against the real PostgreSQL.

For every case: no traceback, the process ends (a hang is caught by the timeout), and it ends
the way the table says — a settings error naming the problem (exit 2), or a completed run in
which the hostile row was quarantined or failed with the reason recorded. To add a case, add
one line to CASES.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.stopping import GRACE_SECONDS, Stop, StoppedAtOnce
from landscape.db import Database
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60  # seconds: far above what any case takes; reaching it means the engine hung
FIFO = b"<a named pipe>"  # as the content of an input file: make it a FIFO instead


def gate(condition: str, rows: str = "id,v\n1,2\n") -> tuple[str, dict[str, bytes]]:
    """A CSV source and one gate with `condition` (no on_error: a row error fails the token)."""
    settings = f"""
source: {{plugin: csv, on_success: raw, options: {{path: in.csv, on_validation_failure: bad}}}}
gates:
- name: g
  input: raw
  condition: {json.dumps(condition)}
  routes: {{'true': out, 'false': out}}
sinks: {SINKS}
"""
    return settings, {"in.csv": rows.encode()}


def json_gate(condition: str, row: dict[str, object]) -> tuple[str, dict[str, bytes]]:
    """One JSON-lines row and one gate with `condition`."""
    settings, _ = gate(condition)
    settings = settings.replace("{plugin: csv, on_success: raw, options: {path: in.csv, on_validation_failure: bad}}",
                                "{plugin: json, on_success: raw, options: {path: in.jsonl}}")  # fmt: skip
    return settings, {"in.jsonl": json.dumps(row).encode() + b"\n"}


def source(options: str, path: str, data: bytes) -> tuple[str, dict[str, bytes]]:
    """A source with these options (flow-style YAML) straight into the `out` sink."""
    settings = f"""
source: {{plugin: {options}, on_success: out}}
sinks: {SINKS}
"""
    return settings, {path: data}


def keyword(pattern: str, value: str) -> tuple[str, dict[str, bytes]]:
    settings = f"""
source: {{plugin: json, on_success: raw, options: {{path: in.jsonl}}}}
transforms:
- {{name: k, plugin: keyword_filter, input: raw, on_success: out, on_error: bad,
    options: {{fields: [text], blocked_patterns: [{json.dumps(pattern)}]}}}}
sinks: {SINKS}
"""
    return settings, {"in.jsonl": json.dumps({"text": value}).encode() + b"\n"}


def routes(label: str) -> tuple[str, dict[str, bytes]]:
    settings, files = gate("'x'")
    return settings.replace("routes: {'true': out, 'false': out}", f"routes: {{{json.dumps(label)}: out}}"), files


SINKS = "{out: {plugin: json, options: {path: out/out.jsonl}}, bad: {plugin: json, options: {path: out/bad.jsonl}}}"
CSV_INT = "{path: in.csv, schema: {mode: fixed, fields: ['n: int']}, on_validation_failure: bad}"
JSONL = "{path: in.jsonl, on_validation_failure: bad}"
JSON_ARRAY = "{path: in.json, on_validation_failure: bad}"
BIG = "9" * 5000
BAD_UTF8 = b'{"a": "caf\xe9"}'


@dataclass(frozen=True)
class Case:
    name: str
    pipeline: tuple[str, dict[str, bytes]]  # settings YAML, input files
    expect: str  # "settings error", or the outcome the hostile row must have
    says: str  # in the error line, or in the reason recorded for the row
    evidence: bytes | None = None  # the exact bytes the quarantine record must keep
    outcomes: dict[str, int] = field(default_factory=dict)


CASES = [
    # -- expressions: refused at load, with a reason ----------------------------------------------
    Case("parser: 100,000 characters", gate("-" * 100000 + "1"), "settings error", "characters long; allowed: at most 10,000"),
    Case("parser: recursion inside ast.parse", gate("-" * 5000 + "1"), "settings error", "nested too deeply for the parser"),
    Case("parser: nested past the bound", gate("-" * 300 + "1"), "settings error", "levels deep; allowed: at most 200"),
    # -- expressions: a value or the work over its bound is a row error --------------------------
    Case("gate result: an integer of 8,600 digits", gate("int('9' * 4300) * int('9' * 4300) > 0"), "failed", "integer of more than 4,300 digits"),
    Case("gate result: product of row integers", gate("int(row['v']) * int(row['v']) * int(row['v'])", f"id,v\n1,{'7' * 4000}\n"), "failed", "integer of more than 4,300 digits"),
    Case("gate: + of lists", gate("len([0] * 1000000 + [0] * 1000000) > 0"), "failed", "concatenation result too large"),
    Case("gate: + of strings", gate("len('x' * 1000000 + 'x') > 0"), "failed", "concatenation result too large"),
    Case("gate: work per row", gate(" + ".join(["len('x' * 999999)"] * 12) + " > 0"), "failed", "more than 10,000,000 items"),
    Case("gate: str() of a huge value", json_gate("len(str(row)) > 0", {"l": [0] * 1_100_000}), "failed", "str() of a value too large"),
    Case("gate: a label of a million characters", gate("'x' * 1000000"), "failed", "no route for the label it gave (a str of 1,000,000 characters)"),
    # -- route labels -------------------------------------------------------------------------------
    Case("route label: 500 characters", routes("x" * 500), "settings error", "1 to 64 printable characters"),
    Case("route label: a line break", routes("a\nb"), "settings error", "1 to 64 printable characters"),
    # -- sources: a record that cannot be decoded is quarantined, the run completes ----------------
    Case("jsonl: nested 1,500 deep", source(f"json, options: {JSONL}", "in.jsonl", b'{"a":1}\n' + b'{"a":' + b"[" * 1500 + b"]" * 1500 + b"}\n"), "quarantined", "nested too deeply", outcomes={"completed": 1}),
    Case("jsonl: nested 400 deep, with a null", source(f"json, options: {JSONL}", "in.jsonl", b'{"a":1}\n' + b'{"n":null,"d":' + b"[" * 400 + b"1" + b"]" * 400 + b"}\n"), "completed", "", outcomes={"completed": 2}),
    Case("jsonl: an integer of 5,000 digits", source(f"json, options: {JSONL}", "in.jsonl", b'{"a":1}\n{"a":' + BIG.encode() + b"}\n"), "quarantined", "5,000 digits", outcomes={"completed": 1}),
    Case("json array: an integer of 5,000 digits", source(f"json, options: {JSON_ARRAY}", "in.json", b'[{"a":1},{"a":' + BIG.encode() + b"}]"), "quarantined", "5,000 digits", outcomes={"completed": 1}),
    Case("csv: an int field of 5,000 digits", source(f"csv, options: {CSV_INT}", "in.csv", b"n\n1\n" + BIG.encode() + b"\n"), "quarantined", "is not an int", outcomes={"completed": 1}),
    Case("jsonl: a line that is not UTF-8", source(f"json, options: {JSONL}", "in.jsonl", b'{"a":1}\n' + BAD_UTF8 + b"\n"), "quarantined", "not valid utf-8", evidence=BAD_UTF8 + b"\n"),
    Case("csv: a line that is not UTF-8", source("csv, options: {path: in.csv, on_validation_failure: bad}", "in.csv", b"a\nok\ncaf\xe9\r\n"), "quarantined", "not valid utf-8", evidence=b"caf\xe9\r\n"),
    # (a codec that makes a lone surrogate of hostile bytes: recording the record failed the run, and every resume)
    Case("csv utf-7: a lone surrogate", source("csv, options: {path: in.csv, encoding: utf-7, on_validation_failure: bad}", "in.csv", b"id,name\n1,ok\n2,bad+2AA-x\n3,fine\n"), "quarantined", "holds a lone surrogate (U+D800 to U+DFFF), which is no Unicode text; recorded as read with each lone surrogate as U+FFFD", outcomes={"completed": 2}),
    Case("csv unicode_escape: a lone surrogate", source("csv, options: {path: in.csv, encoding: unicode_escape, on_validation_failure: bad}", "in.csv", b"id,name\n1,ok\n2,a\\ud800b\n"), "quarantined", "lone surrogate", outcomes={"completed": 1}),
    # (two keys that differ only in their surrogates would be one: which record it was is recorded, not a field lost)
    Case("jsonl utf-7: two keys made one", source("json, options: {path: in.jsonl, encoding: utf-7, on_validation_failure: bad}", "in.jsonl", b'{"id":1}\n{"a+2AA-":1,"a+3AA-":2}\n'), "quarantined", "two of its keys differ only in lone surrogates", outcomes={"completed": 1}),
    Case("jsonl utf-7: a lone surrogate, to discard", source("json, options: {path: in.jsonl, encoding: utf-7}", "in.jsonl", b'{"id":1}\n{"id":2,"n":"a+2AA-b"}\n'), "quarantined", "lone surrogate", outcomes={"completed": 1}),
    # -- sources that never end or block --------------------------------------------------------
    Case("source: /dev/zero", source("csv, options: {path: /dev/zero}", "unused", b""), "settings error", "/dev/zero is a character device; allowed: a regular file"),
    Case("source: a FIFO", source("json, options: {path: in.jsonl}", "in.jsonl", FIFO), "settings error", "is a FIFO (named pipe); allowed: a regular file"),
    # -- keyword_filter: RE2, linear time; what RE2 cannot run is refused at load -----------------
    Case("keyword_filter: catastrophic pattern", keyword(r"^(\w+\s?)*$", "a" * 34 + "!"), "completed", ""),
    Case("keyword_filter: catastrophic pattern, matching", keyword(r"^(\w+\s?)*$", "a" * 34), "diverted", "matches blocked pattern"),
    Case("keyword_filter: backreference", keyword(r"(a)\1", "aa"), "settings error", "cannot be used: invalid escape sequence: \\1"),
    Case("keyword_filter: lookahead", keyword(r"pass(?=word)", "password"), "settings error", "cannot be used: invalid perl operator: (?="),
]  # fmt: skip


def elspeth(*args: str, cwd: Path, db: Database) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["ELSPETH_DATABASE_URL"] = db.conninfo
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args],
        cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT,
    )  # fmt: skip


def lay_out(workdir: Path, pipeline: tuple[str, dict[str, bytes]]) -> None:
    settings, files = pipeline
    (workdir / "out").mkdir()
    (workdir / "settings.yaml").write_text(textwrap.dedent(settings), encoding="utf-8")
    for name, data in files.items():
        if data == FIFO:
            os.mkfifo(workdir / name)
        else:
            (workdir / name).write_bytes(data)


def recorded_reasons(db: Database, run_id: str) -> list[str]:
    events = [e.event for e in PostgresRecorder(db).read_events(run_id)]
    return [str(getattr(e, k)) for e in events for k in ("reason", "detail") if getattr(e, k, None)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_ends_the_way_the_table_says(case: Case, db: Database, tmp_path: Path) -> None:
    lay_out(tmp_path, case.pipeline)
    proc = elspeth("run", "-s", "settings.yaml", cwd=tmp_path, db=db)
    assert "Traceback" not in proc.stderr, proc.stderr
    if case.expect == "settings error":
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert case.says in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"run (\S+) completed", proc.stdout)
    assert found, proc.stdout
    summary = re.search(r"  tokens: (.*)", proc.stdout)  # the summary counts token outcomes apart from rows
    outcomes = dict(
        (name, int(n)) for name, n in (part.rsplit(" ", 1) for part in summary.group(1).split(", "))
    ) if summary else {}  # fmt: skip
    assert outcomes.get(case.expect, 0) >= 1, proc.stdout
    for name, n in case.outcomes.items():
        assert outcomes.get(name) == n, proc.stdout
    if case.says:
        reasons = recorded_reasons(db, found.group(1))
        assert any(case.says in r for r in reasons), reasons
        assert all(len(r) < 1000 for r in reasons), "a reason is recorded with every row: it is kept short"
    if case.evidence is not None:
        bad = [json.loads(line) for line in (tmp_path / "out" / "bad.jsonl").read_text().splitlines()]
        assert [base64.b64decode(r["__raw_bytes__"]) for r in bad] == [case.evidence], bad


def test_a_settings_file_that_is_not_a_regular_file_is_refused_without_reading_it(db: Database, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "settings.yaml")
    for args in (("validate", "-s", "settings.yaml"), ("validate", "-s", "/dev/zero")):
        proc = elspeth(*args, cwd=tmp_path, db=db)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "not a regular file" in proc.stderr, proc.stderr


# -- SIGTERM and SIGINT, wherever the engine is --------------------------------------------------

PLUGINS = '''
import _thread, os, signal, sys, threading, time
from pathlib import Path
from engine.plugins.protocol import PluginSpec, SourceItem
from engine.plugins.sinks import JsonSink


def block(how):
    """Say that the plugin got here, then block as `how` says while the file `stick` exists."""
    if not Path("stick").exists():
        return
    print("hostile: blocking", file=sys.stderr, flush=True)
    if how == "sleep":
        time.sleep(3600)
    elif how == "spin":
        while True:
            pass
    elif how == "wait":
        threading.Event().wait()
    elif how == "read":
        os.read(os.open("fifo", os.O_RDWR), 1)  # a read that no writer will ever answer
    elif how == "self":
        os.kill(os.getpid(), signal.SIGTERM)  # a signal between two rows: the graceful stop
    elif how == "lost":
        # A signal that lands as the main thread blocks, after its last look for signals: its
        # handler waits for the blocking call to return. Made certain here by another thread
        # taking it, once the main thread let go of the interpreter, which it does only to block
        # (no timed switches meanwhile, and a thread started without waiting for it to start).
        sys.setswitchinterval(1000)
        _thread.start_new_thread(lambda: signal.pthread_kill(threading.get_ident(), signal.SIGTERM), ())
        threading.Event().wait()


class Transform:
    kind = "transform"

    def __init__(self, options):
        self.how = options["how"]

    def process(self, row):
        if row["id"] == 2:
            block(self.how)
        return dict(row)


class Source:
    kind = "source"
    on_validation_failure = "discard"

    def __init__(self, options):
        self.how = options["how"]

    def fingerprint(self):
        return "blocking"

    def read(self, start=0):
        for i in range(start, 3):
            if i == 1:
                block(self.how)
            yield SourceItem(i, {"id": i + 1}, {"id": i + 1})

    def close(self):
        pass


class Sink(JsonSink):
    def __init__(self, options):
        self.how = options.pop("how")
        super().__init__(options)

    def write(self, token_id, row):
        if row["id"] == 2 and self.how != "none":
            block(self.how)
        super().write(token_id, row)


SPECS = (PluginSpec("stuck", "transform", Transform, {}), PluginSpec("stuck", "source", Source, {}),
         PluginSpec("stuck", "sink", Sink, {}))
'''

DRIVER = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hang's stacks, for `finish`
sys.path.insert(0, ".")
import hostile_plugins
from engine.plugins import registry
registry.BUILTIN = registry.BUILTIN + hostile_plugins.SPECS
registry._registry.cache_clear()
from engine.cli.main import main
sys.argv = ["elspeth", *sys.argv[1:]]
main()
"""


def stuck_pipeline(where: str, how: str) -> str:
    """Three rows through a source, a transform and a sink; the one named by `where` blocks as
    `how` says on the second row."""
    at = {name: how if name == where else "none" for name in ("source", "transform", "sink")}
    source = f"{{plugin: stuck, on_success: raw, options: {{how: {at['source']}}}}}"
    if where != "source":
        source = "{plugin: json, on_success: raw, options: {path: in.jsonl}}"
    return f"""
source: {source}
transforms:
- {{name: t, plugin: stuck, input: raw, on_success: out, on_error: discard, options: {{how: {at["transform"]}}}}}
sinks:
  out: {{plugin: stuck, options: {{path: out/out.jsonl, how: {at["sink"]}}}}}
"""


def start(workdir: Path, db: Database, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["ELSPETH_DATABASE_URL"] = db.conninfo
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "driver.py", *args], cwd=workdir, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for_line(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """Read the process's stderr until `marker` appears (the plugin got where it blocks); return
    what was read. Waits on the pipe itself, so nothing depends on how long that takes."""
    assert proc.stderr is not None
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while marker not in seen and sel.select(timeout=TIMEOUT):
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
    assert marker in seen, f"the plugin never got there: {seen.decode(errors='replace')}"
    return seen


def finish(proc: subprocess.Popen[bytes], before: bytes = b"") -> tuple[str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # a hang: fail with where it is stuck, and leave no process behind
        proc.send_signal(signal.SIGUSR1)  # its stacks, on stderr
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(
            f"hung for {TIMEOUT} s; its stderr, then its stacks:\n{(before + stderr).decode(errors='replace')}",
            pytrace=False,
        )
    return stdout.decode(), (before + stderr).decode()


@pytest.mark.parametrize(
    ("where", "how", "signum"),
    [
        ("transform", "sleep", signal.SIGTERM),
        ("transform", "spin", signal.SIGTERM),  # pure Python, never returns to the loop
        ("transform", "wait", signal.SIGINT),  # a lock that nobody releases
        ("source", "read", signal.SIGTERM),  # a read that never returns
        ("sink", "sleep", signal.SIGINT),
        ("transform", "self", 0),  # a signal between rows: the graceful stop at the next boundary
        ("transform", "lost", 0),  # a signal whose handler waits for a lock nobody releases
    ],
)
def test_a_signal_stops_the_run_wherever_it_is_and_resume_completes_it(
    where: str, how: str, signum: int, db: Database, tmp_path: Path
) -> None:
    (tmp_path / "hostile_plugins.py").write_text(PLUGINS)
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "settings.yaml").write_text(stuck_pipeline(where, how))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in (1, 2, 3)))
    (tmp_path / "out").mkdir()
    (tmp_path / "stick").touch()
    os.mkfifo(tmp_path / "fifo")
    proc = start(tmp_path, db, "run", "-s", "settings.yaml", "--commit-every", "1")
    before = wait_for_line(proc, b"hostile: blocking")
    if signum:
        proc.send_signal(signum)
    _, stderr = finish(proc, before)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 130, stderr
    run_id = re.search(r"elspeth resume (run-\S+?)`", stderr)
    assert run_id, stderr
    assert ("interrupted" if how == "self" else "stopped at once") in stderr, stderr

    (tmp_path / "stick").unlink()
    again = start(tmp_path, db, "resume", run_id.group(1))
    stdout, stderr = finish(again)
    assert again.returncode == 0 and "Traceback" not in stderr, stdout + stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "out.jsonl").read_text().splitlines()]
    assert rows == [{"id": 1}, {"id": 2}, {"id": 3}]  # none lost, none written twice


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (signal.SIGTERM, r"stopped at once on SIGINT \(a second signal \(SIGTERM\) came before it reached"),
        (signal.SIGALRM, r"stopped at once on SIGINT \(it did not reach a record boundary within 1 s\)"),
    ],
)
def test_what_stopped_a_run_at_once_is_named(second: signal.Signals, says: str) -> None:
    """A second signal stops the run at once, as the grace period's end does; the message said
    the grace period had run out either way (a hostile review)."""
    now = [0.0]
    stop = Stop("run-x", clock=lambda: now[0])
    with pytest.raises(StoppedAtOnce, match=says), stop.installed():
        stop._handle(signal.SIGINT, None)
        now[0] = GRACE_SECONDS - 0.001
        stop._handle(signal.SIGALRM, None)  # a tick within the grace period: nothing
        assert not stop.aborting
        now[0] = GRACE_SECONDS
        stop._handle(second, None)


def test_a_terminal_closing_hangs_a_run_up_twice_and_it_still_stops_at_its_boundary() -> None:
    """Bash passes its own SIGHUP on to its jobs, then the terminal's arrives: taken for a second
    signal, three terminal closes in five stopped the run at once, unrecorded (a review). A second
    SIGHUP asks nothing new; a Ctrl-C after one still stops at once."""
    stop = Stop("run-x", clock=lambda: 0.0)
    with stop.installed():
        stop._handle(signal.SIGHUP, None)
        stop._handle(signal.SIGHUP, None)
        assert stop.requested == "SIGHUP" and not stop.aborting
    stop = Stop("run-x", clock=lambda: 0.0)
    with pytest.raises(StoppedAtOnce, match=r"on SIGHUP \(a second signal \(SIGINT\)"), stop.installed():
        stop._handle(signal.SIGHUP, None)
        stop._handle(signal.SIGINT, None)


def test_ticks_before_a_signal_stop_nothing() -> None:
    now = [0.0]
    stop = Stop("run-x", clock=lambda: now[0])
    with stop.installed():
        now[0] = 3600.0
        stop._handle(signal.SIGALRM, None)
        assert stop.requested is None and not stop.aborting


def test_a_signal_the_process_was_started_ignoring_stays_ignored() -> None:
    """A shell starts a background job ignoring SIGINT (a Ctrl-C meant for the foreground): the
    run kept to that for its first half second, then stopped on one (a hostile review)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Stop("run-x").installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # handled as ever
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_while_the_first_event_is_read_is_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_created` returned from inside its loop over the reader: the reader was closed when
    collected, where a signal's KeyboardInterrupt (raised while it waits for its fetch thread) is
    only printed ("Exception ignored"), and `resume` went on to run the whole run (a hostile
    review). The reader is closed in place now, and the interrupt reaches the command."""

    def reader(self: PostgresRecorder, run_id: str, *args: object, **kwargs: object) -> Iterator[StoredEvent]:
        try:
            yield StoredEvent(run_id, 0, "run", run_id, "RunStarted", 1, 0, b"{}", b"", b"", b"")
        finally:
            raise KeyboardInterrupt  # the signal, as it arrives while the reader is let go

    monkeypatch.setattr(PostgresRecorder, "read_events", reader)
    with pytest.raises(KeyboardInterrupt):
        PostgresRecorder(None).run_created("run-x")  # type: ignore[arg-type]


def test_a_source_path_swapped_for_a_fifo_after_validate_is_refused_at_run_without_blocking(tmp_path: Path) -> None:
    from engine.plugins.protocol import PluginError
    from engine.plugins.sources import JsonSource

    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n')
    source = JsonSource({"path": str(path)})  # validated: a regular file then
    path.unlink()
    os.mkfifo(path)
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            list(source.read())
            outcome.append("read")
        except BaseException as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(TIMEOUT)
    if reader.is_alive():  # blocked opening the FIFO: let it go before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening the source blocked on a FIFO")
    assert isinstance(outcome[0], PluginError) and "is a FIFO (named pipe)" in str(outcome[0]), outcome
