"""File sinks: `csv`, `json` (`jsonl`); the `database` sink is in `database_sink.py`. `write`
buffers (or refuses a row it cannot write whole: RowError); `flush` makes the buffer durable
(fsync) and returns the position a resume rolls back to: the file's size. `digest` is the sha256
of the file's bytes up to there, which the log records with the position."""

from __future__ import annotations

import codecs
import csv
import errno
import fcntl
import hashlib
import io
import itertools
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from engine.plugins.options import Options
from engine.plugins.protocol import PluginConfigError, PluginError, Row, RowError, WriterClaim
from engine.plugins.reasons import fields_named
from engine.plugins.schema import Schema, parse_schema
from engine.plugins.sources import csv_error, no_field_size_limit

_NODE = "sink"


def _cell(value: Any) -> Any:
    """A value as a CSV cell or a text column: structures become JSON text, scalars stay."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


# The first characters that make a spreadsheet run a cell as a formula (OWASP, "CSV injection";
# ASVS 5.0 V1.2.10 adds NUL, which some spreadsheets skip before reading the rest as a formula):
# a row from untrusted input holding `=HYPERLINK(…)` or `+cmd|…` runs when the file is opened in one.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")


def _defused(cell: Any) -> Any:
    """A CSV cell with `'` before it when it is text a spreadsheet would run as a formula (the
    OWASP recommendation: the cell is then text). Numbers stay as they are: `-5` is a number to a
    spreadsheet, and a row holds no infinity or NaN (a recorded row cannot), whose text could be
    taken for a name; nor does JSON text (a structure's) start with one of these."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS) else cell


def _defused_name(name: str) -> str:
    """A header cell as `escape_formulas` writes it: as `_defused`, and a name starting with `'`
    gets one more, so that `_restored_name` reads every header back as the names it was written
    from (`=x` and `'=x` would otherwise both be `'=x`), as a file being continued needs."""
    return "'" + name if name.startswith((*_FORMULA_STARTS, "'")) else name


def _restored_name(cell: str) -> str:
    """The field name a header cell written by `_defused_name` stands for."""
    return cell[1:] if cell.startswith("'") else cell


def _hash_of(f: BinaryIO, size: int) -> Any:
    """sha256 of the first `size` bytes of an open file."""
    h = hashlib.sha256()
    f.seek(0)
    left = size
    while left > 0 and (chunk := f.read(min(left, 1 << 20))):
        h.update(chunk)
        left -= len(chunk)
    return h


# How much of a JSON array being appended to is read at a time: memory does not grow with the file.
_REOPEN_CHUNK = 1 << 20


# How much of a CSV file being continued is read to find its header: the header is held whole (it
# names the columns), but a file with no line end in its first gigabytes is not read into memory.
_HEADER_MOST = 256 << 20


# The encodings whose decoders take a byte-order mark themselves.
_MARKED = ("utf-8-sig", "utf-16", "utf-32")


class _HeaderTooLong(Exception):
    """`_lines_of` read `_HEADER_MOST` bytes and the header had not ended."""


def _lines_of(f: BinaryIO, size: int, encoding: str) -> Iterator[str]:
    """The text of the file's first `size` bytes a line at a time (to each LF, as iterating a
    StringIO splits it: csv's reader ends a record at the end of each piece it is given, so a
    piece may not end elsewhere), decoded with replacement characters. A chunk is read at a
    time, and only the line being read is held; asked for more than the first `_HEADER_MOST`
    bytes, raises _HeaderTooLong."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    pending: list[str] = []
    left, read = size, 0
    while left > 0:
        if read >= _HEADER_MOST:
            raise _HeaderTooLong
        chunk = f.read(min(left, 1 << 20, _HEADER_MOST - read))
        left, read = (left - len(chunk), read + len(chunk)) if chunk else (0, read)  # (a file cut meanwhile)
        *lines, tail = decoder.decode(chunk, final=left == 0).split("\n")
        for line in lines:
            yield "".join([*pending, line, "\n"])
            pending = []
        pending.append(tail)
    if last := "".join(pending):
        yield last


def _some(items: list[str], most: int = 10) -> str:
    """The first `most` of `items`, and how many more."""
    shown = ", ".join(items[:most])
    return f"{shown} and {len(items) - most} more" if len(items) > most else shown


def _reset_length(encoder: codecs.IncrementalEncoder) -> int:
    """Bytes `encoder` would still write to end its text in its initial state (ISO-2022's escape
    back to ASCII; none in a stateless encoding), without ending it."""
    state = encoder.getstate()
    length = len(encoder.encode("", final=True))
    encoder.setstate(state)
    return length


_UNICODE = {"utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"}
# Python's encodings whose encoder keeps a shift state across the text (a designated character set,
# a base64 run), as `codecs.lookup` names them: a resume continues their stream (`_encoder_after`).
_SHIFTED = frozenset({"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3",
                      "iso2022_jp_ext", "iso2022_kr", "hz", "utf-7"})  # fmt: skip


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def planted_file(path: Path, st: os.stat_result) -> str | None:
    """Why a sink must not write the existing regular file `st` (of `path`): someone other than
    this user may have put it there to read every row written into it (and rewrite them later).
    A hard link in a folder every user can write (/tmp, sticky or not); another user's file
    there, or in folders that user made inside such a folder (`/tmp/theirs/report.csv`). A file
    this user made, or none yet, is safe; so is another user's in a folder that user could not
    have made (a team's folder, a service's). None when it may be written."""
    me = os.geteuid()
    if st.st_uid == me and st.st_nlink <= 1:
        return None
    # The folders as the kernel reaches the file (links followed), and as written: climbing only
    # the path as written, `link/out.csv` (link -> /tmp/theirs) was checked against the link's
    # own folders and the rows went into the other user's file (a review); a link kept in a folder
    # every user can write is still refused, as before (whoever can write there can swap it).
    written = Path(os.path.abspath(path.parent))
    for start in dict.fromkeys((Path(os.path.realpath(path.parent)), written)):
        why = _planted_in(start, st, me)
        if why is not None:
            return why
    return None


def _planted_in(start: Path, st: os.stat_result, me: int) -> str | None:
    """`planted_file`, climbing from the folder `start`."""
    folder = start
    while True:
        try:
            fst = os.stat(folder)
        except OSError:
            return None  # (the sink says what is wrong with the folder when it writes)
        if fst.st_mode & stat.S_IWOTH:
            break
        # Climbed only through folders the file's owner made (they could have made them there).
        if st.st_uid == me or fst.st_uid != st.st_uid or folder == folder.parent:
            return None
        folder = folder.parent
    mode = stat.S_IMODE(fst.st_mode)
    if st.st_uid != me:
        inside = "" if folder == start else f" (in folders that user made inside {folder})"
        return (
            f"is a file of user id {st.st_uid}{inside}, in {folder}, a folder every user can write (mode {mode:o}): "
            "whoever put it there would read every row written into it; allowed: a file of this user's, or a path "
            "where there is none yet"
        )
    return (
        f"has {st.st_nlink} names (hard links) in {folder}, a folder every user can write (mode {mode:o}): whoever "
        "made the other name would read every row written into it; allowed: a file with one name, or a path where "
        "there is none yet"
    )


def _mode(o: Options) -> str:
    mode = o.str_("mode", "write")
    if mode not in ("write", "append"):
        raise PluginConfigError("mode", f"{mode!r} is not allowed; allowed: write, append")
    return mode


class _FileSink:
    """What the file sinks share: opening for a fresh run or a resume, encoding, fsync on flush.

    The position is the file's size after a flush. A resume truncates the file to it, so
    whatever a crash left after the last recorded flush is dropped before writing again.

    The file is opened when the first bytes are written, not at `open`: a sink that receives no
    rows writes no file (the prior system's behaviour; SETTINGS.md, Schemas). Until then `flush`
    returns the position writing would start at, and a file already there is left untouched."""

    kind: ClassVar[str] = "sink"

    def __init__(self, path: str, mode: str, encoding: str, schema: Schema) -> None:
        self.path = Path(path)
        self.mode = mode
        self.encoding = encoding
        self.schema = schema
        self._f: BinaryIO | None = None
        self._start: int | None = None  # where writing starts; None: not open (or released)
        self._size_at_open: int | None = None  # appending: the file's size when `open` chose the start
        # The most of the file this process may cut back from: what it held when a fresh run
        # chose where to append, then as far as this process has written it. None: anything after
        # the start (a run writing the file anew; a resume, whose cut the log checks). A retry
        # reopens the sink at its durable position; the file may have grown by another process's
        # rows since this one let go of it, and those are not this run's to cut.
        self._limit: int | None = None
        # Writing anew (mode `write`): the file as found when the sink was made, before the run's
        # start checks asked whether another run writes it (`_as_found`; () when there was none),
        # which this process's first write replaces (a resume's: from the durable position on,
        # which its digest checks). None: nothing to hold it to, or this process has cut it.
        # Taken at `open` instead, another run could write and complete the file while an
        # earlier sink of this run was slow to open, and be replaced unseen (a review).
        self._found: tuple[int, ...] | None = _as_found(self.path) if mode == "write" else None
        self._held: Callable[[], None] | None = None  # see `fence_as`
        self._device = False  # the file is a device (/dev/null): nothing it is given is kept
        self._named_durably = False  # the folder's entry for the file opened last is fsynced
        self._head = b""  # written just before the first row (a JSON array's '[')
        # A resume at durable position 0 of an appended file holding bytes: what the crash left
        # there, cut when the file is first written, or at `close` if this process writes none.
        self._tail_to_cut = False
        self._buffer: list[Row] = []
        self._encoder = codecs.getincrementalencoder(encoding)()
        self._hash = hashlib.sha256()  # of the file's bytes from 0 to where writing has got
        self.lines = True  # rows are lines: appending needs the file to end with a newline
        self._expected: str | None = None  # what the first bytes must hash to on a resume (`expect`)
        # Every character has bytes in a Unicode encoding (a recorded row holds no lone
        # surrogate): only other encodings need each row checked as it is written.
        self._may_not_encode = codecs.lookup(encoding).name not in _UNICODE

    def _refuse_unencodable(self, row: Row, text: str) -> None:
        """RowError for a row with a character this file's encoding has no bytes for, at `write`:
        found at `flush`, it would fail every row of the flush with it (and each resume again)."""
        if not self._may_not_encode:
            return
        try:
            text.encode(self.encoding)
        except UnicodeEncodeError:
            bad = [k for k, v in row.items() if not _encodes(f"{k}{_cell(v)}", self.encoding)]
            raise RowError(
                f"{fields_named(row, bad, self.schema.field_names or []) or 'the row'}: holds a character that "
                f"{self.encoding} cannot write"
            ) from None

    def _open_file(self, position: int | None, append_at: int | None = None) -> int:
        """Check that writing can start, and return the offset it starts at: `position` on a
        resume, in append mode `append_at` or else the end of the file, else 0. The file is
        opened by `_durable` (at once on a resume, to drop what a crash left after `position`)."""
        self.release()
        self._buffer = []
        self._head = b""
        if not self.path.parent.is_dir():
            raise PluginError(_NODE, f"cannot write {self.path}: the folder {self.path.parent} does not exist")
        if position and not self.path.exists():
            raise PluginError(
                _NODE,
                f"cannot continue {self.path}: it is missing (deleted or moved?), and the run had made {position} "
                "bytes durable in it; put it back (or, moved with them, resume with --force and its new path), "
                "or start a new run",
            )
        try:
            size = self.path.stat().st_size if self.path.exists() else 0
        except OSError as e:
            raise PluginError(_NODE, f"cannot open {self.path}: {e.strerror or e}") from e
        if position is not None and size < position:
            # Truncating would pad with NUL bytes: the file is not the one the run wrote.
            raise PluginError(
                _NODE,
                f"cannot continue {self.path}: it holds {size} bytes but the run had made {position} "
                "durable, so it was cut or replaced since; restore it, or start a new run",
            )
        if position is not None:
            start = position
        elif self.mode == "append":
            start = size if append_at is None else append_at
        else:
            start = 0
        self._hash = self._prefix_hash(start)
        if position is not None and self._expected is not None and self._hash.hexdigest() != self._expected:
            # Checked before anything is cut: the file is another now (another run wrote it, or
            # someone edited it), and continuing would destroy that and lose this run's rows.
            raise PluginError(
                _NODE,
                f"cannot continue {self.path}: its first {position} bytes are not those the run made durable "
                "(their sha256 differs from the one its log records), so it was changed or replaced since; "
                "restore it, or start a new run",
            )
        if position is None and start > 0:
            self._check_byte_order()
        if position is None and start > 0 and self.lines and not self._ends_a_line():
            # (the CSV source reads such a file; rows written after would not be). Not a file of
            # CRLF lines whose last line end was cut after its CR: its lines end in a newline.
            if self._ends_a_line("\r") and not self._newline_near_end():
                raise PluginError(
                    _NODE,
                    f"cannot append to {self.path}: its lines end with a carriage return alone (CR), which this sink "
                    "does not write, so the file would hold two kinds of line end; convert it to LF or CRLF line "
                    "ends, or write to another file",
                )
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: its last line does not end with a newline, so the first row "
                "written would run into it; end it with one, or write to another file",
            )
        self._start = start
        # Appending: what the file held when the start was chosen. Another process (another run's
        # sink, appending to the same file) may write and let go of it before this run's first
        # flush takes the lock; cutting back to `start` would then destroy its durable rows.
        self._size_at_open = size if position is None and self.mode == "append" else None
        if position is None:  # a run starting: nothing in the file is its own yet
            self._limit = self._size_at_open
        # (`_found` stands until this process first cuts the file, whatever the position: a run's
        # start records its sinks' positions, and a retry of its first flush reopened at that
        # position as a resume would, cutting what another process wrote meanwhile: a stalled
        # writer whose run was resumed and completed elsewhere destroyed that run's file.)
        self._encoder = self._encoder_after(start)
        if position:
            self._file()  # a resume drops at once what a crash left after the durable position
        # At position 0 the file is not opened yet (no rows, no file; and a JSON array's '[' is
        # written with the first row), so a crash's rows there are cut by the first write; a run
        # that writes none (they went elsewhere this time, its sink having failed before) cuts them
        # as it completes (`_finish`), or the file would hold rows no log accounts for. Appending,
        # position 0 says the file was empty when the run began: its bytes came since. (Writing
        # anew, position 0 is also that of a file the run has not replaced yet, whose bytes an
        # uninterrupted run that writes none there leaves: not told apart, not cut.)
        self._tail_to_cut = position == 0 and size > 0 and self.mode == "append"
        return start

    def _encoder_after(self, start: int) -> codecs.IncrementalEncoder:
        """An encoder in the state that writing the file's first `start` bytes left it in, so that
        what follows them is the bytes one uninterrupted stream would hold. A byte-order mark is
        on disk already; and ISO-2022-KR designates its Korean set once, at the stream's first
        Korean character, and keeps it: an encoder started afresh designated it again in the
        middle of a resumed file (a review). So in an encoding with such shifts (`_SHIFTED`), the
        text of those bytes goes through the encoder first; in any other, whose only state is a
        mark, a space does (reading a large file through its encoder would cost a resume seconds
        a gigabyte for nothing)."""
        encoder = codecs.getincrementalencoder(self.encoding)()
        if start == 0:
            return encoder
        if codecs.lookup(self.encoding).name not in _SHIFTED:
            encoder.encode(" ")
            return encoder
        decoder = codecs.getincrementaldecoder(self.encoding)()  # errors="strict"
        try:
            with self.path.open("rb") as f:
                left = start
                while left > 0 and (chunk := f.read(min(left, _REOPEN_CHUNK))):
                    left -= len(chunk)
                    encoder.encode(decoder.decode(chunk, final=left <= 0))
        except (UnicodeError, OSError):  # not text in this encoding (a file appended to): as a fresh stream
            encoder = codecs.getincrementalencoder(self.encoding)()
            encoder.encode(" ")
        return encoder

    def _byte_order_mark(self) -> tuple[bytes, bool]:
        """The mark this encoding starts a stream with (b"" for most), and whether the file starts
        with it."""
        mark = "".encode(self.encoding)
        if not mark:
            return mark, False
        try:
            with self.path.open("rb") as f:
                return mark, f.read(len(mark)) == mark
        except OSError as e:
            raise PluginError(_NODE, f"cannot read {self.path}: {e.strerror or e}") from e

    def _check_byte_order(self) -> None:
        """utf-16 and utf-32 write in this machine's byte order: appended to a file in the other
        order (its mark says which), the rows would be garbled while the log says they landed.
        A file that starts with UTF-8's mark is continued in UTF-8 only: in another encoding its
        header was read as other names (a review: `ï»¿id`, every row then refused)."""
        name = codecs.lookup(self.encoding).name
        if name not in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):
            try:
                with self.path.open("rb") as f:
                    utf8_marked = f.read(3) == codecs.BOM_UTF8
            except OSError as e:
                raise PluginError(_NODE, f"cannot read {self.path}: {e.strerror or e}") from e
            if utf8_marked:
                raise PluginError(
                    _NODE,
                    f"cannot append to {self.path}: it starts with UTF-8's byte-order mark, so it is UTF-8 text, "
                    f"which {self.encoding} would not continue; allowed: encoding utf-8, or another file",
                )
        if name not in ("utf-16", "utf-32"):
            return
        mark, marked = self._byte_order_mark()
        if not marked:
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: it does not start with the byte-order mark {self.encoding} writes "
                f"here ({mark.hex()}); name its byte order in `encoding` (e.g. {self.encoding}-be)",
            )

    def _prefix_hash(self, size: int) -> Any:
        """sha256 of the file's first `size` bytes (what a resume or an append continues)."""
        if size == 0:
            return hashlib.sha256()
        try:
            with self.path.open("rb") as f:
                return _hash_of(f, size)
        except OSError as e:
            raise PluginError(_NODE, f"cannot read {self.path}: {e.strerror or e}") from e

    def _newline_near_end(self, most: int = 1 << 16) -> bool:
        """Whether the file's last `most` bytes hold a newline (LF) in its encoding: looked for
        at the encoding's code units (UTF-16's two bytes, UTF-32's four), as `_ends_a_line` does."""
        newline = "x\n".encode(self.encoding)[len("x".encode(self.encoding)) :]
        unit = len("xx".encode(self.encoding)) - len("x".encode(self.encoding))
        with self.path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - most) // unit * unit
            f.seek(start)
            tail = f.read()
        at = tail.find(newline)
        while at != -1 and at % unit:
            at = tail.find(newline, at + 1)
        return at != -1

    def _ends_a_line(self, end: str = "\n") -> bool:
        # `end` in the file's encoding, without the byte-order mark that starts a stream.
        newline = f"x{end}".encode(self.encoding)[len("x".encode(self.encoding)) :]
        with self.path.open("rb") as f:
            f.seek(-min(len(newline), self.path.stat().st_size), os.SEEK_END)
            return f.read() == newline

    def expect(self, digest: str | None) -> None:
        """What the file's first bytes must hash to when it is next opened at a position: the
        sha256 the log recorded with that position (None: nothing recorded, nothing checked)."""
        self._expected = digest

    def fence_as(self, claim: WriterClaim) -> None:
        """Ask `claim.held` (does this process still hold the run?) each time the file is opened
        to be written, once its lock is taken and before anything is cut: another writer of the
        run (a resume, which took the run over from this process while it stalled) holds that lock
        whenever it writes the file, so an answer given under it stays true for as long as this
        process keeps the file."""
        self._held = claim.held

    def digest(self) -> str | None:
        """Hex sha256 of the file's bytes up to the position `flush` (or `open`) returned."""
        return None if self._start is None else self._hash.hexdigest()

    def _encode(self, text: str) -> bytes:
        return self._encoder.encode(text) if text else b""

    def _file(self) -> BinaryIO:
        """The file, opened at the start offset on first use (truncating anything after it)."""
        if self._f is not None:
            return self._f
        if self._start is None:
            raise PluginError(_NODE, f"{self.path}: written before open (or after release)")
        try:
            # Not through a link: whoever can write the file's folder could have swapped one in
            # since the load-time checks (engine/checks.py), and the sink would write wherever it
            # points, with this process's rights.
            # Unbuffered: what a failed write left is on disk, where `_wrote` sees it, never in a
            # buffer that closing the file would write later (after a full disk was freed, past
            # `_limit`, and the retry would take it for another process's).
            f = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666), "r+b", buffering=0)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PluginError(
                    _NODE, f"{self.path} is a symbolic link: not written through (name the file it points to)"
                ) from e
            raise PluginError(_NODE, f"cannot open {self.path}: {e.strerror or e}") from e
        try:
            # Locked before anything is cut: another process writing this file (another run's
            # sink) keeps it, and this run's flush fails rather than destroy that run's rows.
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            busy = isinstance(e, BlockingIOError)
            raise PluginError(
                _NODE,
                f"{self.path} is being written by another process (another run's sink, or a process of this run "
                "that stalled and still holds it: it must end first): not written"
                if busy
                else f"cannot lock {self.path}: {e.strerror or e}",
            ) from e
        if self._held is not None:
            try:
                self._held()
            except BaseException:
                f.close()
                raise
        try:
            # What was checked went through the path: the bytes kept must be those, read through
            # the handle that is about to cut (a link swapped meanwhile points elsewhere).
            if self._size_at_open is not None and os.fstat(f.fileno()).st_size != self._size_at_open:
                f.close()
                raise PluginError(
                    _NODE,
                    f"{self.path} was written by another process (another run's sink?) after this run opened it "
                    "to append: not written, so as not to cut what that process wrote; a resume of this run would "
                    "cut it, so move that file aside first (or end this run: `elspeth abandon`)",
                )
            held = os.fstat(f.fileno())
            self._device = not stat.S_ISREG(held.st_mode)
            planted = not self._device and planted_file(self.path, held)
            if planted:
                f.close()
                raise PluginError(_NODE, f"{self.path} {planted}: not written")
            found = self._found
            if not self._device and found is not None and (found != _identity(held) if found else held.st_size > 0):
                # Another run's sink wrote the file since this run started (the two started at once:
                # neither's start saw the other): replacing it would destroy that run's durable rows.
                f.close()
                raise PluginError(
                    _NODE,
                    f"{self.path} was written by another process (another run's sink?) after this run started: "
                    "not replaced, so as not to destroy what that process wrote; a resume of this run would replace "
                    "it too, so move that file aside first (or end this run: `elspeth abandon`)",
                )
            if not self._device and self._limit is not None and held.st_size > max(self._limit, self._start):
                f.close()
                raise PluginError(
                    _NODE,
                    f"{self.path} was written by another process (another run's sink?) since this run last wrote "
                    "it: not written, so as not to cut what that process wrote",
                )
            if self._start > 0 and _hash_of(f, self._start).hexdigest() != self._hash.hexdigest():
                f.close()
                raise PluginError(_NODE, f"{self.path} changed while it was being opened; not written")
            if not self._device:  # (a device such as /dev/full cannot be cut)
                f.truncate(self._start)
            self._found = None
            f.seek(self._start)
            _write_all(f, self._head)
            self._wrote(f)
        except OSError as e:
            f.close()
            raise PluginError(_NODE, f"cannot open {self.path}: {e.strerror or e}") from e
        if not self._device:  # (a device keeps nothing: its durable bytes stay none, at position 0)
            self._hash.update(self._head)
        self._f, self._head, self._named_durably = f, b"", False
        return f

    def _durable(self, data: bytes) -> int:
        if self._f is None and not data:
            if self._start is None:
                raise PluginError(_NODE, f"{self.path}: written before open (or after release)")
            return self._start  # nothing written yet: no file is created
        f = self._file()
        try:
            self._still_named(f)  # (before writing too: a file emptied in place would get a hole of NULs)
            if data:
                _write_all(f, data)
                if not self._device:  # the digest is of the bytes up to the position it is recorded with
                    self._hash.update(data)
            self._wrote(f)
            if not self._device:  # (a device such as /dev/null takes no fsync)
                os.fsync(f.fileno())
                if not self._named_durably:
                    # fsync(2): the file's own fsync does not make its entry in the folder durable;
                    # a file this open created could be gone after a power loss, its rows recorded.
                    _fsync_folder(self.path.parent)
                    self._named_durably = True
            self._still_named(f)
            return f.tell()
        except OSError as e:
            with suppress(OSError):  # a write cut short (a full disk) wrote some: they are this run's to cut
                self._wrote(f)
            raise PluginError(_NODE, f"cannot write {self.path}: {e.strerror or e}") from e

    def _still_named(self, f: BinaryIO) -> None:
        """The file this process holds is still the one at its path, or what it wrote has no name:
        deleted (or moved away) while the run wrote it, the rows went to a file nobody can open,
        and a flush recorded as durable would say they were written to the path. PluginError, so
        that the flush is not recorded (put the file back, and a retry or a resume goes on)."""
        held = os.fstat(f.fileno())
        try:
            named = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        if not self._device and held.st_size < f.tell():
            raise PluginError(
                _NODE,
                f"{self.path} was cut to {held.st_size} bytes while the run wrote it (emptied in place? a log rotation "
                f"that copies and truncates?), where the run had written {f.tell()}: not written, so as not to record "
                "bytes the file no longer holds; put the file back as it was (a retry or `elspeth resume` then goes on), "
                "or start a new run",
            )
        if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            raise PluginError(
                _NODE,
                f"{self.path} was {'deleted or moved away' if named is None else 'replaced by another file'} while "
                "the run wrote it: the rows of this flush went to a file that no longer has that name, so they "
                "are not recorded as written; put the file back where it was (a retry or `elspeth resume` then "
                "goes on), or start a new run",
            )

    def _wrote(self, f: BinaryIO) -> None:
        """Note how far this process has written the file, which it holds locked: it may cut back
        from there, and from no further (`_limit`)."""
        if not self._device:
            self._limit = max(self._limit or 0, os.fstat(f.fileno()).st_size)

    def write(self, token_id: str, row: Row) -> None:
        self._buffer.append(row)

    def location(self) -> str:
        return str(self.path)

    def release(self) -> None:
        self._start = None
        if self._f is not None:
            f, self._f = self._f, None
            with suppress(OSError):  # (unbuffered: closing writes nothing)
                f.close()

    def closing(self) -> bytes:
        """The bytes `close` writes after the last flush when a run that made rows durable here
        completes (`elspeth verify --sink-file` expects exactly these after the signed position)."""
        return b""

    def closing_after(self, position: int) -> bytes:
        """What `close` writes after this sink's file's first `position` bytes when the run made
        none of them (it continued what the file held, and sent the sink no row)."""
        return self.closing()

    def _closing_bytes(self, text: str) -> bytes:
        """`text` in the file's encoding, as written after bytes already there (no byte-order mark)."""
        encoder = codecs.getincrementalencoder(self.encoding)()
        encoder.encode(" ")  # as `_open_file` does: a mark, if the encoding has one, is on disk already
        return encoder.encode(text)

    def _finish(self, tail: str = "") -> None:
        if self._f is not None:  # else no row came: no file is created, none is changed
            self._durable(self._encode(tail))
        elif self._tail_to_cut:  # (but what a crash left after durable position 0: see `_open_file`)
            self._head = b""
            self._file()
            self._durable(b"")
        self.release()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """A file as a stat shows it: which file, how long, when last written."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _as_found(path: Path) -> tuple[int, ...] | None:
    """`_identity` of the file at `path` (through links: the sink refuses one when it opens);
    () when there is none, None when it cannot be looked at (opening it says why)."""
    try:
        return _identity(path.stat())
    except FileNotFoundError:
        return ()
    except OSError:
        return None


def _fsync_folder(folder: Path) -> None:
    """Make the folder's entries durable (a file created in it, by its name). As PostgreSQL does
    for its own folders: a folder this process may write but not read (mode 0300) cannot be opened
    to fsync, and some file systems take no fsync of a folder; that is no reason to fail a flush
    that was written before this change, and is not one now."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EBADF, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _write_all(f: BinaryIO, data: bytes) -> None:
    """Write all of `data` to an unbuffered file (a raw write may take only some of it)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:  # (a raw file in non-blocking mode; these are not)
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[n:]


class CsvSink(_FileSink):
    """Header: the schema's fields when it names them, else the first row's keys. A missing field
    is an empty cell. A row with a field outside the header is refused (RowError, routed by
    `on_write_failure`): a CSV file cannot grow a column, and dropping the value unrecorded
    would leave the audit trail claiming a row that the file does not hold.

    `escape_formulas`: a text cell (and a header name) that a spreadsheet would run as a formula
    is written with `'` before it (`_defused`). The log's digests are of the bytes written, so
    of the escaped cells; the rows it records are the rows as the pipeline held them."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "path", "headers", "delimiter", "encoding", "mode", "escape_formulas")
        super().__init__(o.path(), _mode(o), o.encoding(), parse_schema(o.raw("schema")))
        self.write_header = o.bool_("headers", True)
        self.escape_formulas = o.bool_("escape_formulas", False)
        self.delimiter = o.delimiter()
        try:  # (else every row was refused, for a character of its own it was said to hold: a review)
            self.delimiter.encode(self.encoding)
        except UnicodeEncodeError:
            raise PluginConfigError(
                "delimiter",
                f"{self.delimiter!r} cannot be written in {self.encoding}; allowed: a character it can write",
            ) from None
        self.fields: list[str] | None = self.schema.field_names
        self._known: frozenset[str] | None = None  # self.fields as a set, for the per-row check
        self._needs_header = True
        self._first_row: Callable[[], Row] | None = None  # see `first_row`
        self._rows_durable = False  # whether a flush of this run has made rows durable here
        self._marked: str | None = None  # the header's first name with a leading U+FEFF (`_header_on_disk`)

    def layout(self) -> dict[str, object]:
        """The options that decide how rows are spelled in the file: a resume continues the bytes
        the run made durable only in theirs. Without a header the columns are the schema's fields
        in their order (with one, the header on disk decides, and `open` checks it)."""
        layout: dict[str, object] = {"delimiter": self.delimiter, "headers": self.write_header}
        layout["encoding"] = self.encoding
        # (Continued with the other value, the file would hold cells escaped and cells not, and
        # its header would be read back as other names.)
        layout["escape_formulas"] = self.escape_formulas
        if not self.write_header:
            layout["schema.fields"] = self.schema.field_names
        return layout

    def open(self, run_id: str, position: int | None) -> None:
        named = self.schema.field_names
        if not self.write_header and named is None and not self._rows_durable:
            # A headerless file's columns are fixed by the first row the run makes durable in it:
            # none yet, so none are (rows a failed flush took, diverted since, fixed nothing); but
            # a resume continues in the columns of the run's first durable row, which the log
            # names, not the next row's, whose fields may come in another order. Read before the
            # file is touched: a resume that cannot read that row changes nothing.
            self.fields = None
            if position and self._first_row:
                self.fields = list(self._first_row())
                self._rows_durable = True
        start = self._open_file(position)
        self._needs_header = start == 0
        self._marked = None
        on_disk = self._header_on_disk(start) if start > 0 and self.write_header else None
        if on_disk and self._marked is not None and named is not None:
            kept = [self._marked, *on_disk[1:]]  # the schema says which reading of the U+FEFF is meant
            on_disk, self._marked = (kept if set(on_disk) != set(named) and set(kept) == set(named) else on_disk), None
        if on_disk == []:  # (a blank first line: no column, and every row refused for want of one)
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: its first line is blank, so no header names its columns; allowed: a "
                "file whose first line is its header, or an empty file",
            )
        if on_disk is not None and len(set(on_disk)) != len(on_disk):
            # A row has one value per field: it would fill both columns of a name given twice, and
            # the CSV source refuses to read such a header back (a hostile review). (Names the
            # source reads as one, `Amount,amount`, are the sink's own to write: two fields.)
            twice = len(on_disk) - len(set(on_disk))
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: its header names {twice} column(s) more than once, so a row's field "
                "would fill two columns; allowed: a file whose header names each column once, or an empty file",
            )
        if start == 0 or (on_disk is None and named is not None):
            self.fields = named
        elif on_disk is not None and (named is None or set(on_disk) == set(named)):
            self.fields = on_disk  # the file's order: a reader takes the columns by its header
        elif on_disk is not None and named is not None:
            # Named by the schema's names (the settings') and the header's positions: the file's
            # own names may be row data, and a wide header made a message of megabytes (a review).
            header, fields = set(on_disk), set(named)
            lacks = [f"'{n}'" for n in named if n not in header]
            others = [str(i) for i, n in enumerate(on_disk, 1) if n not in fields]
            differs = [f"it lacks {_some(lacks)}"] if lacks else []
            differs += [f"its column{'s' if len(others) > 1 else ''} {_some(others)} {'are' if len(others) > 1 else 'is'} "
                        "no field of the schema"] if others else []  # fmt: skip
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: its header ({len(on_disk)} columns) is not the schema's fields "
                f"({len(named)}): {'; '.join(differs)}; allowed: a file whose header names the schema's fields, in "
                "any order, or an empty file",
            )
        # else: a headerless file continued keeps the columns its first durable row fixed (above,
        # or in this process); with none yet, the next row it accepts fixes them
        self._known = None

    def first_row(self, load: Callable[[], Row]) -> None:
        """How to get the first row the run made durable in this sink (from the log), given before
        a resume opens it: a file without a header or a schema has that row's fields as its columns."""
        self._first_row = load

    def write(self, token_id: str, row: Row) -> None:
        # The columns are fixed by the first row accepted, not by one refused: the log names the
        # first row a flush made durable (`RunFold.sink_first_rows`), and a resume continues a
        # headerless file in that row's columns.
        fields = self.fields if self.fields is not None else list(row)
        if not fields:
            # (Only a row of no field, with no columns fixed yet.) Its line and its header would be
            # blank: readers skip such lines, and a blank first line names no column, so the file
            # could not be continued (`open`). Refused, as a database sink refuses it; it fixes
            # nothing, the next row with fields does.
            raise RowError(f"the row has no field: {self.path} would hold a blank line for it, which readers skip")
        known = self._known if self._known is not None else frozenset(fields)
        if self._known is None and self._needs_header and self.write_header:  # the header comes with this row
            self._refuse_unencodable(row, self.delimiter.join(self._header(fields)))
        extra = [k for k in row if k not in known]
        if self._marked is not None and fields and fields[0] not in row and self._marked in row:
            # The header's first name is this one, its U+FEFF its own (`_header_on_disk`).
            fields = [self._marked, *fields[1:]]
            known = frozenset(fields)
            extra = [k for k in row if k not in known]
        if self._marked is not None and fields and fields[0] in row:
            self._marked = None  # the rows read the header as it was taken: it stays so
        if extra:
            # Only names the settings spell are recorded: columns fixed by the first row or by the
            # file's header are the input's, row data (docs/erasure.md); they are counted instead.
            named = self.schema.field_names or []
            columns = ", ".join(named) if named else f"{len(fields)} fixed by its first row or header"
            raise RowError(
                f"{fields_named(row, extra, named)}: not among the columns of {self.path} ({columns}); "
                "a CSV file's columns are fixed by its first row or options.schema"
            )
        if self._may_not_encode:
            line = io.StringIO()
            csv.writer(line, delimiter=self.delimiter).writerow(self._cells(row, fields))
            self._refuse_unencodable(row, line.getvalue())
        self.fields, self._known = fields, known
        self._buffer.append(row)

    def _cells(self, row: Row, fields: list[str]) -> list[Any]:
        """A row's cells in the order of `fields`, as they are written."""
        cells = [_cell(row.get(k, "")) for k in fields]
        return [_defused(c) for c in cells] if self.escape_formulas else cells

    def _header(self, fields: list[str]) -> list[str]:
        """The header line's cells: field names come from the input too (a JSON source's keys)."""
        return [_defused_name(k) for k in fields] if self.escape_formulas else fields

    def _header_on_disk(self, size: int) -> list[str] | None:
        """The field names in the header of a file being continued, so later rows keep its
        column order (with `escape_formulas`, read as it wrote them). Read whole, however long
        (it was read only to its first MiB, and a longer header was cut short: a review), up to
        `_HEADER_MOST` bytes."""
        no_field_size_limit()  # (a name may be longer than csv's own limit of 131,072 characters)
        try:
            with self.path.open("rb") as f:
                lines = _lines_of(f, size, self.encoding)
                first = next(lines, None)
                if first is None:
                    return None
                # A byte-order mark another tool began the file with (the utf-8-sig, utf-16 and
                # utf-32 decoders take theirs themselves). One only: a U+FEFF after it, or after the
                # mark those decoders took, is the first name's own (a CSV read as utf-8 from a file
                # with UTF-8's mark names its first column '\ufeffid'), which stripping every U+FEFF
                # lost, and a resume then refused every row (a review). In utf-8 such a name and a
                # mark read alike: `_marked` keeps the other reading, for the schema or the rows to
                # choose (`open`, `write`).
                mark = codecs.lookup(self.encoding).name not in _MARKED and first[:1] == "\ufeff"
                pieces = itertools.chain([first[1:] if mark else first], lines)
                header = next(csv.reader(pieces, delimiter=self.delimiter), None)
        except csv.Error as e:  # (a bare carriage return ending it, in a file whose lines end in LF)
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: its header cannot be read as CSV: {csv_error(e)}; allowed: a file "
                "whose first line is its header, or an empty file",
            ) from None
        except _HeaderTooLong:
            raise PluginError(
                _NODE,
                f"cannot append to {self.path}: its header (first line) is longer than {_HEADER_MOST:,} bytes, "
                "and is not read further; allowed: a header of at most that many bytes, or an empty file",
            ) from None
        self._marked = "\ufeff" + header[0] if mark and header else None
        return [_restored_name(c) for c in header] if self.escape_formulas and header is not None else header

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        out = io.StringIO()
        if rows:
            if self.fields is None:
                self.fields = list(rows[0])
            fields = self.fields
            known = frozenset(fields)
            writer = csv.writer(out, delimiter=self.delimiter)
            if self._needs_header and self.write_header:
                writer.writerow(self._header(fields))
            self._needs_header = False
            for row in rows:
                if not known.issuperset(row):  # `write` refused such rows already: never drop a field
                    raise PluginError(_NODE, f"{self.path}: a row has fields outside its columns {fields}")
                writer.writerow(self._cells(row, fields))
        position = self._durable(self._encode(out.getvalue()))
        self._rows_durable = self._rows_durable or bool(rows)
        return position

    def close(self) -> None:
        self._finish()  # no rows at all: no file, not even a header (the prior system's behaviour)


