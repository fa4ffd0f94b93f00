"""Sources: `csv` and `json` (`jsonl`). They stream their input, validate each record against the
schema, and turn a record that does not fit into a quarantined item with its raw data and reason.
Problems that are not about one record (a missing file, a JSON document that is not an array)
raise PluginError naming the file before any record is yielded."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from engine.plugins.options import Options
from engine.plugins.protocol import PluginConfigError, PluginError, Row, SourceItem
from engine.plugins.schema import Schema, SchemaViolation, normalise_headers, parse_schema

_NODE = "source"


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise PluginError(_NODE, f"cannot read input file {path}: {e.strerror}") from e
    return h.hexdigest()


def _open_input(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as e:
        raise PluginError(_NODE, f"cannot open input file {path}: {e.strerror}") from e


def _validated(index: int, row: Row, raw: Row, schema: Schema) -> SourceItem:
    try:
        return SourceItem(index, schema.coerce(row), raw)
    except SchemaViolation as e:
        return SourceItem(index, None, raw, e.reason)


class _Lines:
    """The physical lines of a file as text, counted, so records map back to line numbers.

    Lines are decoded one at a time: a line that is not valid in the encoding is passed on with
    replacement characters and its reason kept in `bad`, so only the record it belongs to is
    quarantined. Encodings in which a newline is not the byte 0x0A (UTF-16, UTF-32) cannot be
    split into lines before decoding; they are decoded as a stream, and an invalid byte there
    fails the read."""

    def __init__(self, f: IO[bytes], encoding: str, path: Path) -> None:
        self.f = f
        self.encoding = encoding
        self.path = path
        self.count = 0  # physical lines consumed so far
        self.bad: str | None = None  # why a line of the current record did not decode
        self.text: list[str] = []  # the current record's lines, as decoded

    def start_record(self) -> None:
        self.bad = None
        self.text = []

    def __iter__(self) -> Iterator[str]:
        if "\n".encode(self.encoding) != b"\n":
            yield from self._stream()
            return
        first = True
        for raw in self.f:
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
            yield text

    def _stream(self) -> Iterator[str]:
        reader = io.TextIOWrapper(self.f, encoding=self.encoding, newline="")
        try:
            for text in reader:
                self.count += 1
                self.text.append(text)
                yield text
        except UnicodeDecodeError as e:
            # The wrapper decodes blocks ahead of the lines it hands out: say roughly where.
            where = f"after line {self.count}" if self.count else "within its first lines"
            raise PluginError(_NODE, f"{self.path}: not valid {self.encoding} {where}: {e.reason}") from e
        finally:
            reader.detach()


class CsvSource:
    kind: ClassVar[str] = "source"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "path", "delimiter", "encoding", "skip_rows", "columns", "field_mapping",
                    "schema", "on_validation_failure")  # fmt: skip
        self.path = Path(o.str_("path", required=True))
        self.delimiter = o.str_("delimiter", ",")
        if len(self.delimiter) != 1:
            raise PluginConfigError("delimiter", f"must be one character, found {self.delimiter!r}")
        self.encoding = o.encoding()
        self.skip_rows = o.int_("skip_rows", 0)
        if self.skip_rows < 0:
            raise PluginConfigError("skip_rows", f"must be 0 or more, found {self.skip_rows}")
        self.columns = _names(o.list_("columns"), "columns")
        mapping = o.dict_("field_mapping") or {}
        for key, new in mapping.items():
            if not isinstance(new, str) or not new:
                raise PluginConfigError(f"field_mapping.{key}", f"expected a field name, found {new!r}")
        self.field_mapping: dict[str, str] = {str(k): v for k, v in mapping.items()}
        self.schema = parse_schema(o.raw("schema"))
        self.on_validation_failure = o.str_("on_validation_failure", "discard")

    def fingerprint(self) -> str:
        return _fingerprint(self.path)

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        with _open_input(self.path) as f:
            yield from self._records(f, start)

    def _records(self, f: IO[bytes], start: int) -> Iterator[SourceItem]:
        lines = _Lines(f, self.encoding, self.path)
        it = iter(lines)
        for _ in range(self.skip_rows):
            if next(it, None) is None:
                return
        reader = csv.reader(it, delimiter=self.delimiter)
        header = self._header(reader, lines)
        if header is None:
            return
        index = 0
        while True:
            lines.start_record()
            first_line = lines.count + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if index >= start:
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index), f"unreadable CSV: {e}")
                index += 1
                continue
            if not values and lines.bad is None:
                continue  # a blank line is not a record
            if index >= start:
                if lines.bad is not None:
                    yield SourceItem(index, None, self._unparsed(lines, first_line, index), lines.bad)
                elif len(values) != len(header):
                    raw = {"__raw_line__": self.delimiter.join(values), "__line_number__": first_line,
                           "__row_number__": index + 1}  # fmt: skip
                    yield SourceItem(index, None, raw, f"expected {len(header)} fields, found {len(values)}")
                else:
                    row = dict(zip(header, values, strict=True))
                    yield _validated(index, row, dict(row), self.schema)
            index += 1

    def _header(self, reader: Iterator[list[str]], lines: _Lines) -> list[str] | None:
        if self.columns is not None:
            names = list(self.columns)
        else:
            lines.start_record()
            try:
                first = next(reader)
            except StopIteration:
                return None  # an empty file has no records
            except csv.Error as e:
                raise PluginError(_NODE, f"{self.path}: cannot read the header line: {e}") from e
            if lines.bad is not None:
                raise PluginError(_NODE, f"{self.path}: the header {lines.bad}")
            try:
                names = normalise_headers(first)
            except PluginConfigError as e:
                raise PluginError(_NODE, f"{self.path}: {e.message}") from e
        return [self.field_mapping.get(h, h) for h in names]

    def _unparsed(self, lines: _Lines, first_line: int, index: int) -> Row:
        text = "".join(lines.text).rstrip("\r\n")
        return {"__raw_line__": text, "__line_number__": first_line, "__row_number__": index + 1}

    def close(self) -> None:
        pass


def _names(value: list[Any] | None, key: str) -> list[str] | None:
    if value is None:
        return None
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise PluginConfigError(f"{key}[{i}]", f"expected a field name, found {name!r}")
    dupes = sorted({n for n in value if value.count(n) > 1})
    if dupes:
        raise PluginConfigError(key, f"names given more than once: {', '.join(dupes)}")
    return list(value)


class JsonSource:
    kind: ClassVar[str] = "source"

    def __init__(self, options: Mapping[str, Any], default_format: str | None = None) -> None:
        o = Options(options, "path", "format", "data_key", "encoding", "schema", "on_validation_failure")
        self.path = Path(o.str_("path", required=True))
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
        return _fingerprint(self.path)

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        with _open_input(self.path) as f:
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
            lines.start_record()
            text = text.strip()
            if not text:
                continue  # blank lines are not records
            if index >= start:
                raw: Row = {"__raw_line__": text, "__line_number__": line_no}
                if bad is not None:
                    yield SourceItem(index, None, raw, bad)
                else:
                    yield self._record(index, text, raw)
            index += 1

    def _record(self, index: int, text: str, raw: Row) -> SourceItem:
        try:
            value = _strict_json(text)
        except json.JSONDecodeError as e:
            return SourceItem(index, None, raw, f"invalid JSON at column {e.colno}: {e.msg}")
        if not isinstance(value, dict):
            return SourceItem(index, None, raw, f"expected a JSON object, found {_json_type(value)}")
        return _validated(index, value, value, self.schema)

    def _array(self, f: IO[bytes], start: int) -> Iterator[SourceItem]:
        # A JSON document has to be parsed whole; only JSON lines stream.
        try:
            data = _strict_json(f.read().decode(self.encoding).removeprefix("\ufeff"))
        except UnicodeDecodeError as e:
            raise PluginError(_NODE, f"{self.path} is not valid {self.encoding}: {e.reason} at byte {e.start}") from e
        except json.JSONDecodeError as e:
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
        for index in range(start, len(data)):
            value = data[index]
            if isinstance(value, dict):
                yield _validated(index, value, value, self.schema)
            else:
                raw = {"__raw_line__": json.dumps(value, ensure_ascii=False), "__line_number__": index + 1}
                yield SourceItem(index, None, raw, f"expected a JSON object, found {_json_type(value)}")

    def close(self) -> None:
        pass


def _strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity (which Python's json accepts) have no JSON
    form, so the row recorded in the audit trail and the row a sink writes would differ."""

    def refuse(name: str) -> Any:
        raise json.JSONDecodeError(f"{name} is not a JSON value", text, text.find(name))

    return json.loads(text, parse_constant=refuse)


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
