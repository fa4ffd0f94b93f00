"""What `validate` and `run` check before any store or run exists, so that what validate accepts
a run does not then refuse: the signing key is a key, the witness folder can take files, a
sink's file is not a folder or a pipe. One line each, naming the settings file and the key."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.checks import output_problems
from engine.cli.preflight import path_problems
from engine.orchestrator import build_pipeline
from engine.plugins.protocol import PluginError
from engine.plugins.sinks import JsonSink
from engine.settings import load_settings
from landscape.db import Database
from landscape.keys import generate_key_files
from tests.test_cli import elspeth, one_line_error


def _settings(tmp: Path, landscape: str = "", sink: str = "out.jsonl") -> Path:
    (tmp / "in.jsonl").write_text('{"id": 1}\n')
    path = tmp / "s.yaml"
    path.write_text(
        "source: {plugin: json, on_success: out, options: {path: in.jsonl}}\n"
        + (f"landscape: {{{landscape}}}\n" if landscape else "")
        + f"sinks:\n  out: {{plugin: json, options: {{path: '{sink}', format: jsonl}}}}\n"
    )
    return path


def _problems(tmp: Path, env: dict[str, str] | None = None, **kwargs: str) -> list[str]:
    path = _settings(tmp, **kwargs)
    pipeline = build_pipeline(load_settings(path, {}))
    try:
        return path_problems(pipeline, env or {})
    finally:
        pipeline.close()


def _keys(tmp: Path) -> None:
    (tmp / "keys").mkdir()
    generate_key_files("mine", tmp / "keys")


# (landscape settings, environment with {tmp} filled in, setup, what the one line says; None: no problem)
CASES: dict[str, tuple[str, dict[str, str], Callable[[Path], object] | None, str | None]] = {
    "a key": ("signing_key: keys/mine.key", {}, _keys, None),
    "a missing key": ("signing_key: nokey.key", {}, None, "s.yaml: landscape.signing_key: signing key {tmp}/nokey.key: no such file; allowed: a .key file made by `elspeth keys generate`"),
    "a key that is a .pub": ("signing_key: keys/mine.pub", {}, _keys, "landscape.signing_key: signing key {tmp}/keys/mine.pub: a signing key starts with PRIVATE+KEY+"),
    "a key that is data": ("signing_key: in.jsonl", {}, None, "landscape.signing_key: signing key {tmp}/in.jsonl:"),
    "ELSPETH_SIGNING_KEY missing": ("", {"ELSPETH_SIGNING_KEY": "{tmp}/gone.key"}, None, "s.yaml: ELSPETH_SIGNING_KEY: signing key {tmp}/gone.key: no such file"),
    "ELSPETH_SIGNING_KEY wins over the settings": ("signing_key: keys/mine.key", {"ELSPETH_SIGNING_KEY": "{tmp}/in.jsonl"}, _keys, "ELSPETH_SIGNING_KEY: signing key {tmp}/in.jsonl:"),
    "a witness folder": ("witness_dir: wit", {}, lambda t: (t / "wit").mkdir(), None),
    "a witness folder to be made": ("witness_dir: new/wit", {}, None, None),
    "a witness folder that is a file": ("witness_dir: in.jsonl", {}, None, "s.yaml: landscape.witness_dir: the witness folder {tmp}/in.jsonl is not a folder; allowed: a folder this user can write"),
    "a witness folder under a file": ("witness_dir: in.jsonl/wit", {}, None, "the witness folder {tmp}/in.jsonl/wit cannot be made: {tmp}/in.jsonl is not a folder"),
    "a witness folder that cannot be made": ("witness_dir: /proc/elspeth-nope", {}, None, "the witness folder /proc/elspeth-nope cannot be made: No such file or directory"),
    "a witness folder that takes no file": ("witness_dir: /proc", {}, None, "the witness folder /proc cannot "),  # (as root: access() said yes)
    "ELSPETH_WITNESS_DIR a file": ("", {"ELSPETH_WITNESS_DIR": "{tmp}/in.jsonl"}, None, "s.yaml: ELSPETH_WITNESS_DIR: the witness folder {tmp}/in.jsonl is not a folder"),
    # What the run's first checkpoint would refuse, refused before the run is recorded.
    "a witness folder in a folder its group can write": ("witness_dir: wit", {}, lambda t: t.chmod(0o775), "s.yaml: landscape.witness_dir: the witness folder {tmp}/wit: the folder holding it, {tmp}, is writable by its group (mode 775; chmod g-w {tmp} fixes that); allowed: a folder of yours"),
    "a witness folder others can write": ("witness_dir: wit", {}, lambda t: ((t / "wit").mkdir(), (t / "wit").chmod(0o757)), "the witness folder {tmp}/wit: it is writable by others (mode 757; chmod o-w {tmp}/wit fixes that)"),
    "a witness folder that is a link": ("witness_dir: wit", {}, lambda t: ((t / "real").mkdir(), (t / "wit").symlink_to("real")), "the witness folder {tmp}/wit: it is a symbolic link"),
    # A key the operator names may be reached through a link, and its group may read it; nobody
    # outside its group may, nobody but its owner may write it or the folder it is in.
    "a key through a link": ("signing_key: link.key", {}, lambda t: (_keys(t), (t / "link.key").symlink_to("keys/mine.key")), None),
    "a key its group can read": ("signing_key: keys/mine.key", {}, lambda t: (_keys(t), (t / "keys" / "mine.key").chmod(0o640)), None),
    "a key others can read": ("signing_key: keys/mine.key", {}, lambda t: (_keys(t), (t / "keys" / "mine.key").chmod(0o644)), "landscape.signing_key: signing key {tmp}/keys/mine.key: it is open to others (mode 644); chmod o= {tmp}/keys/mine.key fixes that; allowed: a key file no one but its owner can write"),
    "a key its group can write": ("signing_key: keys/mine.key", {}, lambda t: (_keys(t), (t / "keys" / "mine.key").chmod(0o660)), "signing key {tmp}/keys/mine.key: it is writable by its group (mode 660; chmod g-w"),
    "a key in a folder others can write": ("signing_key: keys/mine.key", {}, lambda t: (_keys(t), (t / "keys").chmod(0o777)), "signing key {tmp}/keys/mine.key: the folder holding it, {tmp}/keys, is writable by its group and by others (mode 777; chmod go-w {tmp}/keys fixes that)"),
    "a key in a sticky folder": ("signing_key: keys/mine.key", {}, lambda t: (_keys(t), (t / "keys").chmod(0o1777)), None),
    "a link to a key in a folder others can write": ("", {"ELSPETH_SIGNING_KEY": "{tmp}/pub/link.key"}, lambda t: (_keys(t), (t / "pub").mkdir(), (t / "pub").chmod(0o777), (t / "pub" / "link.key").symlink_to(t / "keys" / "mine.key")), "ELSPETH_SIGNING_KEY: signing key {tmp}/pub/link.key: it is a symbolic link and the folder holding it, {tmp}/pub, is writable"),
    "ELSPETH_SIGNING_KEY writable by others": ("", {"ELSPETH_SIGNING_KEY": "{tmp}/keys/mine.key"}, lambda t: (_keys(t), (t / "keys" / "mine.key").chmod(0o666)), "ELSPETH_SIGNING_KEY: signing key {tmp}/keys/mine.key: it is open to others (mode 666)"),
    "a key that is a FIFO": ("signing_key: k.key", {}, lambda t: os.mkfifo(t / "k.key"), "signing key {tmp}/k.key: it is not a regular file"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_key_and_witness_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: tuple) -> None:  # type: ignore[type-arg]
    landscape, env, setup, says = case
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    problems = _problems(tmp_path, {k: v.format(tmp=tmp_path) for k, v in env.items()}, landscape=landscape)
    if says is None:
        assert problems == []
    else:
        assert len(problems) == 1 and says.format(tmp=tmp_path) in problems[0], problems
    # Nothing is made by the check (the witness folder is made by the run; the probe is gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "s.yaml", "in.jsonl"})


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        (lambda t: (t / "target").mkdir(), "s.yaml: sinks.out.options.path: target is a folder; allowed: a regular file"),
        (lambda t: os.mkfifo(t / "target"), "sinks.out.options.path: target is a FIFO (named pipe); allowed:"),
        (lambda t: (t / "target").write_text(""), None),
        (lambda t: None, None),
    ],
    ids=["folder", "fifo", "file", "new"],
)  # fmt: skip
def test_a_sink_file_that_is_a_folder_or_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Callable[[Path], object], says: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    problems = _problems(tmp_path, sink="target")
    assert problems == ([] if says is None else [problems[0]]) and (says is None or says in problems[0]), problems


@pytest.mark.parametrize(
    ("url", "setup", "says"),
    [
        ("sqlite:///afile/x.db", lambda t: (t / "afile").write_text(""), "sinks.out.options.url: the folder afile of afile/x.db is not a folder"),
        ("sqlite:///nowhere/x.db", lambda t: None, "sinks.out.options.url: the folder nowhere of nowhere/x.db does not exist"),
        ("sqlite:///d", lambda t: (t / "d").mkdir(), "sinks.out.options.url: d is a folder; allowed: a regular file"),
        ("sqlite:///x.db", lambda t: None, None),
        ("sqlite:///x.csv", lambda t: (t / "x.csv").write_text("id,v\n1,2\n"), "sinks.out.options.url: x.csv holds something other than a SQLite database; allowed: a SQLite database file, or a new one"),
        ("sqlite:///empty.db", lambda t: (t / "empty.db").write_bytes(b""), None),
        ("sqlite:///made.db", lambda t: sqlite3.connect(t / "made.db").execute("CREATE TABLE t (a)").connection.commit(), None),
    ],
    ids=["under a file", "folder missing", "a folder", "new", "not sqlite", "empty", "a database"],
)  # fmt: skip
def test_a_sqlite_sink_file_is_checked_as_a_sink_file_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, setup: Callable[[Path], object], says: str | None
) -> None:
    """A SQLite database sink's file that cannot be made would fail the run once recorded (a
    failed run that invites a resume): refused before, like a file sink's."""
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    problems = _database_sink_problems(tmp_path, url)
    assert problems == ([] if says is None else [problems[0]]) and (says is None or says in problems[0]), problems


