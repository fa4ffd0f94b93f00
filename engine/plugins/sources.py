"""Sources: `csv` and `json` (`jsonl`). They stream their input, validate each record against the
schema, and turn a record that does not fit into a quarantined item with its raw data and reason.
Problems that are not about one record (a missing file, a JSON document that is not an array)
raise PluginError naming the file before any record is yielded."""

from __future__ import annotations

import base64
import codecs
import csv
import hashlib
import io
import json
import math
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple

from engine.plugins.options import Options, text_item
from engine.plugins.protocol import PluginConfigError, PluginError, Row, SourceItem
from engine.plugins.schema import RoundedFloat, Schema, SchemaViolation, normalise_headers, parse_schema, plain_floats

_NODE = "source"


#: How much of an input is checked against its fingerprint at a time (see `_AsFingerprinted`).
_BLOCK = 1 << 20


class _Taken(NamedTuple):
    """What `fingerprint` read: the size, its sha256 (hex), and the sha256 of each `_BLOCK` bytes."""

    size: int
    digest: str
    blocks: list[bytes]


class _Input:
    """A source's input file, read as it was fingerprinted.

    `fingerprint` hashes the file, and each block of it; `open` then gives the run those bytes and
    no others (`_AsFingerprinted`): every block is checked against its hash before any of its
    bytes is handed on, so no row is ever read from other bytes than those of the recorded
    fingerprint, and reading stops where the hashing did (rows appended since are not the input
    the run recorded). A file changed, cut or replaced under the run fails the read at the first
    block that differs, naming the file. Opened without a fingerprint first, it is the file as it
    is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._taken: _Taken | None = None
        self._reading: _AsFingerprinted | None = None

    def fingerprint(self) -> str:
        whole, blocks, size = hashlib.sha256(), [], 0
        try:
            with _open_input(self.path) as f:
                # The bytes there when it is opened, in whole blocks. Read to the end instead, a
                # file being appended to gave a short block wherever a read met its end for a
                # moment, then went on: blocks that no longer start at multiples of _BLOCK, so
                # the run's read failed as if the file had changed (a review).
                end = os.fstat(f.fileno()).st_size
                while size < end and (block := f.read(min(_BLOCK, end - size))):
                    whole.update(block)
                    blocks.append(hashlib.sha256(block).digest())
                    size += len(block)
        except OSError as e:
            raise PluginError(_NODE, f"cannot read input file {self.path}: {e.strerror}") from e
        self._taken = _Taken(size, whole.hexdigest(), blocks)
        return self._taken.digest

    def open(self) -> IO[bytes]:
        f = _open_input(self.path)
        if self._taken is None:
            return f
        self._reading = _AsFingerprinted(f, self._taken, self.path)
        return io.BufferedReader(self._reading, buffer_size=_CHUNK)

    def cut_off(self, last_line: str) -> str | None:
        """Why the input's last line, read without its line end, is no whole record: None when
        nothing says so. A file still being written when the run fingerprinted it may end in the
        middle of a line (`20001,5,pass` of `20001,5,password`): read as it is, that part would be
        a valid row, its value wrong. The run reads only the fingerprinted bytes; when the file has
        grown past them by the time their end was read, its last line went on (or at least ended)
        after the cut, and it is quarantined with this reason."""
        reading = self._reading
        if reading is None or reading.grew_to is None or last_line.endswith(("\n", "\r")):
            return None
        return (
            f"the input was still being written when the run fingerprinted it: its last line ends at byte "
            f"{reading.size} without a line end, and the file has grown to {reading.grew_to} bytes since, so this record was cut off (the run "
            "reads only the fingerprinted bytes); run the file again once it is written whole"
        )


class _AsFingerprinted(io.RawIOBase):
    """The bytes `_Input.fingerprint` hashed, a block at a time, each checked before it is handed
    on. Checked only at the end, a file rewritten in place during the run gave the rows before the
    end from the new bytes: recorded, and then, the file put back, resumed under the old
    fingerprint. A seek may only go back to the start (a CSV file read ahead for its line ends)."""

    def __init__(self, f: IO[bytes], taken: _Taken, path: Path) -> None:
        super().__init__()
        self._f, self._taken, self._path = f, taken, path
        self.size = taken.size
        self.grew_to: int | None = None  # the file's size past the fingerprinted end, when read there
        self._restart()

    def _restart(self) -> None:
        self._block, self._at, self._pending = 0, 0, memoryview(b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) == (0, os.SEEK_CUR):
            return self._at
        if (offset, whence) != (0, os.SEEK_SET):
            raise io.UnsupportedOperation("an input is read forwards, or again from its start")
        self._f.seek(0)
        self._restart()
        return 0

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(self._next_block())
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._at += n
        return n

    def _next_block(self) -> bytes:
        """The next block as fingerprinted; b"" after the last."""
        taken, i = self._taken, self._block
        if i == len(taken.blocks):
            size = os.fstat(self._f.fileno()).st_size
            if size > taken.size:
                self.grew_to = size
            return b""
        start = i * _BLOCK
        data = self._f.read(min(_BLOCK, taken.size - start))
        if len(data) != min(_BLOCK, taken.size - start) or hashlib.sha256(data).digest() != taken.blocks[i]:
            raise PluginError(
                _NODE,
                f"{self._path} changed while the run read it: its bytes from offset {start} on are no longer those "
                f"the run fingerprinted at its start ({taken.size} bytes, sha256 {taken.digest[:16]}…); no row "
                "was read from them (those before are the fingerprinted file's). Leave an input alone while a run "
                "reads it",
            )
        self._block += 1
        return data

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}  # fmt: skip


def _not_regular(mode: int) -> str | None:
    """What a file of this mode is, when it is not a regular file. A source reads a file that
    ends: `/dev/zero` never does, and a FIFO may block for good."""
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_input_path(path: Path) -> None:
    """At load (validate): refuse a path that exists and is not a regular file. `stat` opens
    nothing, so a FIFO cannot block here. A path that does not exist yet is left to the run."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    kind = _not_regular(mode)
    if kind is not None:
        raise PluginConfigError("path", f"{path} is {kind}; allowed: a regular file")


