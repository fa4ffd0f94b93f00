"""Hostile and careless sink settings, as tables: add a case with one line.

- REFUSED: settings whose sinks would destroy the input, another sink's output or the audit
  trail; refused when the settings are loaded (validate and run alike), naming the key.
- ROWS: rows whose fields a sink could lose; every field is written, or the row has a recorded
  failure (or diversion) naming the field.
- PASSWORDS: passwords made of URL-special characters, raw and percent-encoded; no piece of
  any of them reaches any table of the audit store, nor a printed location.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest

from engine.errors import RunFailedError
from engine.orchestrator import pipeline_problems
from engine.settings import load_settings
from landscape.db import Database, redact
from landscape.embedded import embedded_uri
from tests.conftest import scratch_database
from tests.engine_harness import run
from tests.sink_audit import assert_nothing_lost, audit, sink_rows

# -- refused at load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """`sinks` (YAML, with {tmp} {home} {store} {embedded} {socket} filled in) and the text the
    one error line must hold (None: accepted). `setup(tmp)` prepares files or links first;
    `store` is the ELSPETH_DATABASE_URL of the command ({store}: the test database)."""

    sinks: str
    expect: str | None
    setup: Callable[[Path], object] | None = None
    store: str | None = "{store}"
    landscape: str | None = None
    keys: str | None = None  # more keys of `landscape:` (YAML, filled in too)
    env: dict[str, str] = field(default_factory=dict)  # more environment (filled in too)
    files: dict[str, str] = field(default_factory=dict)  # name -> text (filled in), written first


def _link(name: str, to: str) -> Callable[[Path], object]:
    return lambda tmp: (tmp / name).symlink_to(tmp / to)


def _hardlink(name: str, to: str) -> Callable[[Path], object]:
    return lambda tmp: os.link(tmp / to, tmp / name)


# A libpq service file naming the test's store (its socket folder, database and user).
SERVICE = "# the test's store\n[other]\nhost=/nowhere\n[audit]\nhost={socket}\ndbname={dbname}\nuser=postgres\n[later]\nport=1\n"

# fmt: off
REFUSED: dict[str, Refused] = {
    "sink is the source": Refused("a: {plugin: csv, options: {path: in.csv}}", "sinks.a.options.path: 'in.csv' is also the source's input"),
    "sink is the source, spelled otherwise": Refused("a: {plugin: csv, options: {path: './sub/../in.csv'}}", "is also the source's input", lambda t: (t / "sub").mkdir()),
    "sink is the source through a symlink": Refused("a: {plugin: csv, options: {path: link.csv}}", "sinks.a.options.path: 'link.csv' is a symbolic link (to", _link("link.csv", "in.csv")),
    "sink is a link planted to another file": Refused("a: {plugin: json, options: {path: report.json}}", "'report.json' is a symbolic link (to {tmp}/victim.txt); allowed: a file", lambda t: ((t / "victim.txt").write_text("mine"), (t / "report.json").symlink_to(t / "victim.txt"))),
    "sink is a hard link planted in a folder every user can write": Refused("a: {plugin: csv, options: {path: pub/report.csv}}", "sinks.a.options.path: 'pub/report.csv' has 2 names (hard links) in {tmp}/pub, a folder every user can write (mode 1777)", lambda t: ((t / "pub").mkdir(), (t / "pub").chmod(0o1777), (t / "pub" / "mine.txt").write_text("x"), os.link(t / "pub" / "mine.txt", t / "pub" / "report.csv"))),
    "a new sink file in a folder every user can write": Refused("a: {plugin: csv, options: {path: pub/report.csv}}", None, lambda t: ((t / "pub").mkdir(), (t / "pub").chmod(0o1777))),
    "sink is a dangling link": Refused("a: {plugin: csv, options: {path: new.csv}}", "'new.csv' is a symbolic link", _link("new.csv", "nowhere/x.csv")),
    "sqlite sink through a link": Refused("a: {plugin: database, options: {url: 'sqlite:///db.sqlite', table: t}}", "is a symbolic link", _link("db.sqlite", "real.sqlite")),
    "sink is the source through a hard link": Refused("a: {plugin: json, options: {path: hard.csv}}", "is also the source's input", _hardlink("hard.csv", "in.csv")),
    "sink folder links to the source's": Refused("a: {plugin: csv, options: {path: alias/in.csv}}", "is also the source's input", lambda t: (t / "alias").symlink_to(t)),
    "sink is the settings file": Refused("a: {plugin: json, options: {path: settings.yaml, format: jsonl}}", "sinks.a.options.path: 'settings.yaml' is also the settings file itself"),
    "two sinks on one file": Refused("a: {plugin: csv, options: {path: out.csv}}\n  b: {plugin: json, options: {path: out.csv}}", "sinks.b.options.path: 'out.csv' is also the output of sink 'a'"),
    "two sinks on one new file via a linked folder": Refused("a: {plugin: csv, options: {path: o/x.csv}}\n  b: {plugin: csv, options: {path: p/x.csv}}", "is also the output of sink 'a'", lambda t: ((t / "o").mkdir(), (t / "p").symlink_to(t / "o"))),
    "a csv sink on a sqlite URI filename's file": Refused("a: {plugin: database, options: {url: 'sqlite:///file:o.db?uri=true', table: t}}\n  b: {plugin: csv, options: {path: o.db}}", "is also the output of sink 'a'"),
    "a csv sink on a sqlite sink's file": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: t}}\n  b: {plugin: csv, options: {path: o.db}}", "is also the output of sink 'a'"),
    "two tables of one sqlite file": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: t}}\n  b: {plugin: database, options: {url: 'sqlite:///o.db', table: u}}", None),
    "sink inside the ELSPETH home": Refused("a: {plugin: csv, options: {path: '{home}/out.csv'}}", "is inside the ELSPETH home"),
    "sink is the ELSPETH home's key file": Refused("a: {plugin: json, options: {path: '{home}/fingerprint.key'}}", "is inside the ELSPETH home"),
    "sqlite sink inside the home": Refused("a: {plugin: database, options: {url: 'sqlite:///{home}/x.db', table: t}}", "sinks.a.options.url: '{home}/x.db' is inside the ELSPETH home"),
    "sqlite sink on the source file": Refused("a: {plugin: database, options: {url: 'sqlite:///in.csv', table: t}}", "sinks.a.options.url: 'in.csv' is also the source's input"),
    "table events": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: events}}", "sinks.a.options.table: 'events' is the name of a table of the audit store"),
    "table Payloads": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: Payloads}}", "'Payloads' is the name of a table of the audit store"),
    "table public.runs": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: public.runs}}", "'public.runs' holds a '.'"),
    "table alembic_version": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: alembic_version}}", "'alembic_version' is the name of a table"),
    "the store's database": Refused("a: {plugin: database, options: {url: '{store}', table: mine}}", "sinks.a.options.url: postgresql://postgres@/"),
    "the store through a SQLAlchemy driver": Refused("a: {plugin: database, options: {url: '{store_sa}', table: mine}}", "is the audit store's database"),
    "the store with a password": Refused("a: {plugin: database, options: {url: '{store_pw}', table: mine}}", "postgresql://postgres:***@/"),
    "the store's socket through a link": Refused("a: {plugin: database, options: {url: '{store_linked}', table: mine}}", "is the audit store's database", lambda t: (t / "sock").symlink_to(_SOCKET[0])),
    "another database of the store's server": Refused("a: {plugin: database, options: {url: '{other_db}', table: mine}}", None),
    "the embedded store of the home": Refused("a: {plugin: database, options: {url: '{embedded}', table: mine}}", "is the audit store's database", store=None),
    "localhost and 127.0.0.1": Refused("a: {plugin: database, options: {url: 'postgresql://x:y@127.0.0.1:5999/audit', table: t}}", "is the audit store's database", store="postgresql://app@localhost:5999/audit"),
    "::1 and localhost": Refused("a: {plugin: database, options: {url: 'postgresql+psycopg://x@[::1]:5999/audit', table: t}}", "is the audit store's database", store="postgresql://app@localhost:5999/audit"),
    "another port": Refused("a: {plugin: database, options: {url: 'postgresql://x@127.0.0.1:5998/audit', table: t}}", None, store="postgresql://app@localhost:5999/audit"),
    "host names differ only in case": Refused("a: {plugin: database, options: {url: 'postgresql://b:pw@DB.example./audit', table: t}}", "is the audit store's database", store=None, landscape="postgresql://a@db.example/audit"),
    "two sinks on one table": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: t}}\n  b: {plugin: database, options: {url: 'sqlite:///./o.db', table: t}}", "sinks.b.options.table: 't' in that database is also written by sink 'a'"),
    "one sqlite table through a hard link": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: t}}\n  b: {plugin: database, options: {url: 'sqlite:///hard.db', table: t}}", "sinks.b.options.table: 't' in that database is also written by sink 'a'", lambda t: (sqlite3.connect(t / "o.db").close(), os.link(t / "o.db", t / "hard.db"))),
    "sqlite table names that differ only in case": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: t}}\n  b: {plugin: database, options: {url: 'sqlite:///o.db', table: T}}", "sinks.b.options.table: 'T' in that database is also written by sink 'a' (as 't': SQLite table names ignore case); allowed: one sink per table"),
    "one server table by its socket and by localhost": Refused("a: {plugin: database, options: {url: 'postgresql://u@/db?host=/var/run/postgresql&port=5999', table: t}}\n  b: {plugin: database, options: {url: 'postgresql://u@localhost:5999/db', table: t}}", "sinks.b.options.table: 't' in that database is also written by sink 'a'", store="postgresql://app@localhost:5998/audit"),
    "postgresql table names that differ in case": Refused("a: {plugin: database, options: {url: '{other_db}', table: t}}\n  b: {plugin: database, options: {url: '{other_db}', table: T}}", None),
    "replace confirmed without replace": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: t, replace_rows_of_other_runs: true}}", "only with if_exists: replace"),
    "a plain sink": Refused("a: {plugin: csv, options: {path: out.csv}}", None),
    "a sink path ending in a slash": Refused("a: {plugin: csv, options: {path: 'out/'}}", "sinks.a.options.path: found 'out/', which ends with '/' and so names a folder; allowed: a file's path"),
    "a sink file name longer than the file system takes": Refused("a: {plugin: csv, options: {path: '" + "a" * 300 + ".csv'}}", "sinks.a.options.path: '" + "a" * 300 + ".csv' cannot be looked at: File name too long; allowed: a path this system can open"),
    "a sink path longer than the system takes": Refused("a: {plugin: json, options: {path: '" + "d/" * 2100 + "x'}}", "cannot be looked at: File name too long"),
    "a sqlite file name longer than the file system takes": Refused("a: {plugin: database, options: {url: 'sqlite:///" + "b" * 300 + "', table: t}}", "sinks.a.options.url: '" + "b" * 300 + "' cannot be looked at: File name too long"),
    "sink is the signing key": Refused("a: {plugin: json, options: {path: keys/mine.key}}", "sinks.a.options.path: 'keys/mine.key' is also the signing key (landscape.signing_key)", keys="signing_key: keys/mine.key"),
    "sink is the signing key's .pub": Refused("a: {plugin: json, options: {path: keys/mine.pub}}", "is also the signing key's public key (landscape.signing_key)", keys="signing_key: keys/mine.key"),
    "the key is relative to the settings file": Refused("a: {plugin: json, options: {path: sub/k.key}}", "is also the signing key (landscape.signing_key)", lambda t: (t / "sub").mkdir(), keys="signing_key: k.key", files={"sub/settings.yaml": ""}),
    "a sqlite sink on the signing key": Refused("a: {plugin: database, options: {url: 'sqlite:///keys/mine.key', table: t}}", "is also the signing key", keys="signing_key: keys/mine.key"),
    "sink is ELSPETH_SIGNING_KEY": Refused("a: {plugin: json, options: {path: '{tmp}/other.key'}}", "is also the signing key (ELSPETH_SIGNING_KEY)", env={"ELSPETH_SIGNING_KEY": "{tmp}/other.key"}),
    "sink inside the witness folder": Refused("a: {plugin: json, options: {path: wit/run-x.checkpoints}}", "sinks.a.options.path: 'wit/run-x.checkpoints' is inside the witness folder (landscape.witness_dir)", keys="witness_dir: wit"),
    "sink is the witness folder": Refused("a: {plugin: json, options: {path: wit}}", "is inside the witness folder", keys="witness_dir: wit/"),
    "sink inside the witness folder through a link": Refused("a: {plugin: json, options: {path: alias/x.checkpoints}}", "is inside the witness folder", lambda t: ((t / "wit").mkdir(), (t / "alias").symlink_to(t / "wit")), keys="witness_dir: wit"),
    "sink inside ELSPETH_WITNESS_DIR": Refused("a: {plugin: json, options: {path: '{tmp}/w2/x'}}", "is inside the witness folder (ELSPETH_WITNESS_DIR)", env={"ELSPETH_WITNESS_DIR": "{tmp}/w2"}),
    "sink beside the witness folder": Refused("a: {plugin: json, options: {path: witness.jsonl}}", None, keys="witness_dir: wit"),
    "a path with ~ is the folder named ~": Refused("a: {plugin: csv, options: {path: '~/in.csv'}}", None, lambda t: (t / "~").mkdir(), env={"HOME": "{tmp}"}),
    "a path with ~ is the source in the folder named ~": Refused("a: {plugin: csv, options: {path: '~/in.csv'}}", "is also the source's input", lambda t: (t / "~").symlink_to(t), env={"HOME": "/nonexistent"}),
    "table events_p14": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: events_p14}}", "sinks.a.options.table: 'events_p14' is the name of a table of the audit store"),
    "table Tokens_P03": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: Tokens_P03}}", "is the name of a table of the audit store"),
    "table public.runs_p7": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: public.runs_p7}}", "'public.runs_p7' holds a '.'"),
    "table payloads_before_0007": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: payloads_before_0007}}", "is the name of a table of the audit store"),
    "table rows_clean": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: rows_clean}}", None),
    "table events_p": Refused("a: {plugin: database, options: {url: 'sqlite:///o.db', table: events_p}}", None),
    "the store through a libpq service": Refused("a: {plugin: database, options: {url: 'postgresql:///?service=audit', table: mine}}", "sinks.a.options.url: postgresql:///?service=audit is the audit store's database", env={"PGSERVICEFILE": "{tmp}/services.conf"}, files={"services.conf": SERVICE}),
    "the store through PGSERVICE": Refused("a: {plugin: database, options: {url: 'postgresql+psycopg://', table: mine}}", "is the audit store's database", env={"PGSERVICEFILE": "{tmp}/services.conf", "PGSERVICE": "audit"}, files={"services.conf": SERVICE}),
    "the store through a service in PGSYSCONFDIR": Refused("a: {plugin: database, options: {url: 'postgresql:///?service=audit', table: mine}}", "is the audit store's database", env={"PGSERVICEFILE": "{tmp}/none.conf", "PGSYSCONFDIR": "{tmp}"}, files={"pg_service.conf": SERVICE}),
    "another database through the store's service": Refused("a: {plugin: database, options: {url: 'postgresql:///postgres?service=audit', table: mine}}", None, env={"PGSERVICEFILE": "{tmp}/services.conf"}, files={"services.conf": SERVICE}),
    "a service no file here defines": Refused("a: {plugin: database, options: {url: 'postgresql:///?service=elsewhere', table: mine}}", None, env={"PGSERVICEFILE": "{tmp}/services.conf"}, files={"services.conf": SERVICE}),
}
# fmt: on

_SOCKET: list[Path] = []  # the test server's socket folder, for the link case


def _settings(sinks: str, landscape: str | None, keys: str | None = None) -> str:
    entries = ([f"url: '{landscape}'"] if landscape else []) + ([keys] if keys else [])
    extra = f"landscape: {{{', '.join(entries)}}}\n" if entries else ""
    return f"source:\n  plugin: csv\n  on_success: a\n  options: {{path: in.csv, schema: {{mode: observed}}}}\nsinks:\n  {sinks}\n{extra}"


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_refused_at_load(case: Refused, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = urlsplit(db.conninfo)
    _SOCKET[:] = [Path(dict(p.split("=", 1) for p in parts.query.split("&"))["host"])]
    home = tmp_path / "home"
    fill = {
        "tmp": str(tmp_path), "home": str(home), "store": db.conninfo, "embedded": embedded_uri(home),
        "store_sa": db.conninfo.replace("postgresql://", "postgresql+psycopg://", 1),
        "store_pw": db.conninfo.replace("postgres@", "postgres:hunter2@", 1),
        "store_linked": urlunsplit(parts._replace(query=f"host={tmp_path / 'sock'}")),
        "other_db": urlunsplit(parts._replace(path="/postgres")),
        "socket": str(_SOCKET[0]), "dbname": parts.path.lstrip("/"),
    }  # fmt: skip

    def filled(text: str) -> str:
        text = text.replace("{", "{{").replace("}", "}}")
        return re.sub(r"\{\{(\w+)\}\}", r"{\1}", text).format(**fill)

    (tmp_path / "in.csv").write_text("id\n1\n")
    if case.setup is not None:
        case.setup(tmp_path)
    for name, text in case.files.items():
        (tmp_path / name).write_text(filled(text))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ELSPETH_HOME", str(home))
    for var in ("ELSPETH_SIGNING_KEY", "ELSPETH_WITNESS_DIR", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR"):
        monkeypatch.delenv(var, raising=False)
    for var, value in case.env.items():
        monkeypatch.setenv(var, filled(value))
    if case.store is None:
        monkeypatch.delenv("ELSPETH_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("ELSPETH_DATABASE_URL", case.store.format(**fill))
    # A case may put the settings file in a subfolder (see `files`).
    path = next((tmp_path / name for name in case.files if name.endswith("settings.yaml")), tmp_path / "settings.yaml")
    path.write_text(_settings(filled(case.sinks), case.landscape, case.keys and filled(case.keys)))
    problems = pipeline_problems(load_settings(path))
    if case.expect is None:
        assert problems == []
    else:
        expect = case.expect.format(**fill)
        assert len(problems) == 1 and expect in problems[0], problems
        assert "hunter2" not in problems[0]


# -- rows whose fields differ ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A sink (YAML, `{url}` a database of its own) fed `rows`; `spill` adds a json sink `spill`
    as its on_write_failure. Every field is in the sink, or the row's recorded reason names it."""

    sink: str
    rows: list[dict[str, Any]]
    failed: set[int] = field(default_factory=set)  # rows expected to fail (or go to spill)
    spill: bool = False
    source_schema: str = "{mode: observed}"  # `n: any` lets a value of another type reach the sink