def _database_sink_problems(tmp_path: Path, url: str) -> list[str]:
    """`path_problems` of the test settings with their sink a database sink at `url`."""
    path = _settings(tmp_path)
    path.write_text(path.read_text().replace(
        "{plugin: json, options: {path: 'out.jsonl', format: jsonl}}", f"{{plugin: database, options: {{url: '{url}', table: t}}}}"
    ))  # fmt: skip
    pipeline = build_pipeline(load_settings(path, {}))
    try:
        return path_problems(pipeline, {})
    finally:
        pipeline.close()


def test_a_sink_folder_that_takes_no_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only file system (refused even to root) or a folder this user cannot write: validate
    said OK, and the run, recorded, failed at its first flush (a review)."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(tmp_path / "ro")],
                                 capture_output=True, check=False)  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip("no read-only file system can be mounted here, and root writes any folder")
        says = "ro/target cannot be made: its folder is on a read-only file system"
    else:
        (tmp_path / "ro").chmod(0o555)
        says = "ro/target cannot be made: its folder cannot be written by this user (permission denied)"
    try:
        problems = _problems(tmp_path, sink="ro/target")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(tmp_path / "ro")], check=True)
        else:
            (tmp_path / "ro").chmod(0o755)
    assert len(problems) == 1 and says in problems[0], problems


