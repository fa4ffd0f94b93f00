"""Sinks: `csv`, `json` (`jsonl`), `database`. Written in chunks; `flush` makes a chunk durable
(fsync / commit) and returns the position a resume rolls back to."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from engine.plugins.options import Options
from engine.plugins.protocol import PluginConfigError, PluginError, Row
from engine.plugins.schema import parse_schema


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


class _FileSink:
    """What the file sinks share: opening for a fresh run or a resume, fsync on flush."""

    sink_name = "sink"

    def __init__(self, path: str, mode: str, encoding: str) -> None:
        self.path = Path(path)
        if mode not in ("write", "append"):
            raise PluginConfigError("mode", f"{mode!r} is not allowed; allowed: write, append")
        self.mode = mode
        self.encoding = encoding
        self._f: BinaryIO | None = None
        self._buffer: list[tuple[str, Row]] = []

    def _open_file(self, position: int | None) -> int:
        if not self.path.parent.is_dir():
            raise PluginError(self.sink_name, f"the folder of the sink path {self.path} does not exist")
        try:
            f: BinaryIO
            if position is not None:
                f = self.path.open("r+b") if self.path.exists() else self.path.open("w+b")
                # A resume: drop whatever a crash left after the last durable flush.
                f.truncate(position)
                f.seek(position)
            elif self.mode == "append":
                f = self.path.open("ab")
            else:
                f = self.path.open("wb")
        except OSError as e:
            raise PluginError(self.sink_name, f"cannot open {self.path}: {e.strerror}") from e
        self._f = f
        return f.tell()

    def _durable(self, data: bytes) -> int:
        assert self._f is not None, "sink used before open"
        try:
            if data:
                self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise PluginError(self.sink_name, f"cannot write {self.path}: {e.strerror}") from e
        return self._f.tell()

    def write(self, token_id: str, row: Row) -> None:
        self._buffer.append((token_id, row))

    def location(self) -> str:
        return str(self.path)

    def release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _close_file(self, tail: bytes = b"") -> None:
        if self._f is not None:
            self._durable(tail)
            self._f.close()
            self._f = None


class CsvSink(_FileSink):
    kind: ClassVar[str] = "sink"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "path", "headers", "delimiter", "encoding", "mode")
        super().__init__(o.str_("path", required=True), o.str_("mode", "write"), o.str_("encoding", "utf-8"))
        self.write_header = o.bool_("headers", True)
        self.delimiter = o.str_("delimiter", ",")
        self.schema = parse_schema(o.raw("schema"))
        self.fields: list[str] | None = self.schema.field_names

    def open(self, run_id: str, position: int | None) -> None:
        start = self._open_file(position)
        self._needs_header = start == 0
        if start > 0 and self.fields is None:
            self.fields = self._header_on_disk()

    def _header_on_disk(self) -> list[str] | None:
        with self.path.open(encoding=self.encoding, newline="") as f:
            first = next(csv.reader(f, delimiter=self.delimiter), None)
        return first

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        out = io.StringIO()
        if rows:
            if self.fields is None:
                self.fields = list(rows[0][1])
            w = csv.DictWriter(out, fieldnames=self.fields, delimiter=self.delimiter, extrasaction="ignore",
                               lineterminator="\r\n")  # fmt: skip
            if self._needs_header and self.write_header:
                w.writeheader()
            self._needs_header = False
            for _token, row in rows:
                w.writerow({k: _cell(v) for k, v in row.items()})
        return self._durable(out.getvalue().encode(self.encoding))

    def close(self) -> None:
        if self._needs_header and self.write_header and self.fields is not None:
            self._durable((self.delimiter.join(self.fields) + "\r\n").encode(self.encoding))
        self._close_file()


class JsonSink(_FileSink):
    kind: ClassVar[str] = "sink"

    def __init__(self, options: Mapping[str, Any], default_format: str | None = None) -> None:
        o = Options(options, "path", "format", "indent", "encoding", "mode")
        super().__init__(o.str_("path", required=True), o.str_("mode", "write"), o.str_("encoding", "utf-8"))
        fmt = o.str_("format", default_format or ("jsonl" if self.path.suffix == ".jsonl" else "json"))
        if fmt not in ("json", "jsonl"):
            raise PluginConfigError("format", f"{fmt!r} is not allowed; allowed: json, jsonl")
        self.format = fmt
        indent = o.raw("indent")
        if indent is not None and (not isinstance(indent, int) or isinstance(indent, bool)):
            raise PluginConfigError("indent", f"expected an integer, found {indent!r}")
        self.indent: int | None = indent
        parse_schema(o.raw("schema"))

    def open(self, run_id: str, position: int | None) -> None:
        if self.format == "json":
            # A JSON array cannot be appended to in place: `append` rewrites it like `write`.
            self.mode = "write"
        start = self._open_file(position)
        self._rows_on_disk = start > 2
        if self.format == "json" and start == 0:
            self._durable(b"[\n")

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        parts: list[str] = []
        for _token, row in rows:
            if self.format == "jsonl":
                parts.append(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            else:
                text = json.dumps(row, ensure_ascii=False, default=str, indent=self.indent)
                parts.append((",\n" if self._rows_on_disk else "") + text)
                self._rows_on_disk = True
        return self._durable("".join(parts).encode(self.encoding))

    def close(self) -> None:
        self._close_file(b"\n]\n" if self.format == "json" else b"")


_TRACKING = "elspeth_sink_tokens"


class DatabaseSink:
    """Rows go to `table`; in the same transaction each token id goes to `elspeth_sink_tokens` in
    the target database, so a resumed run skips rows it already committed (never writes twice)."""

    kind: ClassVar[str] = "sink"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "url", "table", "if_exists")
        self.url = o.str_("url", required=True)
        self.table_name = o.str_("table", required=True)
        self.if_exists = o.str_("if_exists", "append")
        if self.if_exists not in ("append", "replace"):
            raise PluginConfigError("if_exists", f"{self.if_exists!r} is not allowed; allowed: append, replace")
        self.schema = parse_schema(o.raw("schema"))
        self._buffer: list[tuple[str, Row]] = []
        self._engine: Any = None
        self._table: Any = None
        self._committed = 0

    def location(self) -> str:
        shown = re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", self.url)
        return f"{shown}#{self.table_name}"

    def _fail(self, what: str, e: Exception) -> PluginError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return PluginError("sink", f"database sink {self.location()}: {what}: {first}")

    def open(self, run_id: str, position: int | None) -> None:
        from sqlalchemy import Column, MetaData, Table, Text, create_engine, func, select

        self.run_id = run_id
        try:
            self._engine = create_engine(self.url)
            with self._engine.begin() as conn:
                meta = MetaData()
                tracking = Table(
                    _TRACKING, meta,
                    Column("run_id", Text, primary_key=True), Column("sink_table", Text, primary_key=True),
                    Column("token_id", Text, primary_key=True),
                )  # fmt: skip
                meta.create_all(conn)
                self._tracking = tracking
                if position is None and self.if_exists == "replace":
                    Table(self.table_name, MetaData()).drop(conn, checkfirst=True)
                    conn.execute(tracking.delete().where(tracking.c.sink_table == self.table_name))
                self._committed = conn.execute(
                    select(func.count())
                    .select_from(tracking)
                    .where(tracking.c.run_id == run_id, tracking.c.sink_table == self.table_name)
                ).scalar_one()
        except Exception as e:
            raise self._fail("cannot connect", e) from e

    def write(self, token_id: str, row: Row) -> None:
        self._buffer.append((token_id, row))

    def _ensure_table(self, conn: Any, first: Row) -> Any:
        from sqlalchemy import Boolean, Column, Float, Integer, MetaData, Table, Text, inspect

        if self._table is not None:
            return self._table
        meta = MetaData()
        if inspect(conn).has_table(self.table_name):
            self._table = Table(self.table_name, meta, autoload_with=conn)
            return self._table
        columns: list[Any]
        types = {"int": Integer, "float": Float, "bool": Boolean, "str": Text, "any": Text}
        if self.schema.field_names is not None:
            columns = [Column(f.name, types[f.type]) for f in self.schema.fields]
        else:
            columns = [Column(k, _sql_type(v)) for k, v in first.items()]
        self._table = Table(self.table_name, meta, *columns)
        meta.create_all(conn)
        return self._table

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        if not rows:
            return self._committed
        from sqlalchemy import select

        try:
            with self._engine.begin() as conn:
                table = self._ensure_table(conn, rows[0][1])
                t = self._tracking
                ids = [token for token, _ in rows]
                done = set(
                    conn.execute(
                        select(t.c.token_id).where(
                            t.c.run_id == self.run_id, t.c.sink_table == self.table_name, t.c.token_id.in_(ids)
                        )
                    ).scalars()
                )
                fresh = [(token, row) for token, row in rows if token not in done]
                if fresh:
                    names = [c.name for c in table.columns]
                    conn.execute(table.insert(), [{k: _cell(row.get(k)) for k in names} for _, row in fresh])
                    conn.execute(
                        t.insert(),
                        [{"run_id": self.run_id, "sink_table": self.table_name, "token_id": tok} for tok, _ in fresh],
                    )
                self._committed += len(fresh)
        except PluginError:
            raise
        except Exception as e:
            raise self._fail("cannot write", e) from e
        return self._committed

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _sql_type(value: Any) -> Any:
    from sqlalchemy import Boolean, Float, Integer, Text

    if isinstance(value, bool):
        return Boolean
    if isinstance(value, int):
        return Integer
    if isinstance(value, float):
        return Float
    return Text
