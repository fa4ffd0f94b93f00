"""Signing a run's checkpoints, and the witness file that keeps a copy outside the database.

At every durability point the writer's sending side (`landscape.commits.Chain`, in `elspeth run`
the writer's child process, with its copy of the notary) signs a checkpoint of the run's Merkle
tree (origin `elspeth/<store id>/<run id>`, tree size, root). The signed note is stored in the
`checkpoints` table in the same transaction as the events it covers and, once that commit is
durable, appended to the run's witness file — a copy a database superuser cannot reach. A log
shorter than any signed checkpoint is then a detected truncation, and an auditor holding an older
checkpoint can demand proof that the log only grew since (see docs/verification.md).

Witness files are JSON lines, one checkpoint each: `{"run_id", "size", "recorded_at", "note"}`,
in `<witness dir>/<run id>.checkpoints` (fsynced after each line). No driver here: `elspeth
verify` reads witness files too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from landscape.checkpoint import Checkpoint, parse_checkpoint, run_origin
from landscape.errors import LandscapeError
from landscape.note import NoteError, Signer, Verifier, parse_note
from landscape.owner import mistrust, mistrust_folder


class WitnessError(LandscapeError):
    """A witness file that cannot be written or read."""


@dataclass(frozen=True, slots=True)
class Witnessed:
    """One signed checkpoint, from the store or a witness file."""

    size: int
    root: bytes
    note: str
    recorded_at: str  # ISO 8601
    where: str  # "store" or the witness file's path


@dataclass(frozen=True)
class Notary:
    signer: Signer
    store_id: str
    witness_dir: Path

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    def sign(self, run_id: str, size: int, root: bytes) -> str:
        return Checkpoint(run_origin(self.store_id, run_id), size, root).sign(self.signer)

    def witness(self, run_id: str, size: int, note: str, recorded_at: datetime) -> None:
        """Append a committed checkpoint to the run's witness file, durably."""
        path = witness_path(self.witness_dir, run_id)
        line = json.dumps({"run_id": run_id, "size": size, "recorded_at": recorded_at.isoformat(), "note": note})
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise WitnessError(f"cannot write the witness file {path}: {e.strerror}") from e
        _check_folder(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise WitnessError(f"cannot write the witness file {path}: {_why(path, e)}") from e
        try:
            _check_file(path, fd)
            _append_whole(fd, _end_torn_tail(fd) + (line + "\n").encode())
            os.fsync(fd)
        except OSError as e:
            raise WitnessError(f"cannot write the witness file {path}: {e.strerror}") from e
        finally:
            os.close(fd)


def _end_torn_tail(fd: int) -> bytes:
    """A last line cut short by a machine that went down mid-write is cut off the file (readers
    skip it: it is no record, and appended to, it would be the middle of a line that is none).
    One cut only of its newline is a record: returned is the newline that ends it. A file that
    ends with a newline is left as it is, and so is a last line longer than any record."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":  # (every time but after a crash)
        return b""
    tail = os.pread(fd, min(size, _TAIL), size - min(size, _TAIL))
    start = tail.rfind(b"\n") + 1
    if (start == 0 and size > _TAIL) or _is_record(tail[start:].decode(errors="replace")):
        return b"\n"
    os.ftruncate(fd, size - (len(tail) - start))
    return b""


_TAIL = 1 << 16  # more than any record's line (a note with a few signatures: about a kilobyte)


def _append_whole(fd: int, data: bytes) -> None:
    """Append `data` whole, or leave the file as it was: a full disk lets a write through in
    part, and a line cut short would make the whole file unreadable as evidence (every reader
    refuses a line that is not a checkpoint record), so the run could no longer be resumed,
    replayed or exported. The checkpoint is in the store already: missing here, it is not lost."""
    size = os.fstat(fd).st_size
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the line was written in part)")
    except OSError:
        with contextlib.suppress(OSError):  # (the error said is the write's)
            os.ftruncate(fd, size)
        raise


def witness_path(witness_dir: Path, run_id: str) -> Path:
    return witness_dir / f"{run_id}.checkpoints"


def read_run_witness(witness_dir: Path, run_id: str) -> list[Witnessed]:
    """The checkpoints of `run_id` in the witness folder its runs write to. The folder is checked
    first: one that someone else made or can write could have had the file taken out (a missing
    file holds no checkpoints) or replaced by one holding only older ones."""
    if os.path.lexists(witness_dir):
        _check_folder(witness_dir)
    return read_witness(witness_path(witness_dir, run_id), run_id)


def read_witness(path: Path, run_id: str) -> list[Witnessed]:
    """The checkpoints a witness file holds for `run_id` (a missing file holds none). A line that
    is not a checkpoint record is an error naming the line: a witness file is evidence, and so is
    one that is not the effective user's alone (see `landscape.owner`)."""
    try:  # (O_NONBLOCK: a FIFO put there is refused by `_check_file`, not waited on)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise WitnessError(f"cannot read the witness file {path}: {_why(path, e)}") from e
    try:
        _check_file(path, fd)
        with os.fdopen(os.dup(fd), "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError) as e:
        raise WitnessError(f"cannot read the witness file {path}: {getattr(e, 'strerror', None) or e}") from e
    finally:
        os.close(fd)
    out = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if number == len(lines) and not text.endswith("\n") and not _is_record(line):
            # The last line cut short by a machine that went down during its write (the
            # writer appends a line whole or not at all while it runs): not evidence of anything.
            break
        try:
            record = json.loads(line)
            if record["run_id"] != run_id:
                # A run's witness file holds only its own checkpoints: one of another run's is a
                # file swapped in (skipped, it read as none: as if deleted, without a word).
                raise WitnessError(
                    f"{path}, line {number}: a checkpoint of run {record['run_id']}, not of run {run_id}: this is not "
                    "the run's witness file (replaced?); allowed: the file the run wrote"
                )
            note, size, at = record["note"], record["size"], record["recorded_at"]
            if not (isinstance(note, str) and isinstance(size, int) and isinstance(at, str)):
                raise TypeError("wrong field types")
            root = parse_checkpoint(parse_note(note).text).root
        except (ValueError, KeyError, TypeError, NoteError) as e:
            raise WitnessError(f"{path}, line {number}: not a checkpoint record ({e})") from e
        except RecursionError:
            raise WitnessError(f"{path}, line {number}: not a checkpoint record (nested too deeply)") from None
        out.append(Witnessed(size, root, note, at, str(path)))
    return out


def _is_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _why(path: Path, e: OSError) -> str:
    return "it is a symbolic link" if e.errno == errno.ELOOP else str(e.strerror)


def _check_folder(folder: Path) -> None:
    why = mistrust_folder(folder)
    if why:
        raise WitnessError(
            f"the witness folder {folder}: {why}; allowed: a folder of yours that nobody else can write, in a folder "
            "nobody else can write (if you did not make it, the witness files in it may not be yours)"
        )


def _check_file(path: Path, fd: int) -> None:
    info = os.fstat(fd)
    why = mistrust(info) if stat.S_ISREG(info.st_mode) else "it is not a regular file"
    if why:
        raise WitnessError(f"the witness file {path}: {why}; allowed: a file of yours that nobody else can write")
