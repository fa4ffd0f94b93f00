"""What `validate` and `run` check before any store or run exists, so that what validate accepts
a run does not then refuse: the signing key is a key, the witness folder can take files, a
sink's file is not a folder or a pipe. One line each, naming the settings file and the key."""

from __future__ import annotations

import os
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
    "ELSPETH_WITNESS_DIR a file": ("", {"ELSPETH_WITNESS_DIR": "{tmp}/in.jsonl"}, None, "s.yaml: ELSPETH_WITNESS_DIR: the witness folder {tmp}/in.jsonl is not a folder"),
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


def test_a_sink_that_cannot_seek_its_file_says_why(tmp_path: Path) -> None:
    # An OSError without an errno (the FIFO's "not seekable") has no strerror: the message said "None".
    os.mkfifo(tmp_path / "fifo")
    sink = JsonSink({"path": str(tmp_path / "fifo"), "format": "jsonl"})
    sink.open("run-x", None)
    sink.write("t1", {"id": 1})
    with pytest.raises(PluginError) as err:
        sink.flush()
    sink.close()
    assert not str(err.value).endswith("None") and "seekable" in str(err.value), err.value


def test_a_nul_in_a_path_never_reaches_a_stat_as_a_traceback(tmp_path: Path) -> None:
    # Settings refuse a NUL in a path; a third-party plugin's path is not theirs to refuse.
    loaded = load_settings(_settings(tmp_path), {})
    nul = SimpleNamespace(path=Path("in\0.jsonl"))
    assert output_problems(loaded, nul, {}, {}) == []


def test_a_nul_in_an_input_path_is_a_reason_not_a_traceback() -> None:
    from engine.cli.preflight import _unreadable

    assert _unreadable(Path("in\0.jsonl")) == "cannot be a file's name (it holds a NUL character)"