def _open_input(path: Path) -> IO[bytes]:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. What was opened
    # is checked (fstat), not the name, so a file swapped in after validate is caught too.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        # (A relative path is said with the folder it resolved in: a resume works in the run's.)
        where = "" if path.is_absolute() else f" (in {os.getcwd()})"
        raise PluginError(_NODE, f"cannot open input file {path}{where}: {e.strerror}") from e
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise PluginError(_NODE, f"{path} is {kind}; allowed: a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _validated(index: int, row: Row, raw: Row, schema: Schema, line: int) -> SourceItem:
    try:
        return SourceItem(index, schema.coerce(row), raw, line=line)
    except SchemaViolation as e:
        return SourceItem(index, None, raw, e.reason, line=line)


_CHUNK = 1 << 16


def _only_cr(f: IO[bytes]) -> bool:
    """Whether the file ends its lines in bare carriage returns, as classic Mac OS wrote them: it
    holds a CR and no LF at all. A file with an LF stops the search there (in its first chunk, as
    a rule); one without is read through once. Read from where the file is, which it is left at."""
    start = f.tell()
    cr = False
    try:
        while chunk := f.read(_CHUNK):
            if b"\n" in chunk:
                return False
            cr = cr or b"\r" in chunk
        return cr
    finally:
        f.seek(start)


def _wide_encoding(raw: list[bytes]) -> str:
    """A hint for a file whose first bytes are a UTF-16 or UTF-32 byte-order mark (Excel's
    "Unicode text"), read in another encoding; else nothing."""
    start = raw[0][:4] if raw else b""
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                      (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):  # fmt: skip
        if start.startswith(bom):
            return f" (it starts with a {name.upper()} byte-order mark: set options.encoding: {name})"
    return ""


def _only_cr_text(f: IO[bytes], encoding: str) -> bool:
    """`_only_cr` for an encoding in which a newline is not the byte 0x0A (UTF-16, UTF-32): the
    bytes of an LF or a CR can be part of another character there, so the text is searched. A
    part that does not decode ends the search (the read then fails there, naming it)."""
    start = f.tell()
    reader = io.TextIOWrapper(f, encoding=encoding, newline="")
    cr = False
    try:
        while chunk := reader.read(_CHUNK):
            if "\n" in chunk:
                return False
            cr = cr or "\r" in chunk
        return cr
    except UnicodeError:
        return cr
    finally:
        reader.detach()
        f.seek(start)


def _cr_lines(f: IO[bytes]) -> Iterator[bytes]:
    """The file's lines ending in a bare CR, each with its CR (as iterating a file gives LF lines).
    A line longer than a chunk is joined once, when it ends."""
    pending: list[bytes] = []
    while chunk := f.read(_CHUNK):
        *lines, tail = chunk.split(b"\r")
        if lines:
            lines[0] = b"".join([*pending, lines[0]])
            pending = []
            for line in lines:
                yield line + b"\r"
        pending.append(tail)
    if last := b"".join(pending):
        yield last


class _Lines:
    """The physical lines of a file as text, counted, so records map back to line numbers.

    Lines are decoded one at a time: a line that is not valid in the encoding is passed on with
    replacement characters and its reason kept in `bad`, so only the record it belongs to is
    quarantined. Encodings in which a newline is not the byte 0x0A (UTF-16, UTF-32) cannot be
    split into lines before decoding; they are decoded as a stream, split at the same line ends,
    and an invalid byte there fails the read. With `cr_lines` (CSV), a file without a single LF is
    split at its CRs (`_only_cr`: classic Mac OS ended lines so, and the prior system read such
    files); a file with an LF anywhere is split at its LFs, and a CR in it is a character of its
    line, as before. JSON lines are split at LFs only: in JSON a CR is whitespace."""

    def __init__(self, f: IO[bytes], encoding: str, path: Path, *, cr_lines: bool = False) -> None:
        self.f = f
        self.cr_lines = cr_lines
        self.encoding = encoding
        self.path = path
        self.count = 0  # physical lines consumed so far
        self.bad: str | None = None  # why a line of the current record did not decode
        self.text: list[str] = []  # the current record's lines, as decoded
        self.raw: list[bytes] = []  # and as read, for a line that did not decode
        self.ended = False  # every line has been handed out

    def start_record(self) -> None:
        self.bad = None
        self.text = []
        self.raw = []

    def raw_bytes(self) -> str:
        """The current record's bytes exactly as read (base64): a line that did not decode is
        shown with replacement characters, and these are the evidence of what it held."""
        return base64.b64encode(b"".join(self.raw)).decode("ascii")

    def __iter__(self) -> Iterator[str]:
        yield from self._lines()
        self.ended = True

    def _lines(self) -> Iterator[str]:
        if "\n".encode(self.encoding) != b"\n":
            yield from self._stream()
            return
        first = True
        for raw in _cr_lines(self.f) if self.cr_lines and _only_cr(self.f) else self.f:
            if first and self.encoding == "utf-8" and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            first = False
            self.count += 1
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as e:
                text = raw.decode(self.encoding, errors="replace")
                if self.bad is None:
                    self.bad = f"line {self.count} is not valid {self.encoding}: {e.reason} at byte {e.start}"
            self.text.append(text)
            self.raw.append(raw)
            yield text

    def _stream(self) -> Iterator[str]:
        # Not newline="" (any of CR, LF, CRLF ends a line): a CR inside a line of an LF file split
        # it where the same file in UTF-8 was not, so a quoted cell holding a CR became two records
        # with multiline: false, an unquoted one a valid row cut short, a JSON line two invalid
        # ones, and every line number after it was one too high (a review).
        only_cr = self.cr_lines and _only_cr_text(self.f, self.encoding)
        reader = io.TextIOWrapper(self.f, encoding=self.encoding, newline="\r" if only_cr else "\n")
        try:
            for text in reader:
                self.count += 1
                self.text.append(text)
                yield text
        except UnicodeError as e:  # (UTF-16 or UTF-32 without a byte-order mark raises the base class)
            # The wrapper decodes blocks ahead of the lines it hands out: say roughly where.
            where = f"after line {self.count}" if self.count else "within its first lines"
            why = e.reason if isinstance(e, UnicodeDecodeError) else str(e)
            raise PluginError(_NODE, f"{self.path}: not valid {self.encoding} {where}: {why}") from e
        finally:
            reader.detach()


def csv_error(e: csv.Error) -> str:
    """The csv module's words, without its advice to Python programmers (a bare carriage return in
    a cell: "... - do you need to open the file in universal-newline mode?")."""
    return str(e).split(" - do you need", 1)[0]


class CsvSource:
    kind: ClassVar[str] = "source"
    UNPARSED_KEYS: ClassVar[tuple[str, ...]] = ("__raw_line__", "__line_number__", "__row_number__")

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "path", "delimiter", "encoding", "skip_rows", "columns", "field_mapping", "multiline",
                    "schema", "on_validation_failure")  # fmt: skip
        self.path = Path(o.path())
        self._input = _Input(self.path)
        check_input_path(self.path)
        self.delimiter = o.delimiter()
        self.encoding = o.encoding()
        self.skip_rows = o.int_("skip_rows", 0)
        if self.skip_rows < 0:
            raise PluginConfigError("skip_rows", f"must be 0 or more, found {self.skip_rows}")
        self.columns = _names(o.list_("columns"), "columns")
        mapping = o.dict_("field_mapping") or {}  # (its keys are text: see `load_settings`)
        for key, new in mapping.items():
            if not text_item(new, f"field_mapping.{key}", "a field name"):
                raise PluginConfigError(f"field_mapping.{key}", "found an empty name; allowed: a field name")
        self.field_mapping: dict[str, str] = mapping
        # false: a quoted field may not span lines (see `_OneLineRecords`)
        self.multiline = o.bool_("multiline", True)
        self.schema = parse_schema(o.raw("schema"))
        self.on_validation_failure = o.str_("on_validation_failure", "discard")

    def fingerprint(self) -> str:
        return self._input.fingerprint()

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        with self._input.open() as f:
            yield from self._records(f, start)

    def check_header(self) -> None:
        """Read the header as a run will, and no further (the lines `skip_rows` skips, then the
        header line): PluginError when the run would refuse it. For the pre-run checks, so that
        a header the run cannot use stops `validate` and `run` before a run is recorded."""
        with _open_input(self.path) as f:
            lines = _Lines(f, self.encoding, self.path, cr_lines=True)
            names = self._read_header(iter(lines), lines, checking=True)
        if names is None and 0 < lines.count <= self.skip_rows:
            # (a file ending inside the lines skip_rows skips: a run would read no header and no
            # row, and complete with nothing; an empty file is an input with no rows)
            raise PluginError(
                _NODE, f"{self.path}: skip_rows skips {self.skip_rows} lines, but the file has only {lines.count}, so "
                "no header and no row would be read; allowed: fewer lines skipped than the file has"
            )  # fmt: skip
        # A field the schema requires that no column is named would make every row a violation:
        # all quarantined, by a run that "completed" (often a header's own spelling, 'Customer ID',
        # where the rows hold the normalised customer_id).
        known = set(names or ())
        missing = [f.name for f in self.schema.fields if not f.optional and f.name not in known]
        if names is not None and self.schema.mode != "observed" and missing:
            raise PluginError(
                _NODE, f"{self.path}: the schema requires '{missing[0]}', which is no column of the header (its columns, "
                f"as rows hold them: {', '.join(names)}); allowed: those names, or the field optional ('name: type?')"
            )  # fmt: skip
        # A fixed schema takes no other field: a column it does not declare would quarantine every row.
        declared = {f.name for f in self.schema.fields}
        extra = [n for n in names or () if n not in declared]
        if names is not None and self.schema.mode == "fixed" and extra:
            raise PluginError(
                _NODE, f"{self.path}: the header has {len(extra)} column(s) the schema (mode fixed) does not declare "
                f"({', '.join(extra)}), so every row would be quarantined; allowed: declare them, or schema mode "
                "flexible (which keeps them as they are)"
            )  # fmt: skip

    def _records(self, f: IO[bytes], start: int) -> Iterator[SourceItem]:
        lines = _Lines(f, self.encoding, self.path, cr_lines=True)
        it = iter(lines)
        header = self._read_header(it, lines)
        if header is None:
            return
        # Read as the prior system read it (not strictly: `"Big" Tony` is `Big Tony`), with two
        # checks of a record's quotes (`_quotes`, below): a quote that never closes, and one that
        # closes lines later with text after it. With `multiline: false`, line by line.
        reader = csv.reader(it, delimiter=self.delimiter) if self.multiline else _OneLineRecords(it, self.delimiter)
        index = 0
        while True:
            lines.start_record()
            first_line = lines.count + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                # The reader gives up and starts the next record on the next line. With no quote
                # in what it read of this record, that line does start one: the record is
                # quarantined and the rest read (e.g. a bare carriage return in a cell). With a
                # quote, the next line may still be inside a quoted field, whose text would be
                # read as records: where this record ends cannot be known, nothing more is read.
                # (With multiline: false every line is a record, and the next one starts one.)
                if self.multiline and '"' in "".join(lines.text):
                    raise PluginError(
                        _NODE,
                        f"{self.path}: the record starting on line {first_line} cannot be read as CSV: {csv_error(e)}",
                    ) from None
                if index >= start:
                    why = f"unreadable CSV: {csv_error(e)}"
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index), why)
                index += 1
                continue
            # (walked only where it can matter: a record over several lines, or the last)
            quotes = _quotes(lines.text, self.delimiter) if len(lines.text) > 1 or lines.ended else _Quotes(None, False)
            ran_off = lines.ended and quotes.left_open
            if len(lines.text) > 1 and not ran_off and quotes.swallow is not None:
                # A stray opening quote (`2,"12 inch,ok`): the reader took the records after it
                # into that field, up to a later quote, and glued on what followed that one:
                # records never counted nor quarantined, in a row that read as valid (a review).
                # Where the record was meant to end cannot be known: nothing more is read.
                opened, closed = (first_line + n for n in quotes.swallow)
                raise PluginError(
                    _NODE,
                    f"{self.path}: the record starting on line {first_line} holds a quoted field that opens on line "
                    f"{opened} and closes on line {closed} with text after the closing quote, so where it ends cannot "
                    "be known; allowed: a quote that opens a field closes it (a quote inside one is written twice: "
                    '"say ""hi""")',
                )
            if not values and lines.bad is None:
                continue  # a blank line is not a record
            if index >= start:
                if isinstance(reader, _OneLineRecords) and reader.left_open:
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index),
                                     f"a quote opened on line {first_line} does not close on that line "
                                     "(multiline: false)")  # fmt: skip
                elif ran_off:
                    # A quote that never closes makes the rest of the file one field: the rows
                    # after it would be inside this one, never counted, never quarantined; on
                    # the last line, a cut file's value (`2,"mul`).
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index),
                                     f"a quote opened on line {first_line} is never closed: the record runs to the "
                                     "end of the file")  # fmt: skip
                elif (cut := self._input.cut_off(lines.text[-1])) is not None:
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index), cut)
                elif lines.bad is not None:
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index), lines.bad)
                elif len(values) != len(header):
                    raw = {"__raw_line__": self.delimiter.join(values), "__line_number__": first_line,
                           "__row_number__": index + 1}  # fmt: skip
                    yield SourceItem(index, None, raw, f"expected {len(header)} fields, found {len(values)}")
                else:
                    row = dict(zip(header, values, strict=True))
                    yield _validated(index, row, dict(row), self.schema, first_line)
            index += 1

    def _read_header(self, it: Iterator[str], lines: _Lines, *, checking: bool = False) -> list[str] | None:
        """The field names, after the lines `skip_rows` skips; None: the file ends before them.
        `checking` (the pre-run checks, before any run is recorded): its errors may name the
        header's columns, which are the input's (row data, kept out of what a run records)."""
        for _ in range(self.skip_rows):
            if next(it, None) is None:
                return None
        no_field_size_limit()
        if self.columns is not None:
            names = list(self.columns)
        else:
            lines.start_record()
            line = next(it, None)
            if line is None:
                return None  # an empty file has no records
            if not line.strip("\r\n") and lines.bad is None:
                # (a header naming no column would have every row quarantined, the real header too;
                # a line of spaces or tabs is a record of empty cells where they delimit)
                at = lines.count
                if next((rest for rest in it if rest.strip("\r\n")), None) is None:
                    return None  # blank lines alone: an empty file
                raise PluginError(_NODE, f"{self.path}: the header line (line {at}) is blank; allowed: a header "
                                         "naming the columns (skip_rows skips the lines before it)")  # fmt: skip
            names = self._header_names(line, lines)
        known = set(names)
        missing = [k for k in self.field_mapping if k not in known]
        if missing:
            # The header's names as rows hold them: field_mapping's keys are those, not the
            # header's own spelling ('Customer Name' is customer_name), which was not said.
            shown = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
            allowed = f"; allowed: the columns as rows hold them, their names normalised ({shown})" if checking else ""
            raise PluginError(
                _NODE,
                f"{self.path}: field_mapping renames '{missing[0]}', which is not a column of the header{allowed}",
            )
        mapped = [self.field_mapping.get(h, h) for h in names]
        twice = _first_repeat(mapped)
        if twice is not None:
            # dict(zip(...)) would keep the last of the two: a column gone, from the recorded row too
            raise PluginError(
                _NODE, f"{self.path}: field_mapping gives two columns the name '{twice}'; allowed: names once each"
            )
        return mapped

    def _header_names(self, line: str, lines: _Lines) -> list[str]:
        """The header line's names, normalised. The header is one line: read as a record, a quote
        left open in it would make the lines after it (data rows, to the end of the file if it
        never closes) part of a column name, never read, counted or quarantined."""
        if lines.bad is not None:  # (said first: read in another encoding, its CRs and NULs misled the parser)
            raise PluginError(_NODE, f"{self.path}: the header {lines.bad}{_wide_encoding(lines.raw)}")
        if "\0" in line:  # (UTF-16 or UTF-32 without a byte-order mark decodes as UTF-8, with NULs)
            raise PluginError(
                _NODE, f"{self.path}: the header line holds NUL characters, which no column name has: a file in "
                "UTF-16 or UTF-32? set options.encoding to its encoding"
            )  # fmt: skip
        try:
            first, more = _one_line_record(line, self.delimiter)
        except csv.Error as e:
            hint = (
                " (its lines end in carriage returns, yet it holds a line feed somewhere, in a quoted cell perhaps: "
                "such a file is split at its line feeds; end its lines in line feeds)"
                if "\r" in line.rstrip("\r\n")
                else ""
            )
            raise PluginError(_NODE, f"{self.path}: cannot read the header line: {csv_error(e)}{hint}") from e
        if more:
            raise PluginError(
                _NODE, f"{self.path}: the header on line {lines.count} opens a quote that does not close on that "
                'line; allowed: a header on one line, each quoted name closed on it ("a,b" or "say ""hi""")'
            )  # fmt: skip
        try:
            return normalise_headers(first)
        except PluginConfigError as e:
            raise PluginError(_NODE, f"{self.path}: {e.message}") from e

    def _unparsed(self, lines: _Lines, first_line: int, index: int) -> Row:
        text = "".join(lines.text).rstrip("\r\n")
        raw: Row = {"__raw_line__": text, "__line_number__": first_line, "__row_number__": index + 1}
        if lines.bad is not None:
            raw["__raw_bytes__"] = lines.raw_bytes()
        return raw

    def close(self) -> None:
        pass


