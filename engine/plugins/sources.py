"""Sources: `csv` and `json` (`jsonl`). They stream, validate against the schema, and turn a record
that does not fit into a quarantined item with its raw data and reason."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from engine.plugins.options import Options
from engine.plugins.protocol import PluginConfigError, PluginError, Row, SourceItem
from engine.plugins.schema import Schema, SchemaViolation, normalise_header, parse_schema


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise PluginError("source", f"cannot read {path}: {e.strerror}") from e
    return h.hexdigest()


def _open_input(path: Path) -> io.BufferedReader:
    try:
        return path.open("rb")
    except OSError as e:
        raise PluginError("source", f"cannot open input file {path}: {e.strerror}") from e


def _item(index: int, row: Row, raw: Row, schema: Schema) -> SourceItem:
    try:
        return SourceItem(index, schema.coerce(row), raw)
    except SchemaViolation as e:
        return SourceItem(index, None, raw, e.reason)


class CsvSource:
    kind: ClassVar[str] = "source"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "path", "delimiter", "encoding", "skip_rows", "columns", "field_mapping",
                    "schema", "on_validation_failure")  # fmt: skip
        self.path = Path(o.str_("path", required=True))
        self.delimiter = o.str_("delimiter", ",")
        self.encoding = o.str_("encoding", "utf-8")
        self.skip_rows = o.int_("skip_rows", 0)
        self.columns: list[str] | None = o.list_("columns")
        self.field_mapping: dict[str, str] = o.dict_("field_mapping") or {}
        self.schema = parse_schema(o.raw("schema"))
        self.on_validation_failure = o.str_("on_validation_failure", "discard")
        if len(self.delimiter) != 1:
            raise PluginConfigError("delimiter", "must be one character")

    def fingerprint(self) -> str:
        return _fingerprint(self.path)

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        with _open_input(self.path) as f:
            yield from self._records(f, start)

    def _records(self, f: io.BufferedReader, start: int) -> Iterator[SourceItem]:
        line_no = 0
        for _ in range(self.skip_rows):
            if not f.readline():
                return
            line_no += 1
        lines = _decoded_lines(f, self.encoding)
        reader = csv.reader(_Restarting(lines), delimiter=self.delimiter)
        if self.columns is not None:
            header = list(self.columns)
        else:
            try:
                first = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise PluginError("source", f"{self.path}: the header is not {self.encoding}: {e.reason}") from e
            try:
                header = [normalise_header(h) for h in first]
            except ValueError as e:
                raise PluginError("source", f"{self.path}: {e}") from e
            if len(set(header)) != len(header):
                dupes = sorted({h for h in header if header.count(h) > 1})
                raise PluginError("source", f"{self.path}: headers normalise to the same name: {', '.join(dupes)}")
            line_no += lines.count
        header = [self.field_mapping.get(h, h) for h in header]
        index = 0
        while True:
            before = lines.count
            try:
                values = next(reader)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as e:
                line_no += max(1, lines.count - before)
                if index >= start:
                    reason = e.reason if isinstance(e, UnicodeDecodeError) else str(e)
                    yield SourceItem(index, None, {"__raw_line__": lines.last, "__line_number__": line_no,
                                                   "__row_number__": index + 1}, f"unreadable line (not {self.encoding}): {reason}")  # fmt: skip
                index += 1
                continue
            line_no += lines.count - before
            if not values:
                continue  # a blank line is not a record
            if index >= start:
                if len(values) != len(header):
                    raw = {"__raw_line__": self.delimiter.join(values), "__line_number__": line_no,
                           "__row_number__": index + 1}  # fmt: skip
                    reason = f"expected {len(header)} fields, found {len(values)}"
                    yield SourceItem(index, None, raw, reason)
                else:
                    row = dict(zip(header, values, strict=True))
                    yield _item(index, row, dict(row), self.schema)
            index += 1

    def close(self) -> None:
        pass


class _Lines:
    """Decoded lines with a count, so CSV records can be mapped back to physical lines; a line
    that does not decode raises UnicodeDecodeError for that record only."""

    def __init__(self, f: io.BufferedReader, encoding: str) -> None:
        self.f = f
        self.encoding = encoding
        self.count = 0
        self.last = ""

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            self.count += 1
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError:
                self.last = raw.decode(self.encoding, errors="replace").rstrip("\r\n")
                raise
            self.last = text.rstrip("\r\n")
            yield text


def _decoded_lines(f: io.BufferedReader, encoding: str) -> _Lines:
    if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
        head = f.peek(3)[:3]
        if head == b"\xef\xbb\xbf":
            f.read(3)
    return _Lines(f, encoding)


class _Restarting:
    """Feed csv.reader from `_Lines`, restarting after a decode error on one line."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.it = iter(lines)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self.it)
        except UnicodeDecodeError:
            self.it = iter(self.lines)  # the file iterator resumes after the bad line
            raise


class JsonSource:
    kind: ClassVar[str] = "source"

    def __init__(self, options: Mapping[str, Any], default_format: str | None = None) -> None:
        o = Options(options, "path", "format", "data_key", "encoding", "schema", "on_validation_failure")
        self.path = Path(o.str_("path", required=True))
        fmt = o.str_("format", default_format or ("jsonl" if self.path.suffix == ".jsonl" else "json"))
        if fmt not in ("json", "jsonl"):
            raise PluginConfigError("format", f"{fmt!r} is not allowed; allowed: json, jsonl")
        self.format = fmt
        self.data_key = o.str_("data_key", "") or None
        self.encoding = o.str_("encoding", "utf-8")
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

    def _lines(self, f: io.BufferedReader, start: int) -> Iterator[SourceItem]:
        index = 0
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode(self.encoding).strip()
            except UnicodeDecodeError as e:
                text = raw.decode(self.encoding, errors="replace").strip()
                if index >= start:
                    yield SourceItem(index, None, {"__raw_line__": text, "__line_number__": line_no},
                                     f"line is not {self.encoding}: {e.reason}")  # fmt: skip
                index += 1
                continue
            if not text:
                continue
            if index >= start:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as e:
                    yield SourceItem(index, None, {"__raw_line__": text, "__line_number__": line_no},
                                     f"invalid JSON: {e.msg}")  # fmt: skip
                else:
                    if isinstance(value, dict):
                        yield _item(index, value, value, self.schema)
                    else:
                        yield SourceItem(index, None, {"__raw_line__": text, "__line_number__": line_no},
                                         f"expected a JSON object, found {type(value).__name__}")  # fmt: skip
            index += 1

    def _array(self, f: io.BufferedReader, start: int) -> Iterator[SourceItem]:
        try:
            data = json.loads(f.read().decode(self.encoding))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PluginError("source", f"{self.path} is not valid JSON: {e}") from e
        if self.data_key is not None:
            if not isinstance(data, dict) or self.data_key not in data:
                raise PluginError("source", f"{self.path} has no key {self.data_key!r} (data_key)")
            data = data[self.data_key]
        if not isinstance(data, list):
            raise PluginError(
                "source", f"{self.path}: expected a JSON array of objects, found {type(data).__name__} "
                "(use format: jsonl for one object per line, or data_key)"
            )  # fmt: skip
        for index, value in enumerate(data):
            if index < start:
                continue
            if isinstance(value, dict):
                yield _item(index, value, value, self.schema)
            else:
                yield SourceItem(index, None, {"__raw_line__": json.dumps(value), "__line_number__": index + 1},
                                 f"expected a JSON object, found {type(value).__name__}")  # fmt: skip

    def close(self) -> None:
        pass
