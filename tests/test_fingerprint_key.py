"""The key that fingerprints secrets: random per ELSPETH home, made safely on first use, said
once; ELSPETH_FINGERPRINT_KEY wins. No key is published in the source."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from engine import secrets as secrets_module
from engine.secrets import fingerprint
from landscape.fingerprint import KEY_FILE, FingerprintKeyError, fingerprint_key
from tests.test_cli import elspeth, one_line_error


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_module._KEYS.clear()  # each test is a new process as far as the key goes
    monkeypatch.delenv("ELSPETH_FINGERPRINT_KEY", raising=False)  # the suite's fixed key (conftest)


def test_first_use_makes_a_private_random_key_and_says_so_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"ELSPETH_HOME": str(tmp_path / "home")}
    first = fingerprint("hunter2", env)
    key_file = tmp_path / "home" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert first == "hmac-sha256:" + hmac.new(key, b"hunter2", hashlib.sha256).hexdigest()
    said = capsys.readouterr().err
    assert said.count("created the fingerprint key") == 1 and str(key_file) in said
    secrets_module._KEYS.clear()  # the next command
    assert fingerprint("hunter2", env) == first
    assert capsys.readouterr().err == ""  # once: not again for a key that exists
    other = fingerprint("hunter2", {"ELSPETH_HOME": str(tmp_path / "other")})
    assert other != first  # random per home, not a constant from the source


def test_the_environment_key_wins_and_no_file_is_made(tmp_path: Path) -> None:
    env = {"ELSPETH_HOME": str(tmp_path), "ELSPETH_FINGERPRINT_KEY": "k"}
    assert fingerprint("x", env) == "hmac-sha256:" + hmac.new(b"k", b"x", hashlib.sha256).hexdigest()
    assert not (tmp_path / KEY_FILE).exists()


def test_a_planted_link_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("someone else's file\n")
    (tmp_path / KEY_FILE).symlink_to(target)
    with pytest.raises(FingerprintKeyError, match="symbolic link"):
        fingerprint_key(tmp_path, {})
    assert target.read_text() == "someone else's file\n"


def test_a_dangling_planted_link_makes_nothing_at_its_target(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).symlink_to(tmp_path / "planted")
    with pytest.raises(FingerprintKeyError):
        fingerprint_key(tmp_path, {})
    assert not (tmp_path / "planted").exists()


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    fingerprint_key(tmp_path, {})
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(FingerprintKeyError, match=r"readable by others \(mode 644\).*chmod 600"):
        fingerprint_key(tmp_path, {})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_key_of_another_user_is_refused(tmp_path: Path) -> None:
    # Running as root, an earlier ELSPETH gave the home to the server's account, which could
    # have put its own key here: one it knows confirms guessed secrets against the store.
    fingerprint_key(tmp_path, {})
    os.chown(tmp_path / KEY_FILE, 999, 999)
    with pytest.raises(FingerprintKeyError, match=r"belongs to another user \(uid 999\)"):
        fingerprint_key(tmp_path, {})


def test_a_key_that_lost_its_content_is_refused(tmp_path: Path) -> None:
    fingerprint_key(tmp_path, {})
    (tmp_path / KEY_FILE).write_text("")
    with pytest.raises(FingerprintKeyError, match="holds 0 bytes"):
        fingerprint_key(tmp_path, {})


def test_validate_makes_the_key_in_the_home_even_with_an_external_database(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "s.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv}}\n"
        "sinks: {out: {plugin: csv, options: {path: out.csv}}}\n"
    )
    env = {"ELSPETH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}  # never connected to
    first = elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "created the fingerprint key" in first.stderr and ".elspeth/fingerprint.key" in first.stderr
    assert stat.S_IMODE((tmp_path / ".elspeth" / KEY_FILE).stat().st_mode) == 0o600
    again = elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "fingerprint key" not in again.stderr
    home = elspeth("--home", "h", "validate", "-s", "s.yaml", cwd=tmp_path, env=env)
    assert (tmp_path / "h" / KEY_FILE).exists() and "h/fingerprint.key" in home.stderr


def test_an_unusable_key_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "s.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv}}\n"
        "sinks: {out: {plugin: csv, options: {path: out.csv}}}\n"
    )
    (tmp_path / ".elspeth").mkdir()
    (tmp_path / ".elspeth" / KEY_FILE).symlink_to(tmp_path / "planted")
    err = one_line_error(elspeth("validate", "-s", "s.yaml", cwd=tmp_path), 1)  # (the settings are right)
    assert "fingerprint key" in err and len(err.strip().splitlines()) == 1
    assert err.startswith("elspeth: error: cannot read the fingerprint key"), err


def test_a_home_that_cannot_be_made_is_the_machines_error_not_the_settings(tmp_path: Path) -> None:
    """Exit 2 and the settings file's name said the settings were wrong (a hostile review)."""
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "s.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv}}\n"
        "sinks: {out: {plugin: csv, options: {path: out.csv}}}\n"
    )
    (tmp_path / "file").write_text("")
    proc = elspeth("validate", "-s", "s.yaml", cwd=tmp_path, env={"ELSPETH_HOME": str(tmp_path / "file" / "home")})
    err = one_line_error(proc, 1)
    assert err.startswith(f"elspeth: error: cannot use the ELSPETH home {tmp_path / 'file' / 'home'}"), err
    assert "allowed: a folder this user may write" in err and len(err.strip().splitlines()) == 1, err
