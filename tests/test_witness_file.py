"""The witness file is evidence kept outside the database: a witness folder or file that another
account owns or may write (running as root: the server's account, i.e. any database superuser)
could have been swapped for one holding only older checkpoints, hiding a log cut short. Such a
folder or file is refused, for writing and for reading, never followed."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from landscape.merkle import EMPTY_ROOT
from landscape.notary import Notary, WitnessError, read_run_witness, read_witness, witness_path
from landscape.note import Signer
from tests.conftest import give_to_nobody

RUN = "run-1"


def _notary(folder: Path) -> Notary:
    return Notary(Signer.generate("ops"), "store", folder)


def _witness(notary: Notary, size: int) -> None:
    notary.witness(RUN, size, notary.sign(RUN, size, EMPTY_ROOT), datetime.now(UTC))


def _swapped_for_a_link(folder: Path) -> None:
    os.rename(folder, folder.with_name("witness.real"))
    os.symlink(folder.with_name("witness.real"), folder)


FOLDER_SPOILS = [
    (give_to_nobody, r"belongs to another user \(uid 65534\)"),
    (lambda folder: os.chmod(folder, 0o777), r"writable by its group and by others \(mode 777; chmod go-w "),
    (
        lambda folder: os.chmod(folder.parent, 0o777),
        r"the folder holding it, .* is writable by its group and by others \(mode 777; chmod go-w ",
    ),
    (_swapped_for_a_link, "a symbolic link"),
]
FOLDER_IDS = ["another user's", "writable by others", "in a folder others can write", "a link"]


def test_checkpoints_written_are_read_back(tmp_path: Path) -> None:
    notary = _notary(tmp_path / "witness")
    _witness(notary, 1)
    _witness(notary, 3)
    assert [w.size for w in read_run_witness(tmp_path / "witness", RUN)] == [1, 3]
    assert read_run_witness(tmp_path / "none yet", RUN) == []


@pytest.mark.parametrize(("spoil", "says"), FOLDER_SPOILS, ids=FOLDER_IDS)
def test_a_witness_folder_someone_else_can_swap_is_refused(
    tmp_path: Path, spoil: Callable[[Path], object], says: str
) -> None:
    folder = tmp_path / "witness"
    notary = _notary(folder)
    _witness(notary, 1)
    spoil(folder)
    with pytest.raises(WitnessError, match=rf"the witness folder {folder}: (it )?(is )?{says}"):
        _witness(notary, 2)
    with pytest.raises(WitnessError, match=rf"the witness folder {folder}: (it )?(is )?{says}"):
        read_run_witness(folder, RUN)


def test_an_emptied_witness_folder_of_someone_else_is_refused_not_read_as_no_checkpoints(tmp_path: Path) -> None:
    # The swap that hides a cut tail: the run's file gone, in a folder the swapper made.
    folder = tmp_path / "witness"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    with pytest.raises(WitnessError, match="writable by its group and by others"):
        read_run_witness(folder, RUN)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (give_to_nobody, r"belongs to another user \(uid 65534\)"),
        (lambda path: os.chmod(path, 0o666), r"writable by its group and by others \(mode 666\)"),
        (lambda path: (os.rename(path, path.with_name("real")), os.symlink("real", path)), "a symbolic link"),
    ],
    ids=["another user's", "writable by others", "a link"],
)
def test_a_witness_file_not_the_users_alone_is_refused(
    tmp_path: Path, spoil: Callable[[Path], object], says: str
) -> None:
    notary = _notary(tmp_path / "witness")
    _witness(notary, 1)
    path = witness_path(tmp_path / "witness", RUN)
    spoil(path)
    with pytest.raises(WitnessError, match=rf"witness file {path}: (it )?(is )?{says}"):
        read_witness(path, RUN)
    with pytest.raises(WitnessError, match=rf"witness file {path}: (it )?(is )?{says}"):
        _witness(notary, 2)


def test_a_full_disk_leaves_the_witness_file_as_it_was_not_cut_mid_line(tmp_path: Path) -> None:
    """A full disk lets a write through in part; a line cut short made the whole file unreadable
    as evidence, and the run could not be resumed, replayed or exported any more. A file-size
    limit stands in for the full disk: the line is appended whole or not at all."""
    import resource

    notary = _notary(tmp_path / "witness")
    _witness(notary, 1)
    path = witness_path(tmp_path / "witness", RUN)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 40, hard))  # room for part of a line
    try:
        with pytest.raises(WitnessError, match=r"cannot write the witness file .*written in part"):
            _witness(notary, 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before
    _witness(notary, 3)  # the disk has room again
    assert [w.size for w in read_witness(path, RUN)] == [1, 3]


def test_a_last_line_cut_short_by_a_crash_is_not_read_and_any_other_bad_line_is_refused(tmp_path: Path) -> None:
    notary = _notary(tmp_path / "witness")
    _witness(notary, 1)
    _witness(notary, 2)
    path = witness_path(tmp_path / "witness", RUN)
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:30])  # the machine went down mid-write
    assert [w.size for w in read_witness(path, RUN)] == [1, 2]
    path.write_bytes(whole + whole.splitlines(keepends=True)[0].rstrip(b"\n"))  # whole but its newline
    assert [w.size for w in read_witness(path, RUN)] == [1, 2, 1]
    lines = whole.splitlines(keepends=True)
    path.write_bytes(lines[0][:30] + b"\n" + lines[1])  # cut short, and more after it: not a crash's
    with pytest.raises(WitnessError, match=r"line 1: not a checkpoint record"):
        read_witness(path, RUN)
    nested = b"[" * 100_000 + b"]" * 100_000  # deeper than a decoder goes: named, not a RecursionError
    path.write_bytes(nested + b"\n" + whole)
    with pytest.raises(WitnessError, match=r"line 1: not a checkpoint record \(nested too deeply\)"):
        read_witness(path, RUN)
    path.write_bytes(whole + nested)  # the same, as a last line without its newline: not a record
    assert [w.size for w in read_witness(path, RUN)] == [1, 2]


@pytest.mark.parametrize("cut", [30, None], ids=["mid-line", "only its newline"])
def test_the_next_checkpoint_after_a_torn_last_line_is_a_line_of_its_own(tmp_path: Path, cut: int | None) -> None:
    """A resumed run appends after a last line a crash cut short: the fragment is cut off first
    (appended to, it would be the middle of a line that is no record, and every reader would
    refuse the file); a record cut only of its newline is ended and kept."""
    notary = _notary(tmp_path / "witness")
    _witness(notary, 1)
    path = witness_path(tmp_path / "witness", RUN)
    whole = path.read_bytes()
    path.write_bytes(whole + whole.rstrip(b"\n")[:cut])  # the machine went down writing size 2
    _witness(notary, 3)
    expected = [1, 3] if cut == 30 else [1, 1, 3]
    assert [w.size for w in read_witness(path, RUN)] == expected
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == len(expected)


def test_another_runs_witness_file_in_its_place_is_refused_not_read_as_none(tmp_path: Path) -> None:
    """It read as holding no checkpoints, as a deleted file does: a swap went without a word."""
    notary = _notary(tmp_path / "witness")
    _witness(notary, 1)
    path = witness_path(tmp_path / "witness", RUN)
    other = witness_path(tmp_path / "witness", "run-2")
    other.write_bytes(path.read_bytes())
    os.chmod(other, 0o600)
    with pytest.raises(
        WitnessError, match=rf"{other}, line 1: a checkpoint of run {RUN}, not of run run-2: this is not"
    ):
        read_witness(other, "run-2")
    assert [w.size for w in read_witness(path, RUN)] == [1]


def test_a_fifo_in_the_witness_files_place_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Opened without O_NONBLOCK, a FIFO planted where the witness file goes was waited on for a
    writer that never came."""
    folder = tmp_path / "witness"
    folder.mkdir(mode=0o700)
    os.mkfifo(witness_path(folder, RUN))
    with pytest.raises(WitnessError, match="it is not a regular file"):
        read_witness(witness_path(folder, RUN), RUN)