@pytest.mark.parametrize("sink", ["/proc/out.csv", "sqlite:////proc/out.db"])
def test_a_sink_folder_that_says_yes_but_takes_no_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: str
) -> None:
    """access() says yes to root, and /proc takes no file whatever it says: validate said OK, and
    the run, recorded, failed at its first flush (a review). The folder is asked by making a file
    there (removed at once), as the witness folder is."""
    if os.geteuid() != 0:
        pytest.skip("only root is told yes by access() for /proc")
    monkeypatch.chdir(tmp_path)
    if sink.startswith("sqlite:"):
        problems = _database_sink_problems(tmp_path, sink)
        setting, file = "sinks.out.options.url", "/proc/out.db"
    else:
        problems = _problems(tmp_path, sink=sink)
        setting, file = "sinks.out.options.path", sink
    says = f"{setting}: {file} cannot be made: its folder /proc cannot take a file: "
    assert len(problems) == 1 and says in problems[0] and "; allowed: " in problems[0], problems
    assert _problems(tmp_path, sink="new.jsonl") == [] and not (tmp_path / "new.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "s.yaml"]  # (no probe left behind)


def test_a_device_is_a_sink_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _problems(tmp_path, sink="/dev/null") == []


def test_validate_and_run_refuse_before_any_store_or_run(tmp_path: Path) -> None:
    # The run used to be created and then left `running` when its witness file could not be
    # written, and a FIFO sink failed the run; now neither gets that far, and validate says so too.
    for landscape, sink, says in (
        ("witness_dir: in.jsonl", "out.jsonl", "landscape.witness_dir: the witness folder in.jsonl is not a folder"),
        ("signing_key: nokey.key", "out.jsonl", "landscape.signing_key: signing key nokey.key: no such file"),
        ("", "fifo", "sinks.out.options.path: fifo is a FIFO"),
    ):
        if sink == "fifo" and not (tmp_path / "fifo").exists():
            os.mkfifo(tmp_path / "fifo")
        _settings(tmp_path, landscape, sink)
        for command in ("validate", "run"):
            err = one_line_error(
                elspeth(command, "-s", "s.yaml", cwd=tmp_path, env={"ELSPETH_FINGERPRINT_KEY": "k"}), 1
            )
            assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / ".elspeth" / "pgdata").exists()  # no store, so no run