def no_field_size_limit() -> None:
    """csv's default limit (131,072 characters a field) fails a record part way, which cannot be
    recovered from safely (see `_records`): a long field is read whole instead."""
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # a C long narrower than Py_ssize_t
        csv.field_size_limit(2**31 - 1)


class _OneLineRecords:
    """The records of `multiline: false`: each physical line is one, read as csv reads a line.
    A stray opening quote whose field a later quote closes right before a delimiter or a line
    end (an inch mark, `pipe 10",3`) is valid CSV: read with multi-line cells, it swallows the
    records between into one valid-looking row, and no reader can tell it from a real
    multi-line cell. Here a quote left open at its line's end is only that line's problem
    (`left_open`: it is quarantined), and the next line is the next record. An iterator whose
    `__next__` raises csv.Error for one line and reads on at the next (a generator would end)."""

    def __init__(self, lines: Iterator[str], delimiter: str) -> None:
        self._lines, self._delimiter = lines, delimiter
        self.left_open = False

    def __iter__(self) -> _OneLineRecords:
        return self

    def __next__(self) -> list[str]:
        self.left_open = False
        line = next(self._lines)
        values, self.left_open = _one_line_record(line, self._delimiter)
        return values


def _one_line_record(line: str, delimiter: str) -> tuple[list[str], bool]:
    """The record read from this one line, and whether the reader asked for another line to end
    it: it does so only inside a quoted field (asking the reader, rather than counting quotes,
    takes a literal quote in an unquoted field as it does)."""
    more = False

    def feed() -> Iterator[str]:
        nonlocal more
        yield line
        more = True

    values = next(csv.reader(feed(), delimiter=delimiter), [])
    return values, more


