"""Canonical bytes for row data, and the salted commitment that names them in the payload store.

Field order is kept (not sorted): it is observable in every output (a CSV header, a JSON
object), so two rows with the same fields in another order are different data.

A row is named by `sha256(salt ‖ data)` with a random 16-byte salt stored beside the data. The
events (and so the hash chain and the Merkle tree) hold only that commitment. Erasing a row
deletes its data *and* its salt: every proof still verifies, and a guessed value can no longer be
confirmed against the kept commitment, however few values it could have been (a plain hash of a
low-entropy value can be brute-forced). Payloads written before salting (migration 0004) have an
empty salt: their commitment is the plain sha256 of the data.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import threading
from typing import Any

import msgspec

from landscape.records import Payload

SALT_BYTES = 16

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class UnrecordableRow(ValueError):
    """A row whose canonical bytes would say something else than the row: recorded as it is, the
    audit trail would hold another row than the one a sink writes."""


def encode_row(row: Any) -> bytes:
    """The row's canonical bytes; UnrecordableRow for a row JSON cannot hold as it is: a float
    that is not finite (the encoder writes null for it), a string with a lone surrogate, or
    nesting deeper than the encoder goes, or an integer too long to write."""
    try:
        data = _encoder.encode(row)
    except UnicodeEncodeError:
        raise UnrecordableRow("a string holds a lone surrogate (U+D800 to U+DFFF), which is no Unicode text") from None
    except RecursionError:
        raise UnrecordableRow("it is nested too deeply to be recorded") from None
    except ValueError as e:  # (after UnicodeEncodeError, one of them); its words may quote the row
        if "digits" not in str(e):
            raise UnrecordableRow("a value cannot be written as JSON") from None
        raise UnrecordableRow(  # Python writes no int that long
            f"an integer has more than {sys.get_int_max_str_digits()} digits, more than Python writes out"
        ) from None
    # Only a row that reads null somewhere can hide one (a cheap search first: nulls are rare).
    if b"null" in data and _not_finite(row):
        raise UnrecordableRow("a float is not finite (an infinity or NaN), which JSON cannot hold: it would read null")
    return data


def _not_finite(row: Any) -> bool:
    """Whether a float in `row` is an infinity or NaN. Iterative: a row nested as deeply as the
    encoder goes would take the interpreter past its recursion limit (two frames a level)."""
    stack = [row]
    while stack:
        value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return False


def decode_row(data: bytes) -> Any:
    return _decoder.decode(data)


def commitment(salt: bytes, data: bytes) -> str:
    """The hex name of a payload: sha256(salt ‖ data). The salt has a fixed length (or is empty,
    for payloads written before salting), so salt and data cannot be re-split another way: a
    reader checks that (`well_split`) before it trusts the data."""
    return hashlib.sha256(salt + data).hexdigest()


_NAME = re.compile("[0-9a-f]{64}")


def is_name(h: str) -> bool:
    """Whether `h` is spelled as payload names are (`commitment`: 64 lowercase hex digits). An
    event can hold any text where a name belongs (the writer's bodies are not checked against
    this on reading); no payload is named by anything else, and no such text is looked up."""
    return _NAME.fullmatch(h) is not None


def well_split(salt: bytes, data: bytes) -> bool:
    """Whether stored bytes are split between salt and data as ELSPETH splits them. Moving bytes
    across the split keeps the commitment, so without this the data of a matching payload could
    be some of the salt, or lack some of its own: a salt must be `SALT_BYTES` long, or empty with
    data that is a row (a salt moved into the data makes it start with 16 random bytes). And a
    row stored without salt (before salting) keeps its commitment cut 16 bytes in: a 16-byte
    salt and data that are a row together are such a cut (16 random bytes that begin a row with
    the data after them are as good as never drawn: the data is a whole row already)."""
    if len(salt) == SALT_BYTES:
        return not (salt[:1] in _ROW_STARTS and _is_row(salt + data))
    if salt:
        return False
    return _is_row(data)


_ROW_STARTS = frozenset((b"{", b" ", b"\t", b"\n", b"\r"))  # (what JSON lets an object start with)


def _is_row(data: bytes) -> bool:
    try:
        decode_row(data)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


class _Salts:
    """Fresh random salts, drawn from the OS in blocks: one `getrandom` call per 4096 salts
    instead of one per row (a call per row was 2 s of a 20,000-row run). Every salt is used once:
    a block is cut into salts and each taken with `list.pop`, which no two threads can both get
    the same item from (a lock per salt was a tenth of what the engine spends on a payload)."""

    def __init__(self, per_block: int = 4096) -> None:
        self._lock = threading.Lock()  # (only to draw a block)
        self._per_block = per_block
        self._pool: list[bytes] = []

    def next(self) -> bytes:
        try:
            return self._pool.pop()
        except IndexError:
            with self._lock:
                if not self._pool:
                    block = os.urandom(SALT_BYTES * self._per_block)
                    self._pool = [block[i : i + SALT_BYTES] for i in range(0, len(block), SALT_BYTES)]
            return self.next()

    def forget(self) -> None:
        self._pool = []


_salts = _Salts()
os.register_at_fork(after_in_child=_salts.forget)  # a forked child must not reuse the parent's salts


def commit_row(row: Any) -> tuple[str, Payload]:
    """(commitment, payload) of one row, with a fresh random salt."""
    return commit_data(encode_row(row))


def commit_data(data: bytes) -> tuple[str, Payload]:
    """(commitment, payload) of a row's canonical bytes (`encode_row`), with a fresh random salt."""
    salt = _salts.next()
    return commitment(salt, data), Payload(salt, data)