def test_a_witness_folder_whose_parent_the_umask_would_open_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run makes the witness folder's missing parents with the umask; under umask 002 the one
    # holding the witness folder would be writable by its group, and the first checkpoint refuse it.
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o002)
    try:
        problems = _problems(tmp_path, landscape="witness_dir: new/wit")
    finally:
        os.umask(old)
    assert problems == [
        f"{tmp_path}/s.yaml: landscape.witness_dir: the witness folder {tmp_path}/new/wit: the folder holding it, "
        f"{tmp_path}/new, would be made writable by its group (umask 002); make it first: mkdir -p -m 755 "
        f"{tmp_path}/new; allowed: a folder of yours that nobody else can write, in a folder nobody else can "
        "write (or no witness_dir: <home>/witness)"
    ], problems
    assert not (tmp_path / "new").exists()


def test_a_witness_folder_the_checkpoint_would_refuse_stops_validate_and_run_before_any_run(
    tmp_path: Path,
) -> None:
    # It used to pass validate; run recorded the run and died at its first checkpoint, leaving
    # it `running` with its writer gone.
    _settings(tmp_path, "witness_dir: wit")
    tmp_path.chmod(0o775)
    for command in ("validate", "run"):
        err = one_line_error(elspeth(command, "-s", "s.yaml", cwd=tmp_path, env={"ELSPETH_FINGERPRINT_KEY": "k"}), 1)
        assert f"the folder holding it, {tmp_path}, is writable by its group (mode 775" in err, err
    assert not (tmp_path / ".elspeth" / "pgdata").exists()  # no store, so no run


def test_a_sink_that_cannot_seek_its_file_says_why(tmp_path: Path) -> None:
    # An OSError without an errno (a buffered file's "not seekable") has no strerror: the message
    # said "None". (Sinks write unbuffered now, and a raw file says "Illegal seek".)
    os.mkfifo(tmp_path / "fifo")
    sink = JsonSink({"path": str(tmp_path / "fifo"), "format": "jsonl"})
    sink.open("run-x", None)
    sink.write("t1", {"id": 1})
    with pytest.raises(PluginError) as err:
        sink.flush()
    sink.close()
    assert not str(err.value).endswith("None") and "Illegal seek" in str(err.value), err.value


def test_a_nul_in_a_path_never_reaches_a_stat_as_a_traceback(tmp_path: Path) -> None:
    # Settings refuse a NUL in a path; a third-party plugin's path is not theirs to refuse.
    loaded = load_settings(_settings(tmp_path), {})
    nul = SimpleNamespace(path=Path("in\0.jsonl"))
    assert output_problems(loaded, nul, {}, {}) == []


def test_a_nul_in_an_input_path_is_a_reason_not_a_traceback() -> None:
    from engine.cli.preflight import _unreadable

    assert _unreadable(Path("in\0.jsonl")) == "cannot be a file's name (it holds a NUL character)"