class _Quotes(NamedTuple):
    """What `_quotes` found in a record's lines."""

    swallow: tuple[int, int] | None  # the lines (0-based) a swallowing quoted field opened and closed on
    left_open: bool  # the lines end inside a quoted field


@cache
def _quote_patterns(delimiter: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Blanks up to a field's end, and a field's end (for `_quotes`, record after record)."""
    return re.compile(f"[ \t]*(?:{re.escape(delimiter)}|\r|\n|$)"), re.compile(f"[{re.escape(delimiter)}\r\n]")


def _quotes(text: list[str], delimiter: str) -> _Quotes:
    """The record's lines walked as the csv module's lenient reader walks them.

    `swallow`: the first quoted field opened lines before its closing quote and with other text
    after that quote, how a stray quote swallows the records between. Text after a closing quote
    of a field opened on the same line (`"Big" Tony`) is read leniently, as on a one-line record
    (the prior system read it so); so are blanks between a closing quote and the delimiter or the
    line's end, which cannot swallow a record. (Read strictly as a whole instead, one such
    one-line quirk stopped the source for a record that also held a good multi-line cell, and
    hid a quote left open at the end of the file behind its own error: a review.)"""
    blanks_to_end, field_end = _quote_patterns(delimiter)
    swallow: tuple[int, int] | None = None
    state, opened = "start", 0  # start of a field, in an unquoted one, in a quoted one, after a quote in one
    for n, line in enumerate(text):
        i = 0
        while i < len(line):
            # (unquoted and quoted text is skipped at C speed, to what can change the state)
            if state == "unquoted":
                end = field_end.search(line, i)
                i, state = (len(line), state) if end is None else (end.end(), "start")
                continue
            if state == "quoted":
                end_quote = line.find('"', i)
                i, state = (len(line), state) if end_quote < 0 else (end_quote + 1, "quote")
                continue
            c = line[i]
            if state == "start":
                if c == '"':
                    state, opened = "quoted", n
                elif c != delimiter and c not in "\r\n":
                    state = "unquoted"
            elif c == '"':  # (after a quote in a quoted field: a quote written twice)
                state = "quoted"
            elif c == delimiter or c in "\r\n":
                state = "start"
            else:
                if swallow is None and opened < n and not blanks_to_end.match(line, i):
                    swallow = opened, n
                state = "unquoted"
            i += 1
    return _Quotes(swallow, state == "quoted")


def _first_repeat(names: list[str]) -> str | None:
    """The first name that comes a second time (at its second place), or None. With a set: a
    header of 60,000 columns took 44 s when each name was looked for among those before it."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _names(value: list[Any] | None, key: str) -> list[str] | None:
    if value is None:
        return None
    if not value:  # every row would have more fields than the header: all quarantined
        raise PluginConfigError(key, "an empty list; allowed: the names of the columns, in order")
    for i, name in enumerate(value):
        if not text_item(name, f"{key}[{i}]", "a field name"):
            raise PluginConfigError(f"{key}[{i}]", "found an empty name; allowed: a field name")
    dupes = sorted(n for n, count in Counter(value).items() if count > 1)
    if dupes:
        raise PluginConfigError(key, f"names given more than once: {', '.join(dupes)}")
    return list(value)


