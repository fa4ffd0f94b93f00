"""PostgreSQL's binary COPY format, built by hand for the rows the writer sends.

Why by hand: psycopg's `write_row` formats each value in Python, per field. Built here as
`bytes` (no `datetime`, no escaping), an event's fields before its body are made once in the
engine as it appends it, the sending side adds the body and the hashes (`commits.Chain.seal`),
and a durability point is a few `Copy.write`s of joined pieces.

The format (PostgreSQL docs, "COPY", binary format): a signature and two zero 32-bit words, then
per row a 16-bit field count and, per field, a 32-bit length (-1 for NULL) and the value in the
type's binary send format; a 16-bit -1 ends the data. Used here: text (UTF-8 bytes), bytea (the
bytes), int2/int4/int8 (big-endian) and timestamptz (int64 microseconds since 2000-01-01 UTC).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"

# 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
PG_EPOCH_US = 946_684_800_000_000

_int2 = struct.Struct(">ih")
_int4 = struct.Struct(">ii")
_int8 = struct.Struct(">iq")
_length = struct.Struct(">i")
_count = struct.Struct(">h")


# The length word of a 32-byte hash field, and any field's length word (a row's fields are
# spelled out by hand where they are made per event: `landscape.postgres`, `landscape.commits`).
HASH_FIELD = _length.pack(32)
length = _length.pack


def count(n: int) -> bytes:
    """A row's field count."""
    return _count.pack(n)


def text(value: str | None) -> bytes:
    if value is None:
        return NULL
    b = value.encode()
    return _length.pack(len(b)) + b


def bytea(value: bytes) -> bytes:
    return _length.pack(len(value)) + value


def int2(value: int) -> bytes:
    return _int2.pack(2, value)


def int4(value: int | None) -> bytes:
    return NULL if value is None else _int4.pack(4, value)


def int8(value: int | None) -> bytes:
    return NULL if value is None else _int8.pack(8, value)


def timestamptz(unix_us: int) -> bytes:
    return _int8.pack(8, unix_us - PG_EPOCH_US)


def block(rows: Iterable[bytes]) -> bytes:
    """The whole COPY data for these rows (each a field count followed by its fields)."""
    return b"".join((SIGNATURE, *rows, TRAILER))