MIXED = [{"a": 1}, {"a": 2, "b": "x"}, {"b": "y"}]
CSV = "{plugin: csv, options: {path: out/o.csv}}"
DB = "{plugin: database, options: {url: '{url}', table: t}}"
ANY = "{mode: fixed, fields: ['n: any']}"
# fmt: off
ROWS: dict[str, Rows] = {
    "csv: a field after the header": Rows(CSV, MIXED, {1, 2}),
    "csv: to a spill sink": Rows(CSV, MIXED, {1, 2}, spill=True),
    "csv: schema names them all": Rows("{plugin: csv, options: {path: out/o.csv, schema: {mode: fixed, fields: ['a: int?', 'b: str?']}}}", MIXED),
    "csv: flexible schema, extra field": Rows("{plugin: csv, options: {path: out/o.csv, schema: {mode: flexible, fields: ['a: int?']}}}", MIXED, {1, 2}),
    "csv: no header line": Rows("{plugin: csv, options: {path: out/o.csv, headers: false}}", MIXED, {1, 2}),
    "db: a field after the first row": Rows(DB, MIXED, {1, 2}),
    "db: to a spill sink": Rows(DB, MIXED, {1, 2}, spill=True),
    "db: a text where the column is int": Rows(DB, [{"n": 1}, {"n": "x"}], {1}, source_schema=ANY),
    "db: an integer past 64 bits": Rows(DB, [{"n": 1}, {"n": 2**70}], {1}, source_schema=ANY),
    "db: a bool where the column is int": Rows(DB, [{"n": 1}, {"n": True}], {1}, source_schema=ANY),
    "db: a first row of no field": Rows(DB, [{}, {"a": 1}, {"a": 2}], {0}),
    "db: an empty field name in the first row": Rows(DB, [{"": 1, "a": 1}, {"a": 2}], {0}),
    "db: a NUL in a field name in the first row": Rows(DB, [{"a\x00b": 1, "a": 1}, {"a": 2}], {0}),
    "db: more fields than a table has columns": Rows(DB, [{f"c{i}": i for i in range(2001)}, {"a": 2}], {0}),
    "db: schema names them all": Rows("{plugin: database, options: {url: '{url}', table: t, schema: {mode: fixed, fields: ['a: int?', 'b: str?']}}}", MIXED),
    "json keeps everything": Rows("{plugin: json, options: {path: out/o.jsonl}}", MIXED),
}
# fmt: on


