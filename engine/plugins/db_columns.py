"""What a column of the database sink's table holds (its kind, width and scale, from SQLite's
declared type or PostgreSQL's catalog) and whether it would store a value as given; for a
PostgreSQL date or time column, what a text alone shows it would store as another value and what
the sink asks the server as the flush writes.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
import threading
from decimal import Decimal, localcontext
from typing import Any

from engine.plugins.schema import value_type

# The kinds of PostgreSQL's exact numbers (`pg_column_kinds`): numeric, numeric(p, s), money.
EXACT_NUMBERS = ("number", "decimal", "money")
# What a PostgreSQL date or time column would store otherwise, seen in a text alone (`text_loss`):
# a fraction anywhere (`10:00:00.1234567`, `PT1.0000001S`, `20240101T100000.1234567`), one of a
# millisecond or a microsecond, a word for a time relative to the write, a date given to a time.
_FRACTION = re.compile(r"[.,](\d+)", re.ASCII)
_SUB_SECOND = re.compile(
    r"\d*[.,](\d+)\s*(ms|msecs?|millisecs?|milliseconds?|us|usecs?|microsecs?|microseconds?)\b(?!/)",
    re.ASCII | re.IGNORECASE,
)
# A fraction of a year, a decade, a century or a millennium, which an interval keeps to whole months
# (`1.01 years` stored as 1 year, ISO 8601's `P0.1Y` as 1 month).
_YEARS = re.compile(
    r"(\d*[.,]\d+)\s*(y|yrs?|years?|decades?|centur(?:y|ies)|millenni(?:um|a)|mils?)\b(?!/)", re.ASCII | re.IGNORECASE
)
_MONTHS_IN = {"y": 12, "yr": 12, "yrs": 12, "year": 12, "years": 12, "decade": 120, "decades": 120,
              "century": 1200, "centuries": 1200, "millennium": 12000, "millennia": 12000, "mil": 12000, "mils": 12000}  # fmt: skip
_RELATIVE = re.compile(r"\b(now|today|tomorrow|yesterday)\b", re.ASCII | re.IGNORECASE)
# A date in a text (`2024-06-01`, `6/1/2024`, `2024.06.01`, `1.6.24`, `2024-153`, `20240601`, `June 1`,
# `J2460463`), not the digits of a time with an offset (`04:05:06.789-8`) or a zone's name (`MART`,
# `America/Martinique`).
_DATE_PART = re.compile(
    r"\b\d{1,4}([-/.])\d{1,2}\1\d{1,4}\b|\b\d{4}-\d{3}\b|(?<![.\d])\d{8}(?!\d)|\bj\d"
    r"|\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec|january|february|march|april|june|july|august"
    r"|september|october|november|december)\b",
    re.ASCII | re.IGNORECASE,
)

# A date of numbers alone whose first is not a year (`1/2/2024`, `01.02.03`, `1 2 2024`): the server
# reads it in the order its DateStyle names (MDY, DMY or YMD, a setting of the server, the database
# or the role). (Its fields may be parted by any of these, or a comma and a space, the same twice.)
_NUMERIC_DATE = re.compile(r"(?<![\d./,_-])(\d{1,2})(, |[-/.,_ ])(\d{1,2})\2(\d+)(?![\d./,_-])", re.ASCII)


# A date with a month's name and two numbers of one or two digits after it, or around it (`Jan 2 03`,
# `02-Jan-03`, `2Jan03`): under MDY and DMY the first is the day and the second the year; under
# YMD the other way round (`Jan 2 03`: 2003-01-02, or 2002-01-03). A number of three digits or more
# is the year under every DateStyle.
_MONTH_NAME = (
    r"(?<![a-z])(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)(?:(?<=jan)uary|(?<=feb)ruary|(?<=mar)ch|(?<=apr)il"
    r"|(?<=jun)e|(?<=jul)y|(?<=aug)ust|(?<=sep)t|(?<=sep)tember|(?<=oct)ober|(?<=nov)ember|(?<=dec)ember)?(?![a-z])"
)
_DATE_SEP = r"[-/.,_ ]*"
# (and no third number after them, which no DateStyle reads: an hour, `10:00`, is no such number)
_NO_MORE = r"(?![\d:]|[-/.,_ ]+\d{1,3}(?![\d:]))"
_MONTH_DATE = re.compile(
    rf"{_MONTH_NAME}{_DATE_SEP}(\d{{1,2}}){_DATE_SEP[:-1]}+(\d{{1,2}}){_NO_MORE}"
    rf"|(?<![\d:.])(\d{{1,2}}){_DATE_SEP}{_MONTH_NAME}{_DATE_SEP}(\d{{1,2}}){_NO_MORE}",
    re.ASCII | re.IGNORECASE,
)
_MONTHS = {name: n for n, name in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                             "nov", "dec"), start=1)}  # fmt: skip


def _year(digits: str) -> int:
    """A year as PostgreSQL reads its digits: two or fewer are 1970-2069."""
    n = int(digits)
    return n + (2000 if n < 70 else 1900) if len(digits) <= 2 else n


def _orders(first: str, second: str, third: str) -> set[tuple[int, int, int]]:
    """The dates (year, month, day) a numeric date reads as under each DateStyle that takes it
    (as PostgreSQL reads them: a day that its month has, a year of two digits 1970-2069)."""
    a, b, c = int(first), int(second), int(third)
    readings = ((_year(third), a, b), (_year(third), b, a), (_year(first), b, c))  # MDY, DMY, YMD
    return {date for date in readings if _is_date(*date)}


def _is_date(year: int, month: int, day: int) -> bool:
    """Whether the server may take it as a date: a day its month has in some year (February 29 in
    any: a `BC` after the date makes another year of it, another leap year, a review found)."""
    return year >= 1 and 1 <= month <= 12 and 1 <= day <= _MONTH_DAYS[month - 1]


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _month_orders(m: re.Match[str]) -> set[tuple[int, int, int]]:
    """The dates (year, month, day) a `_MONTH_DATE` reads as under the DateStyles (see there)."""
    month_name, first, second = (m.group(1), m.group(2), m.group(3)) if m.group(1) else m.group(5, 4, 6)
    month = _MONTHS[month_name.lower()]
    readings = ((_year(second), month, int(first)), (_year(first), month, int(second)))  # MDY or DMY; YMD
    return {date for date in readings if _is_date(*date)}


def for_column(kind: str, value: Any) -> Any:
    """The value as its column is given it. A text column gets text, a number, a boolean or a
    structure spelled as JSON spells it: the server's own conversion would change it (SQLite
    keeps 15 digits of a float, 0.30000000000000004 read back as '0.3', and spells true '1').
    A JSON column gets the value as JSON holds it (the column's type writes it as JSON: given as
    text, an object was stored as a JSON string). A PostgreSQL numeric column gets a float as
    the decimal its repr spells: given a float, psycopg sends a float8, which the server turns into
    a numeric of 15 digits (0.30000000000000004 stored as 0.3). Other columns get the value, a
    structure as JSON text."""
    if kind in EXACT_NUMBERS and isinstance(value, int | float) and not isinstance(value, bool):
        # ('nan', 'inf': numeric's NaN and Infinity; an integer too, as money takes no smallint)
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if kind == "json":  # (plain JSON values: a plugin's datetime, Decimal or UUID as its text)
        return (
            value
            if value is None or isinstance(value, str | int | float)
            else json.loads(json.dumps(value, ensure_ascii=False, default=str))
        )
    if value is None or isinstance(value, str):
        return value
    if kind in ("text", "char", "name") or isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)  # (a plugin's datetime, Decimal, UUID)
    return value


def new_column_kind(value: Any) -> str:
    """The column kind a first row's value asks for, by its type as the type lock names it
    (`value_type`): bool, int, float; anything else (None, text, structures) text."""
    kind = value_type(value)
    return kind if kind in ("bool", "int", "float") else "text"


def column_kind(sql_type: Any) -> tuple[str, int, int]:
    """What an existing SQLite column holds, as `_unfit` checks it, from its declared type: kind,
    then a width (integer bits, a float's bits; 0: none) and a scale (none in SQLite)."""
    from sqlalchemy import JSON
    from sqlalchemy.types import NullType

    if isinstance(sql_type, JSON):
        return "json", 0, 0
    # (a column declared with no type reflects as NullType: BLOB affinity, which keeps text as text)
    other = "other" if isinstance(sql_type, NullType) or not _numeric_affinity(str(sql_type)) else "numeric affinity"
    try:
        python = sql_type.python_type
    except NotImplementedError:
        return other, 0, 0
    if python is bool:
        return "bool", 64, 0
    if python is int:
        return "int", 64, 0
    if python is float or python is Decimal:  # (an 8-byte float however declared: a NUMERIC's value is bound as one)
        return "float", 64, 0
    if python is str:
        return "text", 0, 0
    return other, 0, 0


# What a PostgreSQL column of each of its own types holds, as `_unfit` checks it (kind, width),
# by the catalog's name of the type; a type not here (dates, times, uuids, arrays, enums, a
# type of another schema) is "other" (dates and times are checked apart: `TEMPORAL_LOSS`). An
# oid takes integers of 0 to 2**32 - 1 (-1 given, it stores 4294967295). Widths: an integer's or a float's bits; `name` and
# `"char"` (catalog name `char`) are text cut to so many bytes; numeric, varchar, bpchar and
# money take theirs from the column (`pg_column_kinds`).
_PG_KINDS: dict[str, tuple[str, int]] = {
    "int2": ("int", 16), "int4": ("int", 32), "int8": ("int", 64), "float4": ("real", 32), "float8": ("float", 64),
    "bool": ("bool", 64), "text": ("text", 0), "varchar": ("text", 0), "bpchar": ("char", 0), "name": ("name", 63),
    "char": ("name", 1), "numeric": ("number", 0), "money": ("money", 0), "json": ("json", 0), "jsonb": ("json", 0),
    "oid": ("oid", 32),
}  # fmt: skip


# How a PostgreSQL date or time column stores a text as another date or time without an error, by
# the column's type: SQL of the text `v`, true when it does, and what the refusal says
# (`_temporal_refusals`). An offset a zoneless type drops changes the instant the text names
# (10:00+05 stored as 10:00), unless it is the offset of the session's time zone then, which the
# server's own conversion back gives it again; a date drops a time of day; a precision
# (`timestamp(0)`, `interval day`) rounds or cuts. (What the text alone shows is refused at
# `write`: `text_loss`.)
_PRECISION = (
    "CAST(CAST(v AS {declared}) AS text) <> CAST(CAST(v AS {base}) AS text)",
    "that its column ({declared}) would round or cut to its precision",
)
_DROPS_OFFSET = "that names an offset other than the server's time zone's, which its column ({declared}) drops"
TEMPORAL_LOSS: dict[str, list[tuple[str, str]]] = {
    "timestamp": [("CAST(v AS timestamptz) <> CAST(CAST(v AS timestamp) AS timestamptz)", _DROPS_OFFSET), _PRECISION],
    "time": [("CAST(v AS timetz) <> CAST(CAST(v AS time) AS timetz)", _DROPS_OFFSET), _PRECISION],
    # (a date a timestamp cannot hold has its time of day told by its text: a colon between digits)
    "date": [("CASE WHEN CAST(v AS date) BETWEEN date '4713-11-25 BC' AND date '294276-12-30' "
              "THEN CAST(v AS timestamp) <> CAST(CAST(v AS date) AS timestamp) ELSE v ~ '[0-9]:[0-9]' END",
              "with a time of day, which its column ({declared}) drops")],
    "timestamptz": [_PRECISION], "timetz": [_PRECISION], "interval": [_PRECISION],
}  # fmt: skip
UNCHECKABLE = (
    "that the server cannot compare with what its column ({declared}) stores (a date or time at the end of the "
    "range it computes)"
)


def text_loss(base: str, declared: str, text: str) -> str | None:
    """Why a PostgreSQL column of this date or time type (`TEMPORAL_LOSS`) would store this
    text as another value, seen in the text alone, or None: digits beyond the microseconds the
    server rounds to, a word it reads as the time of the write (the trail keeps the word, the
    table a time the write chose), a date a `time` column drops."""
    if base == "interval":
        for m in _YEARS.finditer(text):
            months = Decimal(m.group(1).replace(",", ".")) * _MONTHS_IN[m.group(2).lower()]
            if months != months.to_integral_value():
                return f"with a fraction of a year that is not whole months, which its column ({declared}) rounds"
    for m in _SUB_SECOND.finditer(text):
        micro = m.group(2).lower().startswith(("us", "usec", "micro"))
        digits = m.group(1).rstrip("0")
        if digits if micro else len(digits) > 3:
            unit = "microsecond" if micro else "millisecond"
            return f"with a fraction of a {unit}, which its column ({declared}) would round to microseconds"
    if any(len(m.group(1).rstrip("0")) > 6 for m in _FRACTION.finditer(text)):
        return f"with more than 6 decimal places, which its column ({declared}) would round to microseconds"
    if _RELATIVE.search(text):
        return (
            f"that names a time relative to the write (now, today, ...), which its column ({declared}) would store "
            "as the time of the write"
        )
    if base in ("time", "timetz") and _DATE_PART.search(text):
        return f"with a date, which its column ({declared}) drops"
    if base in ("date", "timestamp", "timestamptz") and any(
        len(_orders(m.group(1), m.group(3), m.group(4))) > 1 for m in _NUMERIC_DATE.finditer(text)
    ):
        # (the trail keeps the text, and which date the table holds would depend on a setting)
        return (
            f"with a date of numbers that reads as another date under another DateStyle (day and month, or year, "
            f"in another order), which its column ({declared}) stores as its server reads it; allowed: the year "
            "first (2024-01-02)"
        )
    if base in ("date", "timestamp", "timestamptz") and any(
        len(_month_orders(m)) > 1 for m in _MONTH_DATE.finditer(text)
    ):
        return (
            f"with a date with a month's name that reads as another date under another DateStyle (the day and a year "
            f"of two digits the other way round: Jan 2 03 is 2003-01-02 under MDY or DMY, 2002-01-03 under YMD), "
            f"which its column ({declared}) stores as its server reads it; allowed: a year of four digits "
            "(Jan 2 2003), or the year first (2024-01-02)"
        )
    return None


# An array's element type, through domains (`CREATE DOMAIN day AS date`, a column `day[]`): the type
# a domain is over, with the domain's precision, as `pg_column_kinds` finds a column's.
_ELEMENT = (
    "WITH RECURSIVE el(typid, typmod) AS (SELECT CAST(:e AS oid), CAST(:m AS integer)"
    " UNION ALL SELECT p.typbasetype, p.typtypmod FROM el JOIN pg_type p ON p.oid = el.typid WHERE p.typtype = 'd')"
    " SELECT CASE WHEN p.typnamespace = 'pg_catalog'::regnamespace THEN p.typname END, format_type(el.typid, el.typmod)"
    " FROM el JOIN pg_type p ON p.oid = el.typid WHERE p.typtype <> 'd'"
)


def pg_column_kinds(conn: Any, table_name: str) -> tuple[dict[str, tuple[str, int, int]], dict[str, tuple[str, str]]]:
    """What each column of a PostgreSQL table (or view) holds, as `column_kind` says for SQLite,
    from the catalog: a domain's column as the type the domain is over (a domain over a domain
    too), with that type's length, precision and scale, which SQLAlchemy's reflection of a
    domain loses; so is PostgreSQL's `name` (reflected as any text). And the date and time
    columns (`TEMPORAL_LOSS`): each with its type and its type as declared, as the server spells
    it (`timestamp(0) without time zone`), which `_temporal_refusals` casts to."""
    from sqlalchemy import text

    quoted = conn.dialect.identifier_preparer.quote(table_name)
    found = conn.execute(
        text(
            "WITH RECURSIVE typed(attname, typid, typmod) AS ("
            " SELECT attname, atttypid, atttypmod FROM pg_attribute"
            " WHERE attrelid = to_regclass(:t) AND attnum > 0 AND NOT attisdropped"
            " UNION ALL SELECT typed.attname, t.typbasetype, t.typtypmod"
            " FROM typed JOIN pg_type t ON t.oid = typed.typid WHERE t.typtype = 'd')"
            " SELECT typed.attname, CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace THEN t.typname END,"
            " typed.typmod, scale(CAST(1 AS money)::numeric), format_type(typed.typid, typed.typmod),"
            " CASE WHEN t.typcategory = 'A' THEN t.typelem END"
            " FROM typed JOIN pg_type t ON t.oid = typed.typid WHERE t.typtype <> 'd'"
        ),
        {"t": quoted},
    ).all()
    kinds: dict[str, tuple[str, int, int]] = {}
    temporal: dict[str, tuple[str, str]] = {}
    for name, type_name, typmod, money_scale, declared, element in found:
        if type_name in TEMPORAL_LOSS:
            temporal[name] = (type_name, declared)
        elif element is not None:  # an array: of them (`date[]`, checked element by element), or of a domain over one
            base, spelled = conn.execute(text(_ELEMENT), {"e": element, "m": typmod}).one()
            if base in TEMPORAL_LOSS:
                temporal[name] = (base, f"{spelled}[]")
        kind, width = _PG_KINDS.get(type_name, ("other", 0))
        scale = 0
        if type_name in ("varchar", "bpchar") and typmod >= 4:
            width = typmod - 4  # (the length in characters, after the header's 4 bytes)
        elif type_name == "bpchar":
            kind = "text"  # (bpchar without a length pads nothing)
        elif type_name == "numeric" and typmod >= 4:
            kind, width = "decimal", (typmod - 4) >> 16
            scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024  # (negative from PostgreSQL 15 on: numeric(2, -3))
        elif type_name == "money":
            scale = money_scale  # (the digits after the point lc_monetary gives the currency)
        kinds[name] = (kind, width, scale)
    return kinds, temporal


def sqlite_numeric(text: str) -> Any:
    """What a SQLite column of NUMERIC affinity stores of this text, asked of SQLite itself (in
    memory, the library the sink writes with): which reals it stores as integers changed with its
    versions (2.0**53: an integer in 3.40)."""
    db = _numeric_affinity_probe()
    with _PROBE_LOCK:  # (a column's affinity applies as a value is stored: CAST differs, for NaN say)
        db.execute("INSERT INTO held VALUES (?)", (text,))
        try:
            return db.execute("SELECT v FROM held").fetchone()[0]
        finally:
            db.execute("DELETE FROM held")


_PROBE_LOCK = threading.Lock()


@functools.cache
def _numeric_affinity_probe() -> Any:
    """One in-memory SQLite for `sqlite_numeric` (a connection per value checked cost more than
    the check), with its one NUMERIC column."""
    import sqlite3

    db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    db.execute("CREATE TABLE held (v NUMERIC)")
    return db


def undomained(sql_type: Any) -> Any:
    """The type a PostgreSQL domain is over, however deep (other types as they are)."""
    from sqlalchemy.dialects.postgresql import DOMAIN

    while isinstance(sql_type, DOMAIN):
        sql_type = sql_type.data_type
    return sql_type


def _numeric_affinity(declared: str) -> bool:
    """Whether SQLite gives a column declared so NUMERIC affinity (its rules, in their order: INT,
    then CHAR, CLOB or TEXT, then BLOB or nothing, then REAL, FLOA or DOUB; else NUMERIC). Such a
    column stores text that reads as a number as that number: DATE and DATETIME are NUMERIC."""
    name = declared.upper()
    if "INT" in name or any(t in name for t in ("CHAR", "CLOB", "TEXT")) or "BLOB" in name or not name.strip():
        return False
    return not any(t in name for t in ("REAL", "FLOA", "DOUB"))


def exactly_held(kind: str, width: int, scale: int, value: Any) -> str | None:
    """Why a column of this kind would store another value than `value`, as `for_column` gives
    it, without an error (a float rounded, a decimal rounded, -0.0 made 0, a string padded or
    cut), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if kind in ("float", "real") and isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None  # NaN and the infinities are checked by kind (SQLite stores NaN as NULL)
        try:
            stored = float(value) if kind == "float" else struct.unpack("f", struct.pack("f", float(value)))[0]
        except OverflowError:
            stored = math.inf
        if stored != value:
            return f"would round ({'a 4-byte' if kind == 'real' else 'an 8-byte'} float)"
    elif kind in EXACT_NUMBERS and isinstance(value, int | Decimal):
        exact = Decimal(value)
        held = "money" if kind == "money" else f"numeric({width}, {scale})"
        if exact.is_zero() and exact.is_signed():
            return f"would store as 0 ({'money' if kind == 'money' else 'numeric'} has no -0)"
        if kind == "number" or (exact.is_nan() and kind == "decimal"):
            return None  # (every number exactly, NaN, and from PostgreSQL 14 on the infinities)
        if not exact.is_finite():
            return f"cannot hold ({held})"
        with localcontext() as ctx:
            # (digits enough for the value's whole part too: 1e300 quantized with fewer failed, uncaught)
            ctx.prec = max(len(exact.as_tuple().digits), exact.adjusted() + 1) + max(scale, 0) + 2
            if exact.quantize(Decimal(1).scaleb(-scale)) != exact:
                return f"would round to {scale} decimal place(s) ({held})"
        whole = len(str(abs(int(exact)))) if int(exact) != 0 else 0
        if width and whole > width - scale:
            return f"cannot hold ({held})"
    elif kind == "char" and isinstance(value, str) and len(value) != width:
        return f"would pad or cut to {width} character(s) (char({width}))"
    elif kind == "text" and width and isinstance(value, str) and len(value) > width:
        return f"would cut or refuse beyond {width} character(s)"
    elif kind == "name" and isinstance(value, str) and len(value.encode()) > width:
        return f"would cut beyond {width} byte(s)"  # (UTF-8's: a database in another encoding may take more)
    return None