class JsonSink(_FileSink):
    """`jsonl`: one object per line. `json`: an array written as it goes — '[' at open, rows
    separated by ',\\n' — whose closing ']' only `close` writes (never part of a position)."""

    def __init__(self, options: Mapping[str, Any], default_format: str | None = None) -> None:
        o = Options(options, "path", "format", "indent", "encoding", "mode")
        super().__init__(o.path(), _mode(o), o.encoding(), parse_schema(o.raw("schema")))
        fmt = o.str_("format", default_format or ("jsonl" if self.path.suffix.lower() == ".jsonl" else "json"))
        if fmt not in ("json", "jsonl"):
            raise PluginConfigError("format", f"{fmt!r} is not allowed; allowed: json, jsonl")
        self.format = fmt
        self.lines = fmt == "jsonl"
        indent = None if o.raw("indent") is None else o.int_("indent")
        if indent is not None and indent < 0:
            raise PluginConfigError("indent", f"expected a number of spaces, found {indent!r}")
        if indent is not None and fmt == "jsonl":
            raise PluginConfigError("indent", "only for format json (a JSON-lines row is one line)")
        self.indent: int | None = indent
        # One encoder for every row (json.dumps with options builds one per call).
        self._json = json.JSONEncoder(ensure_ascii=False, indent=indent, default=str, allow_nan=False)
        self._rows_written = False
        self._texts: list[str] = []  # the rows written since the last flush, as JSON

    def layout(self) -> dict[str, object]:
        """The options that decide how rows are spelled in the file (see `CsvSink.layout`)."""
        return {"format": self.format, "indent": self.indent, "encoding": self.encoding}

    def open(self, run_id: str, position: int | None) -> None:
        self._texts = []
        append_at = None
        reopened = None
        if self.format == "json" and position is None and self.mode == "append":
            reopened = self._reopen_array()
            append_at = None if reopened is None else reopened[0]
        start = self._open_file(position, append_at)
        if self.format == "json":
            if start == 0:
                self._head = self._encode("[")  # written with the first row: no rows, no file
                self._rows_written = False
            else:
                self._rows_written = reopened[1] if reopened is not None else self._array_has_rows(start)

    def _reopen_array(self) -> tuple[int, bool] | None:
        """Append to an existing array: continue where its closing ']' was. Returns that offset
        and whether the array holds rows (the next one then needs its comma).

        The file must decode strictly (the offset is counted back in bytes, which replacement
        would shift), its first non-blank character must be '[' and its last ']'; writing
        continues just after the non-blank character before that ']' (the array holds rows
        unless that is its '['). Only the ends are checked: the whole file is not parsed as JSON.
        See `_scan` for how it is read."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        first, before_last, last, before_last_end = self._scan(None)
        if last != "]":
            raise PluginError(_NODE, f"cannot append to {self.path}: it does not end with a JSON array's ']'")
        if first != "[":
            raise PluginError(_NODE, f"cannot append to {self.path}: it does not start with a JSON array's '['")
        return before_last_end, before_last != "["

    def _array_has_rows(self, size: int) -> bool:
        """Whether the array's first `size` bytes (a durable position: the array is open) hold a
        row: their last non-blank character is not its '['. However many blanks come first."""
        return self._scan(size)[2] != "["

    def _scan(self, limit: int | None) -> tuple[str, str, str, int]:
        """The file's first `limit` bytes (all when None) read as text: its first non-blank
        character (after a byte-order mark), the non-blank one before its last, its last, and the
        bytes up to the end of the one before its last (with none: the empty text's, a mark).

        Read once, forwards, a chunk at a time: the file may be far larger than memory. Not
        backwards from its end, though that would read less: every byte has to be decoded anyway,
        and in Shift_JIS, GBK or Big5 the byte of ']' can also be the second byte of another
        character, which only a reading from the start tells apart. Bytes are counted by
        re-encoding the text as it goes, as `str.encode` of everything before the offset would:
        a byte-order mark included, and in ISO-2022 the escape back to ASCII (the rows written
        next start from ASCII)."""
        self._check_byte_order()
        decoder = codecs.getincrementaldecoder(self.encoding)()  # errors="strict"
        encoder = codecs.getincrementalencoder(self.encoding)()
        mark, marked = self._byte_order_mark()
        if mark and not marked:  # (utf-8-sig reads a file without one): none to count
            encoder.encode("")
        counted = 0  # bytes of the text decoded so far
        first, decoded = "", False
        # The last non-blank character so far and the one before it, and the bytes up to the end
        # of each (with none: the empty text's, a byte-order mark).
        last = before_last = ""
        last_end = before_last_end = len(mark) if marked else 0
        left = limit
        try:
            with self.path.open("rb") as f:
                while True:
                    chunk = f.read(_REOPEN_CHUNK if left is None else min(_REOPEN_CHUNK, left))
                    if left is not None:
                        left -= len(chunk)
                    text = decoder.decode(chunk, final=not chunk)
                    if not first:
                        head = (text if decoded else text.lstrip("\ufeff")).lstrip()
                        first, decoded = head[:1], decoded or bool(text)
                    blank_from = len(text.rstrip())
                    if blank_from == 0:  # nothing but blanks (or nothing decoded yet)
                        counted += len(encoder.encode(text))
                    else:
                        before = len(text[: blank_from - 1].rstrip())  # `str.rstrip`'s blanks, as before
                        if before > 0:
                            counted += len(encoder.encode(text[:before]))
                            before_last_end, before_last = counted + _reset_length(encoder), text[before - 1]
                        else:
                            before_last_end, before_last = last_end, last
                        counted += len(encoder.encode(text[before:blank_from]))
                        last_end, last = counted + _reset_length(encoder), text[blank_from - 1]
                        counted += len(encoder.encode(text[blank_from:]))
                    if not chunk:
                        break
        except UnicodeError as e:  # a decoding error; read in parts, utf-16 without a byte-order mark raises its base
            why = e.reason if isinstance(e, UnicodeDecodeError) else str(e)
            raise PluginError(_NODE, f"cannot append to {self.path}: it is not valid {self.encoding} ({why})") from e
        except OSError as e:
            raise PluginError(_NODE, f"cannot read {self.path}: {e.strerror or e}") from e
        return first, before_last, last, before_last_end

    def write(self, token_id: str, row: Row) -> None:
        try:
            text = self._json.encode(row)
        except ValueError:  # NaN or an infinity: no JSON spells it (Python's `Infinity` is no JSON)
            raise RowError(
                "a value of the row cannot be written as JSON: a float is not finite (NaN or infinite)"
            ) from None
        self._refuse_unencodable(row, text)
        self._texts.append(text)

    def flush(self) -> int:
        texts, self._texts = self._texts, []
        parts: list[str] = []
        for text in texts:
            if self.format == "jsonl":
                parts.append(text + "\n")
            else:
                parts.append(("," if self._rows_written else "") + "\n" + text)
                self._rows_written = True
        return self._durable(self._encode("".join(parts)))

    def close(self) -> None:
        self._finish(self._end(self._rows_written))

    def _end(self, rows_written: bool) -> str:
        """What `close` writes after the last flush: a JSON array's closing bracket (on a line of
        its own after a row); nothing for JSON lines."""
        if self.format == "jsonl":
            return ""
        return "\n]\n" if rows_written else "]\n"

    def closing(self) -> bytes:
        # (Every sink the log records a flush of made rows durable: the array holds rows.)
        return self._closing_bytes(self._end(True))

    def closing_after(self, position: int) -> bytes:
        # The bracket follows what the array it continued holds: "]" after a bare "[" (a review).
        return self._closing_bytes(self._end(self._array_has_rows(position))) if self.format == "json" else b""


# The built-in file sinks by plugin name (the registry's entries for them). Here, not only in the
# registry, so that `elspeth verify`, which must load without a database driver, can build one.
FILE_SINKS: dict[str, Callable[[Mapping[str, Any]], _FileSink]] = {
    "csv": CsvSink,
    "json": JsonSink,
    "jsonl": lambda o: JsonSink(o, default_format="jsonl"),
}


def closing_of(plugin: str, options: object, continued: tuple[Path, int] | None = None) -> bytes | None:
    """What the built-in file sink `plugin`, built from `options` as a run recorded them, writes
    when the run completes, after its last flush (`_FileSink.closing`). None: not a built-in file
    sink, or options that do not build one here (recorded redacted: a secret's fingerprint).
    `continued`: (file, position) of a sink that made no bytes of its own durable, continuing the
    file's first `position` bytes (`_FileSink.closing_after`, which reads them: a file that is not
    the sink's fails the digest of those bytes anyway); None when they cannot be read as its."""
    make = FILE_SINKS.get(plugin)
    if make is None or not isinstance(options, Mapping):
        return None
    try:
        if continued is None:
            return make(options).closing()
        path, position = continued
        return make({**options, "path": str(path)}).closing_after(position)
    except (PluginConfigError, PluginError):
        return None