@pytest.fixture
def sink_db(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, "t_hostile") as url:
        yield url


def run_rows(
    db: Database, tmp_path: Path, sink: str, rows: list[dict[str, Any]], spill: bool, schema: str = "{mode: observed}"
) -> tuple[Any, dict[str, Any]]:
    """Run source (jsonl, observed) -> sink `out`; returns the audit and each sink's rows."""
    import json

    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    on_failure = "on_write_failure: spill, " if spill else ""
    body = sink.strip()[1:-1]
    settings = (
        f"source: {{plugin: json, on_success: out, options: {{path: in.jsonl, format: jsonl, schema: {schema}}}}}\n"
        f"sinks:\n  out: {{{on_failure}{body}}}\n"
        + ("  spill: {plugin: json, options: {path: out/spill.jsonl}}\n" if spill else "")
    )
    result = run(db, tmp_path, settings)
    a = audit(db, result.outcome.run_id)
    outputs: dict[str, Any] = {}
    for name, options in (("out", body), ("spill", "path: out/spill.jsonl" if spill else None)):
        if options is None or not a.written.get(name):
            continue
        if "database" in options:
            url = re.search(r"url: '([^']+)'", options)
            assert url is not None
            outputs[name] = sink_rows("database", url.group(1), "t")
        else:
            path = re.search(r"path: ([^,}]+)", options)
            assert path is not None
            target = tmp_path / path.group(1).strip()
            outputs[name] = sink_rows(target.suffix.lstrip("."), str(target))
    if "headers: false" in body and "out" in outputs:  # headerless: the columns are the first row's
        outputs["out"] = sink_rows_headerless(tmp_path / "out/o.csv", rows)
    return a, outputs


