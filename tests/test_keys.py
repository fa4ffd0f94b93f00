"""Key files and `elspeth keys generate`: never overwritten, private by mode, one-line errors."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from landscape.checkpoint import Checkpoint, open_checkpoint
from landscape.keys import (
    KeyFileError,
    default_signer,
    existing_default_signer,
    generate_key_files,
    load_signer,
    load_verifier,
)
from landscape.merkle import EMPTY_ROOT
from tests.conftest import give_to_nobody
from tests.test_cli import elspeth, one_line_error


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_files_load_sign_and_verify(tmp_path: Path) -> None:
    signer = generate_key_files("ops", tmp_path)
    assert _mode(tmp_path / "ops.key") == 0o600
    assert (tmp_path / "ops.pub").read_text() == signer.verifier.text() + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.key", "ops.pub"]  # no temporary left
    loaded = load_signer(tmp_path / "ops.key")
    note = Checkpoint("elspeth/s/r", 0, EMPTY_ROOT).sign(loaded)
    assert open_checkpoint(note, load_verifier(tmp_path / "ops.pub")).size == 0


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    generate_key_files("ops", tmp_path)
    before = (tmp_path / "ops.key").read_bytes()
    with pytest.raises(KeyFileError, match=r"ops\.key already exists; a key is never overwritten"):
        generate_key_files("ops", tmp_path)
    assert (tmp_path / "ops.key").read_bytes() == before
    (tmp_path / "b.pub").write_text("someone else's\n")  # half a pair in the way: nothing written
    with pytest.raises(KeyFileError, match=r"b\.pub already exists"):
        generate_key_files("b", tmp_path)
    assert not (tmp_path / "b.key").exists()


def test_the_write_is_exclusive_even_when_a_key_appears_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process creating the .pub between our existence check and our write: O_EXCL/link
    # refuse, and the .key we already wrote is taken back.
    import landscape.keys as keys

    real = keys._write_new

    def racing(path: Path, text: str, mode: int) -> None:
        if path.suffix == ".pub":
            path.write_text("theirs\n")
        real(path, text, mode)

    monkeypatch.setattr(keys, "_write_new", racing)
    with pytest.raises(KeyFileError, match=r"ops\.pub already exists"):
        generate_key_files("ops", tmp_path)
    assert (tmp_path / "ops.pub").read_text() == "theirs\n"
    assert not (tmp_path / "ops.key").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file"),
        (b"", "should hold one line, it holds 0"),
        (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n", "is a PEM file"),
        (b"\xff\xfe", "not a text key file"),
        (b"PRIVATE+KEY+ops+00000000+AQ==\n", "an Ed25519 key is 32 bytes"),
        (b"ops+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n", "is this the .pub file"),
        (b"PRIVATE+KEY+ops+00000000+" + b"Ag" + b"A" * 42 + b"\n", "type 0x02, not Ed25519"),
    ],
)
def test_a_bad_signing_key_file_is_one_clear_error(tmp_path: Path, content: bytes | None, says: str) -> None:
    path = tmp_path / "k.key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError, match=says) as e:
        load_signer(path)
    assert "\n" not in str(e.value) and "k.key" in str(e.value)


def test_unreadable_key_paths_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is a folder"):
        load_signer(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyFileError, match="cannot read it: Not a directory"):
        load_verifier(tmp_path / "file" / "k.pub")
    generate_key_files("ops", tmp_path)
    with pytest.raises(KeyFileError, match="private signing key, not a verifier"):
        load_verifier(tmp_path / "ops.key")


def test_a_key_path_that_is_no_small_regular_file_is_refused_not_read_or_waited_on(tmp_path: Path) -> None:
    """`--public-key /dev/zero` was read until memory ran out; a FIFO was waited on for ever (a
    hostile review)."""
    with pytest.raises(KeyFileError, match=r"/dev/zero: it is not a regular file"):
        load_verifier(Path("/dev/zero"))
    os.mkfifo(tmp_path / "fifo.pub")
    with pytest.raises(KeyFileError, match=r"fifo\.pub: it is not a regular file"):
        load_verifier(tmp_path / "fifo.pub")
    (tmp_path / "big.pub").write_bytes(b"x" * 70_000)
    with pytest.raises(KeyFileError, match=r"big\.pub: it is larger than 65536 bytes"):
        load_verifier(tmp_path / "big.pub")


def test_the_default_key_is_made_once_per_home_and_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = default_signer(home)
    assert _mode(home / "keys") == 0o700 and _mode(home / "keys" / "default.key") == 0o600
    assert first.name.endswith("/elspeth")
    assert default_signer(home).verifier == first.verifier
    assert load_verifier(home / "keys" / "default.pub") == first.verifier
    assert default_signer(tmp_path / "other").verifier != first.verifier


def test_two_processes_making_the_default_key_at_once_share_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import landscape.keys as keys

    real = keys.generate_key_files
    made: list[str] = []

    def other_process_won(name: str, directory: Path, *, key_name: str | None = None) -> object:
        made.append(real(name, directory, key_name="winner/elspeth").verifier.label)
        return real(name, directory, key_name=key_name)  # our own attempt, now refused

    monkeypatch.setattr(keys, "generate_key_files", other_process_won)
    assert default_signer(tmp_path).verifier.label == made[0]


def test_keys_generate_cli(tmp_path: Path) -> None:
    proc = elspeth("keys", "generate", "ops", "--dir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pub = (tmp_path / "ops.pub").read_text().strip()
    assert pub in proc.stdout and _mode(tmp_path / "ops.key") == 0o600
    again = elspeth("keys", "generate", "ops", "--dir", str(tmp_path), cwd=tmp_path)
    assert "already exists; a key is never overwritten" in one_line_error(again, 1)
    assert (tmp_path / "ops.pub").read_text().strip() == pub
    missing = elspeth("keys", "generate", "x", "--dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert "is not an existing folder" in one_line_error(missing, 1)
    assert "use 1-64 letters" in one_line_error(elspeth("keys", "generate", "../x", cwd=tmp_path), 2)
    assert "Missing argument" in one_line_error(elspeth("keys", "generate", cwd=tmp_path), 2)
    assert not (tmp_path / "x.key").exists()


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda home: give_to_nobody(home / "keys"), r"belongs to another user \(uid 65534\)"),
        (lambda home: os.chmod(home / "keys", 0o777), r"writable by its group and by others \(mode 777; chmod go-w"),
        (lambda home: os.chmod(home / "keys", 0o770), r"writable by its group \(mode 770; chmod g-w"),
        (lambda home: give_to_nobody(home), r"the folder holding it, .* belongs to another user"),
        (
            lambda home: (os.rename(home / "keys", home / "keys.real"), os.symlink(home / "keys.real", home / "keys")),
            "a symbolic link",
        ),
    ],
    ids=["folder of another user", "folder writable by others", "folder writable by its group", "home of another user",
         "folder is a link"],
)  # fmt: skip
def test_a_key_folder_someone_else_can_swap_is_refused(
    tmp_path: Path, spoil: Callable[[Path], object], says: str
) -> None:
    # Running as root, the server's account (any database superuser) could once replace keys/:
    # the next run would sign with their key, and keys/default.pub would be theirs.
    home = tmp_path / "home"
    default_signer(home)
    spoil(home)
    with pytest.raises(KeyFileError, match=rf"the key folder {home / 'keys'}:? (it )?(is )?{says}.*may not be yours"):
        default_signer(home)
    with pytest.raises(KeyFileError, match=says):
        existing_default_signer(home)  # what export and checkpoint check the run's signatures with


@pytest.mark.parametrize("mode", [0o775, 0o777])
def test_a_home_others_can_write_is_made_the_users_alone(tmp_path: Path, mode: int) -> None:
    # A home made with mkdir under umask 002 (where each user has a group of their own): its
    # keys/ would be refused for the folder holding it; the home is ELSPETH's, so it is closed.
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, mode)
    first = default_signer(home)
    assert _mode(home) == mode & ~0o022
    os.chmod(home, mode)
    again = existing_default_signer(home)
    assert again is not None and again.verifier == first.verifier and _mode(home) == mode & ~0o022


def test_a_home_made_under_umask_002_is_private_too(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        default_signer(tmp_path / "new" / "home")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new" / "home") == 0o755


def test_a_planted_key_folder_gets_no_key_of_ours(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True, mode=0o777)
    os.chmod(home / "keys", 0o777)
    with pytest.raises(KeyFileError, match="writable by its group and by others"):
        default_signer(home)
    assert list((home / "keys").iterdir()) == []


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda key: give_to_nobody(key), r"belongs to another user \(uid 65534\)"),
        (lambda key: os.chmod(key, 0o644), r"readable by others \(mode 644\)"),
        (lambda key: (os.rename(key, key.with_name("real.key")), os.symlink("real.key", key)), "a symbolic link"),
    ],
    ids=["another user's", "readable by others", "a link"],
)
def test_a_home_key_file_not_the_users_alone_is_refused(
    tmp_path: Path, spoil: Callable[[Path], object], says: str
) -> None:
    home = tmp_path / "home"
    default_signer(home)
    spoil(home / "keys" / "default.key")
    with pytest.raises(KeyFileError, match=rf"signing key {home / 'keys' / 'default.key'}:? (it )?(is )?{says}"):
        default_signer(home)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda k: None, None),
        (lambda k: os.chmod(k, 0o640), None),  # its group may read: a key kept for a group of signers
        (lambda k: (give_to_nobody(k), give_to_nobody(k.parent)), None),  # kept by an account of its own
        (lambda k: (os.rename(k, k.with_name("real.key")), os.symlink("real.key", k)), None),
        (lambda k: os.chmod(k, 0o604), r"it is open to others \(mode 604\); chmod o= "),
        (lambda k: os.chmod(k, 0o620), r"it is writable by its group \(mode 620; chmod g-w "),
        (lambda k: os.chmod(k.parent, 0o757), r"the folder holding it, .*, is writable by others \(mode 757"),
        (lambda k: os.chmod(k.parent, 0o1777), None),  # sticky: only a file's owner may rename it
        (lambda k: give_to_nobody(k.parent), r"the folder holding it, .*, belongs to another user \(uid 65534\)"),
        (lambda k: (give_to_nobody(k), os.chmod(k, 0o666)), r"it is open to others \(mode 666\)"),
        (
            lambda k: (os.rename(k, k.parent.parent / "real.key"), os.chmod(k.parent, 0o777),
                       os.symlink(k.parent.parent / "real.key", k)),
            r"it is a symbolic link and the folder holding it, .*, is writable by its group and by others",
        ),
        (
            lambda k: (os.rename(k, k.parent.parent / "real.key"), os.symlink(k.parent.parent / "real.key", k),
                       os.chmod(k.parent.parent / "real.key", 0o644)),
            r"it \(.*/real\.key\) is open to others \(mode 644\)",
        ),
        (lambda k: (os.rename(k, k.with_name("real.key")), os.symlink("real.key", k), give_to_nobody(k)),
         r"it is a symbolic link belonging to another user \(uid 65534\)"),
    ],
    ids=["600", "640", "another account's", "a link", "others may read", "its group may write",
         "folder others may write", "sticky folder", "folder of a third account", "another's 666",
         "a link in a folder others may write", "a link to a key others may read", "another user's link"],
)  # fmt: skip
def test_a_named_key_is_refused_when_anyone_else_could_read_or_swap_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spoil: Callable[[Path], object], says: str | None
) -> None:
    # What the operator names (ELSPETH_SIGNING_KEY, landscape.signing_key) need not be theirs:
    # it may be kept by an account of its own and reached through a link. A key anyone outside
    # its owner's group could read, or anyone but its owner swap, is refused by run and by every
    # command checking signatures with it.
    from engine.signing import signer, verifier

    (tmp_path / "keys").mkdir(mode=0o700)
    made = generate_key_files("ops", tmp_path / "keys")
    key = tmp_path / "keys" / "ops.key"
    spoil(key)
    monkeypatch.setenv("ELSPETH_SIGNING_KEY", str(key))
    if says is None:
        assert signer(tmp_path / "home").verifier == made.verifier
        assert verifier(tmp_path / "home") == made.verifier
        return
    for load in (signer, verifier):
        with pytest.raises(KeyFileError, match=rf"signing key {key}: {says}.*allowed: a key file no one but"):
            load(tmp_path / "home")