def _csv_settings(tmp: Path, header: str, options: str = "") -> Path:
    (tmp / "in.csv").write_text(header + "\n1,2\n")
    path = tmp / "s.yaml"
    path.write_text(
        f"source: {{plugin: csv, on_success: out, options: {{path: in.csv{options}}}}}\n"
        "sinks:\n  out: {plugin: json, options: {path: out.jsonl, format: jsonl}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("header", "options", "says"),
    [
        ("Amount,amount", "", "in.csv: the headers 'Amount' and 'amount' both normalise to 'amount'"),
        ("id,$$$", "", "in.csv: column 2 of 2: the header '$$$' normalises to an empty name"),
        ("id,name", ", field_mapping: {name: id}", "in.csv: field_mapping gives two columns the name 'id'; allowed: names once each"),
        ('id,"notes', "", "in.csv: the header on line 1 opens a quote that does not close on that line;"),
        ("junk\nid,x,id", ", skip_rows: 1", "in.csv: the headers 'id' and 'id' both normalise to 'id'"),
        ("Customer ID,Amount", ", schema: {mode: fixed, fields: ['Customer ID: str', 'amount: int']}",
         "in.csv: the schema requires 'Customer ID', which is no column of the header (its columns, as rows hold "
         "them: customer_id, amount)"),
        ("id,name", ", schema: {mode: flexible, fields: ['id: int', 'nom: str']}", "requires 'nom'"),
        ("id,name", ", field_mapping: {name: nom}, schema: {mode: fixed, fields: ['id: int', 'name: str']}",
         "requires 'name', which is no column of the header (its columns, as rows hold them: id, nom)"),
        ("id,name", "", None),
        ('id,"a,b"', "", None),
        ("Customer ID", ", schema: {mode: flexible, fields: ['customer_id: str', 'x: int?']}", None),
        ("id", ", columns: [id, extra], schema: {mode: fixed, fields: ['id: int', 'extra: str']}", None),
        # a fixed schema that does not declare a column: every row would be quarantined
        ("id,name,amount", ", schema: {mode: fixed, fields: ['id: int']}",
         "in.csv: the header has 2 column(s) the schema (mode fixed) does not declare (name, amount), so every row "
         "would be quarantined; allowed: declare them, or schema mode flexible"),
        ("id,name,amount", ", schema: {mode: flexible, fields: ['id: int']}", None),
    ],
    ids=["twice", "empty", "mapped-twice", "open-quote", "after-skip-rows", "schema-unnormalised",
         "schema-misspelt", "schema-before-mapping", "fine", "quoted-delimiter", "schema-optional-absent",
         "schema-columns", "fixed-undeclared-columns", "flexible-undeclared-columns"],
)  # fmt: skip
def test_a_csv_header_the_run_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: str, options: str, says: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = build_pipeline(load_settings(_csv_settings(tmp_path, header, options), {}))
    try:
        problems = path_problems(pipeline, {})
    finally:
        pipeline.close()
    if says is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(f"{tmp_path}/s.yaml: source.options.path: "), problems
        assert says in problems[0], problems


def test_a_csv_header_the_run_would_refuse_stops_validate_and_run_before_any_run(tmp_path: Path) -> None:
    # It used to pass validate; the run was recorded, then failed at the header, asking to be resumed.
    _csv_settings(tmp_path, "Amount,amount")
    for command in ("validate", "run"):
        err = one_line_error(elspeth(command, "-s", "s.yaml", cwd=tmp_path, env={"ELSPETH_FINGERPRINT_KEY": "k"}), 1)
        assert "source.options.path: in.csv: the headers 'Amount' and 'amount' both normalise to 'amount'" in err, err
        assert len(err.strip().splitlines()) == 1 and "resume" not in err, err
    assert not (tmp_path / ".elspeth" / "pgdata").exists()  # no store, so no run


def _stops_validate_and_run_before_any_run(workdir: Path, *says: str) -> None:
    """`validate` and `run` of workdir/s.yaml both refuse, one line holding each of `says`, with
    no resume offered and no store made (so no run). Without `says`, validate passes."""
    env = {"ELSPETH_FINGERPRINT_KEY": "k"}
    if not says:
        assert elspeth("validate", "-s", "s.yaml", cwd=workdir, env=env).returncode == 0
        return
    for command in ("validate", "run"):
        err = one_line_error(elspeth(command, "-s", "s.yaml", cwd=workdir, env=env), 1)
        assert all(part in err for part in says), err
        assert len(err.strip().splitlines()) == 1 and "resume" not in err, err
    assert not (workdir / ".elspeth" / "pgdata").exists()