def sink_rows_headerless(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import csv

    with path.open(newline="") as f:
        return [dict(zip(list(rows[0]), r, strict=True)) for r in csv.reader(f)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("case", ROWS.values(), ids=ROWS.keys())
def test_no_field_lost(case: Rows, backend: str, db: Database, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "{url}" not in case.sink and backend == "postgresql":
        pytest.skip("a file sink: one backend is enough")
    url = f"sqlite:///{tmp_path / 'o.db'}" if backend == "sqlite" else request.getfixturevalue("sink_db")
    (tmp_path / "out").mkdir(exist_ok=True)
    a, outputs = run_rows(db, tmp_path, case.sink.replace("{url}", url), case.rows, case.spill, case.source_schema)
    assert_nothing_lost(a, case.rows, outputs)
    refused = set(a.diverted if case.spill else a.failed)
    assert refused == case.failed, (a.failed, a.diverted)
    if case.spill:
        assert sorted(a.written["spill"]) == sorted(case.failed)


# -- rows an existing table refuses -----------------------------------------------------------------


def _make_table(url: str, sql: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


# Rows 1 (a second 1), 3 (not > 0) and 4 (null) break a constraint of the table; 0, 2 and 5 do not.
CONSTRAINED = [{"n": 1}, {"n": 1}, {"n": 2}, {"n": -1}, {"n": None}, {"n": 3}]


@pytest.mark.parametrize("spill", [False, True], ids=["no on_write_failure", "to a spill sink"])
def test_a_row_the_table_refuses_fails_alone(db_url: str, spill: bool, db: Database, tmp_path: Path) -> None:
    """One flush holds all six rows; the three the table's constraints refuse fail (or go to the
    spill sink) with the constraint's reason, and the other three are written, once each."""
    _make_table(db_url, "CREATE TABLE t (n BIGINT NOT NULL UNIQUE CHECK (n > 0))")
    (tmp_path / "out").mkdir()
    sink = DB.replace("{url}", db_url)
    a, outputs = run_rows(db, tmp_path, sink, CONSTRAINED, spill, "{mode: fixed, fields: ['n: int?']}")
    assert sorted(r["n"] for r in outputs["out"]) == [1, 2, 3]
    assert sorted(a.written["out"]) == [0, 2, 5]
    refused = a.diverted if spill else a.failed
    assert set(refused) == {1, 3, 4}
    assert all("the table refused it" in why and "IntegrityError" in why for why in refused.values()), refused
    if spill:
        assert sorted(a.written["spill"]) == [1, 3, 4]
        assert sorted(r["n"] or 0 for r in outputs["spill"]) == [-1, 0, 1]


def test_a_deferred_constraint_is_checked_row_by_row(sink_db: str, db: Database, tmp_path: Path) -> None:
    """A PostgreSQL constraint checked only at the commit fails the flush as a whole; the rows
    are then tried with it checked at once, and only the second 1 is refused."""
    _make_table(sink_db, "CREATE TABLE t (n BIGINT, CONSTRAINT once UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)")
    (tmp_path / "out").mkdir()
    rows = [{"n": 1}, {"n": 1}, {"n": 2}]
    a, outputs = run_rows(db, tmp_path, DB.replace("{url}", sink_db), rows, False, "{mode: fixed, fields: ['n: int']}")
    assert sorted(r["n"] for r in outputs["out"]) == [1, 2]
    assert list(a.failed) == [1]
    assert "constraint 'once'" in a.failed[1]


def _refusals(
    url: str, table: str, rows: list[dict[str, Any]], db: Database, tmp_path: Path, schema: str = "{mode: observed}"
) -> tuple[Any, Any]:
    _make_table(url, table)
    (tmp_path / "out").mkdir()
    body = DB.replace("{url}", url).strip()[1:-1]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = (
        f"source: {{plugin: json, on_success: out, options: {{path: in.jsonl, format: jsonl, schema: {schema}}}}}\n"
        f"retry: {{max_attempts: 1}}\nsinks:\n  out: {{{body}}}\n"
    )
    try:
        result = run(db, tmp_path, settings)
    except RunFailedError as e:
        return None, str(e)
    return audit(db, result.outcome.run_id), sink_rows("database", url, "t")


def test_a_parent_later_in_the_flush_is_no_reason_to_refuse_its_child(
    sink_db: str, db: Database, tmp_path: Path
) -> None:
    """A multi-row insert checks a foreign key at its end: row 0's parent is row 1. Tried one by
    one, row 0 alone is refused; it is tried again after the others, and taken."""
    table = "CREATE TABLE t (id int PRIMARY KEY, parent int REFERENCES t(id), n int CHECK (n > 0))"
    rows = [{"id": 1, "parent": 2, "n": 1}, {"id": 2, "parent": None, "n": 1}, {"id": 3, "parent": None, "n": -1}]
    a, stored = _refusals(sink_db, table, rows, db, tmp_path)
    assert sorted(r["id"] for r in stored) == [1, 2]
    assert list(a.failed) == [2] and "constraint 't_n_check'" in a.failed[2], a.failed


@pytest.mark.parametrize(
    "table",
    [
        "CREATE TABLE t (id serial, n int); SELECT setval('t_id_seq', 2147483647)",
        "CREATE TABLE t (n int); CREATE FUNCTION closed() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'closed for maintenance'; END$$; "
        "CREATE TRIGGER closed BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION closed()",
        "CREATE TABLE t (n int, loaded_by text NOT NULL)",
    ],
    ids=["an exhausted sequence", "a trigger refusing every row", "a not-null column no row fills"],
)
def test_what_fails_every_row_alike_is_the_tables_fault_not_the_rows(
    table: str, sink_db: str, db: Database, tmp_path: Path
) -> None:
    """No row is failed for good: the run fails, on record, to be resumed once the table is mended."""
    a, why = _refusals(sink_db, table, [{"n": 1}, {"n": 2}, {"n": 3}], db, tmp_path)
    assert a is None, a.failed
    assert "cannot write:" in why and "SQLSTATE" in why


def test_a_refusal_names_only_the_tables_own_names(sink_db: str, db: Database, tmp_path: Path) -> None:
    """A trigger can put a row's value in the error's column and constraint fields."""
    table = (
        "CREATE TABLE t (n int, secret text); CREATE FUNCTION leak() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN IF NEW.n < 0 THEN RAISE EXCEPTION 'no' USING ERRCODE = 'unique_violation', COLUMN = NEW.secret, "
        "CONSTRAINT = NEW.secret, TABLE = NEW.secret; END IF; RETURN NEW; END$$; "
        "CREATE TRIGGER leak BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION leak()"
    )
    rows = [{"n": 1, "secret": "a"}, {"n": -1, "secret": "ZQX98-SECRET"}]
    a, stored = _refusals(sink_db, table, rows, db, tmp_path)
    assert [r["n"] for r in stored] == [1]
    assert list(a.failed) == [1] and "ZQX98" not in a.failed[1] and "SQLSTATE 23505" in a.failed[1], a.failed


def test_a_sqlite_triggers_message_is_not_recorded(db: Database, tmp_path: Path) -> None:
    """From SQLite 3.46 on, RAISE's message may be built from the row: only SQLite's name of the
    error is kept."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    table = (
        "CREATE TABLE t (n int); CREATE TRIGGER guard BEFORE INSERT ON t WHEN NEW.n < 0 "
        "BEGIN SELECT RAISE(ABORT, 'ZQX98 said no'); END"
    )
    with sqlite3.connect(tmp_path / "o.db") as conn:
        conn.executescript(table)
    a, stored = _refusals(url, "SELECT 1", [{"n": 1}, {"n": -1}], db, tmp_path)
    assert [r["n"] for r in stored] == [1]
    assert list(a.failed) == [1] and "SQLITE_CONSTRAINT_TRIGGER" in a.failed[1] and "ZQX98" not in a.failed[1]


def test_an_integer_for_a_date_column_fails_its_row_alone(sink_db: str, db: Database, tmp_path: Path) -> None:
    rows = [{"d": "2024-01-05"}, {"d": 5}]
    a, stored = _refusals(sink_db, "CREATE TABLE t (d date)", rows, db, tmp_path, "{mode: fixed, fields: ['d: any']}")
    assert [str(r["d"]) for r in stored] == ["2024-01-05"]
    assert list(a.failed) == [1] and "SQLSTATE 42804" in a.failed[1], a.failed


def test_a_sqlite_date_column_takes_the_text_it_is_given(db: Database, tmp_path: Path) -> None:
    """SQLAlchemy's SQLite DATE and TIMESTAMP refuse a string (every flush failed); the table
    gets the text as SQLite stores it, unchanged."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    _make_table(url, "CREATE TABLE t (d DATE, ts TIMESTAMP, u BLOB)")
    rows = [{"d": "2024-01-05", "ts": "2024-01-05T10:00:00+01:00", "u": "x"}]
    (tmp_path / "out").mkdir()
    a, _ = run_rows(db, tmp_path, DB.replace("{url}", url), rows, False)
    assert a.written["out"] == [0]
    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute("SELECT d, ts, u FROM t").fetchall() == [("2024-01-05", "2024-01-05T10:00:00+01:00", "x")]


def test_a_value_a_postgresql_column_type_refuses_fails_its_row_alone(
    sink_db: str, db: Database, tmp_path: Path
) -> None:
    _make_table(sink_db, "CREATE TABLE t (d date)")
    rows = [{"d": "2024-01-05"}, {"d": "not a date"}, {"d": "2024-02-30"}, {"d": "2024-03-01"}]
    (tmp_path / "out").mkdir()
    a, outputs = run_rows(db, tmp_path, DB.replace("{url}", sink_db), rows, False)
    assert sorted(str(r["d"]) for r in outputs["out"]) == ["2024-01-05", "2024-03-01"]
    assert set(a.failed) == {1, 2}
    assert all("SQLSTATE 22" in why and "not a date" not in why for why in a.failed.values()), a.failed


# -- passwords ------------------------------------------------------------------------------------

# Each piece between special characters is unique, so that a password cut in two by a parser
# is still found if either half leaks; and long (`_W`), as the store holds base64 signatures and
# hashes, in which a piece of four letters can turn up by chance (most likely what failed once).
_W = "v8LkT3"
_SPECIALS = "/?#@:% &=+;,$!*'()[]~\\\"|<>^`{}"
EVERY = "".join(f"Qz{i}X{_W}{c}" for i, c in enumerate(_SPECIALS)) + f"QzEnd{_W}"
PASSWORDS: dict[str, str] = {
    "every special character": EVERY,
    **{f"one {c!r}": f"Qa{i}X{_W}{c}Qb{i}Y{_W}" for i, c in enumerate("/?#@:% ")},
    "ends with @": f"QcTail{_W}@",
    "percent that decodes": f"Qd{_W}%41Qe{_W}",
}


def _pieces(password: str) -> list[str]:
    return [p for p in re.split(r"[^A-Za-z0-9]+", password) if len(p) >= 3]


def _leaks(text: str, password: str) -> list[str]:
    return [p for p in _pieces(password) if p in text]


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "percent-encoded"])
@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_redact_hides_every_piece(password: str, encoded: bool) -> None:
    pw = quote(password, safe="") if encoded else password
    forms = [
        f"postgresql://app:{pw}@db.example:5432/audit",
        f"postgresql+psycopg://app:{pw}@/audit?host=/run/pg",
        f"postgresql://app@db/audit?sslmode=require&password={quote(password, safe='')}&x=1",
        f"sqlite:///x.db?sslpassword={quote(password, safe='')}",
    ]
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    forms += [f"host=db password='{escaped}' dbname=audit", f"host=db sslpassword = '{escaped}'"]
    for form in forms:
        shown = redact(form)
        assert _leaks(shown, password) == [], (form, shown)
        assert "***" in shown


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("postgresql://app:pw@db.example:5432/audit?sslmode=require") == (
        "postgresql://app:***@db.example:5432/audit?sslmode=require"
    )
    assert redact("host=db port=5432 password=x dbname=a") == "host=db port=5432 password=*** dbname=a"
    assert redact("row['password'] == 'x'") == "row['password'] == 'x'"  # not a connection string
    assert redact("out/password=1.csv") == "out/password=1.csv"


def _all_text(db: Database) -> str:
    """Every value of every table in the store, as text (bytes decoded)."""
    chunks: list[str] = []
    with db.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for t in tables:
            for row in conn.execute(f'SELECT * FROM "{t}"'):
                for v in row:
                    chunks.append(bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else str(v))
    return "\n".join(chunks)


@pytest.mark.parametrize("reachable", [True, False], ids=["written", "connection-fails"])
@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "percent-encoded"])
@pytest.mark.parametrize("password", [EVERY, f"Qa0X{_W}/Qb0Y{_W}", f"Qa3X{_W}@Qb3Y{_W}"], ids=["every", "slash", "at"])
def test_no_password_reaches_the_store(
    password: str, encoded: bool, reachable: bool, db: Database, sink_db: str, tmp_path: Path
) -> None:
    pw = quote(password, safe="") if encoded else password
    parts = urlsplit(sink_db)
    target = f"postgresql://postgres:{pw}@/{parts.path.lstrip('/')}?{parts.query}" if reachable else (
        f"postgresql://postgres:{pw}@127.0.0.1:1/nowhere"
    )  # fmt: skip
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    yaml_url = target.replace("'", "''")
    settings = (
        "source: {plugin: csv, on_success: out, options: {path: in.csv, schema: {mode: observed}}}\n"
        f"sinks:\n  out: {{plugin: database, options: {{url: '{yaml_url}', table: t}}}}\n"
    )
    try:
        run(db, tmp_path, settings)
    except Exception as e:  # a sink that cannot connect fails the run: its message is checked too
        assert _leaks(str(e), password) == []
    assert _leaks(_all_text(db), password) == []