class JsonSource:
    kind: ClassVar[str] = "source"
    UNPARSED_KEYS: ClassVar[tuple[str, ...]] = ("__raw_line__", "__line_number__")

    def __init__(self, options: Mapping[str, Any], default_format: str | None = None) -> None:
        o = Options(options, "path", "format", "data_key", "encoding", "schema", "on_validation_failure")
        self.path = Path(o.path())
        self._input = _Input(self.path)
        check_input_path(self.path)
        fmt = o.str_("format", default_format or ("jsonl" if self.path.suffix.lower() == ".jsonl" else "json"))
        if fmt not in ("json", "jsonl"):
            raise PluginConfigError("format", f"{fmt!r} is not allowed; allowed: json, jsonl")
        self.format = fmt
        self.data_key = o.str_("data_key", "") or None
        if self.data_key is not None and fmt == "jsonl":
            raise PluginConfigError("data_key", "only for format json (a JSON-lines file has no enclosing object)")
        self.encoding = o.encoding()
        self.schema = parse_schema(o.raw("schema"))
        self.on_validation_failure = o.str_("on_validation_failure", "discard")

    def fingerprint(self) -> str:
        return self._input.fingerprint()

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        with self._input.open() as f:
            if self.format == "jsonl":
                yield from self._lines(f, start)
            else:
                yield from self._array(f, start)

    def _lines(self, f: IO[bytes], start: int) -> Iterator[SourceItem]:
        lines = _Lines(f, self.encoding, self.path)
        index = 0
        lines.start_record()
        for text in lines:
            line_no, bad = lines.count, lines.bad
            cut = self._input.cut_off(text)
            raw_bytes = lines.raw_bytes() if bad is not None else ""
            lines.start_record()
            text = text.strip()
            if not text:
                continue  # blank lines are not records
            if index >= start:
                raw: Row = {"__raw_line__": text, "__line_number__": line_no}
                if bad is not None:
                    raw["__raw_bytes__"] = raw_bytes
                    yield SourceItem(index, None, raw, bad)
                elif cut is not None:
                    yield SourceItem(index, None, raw, cut)
                else:
                    yield self._record(index, text, raw)
            index += 1

    def _record(self, index: int, text: str, raw: Row) -> SourceItem:
        rounded: list[float] = []
        try:
            value = _strict_json(text, rounded=rounded)
        except json.JSONDecodeError as e:
            return SourceItem(index, None, raw, f"invalid JSON at column {e.colno}: {e.msg}")
        except _Undecodable as e:
            return SourceItem(index, None, raw, e.reason)
        if not isinstance(value, dict):
            return SourceItem(index, None, raw, f"expected a JSON object, found {_json_type(value)}")
        if (why := _impersonating(value)) is not None:
            return SourceItem(index, None, raw, why)
        return _validated_json(index, value, self.schema, raw["__line_number__"], rounded)

    def check_header(self) -> None:
        """A JSON document (format json) read as a run reads it, without its rows: PluginError when
        the run would refuse it (not JSON, not an array where data_key says, nested too deeply), so
        that `validate` and `run` stop before a run is recorded. A document is parsed whole either
        way. JSON lines are refused line by line, each on its own: only the first is read, so
        that a file the encoding cannot decode at all is refused here."""
        if self.format == "json":
            with _open_input(self.path) as f:
                self._document(f)
        else:  # (UTF-16 or UTF-32 is decoded in blocks: one that does not decode stops the read)
            with _open_input(self.path) as f:
                next(iter(_Lines(f, self.encoding, self.path)), None)

    def _document(self, f: IO[bytes]) -> tuple[list[Any], list[_LongInt], list[float]]:
        """The array of records a JSON document holds (at data_key, when set), and the integers
        too long to be read that it holds; PluginError naming the file when it holds none."""
        # A JSON document has to be parsed whole; only JSON lines stream.
        long_ints: list[_LongInt] = []
        rounded: list[float] = []
        try:
            data = _strict_json(f.read().decode(self.encoding).removeprefix("\ufeff"), long_ints, rounded)
        except _Undecodable as e:  # a document is decoded whole: it has no other records to go on with
            raise PluginError(_NODE, f"{self.path} cannot be decoded: {e.reason}; for one record per line, "
                                     "where such a record is quarantined alone, use format: jsonl") from e  # fmt: skip
        except UnicodeDecodeError as e:
            raise PluginError(_NODE, f"{self.path} is not valid {self.encoding}: {e.reason} at byte {e.start}") from e
        except UnicodeError as e:  # (UTF-16 or UTF-32 without a byte-order mark raises the base class)
            raise PluginError(_NODE, f"{self.path} is not valid {self.encoding}: {e}") from e
        except json.JSONDecodeError as e:
            if self._input.cut_off("") is not None:
                raise PluginError(_NODE, f"{self.path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): "
                                         "it was still being written when the run fingerprinted it (it has grown "
                                         "since); run it again once it is written whole") from e  # fmt: skip
            raise PluginError(_NODE, f"{self.path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                                     "for one object per line use format: jsonl") from e  # fmt: skip
        if self.data_key is not None:
            if not isinstance(data, dict) or self.data_key not in data:
                raise PluginError(_NODE, f"{self.path} has no top-level key {self.data_key!r} (data_key)")
            data = data[self.data_key]
        if not isinstance(data, list):
            if self.data_key is not None:
                hint = f"data_key {self.data_key!r} must name the array"
            elif isinstance(data, dict):
                hint = "set data_key to the key holding the array"
            else:
                hint = "use format: jsonl"
            raise PluginError(
                _NODE, f"{self.path}: expected a JSON array of objects, found {_json_type(data)} ({hint})"
            )
        return data, long_ints, rounded

    def _array(self, f: IO[bytes], start: int) -> Iterator[SourceItem]:
        data, long_ints, rounded = self._document(f)
        for index in range(start, len(data)):
            value = data[index]
            too_long = _long_int_in(value) if long_ints else None
            if too_long is not None:
                raw = {"__raw_line__": json.dumps(value, ensure_ascii=False), "__line_number__": index + 1}
                yield SourceItem(index, None, raw, too_long)
            elif isinstance(value, dict) and (why := _impersonating(value)) is not None:
                raw = {"__raw_line__": json.dumps(value, ensure_ascii=False), "__line_number__": index + 1}
                yield SourceItem(index, None, raw, why)
            elif isinstance(value, dict):
                yield _validated_json(index, value, self.schema, index + 1, rounded)
            else:
                raw = {"__raw_line__": json.dumps(value, ensure_ascii=False), "__line_number__": index + 1}
                yield SourceItem(index, None, raw, f"expected a JSON object, found {_json_type(value)}")

    def close(self) -> None:
        pass


class _Undecodable(Exception):
    """Valid JSON that cannot become a row here (too deep, a number too long)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_MAX_INT_DIGITS = 4300  # Python's own limit for converting between text and int


class _LongInt(str):
    """The digits of an integer too long to hold, kept in a document decoded whole so that
    only the record holding it is quarantined (as its text: the evidence stays exact)."""

    def reason(self) -> str:
        digits = len(self.lstrip("-"))
        return f"an integer of {digits:,} digits; allowed: at most {_MAX_INT_DIGITS:,}"


def _long_int_in(value: Any) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _LongInt):
            return item.reason()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _strict_json(text: str, long_ints: list[_LongInt] | None = None, rounded: list[float] | None = None) -> Any:
    """JSON as the standard has it: NaN and Infinity (which Python's json accepts) have no JSON
    form, so the row recorded in the audit trail and the row a sink writes would differ. Valid
    JSON that Python cannot hold as a row raises _Undecodable with the reason; with `long_ints`
    given, an integer too long is kept as a _LongInt (and listed there) instead. A number that
    reads as a whole float only because a float could not hold all its digits is a RoundedFloat
    (listed in `rounded`: the caller makes it a plain float once the schema has seen it)."""

    def refuse(name: str) -> Any:
        raise json.JSONDecodeError(f"{name} is not a JSON value", text, text.find(name))

    def integer(digits: str) -> int | _LongInt:
        if len(digits.lstrip("-")) <= _MAX_INT_DIGITS:
            return int(digits)
        if long_ints is None:
            raise _Undecodable(_LongInt(digits).reason())
        long_ints.append(_LongInt(digits))
        return long_ints[-1]

    def number(digits: str) -> float:
        value = float(digits)
        if not math.isfinite(value):  # 1e400: valid JSON, but an infinity as a float
            raise _Undecodable(f"a number of {len(digits)} characters is too large for a float")
        if value == 0.0 and any(c in "123456789" for c in digits.lower().partition("e")[0]):
            # (e.g. 1e-400)
            raise _Undecodable(f"a number of {len(digits)} characters is too small for a float (it would read 0)")
        # (not zero: a float that reads 0 is the text's exact value, `0e99999999999999999999`
        # included, which Decimal cannot hold)
        if rounded is not None and value and value.is_integer() and Decimal(digits) != int(value):
            rounded.append(value)
            return RoundedFloat(value)
        return value

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):  # the first value would be lost, unseen by the audit trail
            raise _Undecodable("an object gives one of its keys twice: only one of the values could be kept")
        return obj

    try:
        value = json.loads(text, parse_constant=refuse, parse_int=integer, parse_float=number, object_pairs_hook=pairs)
    except RecursionError:
        raise _Undecodable("nested too deeply to decode") from None
    if _SURROGATE_ESCAPE.search(text):
        # `\ud800` alone is valid JSON but no Unicode text: it could be neither recorded nor written.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _Undecodable("a string holds a lone surrogate (\\ud800-\\udfff), which is no Unicode text") from None
    return value


# The keys of the record ELSPETH makes of a line it could not read (`UNPARSED_KEYS`, and a line's
# undecodable bytes), which is what a source's quarantine sink is given.
_UNPARSED = tuple(sorted({*CsvSource.UNPARSED_KEYS, *JsonSource.UNPARSED_KEYS, "__raw_bytes__"}))


def _impersonating(value: dict[str, Any]) -> str | None:
    """Why a JSON record holding one of those keys is refused, as a line that could not be read:
    taken as it was, quarantined for any reason, it would read as ELSPETH's record of another
    line that could not be (a review forged one naming line 1, which was read and written)."""
    found = [k for k in _UNPARSED if k in value]
    if not found:
        return None
    return (f"holds the key {found[0]}, which ELSPETH keeps for its records of lines it could not read; allowed: "
            f"a record with no key named {', '.join(_UNPARSED)}")  # fmt: skip


def _validated_json(index: int, value: dict[str, Any], schema: Schema, line: int, rounded: list[float]) -> SourceItem:
    """`_validated` of a decoded JSON object, its RoundedFloats plain floats again once the schema
    has seen them (`rounded`: whether the text held any)."""
    item = _validated(index, value, value, schema, line)
    if rounded:
        plain_floats(item.raw)
        if item.row is not None:
            plain_floats(item.row)
    return item


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