@pytest.mark.parametrize(
    ("document", "options", "says"),
    [
        ("42", "", "expected a JSON array of objects, found a number (use format: jsonl)"),
        ('{"rows": [{"a": 1}]}', "", "found an object (set data_key to the key holding the array)"),
        ('{"a": 1, "a": 2}', "", "cannot be decoded"),
        ("[" * 2000 + "]" * 2000, "", "cannot be decoded"),
        ('[{"a": 1}', "", "is not valid JSON"),
        ('{"rows": {"a": 1}}', ", data_key: rows", "data_key 'rows' must name the array"),
        ('{"rows": [{"a": 1}]}', ", data_key: rows", None),
        ('[{"a": 1}, 7]', "", None),  # (7: one record, quarantined by the run)
    ],
    ids=["scalar", "object", "key-twice", "too-deep", "unended", "data-key-not-array", "data-key", "array"],
)
def test_a_json_document_the_run_would_refuse_stops_validate_and_run_before_any_run(
    tmp_path: Path, document: str, options: str, says: str | None
) -> None:
    """validate said OK; the run was recorded, then failed reading the document, asking to be resumed."""
    (tmp_path / "in.json").write_text(document)
    (tmp_path / "s.yaml").write_text(
        f"source: {{plugin: json, on_success: out, options: {{path: in.json, format: json{options}}}}}\n"
        "sinks:\n  out: {plugin: json, options: {path: out.json}}\n"
    )
    _stops_validate_and_run_before_any_run(tmp_path, *(() if says is None else ("source.options.path: in.json", says)))


@pytest.mark.parametrize(
    ("sink", "content", "says"),
    [
        ("csv", "a,b\n1,2", "its last line does not end with a newline"),
        ("json", '{"a": 1}', "does not end with a JSON array's ']'"),
        ("csv", "a,b\n1,2\n", None),
        ("json", '[{"a": 1}]', None),
    ],
    ids=["csv-unended-line", "json-not-an-array", "csv-fine", "json-fine"],
)
def test_a_sink_that_cannot_append_to_its_file_stops_validate_and_run_before_any_run(
    tmp_path: Path, sink: str, content: str, says: str | None
) -> None:
    """validate said OK; the run was recorded, then failed opening the sink, asking to be resumed."""
    (tmp_path / "in.csv").write_text("a,b\n3,4\n")
    (tmp_path / f"out.{sink}").write_text(content)
    (tmp_path / "s.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv}}\n"
        f"sinks:\n  out: {{plugin: {sink}, options: {{path: out.{sink}, mode: append}}}}\n"
    )
    _stops_validate_and_run_before_any_run(
        tmp_path, *(() if says is None else (f"sinks.out.options.path: cannot append to out.{sink}: ", says))
    )
    assert (tmp_path / f"out.{sink}").read_text() == content


def test_the_homes_own_key_the_run_would_refuse_stops_validate(tmp_path: Path) -> None:
    """validate said OK to a keys/ folder others can write, or a key others can read, that the
    run's first checkpoint then refused (the README says validate checks them)."""
    (tmp_path / "in.csv").write_text("a\n1\n")
    (tmp_path / "s.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv}}\n"
        "sinks:\n  out: {plugin: csv, options: {path: out.csv}}\n"
    )
    env = {"ELSPETH_FINGERPRINT_KEY": "k"}
    home = tmp_path / ".elspeth"
    assert elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env=env).returncode == 0  # no key yet: one is made
    assert not (home / "keys").exists()  # (and not by validate)
    home.mkdir(mode=0o700)
    (home / "keys").mkdir(mode=0o700)
    os.chmod(home / "keys", 0o777)
    err = one_line_error(elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env=env), 1)
    assert "s.yaml: the home's signing key: the key folder" in err and "nobody else can write" in err, err
    os.chmod(home / "keys", 0o700)
    generate_key_files("default", home / "keys")
    assert elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env=env).returncode == 0
    os.chmod(home / "keys" / "default.key", 0o644)
    err = one_line_error(elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env=env), 1)
    assert "s.yaml: the home's signing key: signing key" in err and "default.key" in err, err


def test_a_home_its_group_can_write_passes_validate_and_run_which_make_it_private(db: Database, tmp_path: Path) -> None:
    """A home made with mkdir under umask 002 (775), keys/ already in it: the run takes the
    group's write access away before it checks keys/ and goes on; validate checked keys/ without
    that step and refused what the run accepts."""
    (tmp_path / "in.csv").write_text("a\n1\n")
    (tmp_path / "s.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv}}\n"
        "sinks:\n  out: {plugin: csv, options: {path: out.csv}}\n"
    )
    env = {"ELSPETH_FINGERPRINT_KEY": "k", "ELSPETH_HOME": str(tmp_path / "home")}
    home = tmp_path / "home"
    home.mkdir()
    (home / "keys").mkdir(mode=0o700)
    generate_key_files("default", home / "keys")
    for command in ("validate", "run"):
        os.chmod(home, 0o775)
        proc = elspeth(command, "-s", "s.yaml", cwd=tmp_path, db=db, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert stat.S_IMODE(home.stat().st_mode) == 0o755 and stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