# -- through the command line ---------------------------------------------------------------------


def test_validate_and_run_refuse_with_one_line_and_leave_the_input(db: Database, tmp_path: Path) -> None:
    from tests.test_cli import elspeth, one_line_error

    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    (tmp_path / "s.yaml").write_text(_settings("a: {plugin: csv, options: {path: ./in.csv}}", None))
    for command in ("validate", "run"):
        err = one_line_error(
            elspeth(command, "-s", "s.yaml", cwd=tmp_path, db=db, env={"ELSPETH_FINGERPRINT_KEY": "k"}), 2
        )
        assert len(err.strip().splitlines()) == 1 and "sinks.a.options.path: 'in.csv' is also the source's input" in err
    assert (tmp_path / "in.csv").read_text() == "id\n1\n2\n"


def test_the_database_flag_is_the_store_the_checks_compare_with(db: Database, tmp_path: Path) -> None:
    from tests.test_cli import elspeth, one_line_error

    (tmp_path / "in.csv").write_text("id\n1\n")
    sink = db.conninfo.replace("postgresql://", "postgresql+psycopg://", 1)
    (tmp_path / "s.yaml").write_text(
        _settings(f"a: {{plugin: database, options: {{url: '{sink}', table: mine}}}}", None)
    )
    err = one_line_error(elspeth("--database", db.conninfo, "validate", "-s", "s.yaml", cwd=tmp_path), 2)
    assert "sinks.a.options.url" in err and "is the audit store's database" in err


def test_replacing_a_table_of_other_runs_needs_the_settings_to_say_so(db: Database, tmp_path: Path) -> None:
    from tests.test_cli import elspeth, one_line_error

    (tmp_path / "in.csv").write_text("id\n1\n")
    sink = "a: {plugin: database, options: {url: 'sqlite:///o.db', table: t, if_exists: replace%s}}"
    (tmp_path / "s.yaml").write_text(_settings(sink % "", None))
    assert elspeth("run", "-s", "s.yaml", cwd=tmp_path, db=db).returncode == 0  # a new table: nothing to lose
    err = one_line_error(elspeth("run", "-s", "s.yaml", cwd=tmp_path, db=db), 1)
    assert "holds 1 row(s) of run(s) run-" in err and "replace_rows_of_other_runs: true" in err
    (tmp_path / "s.yaml").write_text(_settings(sink % ", replace_rows_of_other_runs: true", None))
    assert elspeth("run", "-s", "s.yaml", cwd=tmp_path, db=db).returncode == 0


# -- the database itself says it is an audit store ------------------------------------------------


def test_a_database_sink_refuses_a_database_that_holds_an_audit_store(db: Database) -> None:
    # The load-time check compares URLs, which a DNS alias or a host list can spell past; the
    # sink asks the database at open, before it makes or drops anything. Here it is handed the
    # store's URL and a partition's name directly, as if the load-time check had been fooled.
    from engine.plugins.database_sink import DatabaseSink
    from engine.plugins.protocol import PluginError

    options = {"url": db.conninfo, "table": "events_p00", "if_exists": "replace", "replace_rows_of_other_runs": True}
    sink = DatabaseSink(options)
    with pytest.raises(PluginError) as err:
        try:
            sink.open("run-x", None)
        finally:
            sink.close()
    assert "that database holds an ELSPETH audit store (schema 'public')" in str(err.value)
    assert "allowed: a database of its own" in str(err.value)
    with psycopg.connect(db.conninfo) as conn:
        tables = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p')")}
    assert "events_p00" in tables and "elspeth_sink_tokens" not in tables


@pytest.mark.parametrize(
    ("tables", "refused"),
    [
        (["audit.store_meta (k text)"], True),  # a store in another schema of the database
        (["audit.events (a text)", "audit.payloads (a text)", "audit.alembic_version (v text)"], True),  # before 0005
        (["events (a text)", "payloads (a text)"], False),  # an application's own tables of those names
        (["events (a text)"], False),
    ],
    ids=["store_meta in another schema", "a store from before store_meta", "events and payloads alone", "events alone"],
)
def test_what_marks_a_database_as_an_audit_store(sink_db: str, tables: list[str], refused: bool) -> None:
    from engine.plugins.database_sink import DatabaseSink
    from engine.plugins.protocol import PluginError

    with psycopg.connect(sink_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA audit")
        for table in tables:
            conn.execute(f"CREATE TABLE {table}")
    sink = DatabaseSink({"url": sink_db, "table": "mine"})
    try:
        if refused:
            with pytest.raises(PluginError, match="that database holds an ELSPETH audit store"):
                sink.open("run-x", None)
        else:
            sink.open("run-x", None)
            sink.write("t1", {"id": 1})
            assert sink.flush() == 1
    finally:
        sink.close()
